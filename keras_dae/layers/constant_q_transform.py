"""Constant-Q transform magnitude, matching `librosa.cqt`."""

from __future__ import annotations

import functools
import math

import librosa
import numpy as np
from keras import ops

from keras_dae.layers import signal
from keras_dae.layers.audio_frontend import AudioFrontend
from keras_dae.serialization import register
from keras_dae.validation import InputError

# Outputs per row of the matrix-product form of the decimators (see `_Decimator`).
_DECIMATOR_BLOCK = 32
# The longest filter (in samples at the input rate) a CQT may ask for: 16 s at 16 kHz, a
# lowest bin near 1 Hz. Its kernels are dense arrays of this length, so a lower `fmin`
# would allocate gigabytes before anything ran.
MAX_FILTER_LENGTH = 1 << 18


def soxr_decimation_filter(factor: int = 2, rel_threshold: float = 1e-7) -> np.ndarray:
    """Impulse response of `librosa.resample(y, orig_sr=factor, target_sr=1)` (soxr "HQ").

    librosa.cqt halves the sampling rate between octaves, and divides it by `2 ** d` before
    the first octave when the bins lie far below Nyquist, with soxr's "HQ" resampler. For an
    integer ratio that is a linear-phase FIR filter applied to the zero-extended signal and
    kept at every `factor`-th sample (checked against soxr: float32 rounding for 2:1; for
    4:1 and 8:1 also, except the first few output samples, where soxr's multi-stage start-up
    differs by about -45 dB). Its response is flat to 0.92 of the new Nyquist frequency and
    drops to -140 dB at it. The low CQT bins are sensitive to that exact shape, because
    strong content just below the new Nyquist frequency leaks into them through the
    sparsified wavelets: a Kaiser-windowed sinc of 383 taps with the same band edges left
    0.3 dB errors, and soxr's own filter cut to 255 taps 0.2-0.45 dB. So the filter is read
    off soxr itself (one impulse per phase), trimmed to the taps above `rel_threshold` of the
    peak (383 taps for 2:1, 801 for 4:1) and normalised to unit DC gain; the CQT then agrees
    with librosa's to a few thousandths of a dB.
    """
    return _soxr_decimation_filter(int(factor), float(rel_threshold)).copy()


