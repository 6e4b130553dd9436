"""Streaming ArrayRecord shards into `model.fit` through a grain pipeline, on every backend.

    shards = ShardSet("shards/")                 # written by keras_dae.data.write_shards
    loader = ShardLoader(shards, batch_size=32, seed=0,
                         target_names=("fused", "pitch", "timbre", "neuralogram", "end_to_end"))
    model.fit(loader, epochs=40, shuffle=False, callbacks=[loader.epoch_callback()])

The same contract as `ChunkLoader` (batches `(waveforms float32 (B, chunk_samples), targets)`,
epoch `e`'s order a function of `(seed, e)` only, `epoch_callback()` for exact resumption,
mixup and balanced sampling with the same meaning), but the chunks come decoded from the shards
instead of from the audio files. Each epoch is a grain `MapDataset`:
`range(n_items) -> shuffle(seed of (seed, epoch)) -> map(read record, decode) -> batch`, and
batch `i` is read on demand (`dataset[i]`), so memory holds one batch per worker whatever the
number of chunks; grain's shuffle is a seeded permutation of indices computed per index, not a
list of them (balanced sampling draws an epoch's indices up front, 8 bytes per chunk). `grain_dataset(epoch)` gives that pipeline to whoever wants grain's own loaders
(e.g. `.to_iter_dataset()` with multiprocessing prefetch).

In a multi-process run (`keras_dae.scale.initialize_multiprocess`) every process builds the
same seeded global order and reads only its own rows of each global batch: process `p` of `P`
gets rows `[p * B/P, (p + 1) * B/P)` of every full batch of `B` (the last, smaller one is
dropped), so every process has the same number of batches, and together they train on exactly
the batches one process would: `ShardLoader(..., process_index=p, process_count=P)`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras
import numpy as np

from keras_dae.data.loader import (
    ChunkLoader,
    _EpochSync,
    check_processes,
    check_sampling,
    mixup_draws,
)
from keras_dae.data.shards import ShardSet, decode_chunk
from keras_dae.validation import InputError

__all__ = ["ShardLoader"]


def _read_example(item, source, n_classes: int) -> dict:
    """Record `item` of `source` as `{"item", "waveform", "targets"}` (multi-hot float32)."""
    chunk = decode_chunk(source[int(item)])
    targets = np.zeros(n_classes, np.float32)
    targets[chunk["labels"]] = 1.0
    return {"item": np.int64(item), "waveform": chunk["waveform"], "targets": targets}


def _global_position(k: int, global_batch: int, part: int, offset: int) -> int:
    """Where row `k` of one process's rows lies in the epoch's order (`part` rows of each
    global batch of `global_batch`, from row `offset` on)."""
    return (int(k) // part) * global_batch + offset + int(k) % part


def epoch_seed(seed: int, epoch: int) -> int:
    """grain's shuffle seed for epoch `epoch` of a run seeded `seed` (independent streams:
    grain's own per-epoch seeds would be `seed + epoch`, so runs seeded 0 and 1 would share
    all but one epoch's order)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


