"""Signal-processing building blocks shared by the front-end layers.

Everything here is written with `keras.ops` (tensor code) or numpy (constants built once at
construction time), so it runs on TensorFlow, JAX and PyTorch and exports to TFLite and ONNX:
no complex tensors, no FFT on the export path, and framing by reshape and slicing rather than
by a gather or a convolution.

Conventions follow librosa: frames are centred (`center=True`) by padding `n_fft // 2` samples
on both sides, the window is periodic ("fftbins") and zero-padded to `n_fft`, and frame `t`
is centred on sample `t * hop_length`.
"""

from __future__ import annotations

import math

import librosa
import numpy as np
from keras import ops

from keras_dae.validation import InputError

PAD_MODES = ("constant", "reflect")
DFT_MODES = ("matmul", "fft")


def check_positive_int(name: str, value, allow_none: bool = False) -> None:
    """Raises ValueError unless `value` is a positive int (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"`{name}` must be a positive integer, got {value!r}.")


def check_choice(name: str, value, choices) -> None:
    """Raises ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise InputError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def num_frames(num_samples: int, frame_length: int, hop_length: int, center: bool) -> int | None:
    """Number of frames librosa produces for a signal of `num_samples` (None if unknown)."""
    if num_samples is None:
        return None
    if center:
        num_samples = num_samples + 2 * (frame_length // 2)
    if num_samples < frame_length:
        return 0
    return 1 + (num_samples - frame_length) // hop_length


def minimum_samples(frame_length: int, center: bool, pad_mode: str = "constant") -> int:
    """Fewest samples that make a frame, as librosa demands: a whole frame without centring,
    more than `frame_length // 2` to reflect, one otherwise."""
    if not center:
        return frame_length
    return frame_length // 2 + 1 if pad_mode == "reflect" else 1


def pad_center(x, frame_length: int, center: bool, pad_mode: str = "constant"):
    """Pads `(batch, samples)` by `frame_length // 2` on both sides when `center` is true.

    `reflect` needs more than `frame_length // 2` samples, as in numpy and librosa.
    """
    if not center:
        return x
    pad = frame_length // 2
    if pad_mode == "constant":
        return ops.pad(x, [[0, 0], [pad, pad]])
    # Reflect padding built from slices and a flip, which every converter understands.
    left = ops.flip(x[:, 1 : pad + 1], axis=1)
    right = ops.flip(x[:, -pad - 1 : -1], axis=1)
    return ops.concatenate([left, x, right], axis=1)


def frame(x, frame_length: int, hop_length: int, output_length: int | None = None):
    """Cuts `(batch, samples)` into overlapping frames `(batch, n_frames, output_length)`.

    Frame `t` is `x[:, t * hop_length : t * hop_length + frame_length]` (no padding; use
    `pad_center` first for librosa's centred frames). The signal is reshaped into blocks of
    `hop_length` samples and each frame is the concatenation of `ceil(frame_length /
    hop_length)` consecutive blocks. That needs only pad, reshape, slice and concatenate, so it
    works for dynamic lengths and exports everywhere, with no gather index and no convolution.

    `output_length` (default `frame_length`) may be larger than `frame_length`, up to a whole
    number of blocks: the extra samples are the ones that follow each frame, which saves a
    slice when the consumer multiplies by a kernel whose extra rows are zero.
    """
    n_blocks_per_frame = -(-frame_length // hop_length)
    block_span = n_blocks_per_frame * hop_length
    if output_length is None:
        output_length = frame_length
    if not frame_length <= output_length <= block_span:
        raise InputError(
            f"output_length must lie in [{frame_length}, {block_span}], got {output_length}."
        )
    num_samples = ops.shape(x)[1]
    n_frames = 1 + (num_samples - frame_length) // hop_length
    n_blocks = n_frames + n_blocks_per_frame - 1
    # Zeros after the end so that the last frame's final block exists.
    x = ops.pad(x, [[0, 0], [0, block_span - frame_length]])
    x = x[:, : n_blocks * hop_length]
    blocks = ops.reshape(x, (ops.shape(x)[0], n_blocks, hop_length))
    if n_blocks_per_frame == 1:
        frames = blocks
    else:
        frames = ops.concatenate(
            [blocks[:, i : i + n_frames] for i in range(n_blocks_per_frame)], axis=-1
        )
    if output_length < block_span:
        frames = frames[..., :output_length]
    return frames


def constant(array, dtype: str = "float32"):
    """A front end's constant (a filterbank, a DFT or DCT matrix, a window) as a backend tensor,
    made once when the layer is created: `call` then converts no numpy array, so compilers
    (XLA, `torch.compile`) trace the front ends without a break."""
    return ops.convert_to_tensor(np.asarray(array, dtype=dtype))


def window_vector(window, win_length: int, n_fft: int) -> np.ndarray:
    """librosa's analysis window: periodic, length `win_length`, zero-padded to `n_fft`."""
    w = librosa.filters.get_window(window, win_length, fftbins=True)
    return librosa.util.pad_center(w, size=n_fft).astype(np.float64)


def dft_kernel(n_fft: int, window: np.ndarray, rows: int | None = None) -> np.ndarray:
    """Real DFT matrix `(rows, 2 * (n_fft // 2 + 1))`: windowed cosines, then minus sines.

    `frames @ kernel` gives the real parts of `rfft(frames * window)` in its first half and
    the imaginary parts in its second. Rows past `n_fft` (when `rows > n_fft`) are zero.
    """
    n_freq = n_fft // 2 + 1
    n = np.arange(n_fft)[:, None]
    k = np.arange(n_freq)[None, :]
    # Reduce n*k modulo n_fft in integers before scaling, for exact angles at large n_fft.
    angle = 2.0 * np.pi * ((n * k) % n_fft) / n_fft
    kernel = np.concatenate(
        [window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)], axis=1
    )
    rows = n_fft if rows is None else rows
    out = np.zeros((rows, 2 * n_freq))
    out[:n_fft] = kernel
    return out


def stft_power(
    x,
    n_fft: int,
    hop_length: int,
    window,
    center: bool = True,
    pad_mode: str = "constant",
    power: float = 2.0,
    dft_mode: str = "matmul",
    kernel=None,
):
    """Magnitude (power=1) or power (power=2) spectrogram `(batch, frames, n_fft // 2 + 1)`.

    Matches `np.abs(librosa.stft(x, n_fft, hop_length, window=..., center=..., pad_mode=...))
    ** power`. With `dft_mode="matmul"` the DFT is a matrix product with the precomputed
    `kernel` from `dft_kernel` (exports to TFLite and ONNX); with `"fft"` it is `ops.rfft`.
    `window` and `kernel` are tensors (`constant`).
    """
    x = pad_center(x, n_fft, center, pad_mode)
    n_freq = n_fft // 2 + 1
    if dft_mode == "matmul":
        rows = kernel.shape[0]
        frames = frame(x, n_fft, hop_length, output_length=rows)
        spec = ops.matmul(frames, kernel)
        real, imag = spec[..., :n_freq], spec[..., n_freq:]
    else:
        frames = frame(x, n_fft, hop_length) * ops.cast(window, x.dtype)
        real, imag = ops.rfft(frames, fft_length=n_fft)
    power_spec = real * real + imag * imag
    if power == 2.0:
        return power_spec
    if power == 1.0:
        return ops.sqrt(power_spec)
    return ops.power(power_spec, power / 2.0)


def stft_kernel_rows(n_fft: int, hop_length: int) -> int:
    """Rows of the matmul DFT kernel: `n_fft` rounded up to whole hop blocks (see `frame`)."""
    return math.ceil(n_fft / hop_length) * hop_length


def power_to_db(s, amin: float = 1e-10, ref: float = 1.0, top_db: float | None = 80.0):
    """`librosa.power_to_db` on `(batch, frames, features)`, with `top_db` per example.

    librosa clamps at `max - top_db` over the whole array it is given; here the maximum is
    taken over each example separately, so a clip's features never depend on its batch-mates.
    """
    log_spec = 10.0 * ops.log10(ops.maximum(s, amin))
    log_spec = log_spec - 10.0 * math.log10(max(amin, ref))
    if top_db is not None:
        peak = ops.amax(log_spec, axis=(1, 2), keepdims=True)
        log_spec = ops.maximum(log_spec, peak - top_db)
    return log_spec
