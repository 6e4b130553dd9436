"""Pretraining the four towers without labels: what `keras-dae pretrain` does, in one call.

    from keras_dae.pretraining import pretrain_run

    report = pretrain_run("/tmp/pretrain_corpus", "runs/pretrained")
    model = DiverseClassifier.from_preset("runs/pretrained", class_names=["dog", "cat"])

The data is any directory of audio files, searched recursively (for example the corpus that
`scripts/build_pretraining_corpus.py` builds), or the shards of one, decoded and chunked once
(`keras-dae shard --format unlabelled --data DIR --out SHARDS`); no labels are read. The
objective is COLA's (`keras_dae.models.contrastive`): two 1 s chunks of the same file are a
positive pair, the other files of the batch the negatives, one loss per stream, so every
tower, the Neuralogram's window network and the learned filterbank learn at once, each from
its own embedding. Each view is augmented (a random gain, and half the time another file of the batch
mixed in 5-20 dB below it, as BYOL-A mixes in background), so that level and a quiet
background are not what tells files apart; `config.lowpass` (`--lowpass`) also low-passes a
share of the views, `config.spread` (`--spread`) adds VICReg's variance and covariance
terms on the tower embeddings against their collapse, which every epoch's effective rank of
the held-out embeddings, in the report, measures, and `config.projection_hidden`
(`--projection-hidden`) puts a hidden ReLU layer in each stream's projection head, and
`config.predict_features` (`--predict-features`) has every tower's embedding regress the
handcrafted streams' clip statistics too (PASE's regression workers), and
`config.predict_frames` (`--predict-frames`) every tower's output frames those features frame
by frame, and `config.mask_frames` (`--mask-frames`) masks spans of every tower's input frames
in training, so that with `--predict-frames` the towers predict frames they do not see (masked
prediction).

`val_fraction` of the files (at least one batch) are held out; after every epoch the pairs of
those files, fixed once, are scored, and the epoch of the lowest validation loss (mean over
the streams) is kept (early stopping with `patience`). The recipe's machinery is the
supervised one (`keras_dae.training.Trainer`): feature normalisation adapted from training
chunks, checkpoints every epoch, `--resume` after a kill (or, with more `--epochs`, to train
a finished run longer: `extend_finished`), bad files reported once and skipped, bfloat16 and
data parallelism over the local devices or, from shards, over several processes
(`processes`, as `keras_dae.train_run.train_run`'s: every process builds each global batch
and feeds its rows, so the negatives are the whole global batch). The run
directory gets `checkpoint/`, `logs/`, `preset/` (the backbone: `DiverseContrastive`, no
classes) and `report.json` (validation history and the cost: hours of audio, steps, wall
time, hardware).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from keras_dae import validation
from keras_dae.data.datasets import ClipDataset, read_unlabelled
from keras_dae.train_config import PRETRAIN_DEFAULTS, Processes, TrainConfig
from keras_dae.validation import InputError

__all__ = ["PRETRAIN_DEFAULTS", "VAL_FRACTION", "extend_finished", "pretrain_config",
           "pretrain_run", "unlabelled_data"]

VAL_FRACTION = 0.05


def split_files(dataset, val_fraction: float, batch_size: int, seed: int):
    """(train, val): `val_fraction` of the files, drawn with `seed`, at least one batch and
    leaving at least one batch to train on."""
    n = len(dataset)
    n_val = max(int(round(val_fraction * n)), batch_size)
    if n - n_val < batch_size:
        raise InputError(f"{n} audio files: too few to pretrain in batches of {batch_size} "
                         f"pairs with a validation batch held out (at least "
                         f"{2 * batch_size}); lower --batch-size or add files")
    order = np.random.default_rng([seed, 7]).permutation(n)
    return dataset.subset(np.sort(order[n_val:])), dataset.subset(np.sort(order[:n_val]))


def pretrain_config(**changes) -> TrainConfig:
    """`TrainConfig` with pretraining's defaults (`PRETRAIN_DEFAULTS`) and `changes`."""
    return TrainConfig(**{**PRETRAIN_DEFAULTS, **changes})


