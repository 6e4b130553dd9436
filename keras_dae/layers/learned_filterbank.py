"""A trainable filterbank on raw waveform: the end-to-end stream's front end."""

from __future__ import annotations

import keras
import librosa
import numpy as np
from keras import ops

from keras_dae.layers import signal
from keras_dae.layers.audio_frontend import AudioFrontend
from keras_dae.layers.mfcc import dct_matrix
from keras_dae.serialization import register
from keras_dae.validation import InputError

INITIALIZERS = ("gabor", "constant_q", "random")
# How each Gabor initialiser spaces its centres: mel (Slaney, as librosa) or geometric.
SPACINGS = {"gabor": "mel", "constant_q": "log"}
COMPRESSIONS = ("log", "none")


def gabor_filters(
    n_filters: int, win_length: int, sample_rate: int, fmin: float, fmax: float,
    spacing: str = "mel",
) -> np.ndarray:
    """Complex Gabor filters at mel- or log-spaced centre frequencies, as a real `(win_length, 2F)`.

    Columns `[:F]` are the cosine (real) parts and `[F:]` the sine (imaginary) parts. The
    `n_filters + 2` band edges between `fmin` and `fmax` are mel-spaced (`spacing="mel"`,
    Slaney scale, as librosa) or geometric (`"log"`, a constant-Q layout), and the centres are
    the inner `n_filters`. Each Gaussian envelope has the full width at half maximum (in Hz) of
    the triangular filter spanning its neighbours' centres, as in LEAF (Zeghidour et al.,
    2021), floored at `sample_rate / win_length` and truncated to the window. So at
    initialisation the squared magnitudes approximate a mel spectrogram (or, log-spaced, a
    constant-Q one whose low bands are as narrow as the window allows), and training can then
    move centres and bandwidths freely.
    """
    signal.check_choice("spacing", spacing, ("mel", "log"))
    if spacing == "mel":
        edges = librosa.mel_frequencies(n_filters + 2, fmin=fmin, fmax=fmax)
    else:
        if fmin <= 0:
            raise InputError(f"Log-spaced filters need fmin > 0, got {fmin!r}.")
        edges = np.geomspace(fmin, fmax, n_filters + 2)
    centres = edges[1:-1]
    # FWHM of a triangle spanning [edges[k], edges[k + 2]] is half its base width.
    fwhm_hz = np.maximum((edges[2:] - edges[:-2]) / 2.0, sample_rate / win_length)
    # Gaussian in time whose spectrum has that FWHM: sigma_t = sqrt(2 ln 2) / (pi * fwhm).
    sigma = np.sqrt(2.0 * np.log(2.0)) / (np.pi * fwhm_hz) * sample_rate
    t = np.arange(win_length) - (win_length - 1) / 2.0
    envelope = np.exp(-0.5 * (t[:, None] / sigma[None, :]) ** 2)
    envelope /= envelope.sum(axis=0, keepdims=True)
    phase = 2.0 * np.pi * centres[None, :] * t[:, None] / sample_rate
    return np.concatenate([envelope * np.cos(phase), envelope * np.sin(phase)], axis=1)


