"""Input pipeline throughput: chunks per second that each loader delivers, without a model.

    python benchmarks/input_pipeline.py --data /tmp/sampled_fsd50k   # -> results/input_pipeline.json

Two datasets: a dataset's train split (the sampled dataset: 44.1 kHz clips of 1-4 s), and 100
clips of 30 s (FSD50K's longest; its mean is about 7.6 s) tiled from that split's audio. For
each, the time `write_shards` takes to decode, resample and chunk every clip once (and the
shards' size on disk), then shuffled epochs of batches of 32 from `ChunkLoader` (decoding
audio files as it goes, with its LRU clip cache) and from `ShardLoader` (reading the shards),
each read in order by one thread, as `fit` with `workers=1` would. For the long clips the
ChunkLoader's cache is 8 MB (two clips), as FSD50K's 19 GB of float32 chunks dwarf its
default 256 MB: a chunk then costs a decode of its whole clip. Training needs its loader to
keep up with the model: on one H100-class GPU the target of a 60 s FSD50K epoch means about
5,000 chunks per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "input_pipeline.json"


def epoch_rate(loader) -> float:
    """Chunks per second over one epoch (every batch, in order)."""
    start = time.perf_counter()
    n = 0
    for i in range(len(loader)):
        x, _ = loader[i]
        n += len(x)
    return n / (time.perf_counter() - start)


def long_clips(train, directory: Path, n: int = 100, seconds: float = 30.0):
    """`n` 30 s, 44.1 kHz clips tiled from `train`'s audio, with its labels, as a ClipDataset."""
    import numpy as np
    import soundfile

    from keras_dae.data import ClipDataset

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        audio, rate = soundfile.read(train.paths[i], dtype="float32", always_2d=True)
        audio = np.resize(audio.mean(axis=1), int(seconds * rate))
        paths.append(directory / f"{i}.wav")
        soundfile.write(paths[-1], audio, rate, subtype="PCM_16")
    return ClipDataset(paths=paths, targets=train.targets[:n], labels=train.labels,
                       mids=train.mids, clip_ids=[str(i) for i in range(n)])


def measure(dataset, directory: Path, cache_mb: float) -> dict:
    from keras_dae.data import ChunkLoader, ShardLoader, write_shards

    start = time.perf_counter()
    shards = write_shards(dataset, directory)
    write_seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in directory.iterdir())
    chunk_loader = ChunkLoader(dataset, batch_size=32, seed=0, cache_mb=cache_mb)
    rates = {"chunk_loader_first_epoch": epoch_rate(chunk_loader)}
    chunk_loader.set_epoch(1)
    rates["chunk_loader_second_epoch"] = epoch_rate(chunk_loader)
    rates["shard_loader"] = epoch_rate(ShardLoader(shards, batch_size=32, seed=0))
    return {"clips": len(dataset), "chunks": len(shards), "chunk_loader_cache_mb": cache_mb,
            "write_shards_seconds": write_seconds,
            "write_shards_clips_per_s": len(dataset) / write_seconds,
            "shards_mb": size / 2**20, "bytes_per_chunk": size / len(shards),
            "chunks_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/tmp/sampled_fsd50k")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from keras_dae.data import read_fsd50k

    train = read_fsd50k(args.data, "train")
    tmp = Path(tempfile.mkdtemp())
    try:
        short = measure(train, tmp / "short", cache_mb=256)
        long = measure(long_clips(train, tmp / "long_audio"), tmp / "long", cache_mb=8)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "command": "python benchmarks/input_pipeline.py " + f"--data {args.data}",
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "train_split": short, "long_clips_30s": long,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
