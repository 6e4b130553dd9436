"""What the spectral-contrast floor costs and buys: timbre accuracy over seeds, export parity.

    python benchmarks/contrast_floor.py --data /tmp/sampled_fsd50k --floors 1e-5,1e-4 --seeds 0,1,2,3
    python benchmarks/contrast_floor.py --parity --model diverse_sampled15 --data /tmp/sampled_fsd50k \
        --floors 1e-5,3e-5,5e-5,1e-4

`SpectralDescriptors` raises the magnitudes entering spectral contrast to `contrast_floor`
times each frame's peak. Below the floor sit valleys that only float32 rounding of the DFT
decides, and that rounding differs between runtimes (TFLite's RFFT, onnxruntime's matrix
product, Keras' FFT): the lower the floor, the more an export's probabilities differ from the
Keras model's. A higher floor removes information from the timbre stream. Both are measured:

- accuracy (default): the timbre stream alone (MFCC + spectral descriptors, the preset's
  tower, with the featurizer's roll-off setting, recorded) trained from scratch for 8
  epochs per floor and seed on the dataset's train split,
  its best-on-val epoch scored on val and eval (clip mAP). Seeds vary the initial weights
  and the batch order; the spread over seeds is the noise the floors are compared against.
  The timbre features are cached per floor under `--cache`, so a run takes ~3 min on 2 cores.
- `--parity`: a trained model run with every floor in `--floors` (its weights unchanged),
  once with spectra by FFT and once by the matrix-product DFT that ONNX uses, over every 1 s
  window of the eval split: the largest difference in probabilities between the two, and
  how many windows exceed 1e-4. (This emulates, inside Keras, the runtime differences that
  `benchmarks/export.py` measures on the real files.)

Results are merged into benchmarks/results/contrast_floor.json (`--table` prints them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import one_stream  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "contrast_floor.json"


def spectral_descriptors(model):
    """The model's (first) `SpectralDescriptors` front end."""
    from keras_dae import layers

    return one_stream.frontend_of(model, layers.SpectralDescriptors)


def train_timbre(data: Path, floor: float, seed: int, epochs: int, cache: Path) -> dict:
    """Trains the timbre tower alone with the contrast floor at `floor`; returns its val and
    eval mAP."""
    scores, model = one_stream.train_stream(
        data, "timbre", {"SpectralDescriptors": {"contrast_floor": floor}}, seed, epochs,
        cache / f"floor_{floor:g}")
    return {"floor": floor, **scores,
            "interpolate_rolloff": spectral_descriptors(model).interpolate_rolloff}


def with_floor(model, floor: float, dft_mode: str):
    """A copy of `model` whose spectral contrast is floored at `floor` and whose spectra use
    `dft_mode` (YIN keeps its matrix product, as in float32 exports)."""
    from keras_dae.export.export_ready import with_dft_mode

    return one_stream.with_frontend_config(
        model, {"SpectralDescriptors": {"contrast_floor": floor}},
        lambda config: with_dft_mode(config, dft_mode, "matmul"))


def parity(model_source: str, data: Path, floors) -> list[dict]:
    """FFT vs matrix-product DFT, per floor, over every eval window."""
    import numpy as np
    from export import eval_windows

    from keras_dae import zoo

    model = zoo.load(model_source)
    descriptors = spectral_descriptors(model)
    windows = eval_windows(data, "eval", model.sample_rate, model.class_names)[0]
    rows = []
    for floor in floors:
        out = {mode: with_floor(model, floor, mode).predict(windows, batch_size=64, verbose=0)
               for mode in ("fft", "matmul")}
        keys = [k for k in out["fft"] if k != "embedding"]
        per_window = np.max([np.max(np.abs(out["fft"][k] - out["matmul"][k]), axis=-1)
                             for k in keys], axis=0)
        rows.append({"floor": floor, "model": model_source,
                     "trained_floor": descriptors.contrast_floor,
                     "interpolate_rolloff": descriptors.interpolate_rolloff,
                     "windows": int(len(windows)),
                     "max_abs_diff": float(per_window.max()),
                     "windows_over_1e-4": int((per_window > 1e-4).sum())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(results: dict) -> str:
    import numpy as np

    lines = ["| contrast floor | timbre eval mAP per seed | mean ± sd | val mean |",
             "|---|---|---|---|"]
    by_floor = {}
    for r in results.get("accuracy", []):
        by_floor.setdefault(r["floor"], []).append(r)
    for floor in sorted(by_floor):
        lines.append(f"| {floor:g} ({-20 * np.log10(floor):.0f} dB) | "
                     f"{one_stream.accuracy_cells(by_floor[floor])} |")
    if results.get("parity"):
        lines += ["", "| model trained with floor, roll-off | run with floor | FFT vs "
                  "matrix-product DFT, max abs diff | windows over 1e-4 |", "|---|---|---|---|"]
        for r in sorted(results["parity"], key=lambda r: (r["trained_floor"],
                                                          r["interpolate_rolloff"], r["floor"])):
            rolloff = "interpolated" if r["interpolate_rolloff"] else "bin centre"
            lines.append(f"| {r['trained_floor']:g}, {rolloff} | {r['floor']:g} | "
                         f"{r['max_abs_diff']:.2g} | {r['windows_over_1e-4']} of {r['windows']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = one_stream.parser(__doc__.split("\n")[0], "--floors", "1e-5,1e-4",
                             "comma-separated contrast floors",
                             "keras_dae_contrast_floor").parse_args(argv)
    return one_stream.run(
        args, RESULTS, train_timbre, parity, table,
        accuracy_id=lambda r: (r["floor"], r["seed"], r["epochs"]),
        parity_id=lambda r: (r["trained_floor"], r["interpolate_rolloff"], r["floor"]))


if __name__ == "__main__":
    raise SystemExit(main())
