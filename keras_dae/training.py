"""The training recipe: per-stream towers, then the fusion head, then everything together.

Stage 1 trains every stream's tower with its own sigmoid head (binary cross-entropy). The
towers share no parameters, so training them in one `fit` with the sum of the four stream
losses is the same as training each alone, at a quarter of the featurizing cost. Stage 2
freezes the featurizer, the towers and the stream heads, and trains the fusion head on the
concatenated embeddings. Stage 3 trains everything jointly (the fused and the four streams'
losses) at a lower learning rate, `train_config.JOINT_EPOCHS` epochs unless
`TrainConfig.joint_epochs` says. Each stage selects the epoch with the best validation mAP
(clip level) and stops early when it stops improving; stages 2 and 3 also score the model
they start from (the mean of the stream heads' logits; stage 2's choice) and keep it when no
epoch beats it.

Every epoch ends with a checkpoint: the weights, the optimizer's and the random generators'
state in files named by a sequence number, then `state.json`, which names them, written last.
Every file is written to a temporary name, flushed to disk and renamed, so `state.json` always
names a complete, consistent checkpoint: a run killed at any moment (SIGKILL included) resumes
from its last completed epoch with `resume=True` and continues exactly as if it had not
stopped: the batch order of each epoch depends only on the seed and the epoch. A write that
fails (disk full, say) leaves the previous checkpoint as it was, and `Trainer.preflight`
refuses to start when the output directory is not writable or its disk lacks room for the
checkpoints (estimated from the model's size).

In a multi-process run (`keras_dae.scale.initialize_multiprocess`, training data from shards)
every process trains, evaluates and takes the same decisions (best epoch, early stopping),
but only process 0 writes: checkpoints, logs, the preset, the report and the plots. The run
directory must be on a filesystem every process sees (the others read the checkpoint on
resume, and each stage's best weights at its end).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np

from keras_dae import atomic as _atomic
from keras_dae import concurrency, metrics, runs, scale
from keras_dae.audio import AudioDecodeError, summarize_problems
from keras_dae.clip_pipeline import POOLING, ClipPipeline
from keras_dae.data.feature_cache import FeatureCache
from keras_dae.data.loader import ChunkLoader
from keras_dae.data.pair_loader import ShardClips
from keras_dae.data.shards import ShardSet
from keras_dae.models.backbone import DEFAULT_FEATURE_MASKING
from keras_dae.runs import PreflightError
from keras_dae.train_config import PRETRAIN_ONLY, TrainConfig
from keras_dae.validation import InputError

logger = logging.getLogger(__name__)

STAGES = ("towers", "fusion", "joint")


class CheckpointError(_atomic.OutputError):
    """A checkpoint could not be written or read; the message names the file and the cause."""


# A checkpoint's files have new names: what stays whole is the previous checkpoint.
_CHECKPOINT_INTACT = "the previous version is intact"


def atomic_write(path: Path, write) -> None:
    """`keras_dae.atomic.atomic_write` raising `CheckpointError` (see there)."""
    _atomic.atomic_write(path, write, CheckpointError, intact=_CHECKPOINT_INTACT)


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _atomic_save_weights(model: keras.Model, path: Path) -> None:
    _atomic.save_weights(model, path, CheckpointError, intact=_CHECKPOINT_INTACT)


@contextlib.contextmanager
def _chief_directory(directory: Path):
    """`directory` on process 0; on the others a temporary directory, removed after the block.

    With variables spread over several processes, Keras' saving takes steps that every
    process must take (it checks that their values agree), so every process saves and only
    process 0 keeps what it wrote.
    """
    if scale.is_chief():
        yield Path(directory)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="keras_dae-not-chief-") as scratch:
        yield Path(scratch)


def _save_weights(model: keras.Model, path: Path) -> None:
    """`_atomic_save_weights` by every process, kept by process 0 (`_chief_directory`)."""
    with _chief_directory(path.parent) as directory:
        _atomic_save_weights(model, directory / path.name)


def _seed_variables(model) -> list:
    """The state of the model's random generators (dropout), not part of its weights."""
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]


def weight_bytes(model) -> int:
    """Bytes of the model's variables (what a `.weights.h5` file holds, less its overhead)."""
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(v.dtype).itemsize
                   for v in model.weights))


