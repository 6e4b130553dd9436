"""The fusion stage on finished runs' towers: its start against its epochs, per learning rate.

    python benchmarks/fusion_stage.py --data /tmp/sampled_fsd50k \\
        --runs /tmp/ptwork_0/train_pretrained_adapted_0,/tmp/ptwork_1/train_pretrained_adapted_1 \\
        --learning-rates 3e-3,3e-4

Each of `--runs` is a finished `keras-dae train` run on `--data` (here the rows of
benchmarks/pretraining.py, kept with its `--work`). Its front ends, towers and stream heads are
kept as the run left them; the fusion stage is done again on them for each learning rate, as
the recipe does it (`keras_dae.training`): the fusion head starts as the mean of the stream
heads' logits (`training.fusion_from_streams`), Adam at that rate, the run's batch size, seed and
number of fusion epochs, binary cross-entropy on the training chunks. The towers are frozen in
that stage, so their chunk embeddings are computed once (`keras_dae.finetune.chunk_embeddings`:
1 s chunks, hop 0.5 s) and the head is fitted on them; unlike the stage itself, the towers'
dropout is off while the head is fitted.

Reported per run: the start's val and eval mAP (clip scores, the mean of the chunks'), the
run's own fusion (its report), and for each rate the val and eval mAP after every epoch. The
table compares the ways to choose: the epoch of the highest val mAP (what the recipe did), and
the same with the start counted as an epoch. Results are merged into
benchmarks/results/fusion_stage.json (a rerun replaces a run's row).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "fusion_stage.json"


def clip_maps(embeddings: dict, targets: dict, kernel, bias) -> dict:
    """`{split: clip mAP}` of the linear head (`kernel`, `bias`) on each split's chunks."""
    from keras_dae import metrics

    scores = {}
    for split, (x, clip) in embeddings.items():
        if split == "train":
            continue
        logits = x.astype(np.float64) @ kernel + bias
        scores[split] = metrics.clip_mean_average_precision(
            targets[split], 1.0 / (1.0 + np.exp(-logits)), clip)
    return scores


def fusion_epochs(embeddings, targets, start, rate: float, epochs: int, batch_size: int,
                  seed: int) -> list[dict]:
    """The fusion head fitted from `start` (kernel, bias) at `rate`: val and eval mAP after
    each epoch."""
    import keras

    keras.utils.set_random_seed(seed)
    x, clip = embeddings["train"]
    inputs = keras.Input((x.shape[1],))
    head = keras.layers.Dense(start[0].shape[1], activation="sigmoid")
    model = keras.Model(inputs, head(inputs))
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="binary_crossentropy")
    head.kernel.assign(start[0])
    head.bias.assign(start[1])
    y = targets["train"][clip].astype(np.float32)
    rows = []
    for _ in range(epochs):
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in head.weights)
        rows.append(clip_maps(embeddings, targets, kernel, bias))
    return rows


def run_row(run: Path, data: Path, rates: list[float], work: Path) -> dict:
    from keras_dae.finetune import chunk_embeddings
    from keras_dae.models import DiverseClassifier
    from keras_dae.train_config import TrainConfig
    from keras_dae.train_run import read_splits
    from keras_dae.training import fusion_from_streams

    report = json.loads((run / "report.json").read_text())
    config = TrainConfig(**{k: v for k, v in report["config"].items()
                            if k in TrainConfig.__dataclass_fields__})
    splits = dict(zip(("train", "val", "eval"), read_splits(data), strict=True))
    model = DiverseClassifier.from_preset(run)
    embeddings = {split: chunk_embeddings(model, dataset, config,
                                          cache=work / f"{run.name}_{split}.npz",
                                          key={"run": str(run.resolve()), "split": split})
                  for split, dataset in splits.items()}
    targets = {split: dataset.targets for split, dataset in splits.items()}
    start = fusion_from_streams(model)
    evaluation = report["evaluation"]
    return {
        "run": str(run), "seed": config.seed,
        "start": clip_maps(embeddings, targets, *start),
        "recipe": {"val": evaluation["val"]["mAP"], "eval": evaluation["eval"]["mAP"],
                   "fusion_learning_rate": config.fusion_learning_rate,
                   "epochs_val": [h["val_map"] for h in report["history"]
                                  if h["stage"] == "fusion" and h["epoch"] >= 0]},
        "rates": {f"{rate:g}": fusion_epochs(embeddings, targets, start, rate,
                                             config.fusion_epochs, config.batch_size,
                                             config.seed) for rate in rates},
    }


