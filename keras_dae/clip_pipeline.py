"""Clips to chunks to batches to outputs: the one path from audio to a model's outputs per clip.

    from keras_dae.clip_pipeline import ClipPipeline

    pipeline = ClipPipeline(forward, sample_rate=16000, batch_size=32)
    for clip in pipeline.run(["dog.wav", waveform]):    # files and arrays, in input order
        clip.error                  # None, or why the item could not be read (an exception)
        clip.pooled("fused")        # (num_classes,) the mean of its chunks' outputs
        clip.chunks["fused"]        # (n_chunks, num_classes), when keep_chunks=True
        clip.chunk_times()          # (n_chunks,) each chunk's centre, seconds

`forward` maps a float32 batch `(rows, chunk_samples)` to `{output: (rows, ...)}` numpy
arrays (`Tagger` passes a compiled, thread-safe function of the model; `training.predict_clips`
passes `concurrency.predict`). The steps, each in one place:

1. **Read.** A file is decoded and resampled to `sample_rate` (`keras_dae.audio`): whole when
   it holds at most `max_chunks` chunks, streamed in blocks otherwise, so an hour-long file
   costs about `max_chunks` chunks of memory (`keras_dae.data.loader.clip_chunks`). An array
   (numpy or torch) at `input_rate` is checked, PCM-scaled and resampled (`as_waveform`).
2. **Cut** into chunks of `chunk_seconds` every `hop_seconds` (`keras_dae.data.chunking`:
   any hop; short clips tiled, the last chunk aligned to the clip's end).
3. **Batch.** Chunks of consecutive clips share batches of `batch_size` rows. A batch is
   padded with silence to `batch_size` rows (so compiled backends see one shape, and a
   data-parallel run splits every batch evenly over its devices when `batch_size` is a
   multiple of the device count), or, with `small_batch`, a last batch of at most that many
   rows to `small_batch` rows (two compiled shapes instead of one per clip length).
4. **Run** `forward` and give each clip its rows back: kept per chunk (`keep_chunks`) and
   pooled per clip as running float64 sums and maxima (`ScoredClip.pooled`), so pooling an
   hour of chunks needs no more memory than one of them.

A clip that cannot be read (or fails part-way through a streamed file) comes out with its
`error` set and no outputs; the clips after it are unaffected. Clips come out in input order,
each as soon as its last chunk is scored and every clip before it is out.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from keras_dae.data.chunking import _lengths, chunk_blocks, chunk_sample_starts
from keras_dae.validation import InputError

__all__ = ["POOLING", "ClipPipeline", "ScoredClip", "as_waveform"]

POOLING = ("mean", "max")
"""How chunk outputs make a clip's output: their mean (as in evaluation) or their maximum."""

ARRAY_SOURCE = "<array>"


def as_waveform(array, sample_rate: int, target_rate: int) -> np.ndarray:
    """A numpy (or torch) clip as mono float32 at `target_rate`; raises `ValueError`.

    Integer PCM is scaled from its full range to [-1, 1]; another rate is resampled with
    soxr's high-quality filter (as files are).
    """
    if hasattr(array, "detach"):  # torch
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 1:
        raise InputError(f"expected mono audio of shape (samples,), got shape {array.shape}; "
                         "average the channels first")
    if array.size == 0:
        raise InputError("the audio is empty (0 samples)")
    if np.issubdtype(array.dtype, np.integer):  # PCM: scale full range to [-1, 1]
        info = np.iinfo(array.dtype)
        array = (array.astype(np.float64) - (info.max + 1 + info.min) / 2) / (info.max + 1
                                                                               - info.min) * 2
    elif not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"expected real-valued audio, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(f"{bad} of {array.size} samples are NaN or infinite")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if sample_rate != target_rate:
        import librosa

        array = librosa.resample(array, orig_sr=int(sample_rate), target_sr=target_rate,
                                 res_type="soxr_hq").astype(np.float32)
    return array


