"""Front-end throughput: keras-dae's in-graph layers against librosa, in the same run.

    python benchmarks/frontends.py            # all installed backends -> results/frontends.json
    python benchmarks/frontends.py --table    # print README's table from the JSON

Throughput is audio-seconds processed per wall-clock second, for two workloads: 64 clips of
1 s and 8 clips of 10 s, at 16 kHz. Our layers run batched through `predict_on_batch` (jit
compiled on TensorFlow and JAX, eager on PyTorch). librosa runs on the same clips twice, one
clip at a time and as one batched call (librosa functions accept `(batch, samples)`); the
ratio is taken against the faster of the two. Each backend runs in its own process (Keras
fixes the backend at import); librosa runs in the parent process. Timings are medians over
repeated calls after warm-up. The machine's other load affects both sides of each ratio.
"""

from __future__ import annotations

import argparse
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
WORKLOADS = {"64x1s": (64, 1.0), "8x10s": (8, 10.0)}
RESULTS = Path(__file__).parent / "results" / "frontends.json"

# Each front end's configuration, shared by our layer and its librosa equivalent.
CONFIGS = {
    "LogMelSpectrogram": dict(n_fft=512, hop_length=160, n_mels=64),
    "ConstantQTransform": dict(hop_length=256, fmin=32.70319566257483, n_bins=84, bins_per_octave=12),
    "PitchTracker": dict(frame_length=1024, hop_length=256, fmin=65.40639132514966, fmax=2093.004522404789),
    "MFCC": dict(n_fft=512, hop_length=160, n_mels=128, n_mfcc=20),
    "SpectralDescriptors": dict(n_fft=512, hop_length=160),
    "LearnedFilterbank": dict(win_length=400, hop_length=160, n_filters=64),
    "Neuralogram": dict(win_length=400, hop_length=160),
}
# What each layer is measured against (no librosa twin for the learned ones: the nearest
# librosa computation with the same window and hop, a mel spectrogram, stands in).
REFERENCE = {
    "LogMelSpectrogram": "librosa.feature.melspectrogram + power_to_db",
    "ConstantQTransform": "librosa.cqt (magnitude)",
    "PitchTracker": "librosa.yin",
    "MFCC": "librosa.feature.mfcc",
    "SpectralDescriptors": "librosa.feature centroid+bandwidth+rolloff+flatness+contrast (one STFT)",
    "LearnedFilterbank": "librosa mel spectrogram, same window/hop (no librosa twin)",
    "Neuralogram": "librosa mel spectrogram, same window/hop (no librosa twin)",
}


def make_batch(n_clips: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Noise plus harmonic tones: signals every front end does real work on."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(80, 800, size=(n_clips, 1))
    tones = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5))
    return (0.2 * tones + 0.05 * rng.standard_normal((n_clips, len(t)))).astype(np.float32)


def median_seconds(fn, min_time: float = 1.0, min_reps: int = 3, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def librosa_function(name: str):
    import librosa

    c = CONFIGS[name]
    if name == "LogMelSpectrogram":
        return lambda y: librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SR, **c))
    if name == "ConstantQTransform":
        return lambda y: np.abs(librosa.cqt(y, sr=SR, **c))
    if name == "PitchTracker":
        return lambda y: librosa.yin(y, sr=SR, **c)
    if name == "MFCC":
        return lambda y: librosa.feature.mfcc(y=y, sr=SR, **c)
    if name == "SpectralDescriptors":

        def descriptors(y):
            S = np.abs(librosa.stft(y, **c))
            return [
                librosa.feature.spectral_centroid(S=S, sr=SR),
                librosa.feature.spectral_bandwidth(S=S, sr=SR),
                librosa.feature.spectral_rolloff(S=S, sr=SR),
                librosa.feature.spectral_flatness(S=S),
                librosa.feature.spectral_contrast(S=S, sr=SR, fmin=200.0, n_bands=5),
            ]

        return descriptors
    win = c["win_length"]
    return lambda y: librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=y, sr=SR, n_fft=512, win_length=win, hop_length=c["hop_length"], n_mels=64
        )
    )


