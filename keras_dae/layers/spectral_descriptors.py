"""Frame-wise spectral shape descriptors (timbre), matching `librosa.feature.spectral_*`."""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_dae.layers import signal
from keras_dae.layers.spectrogram_frontend import SpectrogramFrontend
from keras_dae.serialization import register
from keras_dae.validation import InputError

DESCRIPTORS = ("centroid", "bandwidth", "rolloff", "flatness", "contrast")
# librosa.util.normalize leaves columns whose sum is below tiny(float32) unnormalised.
_TINY = float(np.finfo(np.float32).tiny)


def contrast_bands(
    freq: np.ndarray, fmin: float, n_bands: int, quantile: float
) -> list[tuple[int, int, int]]:
    """librosa's spectral-contrast sub-bands as `(first_bin, stop_bin, n_quantile)` triples.

    Reproduces `librosa.feature.spectral_contrast`: band `k` takes the bins with
    `octa[k] <= f <= octa[k + 1]` (`octa = [0, fmin, 2 fmin, ..., fmin 2**n_bands]`), plus the
    bin just below it for `k > 0`; the last band runs up to Nyquist; every band but the last
    then drops its top bin. `n_quantile = max(rint(quantile * bins_before_the_drop), 1)`
    sorted bins are averaged for the valley and the peak. Each band is a contiguous range.
    """
    octa = np.zeros(n_bands + 2)
    octa[1:] = fmin * (2.0 ** np.arange(0, n_bands + 1))
    bands = []
    for k, (f_low, f_high) in enumerate(zip(octa[:-1], octa[1:], strict=True)):
        current = np.logical_and(freq >= f_low, freq <= f_high)
        idx = np.flatnonzero(current)
        if idx.size == 0:
            raise InputError(
                f"Spectral-contrast band {k} ({f_low:g}-{f_high:g} Hz) holds no STFT bin: "
                f"raise `contrast_fmin` ({fmin}) or `n_fft`."
            )
        start, stop = int(idx[0]), int(idx[-1]) + 1
        if k > 0:
            start -= 1
        if k == n_bands:
            stop = len(freq)
        count = stop - start
        if k < n_bands:
            stop -= 1
        if stop <= start:
            raise InputError(
                f"Spectral-contrast band {k} ({f_low:g}-{f_high:g} Hz) is empty once librosa "
                f"drops its top bin: raise `contrast_fmin` ({fmin}) or `n_fft`."
            )
        n_quantile = max(int(np.rint(quantile * count)), 1)
        bands.append((start, stop, min(n_quantile, stop - start)))
    return bands


