"""Your own labels on a preset's towers: what `keras-dae finetune` does, in one call.

    from keras_dae.finetune import finetune_run

    report = finetune_run("diverse_sampled15", "my_sounds/", "runs/mine", mode="probe")
    model = DiverseClassifier.from_preset("runs/mine")   # a preset like any other

The data is any dataset `keras-dae train` reads (FSD50K, CSV or folders layout), or simply one
folder per class (`my_sounds/<class>/<clips>`). Without a val split, about `val_fraction` of
each class's clips are held out to validate on (`ClipDataset.split_off`: stratified, seeded,
a source's clips on one side); a class with under three clips is kept whole for training, with
a warning that it cannot be validated.

The preset's front ends and towers (and their feature normalisation) are kept; every head is
new, one output per class of the data. Three modes:

- `probe`: the towers stay frozen. Every training and validation chunk's stream embeddings
  are computed once (`RUN/embedding_cache/`, reused by `--resume`), then the fusion head and
  the stream heads, linear layers on those embeddings, are fitted on them with Adam, keeping
  the epoch of the best validation mAP (early stopping). The cost is one pass of the model
  over the clips (under 4 min for 1,200 clips of about 2 s on a 2-core CPU); the fit itself
  takes seconds.
- `heads`: the towers stay frozen; the stream heads, then the fusion head, are trained with
  the usual recipe (`training.Trainer`, `TrainConfig(pretrained=True)`: chunks decoded and
  the whole model run every epoch, checkpoints, resume after a kill).
- `full`: as `heads`, then every weight (front ends and towers too) in the joint stage, at the
  lower `joint_learning_rate` (`train_config.FULL_JOINT_EPOCHS` epochs unless `joint_epochs`
  says; at least one).

`streams` keeps a subset of the preset's streams (`DiverseClassifier.with_streams`), whose
fusion is then fitted on that subset alone. The run directory gets what `keras-dae train`
writes: `preset/` (class names from the data), `report.json` and the plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from keras_dae import validation
from keras_dae.train_config import FULL_JOINT_EPOCHS, TrainConfig
from keras_dae.validation import InputError

__all__ = ["FULL_JOINT_EPOCHS", "MODES", "VAL_FRACTION", "finetune_run", "read_finetune_data"]

MODES = ("probe", "heads", "full")
VAL_FRACTION = 0.2
# The probe's fit: full passes over the cached chunk embeddings, early-stopped on val mAP.
PROBE_EPOCHS = 300
PROBE_PATIENCE = 20
PROBE_BATCH = 256
EMBEDDING_CACHE = "embedding_cache"


def stream_list(text: str) -> list[str]:
    """`"pitch,timbre"` -> `["pitch", "timbre"]`: the argparse type of `--streams`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected stream names separated by commas, got "
                                         f"{text!r}")
    return names


stream_list.__name__ = "streams"


# `keras-dae finetune`'s own flags (the recipe's come from `train_config.add_arguments`).
FLAGS = (
    ("--from", dict(dest="source", required=True, metavar="PRESET_OR_RUN",
                    help="the preset name, preset directory or run directory to start from")),
    ("--data", dict(required=True, help="dataset directory, or one folder per class")),
    ("--format", dict(choices=("fsd50k", "csv", "folders"), default=None,
                      help="the dataset's layout (default: detected)")),
    ("--out", dict(required=True, help="run directory (checkpoints, preset, report)")),
    ("--mode", dict(choices=MODES, default="probe",
                    help="probe: fit the heads on cached embeddings (fast); heads: train the "
                         "heads with the recipe; full: then every weight (default probe)")),
    ("--streams", dict(type=stream_list, default=None, metavar="A,B",
                       help="keep only these streams (e.g. pitch,timbre); the fusion is "
                            "fitted on them")),
    ("--val-fraction", dict(type=validation.fraction, default=VAL_FRACTION,
                            help="without a val split: each class's share held out to "
                                 f"validate on (default {VAL_FRACTION})")),
)