@functools.lru_cache(maxsize=8)
def _soxr_decimation_filter(factor: int, rel_threshold: float) -> np.ndarray:
    import soxr  # librosa's resampling backend (a librosa dependency)

    half = 240 * factor  # generous: soxr's support is about +-100 * factor taps
    n = factor * (half // factor + 8)
    taps = np.zeros(2 * half + 1)
    for phase in range(factor):
        impulse = np.zeros(2 * n + 1)
        impulse[n + phase] = 1.0
        out = soxr.resample(impulse, factor, 1, quality="soxr_hq")
        # out[m] = h[factor * m - (n + phase)], with h centred on index 0.
        k = factor * np.arange(len(out)) - n - phase
        keep = np.abs(k) <= half
        taps[k[keep] + half] = out[keep]
    support = np.nonzero(np.abs(taps) > rel_threshold * np.abs(taps).max())[0]
    trim = max(half - support[0], support[-1] - half)
    taps = taps[half - trim : half + trim + 1]
    return taps / taps.sum()


class _Decimator:
    """`librosa.resample(x, orig_sr=factor, target_sr=1, res_type="soxr_hq", scale=False)`.

    Output sample `m` is centred on input sample `factor * m` of the zero-extended input.
    The filtering is a stride-`factor` FIR written as a matrix product that yields
    `_DECIMATOR_BLOCK` consecutive outputs per row (a Toeplitz kernel), run by
    `_blocked_conv`. Like librosa, the output has `ceil(n / factor)` samples of which soxr
    fills `floor(n / factor + 1/2)`, the rest being zero padding (`util.fix_length`).
    """

    def __init__(self, factor: int):
        taps = soxr_decimation_filter(factor)
        self.factor = factor
        self.half = len(taps) // 2
        block = _DECIMATOR_BLOCK
        toeplitz = np.zeros((len(taps) + factor * (block - 1), block))
        for r in range(block):
            toeplitz[factor * r : factor * r + len(taps), r] = taps
        self.kernel = signal.constant(_block_kernel(toeplitz, factor * block))

    def __call__(self, x):
        block, factor = _DECIMATOR_BLOCK, self.factor
        num_samples = ops.shape(x)[1]
        n_out = (num_samples + factor - 1) // factor
        x = ops.pad(x, [[0, 0], [self.half, 0]])
        y = _blocked_conv(x, self.kernel, factor * block, (n_out + block - 1) // block)
        y = ops.reshape(y, (ops.shape(y)[0], -1))[:, :n_out]
        if factor > 2:  # for 2:1 soxr fills all ceil(n / 2) samples
            n_filled = (2 * num_samples + factor) // (2 * factor)
            y = ops.where(ops.arange(n_out)[None, :] < n_filled, y, 0.0)
        return y


def _relative_bandwidth(freqs: np.ndarray, bins_per_octave: int) -> np.ndarray:
    """librosa's `alpha` for geometrically spaced bins (`filters._relative_bandwidth`)."""
    if len(freqs) == 1:
        r = 2.0 ** (1.0 / bins_per_octave)
        return np.atleast_1d((r**2 - 1) / (r**2 + 1))
    logf = np.log2(freqs)
    bpo = np.empty_like(freqs)
    bpo[0] = 1 / (logf[1] - logf[0])
    bpo[-1] = 1 / (logf[-1] - logf[-2])
    bpo[1:-1] = 2 / (logf[2:] - logf[:-2])
    return (2.0 ** (2 / bpo) - 1) / (2.0 ** (2 / bpo) + 1)


def _num_two_factors(x: int) -> int:
    count = 0
    while x > 0 and x % 2 == 0:
        count += 1
        x //= 2
    return count


def _filter_fft(sr, freqs, alpha, filter_scale, norm, sparsity, window):
    """`librosa.core.constantq.__vqt_filter_fft`: sparsified FFT of one octave's wavelets."""
    basis, lengths = librosa.filters.wavelet(
        freqs=freqs,
        sr=sr,
        filter_scale=filter_scale,
        norm=norm,
        pad_fft=True,
        window=window,
        gamma=0,
        alpha=alpha,
    )
    n_fft = basis.shape[1]
    basis *= lengths[:, np.newaxis] / float(n_fft)
    fft_basis = librosa.get_fftlib().fft(basis, n=n_fft, axis=1)[:, : n_fft // 2 + 1]
    fft_basis = librosa.util.sparsify_rows(fft_basis, quantile=sparsity, dtype=np.complex64)
    return fft_basis.toarray(), n_fft


def _time_kernel(fft_basis: np.ndarray, n_fft: int) -> np.ndarray:
    """Real `(n_fft, 2 * n_filters)` kernel with `frame @ kernel = [Re, Im](basis @ rfft(frame))`.

    librosa multiplies the sparse FFT-domain basis by the STFT of the signal (rectangular
    window); both steps are linear in the frame, so they fold into one time-domain kernel.
    """
    k = np.arange(fft_basis.shape[1])[:, None]
    n = np.arange(n_fft)[None, :]
    dft = np.exp(-2j * np.pi * ((k * n) % n_fft) / n_fft)  # (n_fft // 2 + 1, n_fft)
    kernel = (fft_basis.astype(np.complex128) @ dft).T  # (n_fft, n_filters)
    return np.concatenate([kernel.real, kernel.imag], axis=1)


@register
class ConstantQTransform(AudioFrontend):
    """Constant-Q transform magnitude: `np.abs(librosa.cqt(...)).T`, optionally in dB.

    Input `(batch, samples)` float waveform; output `(batch, frames, n_bins)` float32, bins in
    ascending frequency `fmin * 2 ** (k / bins_per_octave)`, frame `t` centred on sample
    `t * hop_length`, `frames = 1 + samples // hop_length` (see `num_frames` for configs where
    librosa downsamples before the first octave).

    The computation is librosa's recursive algorithm (`librosa.cqt` with `pad_mode="constant"`,
    `tuning=0`): the same wavelet kernels, sparsified in the FFT domain the same way, applied
    one octave at a time from the top, halving the sampling rate and the hop between octaves
    (and before the first octave when the bins lie far below Nyquist), with librosa's
    amplitude scaling. Each octave's FFT-domain basis times the STFT of a frame is folded into
    one real time-domain kernel (real and imaginary parts) built with numpy at construction,
    so in the graph an octave is a framed matrix product, and a change of rate is a strided
    FIR filter: soxr's own, as librosa uses it (see `soxr_decimation_filter`). Both run as
    convolutions over blocks of samples (`_blocked_conv`); no FFT, no complex tensors, and the
    number of samples may be dynamic. Like librosa 0.11, any `hop_length` is accepted: the
    halving stops once the hop becomes odd (the lower octaves then run at a higher rate with
    longer kernels and cost more; a hop divisible by `2 ** (octaves - 1)` is fastest).

    Agreement with librosa (tested): under 0.01 dB in every bin within 60 dB of
    the peak. Where librosa divides the rate by 4 or more before the first octave (only when
    all bins lie below about `sample_rate / 16`), soxr's multi-stage start-up makes the first
    frame or two differ by up to a few tenths of a dB (more for clips of a few milliseconds).

    Args:
        sample_rate: waveform sampling rate in Hz.
        hop_length: samples between successive frames.
        fmin: frequency of the lowest bin in Hz (default C1).
        n_bins: number of frequency bins.
        bins_per_octave: bins per octave.
        filter_scale: scale of the filter lengths (librosa's `filter_scale`).
        norm: norm of each wavelet (`librosa.util.normalize`'s `norm`: 1, 2, `np.inf`, None).
        sparsity: share of each kernel's weight dropped in the FFT domain, as librosa does.
        window: window of the wavelets (name or tuple understood by `scipy.signal.get_window`).
        scale: divide each bin by the square root of its filter length (librosa's `scale`);
            if false the wavelets are only `norm`-normalised.
        to_db: return `librosa.amplitude_to_db(|C|, ref=ref, amin=amin, top_db=top_db)`, with
            the `top_db` floor taken per example, instead of the magnitude.
        ref, amin, top_db: as in `librosa.amplitude_to_db` (used only when `to_db`).
        **kwargs: standard layer arguments (`name`, `dtype`, `trainable`).

    Examples:
        >>> layer = ConstantQTransform(sample_rate=16000, hop_length=256, n_bins=84)
        >>> tuple(layer(np.zeros((2, 16000), "float32")).shape)
        (2, 63, 84)
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        hop_length: int = 256,
        fmin: float = 32.70319566257483,
        n_bins: int = 84,
        bins_per_octave: int = 12,
        filter_scale: float = 1.0,
        norm=1,
        sparsity: float = 0.01,
        window="hann",
        scale: bool = True,
        to_db: bool = False,
        ref: float = 1.0,
        amin: float = 1e-5,
        top_db: float | None = 80.0,
        **kwargs,
    ):
        super().__init__(sample_rate=sample_rate, **kwargs)
        signal.check_positive_int("hop_length", hop_length)
        signal.check_positive_int("n_bins", n_bins)
        signal.check_positive_int("bins_per_octave", bins_per_octave)
        if not fmin > 0:
            raise InputError(f"`fmin` must be positive, got {fmin!r}.")
        if not filter_scale > 0:
            raise InputError(f"`filter_scale` must be positive, got {filter_scale!r}.")
        if not 0 <= sparsity < 1:
            raise InputError(f"`sparsity` must lie in [0, 1), got {sparsity!r}.")
        is_number = isinstance(norm, (int, float, np.integer, np.floating))
        if norm is not None and (isinstance(norm, bool) or not is_number or not norm > 0):
            raise InputError(f"`norm` must be a positive number (or inf) or None, got {norm!r}.")
        if not amin > 0:
            raise InputError(f"`amin` must be positive, got {amin!r}.")
        if not ref > 0:
            raise InputError(f"`ref` must be positive, got {ref!r}.")
        if top_db is not None and top_db < 0:
            raise InputError(f"`top_db` must be non-negative or None, got {top_db!r}.")
        window = tuple(window) if isinstance(window, list) else window
        try:
            librosa.filters.get_window(window, 8, fftbins=True)
        except Exception as error:  # scipy raises ValueError or TypeError
            raise InputError(f"`window` {window!r} is not a known window: {error}") from None

        self.hop_length = int(hop_length)
        self.fmin = float(fmin)
        self.n_bins = int(n_bins)
        self.bins_per_octave = int(bins_per_octave)
        self.filter_scale = float(filter_scale)
        self.norm = norm if norm is None else float(norm)
        self.sparsity = float(sparsity)
        self.window = window
        self.scale = bool(scale)
        self.to_db = bool(to_db)
        self.ref = float(ref)
        self.amin = float(amin)
        self.top_db = None if top_db is None else float(top_db)
        self._build_kernels()

    def _build_kernels(self):
        """Per-octave time-domain kernels and the resampling plan, as in `librosa.vqt`."""
        sr = float(self.sample_rate)
        bpo = self.bins_per_octave
        n_octaves = math.ceil(self.n_bins / bpo)
        n_filters = min(bpo, self.n_bins)
        freqs = librosa.interval_frequencies(
            n_bins=self.n_bins, fmin=self.fmin, intervals="equal", bins_per_octave=bpo, sort=True
        )
        self._frequencies = freqs
        alpha = _relative_bandwidth(freqs, bpo)
        full_lengths, cutoff = librosa.filters.wavelet_lengths(
            freqs=freqs,
            sr=sr,
            window=self.window,
            filter_scale=self.filter_scale,
            gamma=0,
            alpha=alpha,
        )
        if not np.max(full_lengths) <= MAX_FILTER_LENGTH:
            raise InputError(
                f"The lowest CQT filter ({freqs[0]:.3g} Hz) would be {np.max(full_lengths):.3g} "
                f"samples long, more than {MAX_FILTER_LENGTH}: raise `fmin` or lower "
                f"`filter_scale`."
            )
        nyquist = sr / 2
        if cutoff > nyquist:
            raise InputError(
                f"The highest CQT filter (bin {freqs[-1]:.1f} Hz, bandwidth up to {cutoff:.1f} Hz)"
                f" exceeds the Nyquist frequency {nyquist} Hz: lower `fmin`, `n_bins` or "
                f"`filter_scale`, or raise `bins_per_octave`."
            )
        # Early downsampling (librosa's __early_downsample_count): halve the rate before the
        # first octave while the filters stay well below Nyquist and the hop allows.
        count_by_band = max(0, int(np.ceil(np.log2(nyquist / cutoff)) - 1) - 1)
        count_by_hop = max(0, _num_two_factors(self.hop_length) - n_octaves + 1)
        self._early_downsample = min(count_by_band, count_by_hop)
        factor = 2**self._early_downsample
        sr_early = sr / factor
        # Each librosa.resample(scale=True) halving multiplies by sqrt(2); without `scale`
        # librosa compensates the early downsampling by another sqrt(factor).
        gain = math.sqrt(factor) if self.scale else float(factor)

        inv_sqrt_lengths = np.ones(self.n_bins)
        if self.scale:
            lengths, _ = librosa.filters.wavelet_lengths(
                freqs=freqs,
                sr=sr_early,
                window=self.window,
                filter_scale=self.filter_scale,
                gamma=0,
                alpha=alpha,
            )
            inv_sqrt_lengths = 1.0 / np.sqrt(lengths)

        self._octaves = []  # top octave first: (n_fft, hop, downsample_before, kernel)
        my_sr, my_hop, halvings = sr_early, self.hop_length // factor, 0
        for i in range(n_octaves):
            stop = self.n_bins - n_filters * i
            start = max(0, stop - n_filters)
            fft_basis, n_fft = _filter_fft(
                my_sr,
                freqs[start:stop],
                alpha[start:stop],
                self.filter_scale,
                self.norm,
                self.sparsity,
                self.window,
            )
            # librosa: basis *= sqrt(sr / my_sr), and sqrt(2) per resample(scale=True).
            octave_gain = gain * math.sqrt(sr_early / my_sr) * math.sqrt(2.0) ** halvings
            kernel = _time_kernel(fft_basis, n_fft) * octave_gain
            kernel *= np.tile(inv_sqrt_lengths[start:stop], 2)[None, :]
            downsample = i > 0 and self._octaves[-1][1] != my_hop
            # Converted once here: converting numpy in `call` would break PyTorch's graph
            # capture (torch.compile) at every kernel.
            kernel = signal.constant(_block_kernel(kernel, my_hop))
            self._octaves.append((n_fft, my_hop, downsample, kernel))
            if my_hop % 2 == 0:
                my_hop //= 2
                my_sr /= 2.0
                halvings += 1
        self._early_decimator = _Decimator(factor) if factor > 1 else None
        self._halver = _Decimator(2) if any(octave[2] for octave in self._octaves) else None

    @property
    def num_features(self) -> int:
        return self.n_bins

    def cqt_frequencies(self) -> np.ndarray:
        """Centre frequency of each bin in Hz (`librosa.cqt_frequencies`)."""
        return self._frequencies.copy()

    def num_frames(self, num_samples):
        """librosa's frame count: `1 + ceil(n / 2**d) // (hop_length / 2**d)`, `d` the number
        of early halvings (0 unless the bins lie far below Nyquist), i.e. usually
        `1 + n // hop_length`."""
        if num_samples is None:
            return None
        factor = 2**self._early_downsample
        return 1 + (-(-num_samples // factor)) // (self.hop_length // factor)

    def cqt_power(self, waveform):
        """`|C| ** 2` before the dB conversion, `(batch, frames, n_bins)`."""
        x = waveform
        if self._early_decimator is not None:
            x = self._early_decimator(x)
        n_frames = 1 + ops.shape(x)[1] // self._octaves[0][1]
        outputs = []
        for n_fft, hop, downsample, kernel in self._octaves:
            if downsample:
                x = self._halver(x)
            padded = ops.pad(x, [[0, 0], [n_fft // 2, n_fft // 2]])
            response = _blocked_conv(padded, kernel, hop, n_frames)
            half = kernel.shape[-1] // 2
            real, imag = response[..., :half], response[..., half:]
            outputs.append(real * real + imag * imag)
        return ops.concatenate(outputs[::-1], axis=-1)

    def frontend_call(self, waveform):
        power = self.cqt_power(waveform)
        if not self.to_db:
            return ops.sqrt(power)
        # librosa.amplitude_to_db(|C|) == power_to_db(|C|**2, ref=ref**2, amin=amin**2).
        return signal.power_to_db(power, amin=self.amin**2, ref=self.ref**2, top_db=self.top_db)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hop_length": self.hop_length,
                "fmin": self.fmin,
                "n_bins": self.n_bins,
                "bins_per_octave": self.bins_per_octave,
                "filter_scale": self.filter_scale,
                "norm": self.norm,
                "sparsity": self.sparsity,
                "window": self.window,
                "scale": self.scale,
                "to_db": self.to_db,
                "ref": self.ref,
                "amin": self.amin,
                "top_db": self.top_db,
            }
        )
        return config


def _block_kernel(kernel: np.ndarray, hop: int) -> np.ndarray:
    """Reshapes a `(rows, channels)` frame kernel for `_blocked_conv`: `(blocks, hop, channels)`,
    zero rows appended up to whole blocks of `hop` samples."""
    n_blocks = -(-kernel.shape[0] // hop)
    out = np.zeros((n_blocks * hop, kernel.shape[1]), np.float32)
    out[: kernel.shape[0]] = kernel
    return out.reshape(n_blocks, hop, kernel.shape[1])


def _blocked_conv(x, kernel, hop: int, n_frames):
    """`y[:, t] = x[:, t * hop : t * hop + rows] @ kernel` for `t < n_frames`, zero-extended.

    The signal is cut into blocks of `hop` samples and a frame spans `blocks` consecutive
    ones, so the framed matrix product is a stride-1 convolution over blocks with `hop` input
    channels: no frame is materialised (about twice as fast as framing then `matmul`), the
    shapes work for a dynamic number of samples, and it exports as a plain conv1d.
    `n_frames` may be a tensor; the signal is zero-extended as far as those frames need.
    """
    n_kernel_blocks = kernel.shape[0]
    n_blocks = n_frames + n_kernel_blocks - 1
    x = ops.pad(x, [[0, 0], [0, n_kernel_blocks * hop]])
    x = x[:, : n_blocks * hop]
    blocks = ops.reshape(x, (ops.shape(x)[0], n_blocks, hop))
    return ops.conv(blocks, kernel, strides=1, padding="valid")