def unlabelled_data(data):
    """The clips under `data`: `ShardClips` of a shard directory, else every audio file
    (`read_unlabelled`)."""
    from keras_dae.data.pair_loader import ShardClips
    from keras_dae.data.shards import INDEX_FILE

    if (Path(data) / INDEX_FILE).is_file():
        return ShardClips(data)
    return read_unlabelled(data)


def pretrain_run(data, out, preset: str = "diverse_fsd50k", config: TrainConfig | None = None,
                 val_fraction: float = VAL_FRACTION, resume: bool = False,
                 overwrite: bool = False, say: Callable[[str], None] = print,
                 processes: Processes | None = None) -> dict:
    """Pretrains the towers of `preset`'s architecture on the audio under `data` (files or
    shards) into the run directory `out`; returns the report (see the module's docstring).
    `processes`: how to join a run of several processes (default: as the environment says)."""
    from keras_dae import scale, training
    from keras_dae.train_run import join_processes, silent
    from keras_dae.zoo.presets import PRESETS

    config = config or pretrain_config()
    validation.check("val_fraction", val_fraction, "positive_float")
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; the presets: {', '.join(PRESETS)}")
    if config.batch_size < 2:
        raise InputError("pretraining needs batches of at least 2 pairs (each anchor's "
                         "negatives are the batch's other files); raise --batch-size")
    if config.feature_cache or config.mixup or config.balanced or config.gain_db:
        raise InputError("pretraining takes no --feature-cache, --mixup, --balanced or "
                         "--gain-db (its pairs are random chunks, augmented)")
    files = unlabelled_data(data)
    config = join_processes(config, processes, data if _from_shards(files) else None, how=(
        "write them once with `keras-dae shard --format unlabelled --data DIR --out SHARDS` "
        "and pretrain with --data SHARDS"))
    if not scale.is_chief():
        say = silent
    with training.claim_run_dir(out, resume, overwrite, reopen=lambda run_dir: extend_finished(
            run_dir, config.tower_epochs)):
        try:
            return _pretrain(files, Path(data), Path(out), preset, config, val_fraction,
                             resume, overwrite, say)
        except Exception as error:
            training.raise_for_processes(error)
            raise


def extend_finished(run_dir: Path, epochs: int) -> None:
    """Turns the finished pretraining run in `run_dir` back into one to continue to `epochs`
    epochs (`--resume` with more `--epochs`): its checkpoint holds the last epoch's weights
    and optimizer state when that epoch is the one it kept, so continuing it is the longer
    run. Raises `RunError` when there is nothing to add, or when a later epoch was worse on
    the held-out pairs (the checkpoint then holds the kept epoch, not the last)."""
    from keras_dae import runs, training

    path = run_dir / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    history, best = _kept_epoch(state)
    done = len(history)
    if epochs <= done:
        raise runs.RunError(f"{run_dir}: the run is finished after {done} epoch"
                            f"{'s' * (done != 1)}: --resume with --epochs above {done} "
                            "continues it; --overwrite trains it again")
    if best is None:
        raise runs.RunError(f"{run_dir}: the run finished without an epoch (--epochs 0): "
                            "--overwrite trains it")
    if best["epoch"] != history[-1]["epoch"]:
        raise runs.RunError(
            f"{run_dir}: the run kept epoch {best['epoch'] + 1} of {done} (the later ones "
            "scored worse on the held-out pairs), so its checkpoint is not where the run "
            "stopped and cannot be continued; --overwrite trains it again with more --epochs")
    files = dict(state.get("files") or {})  # none in a checkpoint older than versioned files
    # The kept epoch stays the best until one scores higher.
    files["best"] = files.get("weights", "model.weights.h5")
    state.update(stage="pretrain", epoch=best["epoch"], best_map=-best["val_loss"],
                 best_epoch=best["epoch"], wait=0, files=files)
    training._atomic_write_text(path, json.dumps(state, indent=1))


def _from_shards(files) -> bool:
    return not isinstance(files, ClipDataset)


