"""What pretraining without labels buys each stream: random towers against pretrained ones.

    python benchmarks/pretraining.py --data /tmp/sampled_fsd50k --pretrained /tmp/pretrain_run
    python benchmarks/pretraining.py --data /tmp/sampled_fsd50k --pretrained /tmp/pretrain_run \\
        --methods train --seeds 0 --epochs 8 --fusion-epochs 4

`--data` is a labelled dataset in FSD50K's layout whose eval split shares no source with the
pretraining corpus (`scripts/build_pretraining_corpus.py --exclude DATA`); `--pretrained` the
run directory of `keras-dae pretrain` (its `preset/` and `report.json`). For each seed:

- `probe`: the towers frozen, linear heads fitted on their embeddings (`keras-dae finetune
  --mode probe`), once from the pretrained towers and once from random towers of the same
  architecture (initialised with the seed, their feature normalisation adapted on the
  training chunks as training adapts it; `random_small_attention`: their attention then
  drawn small, as `keras-dae train` draws it): what the towers' embeddings hold, before any
  label reaches them;
- `train`: the whole recipe (`keras-dae train`) from the pretrained towers kept whole
  (`pretrained`: `--preset diverse_pretrained --no-reinit-attention --no-adapt-normalization`),
  from them with their attention drawn anew (`pretrained_new_attention`:
  `--no-adapt-normalization`), and with their feature normalisation adapted on the training
  chunks too (`pretrained_adapted`: `--preset diverse_pretrained`'s default), with their
  pretrained attention kept and their normalisation adapted (`pretrained_attention_kept`:
  `--no-reinit-attention`), and from random weights with Keras' draw (`random`: `--preset
  diverse_fsd50k --no-reinit-attention`) and with the attention drawn small as a pretrained
  backbone's is (`random_small_attention`: `--preset diverse_fsd50k`'s default), with
  `--epochs`, `--fusion-epochs` and `--joint-epochs` and the small-data options `--mixup`,
  `--gain-db`, `--balanced` and `--feature-masking` (the row's `recipe`);
- `classical` (not run unless asked: benchmarks/classical_baseline.py measures it, and the
  table takes its row from benchmarks/results/classical_baseline.json): logistic regression on
  clip statistics of the handcrafted front ends, its C chosen on val, for scale.

Every row holds the fused and per-stream eval mAP (val mAP too) and its wall time; rows are
appended to benchmarks/results/pretraining.json as they finish, and a rerun skips the
(method, init, seed) rows it already holds. The file also keeps the pretraining run's cost
(hours of audio, steps, training time, hardware) from its report, and with `--ranks` each
tower's effective rank (`keras_dae.metrics.effective_rank`) and the share of its output frames'
variance that lies along time (`keras_dae.metrics.temporal_share`) on the corpus's held-out
files for the pretrained towers, random ones and the shipped preset. Another pretraining run's
rows go to their own file (`--results`): benchmarks/results/pretraining_spread.json holds
those of the run with VICReg's spread terms (`keras-dae pretrain --spread 1`).
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

RESULTS = Path(__file__).parent / "results" / "pretraining.json"
METHODS = ("probe", "train", "classical")
INITS = ("random", "random_small_attention", "pretrained", "pretrained_new_attention",
         "pretrained_adapted", "pretrained_attention_kept")
SCHEDULE = (8, 4, 0)  # train: tower, fusion and joint epochs of every row without a schedule in
# its recipe (no joint stage: benchmarks/joint_stage.py adds it to finished runs)


def random_towers(data: Path, out: Path, seed: int, say, small_attention: bool = False) -> Path:
    """A run directory whose preset has random towers (initialised with `seed`, as Keras draws
    them, or with their attention then drawn small: `small_attention`) and feature
    normalisation adapted on `data`'s training chunks: a training run of no epochs."""
    from keras_dae.train_config import TrainConfig
    from keras_dae.train_run import train_run

    train_run(data, out, "diverse_fsd50k", TrainConfig(tower_epochs=0, fusion_epochs=0,
                                                       joint_epochs=0, seed=seed,
                                                       reinit_attention=small_attention),
              overwrite=True, say=say)
    return out


