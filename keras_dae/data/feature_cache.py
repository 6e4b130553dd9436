"""Handcrafted features of every training chunk, computed once and kept on disk.

    cache = FeatureCache.build(loader, model.featurizer, "runs/x/feature_cache")
    loader.feature_cache = cache            # batches become {"waveform", "pitch_features", ...}
    model.with_feature_inputs(cache.streams).fit(loader, ...)

The pitch and timbre streams' front ends (CQT, YIN, MFCC, spectral descriptors) hold no
weights, so a chunk's features never change during training: computing them once saves that
work in every later epoch. Each stream's features are one float32 `.npy` array
`(n_items, frames, dim)` in the loader's item order, read through a memory map, so memory stays
bounded whatever the dataset size (disk: about 22 KB (pitch) and 13 KB (timbre) per 1 s chunk
at the default settings, e.g. 10 GB for FSD50K's ~300k training chunks).

The cache is keyed by the dataset's files (path, size, modification time), the chunking, and
the front ends' configurations: a cache built for anything else is rebuilt, never reused. It is
written to temporary files and renamed into place, and `cache.json` is written last, so a run
killed while building leaves no cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np

from keras_dae.validation import InputError

__all__ = ["FeatureCache"]

INDEX_FILE = "cache.json"


def _fingerprint(loader, featurizer, streams) -> str:
    files = []
    for path in loader.dataset.paths:
        try:
            stat = os.stat(path)
            files.append([str(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([str(path), None, None])
    key = {
        "files": files,
        "sample_rate": loader.sample_rate,
        "chunk_seconds": loader.chunk_seconds,
        "hop_seconds": loader.hop_seconds,
        "short": loader.short,
        "n_items": loader.n_items,
        # Front ends by class and settings (not by their instance names).
        "frontends": {name: [[type(f).__name__, {k: v for k, v in f.get_config().items()
                                                 if k != "name"}]
                             for f in featurizer.streams[name]] for name in streams},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Read-only per-stream features of a `ChunkLoader`'s items (see the module docstring).

    Attributes:
        directory: where the arrays live.
        streams: the cached streams, in order.
        arrays: stream -> float32 memory map `(n_items, frames, dim)`.
    """

    def __init__(self, directory, streams, arrays):
        self.directory = Path(directory)
        self.streams = list(streams)
        self.arrays = arrays

    @staticmethod
    def input_name(stream: str) -> str:
        """The key of a stream's cached features in a batch (and the model input's name)."""
        return f"{stream}_features"

    def lookup(self, items: np.ndarray) -> dict[str, np.ndarray]:
        """The cached features of loader items `items`: `{"<stream>_features": array}`."""
        items = np.asarray(items, np.int64)
        return {self.input_name(s): np.asarray(self.arrays[s][items]) for s in self.streams}

    @classmethod
    def open(cls, directory, loader, featurizer, streams=None) -> FeatureCache | None:
        """The cache in `directory` if it is complete and was built for exactly this loader
        and these front ends, else None."""
        directory = Path(directory)
        streams = list(streams or featurizer.fixed_streams())
        index_path = directory / INDEX_FILE
        if not index_path.is_file():
            return None
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            return None
        if index.get("key") != _fingerprint(loader, featurizer, streams) or \
                index.get("streams") != streams:
            return None
        arrays = {}
        for stream in streams:
            path = directory / f"{stream}.npy"
            try:
                arrays[stream] = np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                return None
            if arrays[stream].shape[0] != loader.n_items:
                return None
        return cls(directory, streams, arrays)

    @classmethod
    def build(cls, loader, featurizer, directory, streams=None, batch_size: int = 64,
              verbose: bool = True) -> FeatureCache:
        """Opens the cache in `directory`, or computes it: every item of `loader`, in order.

        `streams` defaults to the featurizer's `fixed_streams()` (those without weights);
        asking for a stream with weights is refused, since its features change in training.
        Chunks of files that fail to decode get zero features; the loader never serves them
        (it replaces a bad file's chunks, and records it in `loader.skipped`).
        """
        streams = list(streams or featurizer.fixed_streams())
        learned = sorted(set(streams) - set(featurizer.fixed_streams()))
        if learned:
            raise InputError(f"Streams {learned} have trainable front ends; their features "
                             "change in training and cannot be cached.")
        if not streams:
            raise InputError("The featurizer has no stream without weights to cache.")
        cached = cls.open(directory, loader, featurizer, streams)
        if cached is not None:
            if verbose:
                print(f"feature cache: reusing {directory} ({', '.join(streams)})", flush=True)
            return cached
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / INDEX_FILE).unlink(missing_ok=True)
        n = loader.n_items
        frames = featurizer.num_frames(loader.chunk_samples)
        dims = featurizer.feature_dims()
        tmp = {s: directory / f".tmp.{s}.npy" for s in streams}
        arrays = {s: np.lib.format.open_memmap(tmp[s], mode="w+", dtype=np.float32,
                                               shape=(n, frames[s], dims[s])) for s in streams}
        progress = keras.utils.Progbar(n, unit_name="chunk") if verbose else None
        if verbose:
            print(f"feature cache: computing {', '.join(streams)} for {n} chunks into "
                  f"{directory}", flush=True)
        # A model of the cached streams only, run compiled (`predict_on_batch`), on batches
        # of one shape (the last one padded) so that it compiles once.
        waveform = keras.Input(shape=(loader.chunk_samples,), name="waveform")
        extractor = keras.Model(waveform, {s: featurizer.stream_features(waveform, s)
                                           for s in streams})
        for start in range(0, n, batch_size):
            items = np.arange(start, min(start + batch_size, n))
            waveforms = np.zeros((batch_size, loader.chunk_samples), np.float32)
            for pos, item in enumerate(items):
                chunk = loader.chunk(item)
                if chunk is not None:
                    waveforms[pos] = chunk
            features = extractor.predict_on_batch(waveforms)
            for s in streams:
                arrays[s][items] = keras.ops.convert_to_numpy(features[s])[:items.size]
            if progress is not None:
                progress.update(int(items[-1]) + 1)
        for s in streams:
            arrays[s].flush()
            del arrays[s]
            os.replace(tmp[s], directory / f"{s}.npy")
        index = {"key": _fingerprint(loader, featurizer, streams), "streams": streams,
                 "n_items": n, "skipped": dict(loader.skipped)}
        tmp_index = directory / (".tmp." + INDEX_FILE)
        tmp_index.write_text(json.dumps(index, indent=1))
        os.replace(tmp_index, directory / INDEX_FILE)
        return cls.open(directory, loader, featurizer, streams)
