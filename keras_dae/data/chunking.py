"""Cutting clips into fixed-length chunks, the FSD50K baseline protocol.

A clip shorter than one chunk becomes exactly one chunk: tiled (repeated from its start,
`short="tile"`, the FSD50K baseline) or zero-padded at the end (`short="pad"`). A longer clip is
cut into chunks starting every `hop` samples; when the clip's end does not fall on that grid,
one more chunk is **aligned to the end of the clip** (it starts at `n - chunk`, overlapping its
predecessor more than the others do). So every sample is covered, no chunk holds artificial
silence, and the last start is `n - chunk` rather than a multiple of the hop.

Chunks are taken with `numpy.lib.stride_tricks.sliding_window_view` (a view, no copy) and only
the selected chunks are copied into the result, so chunking a long clip needs the clip plus
the result (`~chunk / hop` times the clip for overlapping chunks) and nothing more.
"""

from __future__ import annotations

import math

import numpy as np

from keras_dae.validation import InputError

__all__ = [
    "chunk_blocks",
    "chunk_count",
    "chunk_sample_starts",
    "chunk_starts",
    "chunk_waveform",
]

_SHORT_MODES = ("tile", "pad")
_FINITE_CHECK_BLOCK = 1 << 20  # samples per block of the finiteness check (bounded memory)


def _lengths(sample_rate: int, chunk_seconds: float, hop_seconds: float) -> tuple[int, int]:
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if not chunk_seconds > 0 or not math.isfinite(chunk_seconds):
        raise InputError(f"chunk_seconds must be a positive number, got {chunk_seconds!r}")
    if not hop_seconds > 0 or not math.isfinite(hop_seconds):
        raise InputError(f"hop_seconds must be a positive number, got {hop_seconds!r}")
    chunk = int(round(chunk_seconds * sample_rate))
    hop = int(round(hop_seconds * sample_rate))
    if chunk < 1 or hop < 1:
        raise InputError(
            f"chunk_seconds={chunk_seconds} and hop_seconds={hop_seconds} at {sample_rate} Hz "
            f"give {chunk} and {hop} samples; both must be at least one sample"
        )
    return chunk, hop


def chunk_sample_starts(
    n_samples: int, sample_rate: int, chunk_seconds: float = 1.0, hop_seconds: float = 0.5
) -> np.ndarray:
    """Start sample of every chunk of a clip of `n_samples` samples, int64 `(n_chunks,)`.

    `[0]` for clips of at most one chunk; otherwise `0, hop, 2*hop, ...` up to `n - chunk`,
    plus `n - chunk` itself when the grid does not reach it (the end-aligned last chunk).
    """
    chunk, hop = _lengths(sample_rate, chunk_seconds, hop_seconds)
    n_samples = int(n_samples)
    if n_samples < 1:
        raise InputError(f"n_samples must be at least 1, got {n_samples}")
    if n_samples <= chunk:
        return np.zeros(1, np.int64)
    last = n_samples - chunk
    starts = np.arange(0, last + 1, hop, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, np.int64(last))
    return starts


def chunk_count(
    n_samples: int, sample_rate: int, chunk_seconds: float = 1.0, hop_seconds: float = 0.5
) -> int:
    """Number of chunks `chunk_waveform` makes of a clip of `n_samples` samples."""
    chunk, hop = _lengths(sample_rate, chunk_seconds, hop_seconds)
    n_samples = int(n_samples)
    if n_samples < 1:
        raise InputError(f"n_samples must be at least 1, got {n_samples}")
    if n_samples <= chunk:
        return 1
    return 1 + math.ceil((n_samples - chunk) / hop)


def chunk_starts(
    n_samples: int, sample_rate: int, chunk_seconds: float = 1.0, hop_seconds: float = 0.5
) -> np.ndarray:
    """Start time of every chunk in seconds, float64 `(n_chunks,)` (see `chunk_sample_starts`)."""
    return chunk_sample_starts(n_samples, sample_rate, chunk_seconds, hop_seconds) / float(
        sample_rate
    )


def _check_waveform(waveform) -> np.ndarray:
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise InputError(
            f"waveform must be 1-D (samples,), got shape {waveform.shape}; downmix first"
        )
    if waveform.size == 0:
        raise InputError("waveform is empty (0 samples)")
    if not np.issubdtype(waveform.dtype, np.number) or np.iscomplexobj(waveform):
        raise InputError(f"waveform must be real numbers, got dtype {waveform.dtype}")
    bad = 0
    for begin in range(0, waveform.size, _FINITE_CHECK_BLOCK):
        block = waveform[begin : begin + _FINITE_CHECK_BLOCK]
        bad += int(block.size - np.count_nonzero(np.isfinite(block)))
    if bad == waveform.size:
        raise InputError(f"waveform has no finite samples (all {bad} are NaN or infinite)")
    if bad:
        raise InputError(f"waveform has {bad} NaN or infinite samples of {waveform.size}")
    return waveform