def predict_clips(model, dataset, sample_rate, chunk_seconds=1.0, hop_seconds=0.5,
                  batch_size=64, aggregate="mean", skipped=None, max_chunks=256):
    """Clip-level scores: `{output: (n_clips, n_classes)}` for the fused and stream heads.

    Each clip is cut into chunks, every chunk is scored, and a clip's score is the mean (or
    max) of its chunks' scores (`keras_dae.clip_pipeline`). Safe to call from several threads
    with one model (`concurrency.predict`). Batches are padded to `batch_size` rows: one
    compiled shape, split evenly over the devices of a data-parallel run. Chunks are
    streamed: an hour-long file needs no more memory than `max_chunks` chunks. Clips that
    cannot be decoded (even after some of their chunks were scored) are left out: returns the
    scores, the indices of the clips kept, and `skipped` (path -> reason; pass a dict to
    collect into it, and files already in it are left out without being opened or reported
    again).
    """
    if aggregate not in POOLING:
        raise InputError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    outputs = ["fused", *model.stream_names]
    skipped = {} if skipped is None else skipped
    pipeline = ClipPipeline(
        lambda batch: concurrency.predict(model, batch, batch_size=batch_size), sample_rate,
        chunk_seconds, hop_seconds, batch_size, keep_chunks=False, max_chunks=max_chunks)
    rows = {name: [] for name in outputs}
    kept = []
    for clip in pipeline.run(dataset.paths, skip=lambda path: str(path) in skipped):
        if clip.error is not None:
            error = clip.error
            reason = error.problem if isinstance(error, AudioDecodeError) else str(error)
            logger.warning("keras_dae: skipping %s: %s", clip.source, reason)
            skipped[clip.source] = reason
            continue
        kept.append(clip.index)
        for name in outputs:
            rows[name].append(clip.pooled(name, aggregate))
    scores = {name: np.stack(rows[name]) if kept else np.zeros((0, model.num_classes))
              for name in outputs}
    return scores, np.asarray(kept, dtype=int), skipped


def evaluate(model, dataset, sample_rate=None, chunk_seconds=1.0, hop_seconds=0.5,
             aggregate="mean", skipped=None) -> dict:
    """Clip-level metrics of the fused model and of each stream on `dataset`.

    Returns `{"mAP", "d_prime", "lwlrap", "per_class_ap", "streams": {stream: mAP},
    "n_clips", "skipped": {path: reason}, "skip_summary"}`; `mAP` is the fused model's,
    computed on the clips that decode (`n_clips`); `skip_summary` says in one line how many
    files were skipped and why. Raises `ValueError` when no clip decodes.
    """
    sample_rate = sample_rate or model.sample_rate
    skipped = {} if skipped is None else skipped
    scores, kept, skipped = predict_clips(model, dataset, sample_rate, chunk_seconds,
                                          hop_seconds, aggregate=aggregate, skipped=skipped)
    mine = {str(p): skipped[str(p)] for p in dataset.paths if str(p) in skipped}
    if len(kept) == 0:
        raise InputError(f"no clip of the {len(dataset)} could be decoded ("
                         f"{summarize_problems(mine, total=len(dataset))})")
    targets = dataset.targets[kept]
    report = metrics.tagging_report(targets, scores["fused"], dataset.labels)
    report["streams"] = {
        name: metrics.mean_average_precision(targets, scores[name])
        for name in model.stream_names
    }
    report["skipped"] = mine
    report["skip_summary"] = summarize_problems(mine, total=len(dataset))
    return report


def report_text(report: dict, split: str) -> str:
    """`evaluate`'s report as lines for people: the fused metrics, each stream's mAP, the
    skipped files."""
    d_prime = report["d_prime"] if report["d_prime"] is None else round(report["d_prime"], 3)
    lines = [f"{split}: {report['n_clips']} clips  mAP {report['mAP']:.4f}  d' {d_prime}"
             f"  lwlrap {report['lwlrap']:.4f}"]
    lines += [f"  stream {name:<12} mAP {value:.4f}" for name, value in report["streams"].items()]
    lines += [report["skip_summary"]]
    lines += [f"  {path}: {reason}" for path, reason in report["skipped"].items()]
    return "\n".join(lines)


def fusion_from_streams(model) -> tuple[np.ndarray, np.ndarray]:
    """The fusion head's `(kernel, bias)` that computes the mean of the stream heads' logits.

    The fusion head is linear on the concatenated embeddings, so with kernel
    `concat(W_s) / n_streams` and bias `mean(b_s)` it computes the mean of the stream heads'
    logits: the ensemble the fusion stage starts from.
    """
    heads = [model.stream_heads[name] for name in model.stream_names]
    kernel = np.concatenate([keras.ops.convert_to_numpy(h.kernel) for h in heads], axis=0)
    bias = np.mean([keras.ops.convert_to_numpy(h.bias) for h in heads], axis=0)
    return kernel / len(heads), bias


def init_fusion_from_streams(model) -> None:
    """Starts the fusion head as the average of the stream heads' logits
    (`fusion_from_streams`): stage 2 starts from that ensemble instead of from random
    weights."""
    kernel, bias = fusion_from_streams(model)
    model.fusion_head.kernel.assign(kernel)
    model.fusion_head.bias.assign(bias)


