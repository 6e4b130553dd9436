"""Export benchmark: size, one-thread latency and accuracy of every format and quantization.

    python benchmarks/export.py --model /path/to/run_or_preset --data /path/to/FSD50K
    python benchmarks/export.py --table        # README's table from the JSON

For each export (SavedModel; TFLite float32, float16, dynamic-int8, int8; ONNX) it reports
the size on disk, the latency of one 1 s clip (batch 1) on one CPU thread, the
largest difference from the Keras model's probabilities over every 1 s window of the eval
split, the share of windows within 1e-3 (the float32 target) and of windows whose fused top-5
labels are the Keras model's, and, at clip level (mean of the windows every
0.5 s), the share of clips whose top-5 labels are those of the Keras model and the mAP. The
Keras model's own latency is measured in the same run, on the same thread budget (a
`tf.function` of the model, TensorFlow backend). Latency: the median of `--repeats` calls,
measured in `--rounds` rounds that take every model in turn, and the lowest round median
kept (other processes on a shared machine slow some rounds down; all round medians are in
the JSON). Writes benchmarks/results/export.json.
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

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

RESULTS = Path(__file__).parent / "results" / "export.json"
VARIANTS = [
    ("savedmodel", "none"),
    ("tflite", "none"),
    ("tflite", "float16"),
    ("tflite", "dynamic-int8"),
    ("tflite", "int8"),
    ("onnx", "none"),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_latency(run, x, repeats: int, warmup: int = 3) -> float:
    """Median seconds of `run(x)` over `repeats` calls after `warmup` calls."""
    import numpy as np

    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def eval_windows(data: Path, split: str, sample_rate: int, labels):
    """All 1 s windows (every 0.5 s) of the split, their clip index, and the clip targets in
    the model's label order."""
    import numpy as np

    from keras_dae.data import read_split
    from keras_dae.data.loader import iterate_clips

    dataset = read_split(data, split).with_labels(labels)
    windows, owners, kept = [], [], []
    for index, chunks in iterate_clips(dataset, sample_rate):
        windows.append(chunks)
        owners.append(np.full(len(chunks), len(kept)))
        kept.append(index)
    return np.concatenate(windows), np.concatenate(owners), dataset.targets[kept]


def clip_metrics(scores, reference, owners, targets) -> dict:
    import numpy as np

    from keras_dae import metrics

    _, clips = metrics.aggregate_chunks(scores, owners)
    _, clips_ref = metrics.aggregate_chunks(reference, owners)
    return {"top5_kept": float(np.mean(metrics.same_top_k(clips, clips_ref))),
            "mAP": metrics.mean_average_precision(targets, clips)}