def choices(row: dict) -> dict:
    """`{name: (val, eval)}` of each way to choose: the run's own stage (its best epoch on
    val), the same with the start counted as an epoch (the recipe's choice,
    `Trainer._score_start`), then per rate on the cached embeddings the best epoch on val,
    with and without the start counted, and the start alone."""
    def counted(best):
        return row["start"] if row["start"]["val"] > best["val"] else best

    recipe = row["recipe"]
    rate = f"{recipe['fusion_learning_rate']:g}"
    chosen = {f"the stage as run ({rate}), its best epoch": recipe,
              f"the stage as run ({rate}), the start counted": counted(recipe)}
    for rate, epochs in row["rates"].items():
        best = max(epochs, key=lambda e: e["val"])
        chosen[f"{rate} on cached embeddings, its best epoch"] = best
        chosen[f"{rate} on cached embeddings, the start counted"] = counted(best)
    chosen["the start alone (mean of the stream heads' logits)"] = row["start"]
    return {name: (c["val"], c["eval"]) for name, c in chosen.items()}


def table(result: dict) -> str:
    rows = sorted(result["rows"], key=lambda r: r["seed"])
    per_row = [choices(r) for r in rows]
    reference = next(iter(per_row[0])) if per_row else None
    lines = ["| fusion stage | val mAP | eval mAP | seeds above the first row on val |",
             "|---|---|---|---|"]
    for name in per_row[0] if per_row else ():
        val = np.array([c[name][0] for c in per_row])
        test = np.array([c[name][1] for c in per_row])
        above = sum(c[name][0] > c[reference][0] for c in per_row)
        lines.append(f"| {name} | {val.mean():.3f} | {test.mean():.3f} ± {test.std():.3f} | "
                     + ("" if name == reference else f"{above} of {len(per_row)}") + " |")
    seeds = ", ".join(str(r["seed"]) for r in rows)
    lines.append(f"\nSeeds {seeds}; the learning rates (Adam) in the rows' names; eval mAP "
                 "as mean ± standard deviation over the seeds.")
    return "\n".join(lines)


def save_run_row(path: Path, row: dict, command: str, data: Path) -> dict:
    """Merges `row` into the results file `path` (replacing the row of the same run), with
    the command, the data and the machine; returns the file's content. The file is read again
    here, so several processes may add their runs to one file one after another."""
    result = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    result["rows"] = [r for r in result["rows"] if r["run"] != row["run"]] + [row]
    result.update(command=command, data=str(data),
                  machine={"cpu": platform.processor() or platform.machine(),
                           "cores": len(os.sched_getaffinity(0))})
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--runs", required=True, help="finished run directories, by commas")
    parser.add_argument("--learning-rates", default="3e-3,3e-4")
    parser.add_argument("--work", type=Path, default=Path("/tmp/keras_dae_fusion_stage"),
                        help="the cached chunk embeddings")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import keras

    rates = [float(r) for r in args.learning_rates.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    for run in (Path(r) for r in args.runs.split(",")):
        began = time.time()
        row = run_row(run, args.data, rates, args.work)
        row.update(backend=keras.backend.backend(), seconds=round(time.time() - began, 1))
        result = save_run_row(args.results, row, "python benchmarks/fusion_stage.py --data "
                              f"{args.data} --runs RUNS --learning-rates {args.learning_rates}",
                              args.data)
        print(f"{run}: start val {row['start']['val']:.3f}; " + "; ".join(
            f"{rate}: val " + " ".join(f"{e['val']:.3f}" for e in epochs)
            for rate, epochs in row["rates"].items()), flush=True)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
