"""The training recipe: per-stream towers, then the fusion head, then (optionally) everything.

Stage 1 trains every stream's tower with its own sigmoid head (binary cross-entropy). The
towers share no parameters, so training them in one `fit` with the sum of the four stream
losses is the same as training each alone, at a quarter of the featurizing cost. Stage 2
freezes the featurizer, the towers and the stream heads, and trains the fusion head on the
concatenated embeddings. Stage 3, when asked for, fine-tunes everything jointly at a lower
learning rate. Each stage selects the epoch with the best validation mAP (clip level) and
stops early when it stops improving.

Every epoch ends with an atomic checkpoint (weights, optimizer state, and the run's state in
JSON, each written to a temporary file and renamed), so a run killed at any point resumes
from its last completed epoch with `resume=True` and continues exactly as if it had not
stopped: the batch order of each epoch depends only on the seed and the epoch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from keras_dae import metrics, scale
from keras_dae.data.feature_cache import FeatureCache
from keras_dae.data.loader import ChunkLoader, iterate_clips
from keras_dae.data.shards import ShardSet
from keras_dae.models.backbone import DEFAULT_FEATURE_MASKING

STAGES = ("towers", "fusion", "joint")


@dataclasses.dataclass
class TrainConfig:
    """The recipe's settings; defaults suit ~1,000 clips on a 2-core CPU (see README)."""

    tower_epochs: int = 10
    fusion_epochs: int = 5
    joint_epochs: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-3
    fusion_learning_rate: float = 3e-3
    joint_learning_rate: float = 1e-4
    chunk_seconds: float = 1.0
    hop_seconds: float = 0.5
    mixup: float = 0.0
    balanced: bool = False
    # SpecAugment-style masking in the towers: None keeps the model's own setting, False
    # turns it off, True sets `DEFAULT_FEATURE_MASKING` (see README for what it does here).
    feature_masking: bool | None = None
    # Directory of the on-disk cache of the weight-free (handcrafted) streams' features,
    # computed once before training (None: computed in every step). See FeatureCache.
    feature_cache: str | None = None
    patience: int = 3
    normalization_chunks: int = 512
    seed: int = 0
    # Scale (keras_dae.scale): None (float32) or "bfloat16" (Keras' mixed_bfloat16 policy; build
    # the model after `scale.set_mixed_precision("bfloat16")`); `compile(jit_compile=...)`
    # ("auto": XLA on TensorFlow and JAX, eager on PyTorch); data parallelism over every local
    # device (build the model and train inside `scale.data_parallel(batch_size)`).
    mixed_precision: str | None = None
    jit_compile: bool | str = "auto"
    data_parallel: bool = False

    def epochs(self, stage: str) -> int:
        return {"towers": self.tower_epochs, "fusion": self.fusion_epochs,
                "joint": self.joint_epochs}[stage]


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _atomic_save_weights(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".tmp.{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)


def predict_clips(model, dataset, sample_rate, chunk_seconds=1.0, hop_seconds=0.5,
                  batch_size=64, aggregate="mean"):
    """Clip-level scores: `{output: (n_clips, n_classes)}` for the fused and stream heads.

    Each clip is cut into chunks, every chunk is scored, and a clip's score is the mean (or
    max) of its chunks' scores. Clips that cannot be decoded are left out: returns the
    scores, the indices of the clips kept, and `skipped` (path -> reason).
    """
    outputs = ["fused", *model.stream_names]
    scores = {name: [] for name in outputs}
    kept, skipped = [], {}
    pending, owners = [], []

    def flush():
        if not pending:
            return
        batch = np.concatenate(pending)
        n = len(batch)
        batch = _whole_batches(batch, batch_size)
        out = model.predict(batch, batch_size=batch_size, verbose=0)
        ids = np.concatenate(owners)
        for name in outputs:
            _, clip_scores = metrics.aggregate_chunks(out[name][:n], ids, method=aggregate)
            scores[name].append(clip_scores)
        pending.clear()
        owners.clear()

    for index, chunks in iterate_clips(dataset, sample_rate, chunk_seconds, hop_seconds,
                                       skipped=skipped):
        kept.append(index)
        pending.append(chunks)
        owners.append(np.full(len(chunks), index))
        if sum(len(p) for p in pending) >= 8 * batch_size:
            flush()
    flush()
    return {name: np.concatenate(v) if v else np.zeros((0, model.num_classes))
            for name, v in scores.items()}, np.asarray(kept, dtype=int), skipped


def _whole_batches(batch: np.ndarray, batch_size: int) -> np.ndarray:
    """`batch` padded with silence to a multiple of `batch_size` rows: one compiled shape on
    JAX and TensorFlow instead of one per remainder, and batches that split evenly over the
    devices of a data-parallel run."""
    padded = -(-len(batch) // batch_size) * batch_size
    if padded == len(batch):
        return batch
    return np.concatenate([batch, np.zeros((padded - len(batch), *batch.shape[1:]), batch.dtype)])


def evaluate(model, dataset, sample_rate=None, chunk_seconds=1.0, hop_seconds=0.5,
             aggregate="mean") -> dict:
    """Clip-level metrics of the fused model and of each stream on `dataset`.

    Returns `{"mAP", "d_prime", "lwlrap", "per_class_ap", "streams": {stream: mAP},
    "n_clips", "skipped": {path: reason}}`; `mAP` is the fused model's.
    """
    sample_rate = sample_rate or model.sample_rate
    scores, kept, skipped = predict_clips(model, dataset, sample_rate, chunk_seconds,
                                          hop_seconds, aggregate=aggregate)
    targets = dataset.targets[kept]
    report = metrics.tagging_report(targets, scores["fused"], dataset.labels)
    report["streams"] = {
        name: metrics.mean_average_precision(targets, scores[name])
        for name in model.stream_names
    }
    report["skipped"] = skipped
    return report


def init_fusion_from_streams(model) -> None:
    """Starts the fusion head as the average of the stream heads' logits.

    The fusion head is linear on the concatenated embeddings, so with kernel
    `concat(W_s) / n_streams` and bias `mean(b_s)` it computes the mean of the stream heads'
    logits: stage 2 starts from that ensemble instead of from random weights.
    """
    heads = [model.stream_heads[name] for name in model.stream_names]
    kernel = np.concatenate([keras.ops.convert_to_numpy(h.kernel) for h in heads], axis=0)
    bias = np.mean([keras.ops.convert_to_numpy(h.bias) for h in heads], axis=0)
    model.fusion_head.kernel.assign(kernel / len(heads))
    model.fusion_head.bias.assign(bias)


def _check_scale(model, config: TrainConfig) -> None:
    """Refuses a model built in another precision than `config.mixed_precision`, and data
    parallelism outside `scale.data_parallel` or with a batch that does not split evenly."""
    wanted = scale.dtype_policy_name(config.mixed_precision)
    built = scale.dtype_policy_name(scale.model_precision(model))
    if wanted != built:
        raise ValueError(
            f"TrainConfig.mixed_precision={config.mixed_precision!r} but the model was built "
            f"under the {built} policy: call keras_dae.scale.set_mixed_precision("
            f"{config.mixed_precision!r}) before building it")
    if config.data_parallel:
        devices = scale.device_count()
        if devices is None:
            raise ValueError("TrainConfig.data_parallel=True: build the model and train inside "
                             "`with keras_dae.scale.data_parallel(batch_size):`")
        if config.batch_size % devices:
            raise ValueError(f"batch size {config.batch_size} does not divide by the {devices} "
                             f"devices; use a multiple of {devices}")


def _check_shards(shards: ShardSet, model, config: TrainConfig) -> None:
    """Refuses shards cut otherwise than the model and the recipe expect."""
    wanted = (model.sample_rate, config.chunk_seconds, config.hop_seconds)
    cut = (shards.sample_rate, shards.chunk_seconds, shards.hop_seconds)
    if wanted != cut:
        raise ValueError(f"{shards.directory}: shards hold (sample rate, chunk s, hop s) = {cut}, "
                         f"the model and the config want {wanted}; write them again")
    if len(shards.labels) != model.num_classes:
        raise ValueError(f"{shards.directory}: {len(shards.labels)} classes, the model has "
                         f"{model.num_classes}")
    if config.feature_cache:
        raise ValueError("the feature cache is built from audio files, not from shards: "
                         "use one or the other")


class _EpochEnd(keras.callbacks.Callback):
    """Validation mAP, best-epoch selection, early stopping and the atomic checkpoint."""

    def __init__(self, trainer, stage):
        super().__init__()
        self.trainer, self.stage = trainer, stage

    def on_epoch_end(self, epoch, logs=None):
        self.trainer._end_of_epoch(self.stage, epoch, logs or {})
        if self.trainer.state["wait"] >= self.trainer.config.patience:
            self.model.stop_training = True


class Trainer:
    """Runs the recipe for one model and one dataset into `run_dir`.

    `train` is a `ClipDataset` (chunks decoded from the audio files every epoch) or a
    `ShardSet` (chunks decoded once, `keras_dae.data.write_shards`); `val` a `ClipDataset`.

    `run_dir` gets `checkpoint/` (the latest epoch: weights, optimizer state, state.json),
    `best.weights.h5` (the best validation epoch of the current stage), `logs/`
    (TensorBoard), and at the end `preset/`, `report.json` and plots.
    """

    def __init__(self, model, train, val, run_dir, config: TrainConfig | None = None,
                 verbose: int = 1):
        self.model, self.train, self.val = model, train, val
        self.run_dir = Path(run_dir)
        self.config = config or TrainConfig()
        self.verbose = verbose
        self.ckpt_dir = self.run_dir / "checkpoint"
        self.state = {"stage": STAGES[0], "epoch": -1, "best_map": -1.0, "best_epoch": -1,
                      "wait": 0, "history": [], "normalized": False,
                      "config": dataclasses.asdict(self.config)}
        self.feature_cache: FeatureCache | None = None
        self.fit_model = model  # what `fit` trains: the model, or its feature-input twin
        _check_scale(model, self.config)
        if isinstance(train, ShardSet):
            _check_shards(train, model, self.config)

    # -- checkpointing -------------------------------------------------------------------
    def _check_writable(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        probe = self.ckpt_dir / ".write_probe"
        try:
            probe.write_bytes(b"0" * 1024)
            probe.unlink()
        except OSError as error:
            raise OSError(f"{self.run_dir}: cannot write checkpoints there ({error})") from None

    def _save_checkpoint(self) -> None:
        _atomic_save_weights(self.model, self.ckpt_dir / "model.weights.h5")
        opt = self.fit_model.optimizer
        if opt is not None and opt.built:
            arrays = {f"v{i}": keras.ops.convert_to_numpy(v) for i, v in
                      enumerate(opt.variables)}
            tmp = self.ckpt_dir / ".tmp.optimizer.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, self.ckpt_dir / "optimizer.npz")
        _atomic_write_text(self.ckpt_dir / "state.json", json.dumps(self.state, indent=1))

    def _restore_checkpoint(self) -> bool:
        state_path = self.ckpt_dir / "state.json"
        if not state_path.is_file():
            return False
        self.state = json.loads(state_path.read_text())
        self.model.load_weights(self.ckpt_dir / "model.weights.h5")
        return True

    def _restore_optimizer(self) -> None:
        path = self.ckpt_dir / "optimizer.npz"
        if not path.is_file():
            return
        saved = np.load(path)
        opt = self.fit_model.optimizer
        opt.build(self.fit_model.trainable_variables)
        if len(saved.files) != len(opt.variables):
            return  # a checkpoint from another stage's optimizer
        for i, v in enumerate(opt.variables):
            v.assign(saved[f"v{i}"])

    # -- the recipe ----------------------------------------------------------------------
    def _adapt_normalization(self) -> None:
        """Per-feature mean and variance of each stream, from a sample of training chunks."""
        loader = self._loader(shuffle=True, mixup=0.0, balanced=False)
        wanted = self.config.normalization_chunks
        batches, seen = [], 0
        for i in range(len(loader)):
            x, _ = loader[i]
            batches.append(x)
            seen += len(x)
            if seen >= wanted:
                break
        waveforms = np.concatenate(batches)[:wanted]
        features = {name: [] for name in self.model.stream_names}
        for start in range(0, len(waveforms), 64):
            out = self.model.featurizer(waveforms[start:start + 64])
            for name in features:
                features[name].append(keras.ops.convert_to_numpy(out[name]))
        for name, parts in features.items():
            self.model.backbone.towers[name].normalization.adapt(np.concatenate(parts))

    def _loader(self, shuffle=True, mixup=None, balanced=None):
        c = self.config
        if isinstance(self.train, ShardSet):  # chunks decoded once (keras-dae shard)
            from keras_dae.data.shard_loader import ShardLoader

            return ShardLoader(
                self.train, batch_size=c.batch_size, shuffle=shuffle, seed=c.seed,
                target_names=("fused", *self.model.stream_names),
                mixup=c.mixup if mixup is None else mixup,
                balanced=c.balanced if balanced is None else balanced,
                drop_last=c.data_parallel)
        return ChunkLoader(
            self.train, sample_rate=self.model.sample_rate, batch_size=c.batch_size,
            chunk_seconds=c.chunk_seconds, hop_seconds=c.hop_seconds, shuffle=shuffle,
            seed=c.seed, target_names=("fused", *self.model.stream_names),
            mixup=c.mixup if mixup is None else mixup,
            balanced=c.balanced if balanced is None else balanced,
            feature_cache=self.feature_cache,
            include_waveform=self.fit_model is self.model or "waveform" in self.fit_model.input,
            drop_last=c.data_parallel,  # every batch must split evenly over the devices
        )

    def _use_feature_cache(self) -> None:
        """Builds (or reopens) the feature cache and the model that takes its features."""
        loader = self._loader(shuffle=False, mixup=0.0, balanced=False)
        self.feature_cache = FeatureCache.build(loader, self.model.featurizer,
                                                self.config.feature_cache,
                                                verbose=bool(self.verbose))
        self.fit_model = self.model.with_feature_inputs(self.feature_cache.streams)

    def _compile(self, stage: str) -> None:
        model, c = self.model, self.config
        streams = model.stream_names
        trainable_backbone = stage != "fusion"
        model.featurizer.trainable = trainable_backbone
        model.backbone.trainable = trainable_backbone
        for head in model.stream_heads.values():
            head.trainable = trainable_backbone
        model.fusion_head.trainable = stage != "towers"
        weights = {"fused": 0.0 if stage == "towers" else 1.0,
                   **{s: 0.0 if stage == "fusion" else 1.0 for s in streams}}
        lr = {"towers": c.learning_rate, "fusion": c.fusion_learning_rate,
              "joint": c.joint_learning_rate}[stage]
        self.fit_model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss={name: "binary_crossentropy" for name in ("fused", *streams)},
            loss_weights=weights,
            jit_compile=c.jit_compile,
        )

    def _end_of_epoch(self, stage, epoch, logs) -> None:
        report = evaluate(self.model, self.val, chunk_seconds=self.config.chunk_seconds,
                          hop_seconds=self.config.hop_seconds)
        score = report["mAP"] if stage != "towers" else float(np.mean(
            list(report["streams"].values())))
        entry = {"stage": stage, "epoch": epoch, "loss": float(logs.get("loss", np.nan)),
                 "val_map": report["mAP"], "val_streams": report["streams"],
                 "time": time.time()}
        st = self.state
        st["history"].append(entry)
        st["epoch"] = epoch
        if score > st["best_map"]:
            st["best_map"], st["best_epoch"], st["wait"] = score, epoch, 0
            _atomic_save_weights(self.model, self.run_dir / "best.weights.h5")
        else:
            st["wait"] += 1
        if self.verbose:
            streams = " ".join(f"{k}={v:.3f}" for k, v in report["streams"].items())
            print(f"[{stage}] epoch {epoch + 1}: loss {entry['loss']:.4f}  val mAP fused "
                  f"{report['mAP']:.3f}  {streams}", flush=True)
        self._save_checkpoint()

    def _callbacks(self, stage, loader) -> list:
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        callbacks = [loader.epoch_callback(), _EpochEnd(self, stage),
                     keras.callbacks.CSVLogger(str(logs / f"{stage}.csv"), append=True)]
        # Keras' TensorBoard callback writes through TensorFlow's summary ops and the
        # tensorboard package; without them (e.g. a JAX-only install) the CSV log remains.
        if importlib.util.find_spec("tensorboard") and importlib.util.find_spec("tensorflow"):
            callbacks.append(keras.callbacks.TensorBoard(str(logs / stage)))
        return callbacks

    def run(self, resume: bool = False) -> dict:
        """Trains all stages (resuming from the checkpoint when asked); returns the history."""
        self._check_writable()
        if self.config.feature_masking is not None:
            masking = DEFAULT_FEATURE_MASKING if self.config.feature_masking else None
            for tower in self.model.backbone.towers.values():
                tower.set_feature_masking(masking)
        restored = resume and self._restore_checkpoint()
        if resume and not restored and self.verbose:
            print(f"No checkpoint in {self.ckpt_dir}; starting from scratch.", flush=True)
        if not self.state["normalized"]:
            keras.utils.set_random_seed(self.config.seed)
            self._adapt_normalization()
            self.state["normalized"] = True
        if self.config.feature_cache:
            self._use_feature_cache()
        start_stage = STAGES.index(self.state["stage"])
        for stage in STAGES[start_stage:]:
            epochs = self.config.epochs(stage)
            if epochs <= 0:
                continue
            if self.state["stage"] != stage:  # a fresh stage
                self.state.update(stage=stage, epoch=-1, best_map=-1.0, best_epoch=-1, wait=0)
            initial_epoch = self.state["epoch"] + 1
            finished = initial_epoch >= epochs or (
                initial_epoch > 0 and self.state["wait"] >= self.config.patience)
            if stage == "fusion" and initial_epoch == 0:
                init_fusion_from_streams(self.model)
            self._compile(stage)
            if not finished:
                if initial_epoch > 0:
                    self._restore_optimizer()
                loader = self._loader()
                self.fit_model.fit(
                    loader, epochs=epochs, initial_epoch=initial_epoch,
                    verbose=self.verbose, callbacks=self._callbacks(stage, loader),
                    shuffle=False,  # the loader's order depends on seed and epoch only
                )
            # Select the stage's best epoch before the next stage builds on it.
            if (self.run_dir / "best.weights.h5").is_file():
                self.model.load_weights(self.run_dir / "best.weights.h5")
            next_index = STAGES.index(stage) + 1
            self.state.update(stage=STAGES[next_index] if next_index < len(STAGES) else "done",
                              epoch=-1, best_map=-1.0, best_epoch=-1, wait=0)
            self._save_checkpoint()
        if self.state["stage"] != "done":  # the last stages had no epochs
            self.state.update(stage="done", epoch=-1, best_map=-1.0, best_epoch=-1, wait=0)
            self._save_checkpoint()
        self.model.featurizer.trainable = True
        self.model.backbone.trainable = True
        # The trainable set changed since the last compile: a data-parallel JAX predict
        # function compiled before holds the old set's shardings, so build it afresh.
        self.model.predict_function = None
        return self.state


def write_plots(state: dict, reports: dict, labels: list[str], out_dir: Path) -> list[Path]:
    """Training curves, AP per class, and each stream's mAP beside the fused model's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    history = state["history"]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for stage in STAGES:
        rows = [h for h in history if h["stage"] == stage]
        if not rows:
            continue
        x = [i for i, h in enumerate(history) if h["stage"] == stage]
        ax_loss.plot(x, [h["loss"] for h in rows], "o-", label=stage)
        ax_map.plot(x, [h["val_map"] for h in rows], "o-", label=f"{stage}: fused")
        if stage == "towers":
            for name in rows[0]["val_streams"]:
                ax_map.plot(x, [h["val_streams"][name] for h in rows], ".--", label=name)
    ax_loss.set(title="training loss", xlabel="epoch (all stages)")
    ax_map.set(title="validation mAP", xlabel="epoch (all stages)")
    ax_loss.legend()
    ax_map.legend(fontsize=7)
    path = out_dir / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    split, report = next(iter(reports.items()))
    ap = report["per_class_ap"]
    names = [n for n in labels if ap.get(n) is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4), constrained_layout=True)
    ax.bar(range(len(names)), [ap[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set(title=f"AP per class ({split})", ylim=(0, 1))
    path = out_dir / "ap_per_class.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    bars = {**report["streams"], "fused": report["mAP"]}
    ax.bar(list(bars), list(bars.values()),
           color=["0.6"] * (len(bars) - 1) + ["tab:orange"])
    for i, v in enumerate(bars.values()):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set(title=f"mAP per stream and fused ({split})", ylim=(0, 1))
    path = out_dir / "streams_vs_fused.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def finish_run(trainer: Trainer, eval_sets: dict, training_data: str) -> dict:
    """Evaluates on each named split, writes the preset, report.json and the plots."""
    from keras_dae import zoo

    model, run_dir = trainer.model, trainer.run_dir
    reports = {split: evaluate(model, data, chunk_seconds=trainer.config.chunk_seconds,
                               hop_seconds=trainer.config.hop_seconds)
               for split, data in eval_sets.items()}
    summary = {split: {"mAP": r["mAP"], "streams": r["streams"], "n_clips": r["n_clips"]}
               for split, r in reports.items()}
    # A preset is float32 whatever the training precision (variables are float32 either
    # way); `scale.with_precision` runs it in bfloat16 again.
    preset_model = model if scale.model_precision(model) is None else scale.with_precision(
        model, None)
    zoo.save(preset_model, run_dir / "preset", labels=trainer.train.labels, mids=trainer.train.mids,
             metadata={"training_data": training_data, "metrics": summary,
                       "labels_source": training_data,
                       "train_config": dataclasses.asdict(trainer.config)})
    report = {"config": dataclasses.asdict(trainer.config), "training_data": training_data,
              "backend": keras.backend.backend(), "history": trainer.state["history"],
              "evaluation": reports}
    _atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))
    try:
        write_plots(trainer.state, reports, trainer.train.labels, run_dir)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'keras-dae[plot]')")
    return report