def read_finetune_data(data, format: str | None = None, val_fraction: float = VAL_FRACTION,
                       seed: int = 0, say: Callable[[str], None] = print):
    """`(train, val, eval)` of `data` (see the module's docstring); `eval` is None when the
    data has none. Labels of val and eval must be among the training split's."""
    from keras_dae.data.datasets import detect_format, read_folder_dataset, read_split

    data = Path(data)
    if format is None and data.is_dir() and detect_format(data) is None:
        train, val, test = read_folder_dataset(data), None, None  # one folder per class
    else:
        train = read_split(data, "train", format)
        if train is None:
            raise InputError(f"{data}: no train split" + (f" for --format {format}"
                                                          if format else ""))
        val, test = read_split(data, "val", format), read_split(data, "eval", format)
    if val is None:
        n = len(train)
        train, val, too_few = train.split_off(val_fraction, seed)
        say(f"{data}: no val split, so {len(val)} of its {n} training clips are held out to "
            f"validate on ({val_fraction:.0%} of each class's, seed {seed})")
        if too_few:
            warnings.warn(f"{data}: {len(too_few)} classes have under 3 clips and cannot be "
                          f"validated (all their clips train): {', '.join(too_few)}",
                          stacklevel=2)
    known = "among the training split's classes"
    val = val.with_labels(train.labels, f"{data} (val)", known)
    if test is not None:
        test = test.with_labels(train.labels, f"{data} (eval)", known)
    return train, val, test


def _load(source, train, streams, config: TrainConfig):
    """The preset's model with new heads for `train`'s classes, in the run's precision."""
    from keras_dae import scale
    from keras_dae.models import DiverseClassifier

    subset = {} if streams is None else {"streams": list(streams)}
    model = DiverseClassifier.from_preset(source, class_names=train.labels,
                                          class_mids=train.mids, **subset)
    if config.mixed_precision:
        model = scale.with_precision(model, config.mixed_precision)
    return model


# -- probe --------------------------------------------------------------------------------
def chunk_embeddings(model, dataset, config: TrainConfig, cache: Path | None = None,
                     key: dict | None = None, skipped: dict | None = None):
    """Every chunk's concatenated stream embeddings: `(embeddings (rows, size) float32,
    clip (rows,) the index in `dataset` of each row's clip)`. Clips that cannot be read are
    left out and added to `skipped` (path -> reason). With `cache`, a `.npz` written once and
    read back while the clips and `key` (what made them) are the same."""
    from keras_dae import atomic, concurrency
    from keras_dae.audio import AudioDecodeError
    from keras_dae.clip_pipeline import ClipPipeline

    skipped = {} if skipped is None else skipped
    paths = [str(p) for p in dataset.paths]
    stamp = json.dumps({"paths": paths, **(key or {})}, sort_keys=True)
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["stamp"]) == stamp:
                skipped.update(json.loads(str(saved["skipped"])))
                return saved["embeddings"], saved["clip"]
    pipeline = ClipPipeline(
        lambda batch: {"embedding": concurrency.predict(model, batch, config.batch_size)[
            "embedding"]},
        model.sample_rate, config.chunk_seconds, config.hop_seconds, config.batch_size)
    rows, owners, mine = [], [], {}
    for clip in pipeline.run(paths, skip=lambda path: path in skipped):
        if clip.error is not None:
            error = clip.error
            mine[clip.source] = (error.problem if isinstance(error, AudioDecodeError)
                                 else str(error))
            continue
        rows.append(clip.chunks["embedding"])
        owners.append(np.full(len(rows[-1]), clip.index, np.int64))
    if not rows:
        raise InputError(f"no clip of the {len(paths)} could be decoded")
    skipped.update(mine)
    embeddings, clip = np.concatenate(rows).astype(np.float32), np.concatenate(owners)
    if cache is not None:
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=embeddings, clip=clip, stamp=np.array(stamp),
                         skipped=np.array(json.dumps(mine)))

        atomic.atomic_write(cache, write)
    return embeddings, clip


