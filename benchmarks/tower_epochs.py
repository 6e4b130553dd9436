"""Each stream's eval mAP after every epoch of the tower stage: does the shared epoch hold
the learned streams back?

    KERAS_BACKEND=tensorflow python benchmarks/tower_epochs.py --data /tmp/sampled_fsd50k \\
        --preset diverse_pretrained --seeds 0

The tower stage of `keras-dae train` (`keras_dae.training`) trains the four towers together
and keeps one epoch for all of them: the one with the highest mean of the streams' validation
mAP. The paper trains each tower on its own, so each could keep its own best epoch. This runs
the tower stage as `keras-dae train --preset PRESET --epochs N --fusion-epochs 0
--joint-epochs 0` runs it (the same seed and number of threads give the same epochs as a whole
run; with two threads against one, seed 0's learned streams drifted from the fourth epoch on,
its handcrafted ones from the sixth and less), and after every epoch also scores each stream on the eval split. From those curves, per stream and seed:

- `shared`: the eval mAP at the epoch the recipe keeps (highest mean validation mAP);
- `own`: at the stream's own highest validation mAP (each tower choosing on its own);
- `last`: at the last epoch trained;
- `best`: the highest eval mAP of any epoch, an upper bound that no choice made on validation
  data reaches; if a learned stream's `best` stays below the pitch stream's `shared`, no
  choice of epoch closes that gap.

Rows are merged into benchmarks/results/tower_epochs.json (a rerun replaces a seed's row).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "tower_epochs.json"
CHOICES = ("shared", "own", "last", "best")


def curves(args, seed: int) -> dict:
    """Trains the tower stage; after every epoch, merges the seed's row so far into the
    results file (a run stopped midway keeps the epochs it scored): the validation and eval mAP
    of each stream after each epoch (`{"val": [{stream: mAP}], "eval": [...]}`), the epochs
    done and the wall time. Returns the finished row."""
    import keras

    from keras_dae import training
    from keras_dae.train_config import TrainConfig
    from keras_dae.train_run import read_splits, train_run

    test = read_splits(args.data)[2]
    row = {"seed": seed, "backend": keras.backend.backend(),
           "threads": os.environ.get("OMP_NUM_THREADS"), "backbone": backbone(args.preset),
           "attention": args.attention,
           "val": [], "eval": []}
    start = time.time()

    class ScoredEveryEpoch(training.Trainer):
        def _end_of_epoch(self, stage, epoch, logs) -> None:
            super()._end_of_epoch(stage, epoch, logs)
            report = training.evaluate(self.model, test, chunk_seconds=self.config.chunk_seconds,
                                       hop_seconds=self.config.hop_seconds)
            print(f"[eval] epoch {epoch + 1}: " + " ".join(
                f"{k}={v:.3f}" for k, v in report["streams"].items()), flush=True)
            row["val"] = [h["val_streams"] for h in self.state["history"]
                          if h["stage"] == "towers"]
            row["eval"].append(report["streams"])
            row.update(epochs_done=epoch + 1, wall_minutes=(time.time() - start) / 60)
            merge(args, row)

    config = TrainConfig(seed=seed, tower_epochs=args.epochs, fusion_epochs=0, joint_epochs=0,
                         patience=args.patience,
                         reinit_attention={"keras": False, "small": True}.get(args.attention))
    original, training.Trainer = training.Trainer, ScoredEveryEpoch
    try:
        with attention(args.attention):
            train_run(args.data, args.work / f"seed{seed}", args.preset, config,
                      overwrite=True, say=lambda line: print(line, flush=True))
    finally:
        training.Trainer = original
    return row


@contextlib.contextmanager
def attention(how: str):
    """The towers' attention as `--attention` says: `recipe`, as `keras-dae train` draws it
    (small, query, key and value tied: `TransformerEncoder.reinitialize_attention()`); `small`,
    so (`--reinit-attention`), and `keras`, kept as Keras draws it or as pretrained
    (`--no-reinit-attention`), both set in `curves`' config; `new_block`, drawn as a new block
    draws it (`reinitialize_attention(like_new_block=True)`)."""
    from keras_dae.models.backbone import DiverseBackbone

    if how != "new_block":
        yield
        return
    draw = DiverseBackbone.reinitialize_attention
    DiverseBackbone.reinitialize_attention = functools.partialmethod(draw, like_new_block=True)
    try:
        yield
    finally:
        DiverseBackbone.reinitialize_attention = draw


def backbone(preset: str) -> dict | None:
    """What made a pretrained backbone preset (its metadata: the pretraining's settings that
    are not their defaults, and its cost), or None for a preset that is not one."""
    from keras_dae.train_config import TrainConfig
    from keras_dae.zoo.loading import resolve_preset
    from keras_dae.zoo.preset_files import read_json

    path = resolve_preset(preset)[1] / "metadata.json"
    metadata = read_json(path) if path.is_file() else {}
    if "pretraining" not in metadata:
        return None
    asked = metadata.get("train_config", {})
    return {"settings": {k: v for k, v in asked.items()
                         if k in TrainConfig.RANGES and v != getattr(TrainConfig(), k)},
            "cost": metadata["pretraining"]}


def choices(row: dict) -> dict:
    """`{choice: {stream: (epoch, eval mAP)}}` for each way of choosing an epoch."""
    val, ev = row["val"], row["eval"]
    streams = list(val[0])
    shared = int(np.argmax([np.mean([v[s] for s in streams]) for v in val]))
    last = len(ev) - 1
    out = {"shared": {s: (shared, ev[shared][s]) for s in streams},
           "last": {s: (last, ev[last][s]) for s in streams}, "own": {}, "best": {}}
    for s in streams:
        own = int(np.argmax([v[s] for v in val]))
        best = int(np.argmax([e[s] for e in ev]))
        out["own"][s] = (own, ev[own][s])
        out["best"][s] = (best, ev[best][s])
    return out


def table(result: dict) -> str:
    rows = [result["rows"][k] for k in sorted(result["rows"], key=int)]
    streams = list(rows[0]["val"][0])
    picked = [choices(r) for r in rows]
    lines = ["| epoch chosen | " + " | ".join(streams) + " |",
             "|---|" + "---:|" * len(streams)]
    for choice in CHOICES:
        cells = []
        for s in streams:
            values = [p[choice][s][1] for p in picked]
            epochs = "/".join(str(p[choice][s][0] + 1) for p in picked)
            spread = f" ± {np.std(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.3f}{spread} (epoch {epochs})")
        lines.append(f"| {choice} | " + " | ".join(cells) + " |")
    seeds = ", ".join(sorted(result["rows"], key=int))
    done = "/".join(sorted({str(len(r["eval"])) for r in rows}))
    return "\n".join(lines) + (
        f"\n\nEval mAP of each stream after the tower stage, mean ± standard deviation over "
        f"seeds {seeds}, {done} tower epochs each (the epoch each seed kept, 1-based). `shared`: the epoch of the highest "
        "mean validation mAP (what the recipe keeps); `own`: each stream's own highest "
        "validation mAP; `last`: the last epoch trained; `best`: the highest eval mAP of any epoch (chosen on eval: an upper "
        "bound, not a recipe).\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--preset", default="diverse_pretrained")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=8, help="tower epochs")
    parser.add_argument("--patience", type=int, default=3,
                        help="epochs without a better mean validation mAP before stopping")
    parser.add_argument("--attention", choices=("recipe", "keras", "small", "new_block"),
                        default="recipe", help="the towers' attention (see `attention`)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tower_epochs"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true",
                        help="print the table of the results file and run nothing")
    args = parser.parse_args(argv)
    if not args.table:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.work.mkdir(parents=True, exist_ok=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            curves(args, seed)
    print(table(json.loads(args.results.read_text())))
    return 0


def merge(args, row: dict) -> None:
    """Puts the seed's row into the results file, under a lock: seeds run side by side share
    the file."""
    with open(args.work / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = (json.loads(args.results.read_text()) if args.results.exists()
                  else {"rows": {}})
        result.update(
            command=f"KERAS_BACKEND={row['backend']} python benchmarks/tower_epochs.py "
                    f"--data {args.data} --preset {args.preset} --epochs {args.epochs} "
                    f"--patience {args.patience} --attention {args.attention} --seeds SEED",
            preset=args.preset, epochs=args.epochs, patience=args.patience,
            attention=args.attention,
            machine=f"{platform.machine()}, {os.cpu_count()} CPU cores")
        result["rows"][str(row["seed"])] = row
        args.results.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
