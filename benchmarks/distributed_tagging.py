"""Tagging on Ray: files per second with 1 and 2 workers, against `keras-dae predict`.

    python benchmarks/distributed_tagging.py --data /tmp/sampled_fsd50k --shared-cpu

The eval clips of an FSD50K-layout dataset (`FSD50K.eval_audio/*.wav`) are tagged three
ways, one after the other, with the same model and settings:

- `keras-dae predict`'s path in this process: `keras_dae.tag_files.tag_files` with one
  `Tagger` (its backend's thread pools use every core);
- `keras_dae.distributed.tag_files` on a new local Ray cluster with 1 worker, then 2 workers
  (1 CPU each, their TensorFlow and PyTorch thread pools sized to 1 thread), each run writing
  its own Parquet directory.

Per run: the wall-clock seconds of the whole call (for Ray: starting the cluster, starting
the workers and loading the model in each, tagging, writing the rows), files per second over
it, and the steady rate once the workers are up: the files of every Parquet part but the
first over the time between the first part's writing and the last's (part files' mtimes).
For `predict`, the model load is timed apart and the steady rate is the tagging alone. The
scores of every Ray row are compared with the in-process `Tagger`'s (largest difference).
The processes that used the CPU meanwhile (`ps`, before each run) and the load average are
recorded with the rows. Writes benchmarks/results/distributed_tagging.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "distributed_tagging.json"
SHARED = ("the CPU was shared with other jobs running at the same time, so every speed here "
          "is lower than an idle machine gives; the runs went one after the other, so the "
          "load may have differed between them (see load_average_1min)")


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def busy_processes(threshold: float = 20.0) -> list[str]:
    """Other processes whose CPU use (`ps`'s average over each one's life so far) is over
    `threshold` % of a core, as `"95% python benchmarks/export.py ..."`: what shared the
    CPU."""
    import subprocess

    try:
        lines = subprocess.run(["ps", "-eo", "pid=,pcpu=,args="], capture_output=True,
                               text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return []
    busy = []
    for line in lines:
        pid, cpu, command = (line.split(None, 2) + [""])[:3]
        if int(pid) != os.getpid() and float(cpu) > threshold:
            busy.append(f"{float(cpu):.0f}% {command[:100]}")
    return busy


def run_predict(files: list[str], model: str, top_k: int) -> tuple[dict, dict]:
    """`keras-dae predict`'s path in this process; its row and the fused scores by path."""
    from keras_dae.inference import TagFailure, Tagger
    from keras_dae.tag_files import tag_files

    begin = time.perf_counter()
    tagger = Tagger(model)
    loaded = time.perf_counter()
    scores = {}

    def emit(result):
        if not isinstance(result, TagFailure):
            scores[os.path.abspath(result.source)] = result.scores["fused"]

    _, results, failures = tag_files(files, lambda: tagger, emit, top_k=top_k)
    end = time.perf_counter()
    return {
        "runner": "keras-dae predict (in-process Tagger, tag_files)", "workers": None,
        "files": len(results) + len(failures), "failed": len(failures),
        "seconds": round(end - begin, 2), "files_per_second": round(len(files) / (end - begin), 3),
        "startup_seconds": round(loaded - begin, 2),
        "steady_files_per_second": round(len(files) / (end - loaded), 3),
    }, scores