def _fit_probe(model, train_x, train_y, val_x, val_targets, val_clip, config: TrainConfig,
               verbose: bool) -> list[dict]:
    """Fits the fusion head and the stream heads on cached embeddings; sets the model's heads
    to the epoch of the best val mAP (fused); returns the history."""
    import keras

    from keras_dae import metrics

    streams, k = model.stream_names, model.num_classes
    size = train_x.shape[1] // len(streams)
    parts = {name: slice(i * size, (i + 1) * size) for i, name in enumerate(streams)}
    keras.utils.set_random_seed(config.seed)
    # The fusion head sees the whole embedding, each stream head its own slice of it.
    inputs = {"embedding": keras.Input((train_x.shape[1],), name="embedding")}
    inputs.update({name: keras.Input((size,), name=name) for name in streams})
    heads = {"fused": keras.layers.Dense(k, activation="sigmoid", name="fused")}
    heads.update({name: keras.layers.Dense(k, activation="sigmoid", name=f"{name}_head")
                  for name in streams})
    outputs = {"fused": heads["fused"](inputs["embedding"])}
    outputs.update({name: heads[name](inputs[name]) for name in streams})
    probe = keras.Model(inputs, outputs)
    probe.compile(optimizer=keras.optimizers.Adam(config.fusion_learning_rate),
                  loss={name: "binary_crossentropy" for name in outputs})

    def weights():
        return {name: [np.array(keras.ops.convert_to_numpy(w)) for w in layer.weights]
                for name, layer in heads.items()}

    def val_map(w, name):
        x = val_x if name == "fused" else val_x[:, parts[name]]
        logits = x.astype(np.float64) @ w[name][0] + w[name][1]
        return metrics.clip_mean_average_precision(val_targets, 1.0 / (1.0 + np.exp(-logits)),
                                                   val_clip)

    history, best = [], {"map": -1.0, "weights": None, "wait": 0}

    class EndOfEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            w = weights()
            scores = {name: val_map(w, name) for name in heads}
            history.append({"stage": "probe", "epoch": epoch,
                            "loss": float((logs or {}).get("loss", np.nan)),
                            "val_map": scores["fused"],
                            "val_streams": {n: scores[n] for n in streams},
                            "time": time.time()})
            if scores["fused"] > best["map"]:
                best.update(map=scores["fused"], weights=w, wait=0)
            else:
                best["wait"] += 1
                if best["wait"] >= PROBE_PATIENCE:
                    self.model.stop_training = True

    features = {"embedding": train_x, **{name: train_x[:, parts[name]] for name in streams}}
    probe.fit(features, {name: train_y for name in outputs}, batch_size=PROBE_BATCH, epochs=PROBE_EPOCHS, shuffle=True,
              verbose=0, callbacks=[EndOfEpoch()])
    chosen = best["weights"]
    for name, layer in [("fused", model.fusion_head), *model.stream_heads.items()]:
        layer.kernel.assign(chosen[name][0])
        layer.bias.assign(chosen[name][1])
    if verbose:
        last = next(h for h in history if h["val_map"] == best["map"])
        streams_text = " ".join(f"{n}={v:.3f}" for n, v in last["val_streams"].items())
        print(f"[probe] {len(history)} epochs; best {last['epoch'] + 1}: val mAP fused "
              f"{best['map']:.3f}  {streams_text}", flush=True)
    return history


def probe(model, train, val, run_dir, config: TrainConfig, key: dict | None = None,
          verbose: bool = True) -> tuple[dict, dict]:
    """The `probe` mode on `model` (heads set in place): `(state, skipped)`, the history as a
    `Trainer`'s state holds it and the files that could not be read (path -> reason)."""
    from keras_dae import atomic

    run_dir = Path(run_dir)
    cache = run_dir / EMBEDDING_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    key = {**(key or {}), "chunk": config.chunk_seconds, "hop": config.hop_seconds,
           "streams": model.stream_names}
    train_x, train_clip = chunk_embeddings(model, train, config, cache / "train.npz", key,
                                           skipped)
    val_x, val_clip = chunk_embeddings(model, val, config, cache / "val.npz", key, skipped)
    history = _fit_probe(model, train_x, train.targets[train_clip], val_x, val.targets,
                         val_clip, config, verbose)
    state = {"stage": "done", "history": history, "config": dataclasses.asdict(config)}
    (run_dir / "checkpoint").mkdir(exist_ok=True)
    atomic.write_text(run_dir / "checkpoint" / "state.json", json.dumps(state, indent=1))
    return state, skipped


