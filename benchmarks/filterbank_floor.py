"""What the learned filterbank's log floor costs the learned streams: accuracy over seeds.

    python benchmarks/filterbank_floor.py --stream end_to_end --floors 1e-6,1e-10 --seeds 0,1,2
    python benchmarks/filterbank_floor.py --stream neuralogram --floors 1e-6,1e-10 --seeds 0,1,2

`LearnedFilterbank` returns `log(power + eps)`. Its Gabor filters give a full-scale sine a
power near 0.05 and most of a real clip far less: on the sampled dataset's dev clips the
median is about e^-17, so a floor of 1e-6 (e^-13.8) flattens three quarters of the values to
one number, and a stream sees little more than the loudest bands. Each floor trains the
stream alone from scratch for 8 epochs per seed (`one_stream.train_stream`: the preset's
tower as Keras draws it, best-on-val epoch, clip mAP on val and eval; the Neuralogram's
window network's filterbank takes the floor too), and records the share of the end-to-end
front end's outputs within one nat of the floor on the first second of 50 val clips.

Results are merged into benchmarks/results/filterbank_floor.json (`--table` prints them).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import one_stream  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "filterbank_floor.json"
STREAMS = ("end_to_end", "neuralogram")


def floored_share(model, data: Path, eps: float, clips: int = 50) -> float:
    """Share of the (first) learned filterbank's outputs within one nat of `log(eps)`, over
    the first second of `clips` val clips, as the trained model computes them."""
    import keras
    import numpy as np

    from keras_dae.audio import load_audio
    from keras_dae.data import read_split
    from keras_dae.layers import LearnedFilterbank

    frontend = one_stream.frontend_of(model, LearnedFilterbank)
    shares = []
    for path in read_split(data, "val", "fsd50k").paths[:clips]:
        waveform = load_audio(path, frontend.sample_rate)[: frontend.sample_rate]
        outputs = keras.ops.convert_to_numpy(frontend(waveform[None]))
        shares.append(np.mean(outputs < np.log(eps) + 1))
    return round(float(np.mean(shares)), 3)


def trainer(stream: str):
    def train(data: Path, eps: float, seed: int, epochs: int, cache: Path) -> dict:
        scores, model = one_stream.train_stream(
            data, stream, {"LearnedFilterbank": {"eps": eps}}, seed, epochs,
            cache / f"{stream}_{eps:g}")
        share = (floored_share(model, data, eps) if stream == "end_to_end" else None)
        return {"stream": stream, "floor": eps, **scores, "floored_share": share}

    return train


def table(results: dict) -> str:
    lines = ["| stream | floor (eps) | eval mAP per seed | mean ± sd | val mean | end-to-end "
             "outputs within 1 nat of the floor |", "|---|---|---|---|---|---|"]
    groups = one_stream.by_stream_and(results, "floor")
    for (stream, eps), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        shares = [r["floored_share"] for r in rows if r.get("floored_share") is not None]
        lines.append(f"| {stream} | {eps:g} | {one_stream.accuracy_cells(rows)} | "
                     f"{f'{sum(shares) / len(shares):.2f}' if shares else '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return one_stream.stream_main(
        argv, __doc__.split("\n")[0], ("--floors", "1e-6,1e-10", "comma-separated eps values",
                                       "keras_dae_filterbank_floor"),
        STREAMS, RESULTS, trainer, table, "floor",
        "the export tests and benchmarks/export.py measure the default floor's parity")


if __name__ == "__main__":
    raise SystemExit(main())