class ShardLoader(keras.utils.PyDataset):
    """Batches of a `ShardSet`'s chunks, for `model.fit` (see the module docstring).

    Each item is `(waveforms, targets)`: waveforms float32 `(B, chunk_samples)`; targets
    float32 `(B, n_classes)`, or a dict with the same array under every name of
    `target_names`.

    Args:
        shards: a `ShardSet` or a shard directory.
        batch_size: chunks per batch.
        shuffle: a fresh global shuffle of all chunks every epoch (else record order).
        seed: non-negative int; epoch `e`'s order depends only on `(seed, e)`.
        target_names: output names to give the targets under (a dict), or None (an array).
        balanced: draw each epoch's chunks with replacement, a chunk's probability
            proportional to `sum_k y_k / n_k` over its labels (as `ChunkLoader(balanced=True)`).
        mixup, mixup_probability: as `ChunkLoader`'s (the same weights and partners).
        gain_db: as `ChunkLoader`'s (the same gains).
        drop_last: leave out the last, smaller batch of an epoch.
        epoch: the epoch to start at.
        process_index, process_count: this process's part of every batch, in a run of
            `process_count` processes (see the module docstring): batches then hold
            `batch_size // process_count` rows; `batch_size` must divide by `process_count`,
            and the last, smaller batch is always dropped.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `PyDataset`.

    Attributes:
        skipped: path -> reason, the files the shards were written without.
        n_items: chunks per epoch.
    """

    _mix = ChunkLoader._mix  # the same mixup and levels as ChunkLoader's, draw for draw
    _gains = ChunkLoader._gains

    def __init__(self, shards, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
                 target_names: Sequence[str] | str | None = None, balanced: bool = False,
                 mixup: float = 0.0, mixup_probability: float = 1.0, gain_db: float = 0.0,
                 drop_last: bool = False, epoch: int = 0, process_index: int = 0,
                 process_count: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.shards = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        check_sampling(batch_size, seed, mixup, mixup_probability, gain_db)
        if isinstance(target_names, str):
            target_names = (target_names,)
        self.target_names = None if target_names is None else tuple(target_names)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.balanced = bool(balanced)
        self.mixup = float(mixup)
        self.mixup_probability = float(mixup_probability)
        self.gain_db = float(gain_db)
        self.process_index, self.process_count = check_processes(process_index, process_count,
                                                                 self.batch_size)
        #: rows of each batch this process reads
        self.local_batch_size = self.batch_size // self.process_count
        self.drop_last = bool(drop_last) or self.process_count > 1
        self.sample_rate = self.shards.sample_rate
        self.chunk_samples = self.shards.chunk_samples
        self.chunk_seconds = self.shards.chunk_seconds
        self.hop_seconds = self.shards.hop_seconds
        self.skipped = dict(self.shards.skipped)
        self._weights = self._balanced_weights() if self.balanced else None
        self.set_epoch(epoch)

    @property
    def n_items(self) -> int:
        return len(self.shards)

    def _balanced_weights(self) -> np.ndarray:
        """Per record, `sum_k y_k / n_k` (n_k: chunks labelled k), normalised; computed per
        clip, so memory is `(n_clips, n_classes)`, not `(n_items, n_classes)`."""
        clip_of = np.asarray(self.shards.items[:, 0], np.int64)
        y = np.asarray(self.shards.clip_targets, np.float32)
        chunks_per_clip = np.bincount(clip_of, minlength=len(y)).astype(np.float64)
        per_class = chunks_per_clip @ y
        inverse = np.divide(1.0, per_class, out=np.zeros_like(per_class), where=per_class > 0)
        weights = (y.astype(np.float64) @ inverse)[clip_of]
        weights[weights == 0] = 1.0 / weights.size
        return weights / weights.sum()

    def epoch_items(self, epoch: int):
        """Epoch `epoch`'s record indices, in order, as a grain `MapDataset` of ints."""
        import grain

        if self.balanced:
            rng = np.random.default_rng([self.seed, int(epoch), 1])
            return grain.MapDataset.source(
                rng.choice(self.n_items, size=self.n_items, replace=True, p=self._weights))
        items = grain.MapDataset.range(self.n_items)
        return items.shuffle(seed=epoch_seed(self.seed, epoch)) if self.shuffle else items

    def process_items(self, epoch: int, items=None):
        """This process's record indices of epoch `epoch`, in order, as a grain `MapDataset`
        of ints: all of `epoch_items` (or of `items`, the epoch's order when already drawn)
        in a single process, else its rows of each full batch."""
        items = self.epoch_items(epoch) if items is None else items
        if self.process_count == 1:
            return items
        import grain

        part = self.local_batch_size
        position = functools.partial(_global_position, global_batch=self.batch_size, part=part,
                                     offset=self.process_index * part)
        rows = (len(items) // self.batch_size) * part
        return grain.MapDataset.range(rows).map(position).map(items.__getitem__)

    def _read(self, item) -> dict:
        return _read_example(item, self.shards.source, self.shards.n_classes)

    def grain_dataset(self, epoch: int, items=None):
        """Epoch `epoch` as a grain `MapDataset` of batches `{"item", "waveform", "targets"}`
        (`item`: the records' indices); this process's rows of them in a multi-process run.
        `items`: the epoch's order (`epoch_items`) when already drawn."""
        read = functools.partial(_read_example, source=self.shards.source,
                                 n_classes=self.shards.n_classes)
        return self.process_items(epoch, items).map(read).batch(self.local_batch_size,
                                                         drop_remainder=self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Makes the next batches those of epoch `epoch` (any non-negative int)."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise InputError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)
        self._order = self.epoch_items(self.epoch)  # every process's rows
        self._items = self.process_items(self.epoch, self._order)
        self._dataset = self.grain_dataset(self.epoch, self._order)

    def _mix_part(self, inputs: np.ndarray, targets: np.ndarray, index: int):
        """Mixup of this process's rows of global batch `index`, as `_mix` mixes the whole
        batch in one process: the same draws (for all `batch_size` rows), each row's partner
        read from the epoch's order wherever it lies (at its own level, with `gain_db`)."""
        size, part = self.batch_size, self.local_batch_size
        lam, partner = mixup_draws(self.seed, self.epoch, index, size, self.mixup,
                                   self.mixup_probability)
        rows = slice(self.process_index * part, (self.process_index + 1) * part)
        partners = [self._read(self._order[index * size + int(j)]) for j in partner[rows]]
        gains = self._gains(index)[partner[rows]]  # all 1 without gain_db
        w = lam[rows][:, None]
        mixed_x = w * inputs + (1 - w) * np.stack(
            [p["waveform"] * g for p, g in zip(partners, gains, strict=True)])
        mixed_y = w * targets + (1 - w) * np.stack([p["targets"] for p in partners])
        return mixed_x.astype(np.float32), mixed_y.astype(np.float32)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback for `fit` that sets this loader's epoch to Keras' epoch number."""
        return _EpochSync(self)

    def __len__(self) -> int:
        return len(self._dataset)

    def batch_items(self, index: int) -> np.ndarray:
        """The record indices batch `index` of this epoch is made of, int64 `(B,)`."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        stop = min((index + 1) * self.local_batch_size, len(self._items))
        return np.array([self._items[k] for k in range(index * self.local_batch_size, stop)],
                        np.int64)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        batch = self._dataset[index]
        inputs, targets = batch["waveform"], batch["targets"]
        if self.gain_db > 0:  # this process's rows of the global batch's gains
            start = self.process_index * self.local_batch_size
            inputs = inputs * self._gains(index)[start:start + len(inputs), None]
        if self.mixup > 0 and self.process_count > 1:
            inputs, targets = self._mix_part(inputs, targets, index)
        elif self.mixup > 0:
            inputs, targets = self._mix(inputs, targets, index)
        if self.target_names is None:
            return inputs, targets
        return inputs, {name: targets for name in self.target_names}