def chunk_waveform(
    waveform,
    sample_rate: int,
    chunk_seconds: float = 1.0,
    hop_seconds: float = 0.5,
    short: str = "tile",
) -> np.ndarray:
    """Cuts a mono clip into fixed-length chunks, float32 `(n_chunks, chunk_samples)`.

    Args:
        waveform: `(samples,)` mono audio at `sample_rate` Hz.
        sample_rate: Hz.
        chunk_seconds: chunk length in seconds (`chunk_samples = round(chunk_seconds * sr)`).
        hop_seconds: seconds between chunk starts (0.5 with 1 s chunks: 50% overlap).
        short: what a clip shorter than one chunk becomes: `"tile"` (repeated from its start
            until the chunk is full, as the FSD50K baseline does) or `"pad"` (zeros after it).

    Chunk `i` starts at `chunk_sample_starts(...)[i]`; the last chunk ends at the clip's last
    sample (end-aligned). Raises `ValueError` for empty, non-1-D or non-finite input.
    The result is a fresh array (it shares no memory with `waveform`).
    """
    if short not in _SHORT_MODES:
        raise InputError(f"short must be one of {_SHORT_MODES}, got {short!r}")
    chunk, _ = _lengths(sample_rate, chunk_seconds, hop_seconds)
    waveform = _check_waveform(waveform)
    n = waveform.size
    if n < chunk:
        out = np.zeros((1, chunk), np.float32)
        if short == "tile":
            out[0] = np.resize(waveform.astype(np.float32, copy=False), chunk)
        else:
            out[0, :n] = waveform
        return out
    starts = chunk_sample_starts(n, sample_rate, chunk_seconds, hop_seconds)
    windows = np.lib.stride_tricks.sliding_window_view(waveform, chunk)  # a view, no copy
    out = np.empty((starts.size, chunk), np.float32)
    for i, start in enumerate(starts):  # row by row: no temporary as big as the result
        out[i] = windows[start]
    return out


def chunk_blocks(
    blocks,
    sample_rate: int,
    chunk_seconds: float = 1.0,
    hop_seconds: float = 0.5,
    short: str = "tile",
    max_chunks: int = 256,
):
    """`chunk_waveform` of a clip that arrives in blocks, with bounded memory.

    The arguments not listed here are those of `chunk_waveform`.

    Args:
        blocks: an iterable of 1-D arrays, the clip in order (e.g. `iter_audio_blocks`).
        max_chunks: the most chunks yielded at once.

    Yields float32 `(k, chunk_samples)` arrays, `1 <= k <= max_chunks`; stacked, they equal
    `chunk_waveform(np.concatenate(blocks), ...)` exactly. Returns the clip's length in samples
    (the value of the `StopIteration`, or of `yield from`). Memory: about one block, one
    chunk and `max_chunks` chunks, whatever the clip's length. Raises `ValueError` as
    `chunk_waveform` does (empty clip, NaN or infinite samples), when reached.
    """
    if short not in _SHORT_MODES:
        raise InputError(f"short must be one of {_SHORT_MODES}, got {short!r}")
    if not isinstance(max_chunks, (int, np.integer)) or max_chunks < 1:
        raise InputError(f"max_chunks must be a positive integer, got {max_chunks!r}")
    chunk, hop = _lengths(sample_rate, chunk_seconds, hop_seconds)
    buffer = np.zeros(0, np.float32)  # the clip's samples from `offset` on
    offset = 0  # clip position of buffer[0]
    next_start = 0  # the next start on the hop grid
    seen = 0
    group: list[np.ndarray] = []
    for block in blocks:
        block = np.asarray(block)
        if block.ndim == 1 and block.size == 0:
            continue
        block = _check_waveform(block)
        seen += block.size
        buffer = np.concatenate([buffer, block.astype(np.float32, copy=False)])
        while next_start + chunk <= offset + buffer.size:
            begin = next_start - offset
            group.append(buffer[begin : begin + chunk].copy())
            next_start += hop
            if len(group) == max_chunks:
                yield np.stack(group)
                group = []
        # Keep what later chunks need: from the next grid start, and the last `chunk`
        # samples (the end-aligned last chunk, or the whole of a short clip).
        keep_from = min(next_start, offset + buffer.size - chunk)
        if keep_from > offset:
            buffer = buffer[keep_from - offset :]
            offset = keep_from
    if seen == 0:
        raise InputError("waveform is empty (0 samples)")
    if seen < chunk:
        group.append(chunk_waveform(buffer, sample_rate, chunk_seconds, hop_seconds, short)[0])
    elif next_start - hop != seen - chunk:  # the grid missed the end: end-aligned chunk
        group.append(buffer[buffer.size - chunk :].copy())
    if group:
        yield np.stack(group)
    return seen
