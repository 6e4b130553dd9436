"""Frame-wise fundamental frequency and periodicity confidence with YIN, matching librosa."""

from __future__ import annotations

import warnings

import numpy as np
from keras import ops

from keras_dae.layers import signal
from keras_dae.layers.audio_frontend import AudioFrontend
from keras_dae.serialization import register
from keras_dae.validation import InputError

# librosa.util.tiny(float32): the smallest normal float32, added to the YIN denominators.
_TINY = float(np.finfo(np.float32).tiny)
# Most slice-and-add ops the blocked autocorrelation may put in the graph (see `_plan`).
_MAX_BLOCK_TERMS = 64


@register
class PitchTracker(AudioFrontend):
    """Fundamental frequency (f0) and periodicity confidence per frame: `librosa.yin` in a layer.

    Input `(batch, samples)` float waveform; output `(batch, frames, 2)` float32 with
    `frames = 1 + samples // hop_length` when `center=True` (librosa's count), where

    - `[..., 0]` is f0 in Hz by exactly the algorithm of `librosa.yin`: frames centred by
      padding `frame_length // 2` samples, the autocorrelation `r` of each whole frame up to
      lag `max_period = min(ceil(sample_rate / fmin), frame_length - 1)`, the difference
      function `d(k) = 2 * (r(0) - r(k)) - sum_{m < k} y(m)^2`, its cumulative mean
      normalisation `d'(k) = d(k) / (mean(d(1..k)) + tiny)` on the periods
      `k = floor(sample_rate / fmax) .. max_period`, the first trough (local minimum) of `d'`
      below `trough_threshold` or else the first global minimum, parabolic interpolation
      around it, and `f0 = sample_rate / period`. As in librosa.yin, f0 carries no voicing
      decision: every frame, silence included, gets an f0 between `sample_rate /
      (max_period + 1)` and `sample_rate / (min_period - 1)`.
    - `[..., 1]` is the confidence `clip(1 - d'(tau), 0, 1)` at the chosen integer period
      index `tau`, or 0 when `tau` is not a trough of `d'` (a flat `d'`, as on digital
      silence, where `d' = 0 / tiny = 0` everywhere and librosa still returns the shortest
      period). It is near 1 for a periodic frame and near 0 for noise. When a trough lies
      below `trough_threshold`, `tau` is the first one and the confidence exceeds
      `1 - trough_threshold`; otherwise `tau` is the global minimum, so that for
      `v <= 1 - trough_threshold`, `confidence > v` means "the deepest trough of `d'` is
      below `1 - v`", the quantity pYIN's voicing probability decreases with.

    `is_voiced(outputs)` is the voicing decision `confidence > voicing_threshold`: a per-frame
    rule without pYIN's HMM smoothing, it agreed with `librosa.pyin`'s `voiced_flag` on 91% of
    the frames of the test speech recording and on 98-100% of tones between silences.

    Computation: the autocorrelation is a real DFT of each frame (or of each block of the
    signal), its squared magnitude, and an inverse real DFT. With `dft_mode="matmul"` (the
    default) both transforms are products with precomputed kernels (no FFT, no complex
    tensors), so the layer runs under XLA with dynamic lengths and exports to TFLite and ONNX.
    With `dft_mode="fft"` both are `keras.ops.rfft` (TFLite's RFFT2D builtin; there is no
    inverse FFT builtin, so the inverse is the forward real FFT of the spectrum extended to its
    full Hermitian length) at a power-of-two size, and no DFT matrix is built: this saves the
    two kernels (~1 MB in a float32 TFLite file for the defaults) but does not export to ONNX.
    The two modes agree to float32 rounding. When a block size divides `hop_length` (e.g. 256
    for the defaults, 160 for `hop_length=160`), each block of the signal is transformed once
    and the frames' autocorrelations are summed from the cross-spectra of their blocks,
    several times fewer operations than transforming every overlapping frame; otherwise each
    frame is transformed whole. The trough search and the minima are masked minimum
    reductions, and the parabolic interpolation gathers with `take_along_axis`.

    Args:
        sample_rate: sampling rate of the waveform in Hz (librosa's `sr`).
        fmin: lowest f0 searched, in Hz (default C2, librosa's recommendation).
        fmax: highest f0 searched, in Hz (default C7); `0 < fmin < fmax <= sample_rate / 2`.
        frame_length: samples per analysis frame; a period of `fmin` must fit:
            `sample_rate / fmin < frame_length - 1` (librosa warns, and so does this layer,
            when two periods do not fit).
        hop_length: samples between frames (default `frame_length // 4`, as librosa).
        trough_threshold: absolute threshold on `d'` for the trough search (YIN's).
        center: pad `frame_length // 2` samples on both sides so that frame `t` is centred on
            sample `t * hop_length` (librosa's default). Without it an input shorter than
            `frame_length` is refused (as librosa refuses it), or gives 0 frames where its
            length is only known at run time.
        pad_mode: `"constant"` (zeros, librosa's default for yin) or `"reflect"` (needs more
            than `frame_length // 2` samples).
        voicing_threshold: confidence above which `is_voiced` calls a frame voiced, in
            `[0, 1]`. The default 0.55 (deepest trough of `d'` below 0.45) gave the fewest
            disagreements with pYIN over the test signals (speech, tones in silence, chirp,
            noise, a shutter and a phone ring).
        dft_mode: how the autocorrelation's DFTs are computed: `"matmul"` (default), products
            with precomputed real kernels that every export format runs, or `"fft"`,
            `keras.ops.rfft` only (forward real FFTs, no complex tensors), which converts to
            TFLite builtins without storing the kernels. keras-dae's export uses `"fft"` in
            int8 TFLite files only: YIN's trough choice is discontinuous, so float32 exports
            keep the Keras model's own mode (see `keras_dae.export.export_ready_model`).
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Examples:
        >>> layer = PitchTracker(sample_rate=16000)
        >>> out = layer(np.zeros((2, 16000), "float32"))
        >>> tuple(out.shape)
        (2, 63, 2)
        >>> f0_hz, confidence = out[..., 0], out[..., 1]
        >>> voiced = layer.is_voiced(out)
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        fmin: float = 65.40639132514966,
        fmax: float = 2093.004522404789,
        frame_length: int = 1024,
        hop_length: int | None = None,
        trough_threshold: float = 0.1,
        center: bool = True,
        pad_mode: str = "constant",
        voicing_threshold: float = 0.55,
        dft_mode: str = "matmul",
        **kwargs,
    ):
        super().__init__(sample_rate=sample_rate, **kwargs)
        signal.check_positive_int("frame_length", frame_length)
        signal.check_positive_int("hop_length", hop_length, allow_none=True)
        signal.check_choice("pad_mode", pad_mode, signal.PAD_MODES)
        signal.check_choice("dft_mode", dft_mode, signal.DFT_MODES)
        sr = self.sample_rate
        if not fmin > 0:
            raise InputError(f"`fmin` must be strictly positive, got fmin={fmin!r}.")
        if fmax > sr / 2:
            raise InputError(
                f"`fmax`={fmax!r} cannot exceed the Nyquist frequency sample_rate / 2 = {sr / 2}."
            )
        if fmin >= fmax:
            raise InputError(f"`fmin`={fmin!r} must be less than `fmax`={fmax!r}.")
        if sr / fmin >= frame_length - 1:
            raise InputError(
                f"`frame_length`={frame_length} is too short for `fmin`={fmin!r} at "
                f"sample_rate={sr}: one period must fit, i.e. sample_rate / fmin < "
                f"frame_length - 1. Use frame_length >= {int(np.ceil(sr / fmin) + 2)} or "
                f"fmin > {sr / (frame_length - 1):.3f}."
            )
        if sr / fmin >= frame_length // 2:
            warnings.warn(
                f"With fmin={fmin:.3f}, sample_rate={sr} and frame_length={frame_length}, less "
                "than two periods of fmin fit into the frame, which can cause inaccurate pitch "
                "detection (as librosa warns).",
                stacklevel=2,
            )
        if isinstance(trough_threshold, bool) or not trough_threshold > 0:
            raise InputError(
                f"`trough_threshold` must be a positive number, got {trough_threshold!r}."
            )
        if isinstance(voicing_threshold, bool) or not 0 <= voicing_threshold <= 1:
            raise InputError(f"`voicing_threshold` must lie in [0, 1], got {voicing_threshold!r}.")
        self.fmin = float(fmin)
        self.fmax = float(fmax)
        self.frame_length = int(frame_length)
        # frame_length >= 4 here (sample_rate / fmin > 2), so the default hop is >= 1.
        self.hop_length = self.frame_length // 4 if hop_length is None else int(hop_length)
        self._hop_length_arg = None if hop_length is None else int(hop_length)
        self.trough_threshold = float(trough_threshold)
        self.center = bool(center)
        self.pad_mode = pad_mode
        self.voicing_threshold = float(voicing_threshold)
        self.dft_mode = dft_mode

        # Periods searched, in samples, exactly as librosa.yin.
        self.min_period = int(np.floor(sr / self.fmax))
        self.max_period = min(int(np.ceil(sr / self.fmin)), self.frame_length - 1)
        self.n_periods = self.max_period - self.min_period + 1

        # Constants built from the config (never weights).
        plan = _plan(self.frame_length, self.hop_length, self.max_period)
        self._blocked, self._block, self._n_fft, self._n_lag_blocks = plan
        if dft_mode == "fft":
            # A larger transform changes nothing (the zero padding only grows), so take the
            # power of two that TFLite's RFFT2D needs, with the lags up to max_period among the
            # n_fft // 2 + 1 outputs of the inverse's forward FFT.
            self._n_fft = _power_of_two(max(self._n_fft, 2 * self.max_period))
        self._forward_kernel, self._phases, self._inverse_kernel = _autocorrelation_kernels(
            self._block,
            self._n_fft,
            self._n_lag_blocks,
            self.max_period,
            matrices=dft_mode == "matmul",
        )
        # Made once here, never in `call` (see `signal.constant`).
        self._phase_tensors = [
            (signal.constant(self._phases[i, 0]), signal.constant(self._phases[i, 1]))
            for i in range(len(self._phases))
        ]
        self._forward_tensor = (
            None if self._forward_kernel is None else signal.constant(self._forward_kernel)
        )
        self._inverse_tensor = (
            None if self._inverse_kernel is None else signal.constant(self._inverse_kernel)
        )
        self._lags_tensor = signal.constant(np.arange(1, self.max_period + 1))
        self._period_index = signal.constant(np.arange(self.n_periods), "int32")

    # ------------------------------------------------------------------ shapes

    @property
    def num_features(self) -> int:
        return 2

    @property
    def framing(self):
        return (self.frame_length, self.center, self.pad_mode)

    def num_frames(self, num_samples):
        return signal.num_frames(num_samples, self.frame_length, self.hop_length, self.center)

    # ------------------------------------------------------------------ computation

    def _difference(self, x):
        """librosa's YIN difference function `d(k)` for lags `k = 1..max_period`.

        Returns `(batch, frames, max_period)` for the padded signal `x`, whose frames are
        `x[t * hop : t * hop + frame_length]` (at least one must exist).
        """
        n, hop, k_max = self.frame_length, self.hop_length, self.max_period
        block = self._block
        batch = ops.shape(x)[0]
        num_samples = ops.shape(x)[1]
        n_frames = 1 + (num_samples - n) // hop
        if self._blocked:
            # Blocks of `block` samples (which divides hop): frame t is the full blocks
            # t*h .. t*h + q - 1 and, when block does not divide frame_length, the first
            # `rest` samples of block t*h + q.
            h = hop // block
            q, rest = divmod(n, block)
            n_b = q + (rest > 0)
            if rest:
                x = ops.pad(x, [[0, 0], [0, block - rest]])
            n_blocks = (n_frames - 1) * h + n_b
            blocks = ops.reshape(x[:, : n_blocks * block], (batch, n_blocks, block))
            n_starts = n_blocks - n_b + 1

            def frames_of(t, p):  # block p of every frame, from a per-block tensor t
                return t[:, p : p + n_starts : h] if h > 1 else t[:, p : p + n_starts]

            head = ops.concatenate(
                [frames_of(blocks, p) for p in range(-(-k_max // block))], axis=-1
            )[..., :k_max]
        else:
            # Every frame transformed whole (n_fft >= frame_length + max_period).
            h, q, rest = 1, 1, 0
            blocks = signal.frame(x, n, hop)
            head = blocks[..., :k_max]

            def frames_of(t, p):
                return t

        re, im = self._spectrum(blocks)
        if rest:
            part_re, part_im = self._spectrum(frames_of(blocks, q)[..., :rest])

        def frame_sum(t, n_terms):  # sum of t over the first n_terms full blocks of each frame
            total = frames_of(t, 0)
            for p in range(1, n_terms):
                total = total + frames_of(t, p)
            return total

        # Spectrum S of each frame's autocorrelation: the cross-spectra conj(U_a) * U_b of its
        # block pairs b - a = l, each delayed by l * block samples (phase
        # exp(-2i pi f l block / n_fft), in `self._phases`), summed.
        s_re = frame_sum(re * re + im * im, q)
        if rest:
            s_re = s_re + part_re * part_re + part_im * part_im
        s_im = None
        for lag in range(1, self._n_lag_blocks + 1):
            w_re = w_im = None
            if lag < q:  # pairs of full blocks
                re_a, im_a, re_b, im_b = re[:, :-lag], im[:, :-lag], re[:, lag:], im[:, lag:]
                w_re = frame_sum(re_a * re_b + im_a * im_b, q - lag)
                w_im = frame_sum(re_a * im_b - im_a * re_b, q - lag)
            if rest:  # the pair (full block q - l, partial block q)
                re_a, im_a = frames_of(re, q - lag), frames_of(im, q - lag)
                p_re = re_a * part_re + im_a * part_im
                p_im = re_a * part_im - im_a * part_re
                w_re = p_re if w_re is None else w_re + p_re
                w_im = p_im if w_im is None else w_im + p_im
            cos, sin = self._phase_tensors[lag - 1]
            s_re = s_re + w_re * cos + w_im * sin
            term_im = w_im * cos - w_re * sin
            s_im = term_im if s_im is None else s_im + term_im
        diff = self._lag_differences(s_re, s_im)
        energy = ops.cumsum(head * head, axis=-1)  # sum_{m < k} y(m)^2 at index k - 1
        return diff - energy

    def _spectrum(self, t):
        """Real DFT `(re, im)`, each `(..., n_freq)`, of `t` `(..., rows)` zero-padded to n_fft.

        Unwindowed and unscaled, in `numpy.fft.rfft`'s convention: `re + 1j * im ==
        np.fft.rfft(t, n_fft)` (the matmul kernel is cosines, then minus sines).
        """
        n_fft, rows = self._n_fft, t.shape[-1]
        if self.dft_mode == "fft":
            t = ops.pad(t, [[0, 0]] * (len(t.shape) - 1) + [[0, n_fft - rows]])
            return ops.rfft(t, fft_length=n_fft)
        forward = self._forward_tensor
        spec = ops.matmul(t, forward if rows == forward.shape[0] else forward[:rows])
        n_freq = n_fft // 2 + 1
        return spec[..., :n_freq], spec[..., n_freq:]

    def _lag_differences(self, s_re, s_im):
        """`2 * (r(0) - r(k))` for `k = 1..max_period`, `(..., max_period)`, where `r =
        irfft(S, n_fft)` and `S = s_re + i s_im` (`s_im` None: a real spectrum).

        matmul: one product with the inverse kernel. fft: with `N = n_fft`, `r(k) = (1/N) Re
        sum_f S_f e^{+2 pi i f k / N}` over all `N` bins, where `S_{N-f} = conj(S_f)`: the
        real part `A` of the full spectrum is even and the imaginary part `B` odd, so
        `r(k) = (1/N) (Re DFT(A)(k) + Im DFT(B)(k))`. `DFT(A)` is real and `DFT(B)` purely
        imaginary, hence one forward real FFT of `C = A + B` gives both: `r(k) = (1/N)
        (Re + Im) DFT(C)(k)`, with `C_f = S_re(f) + S_im(f)` and `C_{N-f} = S_re(f) -
        S_im(f)` for `0 < f < N/2`, `C_0 = S_re(0)`, `C_{N/2} = S_re(N/2)` (the imaginary
        parts of the DC and Nyquist bins are dropped, as irfft does). `N >= 2 * max_period`
        keeps every lag among the FFT's outputs.
        """
        if self.dft_mode == "matmul":
            if s_im is not None:
                s_re = ops.concatenate([s_re, s_im], axis=-1)
            return ops.matmul(s_re, self._inverse_tensor)
        n_fft, k_max = self._n_fft, self.max_period
        half = n_fft // 2
        if s_im is None:  # an even sequence: its DFT is real
            inner = s_re[..., 1:half]
            full = ops.concatenate([s_re, ops.flip(inner, axis=-1)], axis=-1)
            r, _ = ops.rfft(full, fft_length=n_fft)
        else:
            re_in, im_in = s_re[..., 1:half], s_im[..., 1:half]
            full = ops.concatenate(
                [s_re[..., :1], re_in + im_in, s_re[..., half:], ops.flip(re_in - im_in, axis=-1)],
                axis=-1,
            )
            c_re, c_im = ops.rfft(full, fft_length=n_fft)
            r = c_re + c_im
        r = r[..., : k_max + 1]
        return (2.0 / n_fft) * (r[..., :1] - r[..., 1:])

    def _yin(self, x):
        """f0 and confidence `(batch, frames, 2)` for the padded signal `x`."""
        d = self._difference(x)
        lags = self._lags_tensor
        cumulative_mean = ops.cumsum(d, axis=-1) / lags
        lo = self.min_period - 1
        # max(., 0) only matters for rounding noise on (near-)silent frames: the mean of a
        # non-negative function cannot be negative, and it keeps every denominator >= tiny.
        yin = d[..., lo:] / (ops.maximum(cumulative_mean[..., lo:], 0.0) + _TINY)

        # Troughs: local minima (x[i] < x[i-1] and x[i] <= x[i+1]); the first element is one
        # if x[0] < x[1], the last if x[-1] < x[-2] (librosa.util.localmin + yin's rule).
        first = yin[..., :1] < yin[..., 1:2]
        last = yin[..., -1:] < yin[..., -2:-1]
        middle = ops.logical_and(yin[..., 1:-1] < yin[..., :-2], yin[..., 1:-1] <= yin[..., 2:])
        is_trough = ops.concatenate([first, middle, last], axis=-1)

        n_p = self.n_periods
        index = self._period_index
        # First trough below the threshold (smallest index of a masked set, with no reliance on
        # argmax's tie order), else the first global minimum.
        below = ops.logical_and(is_trough, yin < self.trough_threshold)
        first_below = ops.amin(ops.where(below, index, n_p), axis=-1, keepdims=True)
        global_min = ops.amin(yin, axis=-1, keepdims=True)
        first_min = ops.amin(ops.where(yin <= global_min, index, n_p), axis=-1, keepdims=True)
        tau = ops.where(first_below < n_p, first_below, ops.minimum(first_min, n_p - 1))

        # Parabolic interpolation around tau; no shift at the edges or when |b| >= |a| (never
        # the case at a trough, where |b| < a, but it keeps a flat minimum from dividing 0 / 0).
        y_prev = ops.take_along_axis(yin, ops.maximum(tau - 1, 0), axis=-1)
        y_mid = ops.take_along_axis(yin, tau, axis=-1)
        y_next = ops.take_along_axis(yin, ops.minimum(tau + 1, n_p - 1), axis=-1)
        a = y_next + y_prev - 2.0 * y_mid
        b = (y_next - y_prev) / 2.0
        no_shift = ops.logical_or(
            ops.abs(b) >= ops.abs(a), ops.logical_or(tau == 0, tau == n_p - 1)
        )
        shift = ops.where(no_shift, 0.0, -b / ops.where(no_shift, 1.0, a))
        period = ops.cast(tau + self.min_period, "float32") + shift
        f0 = float(self.sample_rate) / period

        trough_at_tau = ops.take_along_axis(ops.cast(is_trough, "float32"), tau, axis=-1)
        confidence = trough_at_tau * ops.clip(1.0 - y_mid, 0.0, 1.0)
        return ops.concatenate([f0, confidence], axis=-1)

    def frontend_call(self, waveform):
        x = signal.pad_center(waveform, self.frame_length, self.center, self.pad_mode)
        if self.center:
            # At least one frame exists for any input of >= 1 sample.
            return self._yin(x)
        # Without centring a short input has no frame: compute on a zero-extended signal
        # (so that shapes never go negative) and keep librosa's frame count.
        num_samples = ops.shape(x)[1]
        n_out = 1 + (num_samples - self.frame_length) // self.hop_length
        n_out = ops.maximum(n_out, 0) if not isinstance(n_out, int) else max(n_out, 0)
        x = ops.pad(x, [[0, 0], [0, self.frame_length - 1]])
        return self._yin(x)[:, :n_out]

    def is_voiced(self, outputs):
        """Voicing decision from this layer's outputs: `confidence > voicing_threshold`."""
        return outputs[..., 1] > self.voicing_threshold

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "fmin": self.fmin,
                "fmax": self.fmax,
                "frame_length": self.frame_length,
                "hop_length": self._hop_length_arg,
                "trough_threshold": self.trough_threshold,
                "center": self.center,
                "pad_mode": self.pad_mode,
                "voicing_threshold": self.voicing_threshold,
                "dft_mode": self.dft_mode,
            }
        )
        return config


def _plan(frame_length: int, hop_length: int, max_period: int):
    """Chooses how to compute the frames' autocorrelations up to lag `max_period`.

    Returns `(blocked, block, n_fft, n_lag_blocks)`.

    - Not blocked: each (overlapping) frame is transformed whole by an `n_fft = frame_length +
      max_period` point real DFT, so that its circular autocorrelation is the linear one up to
      `max_period` (`block = frame_length`, `n_lag_blocks = 0`).
    - Blocked: `block` divides `hop_length`; every block of the signal is transformed once
      (zero-padded to `n_fft`) and a frame's autocorrelation is the sum of the
      cross-correlations of its block pairs up to `n_lag_blocks` blocks apart (a frame is
      `frame_length // block` blocks plus the start of the next one when `block` does not
      divide `frame_length`). `n_fft >= (n_lag_blocks + 1) * block` keeps a block's window of
      followers from wrapping around and `n_fft >= block + max_period` the lags.

    The choice minimises a rough cost per frame: the multiply-adds of the products with the
    kernels plus the elementwise work weighted 8x (memory-bound, one op per term), among
    plans of at most `_MAX_BLOCK_TERMS` slice-and-add terms.
    """
    k = max_period
    n_fft = frame_length + k
    n_freq = n_fft // 2 + 1
    best_cost = frame_length * 2 * n_freq + n_freq * k + 8 * 3 * n_freq
    best = (False, frame_length, n_fft, 0)
    for block in range(1, min(hop_length, frame_length) + 1):
        if hop_length % block:
            continue
        h = hop_length // block
        q, rest = divmod(frame_length, block)
        lag_blocks = min(-(-k // block), q - (rest == 0))
        n_fft = max((lag_blocks + 1) * block, block + k)
        n_freq = n_fft // 2 + 1
        n_terms = q + 2 * sum(max(q - lag, 0) for lag in range(1, lag_blocks + 1))
        if n_terms > _MAX_BLOCK_TERMS:
            continue
        pairs = (3 + 6 * lag_blocks) * n_freq
        elementwise = h * pairs + n_terms * n_freq + 6 * lag_blocks * n_freq
        forward = hop_length * 2 * n_freq
        if rest:
            elementwise += pairs
            forward += rest * 2 * n_freq
        inverse = (2 if lag_blocks else 1) * n_freq * k
        cost = forward + inverse + 8 * elementwise
        if cost < best_cost:
            best_cost, best = cost, (True, block, n_fft, lag_blocks)
    return best


def _power_of_two(n: int) -> int:
    """The smallest power of two `>= n`."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _autocorrelation_kernels(
    block: int, n_fft: int, n_lag_blocks: int, max_period: int, matrices: bool = True
):
    """Constants of the autocorrelation, in float32 (forward and inverse None unless
    `matrices`: the FFT mode needs only the phases).

    - forward `(block, 2 * n_freq)`: the real DFT of a block zero-padded to `n_fft` (real parts
      then imaginary parts, as `signal.dft_kernel`);
    - phases `(n_lag_blocks, 2, n_freq)`: cos and sin of `2 pi f l block / n_fft`, the delay of
      the cross-spectrum of blocks `l` apart;
    - inverse `(n_freq or 2 * n_freq, max_period)`: maps `[Re S, Im S]` to `2 * (r(0) - r(k))`
      for `k = 1..max_period`, where `r = irfft(S, n_fft)` (`Im S` is zero without lags).
    """
    n_freq = n_fft // 2 + 1
    f = np.arange(n_freq)[:, None]

    def angle(m):  # 2 pi f m / n_fft, reduced exactly in integers
        return 2.0 * np.pi * ((f * m) % n_fft) / n_fft

    phases = (
        np.stack(
            [
                np.stack([np.cos(angle(lag * block))[:, 0], np.sin(angle(lag * block))[:, 0]])
                for lag in range(1, n_lag_blocks + 1)
            ]
        )
        if n_lag_blocks
        else np.zeros((0, 2, n_freq))
    ).astype(np.float32)
    if not matrices:
        return None, phases, None
    forward = signal.dft_kernel(n_fft, np.ones(n_fft))[:block]
    weight = np.full((n_freq, 1), 2.0)  # irfft: bins other than DC and Nyquist count twice
    weight[0] = 1.0
    if n_fft % 2 == 0:
        weight[-1] = 1.0
    weight *= 2.0 / n_fft
    k = np.arange(1, max_period + 1)[None, :]
    rows = [weight * (1.0 - np.cos(angle(k)))]
    if n_lag_blocks:
        rows.append(weight * np.sin(angle(k)))
    inverse = np.concatenate(rows, axis=0)
    return forward.astype(np.float32), phases, inverse.astype(np.float32)