def _check_scale(model, config: TrainConfig) -> None:
    """Refuses a model built in another precision than `config.mixed_precision`, and data
    parallelism outside `scale.data_parallel` or with a batch that does not split evenly."""
    wanted = scale.dtype_policy_name(config.mixed_precision)
    built = scale.dtype_policy_name(scale.model_precision(model))
    if wanted != built:
        raise InputError(
            f"TrainConfig.mixed_precision={config.mixed_precision!r} but the model was built "
            f"under the {built} policy: call keras_dae.scale.set_mixed_precision("
            f"{config.mixed_precision!r}) before building it")
    if config.data_parallel:
        devices = scale.device_count()
        if devices is None:
            raise InputError("TrainConfig.data_parallel=True: build the model and train inside "
                             "`with keras_dae.scale.data_parallel(batch_size):`")
        if config.batch_size % devices:
            raise InputError(f"batch size {config.batch_size} does not divide by the {devices} "
                             f"devices; use a multiple of {devices}")


def _from_shards(data) -> bool:
    """Whether `data` is chunks decoded once (shards), not audio files."""
    return isinstance(data, (ShardSet, ShardClips))


def _check_processes(train, config: TrainConfig) -> None:
    """Refuses a multi-process run without data parallelism or with audio files (not shards)
    for training data."""
    processes = scale.process_count()
    if processes == 1:
        return
    if not config.data_parallel:
        raise InputError(f"a run of {processes} processes trains with data parallelism: "
                         "TrainConfig(data_parallel=True), inside "
                         "`with keras_dae.scale.data_parallel(batch_size):`")
    if not _from_shards(train):
        raise InputError(
            f"a run of {processes} processes reads its training chunks from shards, each "
            "process its part of every batch: write them once with `keras-dae shard --data "
            "DIR --out SHARDS` (keras_dae.data.write_shards) and train with --shards SHARDS")


_COLLECTIVE_FAILURES = ("gloo", "nccl", "all-reduce", "allreduce", "collective",
                        "connection reset", "socket closed")


def _stopped_peer_error(error: BaseException) -> BaseException:
    """A `ProcessGroupError` that says what a failed collective most likely means (another
    process stopped), or `error` itself when it is something else."""
    text = " ".join(str(error).split())
    if not any(word in text.lower() for word in _COLLECTIVE_FAILURES):
        return error
    return scale.ProcessGroupError(
        f"a step shared by the {scale.process_count()} processes failed ({text[:300]}): "
        "another process most likely stopped; see its output, then start every process "
        "again with --resume")


def _check_shards(shards: ShardSet, model, config: TrainConfig) -> None:
    """Refuses shards cut otherwise than the model and the recipe expect."""
    wanted = (model.sample_rate, config.chunk_seconds, config.hop_seconds)
    cut = (shards.sample_rate, shards.chunk_seconds, shards.hop_seconds)
    if wanted != cut:
        raise InputError(f"{shards.directory}: shards hold (sample rate, chunk s, hop s) = {cut}, "
                         f"the model and the config want {wanted}; write them again")
    if len(shards.labels) != model.num_classes:
        raise InputError(f"{shards.directory}: {len(shards.labels)} classes, the model has "
                         f"{model.num_classes}")
    if config.feature_cache:
        raise InputError("the feature cache is built from audio files, not from shards: "
                         "use one or the other")


@contextlib.contextmanager
def claim_run_dir(run_dir, resume: bool = False, overwrite: bool = False, reopen=None):
    """`keras_dae.runs.run_lock` and `prepare` of `run_dir` for the block: on process 0 only
    in a multi-process run (the others wait for it, and share its refusal). `reopen(run_dir)`,
    when given, is called under the lock before `prepare` if `resume` finds a finished run: it
    may turn its checkpoint back into one to continue (or raise `RunError` saying why not)."""
    with contextlib.ExitStack() as stack:
        def claim():
            stack.enter_context(runs.run_lock(run_dir))
            if resume and reopen is not None and runs.is_finished(run_dir):
                reopen(Path(run_dir))
            runs.prepare(run_dir, resume=resume, overwrite=overwrite)

        scale.run_on_chief("prepare the run directory", claim)
        yield


