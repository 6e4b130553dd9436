"""Streams chosen to fit a budget: size, latency and eval mAP of a model on each useful
subset of its streams, exported to float32 TFLite.

    python benchmarks/stream_subsets.py --model diverse_sampled15 --data /tmp/sampled_fsd50k

For each subset, what a user runs: `keras-dae finetune --mode probe --streams ...` from the
preset (the fusion head refitted on the subset's embeddings, stream heads too; train and val
splits of `--data`), then `keras-dae export --format tflite` of the run. Reported per subset:
parameters, the TFLite file's size, its latency on one 1 s window (one thread, batch 1; the
median of `--repeats` calls, the lowest of `--rounds` rounds that take every file in turn),
and the run's fused val and eval mAP. Latency and size are also given as ratios to the
all-four-streams file measured in the same run. Writes benchmarks/results/stream_subsets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

RESULTS = Path(__file__).parent / "results" / "stream_subsets.json"
# All four, then the subsets a smaller device would pick (the stronger streams first; see
# stream_ablation.json for every subset's linear-probe mAP).
SUBSETS = (("pitch", "timbre", "neuralogram", "end_to_end"), ("pitch", "timbre", "neuralogram"),
           ("pitch", "timbre"), ("timbre", "neuralogram"), ("timbre",), ("pitch",))


def run_benchmark(args) -> dict:
    import keras
    import numpy as np
    from export import cpu_name, median_latency  # benchmarks/export.py

    from keras_dae.export import export, load_exported
    from keras_dae.finetune import finetune_run
    from keras_dae.models import DiverseClassifier
    from keras_dae.train_config import TrainConfig

    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="keras_dae_subsets_"))
    rows = []
    for streams in SUBSETS:
        name = "+".join(streams)
        run = out_dir / name
        start = time.time()
        report = finetune_run(args.model, args.data, run, "probe", list(streams),
                              TrainConfig(seed=args.seed), resume=run.exists(),
                              say=lambda line: print(line, flush=True)) \
            if not (run / "report.json").is_file() else json.loads(
                (run / "report.json").read_text())
        finetune_seconds = time.time() - start
        model = DiverseClassifier.from_preset(run / "preset")
        path = out_dir / f"{name}.tflite"
        export(model, path, "tflite")
        rows.append({"streams": list(streams), "parameters": int(model.count_params()),
                     "size_bytes": path.stat().st_size,
                     "val_mAP": report["evaluation"]["val"]["mAP"],
                     "eval_mAP": report["evaluation"]["eval"]["mAP"],
                     "finetune_seconds": round(finetune_seconds, 1), "path": str(path)})
        print(f"{name}: {rows[-1]['size_bytes'] / 1e6:.2f} MB, eval mAP "
              f"{rows[-1]['eval_mAP']:.3f}", flush=True)
    window = np.random.default_rng(0).standard_normal((1, 16000)).astype("float32") * 0.1
    runners = {row["path"]: load_exported(row["path"], num_threads=1) for row in rows}
    rounds = {path: [] for path in runners}
    for _ in range(args.rounds):
        for path, runner in runners.items():
            rounds[path].append(median_latency(runner, window, args.repeats))
    full = rows[0]
    full_latency = min(rounds[full["path"]])
    for row in rows:
        row["latency_ms"] = 1e3 * min(rounds[row["path"]])
        row["round_medians_ms"] = [round(1e3 * t, 3) for t in rounds[row["path"]]]
        row["latency_vs_all"] = min(rounds[row["path"]]) / full_latency
        row["size_vs_all"] = row["size_bytes"] / full["size_bytes"]
    return {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads_used": 1},
            "versions": {"keras": keras.__version__, "backend": keras.backend.backend()},
            "model": str(args.model), "data": str(args.data), "seed": args.seed,
            "command": "python benchmarks/stream_subsets.py --model " + str(args.model)
                       + f" --data {args.data}",
            "rows": rows}


def table(result: dict) -> str:
    names = {"pitch": "pitch", "timbre": "timbre", "neuralogram": "Neuralogram",
             "end_to_end": "end-to-end"}
    lines = [f"`{result['model']}` with the fusion refitted on each subset (`finetune --mode "
             f"probe --streams`), exported to float32 TFLite; latency per 1 s window on "
             f"{result['machine']['threads_used']} thread of a {result['machine']['cores']}"
             f"-core x86 CPU.", "",
             "| streams | parameters | size | latency | vs all four | val mAP | eval mAP |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        streams = ("all four" if len(row["streams"]) == 4
                   else " + ".join(names[s] for s in row["streams"]))
        lines.append(f"| {streams} | {row['parameters']:,} | {row['size_bytes'] / 1e6:.2f} MB | "
                     f"{row['latency_ms']:.1f} ms | {row['size_vs_all']:.2f}x size, "
                     f"{row['latency_vs_all']:.2f}x time | {row['val_mAP']:.3f} | "
                     f"{row['eval_mAP']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="diverse_sampled15")
    parser.add_argument("--data", required=True, help="a dataset with train, val and eval")
    parser.add_argument("--out-dir", help="runs and files (default: a temporary directory; "
                        "runs already finished there are reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    result = run_benchmark(args)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
