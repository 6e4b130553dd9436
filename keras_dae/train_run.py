"""A whole training run from a dataset directory: what `keras-dae train` does, in one call.

    from keras_dae.train_config import TrainConfig
    from keras_dae.train_run import train_run

    report = train_run("/data/FSD50K", "runs/fsd50k", preset="diverse_fsd50k",
                       config=TrainConfig(tower_epochs=30, fusion_epochs=10))
    report["evaluation"]["eval"]["mAP"]

In order, and refusing (with an `InputError` or `OSError` that says why) before any training:
the run directory is locked (one process per run) and an earlier run in it must be asked to
be resumed or overwritten (`keras_dae.runs`); every split is read and every label of val and
eval must be one of the training split's (`read_splits`); data parallelism must suit the
batch size. Then the preset's model is built with the training split's classes (from a
pretrained backbone, `diverse_pretrained`: its front ends, towers and their normalisation,
with new heads), inside the
precision and data-parallel contexts (`keras_dae.scale`), trained (`training.Trainer`:
checkpoints, resume after a kill), evaluated on val and eval, and its preset, report and plots
written (`training.finish_run`).

As one of several processes (`processes`, a `train_config.Processes`; or Keras' and JAX's
environment variables, `keras_dae.scale.multiprocess_requested`): the process first joins the
others (`keras_dae.scale.initialize_multiprocess`), data parallelism spans every process's
devices, the training chunks must come from `shards` (each process reads its rows of every
batch), process 0 alone locks the run directory and writes in it, and only it says anything.
docs/multi-host.md shows how to launch such a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from keras_dae.train_config import Processes, TrainConfig
from keras_dae.validation import InputError

__all__ = ["read_splits", "report_lines", "scaled", "train_run"]


def read_splits(data, format: str | None = None, shards=None):
    """`(train, val, eval)` of the dataset in `data` (`eval` is None when it has none), every
    split's labels re-indexed to the training split's classes. `shards`: a directory written
    by `keras-dae shard`, read for the training chunks instead of `data`'s train split.
    Raises `InputError` without a train or val split, or for a label the training split
    lacks."""
    from keras_dae.data.datasets import read_split

    data = Path(data)
    if shards is not None:
        from keras_dae.data import ShardSet

        train = ShardSet(shards)
    else:
        train = read_split(data, "train", format)
    val = read_split(data, "val", format)
    if train is None or val is None:
        raise InputError(f"{data}: needs a train and a val split"
                         + (f" for --format {format}" if format else ""))
    known = "among the training split's classes"
    val = val.with_labels(train.labels, f"{data} (val)", known)
    test = read_split(data, "eval", format)
    if test is not None:
        test = test.with_labels(train.labels, f"{data} (eval)", known)
    return train, val, test


def train_run(data, out, preset: str = "diverse_fsd50k", config: TrainConfig | None = None,
              format: str | None = None, shards=None, resume: bool = False,
              overwrite: bool = False, say: Callable[[str], None] = print,
              processes: Processes | None = None, streams: dict | None = None) -> dict:
    """Trains the preset's architecture on the dataset in `data` into the run directory `out`
    and returns its report (see the module's docstring). `say` receives the progress lines
    (what was read, each split's metrics and skipped files, what was written); `processes`:
    how to join a multi-process run (default: as the environment says); `streams`: the
    featurizer's front ends per stream in place of the default ones (`DiverseFeaturizer`), for
    a preset trained from random weights."""
    config = join_processes(config or TrainConfig(), processes, shards)
    from keras_dae import scale, training

    if not scale.is_chief():
        say = silent
    with training.claim_run_dir(out, resume, overwrite):
        try:
            train, val, test = read_splits(data, format, shards)
            with scaled(config):
                return _train(Path(data), Path(out), preset, config, train, val, test, shards,
                              resume, overwrite, say, streams)
        except Exception as error:
            training.raise_for_processes(error)
            raise


def silent(line: str) -> None:
    """What processes other than 0 of a multi-process run say: nothing."""


def join_processes(config: TrainConfig, processes: Processes | None, shards=None,
                   how: str = "write them once with `keras-dae shard --data DIR --out SHARDS` "
                              "and add --shards SHARDS") -> TrainConfig:
    """Joins the multi-process run that `processes` or the environment asks for
    (`keras_dae.scale.initialize_multiprocess`); returns `config`, with data parallelism on in
    a run of several processes. Refuses (`InputError`) a multi-process run whose training
    chunks do not come from `shards`, saying `how` to get them. Without one asked for,
    returns `config` as it is."""
    from keras_dae import scale

    processes = processes or Processes()
    if not scale.multiprocess_requested(processes.coordinator, processes.num_processes,
                                        processes.process_id, force=processes.enabled):
        return config
    if shards is None:
        raise InputError("a multi-process run reads its training chunks from shards, each "
                         f"process its part of every batch: {how}")
    scale.initialize_multiprocess(processes.coordinator, processes.num_processes,
                                  processes.process_id, timeout=processes.timeout,
                                  heartbeat_timeout=processes.heartbeat_timeout)
    if scale.process_count() > 1 and not config.data_parallel:
        config = dataclasses.replace(config, data_parallel=True)
    return config


@contextlib.contextmanager
def scaled(config: TrainConfig):
    """The precision and data-parallel contexts of `config` (`keras_dae.scale`), in which a
    run builds its model and optimizer. Refuses (`InputError`) data parallelism that does not
    suit the batch size."""
    from keras_dae import scale

    if config.data_parallel:
        try:
            scale.check_data_parallel(config.batch_size)
        except ValueError as error:
            raise InputError(f"data parallelism: {error}") from None
    parallel = (scale.data_parallel(config.batch_size) if config.data_parallel
                else contextlib.nullcontext())
    with scale.precision(config.mixed_precision), parallel:
        yield


def report_lines(report: dict, skip_summaries: dict, out) -> list[str]:
    """What a run says at its end: each split's fused and per-stream mAP, each split's
    skipped files (`skip_summaries`: split -> line), and what it wrote in `out`."""
    lines = []
    for split, r in report["evaluation"].items():
        streams = "  ".join(f"{k} {v:.3f}" for k, v in r["streams"].items())
        lines.append(f"{split}: fused mAP {r['mAP']:.3f}  |  {streams}  ({r['n_clips']} clips)")
    lines += [f"{split}: {line}" for split, line in skip_summaries.items()]
    return lines + [f"wrote {Path(out) / 'preset'}, report.json and plots"]


def _train(data: Path, out: Path, preset: str, config: TrainConfig, train, val, test, shards,
           resume: bool, overwrite: bool, say, streams: dict | None = None) -> dict:
    import keras

    from keras_dae import scale, training
    from keras_dae.models import DiverseClassifier, build_diverse_classifier
    from keras_dae.zoo.presets import PRESETS

    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; the presets: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    if config.adapt_normalization is False and not spec.get("backbone_only"):
        raise InputError("--no-adapt-normalization is for a pretrained backbone "
                         f"(diverse_pretrained): {preset}'s towers have no statistics to keep")
    if streams is not None and spec.get("backbone_only"):
        raise InputError(f"{preset} is a pretrained backbone: its front ends come with it and "
                         "cannot be replaced; start from diverse_fsd50k for other front ends")
    # None (the default) is yes for both; the report keeps what was done
    config = dataclasses.replace(config, reinit_attention=config.reinit_attention is not False,
                                 adapt_normalization=config.adapt_normalization is not False)
    keras.utils.set_random_seed(config.seed)  # the initial weights too: same seed, same run
    if spec.get("backbone_only"):  # pretrained towers, new heads
        model = DiverseClassifier.from_preset(preset, class_names=train.labels,
                                              class_mids=train.mids)
    else:
        model = build_diverse_classifier(len(train.labels), spec["sample_rate"],
                                         tower=dict(spec["tower"]), streams=streams,
                                         class_names=train.labels, class_mids=train.mids)
    if config.reinit_attention:
        model.backbone.reinitialize_attention()
    source = (f"{len(train)} chunks of {train.n_clips} clips from {shards}" if shards
              else f"{len(train)} clips")
    devices, processes = scale.device_count(), scale.process_count()
    say(f"train: {source}, val: {len(val)} clips, {len(train.labels)} classes; "
        f"preset {preset} ({model.count_params():,} parameters); "
        f"backend {keras.backend.backend()}, {keras.config.dtype_policy().name}"
        + (f", data parallel over {devices} devices" if devices else "")
        + (f" of {processes} processes" if processes > 1 else ""))
    trainer = training.Trainer(model, train, val, out, config)
    if not config.adapt_normalization:  # the towers keep the statistics they were pretrained with
        trainer.state["normalized"] = True
    trainer.run(resume=resume, overwrite=overwrite)
    eval_sets = {"val": val} if test is None else {"eval": test, "val": val}
    report = training.finish_run(trainer, eval_sets, training_data=str(data.resolve()))
    summaries = trainer.skip_summary()  # train and val
    if "eval" in report["evaluation"]:
        summaries["eval"] = report["evaluation"]["eval"]["skip_summary"]
    for line in report_lines(report, summaries, out):
        say(line)
    return report
