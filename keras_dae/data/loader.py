"""Streaming 1 s chunks of audio clips into `model.fit`, on every Keras backend.

    loader = ChunkLoader(dataset, sample_rate=16000, batch_size=32, shuffle=True, seed=0,
                         target_names=("fused", "pitch", "timbre", "neuralogram", "end_to_end"))
    model.fit(loader, epochs=40, shuffle=False, callbacks=[loader.epoch_callback()])

The loader indexes every (clip, chunk) pair from the files' headers (`soundfile.info`, no
decoding), and decodes the clips of each batch when the batch is asked for (`load_audio`, then
`chunk_waveform`), keeping a small LRU cache of chunked clips. Memory stays bounded whatever
the dataset size.

Order: the items of epoch `e` are a function of `(seed, e)` only. `on_epoch_end` moves to the
next epoch; `set_epoch(e)` jumps to one. Keras calls `on_epoch_end` once more than the number
of epochs (also before the first), so for an exact, resumable order pass
`loader.epoch_callback()` to `fit`: it sets the loader's epoch to Keras' epoch number at the
start of every epoch (so `fit(initial_epoch=k)` resumes with epoch k's order). Pass
`shuffle=False` to `fit`: the loader shuffles itself, and Keras' own shuffling of batch order
draws from Python's global random state.

Bad files never end an epoch: a file that cannot be read at indexing time is left out of the
index, one that fails to decode later is left out from then on, and its chunks are replaced by
other chunks (chosen deterministically, whatever the order in which threads find bad files).
Each is logged once with the reason and recorded in
`loader.skipped` (path -> reason); `loader.skip_summary()` says how many and why in one line.
With `use_multiprocessing=True`, files that fail inside worker processes are skipped there but
not recorded in the parent's `skipped`.

Long clips (over `long_clip_seconds`, default 60 s) are not decoded whole: each chunk is read
with `read_audio_segment` (a seek, and a second of decoding), so an hour-long file costs no
more memory than a short one. A problem in such a file is found when the chunk that holds it
is read.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_dae.audio import (
    AudioDecodeError,
    audio_info,
    iter_audio_blocks,
    load_audio,
    read_audio_segment,
    summarize_problems,
)
from keras_dae.data.chunking import _lengths, chunk_blocks, chunk_count, chunk_waveform
from keras_dae.data.datasets import ClipDataset
from keras_dae.validation import InputError, check

__all__ = ["ChunkLoader", "clip_chunks", "iterate_clips"]

logger = logging.getLogger(__name__)
_WHOLE = 1 << 62  # max_chunks that never streams


def _probe(path: Path, sample_rate: int) -> int:
    """Length in samples at `sample_rate` that `load_audio` will return, from the header only."""
    return audio_info(path).num_samples(sample_rate)


def _reason(error: Exception, path: Path) -> str:
    if isinstance(error, AudioDecodeError):
        return error.problem
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


class _EpochSync(keras.callbacks.Callback):
    """Sets a loader's epoch to Keras' epoch number at the start of every epoch."""

    def __init__(self, loader: ChunkLoader):
        super().__init__()
        self._loader = loader

    def on_epoch_begin(self, epoch, logs=None):
        self._loader.set_epoch(epoch)


def check_sampling(batch_size, seed, mixup, mixup_probability, gain_db=0.0) -> None:
    """Raises `ValueError` naming the first bad one of a loader's sampling arguments."""
    check("batch_size", batch_size, "positive_int")
    check("seed", seed, "non_negative_int")
    check("mixup (a Beta alpha)", mixup, "non_negative_float")
    check("mixup_probability", mixup_probability, "unit_interval")
    check("gain_db", gain_db, "non_negative_float")


def check_processes(process_index, process_count, batch_size) -> tuple[int, int]:
    """`(process_index, process_count)` as ints, for a loader that feeds one process's rows
    of every batch; raises `ValueError` for a bad id or a batch that does not split evenly."""
    check("process_count", process_count, "positive_int")
    check("process_index", process_index, "non_negative_int")
    if process_index >= process_count or int(batch_size) % process_count:
        raise InputError(
            f"process {process_index} of {process_count}: the processes' ids are "
            f"0..{process_count - 1} and the batch size ({batch_size}) must divide by "
            "their number")
    return int(process_index), int(process_count)


