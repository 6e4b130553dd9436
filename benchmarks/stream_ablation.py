"""Which streams does the fusion need? A linear classifier on every subset of a trained
model's stream embeddings.

    python benchmarks/stream_ablation.py --model /tmp/shipped_run/preset --data /tmp/sampled_fsd50k

The paper's claim is that fusing handcrafted and learned streams beats each stream alone.
This measures it on a trained model without retraining any tower: every clip's 64-d
embedding per stream is the mean of its 1 s chunks' embeddings (0.5 s hop); for each of the
15 non-empty subsets of the four streams, a one-vs-rest logistic regression on the
concatenated, standardised embeddings of the train split is fitted (C chosen on val mAP),
and its eval mAP reported. All subsets get the same classifier and the same clips, so the
differences come from the streams alone. Writes benchmarks/results/stream_ablation.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "stream_ablation.json"
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


def clip_embeddings(model, dataset, batch_size=64):
    """`{stream: (n_clips, d)}` mean chunk embeddings, and the indices of the clips kept."""
    import keras

    from keras_dae.data import iterate_clips

    streams = model.stream_names
    d = model.backbone.towers[streams[0]].d_model
    embedder = model.backbone
    pooled = {s: [] for s in streams}
    kept = []
    for i, chunks in iterate_clips(dataset, model.sample_rate):
        parts = {s: [] for s in streams}
        for start in range(0, len(chunks), batch_size):
            features = model.featurizer(chunks[start:start + batch_size])
            out = embedder(features, training=False)
            for s in streams:
                parts[s].append(keras.ops.convert_to_numpy(out[s]).reshape(-1, d))
        for s in streams:
            pooled[s].append(np.concatenate(parts[s]).mean(axis=0))
        kept.append(i)
    return {s: np.stack(v) for s, v in pooled.items()}, np.array(kept)


def fit_subset(x, y, c_grid=C_GRID):
    """Best-on-val one-vs-rest logistic regression: returns (val mAP, eval mAP, C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from keras_dae.metrics import mean_average_precision

    scaler = StandardScaler().fit(x["train"])
    best = None
    for c in c_grid:
        clf = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000))
        clf.fit(scaler.transform(x["train"]), y["train"])
        val = mean_average_precision(y["val"], clf.predict_proba(scaler.transform(x["val"])))
        if best is None or val > best[0]:
            best = (val, clf, c)
    val, clf, c = best
    test = mean_average_precision(y["eval"], clf.predict_proba(scaler.transform(x["eval"])))
    return float(val), float(test), c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="preset name or directory, or run dir")
    parser.add_argument("--data", required=True, help="FSD50K-layout dataset directory")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import keras

    from keras_dae import zoo
    from keras_dae.data import read_fsd50k

    model_path = zoo.resolve_preset(args.model)[1]
    model = zoo.load(model_path)
    started = time.time()
    train = read_fsd50k(args.data, "train")
    splits = {"train": train, "val": read_fsd50k(args.data, "val").with_labels(train.labels),
              "eval": read_fsd50k(args.data, "eval").with_labels(train.labels)}
    embeddings, targets = {}, {}
    for split, dataset in splits.items():
        embeddings[split], kept = clip_embeddings(model, dataset)
        targets[split] = dataset.targets[kept]
        print(f"{split}: {len(kept)} clips embedded", flush=True)
    streams = model.stream_names
    rows = []
    for size in range(1, len(streams) + 1):
        for subset in itertools.combinations(streams, size):
            x = {split: np.concatenate([embeddings[split][s] for s in subset], axis=1)
                 for split in splits}
            val, test, c = fit_subset(x, targets)
            rows.append({"streams": list(subset), "val_mAP": val, "eval_mAP": test, "C": c})
            print(f"{' + '.join(subset):<45} val {val:.3f}  eval {test:.3f}  (C={c})",
                  flush=True)
    result = {
        "command": f"python benchmarks/stream_ablation.py --model {args.model} "
                   f"--data {args.data}",
        "model": str(model_path),
        "backend": keras.backend.backend(),
        "classifier": "one-vs-rest logistic regression on standardised mean chunk embeddings, "
                      f"C in {list(C_GRID)} chosen on val mAP",
        "n_clips": {split: int(len(targets[split])) for split in splits},
        "seconds": round(time.time() - started, 1),
        "subsets": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
