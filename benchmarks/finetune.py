"""What starting from a preset buys on classes it never saw: the fine-tuning learning curve.

    python benchmarks/finetune.py --data /tmp/novel_fsd50k --model diverse_sampled15
    python benchmarks/finetune.py --data /tmp/novel_fsd50k --methods probe,classical --seeds 0,1,2

`--data` is a dataset in FSD50K's layout whose classes the preset was not trained on, its
splits disjoint by source (`scripts/build_sampled_dataset.py --classes novel`). For each
number of training clips per class (`--sizes`; `all` for the whole train split) and each
seed, the same clips (drawn per class with that seed) go to every method:

- `probe`, `heads`, `full`: `keras-dae finetune --mode ...` from `--model` with its default
  recipe (`TrainConfig(seed=seed)`; `full` adds the default joint epochs);
- `scratch`: the same architecture trained from random weights with `keras-dae train`'s
  recipe (`--scratch-preset`, default the paper's `diverse_fsd50k`), the towers as Keras draws
  them (`--no-reinit-attention`, as the rows were measured);
- `pretrained`: the same recipe from the backbone pretrained without labels, its towers'
  attention drawn anew and their feature normalisation kept from the pretraining corpus
  (`keras-dae train --preset diverse_pretrained --no-adapt-normalization`; `--pretrained`, the
  run directory of `keras-dae pretrain`, gives its preset);
- `pretrained_adapted`: the same with the normalisation adapted on the training clips
  (`keras-dae train --preset diverse_pretrained`'s default);
- `classical`: benchmarks/classical_baseline.py (clip statistics of the pitch and timbre
  front ends, logistic regression, C chosen on val).

`scratch` and `pretrained*` run without the joint stage unless `--joint-epochs N` asks for it
(`keras-dae train`'s default is `train_config.JOINT_EPOCHS`); rows with it are a method of
their own in the table ("+ N joint").

Every method validates on the whole val split and is scored on the whole eval split
(fused mAP; the stream heads' too for the neural ones), and its wall time is kept. Rows are
appended to benchmarks/results/finetune.json as they finish (rows that another process
wrote meanwhile are kept, so that seeds can run side by side); a rerun skips the (method, size,
seed, joint epochs) rows it already holds, so a long grid can be run in parts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "finetune.json"
METHODS = ("probe", "heads", "full", "scratch", "pretrained", "pretrained_adapted", "classical")
TRAINED = ("scratch", "pretrained", "pretrained_adapted")  # keras-dae train's recipe


def row_key(row: dict) -> tuple:
    """(method, clips per class, seed, joint epochs of a `TRAINED` row: 0 without them)."""
    return row["method"], row["per_class"], row["seed"], row.get("joint_epochs", 0)


def stored_rows(results: Path) -> list[dict]:
    """The rows in the results file now (other processes may have added some)."""
    return json.loads(results.read_text())["rows"] if results.is_file() else []


def draw_clips(train, per_class, seed: int) -> np.ndarray:
    """Indices of `per_class` training clips of each class (all of them for `None`), drawn
    with `seed`: a clip counts for its rarest label, as `ClipDataset.split_off` does."""
    counts = train.label_counts()
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i in range(len(train)):
        present = np.flatnonzero(train.targets[i])
        if present.size:
            by_class.setdefault(int(present[np.argmin(counts[present])]), []).append(i)
    chosen = []
    for key in sorted(by_class):
        clips = by_class[key]
        take = len(clips) if per_class is None else min(per_class, len(clips))
        chosen += [clips[j] for j in sorted(rng.permutation(len(clips))[:take])]
    return np.array(sorted(chosen))


def use_pretrained(run: Path, work: Path) -> None:
    """Makes `--preset diverse_pretrained` (which `keras-dae train` reads from
    `$KERAS_DAE_HOME/presets/`) the preset of the `keras-dae pretrain` run directory `run`,
    through a home in `work` that links to it."""
    home = work / "home"
    preset_dir = home / "presets" / "diverse_pretrained"
    if not preset_dir.exists():
        preset_dir.parent.mkdir(parents=True, exist_ok=True)
        preset_dir.symlink_to((run / "preset").resolve())
    os.environ["KERAS_DAE_HOME"] = str(home)


def write_csv_split(dataset, path: Path) -> None:
    """`path,labels` CSV of `dataset` (absolute paths, labels separated by `;`)."""
    lines = ["path,labels"] + [
        f"{p.resolve()},{';'.join(dataset.clip_labels(i))}" for i, p in enumerate(dataset.paths)]
    path.write_text("\n".join(lines) + "\n")


def neural_row(report: dict) -> dict:
    return {"val_mAP": report["evaluation"]["val"]["mAP"],
            "eval_mAP": report["evaluation"]["eval"]["mAP"],
            "eval_streams": report["evaluation"]["eval"]["streams"]}


def run_method(method: str, args, data_dir: Path, run_dir: Path, seed: int, features):
    from keras_dae.train_config import TrainConfig

    say = lambda line: print(line, flush=True)  # noqa: E731
    if method == "classical":
        from classical_baseline import fit_and_score

        train, val, test = features
        return fit_and_score(train, val, test)
    config = TrainConfig(seed=seed)
    if method in TRAINED:
        from keras_dae.train_run import train_run

        # `--joint-epochs` 0 by default: the stored rows were measured without the stage
        joint = args.joint_epochs
        preset, config = args.scratch_preset, TrainConfig(seed=seed, joint_epochs=joint,
                                                          reinit_attention=False)
        if method != "scratch":  # explicit, so that the rows keep their meaning
            preset, config = "diverse_pretrained", TrainConfig(
                seed=seed, joint_epochs=joint, reinit_attention=True,
                adapt_normalization=method == "pretrained_adapted")
        return neural_row(train_run(data_dir, run_dir, preset, config, "csv", overwrite=True,
                                    say=say))
    from keras_dae.finetune import finetune_run

    return neural_row(finetune_run(args.model, data_dir, run_dir, method, config=config,
                                   format="csv", overwrite=True, say=say))


def main(argv=None) -> int:
    import keras

    from keras_dae.data import read_fsd50k

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--model", default="diverse_sampled15", help="the preset to start from")
    parser.add_argument("--scratch-preset", default="diverse_fsd50k")
    parser.add_argument("--pretrained", type=Path,
                        help="pretrained*: the run directory of keras-dae pretrain")
    parser.add_argument("--sizes", default="5,10,20,all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", type=Path, help="runs and CSVs (default: a temporary dir)")
    parser.add_argument("--joint-epochs", type=int, default=0,
                        help=f"{', '.join(TRAINED)}: joint epochs (default 0, as the stored rows)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    from_backbone = [m for m in methods if m.startswith("pretrained")]
    if from_backbone and args.pretrained is None:
        parser.error(f"the methods {from_backbone} need --pretrained RUN_DIR "
                     "(keras-dae pretrain's)")
    work = args.work or Path(tempfile.mkdtemp(prefix="keras_dae_finetune_"))
    if from_backbone:
        use_pretrained(args.pretrained, work)
    results = args.results
    result = json.loads(results.read_text()) if results.is_file() else {"rows": []}
    result.update({
        "command": f"python benchmarks/finetune.py --data {args.data} --model {args.model}",
        "data": str(args.data), "model": args.model, "scratch_preset": args.scratch_preset,
        **({"pretrained": str(args.pretrained)} if args.pretrained else {}),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count()}})
    splits = {s: read_fsd50k(args.data, s) for s in ("train", "val", "eval")}
    features = None
    if "classical" in methods:
        from classical_baseline import featurize

        features = {s: featurize(d) for s, d in splits.items()}
    for per_class in sizes:
        for seed in seeds:
            chosen = draw_clips(splits["train"], per_class, seed)
            data_dir = work / f"data_{per_class or 'all'}_{seed}"
            data_dir.mkdir(parents=True, exist_ok=True)
            write_csv_split(splits["train"].subset(chosen), data_dir / "train.csv")
            write_csv_split(splits["val"], data_dir / "val.csv")
            write_csv_split(splits["eval"], data_dir / "eval.csv")
            for method in methods:
                joint = args.joint_epochs if method in TRAINED else 0
                key = (method, per_class or "all", seed, joint)
                if key in {row_key(r) for r in stored_rows(results)}:  # this or another process's
                    continue
                start = time.time()
                picked = None if features is None else (
                    (features["train"][0][chosen], features["train"][1][chosen]),
                    features["val"], features["eval"])
                row = run_method(method, args, data_dir, work / f"run_{method}_{key[1]}_{seed}",
                                 seed, picked)
                row.update(method=method, per_class=key[1], seed=seed,
                           **({"joint_epochs": joint} if joint else {}),
                           backend=keras.backend.backend(),
                           train_clips=int(len(chosen)), seconds=round(time.time() - start, 1))
                # rows that other processes (one per seed, say) wrote meanwhile are kept
                result["rows"] = stored_rows(results) + [row]
                results.parent.mkdir(exist_ok=True)
                results.write_text(json.dumps(result, indent=1) + "\n")
                print(f"{method} {key[1]} per class, seed {seed}: eval mAP "
                      f"{row['eval_mAP']:.3f} in {row['seconds']:.0f} s", flush=True)
    print(table(result))
    return 0


def table(result: dict) -> str:
    """Eval mAP, mean ± spread over the seeds measured, per method and clips per class, with
    each cell's mean wall time and the backend(s) it ran on."""
    sizes = sorted({r["per_class"] for r in result["rows"]},
                   key=lambda s: float("inf") if s == "all" else s)
    variants = sorted({(r["method"], r.get("joint_epochs", 0)) for r in result["rows"]},
                      key=lambda v: (METHODS.index(v[0]), v[1]))
    lines = ["| method | " + " | ".join(f"{s} per class" for s in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for method, joint in variants:
        cells = []
        for size in sizes:
            rows = [r for r in result["rows"] if (r["method"], r.get("joint_epochs", 0),
                                                  r["per_class"]) == (method, joint, size)]
            values = [r["eval_mAP"] for r in rows]
            backends = "/".join(sorted({r["backend"] for r in rows}))
            cells.append("-" if not values else f"{np.mean(values):.3f} ± {np.std(values):.3f} "
                         f"({len(values)}; {np.mean([r['seconds'] for r in rows]):.0f} s, "
                         f"{backends})")
        name = method + (f" + {joint} joint" if joint else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [
        "", "Eval mAP: mean ± standard deviation over the seeds measured (their count, the mean "
        "wall time of a run and the backend it ran on in brackets). Seconds: the whole run "
        "(neural methods: reading, embedding or training, evaluating on val and eval, writing "
        "the preset); classical: the fit alone, its clip features being computed once for "
        "every row."])


if __name__ == "__main__":
    raise SystemExit(main())