def embedding_ranks(corpus: Path, sources: dict, pretraining: dict) -> tuple[dict, dict]:
    """Each tower's effective rank and temporal share over the held-out anchors of `corpus`
    (the pairs that `keras-dae pretrain` validated on: the run's split, batch and seed) for
    each model of `sources` (name -> (model class, preset or run directory))."""
    from keras_dae.pretrainer import Pretrainer
    from keras_dae.pretraining import VAL_FRACTION, split_files, unlabelled_data
    from keras_dae.train_config import TrainConfig

    config = TrainConfig(batch_size=pretraining["config"]["batch_size"],
                         seed=pretraining["config"]["seed"])
    _, val = split_files(unlabelled_data(corpus), VAL_FRACTION, config.batch_size, config.seed)
    ranks, temporal = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (model_class, source) in sources.items():
            trainer = Pretrainer(model_class.from_preset(source), val, val, scratch, config,
                                 verbose=0)
            ranks[name], temporal[name] = trainer.embedding_statistics()
            print(f"effective rank, {name}: " + ", ".join(
                f"{s} {r:.1f}" for s, r in ranks[name].items()) + "; over time: " + ", ".join(
                f"{s} {t:.3f}" for s, t in temporal[name].items()), flush=True)
    return ranks, temporal


def run_row(method: str, init: str, seed: int, args, work: Path, features) -> dict:
    from finetune import neural_row

    from keras_dae.finetune import finetune_run
    from keras_dae.train_config import TrainConfig
    from keras_dae.train_run import train_run

    say = lambda line: print(line, flush=True)  # noqa: E731
    if method == "classical":
        from classical_baseline import fit_and_score

        return fit_and_score(*features)
    run = work / f"{method}_{init}_{seed}"
    if method == "probe":
        source = (args.pretrained if init == "pretrained"
                  else random_towers(args.data, work / f"{init}_{seed}", seed, say,
                                     small_attention=init == "random_small_attention"))
        return neural_row(finetune_run(source, args.data, run, "probe",
                                       config=TrainConfig(seed=seed), overwrite=True, say=say))
    config = TrainConfig(seed=seed, tower_epochs=args.epochs, fusion_epochs=args.fusion_epochs,
                         joint_epochs=args.joint_epochs,
                         reinit_attention=init in ("random_small_attention",
                                                   "pretrained_new_attention",
                                                   "pretrained_adapted"),
                         adapt_normalization=init in ("random", "random_small_attention",
                                                      "pretrained_adapted",
                                                      "pretrained_attention_kept"),
                         mixup=args.mixup, gain_db=args.gain_db,
                         balanced=args.balanced, feature_masking={
                             "on": True, "off": False, "preset": None}[args.feature_masking])
    preset = "diverse_fsd50k" if init.startswith("random") else "diverse_pretrained"
    return neural_row(train_run(args.data, run, preset, config, overwrite=True, say=say,
                                streams=frontends(filterbank_changes(args))))


def filterbank_changes(args) -> dict:
    """Per learned stream, the `LearnedFilterbank` config that the options change (the
    Neuralogram's: its window network's); streams without changes are left out."""
    end_to_end = {key: value for key, value in (
        ("n_filters", args.end_to_end_filters), ("initializer", args.end_to_end_init),
        ("win_length", args.end_to_end_window), ("n_cepstra", args.end_to_end_cepstra),
        ("pooling", args.end_to_end_pooling),
        ("relative_level", args.end_to_end_relative_level or None))
        if value is not None}
    neuralogram = {"relative_level": True} if args.neuralogram_relative_level else {}
    return {stream: changes for stream, changes in (
        ("end_to_end", end_to_end), ("neuralogram", neuralogram)) if changes}


def frontends(changes: dict) -> dict | None:
    """The default featurizer's front ends with each stream's learned filterbank config
    `changes[stream]` (None when there are none: the default's own)."""
    if not changes:
        return None
    from one_stream import stream_frontends

    from keras_dae.models.featurizer import default_stream_frontends
    from keras_dae.zoo.presets import PRESETS

    sample_rate = PRESETS["diverse_fsd50k"]["sample_rate"]
    return {**default_stream_frontends(sample_rate), **{
        stream: stream_frontends(stream, sample_rate, {"LearnedFilterbank": config})
        for stream, config in changes.items()}}


