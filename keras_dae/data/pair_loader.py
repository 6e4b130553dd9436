"""Positive pairs for self-supervised pretraining (`keras_dae.pretraining`): two chunks of
the same file per row, the batch's other files as negatives (COLA), each view augmented."""

from __future__ import annotations

import numpy as np

from keras_dae.data.loader import ChunkLoader
from keras_dae.validation import InputError

__all__ = ["PAIR_MIX", "PairLoader", "augment_views"]

#: Augmentation of each view: gain drawn in +-`max_gain_db`; with `probability`, another
#: file's chunk of the batch added `snr_db` (drawn in the range) below the view's level.
PAIR_MIX = {"max_gain_db": 6.0, "probability": 0.5, "snr_db": (5.0, 20.0)}


class PairLoader(ChunkLoader):
    """Batches of positive pairs for `DiverseContrastive.fit`: two chunks of each of B files.

    Item `i` of an epoch is `({"anchor": (B, samples), "positive": (B, samples)},
    {stream: arange(B)})`: row `b` of both views from the same file (two different chunks when
    it has more than one, on the `hop_seconds` grid; a file shorter than a chunk is tiled),
    augmented as `PAIR_MIX` says when `augment`. Every file is in one batch per epoch, in an
    order fixed by `(seed, epoch)`; the chunks and augmentations drawn depend on
    `(seed, epoch, batch)` only, so a resumed epoch sees the same pairs. A file that cannot be
    decoded is reported once (`skipped`) and another file, not in the batch, takes its place.
    The last, smaller batch is left out (its rows would have fewer negatives).

    Args: those of `ChunkLoader` (`mixup`, `balanced`, `target_names` and `drop_last` are
    fixed here), and `stream_names`: the names to give the targets under.
    """

    def __init__(self, dataset, stream_names, augment: bool = True, **kwargs):
        for fixed in ("mixup", "balanced", "target_names", "drop_last", "feature_cache"):
            if fixed in kwargs:
                raise TypeError(f"PairLoader sets {fixed} itself")
        self.stream_names = tuple(stream_names)
        self.augment = bool(augment)
        super().__init__(dataset, drop_last=True, **kwargs)

    def _build_index(self) -> None:
        super()._build_index()
        counts = np.bincount(self.clip_index, minlength=len(self.dataset))
        self._clip_chunks = counts
        self._first_item = np.cumsum(counts) - counts
        self.clips = np.flatnonzero(counts)  # readable files, in dataset order
        if self.clips.size < self.batch_size:
            raise InputError(f"{self.clips.size} readable audio files: fewer than one batch "
                             f"of {self.batch_size} pairs")

    @property
    def n_items(self) -> int:
        """Files per epoch (one pair each)."""
        return int(self.clips.size)

    def _pair(self, clip: int, draws) -> tuple | None:
        n = int(self._clip_chunks[clip])
        first = int(min(draws[0] * n, n - 1))
        second = first if n == 1 else (first + 1 + int(min(draws[1] * (n - 1), n - 2))) % n
        a = self.chunk(int(self._first_item[clip]) + first)
        b = None if a is None else self.chunk(int(self._first_item[clip]) + second)
        return None if b is None else (a, b)

    def _replacement(self, index: int, row: int, positions: np.ndarray) -> tuple:
        """The pair of another file for `row`, whose file failed to decode: the first file
        that decodes in an order fixed by `(seed, epoch, index, row)`, files not in the batch
        first (a file twice in a batch would be its own negative); `positions` is updated."""
        rng = np.random.default_rng([self.seed, self.epoch, index, 5, row])
        order = rng.permutation(self.clips.size)
        in_batch = np.isin(order, positions)
        for position in np.concatenate([order[~in_batch], order[in_batch]]):
            pair = self._pair(int(self.clips[position]), rng.random(2))
            if pair is not None:
                positions[row] = position
                return pair
        raise RuntimeError("every file failed to decode; see loader.skipped: "
                           f"{dict(list(self.skipped.items())[:3])}")

    def __getitem__(self, index: int):
        positions = np.array(self.batch_items(index), copy=True)
        b = positions.size
        rng = np.random.default_rng([self.seed, self.epoch, index, 4])
        draws = rng.random((b, 2))  # drawn whatever decodes, so pairs do not depend on it
        views = np.empty((2, b, self.chunk_samples), np.float32)
        for row in range(b):
            pair = self._pair(int(self.clips[positions[row]]), draws[row])
            views[:, row] = pair if pair is not None else self._replacement(index, row, positions)
        if self.augment:
            views = augment_views(views, rng)
        targets = np.arange(b, dtype=np.int32)
        return ({"anchor": views[0], "positive": views[1]},
                {name: targets for name in self.stream_names})


def augment_views(views: np.ndarray, rng, mix: dict | None = None) -> np.ndarray:
    """`views` `(2, B, samples)` with each row's gain changed and, with the mix probability,
    another row's chunk (of the other view, so never the row's own file) added below its
    level (`PAIR_MIX`). Silent rows are left silent."""
    mix = PAIR_MIX if mix is None else mix
    _, b, _ = views.shape
    out = views.copy()
    rms = np.sqrt(np.mean(np.square(views, dtype=np.float64), axis=-1))  # (2, B)
    for v in range(2):
        partner = (np.arange(b) + 1 + rng.integers(b - 1, size=b)) % b if b > 1 else None
        mixed = rng.random(b) < mix["probability"]
        snr = rng.uniform(*mix["snr_db"], size=b)
        gain_db = rng.uniform(-mix["max_gain_db"], mix["max_gain_db"], size=b)
        if partner is not None:
            background = views[1 - v, partner]
            level = np.divide(rms[v], rms[1 - v, partner], out=np.zeros(b),
                              where=rms[1 - v, partner] > 0) * 10 ** (-snr / 20)
            out[v] += (np.where(mixed, level, 0.0)[:, None] * background).astype(np.float32)
        out[v] *= (10 ** (gain_db / 20)).astype(np.float32)[:, None]
    return np.clip(out, -1.0, 1.0)