class ScoredClip:
    """One input item on its way through the pipeline, and what came of it.

    Attributes:
        index: its position in the input.
        source: the path as given (a string), or `"<array>"`.
        error: `None`, or the exception that stopped it (`AudioDecodeError` for a file that
            cannot be decoded, `ValueError` for a bad array, `OSError`).
        n_samples: its length at the pipeline's rate (once read).
        n_chunks: chunks scored.
        chunks: `{output: (n_chunks, ...)}` float32, with `keep_chunks=True` (else `{}`).
    """

    def __init__(self, index: int, source: str, pipeline: ClipPipeline):
        self.index, self.source, self._pipeline = index, source, pipeline
        self.error: Exception | None = None
        self.n_samples = 0
        self.n_chunks = 0
        self.chunks: dict[str, np.ndarray] = {}
        self._parts: dict[str, list] = collections.defaultdict(list)
        self._sum: dict[str, np.ndarray] = {}
        self._max: dict[str, np.ndarray] = {}
        self._pending = 0  # rows cut but not yet scored
        self._read = False  # all its chunks are cut

    @property
    def done(self) -> bool:
        return self.error is not None or (self._read and self._pending == 0)

    def _take(self, outputs: dict[str, np.ndarray], begin: int, count: int) -> None:
        self._pending -= count
        if self.error is not None:
            return
        self.n_chunks += count
        for name, value in outputs.items():
            rows = np.asarray(value[begin:begin + count])
            if self._pipeline.keep_chunks:
                self._parts[name].append(rows.astype(np.float32, copy=False))
            rows = rows.astype(np.float64)
            if name in self._sum:
                self._sum[name] += rows.sum(axis=0)
                np.maximum(self._max[name], rows.max(axis=0), out=self._max[name])
            else:
                self._sum[name], self._max[name] = rows.sum(axis=0), rows.max(axis=0)

    def _finish(self) -> None:
        if self.error is not None:
            self._parts.clear()
            self._sum.clear()
            self._max.clear()
            return
        self.chunks = {name: np.concatenate(parts) for name, parts in self._parts.items()}
        self._parts.clear()

    def pooled(self, output: str, pooling: str = "mean") -> np.ndarray:
        """The clip's `output` pooled over its chunks: `"mean"` or `"max"`, float64."""
        if pooling not in POOLING:
            raise InputError(f"pooling must be one of {POOLING}, got {pooling!r}")
        if self.error is not None:
            raise InputError(f"{self.source} has no outputs: {self.error}")
        if pooling == "mean":
            return self._sum[output] / self.n_chunks
        return self._max[output].copy()

    def chunk_starts(self) -> np.ndarray:
        """Each chunk's first sample, int64 `(n_chunks,)` (`chunking.chunk_sample_starts`)."""
        p = self._pipeline
        return chunk_sample_starts(self.n_samples, p.sample_rate, p.chunk_seconds,
                                   p.hop_seconds)

    def chunk_times(self) -> np.ndarray:
        """Each chunk's centre in seconds, float64 `(n_chunks,)` (a clip shorter than one
        chunk: its own centre)."""
        p = self._pipeline
        width = min(p.chunk_samples, self.n_samples)
        return (self.chunk_starts() + width / 2) / p.sample_rate

    def __repr__(self) -> str:
        state = f"error={self.error}" if self.error is not None else f"n_chunks={self.n_chunks}"
        return f"ScoredClip({self.index}, {self.source!r}, {state})"


