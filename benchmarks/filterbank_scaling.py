"""What the learned filterbank's kernel scaling, step size and number of filters do to the learned streams.

    python benchmarks/filterbank_scaling.py --stream end_to_end --kernels scaled,unscaled --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream neuralogram --kernels scaled,unscaled --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream end_to_end --kernels frozen,slower,faster --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream end_to_end --kernels filters128 --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream neuralogram --kernels scaled,filters128 --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream end_to_end --kernels constant_q --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream end_to_end --kernels cepstra20 --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream end_to_end --kernels pooled4 --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream neuralogram --kernels relative --seeds 0,1,2
    python benchmarks/filterbank_scaling.py --stream end_to_end --kernels relative --seeds 0,1,2

`LearnedFilterbank` (the end-to-end stream's front end, and the first layer of the
Neuralogram's window network) starts from Gabor filters whose peaks are 3e-3 to 2.4e-2. Adam
moves every weight by about its learning rate per step, so with the kernel stored as is
(`scaled_kernel=False`) a few hundred steps at 1e-3 bury the mel-like initialisation under
noise; stored over each filter's peak (`scaled_kernel=True`, the default), a step moves each
filter by that share of its size. `learning_rate_scale` multiplies that step further (the
kernel stored over it): `slower` (x0.1), `faster` (x10), `frozen` (0: the Gabor filters as
initialised, a fixed mel-like front end with the same tower); `filters128` has twice the
default's filters (finer mel spacing, the same 25 ms windows; in the Neuralogram, its window
network sized for them); `constant_q` starts from log-spaced filters 128 ms long, each as
narrow as its spacing (`initializer="constant_q"`: a CQT-like start, 4.7 Hz apart at 60 Hz
where the mel start's are 45 Hz apart); `cepstra20` returns the first 20 DCT coefficients of
the default filters' log energies (`n_cepstra=20`: cepstra of learned filters, as `MFCC`
takes 20 of 64 log-mel bands); `pooled4` averages each frame's energies over 9 responses 40
samples apart under a Hann window (`pooling=4`: LEAF's lowpass pooling, so a wide band's energy
covers the hop instead of one instant of it); `relative` divides the energies by the
input's mean energy before the log (`relative_level=True`: the end-to-end stream's over each
1 s chunk; the Neuralogram's window network sees one 25 ms window, so over that window). Each setting trains the stream alone from scratch for 8 epochs per
seed (`one_stream.train_stream`: the preset's tower, best-on-val epoch, clip mAP on val and
eval), and records how far the trained filters ended from their initialisation (Frobenius
distance over the initial norm, per filterbank).

Results are merged into benchmarks/results/filterbank_scaling.json (`--table` prints them).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import one_stream  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "filterbank_scaling.json"
# Each setting's LearnedFilterbank config.
KERNELS = {"scaled": {"scaled_kernel": True}, "unscaled": {"scaled_kernel": False},
           "slower": {"scaled_kernel": True, "learning_rate_scale": 0.1},
           "faster": {"scaled_kernel": True, "learning_rate_scale": 10.0},
           "frozen": {"scaled_kernel": True, "learning_rate_scale": 0.0},
           "filters128": {"scaled_kernel": True, "n_filters": 128},
           "constant_q": {"scaled_kernel": True, "initializer": "constant_q", "win_length": 2048},
           "cepstra20": {"scaled_kernel": True, "n_cepstra": 20},
           "pooled4": {"scaled_kernel": True, "pooling": 4},
           "relative": {"scaled_kernel": True, "relative_level": True}}
STREAMS = ("end_to_end", "neuralogram")


def kernel(value: str) -> str:
    if value not in KERNELS:
        raise ValueError(f"--kernels takes {', '.join(KERNELS)}, got {value!r}")
    return value


def filter_drift(model) -> list[float]:
    """Each learned filterbank's distance from its Gabor initialisation, over its norm."""
    import keras
    import numpy as np

    from keras_dae.layers.learned_filterbank import LearnedFilterbank

    drift = []
    for frontend in (f for fs in model.featurizer.streams.values() for f in fs):
        network = getattr(frontend, "embedding_network", None)  # the Neuralogram's
        for layer in [frontend, *(network.layers if network is not None else [])]:
            if not isinstance(layer, LearnedFilterbank):
                continue
            start = layer.initial_filters()
            if start is None:  # a random start: no initialisation to measure from
                continue
            now = keras.ops.convert_to_numpy(layer.filters())
            drift.append(round(float(np.linalg.norm(now - start) / np.linalg.norm(start)),
                               3))
    return drift


def trainer(stream: str):
    def train(data: Path, setting: str, seed: int, epochs: int, cache: Path) -> dict:
        scores, model = one_stream.train_stream(
            data, stream, {"LearnedFilterbank": KERNELS[setting]}, seed,
            epochs, cache / f"{stream}_{setting}")
        return {"stream": stream, "kernel": setting, **scores,
                "filter_drift": filter_drift(model)}

    return train


def table(results: dict) -> str:
    import numpy as np

    lines = ["| stream | kernel (step size, filters) | eval mAP per seed | mean ± sd | val mean | filters' "
             "distance from init / init norm |", "|---|---|---|---|---|---|"]
    groups = one_stream.by_stream_and(results, "kernel")
    for (stream, setting), rows in sorted(groups.items(),
                                          key=lambda kv: (kv[0][0], list(KERNELS).index(kv[0][1]))):
        drift = np.mean([np.mean(r["filter_drift"]) for r in rows])
        config = KERNELS[setting]
        lines.append(f"| {stream} | {setting} ({config.get('learning_rate_scale', 1.0):g}, "
                     f"{config.get('n_filters', 64)}) | {one_stream.accuracy_cells(rows)} | "
                     f"{drift:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return one_stream.stream_main(
        argv, __doc__.split("\n")[0], ("--kernels", "scaled,unscaled",
                                       f"comma-separated: {', '.join(KERNELS)}",
                                       "keras_dae_filterbank"),
        STREAMS, RESULTS, trainer, table, "kernel",
        "every setting applies the same filters at first; nothing to compare", setting=kernel)


if __name__ == "__main__":
    raise SystemExit(main())
