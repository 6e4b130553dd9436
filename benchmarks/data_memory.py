"""Memory of the input pipelines at FSD50K's size: the ChunkLoader's index of 50,000 clips, and
the ShardLoader over 300,000 records.

    python benchmarks/data_memory.py            # -> results/data_memory.json

1. An FSD50K layout of 50,000 dev clips with FSD50K's 200-class vocabulary, each file a link
   to one of four real recordings (tests/data): `read_fsd50k` + `ChunkLoader`
   (headers probed, nothing decoded), then batches from across the epoch.
2. A shard set of 300,000 records, 6 per clip for 50,000 clips with 3 labels each, written
   with `ShardWriter`; each record holds 10 ms of audio instead of 1 s to spare the disk (the
   index structures scale with the record count, not the record size): `ShardLoader`, then
   batches from across two epochs.

Each runs in a fresh process, with tracemalloc started after the imports (Python and numpy
allocations: what the data costs, not the libraries), and the process's resident memory
before and after (which also counts native allocations, e.g. ArrayRecord's readers).
`tests/test_shards.py` asserts bounds on the same measurements.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "data_memory.json"

PROBE = textwrap.dedent("""
    import json, sys, time, tracemalloc
    import keras, grain, psutil
    from keras_dae.data import ChunkLoader, ShardLoader, read_fsd50k
    mode, root = sys.argv[1], sys.argv[2]
    if mode == "index":  # librosa imports its resampler on first use
        from keras_dae.audio import load_audio
        load_audio(root + "/sources/0.wav")
    rss_before = psutil.Process().memory_info().rss
    tracemalloc.start()  # after the imports: what the data costs, not the libraries
    start = time.perf_counter()
    if mode == "index":
        loader = ChunkLoader(read_fsd50k(root, "train"), batch_size=32, cache_mb=16)
        n_clips = len(loader.dataset)
    else:
        loader = ShardLoader(root, batch_size=32, seed=0)
        n_clips = loader.shards.n_clips
    n_items = loader.n_items
    index_mb = tracemalloc.get_traced_memory()[1] / 2**20
    index_seconds = time.perf_counter() - start
    for i in range(0, len(loader), max(1, len(loader) // 50)):
        loader[i]
    loader.set_epoch(1)
    loader[len(loader) - 1]
    _, peak = tracemalloc.get_traced_memory()
    rss_growth = (psutil.Process().memory_info().rss - rss_before) / 2**20
    print(json.dumps({"n_clips": n_clips, "n_items": n_items, "index_mb": index_mb,
                      "peak_mb": peak / 2**20, "rss_growth_mb": rss_growth,
                      "index_seconds": index_seconds,
                      "seconds": time.perf_counter() - start}))
""")


def measure(mode: str, root) -> dict:
    """Runs the probe (`"index"`: a dataset root; `"shards"`: a shard directory)."""
    done = subprocess.run([sys.executable, "-c", PROBE, mode, str(root)], capture_output=True,
                          text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


# The four real recordings of the test dataset (tests/data; a harmonic tone for the fourth),
# as 44.1 kHz WAV like FSD50K's.
SOURCES = ("speech_front_center.wav", "camera_shutter.oga", "phone_incoming_call.oga", None)


def _source(name: str | None, sr: int = 44100) -> np.ndarray:
    from keras_dae.audio import load_audio

    if name is None:
        t = np.arange(int(1.5 * sr)) / sr
        return (0.3 * sum(np.sin(2 * np.pi * 330.0 * h * t) / h for h in range(1, 7))).astype(
            np.float32)
    return load_audio(ROOT / "tests" / "data" / name, sr)


def write_fsd50k_index(root: Path, n_clips: int = 50_000, val_share: float = 0.1,
                       seed: int = 0) -> Path:
    """FSD50K's layout at full size: `n_clips` dev clips (train and val) with FSD50K's
    200-class vocabulary and 1-3 random labels each, every `<fname>.wav` a symbolic link to
    one of four real recordings (0.5-3 s; cheap to create, real to probe and decode).
    Returns `root`."""
    import os

    import soundfile

    from keras_dae.data import write_fsd50k_layout
    from keras_dae.zoo.presets import preset_vocabulary

    labels, mids = preset_vocabulary("diverse_fsd50k")
    vocabulary = list(zip(labels, mids, strict=True))
    sources = root / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    made = []
    for k, name in enumerate(SOURCES):
        path = sources / f"{k}.wav"
        soundfile.write(path, _source(name), 44100, subtype="PCM_16")
        made.append(path)
    rng = np.random.default_rng(seed)
    paths = write_fsd50k_layout(root, [], [], vocabulary)
    rows = []
    for fname in range(n_clips):
        os.symlink(made[fname % len(made)], paths["dev_audio"] / f"{fname}.wav")
        chosen = rng.choice(len(labels), int(rng.integers(1, 4)), replace=False)
        split = "val" if rng.random() < val_share else "train"
        rows.append((str(fname), [labels[c] for c in chosen], [mids[c] for c in chosen], split))
    write_fsd50k_layout(root, rows, [], vocabulary)
    return root


def write_shard_set(directory: Path, n_clips: int = 50_000, chunks_per_clip: int = 6) -> Path:
    from keras_dae.data.shards import ShardWriter

    labels = [f"class_{k}" for k in range(200)]
    rng = np.random.default_rng(0)
    chunk = (0.1 * rng.standard_normal(160)).astype(np.float32)
    with ShardWriter(directory, labels, chunk_seconds=0.01, hop_seconds=0.005,
                     shard_size=50_000) as writer:
        for clip in range(n_clips):
            writer.add_clip(str(clip), np.repeat(chunk[None], chunks_per_clip, axis=0),
                            rng.choice(len(labels), 3, replace=False))
    return directory


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        index = measure("index", write_fsd50k_index(Path(tmp) / "fsd50k"))
        print(f"ChunkLoader, FSD50K-sized index: {json.dumps(index)}", flush=True)
        shards = measure("shards", write_shard_set(Path(tmp) / "shards"))
        print(f"ShardLoader, 300k records: {json.dumps(shards)}", flush=True)
    result = {"command": "python benchmarks/data_memory.py",
              "chunk_loader_fsd50k_index": index, "shard_loader_300k_records": shards}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
