"""Does bfloat16 cost accuracy? The same recipe, data and seeds in float32 and in bfloat16.

    python benchmarks/mixed_precision_accuracy.py --data /tmp/sampled_fsd50k

Trains the recipe (towers, then fusion) once per (precision, seed) on the JAX backend, each run
in its own process, and evaluates every run on the dataset's val and eval splits (clip-level
mAP, fused and per stream). Both precisions see the same batches in the same order (the loader
depends only on the seed and the epoch) from the same initial weights, so the difference
between seeds within one precision measures the noise that a difference between precisions
must exceed. The tower is smaller than the paper's (`SMALL_TOWER`) so that the four runs fit
a 2-core CPU; the front ends are the paper's. Results: `benchmarks/results/mixed_precision.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "mixed_precision.json"
# Two blocks of width 64 per stream (the paper's six would take hours per run here).
SMALL_TOWER = dict(d_model=64, num_layers=2, num_heads=4, intermediate_dim=256, dropout=0.1,
                   max_frames=128, downsample_every=0, normalize_first=False,
                   feature_masking=None)


def worker(args) -> None:
    import keras

    from keras_dae import scale, training
    from keras_dae.data import read_fsd50k
    from keras_dae.models import build_diverse_classifier

    precision = None if args.precision == "float32" else args.precision
    train, val = read_fsd50k(args.data, "train"), read_fsd50k(args.data, "val")
    test = read_fsd50k(args.data, "eval")
    with scale.precision(precision):
        keras.utils.set_random_seed(args.seed)
        model = build_diverse_classifier(len(train.labels), tower=SMALL_TOWER)
        config = training.TrainConfig(tower_epochs=args.epochs, fusion_epochs=args.fusion_epochs,
                                      joint_epochs=0,
                                      batch_size=32, seed=args.seed, patience=args.epochs,
                                      mixed_precision=precision)
        started = time.perf_counter()
        trainer = training.Trainer(model, train, val, args.run_dir, config, verbose=0)
        trainer.run()
        seconds = time.perf_counter() - started
        report = training.finish_run(trainer, {"eval": test, "val": val},
                                     training_data=str(args.data))
    out = {"precision": args.precision, "seed": args.seed, "train_seconds": seconds,
           "backend": keras.backend.backend(), "parameters": int(model.count_params())}
    for split, r in report["evaluation"].items():
        out[split] = {"mAP": r["mAP"], "streams": r["streams"], "n_clips": r["n_clips"]}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/tmp/sampled_fsd50k")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--fusion-epochs", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=Path("/tmp/keras_dae_mixed_precision"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for precision in args.precisions.split(","):
            run_dir = args.runs / f"{precision}_seed{seed}"
            command = [sys.executable, __file__, "--worker", "--data", args.data,
                       "--precision", precision, "--seed", str(seed), "--run-dir",
                       str(run_dir), "--epochs", str(args.epochs),
                       "--fusion-epochs", str(args.fusion_epochs)]
            env = dict(os.environ, KERAS_BACKEND="jax")
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-4000:])
                raise RuntimeError(f"run {precision} seed {seed} failed")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(run)
            print(f"{precision:<8} seed {seed}: val mAP {run['val']['mAP']:.3f}  eval mAP "
                  f"{run['eval']['mAP']:.3f}  ({run['train_seconds'] / 60:.1f} min)", flush=True)
    result = {
        "command": "python benchmarks/mixed_precision_accuracy.py " + " ".join(sys.argv[1:]),
        "data": args.data, "tower": SMALL_TOWER, "tower_epochs": args.epochs,
        "fusion_epochs": args.fusion_epochs, "machine_cpus": os.cpu_count(), "runs": runs,
    }
    # Runs of other seeds with the same settings, from an earlier invocation, are kept.
    if args.out.is_file():
        earlier = json.loads(args.out.read_text())
        same = all(earlier.get(k) == result[k] for k in ("data", "tower", "tower_epochs",
                                                          "fusion_epochs"))
        done = {(r["precision"], r["seed"]) for r in runs}
        if same:
            kept = [r for r in earlier["runs"] if (r["precision"], r["seed"]) not in done]
            result["runs"] = sorted(kept + runs, key=lambda r: (r["seed"], r["precision"]))
            result["command"] = [*([earlier["command"]] if isinstance(earlier["command"], str)
                                   else earlier["command"]), result["command"]]
    result["summary"] = summary(result["runs"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown_table(result))
    print(f"wrote {args.out}")


def summary(runs: list[dict]) -> dict:
    """Per precision: mean val and eval mAP over seeds; and bfloat16 minus float32 per seed."""
    import numpy as np

    out = {}
    for precision in sorted({r["precision"] for r in runs}):
        sel = [r for r in runs if r["precision"] == precision]
        out[precision] = {split: float(np.mean([r[split]["mAP"] for r in sel]))
                          for split in ("val", "eval")} | {"seeds": len(sel)}
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["precision"]] = r
    out["bfloat16_minus_float32"] = {
        str(seed): {split: pair["bfloat16"][split]["mAP"] - pair["float32"][split]["mAP"]
                    for split in ("val", "eval")}
        for seed, pair in sorted(by_seed.items()) if {"float32", "bfloat16"} <= set(pair)}
    return out


def markdown_table(result: dict) -> str:
    lines = ["| precision | seed | val mAP | eval mAP | eval mAP pitch / timbre / Neuralogram / "
             "end-to-end | training time |", "|---|---|---|---|---|---|"]
    for run in result["runs"]:
        streams = " / ".join(f"{v:.3f}" for v in run["eval"]["streams"].values())
        lines.append(f"| {run['precision']} | {run['seed']} | {run['val']['mAP']:.3f} | "
                     f"{run['eval']['mAP']:.3f} | {streams} | "
                     f"{run['train_seconds'] / 60:.1f} min |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