# -- the run ------------------------------------------------------------------------------
def finetune_run(source, data, out, mode: str = "probe", streams=None,
                 config: TrainConfig | None = None, format: str | None = None,
                 val_fraction: float = VAL_FRACTION, resume: bool = False,
                 overwrite: bool = False, say: Callable[[str], None] = print) -> dict:
    """Fine-tunes the preset (or run) `source` on the dataset in `data` into the run directory
    `out` and returns its report (see the module's docstring). `config`'s epochs, learning
    rates and batch size apply to `heads` and `full` (`probe` uses `batch_size` and
    `fusion_learning_rate`); `say` receives the progress lines."""
    from keras_dae import runs, training
    from keras_dae.train_run import report_lines, scaled

    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    config = config or TrainConfig()
    if mode != "full" and config.joint_epochs:
        raise InputError("joint epochs train the towers too: that is --mode full")
    if mode == "full" and config.joint_epochs == 0:
        raise InputError("--mode full trains every weight in its joint epochs: --joint-epochs "
                         "0 leaves the towers as they are, which is --mode heads")
    if config.reinit_attention:
        raise InputError("--reinit-attention is for `keras-dae train --preset "
                         "diverse_pretrained`, which trains the towers from the start")
    if config.adapt_normalization:
        raise InputError("finetune keeps the preset's feature normalisation (its towers were "
                         "trained on it); --adapt-normalization is for `keras-dae train "
                         "--preset diverse_pretrained`")
    if mode == "probe" and config.gain_db:
        raise InputError("--mode probe fits heads on the embeddings of the clips as they are: "
                         "--gain-db is for --mode heads or full")
    if mode == "probe" and config.feature_cache:
        raise InputError("--mode probe caches the embeddings itself: --feature-cache is for "
                         "--mode heads or full")
    config = dataclasses.replace(config, pretrained=True, joint_epochs=(
        FULL_JOINT_EPOCHS if config.joint_epochs is None else config.joint_epochs)
        if mode == "full" else 0)
    data, out = Path(data), Path(out)
    with runs.run_lock(out):
        runs.prepare(out, resume=resume, overwrite=overwrite)
        train, val, test = read_finetune_data(data, format, val_fraction, config.seed, say)
        with scaled(config):
            model = _load(source, train, streams, config)
            say(f"train: {len(train)} clips, val: {len(val)} clips, {len(train.labels)} "
                f"classes; from {source} (streams {', '.join(model.stream_names)}), "
                f"mode {mode}")
            eval_sets = {"val": val} if test is None else {"eval": test, "val": val}
            metadata = {"finetuned_from": str(source), "finetune_mode": mode}
            if mode == "probe":
                state, skipped = probe(model, train, val, out, config,
                                       key={"source": str(source)})
                report = training.write_run(model, out, config, state, train, eval_sets,
                                            str(data.resolve()), skipped, metadata)
                summaries = {"train and val": training.summarize_problems(
                    skipped, total=len(train) + len(val))}
            else:
                trainer = training.Trainer(model, train, val, out, config)
                trainer.run(resume=resume, overwrite=overwrite)
                report = training.finish_run(trainer, eval_sets, str(data.resolve()),
                                             metadata)
                summaries = trainer.skip_summary()
    if "eval" in report["evaluation"]:
        summaries["eval"] = report["evaluation"]["eval"]["skip_summary"]
    for line in report_lines(report, summaries, out):
        say(line)
    return report
