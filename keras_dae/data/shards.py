"""Training chunks decoded once into ArrayRecord shards, for data larger than memory.

    keras-dae shard --data /data/FSD50K --out /data/fsd50k_shards        # once
    keras-dae train --data /data/FSD50K --shards /data/fsd50k_shards --out RUN_DIR

    shards = write_shards(train, "shards/", sample_rate=16000)   # a ShardSet
    shards = ShardSet("shards/")                                   # reopen later
    loader = ShardLoader(shards, batch_size=32, seed=0)            # keras_dae.data.shard_loader

`write_shards` decodes, resamples and chunks every clip once, exactly as `ChunkLoader` does
(`load_audio`, then `chunk_waveform`), and writes one record per chunk into ArrayRecord files
(Google's `array_record`, the format grain reads; `group_size:1`, so any record can be read
directly). Training then reads records instead of decoding audio: no decoding, no resampling,
no per-clip cache, and each epoch is a fresh global shuffle of all chunks computed on the fly
by grain's `MapDataset.shuffle` (a seeded index permutation, O(1) memory), so memory stays
bounded whatever the number of chunks.

A shard directory holds:
- `chunks-00000-of-000NN.array_record` ...: the records, `shard_size` chunks per file;
- `shards.json`: the index (written last, so an interrupted write leaves no index): sample
  rate, chunking, encoding, vocabulary (`labels`, `mids`), `clip_ids`, `clip_seconds` (each
  clip's length), the files with their
  record counts, and `skipped` (path -> reason) for the files that could not be decoded;
- `items.npy`: int32 `(n_items, 2)`, the (clip, chunk) of every record, in record order;
- `targets.npy`: uint8 `(n_clips, n_classes)`, every clip's multi-hot labels.

A record is one chunk, little-endian (`encode_chunk` / `decode_chunk`):
`b"KDC1"`, clip uint32, chunk uint32, scale float32, n_samples uint32, n_labels uint16, then
n_labels uint16 class indices, then n_samples int16 samples; the waveform is
`samples * scale`. `scale = peak / 32767` (peak = the chunk's largest |sample|), so the
quantisation error is at most half a step, `peak / 65534` (plus float32 rounding, ~6e-8 of
the peak): at least 96 dB below the chunk's own peak, and never more than 1.53e-5 (decoded
audio lies in [-1, 1]). That is the resolution
of the 16-bit PCM FSD50K ships in, at half the bytes of float32 (32 KB per 1 s chunk at
16 kHz); float16 would cost the same and keep only 11 bits.

No TensorFlow: ArrayRecord and grain are their own packages (`pip install
"keras-dae[shards]"`), and this module does not import Keras.
"""

from __future__ import annotations

import array
import json
import logging
import os
import shutil
import struct
from collections.abc import Iterator
from concurrent import futures
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from keras_dae.audio import AudioDecodeError, load_audio
from keras_dae.data.chunking import _lengths, chunk_waveform
from keras_dae.data.datasets import ClipDataset
from keras_dae.validation import InputError

__all__ = ["INDEX_FILE", "ShardSet", "ShardWriter", "decode_chunk", "encode_chunk",
           "write_shards"]

logger = logging.getLogger(__name__)

INDEX_FILE = "shards.json"
FORMAT = "keras-dae chunk shards"
VERSION = 1
MAGIC = b"KDC1"
_HEADER = struct.Struct("<4sIIfIH")  # magic, clip, chunk, scale, n_samples, n_labels
_WRITER_OPTIONS = "group_size:1"      # every record directly addressable (grain needs it)


def _requirement_error(error: ImportError) -> ImportError:
    return ImportError(f"sharded data needs ArrayRecord and grain ({error}): "
                       "pip install 'keras-dae[shards]'")


