"""The joint stage on finished runs: everything trained together from the fusion stage's choice.

    python benchmarks/joint_stage.py --data /tmp/sampled_fsd50k \\
        --runs /tmp/ptwork_0/train_pretrained_adapted_0,/tmp/ptwork_1/train_pretrained_adapted_1 \\
        --epochs 4 --learning-rate 1e-4

Each of `--runs` is a finished `keras-dae train` run on `--data` (here the rows of
benchmarks/pretraining.py, kept with its `--work`), trained without the joint stage. Its front
ends, towers and heads are kept as the fusion stage left them, with the start counted (a run
that chose among the fusion epochs alone has the start scored on validation here,
`fusion_choice`). Then the recipe's joint stage (`keras_dae.training`, stage 3) runs as
`keras-dae train --joint-epochs` would run it: the front ends, towers and all heads trained
together on the fused and the four streams' binary cross-entropy, Adam at `--learning-rate`,
the run's own batch size, seed, masking and patience, the start scored as epoch -1 and kept
unless an epoch beats it on validation.

Reported per run: val and eval mAP (fused and per stream) of the start and after every epoch,
and the stage's choice. Results are merged into benchmarks/results/joint_stage.json (a rerun
replaces a run's row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "joint_stage.json"


def fusion_choice(model, report: dict, val, config) -> str:
    """Sets the model's fusion head to the fusion stage's choice with its start counted (what
    the recipe keeps, `Trainer._score_start`) and says which it is. A run that scored the
    start already holds that choice; in an older run, which chose among the stage's epochs
    alone, the start (the mean of the stream heads' logits) is scored on `val` here and set
    when it beats the run's best epoch."""
    import keras

    from keras_dae.training import evaluate, init_fusion_from_streams

    fusion = [h for h in report["history"] if h["stage"] == "fusion"]
    if any(h["epoch"] == -1 for h in fusion):
        return "the run's own (the start counted)"
    best = max(h["val_map"] for h in fusion)
    kept = [keras.ops.convert_to_numpy(w) for w in model.fusion_head.weights]
    init_fusion_from_streams(model)
    start = evaluate(model, val, chunk_seconds=config.chunk_seconds,
                     hop_seconds=config.hop_seconds)["mAP"]
    if start > best:
        return f"the start, scored here (val {start:.3f} against the best epoch's {best:.3f})"
    for w, value in zip(model.fusion_head.weights, kept, strict=True):
        w.assign(value)
    return f"the run's best epoch (val {best:.3f} against the start's {start:.3f}, scored here)"


def run_row(run: Path, data: Path, epochs: int, rate: float, work: Path) -> dict:
    from keras_dae.models import DiverseClassifier
    from keras_dae.train_config import TrainConfig
    from keras_dae.train_run import read_splits
    from keras_dae.training import Trainer, evaluate

    report = json.loads((run / "report.json").read_text())
    config = TrainConfig(**{k: v for k, v in report["config"].items()
                            if k in TrainConfig.__dataclass_fields__})
    config = dataclasses.replace(config, tower_epochs=0, fusion_epochs=0, joint_epochs=epochs,
                                 joint_learning_rate=rate)
    train, val, test = read_splits(data)
    model = DiverseClassifier.from_preset(run)
    fusion = fusion_choice(model, report, val, config)
    scores = []  # eval after the start and each epoch, in the order of the stage's history

    def on_eval():
        r = evaluate(model, test, chunk_seconds=config.chunk_seconds,
                     hop_seconds=config.hop_seconds)
        scores.append({"eval": r["mAP"], "eval_streams": r["streams"]})

    class EvaluatingTrainer(Trainer):
        def _score_start(self, stage):
            super()._score_start(stage)
            on_eval()

        def _end_of_epoch(self, stage, epoch, logs):
            super()._end_of_epoch(stage, epoch, logs)
            on_eval()

    trainer = EvaluatingTrainer(model, train, val, work / run.name, config)
    trainer.state["normalized"] = True  # the run's towers keep their statistics
    state = trainer.run(overwrite=True)
    history = [h for h in state["history"] if h["stage"] == "joint"]
    epochs_rows = [{"epoch": h["epoch"], "loss": h["loss"], "val": h["val_map"],
                    "val_streams": h["val_streams"], **s}
                   for h, s in zip(history, scores, strict=True)]
    chosen = max(epochs_rows, key=lambda e: e["val"])  # the first of equals, as the stage does
    return {"run": str(run), "seed": config.seed, "learning_rate": rate, "epochs": epochs,
            "fusion": fusion, "rows": epochs_rows, "choice": chosen["epoch"]}


def init_of(run: str) -> str:
    """The initialisation a run of benchmarks/pretraining.py started from, from its name
    (`train_{init}_{seed}`): "random", "pretrained_adapted", ..."""
    name = Path(run).name
    parts = name.split("_")
    return "_".join(parts[1:-1]) if len(parts) > 2 and parts[-1].isdigit() else name


def table(result: dict) -> str:
    import numpy as np

    lines = ["| towers from | joint stage | val mAP | eval mAP | seeds above the start on val |",
             "|---|---|---|---|---|"]

    def line(init, name, picked, versus=None):
        val = np.array([e["val"] for e in picked])
        test = np.array([e["eval"] for e in picked])
        above = "" if versus is None else "{} of {}".format(
            sum(a["val"] > b["val"] for a, b in zip(picked, versus, strict=True)), len(picked))
        lines.append(f"| {init} | {name} | {val.mean():.3f} | {test.mean():.3f} ± "
                     f"{test.std():.3f} | {above} |")

    inits = sorted({init_of(r["run"]) for r in result["rows"]}, reverse=True)
    notes = []
    for init in inits:
        rows = sorted((r for r in result["rows"] if init_of(r["run"]) == init),
                      key=lambda r: r["seed"])
        start = [r["rows"][0] for r in rows]
        chosen = [next(e for e in r["rows"] if e["epoch"] == r["choice"]) for r in rows]
        line(init, "the start (the fusion stage's choice)", start)
        for k in range(1, min(len(r["rows"]) for r in rows)):
            line(init, f"after epoch {k}", [r["rows"][k] for r in rows], start)
        line(init, "the stage's choice (best on val, the start counted)", chosen, start)
        notes.append(f"{init}: seeds {', '.join(str(r['seed']) for r in rows)}, Adam at "
                     + ", ".join(sorted({f"{r['learning_rate']:g}" for r in rows})))
    lines.append("\nThe towers from a pretrained backbone (`pretrained_adapted`) or random "
                 "weights (`random`), as in benchmarks/tables/pretraining.md; "
                 + "; ".join(notes) + "; eval mAP as mean ± standard deviation over the seeds.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--runs", required=True, help="finished run directories, by commas")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/keras_dae_joint_stage"),
                        help="the joint stage's run directories (checkpoints)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import keras
    from fusion_stage import save_run_row

    args.work.mkdir(parents=True, exist_ok=True)
    for run in (Path(r) for r in args.runs.split(",")):
        began = time.time()
        row = run_row(run, args.data, args.epochs, args.learning_rate, args.work)
        row.update(backend=keras.backend.backend(), seconds=round(time.time() - began, 1))
        result = save_run_row(args.results, row, "python benchmarks/joint_stage.py --data "
                              f"{args.data} --runs RUNS --epochs {args.epochs} "
                              f"--learning-rate {args.learning_rate:g}", args.data)
        print(f"{run}: val " + " ".join(f"{e['val']:.3f}" for e in row["rows"])
              + "; eval " + " ".join(f"{e['eval']:.3f}" for e in row["rows"]), flush=True)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
