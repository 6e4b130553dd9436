"""Positive pairs for self-supervised pretraining (`keras_dae.pretraining`): two chunks of
the same file per row, the batch's other files as negatives (COLA), each view augmented.

The pairs come from audio files (`PairLoader` over a `ClipDataset`) or from shards written
once (`ShardPairLoader` over `ShardClips`, clips of a `ShardSet`: `keras-dae shard --format
unlabelled`); `pair_loader` picks the one for the data. Both draw the same pairs from the same
clips (the shards hold the same chunks, to 16-bit precision).

In a run of several processes every process builds the whole global batch (the augmentation
mixes rows of the batch, and the contrastive loss's negatives are the global batch) and keeps
its rows: process `p` of `P` rows `[p * B/P, (p + 1) * B/P)`, their targets the rows' global
positions, so the processes together feed exactly the batch one process would.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_dae.data.loader import ChunkLoader, check_processes, check_sampling
from keras_dae.data.shards import ShardSet, decode_chunk
from keras_dae.validation import InputError

__all__ = ["PAIR_MIX", "PairLoader", "ShardClips", "ShardPairLoader", "augment_views",
           "low_pass", "pair_loader"]

#: Augmentation of each view: gain drawn in +-`max_gain_db`; with `probability`, another
#: file's chunk of the batch added `snr_db` (drawn in the range) below the view's level; with
#: `lowpass_probability`, the view low-passed at a cutoff drawn in `lowpass_hz` (so that a
#: recording's bandwidth, 8 kHz telephone speech's for one, does not tell its views apart
#: from other files'; `keras-dae pretrain --lowpass P` sets the probability).
PAIR_MIX = {"max_gain_db": 6.0, "probability": 0.5, "snr_db": (5.0, 20.0),
            "lowpass_probability": 0.0, "lowpass_hz": (2000.0, 6000.0)}
#: Width of the low-pass's raised-cosine roll-off below its cutoff, in Hz.
LOWPASS_ROLLOFF_HZ = 500.0


class PairLoader(ChunkLoader):
    """Batches of positive pairs for `DiverseContrastive.fit`: two chunks of each of B files.

    Item `i` of an epoch is `({"anchor": (B, samples), "positive": (B, samples)},
    {stream: arange(B)})`: row `b` of both views from the same file (two different chunks when
    it has more than one, on the `hop_seconds` grid; a file shorter than a chunk is tiled),
    augmented as `PAIR_MIX` (with the keys `mix` changes) says when `augment`. Every file is
    in one batch per epoch, in an order fixed by `(seed, epoch)`; the chunks and augmentations drawn depend on
    `(seed, epoch, batch)` only, so a resumed epoch sees the same pairs. A file that cannot be
    decoded is reported once (`skipped`) and another file, not in the batch, takes its place.
    The last, smaller batch is left out (its rows would have fewer negatives).

    Args: those of `ChunkLoader` (`mixup`, `balanced`, `target_names` and `drop_last` are
    fixed here), `stream_names`: the names to give the targets under, and `process_index`,
    `process_count`: this process's rows of every batch in a run of several processes (see
    the module docstring; `batch_size` must divide by `process_count`), `mix`: changes to
    `PAIR_MIX`.
    """

    def __init__(self, dataset, stream_names, augment: bool = True, process_index: int = 0,
                 process_count: int = 1, mix: dict | None = None, **kwargs):
        for fixed in ("mixup", "balanced", "target_names", "drop_last", "feature_cache"):
            if fixed in kwargs:
                raise TypeError(f"{type(self).__name__} sets {fixed} itself")
        self.stream_names = tuple(stream_names)
        self.augment, self.mix = bool(augment), mix
        self.process_index, self.process_count = check_processes(
            process_index, process_count, kwargs.get("batch_size", 32))
        super().__init__(dataset, drop_last=True, **kwargs)

    def _build_index(self) -> None:
        super()._build_index()
        self._index_pairs(len(self.dataset))

    def _index_pairs(self, n_clips: int) -> None:
        """Per clip (of `n_clips`) its chunks' count and first item, from `clip_index`."""
        counts = np.bincount(self.clip_index, minlength=n_clips)
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
            views = augment_views(views, rng, self.mix, self.sample_rate)
        rows = self.process_rows()
        targets = np.arange(b, dtype=np.int32)[rows]  # global positions: the positives
        return ({"anchor": views[0, rows], "positive": views[1, rows]},
                {name: targets for name in self.stream_names})

    def process_rows(self) -> slice:
        """The rows of every global batch that this process feeds."""
        part = self.batch_size // self.process_count
        return slice(self.process_index * part, (self.process_index + 1) * part)