def encode_chunk(waveform: np.ndarray, labels, clip: int, chunk: int) -> bytes:
    """One record: a float waveform `(n_samples,)` as int16 with its own scale, its clip's
    class indices, and its (clip, chunk) position (layout in the module docstring)."""
    waveform = np.asarray(waveform, np.float32)
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    scale = peak / 32767.0 if peak > 0 else 1.0
    samples = np.clip(np.rint(waveform.astype(np.float64) / scale), -32767, 32767).astype("<i2")
    labels = np.asarray(labels, "<u2")
    header = _HEADER.pack(MAGIC, int(clip), int(chunk), scale, samples.size, labels.size)
    return header + labels.tobytes() + samples.tobytes()


def decode_chunk(record: bytes) -> dict:
    """A record as `{"waveform": float32 (n_samples,), "labels": int (n_labels,), "clip": int,
    "chunk": int}`; raises `ValueError` for bytes that are not a keras-dae chunk record."""
    if len(record) < _HEADER.size:
        raise InputError(f"not a keras-dae chunk record ({len(record)} bytes)")
    magic, clip, chunk, scale, n_samples, n_labels = _HEADER.unpack_from(record)
    if magic != MAGIC or len(record) != _HEADER.size + 2 * (n_labels + n_samples):
        raise InputError(f"not a keras-dae chunk record (magic {magic!r}, {len(record)} bytes)")
    labels = np.frombuffer(record, "<u2", n_labels, _HEADER.size)
    samples = np.frombuffer(record, "<i2", n_samples, _HEADER.size + 2 * n_labels)
    return {"waveform": samples.astype(np.float32) * np.float32(scale),
            "labels": labels.astype(np.int64), "clip": clip, "chunk": chunk}


def _decode_clip(path, sample_rate, chunk_seconds, hop_seconds, short):
    """(chunks, seconds, None), or (None, None, reason) for a file that cannot be decoded
    (runs in workers)."""
    try:
        waveform = load_audio(path, sample_rate)
        return (chunk_waveform(waveform, sample_rate, chunk_seconds, hop_seconds, short),
                len(waveform) / sample_rate, None)
    except (AudioDecodeError, ValueError, OSError) as error:
        text, prefix = str(error), f"{path}: "
        return None, None, text[len(prefix):] if text.startswith(prefix) else text


def _decoded_clips(dataset, args, workers) -> Iterator[tuple]:
    """`(clip index, chunks, seconds, reason)` for every clip, in order; `workers` processes
    decode ahead of the writer, at most a few clips each, so memory stays bounded."""
    if workers <= 1:
        for i, path in enumerate(dataset.paths):
            yield (i, *_decode_clip(path, *args))
        return
    ahead = 4 * workers
    with futures.ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending = {}
        for i in range(len(dataset)):
            pending[i] = pool.submit(_decode_clip, dataset.paths[i], *args)
            if i >= ahead:
                done = i - ahead
                yield (done, *pending.pop(done).result())
        for done in sorted(pending):
            yield (done, *pending.pop(done).result())


