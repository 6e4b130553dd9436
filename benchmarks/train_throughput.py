"""Training throughput in 1 s chunks per second: each stream alone and the whole model, per
backend and precision, and the front ends' forward throughput in multiples of real time.

    python benchmarks/train_throughput.py                   # CPU, every installed backend
    python benchmarks/train_throughput.py --device gpu      # the same on the GPU
    python benchmarks/train_throughput.py --table           # README's table from the JSON

The model is the paper's configuration (`diverse_fsd50k`: 200 classes, four 6-block towers of
width 64, 3.87M parameters). A training step is `train_on_batch` on a batch of 1 s chunks at
16 kHz (noise plus harmonic tones) with multi-hot targets, Adam, binary cross-entropy, as in
stage 1 of the recipe (the four towers with their own heads):
- a stream alone: waveform -> that stream's front ends -> its tower -> its head;
- the whole model: `DiverseClassifier`, all four streams and heads in one step.
The front ends' forward throughput is the featurizer alone (all four streams, no gradient),
in audio-seconds per second, i.e. multiples of real time.

Compilation is each backend's default in `fit` (`jit_compile="auto"`): XLA on JAX and
TensorFlow, eager on PyTorch; `--jit-compile true` asks for it everywhere (torch.compile on
PyTorch), and its rows are labelled so. Each backend runs in its own process (Keras fixes its
backend at import). Steps are timed after two warm-up steps (compilation), as the median over
at least `--min-steps` steps and `--min-seconds` seconds, with `OMP_WAIT_POLICY=PASSIVE` (see
`run_backend`). The FSD50K epoch time is projected from the whole model's throughput: about 300,000 1 s chunks (train split, 0.5 s hop) divided by
chunks per second, with no data loading counted; it is a projection, not a measurement.
Results go to `benchmarks/results/train_throughput.json` (`--out`), keyed by device, so a GPU
run adds its rows beside the CPU's. The file is rewritten after each backend, and
`--worker-timeout` bounds each backend's time, keeping the rows measured by then (for a lent
GPU machine's time limits); a backend that fails or runs out of time is named under
"failed". The GPU rows in the file come from three calls on one H200 (each row names its
command): the whole run, the one row its JAX worker had no time left for, and torch.compile.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SR = 16000
FSD50K_TRAIN_CHUNKS = 300_000
STREAMS = ("pitch", "timbre", "neuralogram", "end_to_end")
RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
PRECISIONS = ("float32", "bfloat16")


def make_batch(batch_size: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    f0 = rng.uniform(80, 800, size=(batch_size, 1))
    tones = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5))
    x = (0.2 * tones + 0.05 * rng.standard_normal((batch_size, SR))).astype(np.float32)
    y = (rng.random((batch_size, n_classes)) < 0.02).astype(np.float32)
    y[np.arange(batch_size), rng.integers(0, n_classes, batch_size)] = 1.0
    return x, y


def timed(fn, min_steps: int, min_seconds: float, warmup: int = 2) -> tuple[float, int, float]:
    """Median seconds per call after `warmup` calls, how many calls were timed, and the
    seconds the warm-up calls took (tracing and compiling)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    warmup_seconds = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times), warmup_seconds


def device_name(backend: str, device: str) -> str:
    if device == "cpu":
        for line in Path("/proc/cpuinfo").read_text().splitlines() if Path(
                "/proc/cpuinfo").exists() else []:
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
        return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0)
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    return details.get("device_name", "GPU")


def check_device(backend: str, device: str) -> None:
    """Refuses to measure a GPU that the backend does not see (rather than time the CPU)."""
    if device != "gpu":
        return
    if backend == "jax":
        import jax

        ok = any(d.platform == "gpu" for d in jax.devices())
    elif backend == "torch":
        import torch

        ok = torch.cuda.is_available()
    else:
        import tensorflow as tf

        ok = bool(tf.config.list_physical_devices("GPU"))
    if not ok:
        raise SystemExit(f"--device gpu: the {backend} backend sees no GPU")