class ClipPipeline:
    """Reads, chunks, batches and scores clips (see the module's docstring).

    Args:
        forward: `(rows, chunk_samples) float32 -> {output: (rows, ...)}`, numpy in and out.
        sample_rate: the model's rate, Hz.
        chunk_seconds, hop_seconds: the chunking (the models' protocol: 1 s every 0.5 s).
        batch_size: rows per `forward` call.
        small_batch: pad a batch of at most this many rows to this many, not to `batch_size`
            (`None`: every batch is padded to `batch_size`).
        keep_chunks: keep every chunk's outputs (`ScoredClip.chunks`); without, only the
            pooled ones (bounded memory, whatever the clip's length).
        max_chunks: a file longer than this many chunks is streamed, not decoded whole.
        short: what a clip shorter than one chunk becomes, `"tile"` or `"pad"`.
    """

    def __init__(self, forward: Callable[[np.ndarray], dict], sample_rate: int,
                 chunk_seconds: float = 1.0, hop_seconds: float = 0.5, batch_size: int = 32,
                 small_batch: int | None = None, keep_chunks: bool = True,
                 max_chunks: int = 256, short: str = "tile"):
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size!r}")
        if small_batch is not None and int(small_batch) < 1:
            raise InputError(f"small_batch must be at least 1, got {small_batch!r}")
        self.forward = forward
        self.sample_rate = int(sample_rate)
        self.chunk_seconds = float(chunk_seconds)
        self.hop_seconds = float(hop_seconds)
        self.chunk_samples, self.hop_samples = _lengths(self.sample_rate, self.chunk_seconds,
                                                        self.hop_seconds)
        self.batch_size = int(batch_size)
        self.small_batch = None if small_batch is None else min(int(small_batch),
                                                                self.batch_size)
        self.keep_chunks = bool(keep_chunks)
        self.max_chunks = int(max_chunks)
        self.short = short

    # -- reading ----------------------------------------------------------------------------
    def chunk_groups(self, item, input_rate: int | None = None) -> Iterator[np.ndarray]:
        """The chunks of one file or array, in groups of at most `max_chunks` rows; the
        generator returns the clip's length in samples. Raises as reading does."""
        if isinstance(item, (str, os.PathLike)):
            from keras_dae.data.loader import clip_chunks

            return (yield from clip_chunks(item, self.sample_rate, self.chunk_seconds,
                                           self.hop_seconds, self.short, self.max_chunks))
        waveform = as_waveform(item, self.sample_rate if input_rate is None else input_rate,
                               self.sample_rate)
        return (yield from chunk_blocks([waveform], self.sample_rate, self.chunk_seconds,
                                        self.hop_seconds, self.short, self.max_chunks))

    # -- scoring ----------------------------------------------------------------------------
    def _padded_rows(self, n: int) -> int:
        if self.small_batch is not None and n <= self.small_batch:
            return self.small_batch
        return self.batch_size

    def _forward_padded(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        n = len(batch)
        padded = self._padded_rows(n)
        if padded > n:
            batch = np.concatenate([batch, np.zeros((padded - n, batch.shape[1]), np.float32)])
        outputs = self.forward(np.ascontiguousarray(batch, np.float32))
        return {name: np.asarray(value)[:n] for name, value in outputs.items()}

    def score_rows(self, chunks) -> dict[str, np.ndarray]:
        """`forward` of `(n, chunk_samples)` chunks cut elsewhere, batched and padded as
        clips' chunks are: `{output: (n, ...)}` (`None` for `n == 0`)."""
        chunks = np.asarray(chunks, np.float32)
        parts = collections.defaultdict(list)
        for begin in range(0, len(chunks), self.batch_size):
            for name, value in self._forward_padded(chunks[begin:begin + self.batch_size]).items():
                parts[name].append(value)
        return {name: np.concatenate(value) for name, value in parts.items()} or None

    def _run(self, rows: list[np.ndarray], owners: list[tuple[ScoredClip, int]]) -> None:
        outputs = self._forward_padded(np.concatenate(rows) if len(rows) > 1 else rows[0])
        offset = 0
        for clip, count in owners:
            clip._take(outputs, offset, count)
            offset += count

    def run(self, items: Iterable, input_rate: int | None = None,
            skip: Callable[[object], bool] | None = None) -> Iterator[ScoredClip]:
        """A `ScoredClip` for every item (a path or an array at `input_rate`, default the
        pipeline's rate), in input order. Items for which `skip(item)` is true are passed
        over without being read."""
        from keras_dae.audio import AudioDecodeError

        queue: collections.deque[ScoredClip] = collections.deque()
        rows: list[np.ndarray] = []
        owners: list[tuple[ScoredClip, int]] = []
        held = 0

        def finished():
            while queue and queue[0].done:
                clip = queue.popleft()
                clip._finish()
                yield clip

        for index, item in enumerate(items):
            if skip is not None and skip(item):
                continue
            path = isinstance(item, (str, os.PathLike))
            clip = ScoredClip(index, str(item) if path else ARRAY_SOURCE, self)
            queue.append(clip)
            groups = self.chunk_groups(item, input_rate)
            while True:
                try:  # reading fails the clip; the model failing fails the call
                    group = next(groups)
                except StopIteration as end:
                    clip.n_samples = int(end.value)
                    break
                except (AudioDecodeError, ValueError, OSError, RuntimeError) as error:
                    clip.error = error
                    break
                clip._pending += len(group)
                begin = 0
                while begin < len(group):  # fill the batch; run it when full
                    count = min(self.batch_size - held, len(group) - begin)
                    rows.append(group[begin:begin + count])
                    owners.append((clip, count))
                    held += count
                    begin += count
                    if held == self.batch_size:
                        self._run(rows, owners)
                        rows, owners, held = [], [], 0
            clip._read = True
            yield from finished()
        if rows:
            self._run(rows, owners)
        yield from finished()