def run_ray(files: list[str], model: str, top_k: int, workers: int, reference: dict) -> dict:
    """`keras_dae.distributed.tag_files` on a new local cluster of `workers` workers."""
    import pyarrow.parquet as pq

    from keras_dae import distributed

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "rows"
        begin = time.time()
        report = distributed.tag_files(files, out, model, workers=workers, top_k=top_k)
        end = time.time()
        for _ in range(60):  # the stopped cluster's processes take a moment to exit: untimed
            if not any("ray::" in p or "raylet" in p for p in busy_processes(0.0)):
                break
            time.sleep(0.5)
        parts = sorted(out.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime)
        sizes = [pq.read_metadata(p).num_rows for p in parts]
        times = [p.stat().st_mtime for p in parts]
        table = pq.read_table(out, columns=["path", "scores", "error"])
    difference = max(float(np.max(np.abs(np.asarray(row["scores"]) - reference[row["path"]])))
                     for row in table.to_pylist() if row["error"] is None)
    steady = (sum(sizes[1:]) / (times[-1] - times[0])) if len(parts) > 1 else None
    return {
        "runner": f"keras_dae.distributed.tag_files, local Ray, {workers} worker"
                  + "s" * (workers > 1), "workers": report.workers,
        "files": report.tagged + len(report.failures), "failed": len(report.failures),
        "seconds": round(end - begin, 2), "files_per_second": round(len(files) / (end - begin), 3),
        "startup_seconds": round(times[0] - begin, 2),  # up to the first part written
        "steady_files_per_second": None if steady is None else round(steady, 3),
        "parts": len(parts), "max_abs_score_difference_vs_predict": difference,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="FSD50K-layout dataset")
    parser.add_argument("--model", default="diverse_sampled15")
    parser.add_argument("--max-files", type=int, default=None,
                        help="the first N eval clips (default: all)")
    parser.add_argument("--workers", default="1,2", help="Ray workers per run, comma-separated")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--shared-cpu", action="store_true",
                        help="say in the JSON that other jobs ran on the CPU meanwhile")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]

    import keras
    import soundfile

    files = sorted(str(p) for p in (args.data / "FSD50K.eval_audio").glob("*.wav"))
    files = files[:args.max_files]
    if not files:
        raise SystemExit(f"{args.data}/FSD50K.eval_audio: no .wav files")
    seconds = sum(soundfile.info(f).duration for f in files)

    rows, loads = [], [round(load_before, 2)]
    busy = busy_processes()
    row, reference = run_predict(files, args.model, args.top_k)
    rows.append(row | {"other_busy_processes_before": busy})
    print(json.dumps(rows[-1]), flush=True)
    for workers in [int(w) for w in args.workers.split(",")]:
        loads.append(round(os.getloadavg()[0], 2))
        busy = busy_processes()
        rows.append(run_ray(files, args.model, args.top_k, workers, reference)
                    | {"other_busy_processes_before": busy})
        print(json.dumps(rows[-1]), flush=True)
    loads.append(round(os.getloadavg()[0], 2))

    by_workers = {row["workers"]: row for row in rows if row["workers"]}
    ratios = {}
    if 1 in by_workers and 2 in by_workers:
        for rate in ("files_per_second", "steady_files_per_second"):
            if by_workers[1][rate] and by_workers[2][rate]:
                ratios[f"{rate}: 2 workers / 1 worker"] = round(
                    by_workers[2][rate] / by_workers[1][rate], 3)
    for workers, row in by_workers.items():
        for rate in ("files_per_second", "steady_files_per_second"):
            if row[rate]:
                ratios[f"{rate}: {workers} worker{'s' * (workers > 1)} / predict"] = round(
                    row[rate] / rows[0][rate], 3)

    from export import cpu_name  # benchmarks/export.py

    result = {
        "command": ("KERAS_BACKEND=" + keras.backend.backend() + " python benchmarks/"
                    + Path(__file__).name + " " + " ".join(
                        argv if argv is not None else sys.argv[1:])),
        "model": args.model, "backend": keras.backend.backend(), "top_k": args.top_k,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "shared": args.shared_cpu,
                    **({"note": SHARED} if args.shared_cpu else {}),
                    "load_average_1min": {"before_each_run_and_at_the_end": loads}},
        "versions": {"python": platform.python_version(), "keras": keras.__version__,
                     "tensorflow": _version("tensorflow"), "jax": _version("jax"),
                     "torch": _version("torch"), "ray": _version("ray"),
                     "pyarrow": _version("pyarrow"), "numpy": np.__version__},
        "data": {"dataset": str(args.data), "split": "eval", "files": len(files),
                 "audio_seconds": round(seconds, 1)},
        "rows": rows, "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