def run_benchmark(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from keras_dae import export, metrics, zoo

    model_path = zoo.resolve_preset(args.model)[1]
    model = zoo.load(model_path)
    x, owners, targets = eval_windows(Path(args.data), args.split, model.sample_rate,
                                      model.class_names)
    if args.max_windows:
        keep = owners < owners[min(args.max_windows, len(owners)) - 1]
        x, owners, targets = x[keep], owners[keep], targets[: owners[keep].max() + 1]
    print(f"{len(x)} windows of {int(owners.max()) + 1} clips; model "
          f"{model.count_params():,} parameters", flush=True)
    reference = model.predict(x, batch_size=64, verbose=0)
    _, clips_ref = metrics.aggregate_chunks(reference["fused"], owners)
    keras_map = metrics.mean_average_precision(targets, clips_ref)

    one = x[:1]
    call = tf.function(lambda w: model(w, training=False))
    runners = {("keras", "none"): lambda w: call(w)["fused"].numpy()}
    results = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads_used": 1},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "model": {"path": str(model_path), "parameters": int(model.count_params()),
                  "classes": model.num_classes},
        "data": {"path": str(args.data), "split": args.split, "windows": int(len(x)),
                 "clips": int(owners.max()) + 1},
        "keras": {"mAP": keras_map},
        "exports": [],
    }
    calibration = args.calibration or args.data
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="keras_dae_export_"))
    for fmt, quantize in VARIANTS:
        if args.only and f"{fmt}:{quantize}" not in args.only:
            continue
        name = {"savedmodel": "savedmodel", "onnx": "model.onnx"}.get(fmt, f"model_{quantize}"
                                                                      ".tflite")
        start = time.time()
        try:
            if args.reuse and (out_dir / name).exists():
                result = export.api.ExportResult(
                    path=out_dir / name, format=fmt, quantize=quantize,
                    dft_mode=export.DEFAULT_DFT_MODE[fmt],
                    batch_size=export.api.DEFAULT_BATCH_SIZE[fmt],
                    size_bytes=export.api.artifact_size(out_dir / name), labels_path=None,
                    description_path=None, max_abs_diff={}, model_backend="tensorflow")
            else:
                result = export.export(model, out_dir / name, fmt, quantize=quantize,
                                       calibration=calibration, check=False)
        except Exception as error:  # report it and go on with the other variants
            row = {"format": fmt, "quantize": quantize, "error": f"{type(error).__name__}: "
                   f"{error}"}
            results["exports"].append(row)
            print(json.dumps(row), flush=True)
            continue
        seconds = time.time() - start
        exported = export.load_exported(result.path, num_threads=1)
        got = {k: np.concatenate([exported(x[i : i + 64])[k] for i in range(0, len(x), 64)])
               for k in ("fused", *model.stream_names)}
        diff = np.max([np.abs(got[k] - reference[k]).max(axis=1) for k in got], axis=0)
        runners[(fmt, quantize)] = exported
        row = {
            "format": fmt, "quantize": quantize, "dft_mode": result.dft_mode,
            "size_bytes": result.size_bytes,
            "max_abs_diff": float(diff.max()),
            "windows_within_1e-4": float(np.mean(diff <= 1e-4)),
            "windows_within_1e-3": float(np.mean(diff <= 1e-3)),
            "windows_top5_kept": float(np.mean(metrics.same_top_k(got["fused"], reference["fused"]))),
            "export_seconds": None if args.reuse else seconds,
            **clip_metrics(got["fused"], reference["fused"], owners, targets),
        }
        row["mAP_loss"] = keras_map - row["mAP"]
        results["exports"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # written after every variant, so that a crash loses nothing
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    rounds = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, run in runners.items():
            rounds[key].append(1000 * median_latency(run, one, args.repeats))
    results["keras"]["latency_ms"] = min(rounds[("keras", "none")])
    results["keras"]["latency_rounds_ms"] = rounds[("keras", "none")]
    for row in results["exports"]:
        key = (row["format"], row["quantize"])
        if key in rounds:
            row["latency_ms"] = min(rounds[key])
            row["latency_rounds_ms"] = rounds[key]
            row["vs_keras"] = results["keras"]["latency_ms"] / row["latency_ms"]
    return results


def table(results: dict) -> str:
    keras_ms = results["keras"]["latency_ms"]
    lines = [
        "| export | size | latency, 1 s clip, 1 thread | speed vs Keras | max abs diff (probabilities) "
        "| windows within 1e-3 | windows keeping top-5 | clips keeping top-5 | mAP (loss) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| Keras model (TensorFlow, `tf.function`) | - | {keras_ms:.1f} ms | 1.0x | - | - | - "
        f"| - | {results['keras']['mAP']:.4f} |",
    ]
    for row in results["exports"]:
        if "error" in row:
            lines.append(f"| {row['format']} {row['quantize']} | failed: {row['error']} ||||||||")
            continue
        name = row["format"] if row["quantize"] == "none" else f"{row['format']} {row['quantize']}"
        if row["format"] == "tflite" and row["quantize"] == "none":
            name = "tflite float32"
        lines.append(
            f"| {name} | {row['size_bytes'] / 1e6:.2f} MB | {row['latency_ms']:.1f} ms | "
            f"{keras_ms / row['latency_ms']:.1f}x | {row['max_abs_diff']:.1e} | "
            f"{100 * row['windows_within_1e-3']:.1f}% | {100 * row['windows_top5_kept']:.1f}% | "
            f"{100 * row['top5_kept']:.1f}% | "
            f"{row['mAP']:.4f} ({row['mAP_loss']:+.4f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="preset name, preset directory or run directory")
    parser.add_argument("--data", help="dataset directory with an eval split")
    parser.add_argument("--split", default="eval")
    parser.add_argument("--calibration", help="int8 calibration audio (default: --data, "
                        "whose train split is used)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (lowest kept)")
    parser.add_argument("--reuse", action="store_true", help="measure the exports already in "
                        "--out-dir instead of exporting again")
    parser.add_argument("--max-windows", type=int, help="use only the first N windows")
    parser.add_argument("--only", nargs="*", help="FORMAT:QUANTIZE variants to run")
    parser.add_argument("--out-dir", help="where to keep the exports (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the table from --json")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.json.read_text())))
        return 0
    if not args.model or not args.data:
        parser.error("--model and --data are required (or --table)")
    results = run_benchmark(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