class ShardWriter:
    """Writes chunks into a shard directory, clip by clip; `close()` publishes the index.

        with ShardWriter("shards/", labels, mids, sample_rate=16000) as writer:
            writer.add_clip("clip id", chunks, class_indices)     # chunks (n, chunk_samples)
            writer.skip("bad.wav", "not readable as audio")
        shards = writer.shards                                    # a ShardSet

    Files go to a temporary folder inside `out_dir` and are moved in place by `close()`,
    which writes `shards.json` last; leaving the `with` block by an exception (or `abort()`)
    removes them, so an interrupted write never looks complete. `write_shards` uses it; use it
    directly for audio decoded elsewhere.

    Args:
        out_dir: the shard directory (created; refused if it already holds shards, unless
            `overwrite`).
        labels, mids: the vocabulary (class indices refer to it).
        sample_rate, chunk_seconds, hop_seconds, short: how the chunks were cut (recorded,
            and checked by the trainer against the model and its recipe).
        shard_size: chunks per file.
        overwrite: replace the shards in `out_dir`.
    """

    def __init__(self, out_dir, labels, mids=None, sample_rate: int = 16000,
                 chunk_seconds: float = 1.0, hop_seconds: float = 0.5, short: str = "tile",
                 shard_size: int = 4096, overwrite: bool = False):
        try:
            from array_record.python import array_record_module
        except ImportError as error:
            raise _requirement_error(error) from None
        self._module = array_record_module
        self.labels = [str(x) for x in labels]
        self.mids = [str(x) for x in (mids if mids is not None else [""] * len(self.labels))]
        if len(self.labels) > 65535 or len(self.mids) != len(self.labels):
            raise InputError(f"{len(self.labels)} labels and {len(self.mids)} mids: need as "
                             "many of each, at most 65535")
        if not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
            raise InputError(f"shard_size must be a positive integer, got {shard_size!r}")
        if short not in ("tile", "pad"):
            raise InputError(f"short must be 'tile' or 'pad', got {short!r}")
        self.chunk_samples, _ = _lengths(sample_rate, chunk_seconds, hop_seconds)
        self.sample_rate, self.chunk_seconds = int(sample_rate), float(chunk_seconds)
        self.hop_seconds, self.short, self.shard_size = float(hop_seconds), short, int(shard_size)
        self.out_dir = Path(out_dir)
        if (self.out_dir / INDEX_FILE).exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir}: already holds shards ({INDEX_FILE}); pass "
                                  "overwrite=True (--overwrite) to replace them")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = self.out_dir / f".tmp-shards-{os.getpid()}"
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir()
        self._writer = None
        self._counts: list[int] = []
        self._clips, self._chunks = array.array("i"), array.array("i")
        self._targets = array.array("B")
        self.clip_ids: list[str] = []
        self.clip_seconds: list[float] = []
        self.skipped: dict[str, str] = {}
        self.shards: ShardSet | None = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    @property
    def n_items(self) -> int:
        return len(self._clips)

    def add_clip(self, clip_id: str, chunks: np.ndarray, labels,
                 seconds: float | None = None) -> None:
        """Writes one clip's chunks, float `(n_chunks, chunk_samples)`, with its class indices
        (into `labels`) and its length in seconds (None: unknown; `ShardSet.clip_seconds`
        then counts it as cut, a chunk plus a hop per further chunk)."""
        chunks = np.asarray(chunks)
        if chunks.ndim != 2 or chunks.shape[1] != self.chunk_samples or not len(chunks):
            raise InputError(f"clip {clip_id}: chunks must have shape (n >= 1, "
                             f"{self.chunk_samples}), got {chunks.shape}")
        labels = np.asarray(labels, np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.labels)):
            raise InputError(f"clip {clip_id}: class indices {labels} outside the "
                             f"{len(self.labels)} labels")
        clip = len(self.clip_ids)
        self.clip_ids.append(str(clip_id))
        self.clip_seconds.append(float(self.chunk_seconds + (len(chunks) - 1) * self.hop_seconds
                                       if seconds is None else seconds))
        row = np.zeros(len(self.labels), np.uint8)
        row[labels] = 1
        self._targets.frombytes(row.tobytes())
        for c, chunk in enumerate(chunks):
            if self._writer is None or self._counts[-1] == self.shard_size:
                if self._writer is not None:
                    self._writer.close()
                self._writer = self._module.ArrayRecordWriter(
                    str(self._tmp / f"chunks-{len(self._counts):05d}.array_record"),
                    _WRITER_OPTIONS)
                self._counts.append(0)
            self._writer.write(encode_chunk(chunk, labels, clip, c))
            self._counts[-1] += 1
            self._clips.append(clip)
            self._chunks.append(c)

    def skip(self, path, reason: str) -> None:
        """Records (and logs) a file left out."""
        self.skipped[str(path)] = str(reason)
        logger.warning("keras_dae.data: skipping %s: %s", path, reason)

    def abort(self) -> None:
        """Drops everything written so far."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def close(self) -> ShardSet:
        """Moves the files in place, writes the index last, and returns the `ShardSet`."""
        if self.shards is not None:
            return self.shards
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        try:
            if not self.clip_ids:
                first = next(iter(self.skipped.items()), None)
                raise InputError(f"no clip was written (skipped {len(self.skipped)}; first: "
                                 f"{first})")
            n = len(self._counts)
            names = [f"chunks-{k:05d}-of-{n:05d}.array_record" for k in range(n)]
            items = np.stack([np.frombuffer(self._clips, np.int32),
                              np.frombuffer(self._chunks, np.int32)], axis=1)
            np.save(self._tmp / "items.npy", items)
            targets = np.frombuffer(self._targets, np.uint8).reshape(len(self.clip_ids),
                                                                      len(self.labels))
            np.save(self._tmp / "targets.npy", targets)
            index = {
                "format": FORMAT, "version": VERSION,
                "record": "b'KDC1', clip u32, chunk u32, scale f32, n_samples u32, n_labels "
                          "u16, labels u16[n_labels], samples i16[n_samples] (little-endian); "
                          "waveform = samples * scale",
                "encoding": "int16, scale = chunk peak / 32767 (error <= peak / 65534)",
                "sample_rate": self.sample_rate, "chunk_seconds": self.chunk_seconds,
                "hop_seconds": self.hop_seconds, "short": self.short,
                "chunk_samples": self.chunk_samples,
                "labels": self.labels, "mids": self.mids,
                "n_clips": len(self.clip_ids), "n_items": self.n_items,
                "files": [{"file": name, "records": count}
                          for name, count in zip(names, self._counts, strict=True)],
                "clip_ids": self.clip_ids, "clip_seconds": self.clip_seconds,
                "skipped": self.skipped,
            }
            # Replace earlier shards: their index first, so that no index outlives its files.
            (self.out_dir / INDEX_FILE).unlink(missing_ok=True)
            for old in self.out_dir.glob("chunks-*.array_record"):
                old.unlink()
            for k, name in enumerate(names):
                os.replace(self._tmp / f"chunks-{k:05d}.array_record", self.out_dir / name)
            for name in ("items.npy", "targets.npy"):
                os.replace(self._tmp / name, self.out_dir / name)
            (self._tmp / INDEX_FILE).write_text(json.dumps(index, indent=1))
            os.replace(self._tmp / INDEX_FILE, self.out_dir / INDEX_FILE)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self.shards = ShardSet(self.out_dir)
        return self.shards


def write_shards(dataset: ClipDataset, out_dir, sample_rate: int = 16000,
                 chunk_seconds: float = 1.0, hop_seconds: float = 0.5, short: str = "tile",
                 shard_size: int = 4096, workers: int = 1, overwrite: bool = False,
                 verbose: bool = False) -> ShardSet:
    """Decodes every clip of `dataset` once and writes its chunks as ArrayRecord shards.

    Args:
        dataset: the clips (e.g. `read_fsd50k(root, "train")`).
        out_dir: the shard directory (created; refused if it already holds shards, unless
            `overwrite`).
        sample_rate, chunk_seconds, hop_seconds, short: the chunking, as `ChunkLoader`'s.
        shard_size: chunks per file (4096 1 s chunks at 16 kHz: about 128 MB per file).
        workers: processes decoding clips in parallel (1: in this process).
        overwrite: replace the shards in `out_dir`.
        verbose: print what is done, progress, and each skipped file.

    Files that cannot be decoded are skipped, logged, and listed in the index's `skipped`.
    Returns the written `ShardSet`. Raises `ValueError` when no file could be decoded.
    """
    if not isinstance(dataset, ClipDataset):
        raise TypeError(f"dataset must be a ClipDataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise InputError("dataset has no clips")
    args = (int(sample_rate), float(chunk_seconds), float(hop_seconds), short)
    if verbose:
        print(f"shard: {len(dataset)} clips -> {out_dir}, {sample_rate} Hz, {chunk_seconds:g} s "
              f"chunks every {hop_seconds:g} s, {workers} workers", flush=True)
    with ShardWriter(out_dir, dataset.labels, dataset.mids, sample_rate, chunk_seconds,
                     hop_seconds, short, shard_size, overwrite) as writer:
        for i, chunks, seconds, reason in _decoded_clips(dataset, args, int(workers)):
            if chunks is None:
                writer.skip(dataset.paths[i], reason)
            else:
                writer.add_clip(dataset.clip_ids[i], chunks, np.flatnonzero(dataset.targets[i]),
                                seconds)
            if verbose and (i + 1) % 1000 == 0:
                print(f"shards: {i + 1}/{len(dataset)} clips, {writer.n_items} chunks, "
                      f"{len(writer.skipped)} skipped", flush=True)
    shards = writer.shards
    if verbose:
        for path, reason in shards.skipped.items():
            print(f"  skipped {path}: {reason}")
        print(f"shards: wrote {len(shards)} chunks of {shards.n_clips} clips in "
              f"{len(shards.index['files'])} files to {out_dir}; skipped "
              f"{len(shards.skipped)}", flush=True)
    return shards


class ShardSet:
    """The shards in a directory written by `write_shards`: random access to every chunk.

    Attributes:
        directory: the shard directory.
        index: the parsed `shards.json`.
        labels, mids: the vocabulary, in target column order (as `ClipDataset`'s).
        clip_ids: the id of every clip written (skipped files are not clips).
        clip_seconds: float64 `(n_clips,)`, each clip's length in seconds (None for shards
            written without it).
        skipped: path -> reason, the files that could not be decoded.
        sample_rate, chunk_seconds, hop_seconds, chunk_samples: the chunking.
        items: int32 `(n_items, 2)` (clip, chunk) per record (a memory map).
        clip_targets: uint8 `(n_clips, n_classes)` (a memory map).
        source: grain's `ArrayRecordDataSource` over the files: `source[i]` is record `i`'s
            bytes (`decode_chunk`).
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        path = self.directory / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no shard index; write shards with `keras-dae "
                                    "shard` (or an interrupted write left none)")
        try:
            index = json.loads(path.read_text())
        except ValueError as error:
            raise InputError(f"{path}: not valid JSON ({error})") from None
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise InputError(f"{path}: not a {FORMAT} index of version {VERSION}")
        self.index = index
        self.labels = list(index["labels"])
        self.mids = list(index["mids"])
        self.clip_ids = list(index["clip_ids"])
        seconds = index.get("clip_seconds")  # absent from shards written before it was kept
        self.clip_seconds = None if seconds is None else np.asarray(seconds, np.float64)
        self.skipped = dict(index["skipped"])
        self.sample_rate = int(index["sample_rate"])
        self.chunk_seconds = float(index["chunk_seconds"])
        self.hop_seconds = float(index["hop_seconds"])
        self.chunk_samples = int(index["chunk_samples"])
        files = [self.directory / f["file"] for f in index["files"]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.directory}: shard files missing: {missing[:3]}")
        self.items = np.load(self.directory / "items.npy", mmap_mode="r")
        self.clip_targets = np.load(self.directory / "targets.npy", mmap_mode="r")
        if self.items.shape != (index["n_items"], 2) or self.clip_targets.shape != (
                index["n_clips"], len(self.labels)):
            raise InputError(f"{self.directory}: items.npy or targets.npy do not match "
                             f"{INDEX_FILE}")
        try:
            import grain
        except ImportError as error:
            raise _requirement_error(error) from None
        self.source = grain.sources.ArrayRecordDataSource([str(f) for f in files])
        if len(self.source) != index["n_items"]:
            raise InputError(f"{self.directory}: the files hold {len(self.source)} records, "
                             f"the index says {index['n_items']}")

    def __len__(self) -> int:
        return int(self.index["n_items"])

    def __repr__(self) -> str:
        return (f"ShardSet({self.directory}: {len(self)} chunks of {self.n_clips} clips, "
                f"{self.n_classes} classes, {len(self.index['files'])} files)")

    @property
    def n_items(self) -> int:
        return len(self)

    @property
    def n_clips(self) -> int:
        return int(self.index["n_clips"])

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int) -> dict:
        """Record `item` decoded (`decode_chunk`)."""
        return decode_chunk(self.source[int(item)])

    def item_targets(self, items) -> np.ndarray:
        """float32 `(len(items), n_classes)`: the multi-hot labels of records `items`."""
        clips = self.items[np.asarray(items, np.int64), 0]
        return self.clip_targets[clips].astype(np.float32)
