"""What the constant-Q spectrum's dB range costs and buys: pitch accuracy over seeds, and
the ONNX and TFLite files' agreement with the Keras model.

    python benchmarks/cqt_range.py --data /tmp/sampled_fsd50k --top-db 80,60 --seeds 0,1,2,3
    python benchmarks/cqt_range.py --parity --model diverse_sampled15 --data /tmp/sampled_fsd50k \
        --top-db 80,60

The pitch stream's `ConstantQTransform` gives dB clamped `top_db` below each example's peak.
Its quietest bins are sums of large, cancelling products, so float32 rounding decides their
last digits, and it rounds differently in onnxruntime's convolutions than in TensorFlow's:
0.056 dB apart at worst over the eval windows with an 80 dB range, 0.011 dB with 60 dB
(a trained pitch tower turns 0.06 dB into 1e-4 of probability). A narrower range drops
information from the pitch stream. Both are measured:

- accuracy (default): the pitch stream alone (CQT + YIN, the preset's tower) trained from
  scratch for 8 epochs per range and seed (`one_stream.train_stream`). The pitch features
  are cached per range under `--cache`.
- `--parity`: a trained model run with every range in `--top-db` (its weights unchanged),
  exported to ONNX and float32 TFLite and run by onnxruntime and the TFLite interpreter over
  every 1 s window of the eval split: the largest difference from the Keras model's
  probabilities (all heads), and how many windows exceed 1e-4; and for ONNX, the largest
  difference in dB between the constant-Q layer alone in onnxruntime and in Keras.

Results are merged into benchmarks/results/cqt_range.json (`--table` prints them).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import one_stream  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cqt_range.json"
FORMATS = ("onnx", "tflite")


def constant_q(model):
    """The model's (first) `ConstantQTransform` front end."""
    from keras_dae import layers

    return one_stream.frontend_of(model, layers.ConstantQTransform)


def train_pitch(data: Path, top_db: float, seed: int, epochs: int, cache: Path) -> dict:
    """Trains the pitch tower alone with the CQT's range at `top_db`; returns its val and
    eval mAP."""
    scores, _ = one_stream.train_stream(
        data, "pitch", {"ConstantQTransform": {"top_db": top_db}}, seed, epochs,
        cache / f"top_db_{top_db:g}")
    return {"top_db": top_db, **scores}


def onnx_db_difference(layer, windows) -> float:
    """Largest difference in dB between `layer` (a `ConstantQTransform`) run by Keras and
    the same layer alone converted by tf2onnx and run by onnxruntime, over `windows`."""
    import numpy as np
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    function = tf.function(lambda x: {"cqt": layer(x)},
                           input_signature=[tf.TensorSpec((None, windows.shape[1]), tf.float32)])
    concrete = function.get_concrete_function()
    inputs = [t.name for t in concrete.inputs[:1]]
    outputs = [t.name for t in concrete.outputs]
    frozen = tf2onnx.tf_loader.from_function(concrete, inputs, outputs)
    proto, _ = tf2onnx.convert.from_graph_def(frozen, input_names=inputs, output_names=outputs,
                                              opset=17)
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    worst = 0.0
    for start in range(0, len(windows), 64):
        batch = windows[start:start + 64]
        got = session.run(None, {session.get_inputs()[0].name: batch})[0]
        worst = max(worst, float(np.max(np.abs(got - np.asarray(layer(batch))))))
    return worst


def parity(model_source: str, data: Path, ranges) -> list[dict]:
    """ONNX and float32 TFLite vs Keras, per range, over every eval window."""
    import numpy as np
    from export import eval_windows

    from keras_dae import zoo
    from keras_dae.export import export, load_exported

    model = zoo.load(model_source)
    trained = constant_q(model).top_db
    windows = eval_windows(data, "eval", model.sample_rate, model.class_names)[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cqt_range_") as tmp:
        for top_db in ranges:
            ranged = one_stream.with_frontend_config(
                model, {"ConstantQTransform": {"top_db": top_db}})
            reference = ranged.predict(windows, batch_size=64, verbose=0)
            for fmt in FORMATS:
                path = Path(tmp) / f"model_{top_db:g}.{fmt}"
                export(ranged, path, format=fmt)
                got = load_exported(path)(windows)
                per_window = np.max([np.max(np.abs(got[k] - reference[k]), axis=-1)
                                     for k in reference if k != "embedding"], axis=0)
                rows.append({"top_db": top_db, "format": fmt, "model": model_source,
                             "trained_top_db": trained, "windows": int(len(windows)),
                             "max_abs_diff": float(per_window.max()),
                             "windows_over_1e-4": int((per_window > 1e-4).sum())})
                if fmt == "onnx":
                    rows[-1]["cqt_max_db_diff"] = onnx_db_difference(constant_q(ranged),
                                                                     windows)
                print(json.dumps(rows[-1]), flush=True)
    return rows


def db_difference(row: dict) -> str:
    value = row.get("cqt_max_db_diff")
    return "-" if value is None else f"{value:.3f} dB"


def table(results: dict) -> str:
    lines = ["| CQT range | pitch eval mAP per seed | mean ± sd | val mean |",
             "|---|---|---|---|"]
    by_range = {}
    for r in results.get("accuracy", []):
        by_range.setdefault(r["top_db"], []).append(r)
    for top_db in sorted(by_range, reverse=True):
        lines.append(f"| {top_db:g} dB | {one_stream.accuracy_cells(by_range[top_db])} |")
    if results.get("parity"):
        lines += ["", "| model trained with range | run with range | format | max abs diff "
                  "from Keras | windows over 1e-4 | CQT alone, max dB diff |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(results["parity"], key=lambda r: (-r["trained_top_db"], -r["top_db"],
                                                          r["format"])):
            lines.append(f"| {r['trained_top_db']:g} dB | {r['top_db']:g} dB | {r['format']} | "
                         f"{r['max_abs_diff']:.1e} | {r['windows_over_1e-4']} of "
                         f"{r['windows']} | {db_difference(r)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = one_stream.parser(__doc__.split("\n")[0], "--top-db", "80,60",
                             "comma-separated dB ranges", "keras_dae_cqt_range").parse_args(argv)
    return one_stream.run(
        args, RESULTS, train_pitch, parity, table,
        accuracy_id=lambda r: (r["top_db"], r["seed"], r["epochs"]),
        parity_id=lambda r: (r["model"], r["trained_top_db"], r["top_db"], r["format"]))


if __name__ == "__main__":
    raise SystemExit(main())