@register
class LearnedFilterbank(AudioFrontend):
    """Trainable complex filterbank on short waveform windows, then log energy.

    The end-to-end stream's front end (after Audio Transformers, arXiv 2105.00335, which learns
    a projection of 25 ms patches of raw audio). The waveform is cut into windows of
    `win_length` samples every `hop_length` samples (centred as in librosa when `center`), each
    window is projected onto `n_filters` learned complex filters (a real kernel holding their
    real and imaginary parts), and the output is `log(|response|^2 + eps)`.

    With `pooling=k`, each frame's energy is the average of `|response|^2` at `2k + 1` points
    `hop_length / k` samples apart, under a Hann window spanning two hops and centred on the
    frame (LEAF's lowpass pooling, Zeghidour et al., 2021, with a fixed window). A wide band's
    Gabor filter is short (about 50 samples at half peak for the top mel band of 64 at 16 kHz),
    so one response per frame samples its squared envelope at a single instant of each hop and
    misses the rest; pooled, every part of the signal counts, as in a mel band integrated over
    its STFT window. The frames are the same; the projection costs `k` times as much.

    With `n_cepstra`, the log energies are projected onto the first `n_cepstra` coefficients
    of their orthonormal DCT-II, as `MFCC` projects log-mel energies: cepstra of learned
    filters (the DCT is fixed; the filters under it train).

    Input `(batch, samples)`; output `(batch, frames, n_filters)` (`n_cepstra` with cepstra)
    with `frames = 1 + samples // hop_length` when `center=True`.

    Precision: like the handcrafted front ends it computes in float32 by default, even under
    a mixed policy. A bfloat16 projection has an error floor about 48 dB below each frame's
    energy, which swamps the filters that the frame does not excite once the log is taken.

    Args:
        sample_rate: waveform sampling rate in Hz.
        n_filters: number of learned filters (output features).
        win_length: window length in samples (default 400 = 25 ms at 16 kHz).
        hop_length: samples between windows (default 160 = 10 ms at 16 kHz).
        fmin, fmax: frequency range of the Gabor initialisation (fmax defaults to Nyquist).
        initializer: `"gabor"` (mel-spaced Gabor filters, so training starts from a
            mel-like spectrogram), `"constant_q"` (log-spaced Gabor filters, each as narrow as
            its spacing: a constant-Q start, whose low bands want a long `win_length`; at
            2048 samples only those below about 100 Hz are floored at the window's
            resolution) or `"random"` (Glorot uniform).
        compression: `"log"` for `log(power + eps)`, `"none"` for the power itself.
        eps: floor added before the log.
        center: pad `win_length // 2` zeros on both sides (librosa's convention).
        scaled_kernel: store each filter divided by its initial peak (`kernel` holds the
            scaled filters; `filters()` gives them as applied), so that an optimiser's step
            moves every filter by the same share of its size. Adam steps every weight by
            about its learning rate; a Gabor filter's peaks are 3e-3 to 2.4e-2, so unscaled, a
            few hundred steps at 1e-3 bury the initialisation under noise (the shipped
            `diverse_sampled15`, trained so, ended 10-11 times their initial norm away from it).
            Configs saved without this key load with `False`, as they were trained.
        learning_rate_scale: the filters' step size relative to the rest of the model's
            under Adam (the trainer's optimiser), which steps a weight by about the learning
            rate whatever its gradient's size: the kernel is stored divided by this factor
            and multiplied back when applied, so the applied filters move that many times
            as far per step. 0 freezes the filters (the kernel is not trainable, whatever the
            layer's `trainable`).
        n_cepstra: None (the log energies themselves) or how many DCT coefficients of them
            to return (at most `n_filters`; needs `compression="log"`).
        pooling: responses per hop whose energies are averaged into each frame (1: one
            response, at the frame's centre; `hop_length` must be a multiple of it).
        relative_level: divide every energy by the input's mean energy over all its frames
            and filters before compression, so that the output does not depend on the
            input's gain (in the models the input is one chunk, so each chunk's level is
            taken out, as the spectral descriptors are free of it) and `eps` is a floor
            relative to that mean. Silence stays at the floor.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_filters: int = 64,
        win_length: int = 400,
        hop_length: int = 160,
        fmin: float = 60.0,
        fmax: float | None = None,
        initializer: str = "gabor",
        compression: str = "log",
        eps: float = 1e-6,
        center: bool = True,
        scaled_kernel: bool = True,
        learning_rate_scale: float = 1.0,
        n_cepstra: int | None = None,
        pooling: int = 1,
        relative_level: bool = False,
        **kwargs,
    ):
        super().__init__(sample_rate=sample_rate, **kwargs)
        signal.check_positive_int("n_filters", n_filters)
        signal.check_positive_int("win_length", win_length)
        signal.check_positive_int("hop_length", hop_length)
        signal.check_choice("initializer", initializer, INITIALIZERS)
        signal.check_choice("compression", compression, COMPRESSIONS)
        nyquist = self.sample_rate / 2
        if not 0 <= fmin < (fmax or nyquist) <= nyquist:
            raise InputError(
                f"Need 0 <= fmin < fmax <= sample_rate / 2 = {nyquist}, got fmin={fmin}, "
                f"fmax={fmax}."
            )
        if eps <= 0:
            raise InputError(f"`eps` must be positive, got {eps!r}.")
        if not (np.isfinite(learning_rate_scale) and learning_rate_scale >= 0):
            raise InputError(f"`learning_rate_scale` must be finite and non-negative, got "
                             f"{learning_rate_scale!r}.")
        if n_cepstra is not None:
            signal.check_positive_int("n_cepstra", n_cepstra)
            if n_cepstra > n_filters or compression != "log":
                raise InputError(f"`n_cepstra` ({n_cepstra}) takes the DCT of log energies: at "
                                 f"most n_filters ({n_filters}), with compression='log' (got "
                                 f"{compression!r}).")
        signal.check_positive_int("pooling", pooling)
        if hop_length % pooling:
            raise InputError(f"`pooling` ({pooling}) must divide hop_length ({hop_length}): "
                             f"the responses are {hop_length} / pooling samples apart.")
        self.pooling = int(pooling)
        self.relative_level = bool(relative_level)
        # Each frame's weights over its 2 * pooling + 1 responses: a Hann window without its
        # zero ends, summing to 1, the same for every filter (a depthwise kernel).
        weights = np.hanning(2 * self.pooling + 3)[1:-1]
        self._pool_kernel = signal.constant(np.tile(
            (weights / weights.sum())[:, None, None], (1, n_filters, 1)))
        self.n_cepstra = None if n_cepstra is None else int(n_cepstra)
        self._dct = (None if n_cepstra is None
                     else signal.constant(dct_matrix(n_filters, self.n_cepstra)))
        self.n_filters = int(n_filters)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.fmin = float(fmin)
        self.fmax = None if fmax is None else float(fmax)
        self.initializer = initializer
        self.compression = compression
        self.eps = float(eps)
        self.center = bool(center)
        self.scaled_kernel = bool(scaled_kernel)
        self.learning_rate_scale = float(learning_rate_scale)
        self._filters = self.initial_filters()
        # Each filter's peak over its real and imaginary parts (1 for random filters, whose
        # Glorot scale is already an optimiser's).
        self._peaks = np.ones(2 * self.n_filters, "float32")
        if self.scaled_kernel and self._filters is not None:
            peak = np.abs(self._filters).reshape(self.win_length, 2, self.n_filters).max(
                axis=(0, 1))
            self._peaks = np.tile(peak, 2).astype("float32")
        # What the stored kernel is multiplied by when applied (ones: stored as applied).
        self._multiplier = self._peaks * (self.learning_rate_scale or 1.0)
        self._scale = signal.constant(self._multiplier)
        # A Python bool, so that tracing (XLA, torch.compile) sees no data-dependent branch.
        self._stored_as_applied = bool(np.all(self._multiplier == 1))

    def initial_filters(self) -> np.ndarray | None:
        """The filters the layer starts from, `(win_length, 2 * n_filters)` float32 (None
        for a random start)."""
        if self.initializer not in SPACINGS:
            return None
        return gabor_filters(self.n_filters, self.win_length, self.sample_rate, self.fmin,
                             self.fmax or self.sample_rate / 2,
                             SPACINGS[self.initializer]).astype("float32")

    @classmethod
    def from_config(cls, config):
        # Saved before `scaled_kernel` existed: the kernel holds the filters unscaled.
        return cls(**{"scaled_kernel": False, **config})

    def build(self, input_shape):
        if self._filters is not None:
            initializer = keras.initializers.Constant(self._filters / self._multiplier)
        else:  # Glorot's draw, as applied
            glorot = keras.initializers.GlorotUniform()

            def initializer(shape, dtype=None):
                return glorot(shape, dtype) / self._multiplier
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.win_length, 2 * self.n_filters),
            initializer=initializer,
            trainable=self.learning_rate_scale > 0,
        )

    @property
    def num_features(self) -> int:
        return self.n_cepstra or self.n_filters

    @property
    def framing(self):
        return (self.win_length, self.center, "constant")

    def num_frames(self, num_samples):
        return signal.num_frames(num_samples, self.win_length, self.hop_length, self.center)

    def filters(self):
        """The filters as applied, `(win_length, 2 * n_filters)`: real parts, then imaginary."""
        kernel = ops.cast(self.kernel, "float32")
        return kernel if self._stored_as_applied else kernel * self._scale

    def frontend_call(self, waveform):
        x = signal.pad_center(waveform, self.win_length, self.center)
        step = self.hop_length // self.pooling
        if self.pooling > 1:
            n_frames = 1 + (ops.shape(x)[1] - self.win_length) // self.hop_length
            n_frames = max(n_frames, 0) if isinstance(n_frames, int) else ops.maximum(n_frames, 0)
            # One hop more on each side, so that the first and last frames have all their
            # responses, and a window more at the end, so that a signal shorter than a window
            # (center=False, a length known only at run time) still has a frame's worth of
            # them (see `_pool`).
            x = ops.pad(x, [[0, 0], [self.hop_length, self.hop_length + self.win_length]])
        frames = signal.frame(x, self.win_length, step)
        response = ops.matmul(frames, self.filters())
        real, imag = response[..., : self.n_filters], response[..., self.n_filters :]
        power = real * real + imag * imag
        if self.pooling > 1:
            power = self._pool(power)[:, :n_frames]
        if self.relative_level:
            # The floor keeps silence (and power that underflows) at 0 rather than 0 / 0.
            power = power / (ops.mean(power, axis=(1, 2), keepdims=True) + 1e-30)
        if self.compression == "none":
            return power
        log_power = ops.log(power + self.eps)
        return log_power if self._dct is None else ops.matmul(log_power, self._dct)

    def _pool(self, power):
        """`(batch, responses, n_filters)` at `hop_length / pooling` to `(batch, frames,
        n_filters)`: frame `t` averages responses `t * pooling .. t * pooling + 2 * pooling`
        of the signal padded by a hop before it, so it is centred where the unpooled frame
        is. For a (centred) signal of `L` samples, padded as in `frontend_call`, there are
        `1 + 2 * pooling + L // step` responses, and a valid strided convolution gives
        `1 + L // hop_length` frames: the unpooled frames (`1 + (L - win_length) //
        hop_length`, none if `L < win_length`) and those of the extra window, cut off."""
        return ops.depthwise_conv(power, self._pool_kernel, strides=self.pooling,
                                  padding="valid")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "n_filters": self.n_filters,
                "win_length": self.win_length,
                "hop_length": self.hop_length,
                "fmin": self.fmin,
                "fmax": self.fmax,
                "initializer": self.initializer,
                "compression": self.compression,
                "eps": self.eps,
                "center": self.center,
                "scaled_kernel": self.scaled_kernel,
                "learning_rate_scale": self.learning_rate_scale,
                "n_cepstra": self.n_cepstra,
                "pooling": self.pooling,
                "relative_level": self.relative_level,
            }
        )
        return config