def worker(args) -> None:
    """Measures the backend in KERAS_BACKEND; prints each row as a JSON line."""
    import keras

    from keras_dae import scale
    from keras_dae.models import build_diverse_classifier
    from keras_dae.zoo import PRESETS

    backend = keras.backend.backend()
    check_device(backend, args.device)
    card = device_name(backend, args.device)
    spec = PRESETS["diverse_fsd50k"]
    n_classes = spec["num_classes"]
    x, y = make_batch(args.batch_size, n_classes)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    rows = []

    def record(what, precision, seconds, steps, warmup_s, **extra):
        row = {"device": args.device, "card": card, "backend": backend, "precision": precision,
               "what": what, "batch_size": args.batch_size, "step_ms": 1000 * seconds,
               "jit_compile": args.jit_compile, "warmup_s": warmup_s,
               "timed_steps": steps, "chunks_per_s": args.batch_size / seconds, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)  # one line per row: a stopped worker keeps them
        print(f"{backend:<10} {precision:<8} {what:<22} {row['chunks_per_s']:9.1f} chunks/s "
              f"({1000 * seconds:.0f} ms/step)", file=sys.stderr, flush=True)

    for precision in args.precisions.split(","):
        with scale.precision(None if precision == "float32" else precision):
            keras.utils.set_random_seed(0)
            model = build_diverse_classifier(n_classes, spec["sample_rate"], tower=spec["tower"])
        waveform = keras.Input((SR,), name="waveform")
        # Front ends alone, forward: multiples of real time.
        featurizer = keras.Model(waveform, model.featurizer(waveform))
        featurizer.compile(jit_compile=jit)
        seconds, steps, warmup_s = timed(lambda f=featurizer: f.predict_on_batch(x),
                                         args.min_steps, args.min_seconds)
        record("front ends (forward)", precision, seconds, steps, warmup_s,
               x_real_time=args.batch_size / seconds)
        targets = ["fused", *STREAMS] if "whole" in args.parts else []
        # The whole model first: a run stopped by --worker-timeout keeps the row that matters.
        parts = (["whole model"] if targets else []) + [s for s in STREAMS if s in args.parts]
        for part in parts:
            if part == "whole model":
                net, names = model, ["fused", *STREAMS]
                weights = {"fused": 0.0, **{s: 1.0 for s in STREAMS}}  # stage 1
            else:
                # The stream's front ends in a model of their own: the Neuralogram layer
                # and the Neuralogram head share a name.
                frontends = keras.Model(waveform, model.featurizer.stream_features(
                    waveform, part), name=f"{part}_frontends")
                out = model.stream_heads[part](model.backbone.towers[part](frontends(waveform)))
                net, names, weights = keras.Model(waveform, {part: out}), [part], None
            net.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit,
                        loss={n: "binary_crossentropy" for n in names}, loss_weights=weights)
            batch_y = {n: y for n in names}
            seconds, steps, warmup_s = timed(
                lambda net=net, t=batch_y: net.train_on_batch(x, t), args.min_steps,
                args.min_seconds)
            extra = {}
            if part == "whole model":
                extra["projected_fsd50k_epoch_s"] = FSD50K_TRAIN_CHUNKS * seconds / args.batch_size
            record(part, precision, seconds, steps, warmup_s, **extra)


def run_backend(backend: str, args) -> list[dict]:
    env = dict(os.environ, KERAS_BACKEND=backend)
    # PyTorch's OpenMP threads spin while they wait; on a CPU that other processes share,
    # that made its training steps 20x slower here. Passive waiting costs nothing otherwise.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.device == "cpu":  # keep every backend off any GPU the machine has
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    command = [sys.executable, __file__, "--worker", "--device", args.device,
               "--batch-size", str(args.batch_size), "--precisions", args.precisions,
               "--jit-compile", args.jit_compile,
               "--parts", args.parts, "--min-steps", str(args.min_steps),
               "--min-seconds", str(args.min_seconds)]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=args.worker_timeout)
        stdout, stderr, failure = proc.stdout, proc.stderr, proc.returncode and (
            f"exit {proc.returncode}")
    except subprocess.TimeoutExpired as stopped:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        stdout, stderr = text(stopped.stdout), text(stopped.stderr)
        failure = f"stopped after --worker-timeout {args.worker_timeout:g} s"
    print("\n".join(line for line in stderr.splitlines() if "chunks/s" in line), flush=True)
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if failure:
        sys.stderr.write(stderr[-4000:])
        raise RuntimeError(f"benchmark worker for {backend}: {failure}", rows)
    return rows