class ShardClips:
    """Clips of a `ShardSet` (all of them by default), for `ShardPairLoader`: what
    pretraining reads when its audio was written to shards once (`keras-dae shard --format
    unlabelled`). `subset` and `len` as a `ClipDataset`'s, so the held-out split is drawn
    the same way."""

    def __init__(self, shards, clips=None):
        self.shards = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        self.clips = (np.arange(self.shards.n_clips, dtype=np.int64) if clips is None
                      else np.asarray(clips, np.int64).reshape(-1))

    def __len__(self) -> int:
        return int(self.clips.size)

    @property
    def n_clips(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return f"ShardClips({len(self)} of the {self.shards.n_clips} clips of {self.shards})"

    @property
    def skipped(self) -> dict[str, str]:
        """path -> reason: the files the shards were written without."""
        return self.shards.skipped

    def subset(self, indices) -> ShardClips:
        """The clips at `indices` (into these clips)."""
        return ShardClips(self.shards, self.clips[np.asarray(indices, np.int64)])


class ShardPairLoader(PairLoader):
    """`PairLoader`'s batches, the chunks read from shards (`ShardClips`) instead of decoded
    from audio files: the same pairs, augmentation, order and process rows.

    Args:
        data: a `ShardClips` (or a `ShardSet` or shard directory: all its clips).
        stream_names, augment, process_index, process_count, mix: as `PairLoader`'s.
        sample_rate, chunk_seconds, hop_seconds: must be the shards' (refused otherwise).
        batch_size, shuffle, seed, epoch: as `ChunkLoader`'s.
        skipped: a dict to record the files the shards were written without in.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `PyDataset`.
    """

    def __init__(self, data, stream_names, augment: bool = True, process_index: int = 0,
                 process_count: int = 1, mix: dict | None = None, sample_rate: int | None = None,
                 chunk_seconds: float | None = None, hop_seconds: float | None = None,
                 batch_size: int = 32, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                 skipped: dict[str, str] | None = None, **kwargs):
        keras.utils.PyDataset.__init__(self, **kwargs)
        self.data = data if isinstance(data, ShardClips) else ShardClips(data)
        shards = self.data.shards
        check_sampling(batch_size, seed, 0.0, 1.0)
        wanted = (sample_rate, chunk_seconds, hop_seconds)
        cut = (shards.sample_rate, shards.chunk_seconds, shards.hop_seconds)
        if any(w is not None and w != c for w, c in zip(wanted, cut, strict=True)):
            raise InputError(f"{shards.directory}: shards hold (sample rate, chunk s, hop s) = "
                             f"{cut}, pretraining wants {wanted}; write them again")
        self.stream_names = tuple(stream_names)
        self.augment, self.mix = bool(augment), mix
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.process_index, self.process_count = check_processes(process_index, process_count,
                                                                 self.batch_size)
        self.balanced, self.drop_last, self._weights = False, True, None
        self.sample_rate, self.chunk_seconds = shards.sample_rate, shards.chunk_seconds
        self.hop_seconds, self.chunk_samples = shards.hop_seconds, shards.chunk_samples
        self.skipped: dict[str, str] = {} if skipped is None else skipped
        self.skipped.update(shards.skipped)
        self._build_index()
        self.set_epoch(epoch)

    def _build_index(self) -> None:
        clip_of = np.asarray(self.data.shards.items[:, 0], np.int64)
        position = np.full(self.data.shards.n_clips, -1, np.int64)  # clip -> its row here
        position[self.data.clips] = np.arange(len(self.data))
        records = np.flatnonzero(position[clip_of] >= 0)
        # Grouped by clip in `data.clips`' order, each clip's chunks in record (time) order.
        self._records = records[np.argsort(position[clip_of[records]], kind="stable")]
        self.clip_index = position[clip_of[self._records]]
        self._index_pairs(len(self.data))

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio in the clips (for shards written without their lengths, as cut: a
        chunk plus a hop per further chunk)."""
        seconds = self.data.shards.clip_seconds
        if seconds is not None:
            return float(seconds[self.data.clips].sum())
        n = self._clip_chunks[self.clips]
        return float(np.sum(self.chunk_seconds + (n - 1) * self.hop_seconds))

    def skip_summary(self) -> str:
        from keras_dae.audio import summarize_problems

        return summarize_problems(list(self.data.skipped.values()),
                                  total=self.data.shards.n_clips + len(self.data.skipped))

    def chunk(self, item: int) -> np.ndarray:
        return decode_chunk(self.data.shards.source[int(self._records[item])])["waveform"]


def pair_loader(data, stream_names, **kwargs) -> PairLoader:
    """`ShardPairLoader` for `ShardClips`, else `PairLoader` (audio files)."""
    loader = ShardPairLoader if isinstance(data, ShardClips) else PairLoader
    return loader(data, stream_names, **kwargs)


def augment_views(views: np.ndarray, rng, mix: dict | None = None,
                  sample_rate: int = 16000) -> np.ndarray:
    """`views` `(2, B, samples)` with each row's gain changed and, with the mix probability,
    another row's chunk (of the other view, so never the row's own file) added below its
    level, then, with the low-pass probability, the row low-passed (`low_pass`) at a cutoff
    drawn in `lowpass_hz` (`PAIR_MIX`, updated with `mix`). Silent rows are left silent."""
    mix = {**PAIR_MIX, **(mix or {})}
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
    if mix["lowpass_probability"] > 0:  # drawn after the rest: the other draws stay as they were
        chosen = rng.random((2, b)) < mix["lowpass_probability"]
        cutoff = rng.uniform(*mix["lowpass_hz"], size=(2, b))
        out[chosen] = low_pass(out[chosen], cutoff[chosen], sample_rate)
    return np.clip(out, -1.0, 1.0)


def low_pass(rows: np.ndarray, cutoff_hz: np.ndarray, sample_rate: int,
             rolloff_hz: float = LOWPASS_ROLLOFF_HZ) -> np.ndarray:
    """`rows` `(n, samples)` low-passed, each at its `cutoff_hz` `(n,)`: their spectra (one FFT
    over the whole row) kept below `cutoff - rolloff`, removed above the cutoff, with a
    raised-cosine roll-off between (no ringing of a brick wall)."""
    spectrum = np.fft.rfft(rows, axis=-1)
    freqs = np.fft.rfftfreq(rows.shape[-1], 1.0 / sample_rate)
    into = (freqs[None, :] - (cutoff_hz[:, None] - rolloff_hz)) / rolloff_hz  # 0..1 in roll-off
    gain = 0.5 * (1 + np.cos(np.pi * np.clip(into, 0.0, 1.0)))
    return np.fft.irfft(spectrum * gain, n=rows.shape[-1], axis=-1).astype(rows.dtype)