def raise_for_processes(error: BaseException) -> None:
    """In a multi-process run: tells the other processes that this one failed (they stop,
    saying so), and raises a `ProcessGroupError` that explains a failed shared step
    (another process stopped) instead of `error`. Does nothing in a single process."""
    if scale.process_count() == 1:
        return
    scale.report_failure(error)
    if isinstance(error, scale.ProcessGroupError):
        return
    explained = _stopped_peer_error(error)
    if explained is not error:
        raise explained from error


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

    `run_dir` gets `checkpoint/` (the latest epoch: `state.json` and the weights, optimizer
    state and best weights of the current stage that it names), `logs/` (CSV, TensorBoard),
    and at the end `preset/`, `report.json` and plots. Files of the datasets that cannot be
    read are skipped, reported once and listed in `trainer.skipped` (path -> reason);
    `skip_summary()` says how many and why.
    """

    #: Free disk space asked for beyond the estimate of the checkpoints' size.
    DISK_MARGIN_BYTES = 16 * 2**20
    #: The recipe's stages, in order (what a checkpoint's `state.json` may name).
    STAGES = STAGES

    def __init__(self, model, train, val, run_dir, config: TrainConfig | None = None,
                 verbose: int = 1):
        self.model, self.train, self.val = model, train, val
        self.run_dir = Path(run_dir)
        config = config or TrainConfig()
        if "joint" in self.STAGES:  # its default filled in: the report says what was done
            config = dataclasses.replace(config, joint_epochs=config.epochs("joint"))
        self.config = config
        self.verbose = verbose
        if "pretrain" not in self.STAGES and any(getattr(self.config, f) for f in PRETRAIN_ONLY):
            names = f"{', '.join(PRETRAIN_ONLY[:-1])} and {PRETRAIN_ONLY[-1]}"
            flags = ", ".join("--" + f.replace("_", "-") for f in PRETRAIN_ONLY)
            raise InputError(f"TrainConfig.{names} are for pretraining (keras-dae pretrain "
                             f"{flags}); a supervised run augments with masking or mixup")
        self.ckpt_dir = self.run_dir / "checkpoint"
        self.skipped: dict[str, str] = {}
        self.state = {"stage": self.STAGES[0], "epoch": -1, "best_map": -1.0, "best_epoch": -1,
                      "wait": 0, "history": [], "normalized": False, "sequence": 0,
                      "files": {}, "config": dataclasses.asdict(self.config)}
        self.feature_cache: FeatureCache | None = None
        self.fit_model = model  # what `fit` trains: the model, or its feature-input twin
        _check_scale(model, self.config)
        _check_processes(train, self.config)
        if isinstance(train, ShardSet):
            _check_shards(train, model, self.config)

    # -- before training -----------------------------------------------------------------
    def checkpoint_bytes(self) -> int:
        """Disk space the run needs at its peak, estimated from the model's size.

        A checkpoint holds the weights, the best weights of the stage and the optimizer's
        state (Adam: two values per trainable weight); while one is written the previous one
        still exists; the preset at the end holds the weights once more. Plus a margin.
        """
        weights = weight_bytes(self.model)
        trainable = int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(v.dtype).itemsize
                            for v in self.model.trainable_weights))
        checkpoint = 2 * weights + 2 * trainable
        return 2 * checkpoint + weights + self.DISK_MARGIN_BYTES

    def preflight(self) -> None:
        """Refuses to start, with `PreflightError`, what would fail later.

        The run directory must be creatable and writable, its disk must have room for the
        checkpoints (`checkpoint_bytes`), and at least one training and one validation file
        must be readable audio (headers are read; the bad ones are recorded in `skipped`).
        In a multi-process run only process 0, which writes, checks the directory.
        """
        from keras_dae.audio import audio_info

        if scale.is_chief():  # the one process that writes
            self._preflight_writes()
        for split, dataset in (("training", self.train), ("validation", self.val)):
            if _from_shards(dataset):  # decoded when it was written
                self.skipped.update(dataset.skipped)
                if len(dataset) == 0:
                    raise PreflightError(f"the {split} shards hold no chunks")
                continue
            readable = 0
            for path in dataset.paths:
                if str(path) in self.skipped:
                    continue
                try:
                    audio_info(path)
                    readable += 1
                except AudioDecodeError as error:
                    logger.warning("keras_dae: skipping %s: %s", path, error.problem)
                    self.skipped[str(path)] = error.problem
            if readable == 0:
                raise PreflightError(
                    f"none of the {len(dataset)} {split} files is readable audio ("
                    + summarize_problems(self._reasons(dataset), total=len(dataset)) + ")")

    def _preflight_writes(self) -> None:
        """`preflight`'s checks of the run directory: creatable, writable, room on its disk."""
        import shutil

        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PreflightError(f"{self.run_dir}: cannot create the run directory "
                                 f"({error.strerror or error})") from None
        probe = self.ckpt_dir / f".write-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"0" * 4096)
        except OSError as error:
            raise PreflightError(f"{self.run_dir}: cannot write there "
                                 f"({error.strerror or error})") from None
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
        need = self.checkpoint_bytes()
        free = shutil.disk_usage(self.ckpt_dir).free
        if free < need:
            mib = 2**20
            raise PreflightError(
                f"{self.run_dir}: {free / mib:.1f} MiB free on its disk, but the checkpoints "
                f"need about {need / mib:.1f} MiB (weights {weight_bytes(self.model) / mib:.1f}"
                " MiB, kept with the best weights, the optimizer state and the previous "
                "checkpoint); free some space or choose another output directory")

    def _reasons(self, dataset) -> dict[str, str]:
        if _from_shards(dataset):
            return dict(dataset.skipped)
        return {str(p): self.skipped[str(p)] for p in dataset.paths if str(p) in self.skipped}

    def skip_summary(self) -> dict[str, str]:
        """`{"train": ..., "val": ...}`: one line each, how many files were skipped and why."""
        def files(data):  # clips, for shards: those written plus those skipped
            if _from_shards(data):
                return data.n_clips + len(data.skipped)
            return len(data)

        return {name: summarize_problems(self._reasons(data), total=files(data))
                for name, data in (("train", self.train), ("val", self.val))}

    # -- checkpointing -------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        """Writes the checkpoint's files, then `state.json` naming them (the commit). In a
        multi-process run process 0 writes them; every process's `state` names them."""
        sequence = int(self.state.get("sequence", 0)) + 1
        files = dict(self.state.get("files") or {})
        files["weights"] = f"model-{sequence:06d}.weights.h5"
        files["variables"] = f"variables-{sequence:06d}.npz"
        state = {**self.state, "sequence": sequence, "files": files}
        _save_weights(self.model, self.ckpt_dir / files["weights"])
        if scale.is_chief():
            self._write_checkpoint(state)
        self.state = state

    def _write_checkpoint(self, state: dict) -> None:
        """The checkpoint's variables (random generators, optimizer), then `state.json`."""
        files = state["files"]
        arrays = {f"seed/{v.path}": keras.ops.convert_to_numpy(v)
                  for v in _seed_variables(self.model)}
        opt = getattr(self.fit_model, "optimizer", None)  # none yet in a run of no epochs
        if opt is not None and opt.built:
            arrays.update({f"optimizer/{i}": keras.ops.convert_to_numpy(v)
                           for i, v in enumerate(opt.variables)})
        atomic_write(self.ckpt_dir / files["variables"],
                     lambda tmp: np.savez(Path(tmp), **arrays))
        _atomic_write_text(self.ckpt_dir / "state.json", json.dumps(state, indent=1))
        self._remove_stale_files(state)

    def _remove_stale_files(self, state: dict) -> None:
        """Removes checkpoint files that `state` (`state.json`) does not name (older
        checkpoints, and files of a checkpoint that was being written when a run was
        killed)."""
        keep = {"state.json", *(state.get("files") or {}).values()}
        for path in self.ckpt_dir.iterdir():
            if path.name not in keep and path.is_file() and (
                    path.name.startswith((".tmp-", "model-", "variables-", "best-"))):
                try:
                    path.unlink()
                except OSError:  # pragma: no cover - removed by someone else
                    pass

    def _checkpoint_file(self, key: str) -> Path | None:
        name = (self.state.get("files") or {}).get(key)
        if name is None:  # a checkpoint written before files were versioned
            name = {"weights": "model.weights.h5", "variables": "optimizer.npz"}.get(key)
        return None if name is None else self.ckpt_dir / name

    def _restore_checkpoint(self) -> bool:
        state_path = self.ckpt_dir / "state.json"
        if not state_path.is_file():
            return False
        try:
            state = json.loads(state_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{state_path}: unreadable ({error}); remove the checkpoint "
                                  "directory to start again") from None
        if state.get("stage") not in (*self.STAGES, "done"):
            raise CheckpointError(f"{state_path}: unknown stage {state.get('stage')!r}; remove "
                                  "the checkpoint directory to start again")
        self.state = state
        weights = self._checkpoint_file("weights")
        try:
            self.model.load_weights(weights)
        except Exception as error:
            raise CheckpointError(f"{weights}: cannot load the checkpoint's weights "
                                  f"({' '.join(str(error).split())})") from None
        saved = self._load_variables()
        for v in _seed_variables(self.model):
            if f"seed/{v.path}" in saved:
                v.assign(saved[f"seed/{v.path}"])
        if scale.is_chief():
            self._remove_stale_files(state)
        return True

    def _load_variables(self) -> dict:
        path = self._checkpoint_file("variables")
        if path is None or not path.is_file():
            return {}
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {k: saved[k] for k in saved.files}
        except Exception as error:
            raise CheckpointError(f"{path}: cannot load the checkpoint's optimizer state "
                                  f"({' '.join(str(error).split())})") from None
        if any(k.startswith("v") and k[1:].isdigit() for k in arrays):  # the older layout
            arrays = {f"optimizer/{k[1:]}": v for k, v in arrays.items()}
        return arrays

    def _restore_optimizer(self) -> None:
        saved = {k: v for k, v in self._load_variables().items() if k.startswith("optimizer/")}
        if not saved:
            return
        opt = self.fit_model.optimizer
        opt.build(self.fit_model.trainable_variables)
        if len(saved) != len(opt.variables):
            return  # a checkpoint from another stage's optimizer
        for i, v in enumerate(opt.variables):
            v.assign(saved[f"optimizer/{i}"])

    # -- the recipe ----------------------------------------------------------------------
    def _adapt_normalization(self) -> dict:
        """Per-feature mean and variance of each stream, from a sample of training chunks;
        returns those chunks' features, `{stream: (chunks, frames, features)}`."""
        # Whole batches, as one process reads them: every process computes the same statistics.
        loader = self._loader(shuffle=True, mixup=0.0, balanced=False, whole_batches=True,
                              gain_db=0.0)
        wanted = self.config.normalization_chunks
        batches, seen = [], 0
        for i in range(len(loader)):
            x, _ = loader[i]
            x = x["anchor"] if isinstance(x, dict) else x  # pretraining's pairs: one view
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
        features = {name: np.concatenate(parts) for name, parts in features.items()}
        for name, values in features.items():
            self.model.backbone.towers[name].normalization.adapt(values)
        return features

    def _loader(self, shuffle=True, mixup=None, balanced=None, whole_batches=False,
                gain_db=None):
        """The training loader; in a multi-process run, of this process's rows of every
        batch (`whole_batches`: of all of them). None: the config's setting."""
        c = self.config
        gain_db = c.gain_db if gain_db is None else gain_db
        if isinstance(self.train, ShardSet):  # chunks decoded once (keras-dae shard)
            from keras_dae.data.shard_loader import ShardLoader

            processes = 1 if whole_batches else scale.process_count()
            return ShardLoader(
                self.train, batch_size=c.batch_size, shuffle=shuffle, seed=c.seed,
                target_names=("fused", *self.model.stream_names),
                mixup=c.mixup if mixup is None else mixup, gain_db=gain_db,
                balanced=c.balanced if balanced is None else balanced,
                drop_last=c.data_parallel, process_count=processes,
                process_index=scale.process_index() if processes > 1 else 0)
        return ChunkLoader(
            self.train, sample_rate=self.model.sample_rate, batch_size=c.batch_size,
            chunk_seconds=c.chunk_seconds, hop_seconds=c.hop_seconds, shuffle=shuffle,
            seed=c.seed, target_names=("fused", *self.model.stream_names),
            mixup=c.mixup if mixup is None else mixup, gain_db=gain_db,
            balanced=c.balanced if balanced is None else balanced,
            skipped=self.skipped,
            feature_cache=self.feature_cache,
            include_waveform=self.fit_model is self.model or "waveform" in self.fit_model.input,
            drop_last=c.data_parallel,  # every batch must split evenly over the devices
        )

    def _use_feature_cache(self) -> None:
        """Builds (or reopens) the feature cache and the model that takes its features."""
        loader = self._loader(shuffle=False, mixup=0.0, balanced=False, gain_db=0.0)
        self.feature_cache = FeatureCache.build(loader, self.model.featurizer,
                                                self.config.feature_cache,
                                                verbose=bool(self.verbose))
        self.fit_model = self.model.with_feature_inputs(self.feature_cache.streams)

    def _compile(self, stage: str) -> None:
        model, c = self.model, self.config
        streams = model.stream_names
        trainable_backbone = stage == "joint" or (stage == "towers" and not c.pretrained)
        model.featurizer.trainable = trainable_backbone
        model.backbone.trainable = trainable_backbone
        for head in model.stream_heads.values():
            head.trainable = stage != "fusion"
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

    def _validate(self, stage: str) -> tuple[float, dict, str]:
        """(score, history fields, progress line) of the model on the validation data; the
        epoch of the stage's highest score is its best."""
        report = evaluate(self.model, self.val, chunk_seconds=self.config.chunk_seconds,
                          hop_seconds=self.config.hop_seconds, skipped=self.skipped)
        score = report["mAP"] if stage != "towers" else float(np.mean(
            list(report["streams"].values())))
        streams = " ".join(f"{k}={v:.3f}" for k, v in report["streams"].items())
        return (score, {"val_map": report["mAP"], "val_streams": report["streams"]},
                f"val mAP fused {report['mAP']:.3f}  {streams}")

    def _score_start(self, stage: str) -> None:
        """Scores the model a later stage starts from (for the fusion stage, the mean of the
        stream heads' logits; for the joint stage, the fusion stage's choice) as the stage's
        epoch -1, so that the stage keeps it unless one of its epochs scores higher on the
        validation data: a stage never leaves the model worse there than it found it. Done
        once per stage (a resumed stage has scored it already)."""
        if self.state["best_map"] >= 0:
            return
        score, fields, line = self._validate(stage)
        self.state["history"].append({"stage": stage, "epoch": -1, "loss": None, **fields,
                                      "time": time.time()})
        self._keep_if_best(score, -1)
        if self.verbose and scale.is_chief():
            print(f"[{stage}] start: {line}", flush=True)
        self._save_checkpoint()

    def _keep_if_best(self, score: float, epoch: int) -> None:
        """Saves the model as the stage's best when `score` beats it; counts the epochs
        without improvement otherwise."""
        st = self.state
        if score > st["best_map"]:
            st["best_map"], st["best_epoch"], st["wait"] = score, epoch, 0
            best = f"best-{int(st.get('sequence', 0)) + 1:06d}.weights.h5"
            _save_weights(self.model, self.ckpt_dir / best)
            st.setdefault("files", {})["best"] = best  # committed with the checkpoint
        else:
            st["wait"] += 1

    def _epochs(self, stage: str) -> int:
        return self.config.epochs(stage)

    def _end_of_epoch(self, stage, epoch, logs) -> None:
        # Every process evaluates (a step shared by all) and so takes the same decisions.
        score, fields, line = self._validate(stage)
        entry = {"stage": stage, "epoch": epoch, "loss": float(logs.get("loss", np.nan)),
                 **fields, "time": time.time()}
        st = self.state
        st["history"].append(entry)
        st["epoch"] = epoch
        self._keep_if_best(score, epoch)
        if self.verbose and scale.is_chief():
            print(f"[{stage}] epoch {epoch + 1}: loss {entry['loss']:.4f}  {line}", flush=True)
        self._save_checkpoint()

    def _callbacks(self, stage, loader) -> list:
        callbacks = [loader.epoch_callback(), _EpochEnd(self, stage)]
        if not scale.is_chief():  # process 0 writes the logs
            return callbacks
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        callbacks.append(keras.callbacks.CSVLogger(str(logs / f"{stage}.csv"), append=True))
        # Keras' TensorBoard callback writes through TensorFlow's summary ops and the
        # tensorboard package; without them (e.g. a JAX-only install) the CSV log remains.
        if importlib.util.find_spec("tensorboard") and importlib.util.find_spec("tensorflow"):
            callbacks.append(keras.callbacks.TensorBoard(str(logs / stage)))
        return callbacks

    def run(self, resume: bool = False, overwrite: bool = False) -> dict:
        """Trains all stages; returns the history.

        An earlier run in `run_dir` is continued from its checkpoint with `resume`, replaced
        with `overwrite`, and otherwise refused (`keras_dae.runs.prepare`); the directory is
        locked against other processes while this one trains (`keras_dae.runs.run_lock`). In
        a multi-process run, process 0 locks and prepares the directory, and an error in any
        process stops them all (`keras_dae.scale.report_failure`).
        """
        with claim_run_dir(self.run_dir, resume, overwrite):
            try:
                return self._run(resume)
            except Exception as error:
                raise_for_processes(error)
                raise

    def _run(self, resume: bool) -> dict:
        self.preflight()
        if self.config.feature_masking is not None:
            masking = DEFAULT_FEATURE_MASKING if self.config.feature_masking else None
            for tower in self.model.backbone.towers.values():
                tower.set_feature_masking(masking)
        restored = resume and self._restore_checkpoint()
        if resume and not restored and self.verbose and scale.is_chief():
            print(f"No checkpoint in {self.ckpt_dir}; starting from scratch.", flush=True)
        if not self.state["normalized"]:
            keras.utils.set_random_seed(self.config.seed)
            if not self.config.pretrained:  # a preset's towers keep their statistics
                self._adapt_normalization()
            self.state["normalized"] = True
        if self.config.feature_cache:
            self._use_feature_cache()
        # "done": training ended before its report was written; nothing left to train
        stages = self.STAGES
        start_stage = (len(stages) if self.state["stage"] == "done"
                       else stages.index(self.state["stage"]))
        for stage in stages[start_stage:]:
            epochs = self._epochs(stage)
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
            if not finished and initial_epoch == 0 and stages.index(stage) > 0:
                self._score_start(stage)
            if not finished:
                if initial_epoch > 0:
                    self._restore_optimizer()
                loader = self._loader()
                self.fit_model.fit(
                    loader, epochs=epochs, initial_epoch=initial_epoch,
                    verbose=self.verbose if scale.is_chief() else 0,
                    callbacks=self._callbacks(stage, loader),
                    shuffle=False,  # the loader's order depends on seed and epoch only
                )
            # Select the stage's best epoch before the next stage builds on it (written by
            # process 0: the others wait for it).
            scale.barrier(f"best weights of {stage}")
            best = self._checkpoint_file("best")
            if best is not None and best.is_file():
                self.model.load_weights(best)
            next_index = stages.index(stage) + 1
            self.state.update(stage=stages[next_index] if next_index < len(stages) else "done",
                              epoch=-1, best_map=-1.0, best_epoch=-1, wait=0)
            self.state["files"] = {k: v for k, v in self.state.get("files", {}).items()
                                   if k != "best"}
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


