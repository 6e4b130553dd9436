"""A strong classical baseline on an FSD50K-layout dataset: clip statistics of the same
handcrafted features the model uses, then one-vs-rest logistic regression.

    python benchmarks/classical_baseline.py --data /path/to/FSD50K_layout

Per clip, the pitch stream's features (CQT in dB, f0 and periodicity) and the timbre
stream's (MFCC, spectral descriptors) are computed with keras-dae's layers (equal to
librosa's, see README) over the whole clip; each feature is summarised by its mean, standard
deviation and 10th/50th/90th percentiles over time. Features are standardised on the train
split; the regularisation C is chosen on val mAP; eval mAP is reported. Writes
benchmarks/results/classical_baseline.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "classical_baseline.json"


def clip_statistics(features: np.ndarray) -> np.ndarray:
    """`(frames, d)` -> `(5 * d,)`: mean, std, 10th, 50th and 90th percentiles over time."""
    p10, p50, p90 = np.percentile(features, [10, 50, 90], axis=0)
    return np.concatenate([features.mean(0), features.std(0), p10, p50, p90])


def featurize(dataset, sample_rate=16000):
    from keras import ops

    from keras_dae.audio import AudioDecodeError, load_audio
    from keras_dae.models import default_stream_frontends

    # Exactly the model's pitch and timbre front ends.
    streams = default_stream_frontends(sample_rate)
    frontends = streams["pitch"] + streams["timbre"]
    rows, kept = [], []
    for i, path in enumerate(dataset.paths):
        try:
            y = load_audio(path, sample_rate)[None]
        except AudioDecodeError as error:
            print(f"skipping {error}")
            continue
        stats = [clip_statistics(np.asarray(ops.convert_to_numpy(f(y)))[0]) for f in frontends]
        rows.append(np.concatenate(stats))
        kept.append(i)
    return np.stack(rows), dataset.targets[kept]


def fit_and_score(train, val, test, c_grid=(0.01, 0.03, 0.1, 0.3, 1.0)) -> dict:
    """Standardises on `train`, chooses C on `val` mAP, scores `test`: each split a
    `(features, targets)` pair from `featurize`. Returns `{"C", "val_mAP", "eval_mAP"}`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from keras_dae.metrics import mean_average_precision

    scaler = StandardScaler().fit(train[0])
    x = {s: np.nan_to_num(scaler.transform(v[0])) for s, v in
         (("train", train), ("val", val), ("eval", test))}
    y = {"train": train[1], "val": val[1], "eval": test[1]}
    best = None
    for c in c_grid:
        clf = OneVsRestClassifier(LogisticRegression(C=c, max_iter=3000)).fit(x["train"], y["train"])
        val_map = mean_average_precision(y["val"], clf.predict_proba(x["val"]))
        print(f"C={c}: val mAP {val_map:.4f}")
        if best is None or val_map > best[1]:
            best = (c, val_map, clf)
    c, val_map, clf = best
    return {"C": c, "val_mAP": val_map,
            "eval_mAP": mean_average_precision(y["eval"], clf.predict_proba(x["eval"]))}


def main() -> None:
    from keras_dae.data import read_fsd50k

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.time()
    splits = {s: featurize(read_fsd50k(args.data, s)) for s in ("train", "val", "eval")}
    scores = fit_and_score(splits["train"], splits["val"], splits["eval"])
    c, val_map, eval_map = scores["C"], scores["val_mAP"], scores["eval_mAP"]
    result = {
        "command": f"python benchmarks/classical_baseline.py --data {args.data}",
        "features": "CQT dB (84), f0 + periodicity (2), MFCC (20), spectral descriptors (11); "
                    "clip mean, std, p10, p50, p90",
        "classifier": "one-vs-rest logistic regression, standardised features",
        "C": c, "val_mAP": val_map, "eval_mAP": eval_map,
        "n_clips": {s: int(len(v[1])) for s, v in splits.items()},
        "seconds": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"classical baseline: C={c}, val mAP {val_map:.4f}, eval mAP {eval_map:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
