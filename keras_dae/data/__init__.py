"""Data for training and evaluation: clip lists, chunking, and a streaming loader.

    from keras_dae import data

    train = data.read_fsd50k("/data/FSD50K", "train")     # ClipDataset, official split
    val = data.read_split("/data/my_clips", "val")       # any layout: fsd50k, csv, folders
    val = val.with_labels(train.labels)                   # targets in the training vocabulary
    loader = data.ChunkLoader(train, sample_rate=16000, batch_size=32, seed=0,
                              target_names=("fused",), balanced=True, mixup=0.5)
    model.fit(loader, epochs=40, shuffle=False, callbacks=[loader.epoch_callback()])

    for i, chunks in data.iterate_clips(data.read_fsd50k("/data/FSD50K", "eval")):
        ...                                               # chunks: (n_chunks, 16000)

    shards = data.write_shards(train, "/data/fsd50k_shards")  # decode once: ArrayRecord
    loader = data.ShardLoader(shards, batch_size=32, seed=0)  # then stream (grain)

No TensorFlow: decoding is soundfile (libsndfile) and soxr, batching is numpy, and the loader
is a `keras.utils.PyDataset`, which every backend's `fit` accepts. The loader (hence Keras and
its backend) is imported on first use, so the readers and chunking load without Keras.
"""

import importlib

from keras_dae.data.bundled import bundled_clip_path, demo_clips
from keras_dae.data.chunking import (
    chunk_blocks,
    chunk_count,
    chunk_sample_starts,
    chunk_starts,
    chunk_waveform,
)
from keras_dae.data.datasets import (
    AUDIO_EXTENSIONS,
    DATASET_FORMATS,
    FSD50K_SPLITS,
    ClipDataset,
    detect_format,
    find_audio_files,
    read_csv_dataset,
    read_folder_dataset,
    read_fsd50k,
    read_fsd50k_vocabulary,
    read_split,
    read_unlabelled,
    write_fsd50k_layout,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "DATASET_FORMATS",
    "FSD50K_SPLITS",
    "ChunkLoader",
    "ClipDataset",
    "FeatureCache",
    "ShardLoader",
    "bundled_clip_path",
    "chunk_blocks",
    "ShardSet",
    "chunk_count",
    "chunk_sample_starts",
    "chunk_starts",
    "chunk_waveform",
    "clip_chunks",
    "demo_clips",
    "detect_format",
    "find_audio_files",
    "iterate_clips",
    "read_csv_dataset",
    "read_folder_dataset",
    "read_fsd50k",
    "read_fsd50k_vocabulary",
    "read_split",
    "read_unlabelled",
    "write_fsd50k_layout",
    "write_shards",
]

_LAZY = {
    "ChunkLoader": "keras_dae.data.loader",
    "FeatureCache": "keras_dae.data.feature_cache",
    "clip_chunks": "keras_dae.data.loader",
    "iterate_clips": "keras_dae.data.loader",
    "ShardLoader": "keras_dae.data.shard_loader",
    "ShardSet": "keras_dae.data.shards",
    "write_shards": "keras_dae.data.shards",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_dae.data' has no attribute {name!r}")