@register
class SpectralDescriptors(SpectrogramFrontend):
    """Spectral centroid, bandwidth, roll-off, flatness and contrast from one shared STFT.

    Each descriptor is its `librosa.feature` twin computed with the same STFT settings:

    - `"centroid"`: `spectral_centroid`, magnitude-weighted mean frequency in Hz.
    - `"bandwidth"`: `spectral_bandwidth(p=p, norm=True)` around the centroid, in Hz.
    - `"rolloff"`: `spectral_rolloff(roll_percent=...)`: the centre frequency of the first
      bin at which the cumulative magnitude reaches `roll_percent` of the frame's total.
    - `"flatness"`: `spectral_flatness(power=flatness_power, amin=amin)`, geometric over
      arithmetic mean of `max(amin, |X| ** flatness_power)`.
    - `"contrast"`: `spectral_contrast(fmin=contrast_fmin, n_bands, quantile, linear)`,
      `n_bands + 1` columns (one per octave sub-band, the last running up to Nyquist), in
      dB unless `linear`. librosa's conventions are kept: magnitude (not power) spectrum,
      its band edges (each band borrows the bin below it and drops its top bin), and
      `max(rint(quantile * n_bins), 1)` sorted bins averaged for peak and valley. The dB
      conversion is librosa's `power_to_db` of the magnitudes with its `top_db=80` floor,
      taken per example over all bands and frames (librosa takes it over the whole array
      it is given, so batched librosa calls differ from one-clip-at-a-time calls; this layer
      equals the latter).

    Contrast floor (a deliberate deviation, `contrast_floor`): before peaks and valleys are
    taken, magnitudes are raised to `contrast_floor` times the frame's largest magnitude
    (default 1e-6, 120 dB below the frame's peak). A float32 DFT has rounding noise 120-145
    dB below the frame's peak (matmul 120-135, FFT 133-145), while librosa's FFT reports
    valleys of noiseless synthetic signals (pure tones, chirps) 200+ dB down. Below the floor
    neither number means anything, and unfloored values would differ between backends and
    DFT modes by up to ~20 dB; floored, they agree to ~0.2 dB. Recordings keep their valleys
    above it (the deepest in the test speech clip, near Nyquist after resampling, are ~110 dB
    down, and match librosa to 0.002 dB). `contrast_floor=None` disables the floor.

    Interpolated roll-off (a deviation, off by default: `interpolate_rolloff=True`): librosa's
    roll-off is the centre of the first bin at which the cumulative magnitude reaches
    `roll_percent` of the total, so where that sum nearly ties with the threshold, float32
    rounding in another runtime moves it by a whole bin (sample_rate / n_fft Hz). The
    interpolated roll-off places the crossing linearly inside that bin, between the previous
    bin's centre and its own: continuous in the magnitudes, never above librosa's value and
    less than one bin below it.

    Silent frames (an all-zero spectrum) have no defined centroid; like librosa, the layer
    returns finite values for them: centroid 0, bandwidth 0, roll-off 0, flatness 1, and for
    contrast the difference between the peak and valley dB floors (0 for an all-silent clip).

    Input `(batch, samples)` float waveform; output `(batch, frames, n_features)` float32, the
    columns in the order of `descriptors` (names in `feature_names`), with `frames = 1 +
    samples // hop_length` when `center=True`. The STFT is computed once per call; contrast
    sorts static per-band bin slices with `top_k`, so no Python loop runs over frames.

    Args:
        descriptors: which descriptors to output, in this order (a subset of
            `("centroid", "bandwidth", "rolloff", "flatness", "contrast")`, no repeats).
        roll_percent: roll-off fraction, in (0, 1).
        n_bands: number of octave bands of spectral contrast (`n_bands + 1` outputs).
        contrast_fmin: lower edge of the first octave band in Hz (librosa's `fmin` of
            `spectral_contrast`). librosa requires `contrast_fmin * 2 ** (n_bands - 1)` below
            Nyquist; the default 200 Hz (librosa's) works at 16 kHz with 6 bands.
        quantile: share of a band's bins averaged for its peak and valley, in (0, 1).
        linear: contrast as a linear difference `peak - valley` instead of dB.
        contrast_floor: floor of the magnitudes entering contrast, relative to each frame's
            largest magnitude (see above), in [0, 1); None (or 0) disables it.
        interpolate_rolloff: place the roll-off inside its bin (see above) instead of at
            librosa's bin centre.
        p: exponent of the bandwidth's deviation (librosa's `p`).
        flatness_power: exponent of the magnitude in flatness (librosa's `power`, 2 = power).
        amin: floor of `|X| ** flatness_power` in flatness (librosa's `amin`).
        **kwargs: STFT arguments of `SpectrogramFrontend` (`sample_rate`, `n_fft`,
            `hop_length`, `win_length`, `window`, `center`, `pad_mode`, `dft_mode`).

    Examples:
        >>> layer = SpectralDescriptors(sample_rate=16000)
        >>> tuple(layer(np.zeros((2, 16000), "float32")).shape)
        (2, 101, 11)
        >>> layer.feature_names[:4]
        ['centroid', 'bandwidth', 'rolloff', 'flatness']
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        descriptors=DESCRIPTORS,
        roll_percent: float = 0.85,
        n_bands: int = 6,
        contrast_fmin: float = 200.0,
        quantile: float = 0.02,
        linear: bool = False,
        contrast_floor: float | None = 1e-6,
        interpolate_rolloff: bool = False,
        p: float = 2.0,
        flatness_power: float = 2.0,
        amin: float = 1e-10,
        **kwargs,
    ):
        super().__init__(sample_rate=sample_rate, **kwargs)
        if isinstance(descriptors, str):
            descriptors = (descriptors,)
        descriptors = tuple(descriptors)
        if not descriptors:
            raise InputError("`descriptors` must name at least one descriptor.")
        for name in descriptors:
            signal.check_choice("descriptors", name, DESCRIPTORS)
        if len(set(descriptors)) != len(descriptors):
            raise InputError(f"`descriptors` must not repeat a name, got {descriptors!r}.")
        if not 0.0 < roll_percent < 1.0:
            raise InputError(f"`roll_percent` must lie in (0, 1), got {roll_percent!r}.")
        signal.check_positive_int("n_bands", n_bands)
        if not contrast_fmin > 0:
            raise InputError(f"`contrast_fmin` must be positive, got {contrast_fmin!r}.")
        nyquist = self.sample_rate / 2
        if contrast_fmin * 2.0 ** (n_bands - 1) >= nyquist:
            raise InputError(
                f"Spectral-contrast bands exceed Nyquist ({nyquist} Hz): need "
                f"`contrast_fmin` * 2 ** (`n_bands` - 1) < {nyquist}, got contrast_fmin="
                f"{contrast_fmin}, n_bands={n_bands}."
            )
        if not 0.0 < quantile < 1.0:
            raise InputError(f"`quantile` must lie in (0, 1), got {quantile!r}.")
        if contrast_floor is not None and not 0 <= contrast_floor < 1:
            raise InputError(
                f"`contrast_floor` must lie in [0, 1) or be None, got {contrast_floor!r}."
            )
        if not p > 0:
            raise InputError(f"`p` must be positive, got {p!r}.")
        if not flatness_power > 0:
            raise InputError(f"`flatness_power` must be positive, got {flatness_power!r}.")
        if not amin > 0:
            raise InputError(f"`amin` must be positive, got {amin!r}.")
        self.descriptors = descriptors
        self.roll_percent = float(roll_percent)
        self.n_bands = int(n_bands)
        self.contrast_fmin = float(contrast_fmin)
        self.quantile = float(quantile)
        self.linear = bool(linear)
        self.contrast_floor = None if contrast_floor is None else float(contrast_floor)
        self.interpolate_rolloff = bool(interpolate_rolloff)
        self.p = float(p)
        self.flatness_power = float(flatness_power)
        self.amin = float(amin)
        freq = self.fft_frequencies()
        # Static (start, stop, n_quantile) per contrast band; checks the bands are non-empty.
        self._bands = (
            contrast_bands(freq, self.contrast_fmin, self.n_bands, self.quantile)
            if "contrast" in descriptors
            else []
        )
        self._freq = freq.astype(np.float32)
        self._freq_tensor = signal.constant(self._freq)  # (n_freq,)
        self._freq_column = signal.constant(self._freq[:, None])  # (n_freq, 1)

    @property
    def feature_names(self) -> list[str]:
        names = []
        for name in self.descriptors:
            if name == "contrast":
                names.extend(f"contrast_{k}" for k in range(self.n_bands + 1))
            else:
                names.append(name)
        return names

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def frontend_call(self, waveform):
        power_spec = self.spectrogram(waveform, power=2.0)  # (batch, frames, n_freq)
        mag = ops.sqrt(power_spec)
        freq = self._freq_tensor
        outputs = {}
        wanted = set(self.descriptors)
        if wanted & {"centroid", "bandwidth"}:
            total = ops.sum(mag, axis=-1, keepdims=True)
            # librosa.util.normalize(norm=1) leaves (near-)silent frames as they are.
            total = ops.where(total < _TINY, ops.ones_like(total), total)
            # Weighted sums over bins as products with constant columns: the same numbers as
            # sum(weights * freq), and it avoids a slow reduce-broadcast-reduce fusion in XLA.
            centroid = ops.matmul(mag, self._freq_column) / total
            outputs["centroid"] = centroid
            if "bandwidth" in wanted:
                deviation = freq - centroid
                if self.p == 2.0:
                    spread = deviation * deviation
                else:
                    spread = ops.power(ops.abs(deviation), self.p)
                ones = ops.ones((self.n_freq, 1), dtype=mag.dtype)
                spread = ops.matmul(mag * spread, ones) / total
                outputs["bandwidth"] = (
                    ops.sqrt(spread) if self.p == 2.0 else ops.power(spread, 1.0 / self.p)
                )
        if "rolloff" in wanted:
            cumulative = ops.cumsum(mag, axis=-1)
            threshold = self.roll_percent * cumulative[..., -1:]
            # The cumulative sum is non-decreasing: the first bin reaching the threshold is
            # the number of bins below it. An all-zero frame gives bin 0, as in librosa.
            below = ops.sum(ops.cast(cumulative < threshold, "float32"), axis=-1, keepdims=True)
            below = ops.minimum(below, float(self.n_freq - 1))
            if self.interpolate_rolloff:
                below = self._rolloff_position(cumulative, threshold, below)
            outputs["rolloff"] = below * (self.sample_rate / self.n_fft)
        if "flatness" in wanted:
            if self.flatness_power == 2.0:
                s = power_spec
            elif self.flatness_power == 1.0:
                s = mag
            else:
                s = ops.power(mag, self.flatness_power)
            s = ops.maximum(s, self.amin)
            gmean = ops.exp(ops.mean(ops.log(s), axis=-1, keepdims=True))
            amean = ops.mean(s, axis=-1, keepdims=True)
            outputs["flatness"] = gmean / amean
        if "contrast" in wanted:
            outputs["contrast"] = self._contrast(mag)
        return ops.concatenate([outputs[name] for name in self.descriptors], axis=-1)

    @staticmethod
    def _rolloff_position(cumulative, threshold, bin_index):
        """The threshold's crossing in bins, interpolated inside the crossing bin `k`:
        `k - 1 + deficit / (deficit + excess)`, where `excess` is how far the cumulative sum
        at `k` passes the threshold and `deficit` how far the sum before `k` falls short
        (their sum is bin `k`'s magnitude). Clipped at 0; an all-zero frame gives 0."""
        reached = cumulative >= threshold
        excess = ops.amin(ops.where(reached, cumulative - threshold, cumulative[..., -1:]),
                         axis=-1, keepdims=True)
        before = ops.amax(ops.where(reached, ops.zeros_like(cumulative), cumulative),
                         axis=-1, keepdims=True)
        deficit = threshold - before
        width = excess + deficit
        safe = ops.where(width > 0, width, ops.ones_like(width))
        fraction = ops.where(width > 0, deficit / safe, ops.ones_like(width))
        return ops.maximum(bin_index - 1.0 + fraction, 0.0)

    def _contrast(self, mag):
        if self.contrast_floor:
            frame_peak = ops.amax(mag, axis=-1, keepdims=True)
            mag = ops.maximum(mag, self.contrast_floor * frame_peak)
        peaks, valleys = [], []
        for start, stop, n in self._bands:
            band = mag[..., start:stop]
            if n == 1:
                peak = ops.amax(band, axis=-1, keepdims=True)
                valley = ops.amin(band, axis=-1, keepdims=True)
            else:
                peak = ops.mean(ops.top_k(band, n, sorted=False)[0], axis=-1, keepdims=True)
                valley = -ops.mean(ops.top_k(-band, n, sorted=False)[0], axis=-1, keepdims=True)
            peaks.append(peak)
            valleys.append(valley)
        peak = ops.concatenate(peaks, axis=-1)
        valley = ops.concatenate(valleys, axis=-1)
        if self.linear:
            return peak - valley
        # librosa: power_to_db(peak) - power_to_db(valley) with its defaults (ref=1,
        # amin=1e-10, top_db=80), applied to magnitudes; floors taken per example.
        return signal.power_to_db(peak) - signal.power_to_db(valley)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "descriptors": list(self.descriptors),
                "roll_percent": self.roll_percent,
                "n_bands": self.n_bands,
                "contrast_fmin": self.contrast_fmin,
                "quantile": self.quantile,
                "linear": self.linear,
                "contrast_floor": self.contrast_floor,
                "interpolate_rolloff": self.interpolate_rolloff,
                "p": self.p,
                "flatness_power": self.flatness_power,
                "amin": self.amin,
            }
        )
        return config