def main(argv=None) -> int:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--pretrained", type=Path,
                        help="run directory of keras-dae pretrain (for the pretrained inits "
                             "and --ranks)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="probe,train")
    parser.add_argument("--inits", default=",".join(INITS))
    parser.add_argument("--epochs", type=int, default=SCHEDULE[0], help="train: tower epochs")
    parser.add_argument("--fusion-epochs", type=int, default=SCHEDULE[1],
                        help="train: fusion epochs")
    parser.add_argument("--joint-epochs", type=int, default=SCHEDULE[2],
                        help="train: joint epochs (keras-dae train's default: "
                             "train_config.JOINT_EPOCHS)")
    parser.add_argument("--mixup", type=float, default=0.0, help="train: mixup alpha")
    parser.add_argument("--gain-db", type=float, default=0.0,
                        help="train: random level, +-DB dB per chunk")
    parser.add_argument("--balanced", action="store_true", help="train: balanced sampling")
    parser.add_argument("--feature-masking", choices=("on", "off", "preset"), default="preset",
                        help="train: the towers' SpecAugment-style masking")
    parser.add_argument("--end-to-end-filters", type=int,
                        help="train from random weights: the end-to-end stream's learned "
                             "filters (default: the default featurizer's, 64)")
    parser.add_argument("--end-to-end-init", choices=("gabor", "constant_q", "random"),
                        help="train from random weights: the end-to-end filterbank's start "
                             "(default: the default featurizer's, gabor: mel-spaced)")
    parser.add_argument("--end-to-end-window", type=int,
                        help="train from random weights: the end-to-end filters' length in "
                             "samples (default: the default featurizer's, 400)")
    parser.add_argument("--end-to-end-cepstra", type=int,
                        help="train from random weights: the end-to-end stream returns this "
                             "many DCT coefficients of its log energies (default: none, the "
                             "log energies themselves)")
    parser.add_argument("--end-to-end-pooling", type=int,
                        help="train from random weights: the end-to-end stream averages each "
                             "frame's energies over this many responses per hop (default: 1, "
                             "one response per frame)")
    parser.add_argument("--end-to-end-relative-level", action="store_true",
                        help="train from random weights: the end-to-end stream's energies "
                             "relative to each chunk's mean energy (free of the input's gain)")
    parser.add_argument("--neuralogram-relative-level", action="store_true",
                        help="train from random weights: the Neuralogram's window network "
                             "takes each window's energies relative to its mean energy")
    parser.add_argument("--work", type=Path, help="runs (default: a temporary dir)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--ranks", action="store_true",
                        help="also measure the towers' effective rank on the pretraining "
                             "corpus's held-out files: pretrained, random (seed 0) and the "
                             "shipped diverse_sampled15")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods, inits = args.methods.split(","), args.inits.split(",")
    if set(methods) - set(METHODS) or set(inits) - set(INITS):
        parser.error(f"methods: {METHODS}; inits: {INITS}")
    whole = {"pretrained_new_attention", "pretrained_adapted", "pretrained_attention_kept"}
    if whole & set(inits) and methods != ["train"]:
        parser.error(f"{', '.join(sorted(whole))} are inits of the whole recipe: --methods train")
    report = args.pretrained / "report.json" if args.pretrained else None
    if filterbank_changes(args) and (methods != ["train"] or any(
            not init.startswith("random") for init in inits)):
        parser.error("--end-to-end-* and --neuralogram-* change the architecture: --methods "
                     "train from random weights only (a pretrained backbone has its own front "
                     "ends)")
    for option in ("filters", "window", "cepstra", "pooling"):
        value = getattr(args, f"end_to_end_{option}")
        if value is not None and value < 1:
            parser.error(f"--end-to-end-{option} {value}: at least 1")
    if ((args.ranks or any(init.startswith("pretrained") for init in inits))
            and not (report and report.is_file())):
        parser.error(f"--pretrained {args.pretrained}: no report.json; it takes the run "
                     "directory of `keras-dae pretrain` (scripts/pretrain_preset.sh makes one)")
    work = args.work or Path(tempfile.mkdtemp(prefix="keras_dae_pretraining_"))
    if "train" in methods and any(init.startswith("pretrained") for init in inits):
        from finetune import use_pretrained

        use_pretrained(args.pretrained, work)
    result = json.loads(args.results.read_text()) if args.results.is_file() else {"rows": []}
    result.update({
        "command": f"python benchmarks/pretraining.py --data {args.data}" + (
            f" --pretrained {args.pretrained}" if args.pretrained else "") + (
            f" --results {args.results}" if args.results != RESULTS else ""),
        "data": str(args.data),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": len(os.sched_getaffinity(0))}})
    if report and report.is_file():  # rows from random weights alone need no backbone
        pretraining = json.loads(report.read_text())
        result["pretraining"] = {
            **pretraining["cost"], "best_epoch": pretraining["best_epoch"],
            "best_val_loss": pretraining["best_val_loss"],
            "best_val_accuracy": pretraining["best_val_accuracy"],
            "config": pretraining["config"], "data": pretraining["data"]}
    if args.ranks:
        from keras_dae.models import DiverseClassifier
        from keras_dae.models.contrastive import DiverseContrastive

        random = work / "random_0"
        if not (random / "preset").is_dir():
            random_towers(args.data, random, 0, lambda line: None)
        result["ranks"], result["temporal_share"] = embedding_ranks(Path(pretraining["data"]), {
            "pretrained": (DiverseContrastive, args.pretrained),
            "random": (DiverseClassifier, random),
            "diverse_sampled15": (DiverseClassifier, "diverse_sampled15")}, pretraining)
        args.results.write_text(json.dumps(result, indent=1) + "\n")
    recipe = recipe_name(args) if "train" in methods else "default"
    done = {(r["method"], r["init"], r.get("recipe", "default"), r["seed"])
            for r in result["rows"]}
    features = None
    if "classical" in methods:
        from classical_baseline import featurize

        from keras_dae.data import read_fsd50k

        splits = [read_fsd50k(args.data, s) for s in ("train", "val", "eval")]
        features = [featurize(d) for d in splits]
    for seed in seeds:
        for method in methods:
            for init in (inits if method != "classical" else ("none",)):
                if ((method, init, recipe if method == "train" else "default", seed) in done
                        or (method == "classical" and seed != seeds[0])):
                    continue
                start = time.time()
                row = run_row(method, init, seed, args, work, features)
                row.update(method=method, init=init, seed=seed, backend=keras.backend.backend(),
                           seconds=round(time.time() - start, 1))
                if method == "train":
                    row.update(epochs=args.epochs, fusion_epochs=args.fusion_epochs,
                               joint_epochs=args.joint_epochs, recipe=recipe)
                result["rows"].append(row)
                args.results.parent.mkdir(exist_ok=True)
                args.results.write_text(json.dumps(result, indent=1) + "\n")
                print(f"{method} from {init}, seed {seed}: eval mAP {row['eval_mAP']:.3f} "
                      f"in {row['seconds']:.0f} s", flush=True)
    print(table(result))
    return 0


def recipe_name(args) -> str:
    """The small-data options and schedule of a `train` row ("default": none of them, the
    `SCHEDULE`)."""
    schedule = (args.epochs, args.fusion_epochs, args.joint_epochs)
    options = ([f"{'+'.join(map(str, schedule[:2 + bool(schedule[2])]))} epochs"]
               if schedule != SCHEDULE else []) + (
        [f"mixup {args.mixup:g}"] if args.mixup else []) + (
        [f"gain {args.gain_db:g} dB"] if args.gain_db else []) + (
        ["balanced"] if args.balanced else []) + (
        [f"masking {args.feature_masking}"] if args.feature_masking != "preset" else []) + (
        [f"{args.end_to_end_filters} end-to-end filters"] if args.end_to_end_filters else []) + (
        [f"end-to-end {args.end_to_end_init} start"] if args.end_to_end_init else []) + (
        [f"end-to-end {args.end_to_end_window}-sample windows"] if args.end_to_end_window
        else []) + (
        [f"{args.end_to_end_cepstra} end-to-end cepstra"] if args.end_to_end_cepstra else []) + (
        [f"end-to-end pooling {args.end_to_end_pooling}"] if args.end_to_end_pooling else []) + (
        ["end-to-end relative level"] if args.end_to_end_relative_level else []) + (
        ["Neuralogram relative level"] if args.neuralogram_relative_level else [])
    return ", ".join(options) or "default"


def table(result: dict, classical: dict | None = None) -> str:
    """Fused and per-stream eval mAP, mean ± spread over the seeds, per method and init;
    `classical`: benchmarks/results/classical_baseline.json, when no classical row was run."""
    streams = ("pitch", "timbre", "neuralogram", "end_to_end")
    lines = ["| method | towers | fused | " + " | ".join(streams) + " | seeds | seconds |",
             "|---" * (len(streams) + 5) + "|"]

    def key(row):
        recipe = row.get("recipe", "default")
        return row["method"], row["init"] + ("" if recipe == "default" else f", {recipe}")

    keys = sorted({key(r) for r in result["rows"]}, key=lambda k: (METHODS.index(k[0]), k[1]))
    for method, init in keys:
        rows = [r for r in result["rows"] if key(r) == (method, init)]

        def cell(values):
            if len(values) < 2:
                return f"{values[0]:.3f}" if values else "-"
            return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

        fused = cell([r["eval_mAP"] for r in rows])
        per_stream = [cell([r["eval_streams"][s] for r in rows if "eval_streams" in r])
                      for s in streams]
        lines.append(f"| {method} | {init} | {fused} | " + " | ".join(per_stream)
                     + f" | {len(rows)} | {np.mean([r['seconds'] for r in rows]):.0f} |")
    if classical is not None and not any(k[0] == "classical" for k in keys):
        lines.append(f"| classical | none | {classical['eval_mAP']:.3f} |" + " - |" * 4
                     + f" 1 | {classical['seconds']:.0f} |")
    if result.get("ranks"):
        lines += ["", "| towers | " + " | ".join(streams) + " |", "|---" * 5 + "|"]
        for name, ranks in result["ranks"].items():
            lines.append(f"| {name} | " + " | ".join(f"{ranks[s]:.1f}" for s in streams) + " |")
    if result.get("temporal_share"):
        lines += ["", "| towers | " + " | ".join(f"{s} over time" for s in streams) + " |",
                  "|---" * 5 + "|"]
        for name, shares in result["temporal_share"].items():
            lines.append(f"| {name} | " + " | ".join(f"{shares[s]:.4f}" for s in streams)
                         + " |")
    cost = result.get("pretraining", {})
    if cost:
        lines += ["", f"Pretraining: {cost['audio_hours']:.2f} h of audio ({cost['files']} "
                  f"files), {cost['epochs']} epochs, {cost['steps']} steps of "
                  f"{cost['config']['batch_size']} pairs, {cost['train_seconds'] / 60:.0f} min "
                  f"of training on {cost['hardware']} ({cost['backend']}); best epoch "
                  f"{cost['best_epoch'] + 1}, val loss {cost['best_val_loss']:.3f}."]
    return "\n".join(lines)


def folds_table(folds: dict, official: dict) -> str:
    """Fused val and eval mAP of each recipe (from random weights) on every fold of
    `scripts/source_folds.py`: fold 0 is the official split (`official`'s rows, the mean over
    their seeds), the others `folds`' rows; the cross-validated score is the mean over the
    folds' val mAP."""
    recipes = sorted({r.get("recipe", "default") for r in folds["rows"]},
                     key=lambda r: (r != "default", r))
    folds_run = sorted({r["fold"] for r in folds["rows"]})
    header = ("| recipe | " + " | ".join(f"val fold {k}" for k in [0, *folds_run])
              + " | val, mean over folds | " + " | ".join(f"eval fold {k}" for k in [0, *folds_run])
              + " |")
    lines = [header, "|---" * (2 + 2 * (1 + len(folds_run))) + "|"]
    for recipe in recipes:
        fold0 = [r for r in official["rows"] if r["method"] == "train"
                 and r["init"] == "random_small_attention" and r.get("recipe", "default") == recipe]
        by_fold = [fold0] + [[r for r in folds["rows"] if r["fold"] == k
                              and r.get("recipe", "default") == recipe] for k in folds_run]
        vals = [float(np.mean([r["val_mAP"] for r in rows])) for rows in by_fold]
        evals = [float(np.mean([r["eval_mAP"] for r in rows])) for rows in by_fold]
        seeds = [len(rows) for rows in by_fold]
        lines.append(f"| {recipe} | " + " | ".join(
            f"{v:.3f}" + (f" ({n} seeds)" if n > 1 else "") for v, n in zip(vals, seeds, strict=True))
            + f" | {np.mean(vals):.3f} | " + " | ".join(f"{e:.3f}" for e in evals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
