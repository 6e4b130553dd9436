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


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from keras_dae.data import read_fsd50k
    from keras_dae.metrics import mean_average_precision

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.time()
    splits = {s: featurize(read_fsd50k(args.data, s)) for s in ("train", "val", "eval")}
    scaler = StandardScaler().fit(splits["train"][0])
    x = {s: np.nan_to_num(scaler.transform(v[0])) for s, v in splits.items()}
    y = {s: v[1] for s, v in splits.items()}
    best = None
    for c in (0.01, 0.03, 0.1, 0.3, 1.0):
        clf = OneVsRestClassifier(LogisticRegression(C=c, max_iter=3000)).fit(x["train"], y["train"])
        val_map = mean_average_precision(y["val"], clf.predict_proba(x["val"]))
        print(f"C={c}: val mAP {val_map:.4f}")
        if best is None or val_map > best[1]:
            best = (c, val_map, clf)
    c, val_map, clf = best
    eval_map = mean_average_precision(y["eval"], clf.predict_proba(x["eval"]))
    result = {
        "command": f"python benchmarks/classical_baseline.py --data {args.data}",
        "features": "CQT dB (84), f0 + periodicity (2), MFCC (20), spectral descriptors (11); "
                    "clip mean, std, p10, p50, p90",
        "classifier": "one-vs-rest logistic regression, standardised features",
        "C": c, "val_mAP": val_map, "eval_mAP": eval_map,
        "n_clips": {s: int(len(v)) for s, v in y.items()},
        "seconds": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"classical baseline: C={c}, val mAP {val_map:.4f}, eval mAP {eval_map:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
