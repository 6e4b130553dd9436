"""Log-power mel spectrogram, matching librosa."""

from __future__ import annotations

import librosa
import numpy as np
from keras import ops

from keras_dae.layers import signal
from keras_dae.layers.spectrogram_frontend import SpectrogramFrontend
from keras_dae.serialization import register
from keras_dae.validation import InputError


@register
class LogMelSpectrogram(SpectrogramFrontend):
    """Mel spectrogram in dB: `librosa.power_to_db(librosa.feature.melspectrogram(...))`.

    Input `(batch, samples)` float waveform; output `(batch, frames, n_mels)` float32 with
    `frames = 1 + samples // hop_length` when `center=True`.

    Why not `keras.layers.MelSpectrogram`: it uses the HTK mel scale without Slaney
    normalisation (librosa's default is Slaney for both), clamps `top_db` against the maximum
    of the whole batch, and goes through a complex FFT that breaks ONNX export. This layer
    builds the filterbank with `librosa.filters.mel` from its config, clamps per example, and
    computes the DFT as a matrix product unless `dft_mode="fft"`.

    Args:
        n_mels: number of mel bands.
        fmin, fmax: lowest and highest frequency of the filterbank in Hz (`fmax` defaults to
            `sample_rate / 2`).
        htk: use the HTK mel scale instead of Slaney's (librosa's `htk`).
        norm: filter normalisation, `"slaney"` (area), a number for the p-norm, or None.
        power: exponent of the magnitude before the mel projection (2 = power).
        ref, amin, top_db: as in `librosa.power_to_db`; `top_db=None` disables the floor,
            and the floor is taken per example.
        **kwargs: STFT arguments of `SpectrogramFrontend` (`n_fft`, `hop_length`,
            `win_length`, `window`, `center`, `pad_mode`, `dft_mode`) and `sample_rate`.

    Examples:
        >>> layer = LogMelSpectrogram(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64)
        >>> tuple(layer(np.zeros((2, 16000), "float32")).shape)
        (2, 101, 64)
    """

    def __init__(
        self,
        n_mels: int = 128,
        fmin: float = 0.0,
        fmax: float | None = None,
        htk: bool = False,
        norm="slaney",
        power: float = 2.0,
        ref: float = 1.0,
        amin: float = 1e-10,
        top_db: float | None = 80.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        signal.check_positive_int("n_mels", n_mels)
        if power <= 0:
            raise InputError(f"`power` must be positive, got {power!r}.")
        if amin <= 0:
            raise InputError(f"`amin` must be positive, got {amin!r}.")
        if top_db is not None and top_db < 0:
            raise InputError(f"`top_db` must be non-negative or None, got {top_db!r}.")
        nyquist = self.sample_rate / 2
        if fmax is not None and not 0 <= fmin < fmax <= nyquist:
            raise InputError(
                f"Need 0 <= fmin < fmax <= sample_rate / 2 = {nyquist}, got fmin={fmin}, "
                f"fmax={fmax}."
            )
        self.n_mels = int(n_mels)
        self.fmin = float(fmin)
        self.fmax = None if fmax is None else float(fmax)
        self.htk = bool(htk)
        self.norm = norm
        self.power = float(power)
        self.ref = float(ref)
        self.amin = float(amin)
        self.top_db = None if top_db is None else float(top_db)
        # (n_freq, n_mels): built from the config, never stored as weights.
        self._mel_basis = (
            librosa.filters.mel(
                sr=self.sample_rate,
                n_fft=self.n_fft,
                n_mels=self.n_mels,
                fmin=self.fmin,
                fmax=self.fmax,
                htk=self.htk,
                norm=self.norm,
            )
            .T.astype(np.float32)
        )
        self._mel_basis_tensor = signal.constant(self._mel_basis)

    @property
    def num_features(self) -> int:
        return self.n_mels

    def mel_power(self, waveform):
        """Mel-projected spectrogram before the dB conversion, `(batch, frames, n_mels)`."""
        spec = self.spectrogram(waveform, power=self.power)
        return ops.matmul(spec, self._mel_basis_tensor)

    def frontend_call(self, waveform):
        return signal.power_to_db(
            self.mel_power(waveform), amin=self.amin, ref=self.ref, top_db=self.top_db
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "n_mels": self.n_mels,
                "fmin": self.fmin,
                "fmax": self.fmax,
                "htk": self.htk,
                "norm": self.norm,
                "power": self.power,
                "ref": self.ref,
                "amin": self.amin,
                "top_db": self.top_db,
            }
        )
        return config