def _pretrain(files, data: Path, out: Path, preset, config, val_fraction, resume, overwrite,
              say) -> dict:
    import keras

    from keras_dae import scale, training
    from keras_dae.models.contrastive import DiverseContrastive
    from keras_dae.pretrainer import Pretrainer
    from keras_dae.train_run import scaled
    from keras_dae.zoo.presets import PRESETS

    spec = PRESETS[preset]
    train, val = split_files(files, val_fraction, config.batch_size, config.seed)
    with scaled(config):
        keras.utils.set_random_seed(config.seed)
        model = DiverseContrastive.with_default_frontends(
            spec["sample_rate"], tower=dict(spec["tower"]), spread_weight=config.spread,
            projection_hidden=config.projection_hidden,
            prediction_weight=config.predict_features,
            frame_prediction_weight=config.predict_frames)
        if config.reinit_attention:
            model.backbone.reinitialize_attention()
        say(f"pretrain: {len(train)} {'clips' if _from_shards(files) else 'files'}, val: "
            f"{len(val)} (no labels); architecture {preset} ({model.count_params():,} "
            f"parameters); backend {keras.backend.backend()}, "
            f"{keras.config.dtype_policy().name}"
            + (f"; {scale.process_count()} processes" if scale.process_count() > 1 else ""))
        trainer = Pretrainer(model, train, val, out, config)
        state = trainer.run(resume=resume, overwrite=overwrite)
        report = _report(trainer, state, files, data, preset)
        with training._chief_directory(out) as directory:
            model.save_to_preset(directory / "preset", metadata={
                "pretrained_on": str(data.resolve()), "architecture": preset,
                "pretraining": report["cost"],
                "train_config": dataclasses.asdict(config)})
    if scale.is_chief():
        training._atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    total = len(files) + (len(files.skipped) if _from_shards(files) else 0)
    say(f"skipped: {training.summarize_problems(trainer.skipped, total=total)}")
    say(f"best epoch {report['best_epoch'] + 1}: val loss {report['best_val_loss']:.3f}; "
        f"{report['cost']['steps']} steps in {report['cost']['train_seconds'] / 60:.1f} min; "
        f"wrote {Path(out) / 'preset'} and report.json")
    return report


def _report(trainer, state: dict, files, data: Path, preset: str) -> dict:
    """The run's report: history, the best epoch and the cost (audio, steps, training time
    summed over the epochs, machine)."""
    import keras

    seconds = sum(state.get("audio_seconds", {}).values())
    history, best = _kept_epoch(state)
    steps_per_epoch = len(trainer.train) // trainer.config.batch_size
    return {
        "data": str(data.resolve()), "architecture": preset,
        "config": dataclasses.asdict(trainer.config), "backend": keras.backend.backend(),
        "history": history, "best_epoch": -1 if best is None else best["epoch"],
        "best_val_loss": float("nan") if best is None else best["val_loss"],
        "best_val_accuracy": None if best is None else best["val_accuracy"],
        "best_val_rank": None if best is None else best.get("val_rank"),
        "cost": {"audio_hours": seconds / 3600, "files": len(files),
                 "epochs": len(history), "steps": len(history) * steps_per_epoch,
                 "train_seconds": float(state.get("train_seconds", 0.0)),
                 "hardware": _hardware(), "backend": keras.backend.backend()},
        "skipped": dict(trainer.skipped),
    }


def _kept_epoch(state: dict) -> tuple[list[dict], dict | None]:
    """The pretraining epochs of a run's `state` (history entries) and the one it keeps: the
    lowest validation loss (None before the first epoch)."""
    history = [h for h in state.get("history", []) if h.get("stage") == "pretrain"]
    return history, min(history, key=lambda h: h["val_loss"]) if history else None


def _hardware() -> str:
    import keras

    devices = "cpu"
    if keras.backend.backend() == "jax":
        import jax

        devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    elif keras.backend.backend() == "torch":
        import torch

        devices = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} {cores} cores, {devices}"


#: `keras-dae pretrain`'s flags besides the recipe's: (flag, argparse options).
FLAGS = (
    ("--data", {"required": True, "help": "directory of audio files (searched recursively; "
                "no labels), or their shards (keras-dae shard --format unlabelled)"}),
    ("--out", {"required": True, "help": "run directory (checkpoints, preset, report)"}),
    ("--preset", {"default": "diverse_fsd50k", "help": "architecture to pretrain"}),
    ("--val-fraction", {"type": validation.positive_float, "default": VAL_FRACTION,
                        "help": "share of the files held out to choose the epoch"}),
)