class ChunkLoader(keras.utils.PyDataset):
    """Batches of fixed-length chunks of a `ClipDataset`'s clips, for `model.fit`.

    Each item is `(waveforms, targets)`: waveforms float32 `(B, chunk_samples)` at
    `sample_rate`; targets float32 `(B, n_classes)` (the chunk's clip's multi-hot labels), or a
    dict `{name: (B, n_classes)}` with the same array under every name of `target_names`.

    Args:
        dataset: the clips.
        sample_rate: Hz of the waveforms produced (files are resampled with soxr).
        batch_size: chunks per batch.
        chunk_seconds: chunk length, seconds.
        hop_seconds: seconds between chunk starts within a clip (see `chunk_waveform`).
        short: `"tile"` or `"pad"` for clips shorter than a chunk.
        shuffle: shuffle the (clip, chunk) pairs every epoch (else dataset order).
        seed: non-negative int; epoch `e`'s order depends only on `(seed, e)`.
        target_names: output names to give the targets under (a dict), or None (an array).
        balanced: draw each epoch's items with replacement, the probability of a chunk
            proportional to `sum_k y_k / n_k` over its clip's labels k, where `n_k` is the
            number of chunks with label k: every class gets about the same share of draws
            (an unlabelled clip gets weight `1 / n_chunks`). Epoch length is unchanged.
        mixup: alpha of the Beta(alpha, alpha) distribution of mixup weights; 0 disables. Row i
            becomes `lam_i * x_i + (1 - lam_i) * x_j` (j a permutation of the batch), and its
            targets the same combination.
        mixup_probability: share of the rows that are mixed (the others keep lam = 1).
        gain_db: random level: each chunk scaled by a gain drawn uniformly within
            `±gain_db` dB (`gain_draws`), before mixup; 0 disables. It changes the waveform,
            so it takes no `feature_cache`.
        drop_last: leave out the last, smaller batch of an epoch.
        cache_mb: memory for the LRU cache of chunked clips, MiB (at least one clip is kept).
        feature_cache: a `FeatureCache` built for this loader: batches then carry each cached
            stream's features, and the inputs become a dict `{"waveform": ...,
            "<stream>_features": ...}` (see `DiverseClassifier.with_feature_inputs`). Mixup
            mixes the cached features with the same weights as the waveforms.
        include_waveform: with a feature cache, whether the dict carries `"waveform"` (leave
            it out when every stream is cached).
        epoch: the epoch to start at.
        long_clip_seconds: clips longer than this are read chunk by chunk (a seek and a
            chunk's decoding each) instead of whole: memory stays bounded for hour-long files.
        skipped: a dict (path -> reason) to record skipped files in, shared with other
            loaders or evaluations of the same files: a file already in it is left out
            without being opened or reported again.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `PyDataset`
            (thread workers are safe: the cache and the bookkeeping are locked).

    Attributes:
        skipped: path (str) -> reason, every file left out.
        clip_index, chunk_index: int64 `(n_items,)`, the indexed (clip, chunk) pairs.
    """

    def __init__(
        self,
        dataset: ClipDataset,
        sample_rate: int = 16000,
        batch_size: int = 32,
        chunk_seconds: float = 1.0,
        hop_seconds: float = 0.5,
        short: str = "tile",
        shuffle: bool = True,
        seed: int = 0,
        target_names: Sequence[str] | str | None = None,
        balanced: bool = False,
        mixup: float = 0.0,
        mixup_probability: float = 1.0,
        gain_db: float = 0.0,
        drop_last: bool = False,
        cache_mb: float = 256.0,
        epoch: int = 0,
        feature_cache=None,
        include_waveform: bool = True,
        long_clip_seconds: float = 60.0,
        skipped: dict[str, str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(dataset, ClipDataset):
            raise TypeError(f"dataset must be a ClipDataset, got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise InputError("dataset has no clips")
        check_sampling(batch_size, seed, mixup, mixup_probability, gain_db)
        if gain_db and feature_cache is not None:
            raise InputError("gain_db changes each chunk's waveform, so cached features would "
                             "not match it: leave out the feature cache (--feature-cache)")
        if short not in ("tile", "pad"):
            raise InputError(f"short must be 'tile' or 'pad', got {short!r}")
        self.chunk_samples, self._hop = _lengths(sample_rate, chunk_seconds, hop_seconds)
        if isinstance(target_names, str):
            target_names = (target_names,)
        self.target_names = None if target_names is None else tuple(target_names)
        self.dataset = dataset
        self.sample_rate = int(sample_rate)
        self.batch_size = int(batch_size)
        self.chunk_seconds = float(chunk_seconds)
        self.hop_seconds = float(hop_seconds)
        self.short = short
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.balanced = bool(balanced)
        self.mixup = float(mixup)
        self.gain_db = float(gain_db)
        self.mixup_probability = float(mixup_probability)
        self.drop_last = bool(drop_last)
        self.cache_bytes = int(cache_mb * 2**20)
        self.feature_cache = feature_cache
        self.include_waveform = bool(include_waveform)
        if not long_clip_seconds > 0:
            raise InputError(f"long_clip_seconds must be positive, got {long_clip_seconds!r}")
        self.long_clip_samples = int(long_clip_seconds * self.sample_rate)
        self.skipped: dict[str, str] = {} if skipped is None else skipped
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._bad = np.zeros(len(dataset), bool)
        self._build_index()
        self.set_epoch(epoch)

    # ---- index ------------------------------------------------------------------------------

    def _build_index(self) -> None:
        counts = np.zeros(len(self.dataset), np.int64)
        self._lengths = np.zeros(len(self.dataset), np.int64)
        for i, path in enumerate(self.dataset.paths):
            if str(path) in self.skipped:  # known bad (a shared `skipped`)
                self._bad[i] = True
                continue
            try:
                n = _probe(path, self.sample_rate)
            except AudioDecodeError as error:
                self._report(i, _reason(error, path))
                continue
            self._lengths[i] = n
            counts[i] = chunk_count(n, self.sample_rate, self.chunk_seconds, self.hop_seconds)
        if counts.sum() == 0:
            raise InputError(
                f"none of the {len(self.dataset)} files is readable audio ("
                + summarize_problems([self.skipped.get(str(p), "") for p in self.dataset.paths])
                + f"; first: {next(iter(self.skipped.items()), None)})"
            )
        self.clip_index = np.repeat(np.arange(len(self.dataset), dtype=np.int64), counts)
        starts = np.cumsum(counts) - counts
        self.chunk_index = np.arange(self.clip_index.size, dtype=np.int64) - np.repeat(
            starts, counts
        )
        self._weights = self._balanced_weights() if self.balanced else None

    def _balanced_weights(self) -> np.ndarray:
        y = self.dataset.targets[self.clip_index] > 0  # (n_items, n_classes)
        per_class = y.sum(axis=0).astype(np.float64)
        inverse = np.divide(1.0, per_class, out=np.zeros_like(per_class), where=per_class > 0)
        weights = y.astype(np.float64) @ inverse
        weights[weights == 0] = 1.0 / weights.size
        return weights / weights.sum()

    def skip_summary(self) -> str:
        """One line: how many of the dataset's files were skipped, and why."""
        paths = {str(p) for p in self.dataset.paths}
        reasons = [r for p, r in self.skipped.items() if p in paths]
        return summarize_problems(reasons, total=len(self.dataset))

    @property
    def n_items(self) -> int:
        """Number of (clip, chunk) pairs indexed (chunks per epoch)."""
        return int(self.clip_index.size)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio in the readable files, as probed when the index was built."""
        return float(self._lengths.sum()) / self.sample_rate

    # ---- epochs -----------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Makes the next batches those of epoch `epoch` (any non-negative int)."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise InputError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)
        n = self.n_items
        if self.balanced:
            rng = np.random.default_rng([self.seed, self.epoch, 1])
            self._order = rng.choice(n, size=n, replace=True, p=self._weights)
        elif self.shuffle:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            self._order = np.arange(n)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback for `fit` that sets this loader's epoch to Keras' epoch number."""
        return _EpochSync(self)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n_items // self.batch_size
        return math.ceil(self.n_items / self.batch_size)

    def batch_items(self, index: int) -> np.ndarray:
        """Indices into `clip_index`/`chunk_index` that batch `index` of this epoch is made of
        (before any replacement of chunks of bad files), int64 `(B,)`."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    # ---- decoding ---------------------------------------------------------------------------

    def _report(self, clip: int, reason: str) -> None:
        path = str(self.dataset.paths[clip])
        with self._lock:
            self._bad[clip] = True
            if path in self.skipped:
                return
            self.skipped[path] = reason
            dropped = self._cache.pop(clip, None)
            if dropped is not None:
                self._cached_bytes -= dropped.nbytes
        logger.warning("keras_dae.data: skipping %s: %s", path, reason)

    def _chunks(self, clip: int) -> np.ndarray | None:
        with self._lock:
            if self._bad[clip]:
                return None
            chunks = self._cache.get(clip)
            if chunks is not None:
                self._cache.move_to_end(clip)
                return chunks
        path = self.dataset.paths[clip]
        try:
            chunks = chunk_waveform(
                load_audio(path, self.sample_rate),
                self.sample_rate,
                self.chunk_seconds,
                self.hop_seconds,
                self.short,
            )
        except (AudioDecodeError, ValueError, OSError) as error:
            self._report(clip, _reason(error, path))
            return None
        with self._lock:
            if clip not in self._cache:
                self._cache[clip] = chunks
                self._cached_bytes += chunks.nbytes
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return chunks

    def _long_chunk(self, clip: int, k: int) -> np.ndarray | None:
        """Chunk `k` of a long clip, read on its own (see `long_clip_seconds`)."""
        with self._lock:
            if self._bad[clip]:
                return None
        path = self.dataset.paths[clip]
        n = int(self._lengths[clip])
        start = min(k * self._hop, n - self.chunk_samples)  # as chunk_sample_starts
        try:
            chunk = read_audio_segment(path, self.sample_rate, start, self.chunk_samples)
        except (AudioDecodeError, ValueError, OSError) as error:
            self._report(clip, _reason(error, path))
            return None
        if chunk.size < self.chunk_samples:  # the header announced more than decodes
            chunk = np.pad(chunk, (0, self.chunk_samples - chunk.size))
        return chunk

    def chunk(self, item: int) -> np.ndarray | None:
        """The waveform of item `item` (an index into `clip_index`), or None if its file is bad."""
        clip = int(self.clip_index[item])
        if self._lengths[clip] > self.long_clip_samples:
            return self._long_chunk(clip, int(self.chunk_index[item]))
        chunks = self._chunks(clip)
        if chunks is None:
            return None
        # The header's length can differ from the decoded one by a sample (MP3 and the like).
        return chunks[min(int(self.chunk_index[item]), len(chunks) - 1)]

    def __getitem__(self, index: int):
        items = np.array(self.batch_items(index), copy=True)
        waveforms = np.empty((items.size, self.chunk_samples), np.float32)
        replacement_rng = None
        for pos in range(items.size):
            chunk = self.chunk(items[pos])
            # A bad file: draw other chunks, from a sequence fixed by (seed, epoch, batch),
            # until one decodes. Draws are over every item, bad or not, so that the result
            # does not depend on when (or by which thread) a file was found bad.
            while chunk is None:
                if replacement_rng is None:
                    replacement_rng = np.random.default_rng([self.seed, self.epoch, index, 2])
                with self._lock:
                    all_bad = bool(self._bad.all())
                if all_bad:
                    raise RuntimeError(
                        "every file of the dataset failed to decode; see loader.skipped: "
                        f"{dict(list(self.skipped.items())[:3])}"
                    )
                items[pos] = replacement_rng.integers(self.n_items)
                chunk = self.chunk(items[pos])
            waveforms[pos] = chunk
        if self.gain_db > 0:
            waveforms *= self._gains(index)[: items.size, None]
        targets = self.dataset.targets[self.clip_index[items]].astype(np.float32)
        if self.feature_cache is None:
            inputs = waveforms
        else:
            inputs = self.feature_cache.lookup(items)
            if self.include_waveform:
                inputs["waveform"] = waveforms
        if self.mixup > 0:
            inputs, targets = self._mix(inputs, targets, index)
        if self.target_names is None:
            return inputs, targets
        return inputs, {name: targets for name in self.target_names}

    def _gains(self, index: int) -> np.ndarray:
        """The gains of the rows of global batch `index` (`gain_draws`)."""
        return gain_draws(self.seed, self.epoch, index, self.batch_size, self.gain_db)

    def _mix(self, inputs, targets: np.ndarray, index: int):
        """Mixup of a batch: the same weights and partners for every input array."""
        b = targets.shape[0]
        lam, partner = mixup_draws(self.seed, self.epoch, index, b, self.mixup,
                                   self.mixup_probability)

        def mix(x):
            w = lam.reshape((b,) + (1,) * (x.ndim - 1))
            return (w * x + (1 - w) * x[partner]).astype(np.float32)

        inputs = {k: mix(v) for k, v in inputs.items()} if isinstance(inputs, dict) else mix(inputs)
        return inputs, mix(targets)


def mixup_draws(seed: int, epoch: int, index: int, batch_size: int, alpha: float,
                probability: float) -> tuple[np.ndarray, np.ndarray]:
    """Batch `index` of epoch `epoch`'s mixup: each row's weight (float32; 1.0 where the row is
    not mixed, with `1 - probability`) and partner row, the same wherever they are drawn (one
    process mixing the whole batch, or each process its rows)."""
    rng = np.random.default_rng([seed, epoch, index, 3])
    lam = rng.beta(alpha, alpha, size=batch_size)
    lam = np.where(rng.random(batch_size) < probability, lam, 1.0).astype(np.float32)
    return lam, rng.permutation(batch_size)


def gain_draws(seed: int, epoch: int, index: int, batch_size: int,
               gain_db: float) -> np.ndarray:
    """Batch `index` of epoch `epoch`'s random levels: each row's gain, float32 `(batch_size,)`,
    a level drawn uniformly within `±gain_db` dB, the same wherever they are drawn (one
    process reading the whole batch, or each process its rows)."""
    rng = np.random.default_rng([seed, epoch, index, 4])
    return (10.0 ** (rng.uniform(-gain_db, gain_db, batch_size) / 20)).astype(np.float32)


def iterate_clips(
    dataset: ClipDataset,
    sample_rate: int = 16000,
    chunk_seconds: float = 1.0,
    hop_seconds: float = 0.5,
    short: str = "tile",
    indices: Sequence[int] | None = None,
    skipped: dict[str, str] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields `(clip_index, chunks)` for every clip, chunks float32 `(n_chunks, chunk_samples)`.

    For evaluation: a clip's score is then the mean of its chunks' scores. Clips whose file
    fails to decode are logged, recorded in `skipped` (path -> reason) when a dict is given,
    and not yielded; a file already in `skipped` is left out without being opened or logged
    again. `indices` restricts (and orders) the clips. A clip's chunks are held in memory at
    once: for hour-long files use `clip_chunks`, which streams them.
    """
    order = range(len(dataset)) if indices is None else [int(i) for i in indices]
    for i in order:
        path = dataset.paths[i]
        if skipped is not None and str(path) in skipped:
            continue
        try:  # decoded whole: one group
            groups = clip_chunks(path, sample_rate, chunk_seconds, hop_seconds, short,
                                 max_chunks=_WHOLE)
            chunks = next(groups)
        except (AudioDecodeError, ValueError, OSError) as error:
            _skip(path, error, skipped)
            continue
        yield i, chunks


def _skip(path: Path, error: Exception, skipped: dict[str, str] | None) -> None:
    reason = _reason(error, path)
    logger.warning("keras_dae.data: skipping %s: %s", path, reason)
    if skipped is not None:
        skipped[str(path)] = reason


def clip_chunks(
    path,
    sample_rate: int = 16000,
    chunk_seconds: float = 1.0,
    hop_seconds: float = 0.5,
    short: str = "tile",
    max_chunks: int = 256,
) -> Iterator[np.ndarray]:
    """The chunks of one file, `chunk_waveform(load_audio(path, sample_rate), ...)`, in groups
    of at most `max_chunks` `(k, chunk_samples)` float32 arrays, with bounded memory.

    A file of at most `max_chunks` chunks (its header says) is decoded whole and yielded as
    one group; a longer one is streamed (`iter_audio_blocks`, `chunk_blocks`): memory is
    about `max_chunks` chunks whatever its length. Raises `AudioDecodeError` (or
    `ValueError`) for a bad file; in a streamed file, when the problem is reached, after the
    groups before it were yielded. Returns the clip's length in samples (`yield from`).
    """
    n = audio_info(path).num_samples(sample_rate)
    if chunk_count(n, sample_rate, chunk_seconds, hop_seconds) <= max_chunks:
        waveform = load_audio(path, sample_rate)
        yield chunk_waveform(waveform, sample_rate, chunk_seconds, hop_seconds, short)
        return len(waveform)
    blocks = iter_audio_blocks(path, sample_rate, block_seconds=max(10.0, 4 * chunk_seconds))
    return (yield from chunk_blocks(blocks, sample_rate, chunk_seconds, hop_seconds, short,
                                    max_chunks))
