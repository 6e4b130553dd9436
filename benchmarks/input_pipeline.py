"""Input pipeline throughput: chunks per second that each loader delivers, without a model.

    python benchmarks/input_pipeline.py --data /tmp/sampled_fsd50k   # -> results/input_pipeline.json

On a dataset's train split: the time `write_shards` takes to decode, resample and chunk every
clip once (and the shards' size on disk), then one shuffled epoch of batches of 32 from
`ChunkLoader` (decoding audio files as it goes, with its LRU clip cache) and from
`ShardLoader` (reading the shards), each read in order by one thread, as `fit` with
`workers=1` would. Training needs its loader to keep up with the model: on one H100-class GPU
the target of a 60 s FSD50K epoch means about 5,000 chunks per second.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/tmp/sampled_fsd50k")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from keras_dae.data import ChunkLoader, ShardLoader, read_fsd50k, write_shards

    train = read_fsd50k(args.data, "train")
    tmp = Path(tempfile.mkdtemp())
    try:
        start = time.perf_counter()
        shards = write_shards(train, tmp / "shards")
        write_seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (tmp / "shards").iterdir())
        chunk_loader = ChunkLoader(train, batch_size=32, seed=0)
        shard_loader = ShardLoader(shards, batch_size=32, seed=0)
        rates = {"chunk_loader_first_epoch": epoch_rate(chunk_loader)}
        chunk_loader.set_epoch(1)
        rates["chunk_loader_second_epoch"] = epoch_rate(chunk_loader)
        rates["shard_loader"] = epoch_rate(shard_loader)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "command": "python benchmarks/input_pipeline.py " + f"--data {args.data}",
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "clips": len(train), "chunks": len(shards), "write_shards_seconds": write_seconds,
        "write_shards_clips_per_s": len(train) / write_seconds,
        "shards_mb": size / 2**20, "bytes_per_chunk": size / len(shards),
        "chunks_per_s": rates,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