def _save_figure(plt, fig, path: Path) -> Path:
    """Writes `fig` to `path` (`atomic_write`) and closes it."""
    try:
        return _atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)


def write_plots(state: dict, reports: dict, labels: list[str], out_dir: Path) -> list[Path]:
    """Training curves, AP per class, and each stream's mAP beside the fused model's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    history = state["history"]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for stage in dict.fromkeys(h["stage"] for h in history):  # in the order they ran
        rows = [h for h in history if h["stage"] == stage]
        x = [i for i, h in enumerate(history) if h["stage"] == stage]
        ax_loss.plot(x, [h["loss"] for h in rows], "o-", label=stage)
        ax_map.plot(x, [h["val_map"] for h in rows], "o-", label=f"{stage}: fused")
        if stage in ("towers", "probe"):  # the stream heads' own curves
            for name in rows[0]["val_streams"]:
                ax_map.plot(x, [h["val_streams"][name] for h in rows], ".--", label=name)
    ax_loss.set(title="training loss", xlabel="epoch (all stages)")
    ax_map.set(title="validation mAP", xlabel="epoch (all stages)")
    ax_loss.legend()
    ax_map.legend(fontsize=7)
    written.append(_save_figure(plt, fig, out_dir / "training_curves.png"))

    split, report = next(iter(reports.items()))
    ap = report["per_class_ap"]
    names = [n for n in labels if ap.get(n) is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4), constrained_layout=True)
    ax.bar(range(len(names)), [ap[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set(title=f"AP per class ({split})", ylim=(0, 1))
    written.append(_save_figure(plt, fig, out_dir / "ap_per_class.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    bars = {**report["streams"], "fused": report["mAP"]}
    ax.bar(list(bars), list(bars.values()),
           color=["0.6"] * (len(bars) - 1) + ["tab:orange"])
    for i, v in enumerate(bars.values()):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set(title=f"mAP per stream and fused ({split})", ylim=(0, 1))
    written.append(_save_figure(plt, fig, out_dir / "streams_vs_fused.png"))
    return written


def finish_run(trainer: Trainer, eval_sets: dict, training_data: str,
               metadata: dict | None = None) -> dict:
    """Evaluates on each named split, writes the preset, report.json and the plots
    (`write_run` with the trainer's model, run directory, recipe, history and skipped files)."""
    return write_run(trainer.model, trainer.run_dir, trainer.config, trainer.state,
                     trainer.train, eval_sets, training_data, trainer.skipped, metadata)


def write_run(model, run_dir, config: TrainConfig, state: dict, train, eval_sets: dict,
              training_data: str, skipped: dict | None = None,
              metadata: dict | None = None) -> dict:
    """Evaluates `model` on each named split of `eval_sets`, writes `run_dir/preset` (its
    metadata: the training data, the metrics, the recipe and `metadata`), `report.json` and
    the plots of `state["history"]`; returns the report. In a multi-process run every
    process evaluates and process 0 writes."""
    from keras_dae import zoo

    run_dir = Path(run_dir)
    skipped = {} if skipped is None else skipped
    reports = {split: evaluate(model, data, chunk_seconds=config.chunk_seconds,
                               hop_seconds=config.hop_seconds, skipped=skipped)
               for split, data in eval_sets.items()}
    summary = {split: {"mAP": r["mAP"], "streams": r["streams"], "n_clips": r["n_clips"]}
               for split, r in reports.items()}
    # A preset is float32 whatever the training precision (variables are float32 either
    # way); `scale.with_precision` runs it in bfloat16 again.
    preset_model = model if scale.model_precision(model) is None else scale.with_precision(
        model, None)
    report = {"config": dataclasses.asdict(config), "training_data": training_data,
              "backend": keras.backend.backend(), "history": state["history"],
              "evaluation": reports, **(metadata or {})}
    with _chief_directory(run_dir) as directory:  # every process saves, process 0 keeps
        zoo.save(preset_model, directory / "preset", labels=train.labels, mids=train.mids,
                 metadata={"training_data": training_data, "metrics": summary,
                           "labels_source": training_data,
                           "train_config": dataclasses.asdict(config), **(metadata or {})})
    if not scale.is_chief():  # in a multi-process run, process 0 writes
        return report
    _atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))
    try:
        write_plots(state, reports, train.labels, run_dir)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'keras-dae[plot]')")
    return report