def measure_librosa() -> dict:
    out = {}
    for workload, (n, seconds) in WORKLOADS.items():
        batch = make_batch(n, seconds)
        for name in CONFIGS:
            fn = librosa_function(name)
            loop = median_seconds(lambda fn=fn, batch=batch: [fn(y) for y in batch])
            batched = median_seconds(lambda fn=fn, batch=batch: fn(batch))
            audio = n * seconds
            out[f"{name}/{workload}"] = {
                "librosa_loop": audio / loop,
                "librosa_batched": audio / batched,
            }
            print(f"librosa {name:<20} {workload}: loop {audio / loop:9.0f}  batched "
                  f"{audio / batched:9.0f} audio-s/s", flush=True)
    return out


def build_layer(name: str):
    from keras_dae import layers

    c = dict(CONFIGS[name])
    if name == "MFCC":
        return layers.MFCC(sample_rate=SR, **c)
    if name == "SpectralDescriptors":
        return layers.SpectralDescriptors(sample_rate=SR, **c)
    if name == "PitchTracker":
        return layers.PitchTracker(sample_rate=SR, **c)
    return getattr(layers, name)(sample_rate=SR, **c)


def worker() -> None:
    """Measures our layers on the backend in KERAS_BACKEND; prints one JSON line."""
    import keras

    backend = keras.backend.backend()
    out = {}
    for workload, (n, seconds) in WORKLOADS.items():
        batch = make_batch(n, seconds)
        for name in CONFIGS:
            model = keras.Sequential([keras.Input((batch.shape[1],)), build_layer(name)])
            model.compile(jit_compile=backend != "torch")
            seconds_per_call = median_seconds(
                lambda model=model, batch=batch: model.predict_on_batch(batch)
            )
            out[f"{name}/{workload}"] = n * seconds / seconds_per_call
            print(f"{backend:<10} {name:<20} {workload}: {n * seconds / seconds_per_call:9.0f} "
                  "audio-s/s", file=sys.stderr, flush=True)
    print(json.dumps(out))


def run_backend(backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True
    )
    sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
    if proc.returncode:
        raise RuntimeError(f"benchmark worker for {backend} failed")
    print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "", flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def installed_backends() -> list[str]:
    import importlib.util

    return [b for b in ("tensorflow", "jax", "torch") if importlib.util.find_spec(b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backends", default=",".join(installed_backends()))
    parser.add_argument("--table", action="store_true", help="print README's table and exit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    if args.table:
        return print(markdown_table(json.loads(args.out.read_text())))
    reference = measure_librosa()
    ours = {backend: run_backend(backend) for backend in args.backends.split(",")}
    rows = []
    for key, ref in reference.items():
        name, workload = key.split("/")
        best_ref = max(ref.values())
        for backend, values in ours.items():
            rows.append({
                "frontend": name, "workload": workload, "backend": backend,
                "ours_audio_s_per_s": values[key], **ref,
                "ratio_vs_best_librosa": values[key] / best_ref,
                "reference": REFERENCE[name],
            })
    result = {
        "command": "python benchmarks/frontends.py",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "configs": CONFIGS,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown_table(result))
    print(f"wrote {args.out}")


def markdown_table(result: dict) -> str:
    """Per front end and workload: librosa, then each backend's throughput and its ratios
    to librosa one clip at a time and batched."""
    rows = result["rows"]
    backends = sorted({r["backend"] for r in rows})
    head = "| front end | clips | librosa loop / batched (audio-s/s) | " + " | ".join(
        f"{b}: audio-s/s (x loop, x batched)" for b in backends) + " |"
    lines = [head, "|" + "---|" * (3 + len(backends))]
    keys = []
    for r in rows:
        if (r["frontend"], r["workload"]) not in keys:
            keys.append((r["frontend"], r["workload"]))
    for name, workload in keys:
        sel = {r["backend"]: r for r in rows if r["frontend"] == name and r["workload"] == workload}
        any_row = next(iter(sel.values()))
        cells = [f"{sel[b]['ours_audio_s_per_s']:,.0f} "
                 f"({sel[b]['ours_audio_s_per_s'] / sel[b]['librosa_loop']:.1f}x, "
                 f"{sel[b]['ours_audio_s_per_s'] / sel[b]['librosa_batched']:.1f}x)"
                 for b in backends]
        lines.append(f"| {name} | {workload} | {any_row['librosa_loop']:,.0f} / "
                     f"{any_row['librosa_batched']:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