def installed_backends() -> list[str]:
    return [b for b in ("jax", "torch", "tensorflow") if importlib.util.find_spec(b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--backends", default=",".join(installed_backends()))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--parts", default=",".join([*STREAMS, "whole"]),
                        help="streams to time alone, and 'whole' for the whole model")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="chunks per step (default 32 on CPU, 256 on GPU)")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--jit-compile", default="auto",
                        help="Keras' jit_compile: auto, true or false, or several separated by "
                             "commas, each measured in turn ('true' on PyTorch is "
                             "torch.compile; 'auto,true' on PyTorch: eager against compiled)")
    parser.add_argument("--run", default=None,
                        help="the key of this run in the results file (default: --device), so "
                             "a partial run can sit beside the full one")
    parser.add_argument("--worker-timeout", type=float, default=None,
                        help="seconds each backend may take; rows measured by then are kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print README's table and exit")
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 256 if args.device == "gpu" else 32
    jit_values = args.jit_compile.split(",")
    if not set(jit_values) <= {"auto", "true", "false"}:
        parser.error(f"--jit-compile: auto, true or false, not {args.jit_compile!r}")
    if args.worker:
        return worker(args)
    if args.table:
        return print(markdown_table(json.loads(args.out.read_text())))
    started = time.time()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    backends = args.backends.split(",")
    result = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    run = result["runs"][args.run or args.device] = {
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "load_average_before": load_before,
        "versions": versions(backends),
        "rows": [],
        "failed": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Written after each backend, so a run stopped part-way (a time limit on a lent GPU
    # machine) keeps what it measured; a backend that fails is named and the others go on.
    for backend, jit in ((b, j) for b in backends for j in jit_values):
        try:
            run["rows"] += run_backend(backend, argparse.Namespace(**{
                **vars(args), "jit_compile": jit}))
        except RuntimeError as error:  # keep the rows it measured before it stopped
            key = backend if len(jit_values) == 1 else f"{backend} jit_compile={jit}"
            run["failed"][key], rows = error.args
            run["rows"] += rows
        run["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        run["minutes"] = (time.time() - started) / 60
        args.out.write_text(json.dumps(result, indent=1))
    print(markdown_table(result))
    print(f"wrote {args.out}")
    if run["failed"]:
        raise SystemExit(f"failed: {', '.join(run['failed'])}")


def versions(backends) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("keras", *backends):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def backend_label(row: dict) -> str:
    """The backend, and how it compiled where that is not its default."""
    jit = row.get("jit_compile", "auto")
    if jit == "auto":
        return row["backend"]
    return row["backend"] + (" (torch.compile)" if row["backend"] == "torch" and jit == "true"
                             else f" (jit_compile={jit})")


def markdown_table(result: dict) -> str:
    """One row per device, backend and precision: chunks/s of each stream alone and of the
    whole model, the front ends' multiple of real time, and the projected FSD50K epoch."""
    head = ("| card | backend | precision | batch | pitch | timbre | Neuralogram | end-to-end "
            "| whole model | front ends, forward (x real time) | FSD50K epoch, projected |")
    lines = [head, "|" + "---|" * 11]
    for run_key, run in result["runs"].items():
        keys = []
        for row in run["rows"]:
            key = (row["card"], backend_label(row), row["precision"], row["batch_size"])
            if key not in keys:
                keys.append(key)
        for card, backend, precision, batch in keys:
            sel = {r["what"]: r for r in run["rows"]
                   if (r["card"], backend_label(r), r["precision"], r["batch_size"]) ==
                   (card, backend, precision, batch)}

            def cell(what, sel=sel):
                return f"{sel[what]['chunks_per_s']:,.0f}" if what in sel else "-"

            front = sel.get("front ends (forward)")
            real_time = f"{front['x_real_time']:,.0f}x" if front else "-"
            epoch = "-"
            if "whole model" in sel:
                seconds = sel["whole model"]["projected_fsd50k_epoch_s"]
                epoch = f"{seconds / 60:,.0f} min" if seconds >= 120 else f"{seconds:,.0f} s"
            # A partial run (--run) is named beside the card: its rows stand beside each other.
            where = card if run_key in ("cpu", "gpu") else f"{card}, run \"{run_key}\""
            lines.append(
                f"| {where} | {backend} | {precision} | {batch} | {cell('pitch')} | "
                f"{cell('timbre')} | {cell('neuralogram')} | {cell('end_to_end')} | "
                f"{cell('whole model')} | {real_time} | {epoch} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
