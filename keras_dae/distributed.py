"""Tagging and embedding many files on a Ray cluster (Ray Data), with results in Parquet.

    from keras_dae import distributed

    report = distributed.tag_files(["recordings/"], "tags/", workers=2)   # a local Ray cluster
    print(report.summary())   # tagged 298 of 300 files (...); skipped 2: ...
    distributed.embed_files(["recordings/"], "embeddings/", address="auto")  # a running cluster

    keras-dae predict recordings/ --ray --out tags/          # the same from the command line
    keras-dae embed recordings/ --ray ray://head:10001 --out embeddings/

The driver lists the files (`keras_dae.inference.expand_inputs`: directories searched
recursively) and leaves out those the output already holds. Ray Data cuts the rest into
batches of `files_per_task` paths and hands them to a pool of `workers` actors
(`map_batches` with a callable class), each of which loads the model once, as a `Tagger`, and
tags its batches with `Tagger.tag_many`: the decoding, chunking, scoring and failure reporting
of `keras-dae predict`, so the scores are the same. An hour-long file is decoded in blocks
(`keras_dae.clip_pipeline`), so a worker's memory does not grow with a file's length.

Each batch becomes one Parquet file of the output directory, `part-<hash of its paths>.parquet`,
written by the worker that tagged it (`keras_dae.atomic.atomic_write`: whole or absent, so an
interrupted job leaves only complete parts). One row per file:

| column | type | |
|---|---|---|
| `path` | string | the file's absolute path |
| `duration` | float64 | seconds (null when `error` is set) |
| `error` | string | why the file could not be tagged, naming it; null when it was |
| `labels` | list<struct<label, mid, score: float32>> | the `top_k` best classes, best first |
| `scores` | fixed_size_list<float32>[num_classes] | every class's fused clip score |
| `embedding` | fixed_size_list<float32>[n_streams * 64] | the fused embedding (`embeddings`) |
| `embedding_<stream>` | fixed_size_list<float32>[64] | each stream's part of it (`embeddings`) |

Every part's schema metadata (key `keras_dae`, JSON) names the model, its classes in the order
of `scores`, its streams and the settings that change the numbers. A rerun skips every file
the output holds a row for (tagged, or refused: a bad file keeps its error row), so a job
that stopped goes on where it was, and deleting a part tags its files again. A rerun with
another model or other settings is refused. Ray is needed only here: `pip install
"keras-dae[ray]"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from keras_dae import extras
from keras_dae.validation import InputError, non_negative_float, positive_float, positive_int

if TYPE_CHECKING:
    import pyarrow

    from keras_dae.inference import TagFailure

__all__ = ["FLAGS", "TaggingReport", "add_flags", "embed_files", "tag_files"]

METADATA_KEY = b"keras_dae"
"""The key of the Parquet schema metadata (JSON) that says what wrote a part."""

PART_GLOB = "part-*.parquet"

# Settings that change the numbers in a row: a rerun must use the same ones.
_SETTINGS = ("model", "hop_seconds", "aggregate", "mixed_precision", "embeddings")


def _ray_address(text: str) -> str:
    """`--ray`'s ADDRESS: refused when it names an existing file or directory (an input that
    followed `--ray`, which takes an optional value)."""
    if Path(text).exists():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a file or directory, not a Ray address: put --ray after the inputs, "
            "or give --ray=ADDRESS")
    return text


# `keras-dae predict` / `embed` flags for tagging on Ray: (flag, argparse options).
FLAGS = (
    ("--ray", {"nargs": "?", "const": "local", "default": None, "metavar": "ADDRESS",
               "type": _ray_address,
               "help": "tag on Ray workers and write Parquet to --out (a directory): on a new "
                       "local Ray cluster, or the one at ADDRESS (auto, ray://HEAD:10001)"}),
    ("--workers", {"type": positive_int, "default": None, "metavar": "N",
                   "help": "--ray: model copies, one per Ray actor (default: as many as the "
                           "cluster's CPUs, or GPUs, hold)"}),
    ("--cpus-per-worker", {"type": positive_float, "default": 1.0, "metavar": "N",
                           "help": "--ray: CPUs each worker takes (default 1)"}),
    ("--gpus-per-worker", {"type": non_negative_float, "default": 0.0, "metavar": "N",
                           "help": "--ray: GPUs each worker takes (default 0)"}),
)
# predict's flags that print per file: not available with --ray, whose results go to Parquet.
_PRINTING_FLAGS = {"json": "--json", "timestamps": "--timestamps", "explain": "--explain",
                   "events": "--events", "audacity": "--audacity", "events_tsv": "--events-tsv",
                   "stream": "--stream"}


@dataclasses.dataclass(frozen=True)
class TaggingReport:
    """What a Ray tagging job did.

    Attributes:
        output: the Parquet directory.
        tagged: files of this run tagged (one row each, `error` null).
        failures: files of this run that could not be tagged (`TagFailure`s; a row each,
            with its error).
        already_done: files left out because the output already held them.
        seconds_of_audio: the duration of the files tagged in this run.
        elapsed: seconds from the call to its end (starting Ray and the workers included).
        workers: the workers (Ray actors) that tagged them; 0 when there was nothing to do.
    """

    output: Path
    tagged: int
    failures: tuple[TagFailure, ...]
    already_done: int
    seconds_of_audio: float
    elapsed: float
    workers: int

    def summary(self, verb: str = "tagged") -> str:
        """`"tagged 3 of 4 files (12.0 s of audio) in 9.1 s; skipped 1: truncated; 10
        already in tags/"`."""
        from keras_dae.tag_files import summary_line

        if not self.tagged and not self.failures:
            return f"nothing to do: all {self.already_done} files are in {self.output} already"
        line = summary_line(verb, self.tagged, list(self.failures), self.seconds_of_audio,
                            self.elapsed)
        if self.already_done:
            line += f"; {self.already_done} already in {self.output}"
        return line


@dataclasses.dataclass(frozen=True)
class _WorkerSettings:
    """What every worker needs to build its `Tagger` and write its parts."""

    model: str
    output: str
    batch_size: int
    hop_seconds: float
    aggregate: str
    mixed_precision: str | None
    top_k: int
    embeddings: bool
    threads: int

    def recorded(self) -> dict:
        """The settings that change the numbers, as the parts' metadata records them."""
        return {name: getattr(self, name) for name in _SETTINGS}


def tag_files(inputs: Sequence, output, model="diverse_sampled15", *, embeddings: bool = False,
              top_k: int = 5, address: str | None = None, workers: int | None = None,
              cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
              batch_size: int = 32, hop_seconds: float = 0.5, aggregate: str = "mean",
              mixed_precision: str | None = None, files_per_task: int = 16,
              verbose: bool = False, debug: bool = False) -> TaggingReport:
    """Tags the audio files of `inputs` (files, and directories searched for them) on Ray
    workers and writes a row per file to the Parquet directory `output` (module docstring).

    Args:
        inputs: files and directories. Every node must see them at the same path.
        output: the Parquet directory (made if missing; its parent must exist). Files it
            already holds are skipped. Every worker writes to it: on a cluster, a shared
            file system.
        model: a preset name, or a preset or run directory every node can read.
        embeddings: also write the fused and per-stream embeddings.
        top_k: classes in the `labels` column (every class is in `scores`).
        address: the Ray cluster (`"auto"`, `"ray://head:10001"`); None or `"local"`: start
            a local one of `workers * cpus_per_worker` CPUs (all CPUs when `workers` is
            None), stopped at the end. A process already connected to Ray uses that cluster.
        workers: model copies (Ray actors); default: as many as the cluster's CPUs (or GPUs,
            with `gpus_per_worker`) hold, at most one per batch.
        cpus_per_worker, gpus_per_worker: Ray resources of each worker; a CPU worker's
            TensorFlow and PyTorch thread pools get `ceil(cpus_per_worker)` threads.
        batch_size, hop_seconds, aggregate: the `Tagger`'s (1 s chunks every `hop_seconds`).
        mixed_precision: `"bfloat16"` computes in it (`keras_dae.scale.with_precision`).
        files_per_task: files per Ray Data batch, hence per Parquet part.
        verbose: report on stderr as `keras-dae predict` does: each file that could not be
            tagged, a progress bar on terminals, the summary at the end.
        debug: show Ray's own logs and progress.

    Returns a `TaggingReport`. Raises `InputError` for bad settings, a missing Ray or an
    output written with another model or settings; a bad audio file is a row, not an error.
    """
    from keras_dae.inference import TagFailure, expand_inputs
    from keras_dae.tag_files import ProgressBar
    from keras_dae.validation import check

    started = time.perf_counter()
    missing = extras.missing_message(("ray", "pyarrow"), "tagging on Ray", extra="ray")
    if missing:
        raise InputError(missing)
    settings = _settings(output, model, batch_size, hop_seconds, aggregate, mixed_precision,
                         top_k, embeddings, cpus_per_worker, files_per_task)
    check("gpus_per_worker", gpus_per_worker, "non_negative_float")
    if workers is not None:
        check("workers", workers, "positive_int")
    out = Path(settings.output)
    done = _paths_in_output(out, settings)
    paths, failures = expand_inputs(inputs)
    given = [(os.path.abspath(p), None) for p in paths] + [
        (os.path.abspath(f.source), f.reason) for f in failures]
    items, seen = [], set(done)
    for path, error in given:
        if path not in seen:
            seen.add(path)
            items.append({"path": path, "error": error})
    already = len({path for path, _ in given} & done)
    progress = ProgressBar(len(items), enabled=None if verbose else False)
    tagged, failed, seconds = 0, [], 0.0

    def take(rows: list[tuple]) -> None:
        nonlocal tagged, seconds
        for path, duration, error in rows:
            progress.clear()
            if error is None:
                tagged += 1
                seconds += duration
            else:
                failed.append(TagFailure(path, error))
                if verbose:
                    print(f"skipped {error}", file=sys.stderr)
            progress.step(path)

    used = 0
    if items:
        used = _run(items, settings, address, workers, cpus_per_worker, gpus_per_worker,
                    files_per_task, debug, take)
        progress.clear()
    report = TaggingReport(out, tagged, tuple(failed), already, seconds,
                           time.perf_counter() - started, used)
    if verbose:
        print(report.summary("embedded" if embeddings else "tagged"), file=sys.stderr)
    return report


def embed_files(inputs: Sequence, output, model="diverse_sampled15", **options) -> TaggingReport:
    """`tag_files` with `embeddings=True`: the rows also hold the fused and per-stream
    embeddings."""
    return tag_files(inputs, output, model, embeddings=True, **options)


def _settings(output, model, batch_size, hop_seconds, aggregate, mixed_precision, top_k,
              embeddings, cpus_per_worker, files_per_task) -> _WorkerSettings:
    """The workers' settings, checked (`InputError` naming the bad one), with the model and
    the output as absolute paths when they are paths."""
    from keras_dae import atomic
    from keras_dae.validation import check

    if not isinstance(model, (str, os.PathLike)):
        raise InputError("model must be a preset name or a preset or run directory that every "
                         f"Ray worker can load, got a {type(model).__name__}")
    from keras_dae.zoo.loading import resolve_preset

    name, _ = resolve_preset(model)  # PresetError for neither a preset nor a directory
    model = name if name is not None else os.path.abspath(Path(model).expanduser())
    for setting, value, rule in (("batch_size", batch_size, "positive_int"),
                                 ("top_k", top_k, "non_negative_int"),
                                 ("files_per_task", files_per_task, "positive_int"),
                                 ("hop_seconds", hop_seconds, "positive_float"),
                                 ("cpus_per_worker", cpus_per_worker, "positive_float")):
        check(setting, value, rule)
    if aggregate not in ("mean", "max"):
        raise InputError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    out = atomic.check_output_path(output, what="output", directory=True)
    return _WorkerSettings(str(model), os.path.abspath(out), int(batch_size),
                           float(hop_seconds), aggregate, mixed_precision, int(top_k),
                           bool(embeddings), max(1, math.ceil(cpus_per_worker)))


def _paths_in_output(out: Path, settings: _WorkerSettings) -> set[str]:
    """The paths `out`'s parts hold a row for (`out` is made when missing). Refuses
    (`InputError`) parts written with other settings, and files that are not keras-dae
    parts; removes the temporary files of parts whose writing was interrupted."""
    import pyarrow.parquet as pq

    out.mkdir(exist_ok=True)
    for stale in out.glob(f".tmp-*-{PART_GLOB}"):  # a worker killed while writing
        stale.unlink(missing_ok=True)
    done: set[str] = set()
    for part in sorted(out.glob("*.parquet")):
        try:
            table = pq.read_table(part, columns=["path"])
            metadata = (table.schema.metadata or {}).get(METADATA_KEY)
            recorded = json.loads(metadata) if metadata else None
        except Exception as error:  # pyarrow's errors: not Parquet, no `path` column
            raise InputError(f"{part}: not a part keras-dae wrote ({error}); give another "
                             "output directory") from error
        if recorded is None:
            raise InputError(f"{part}: not a part keras-dae wrote (no {METADATA_KEY.decode()} "
                             "metadata); give another output directory")
        differ = [name for name in _SETTINGS
                  if recorded.get("settings", {}).get(name) != settings.recorded()[name]]
        if differ:
            was = ", ".join(f"{name}={recorded.get('settings', {}).get(name)!r}"
                            for name in differ)
            raise InputError(f"{out} holds rows written with {was}; rerun with the same "
                             "settings to add to it, or give another output directory")
        done.update(table.column("path").to_pylist())
    return done


def _run(items: list[dict], settings: _WorkerSettings, address, workers, cpus_per_worker,
         gpus_per_worker, files_per_task, debug, take: Callable[[list], None]) -> int:
    """Runs the Ray Data job over `items` (`{"path", "error"}`) and returns how many workers
    it used. As the workers finish each batch (its part written), `take` gets the
    `(path, duration, error)` of its files."""
    import keras
    import ray

    n_batches = math.ceil(len(items) / files_per_task)
    started = _connect(address, workers, cpus_per_worker, gpus_per_worker, debug)
    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars
    context.enable_progress_bars = debug
    quiet, handlers = _RayDataQuiet(), [] if debug else logging.getLogger("ray.data").handlers
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        workers = _worker_count(workers, cpus_per_worker, gpus_per_worker, n_batches, address)
        env = {"KERAS_BACKEND": keras.backend.backend()}
        if not gpus_per_worker:  # the backends' CPU thread pools, sized to the worker's CPUs
            env |= {"TF_NUM_INTRAOP_THREADS": str(settings.threads),
                    "TF_NUM_INTEROP_THREADS": str(settings.threads),
                    "OMP_NUM_THREADS": str(settings.threads)}
        dataset = ray.data.from_items(items, override_num_blocks=n_batches).map_batches(
            _TaggingWorker, fn_constructor_args=(settings,), batch_size=files_per_task,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
            runtime_env={"env_vars": env})
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            if table.column("worker_error").null_count < len(table):
                raise InputError("a Ray worker failed: "
                                 + table.column("worker_error").drop_null()[0].as_py())
            take(list(zip(*(table.column(name).to_pylist()
                            for name in ("path", "duration", "error")), strict=True)))
        return workers
    finally:
        context.enable_progress_bars = shown
        for handler in handlers:
            handler.removeFilter(quiet)
        if started:
            ray.shutdown()


class _RayDataQuiet(logging.Filter):
    """Lets through Ray Data's warnings and errors but its notice that progress bars are off
    (keras-dae shows its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.WARNING
                and not record.getMessage().startswith("Progress bars disabled"))


def _connect(address, workers, cpus_per_worker, gpus_per_worker, debug) -> bool:
    """Connects to the Ray cluster at `address`, or starts a local one (None, `"local"`):
    `workers * cpus_per_worker` CPUs (all when `workers` is None), its node at 127.0.0.1,
    without its dashboard or usage reports. Returns whether it connected (False: this
    process was connected already)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": debug, "logging_level": logging.INFO if debug else logging.ERROR,
             "include_dashboard": False}
    env = {"RAY_USAGE_STATS_ENABLED": "0"}  # no usage report over the network
    if not debug:  # Ray's core logs an error-level notice for every Ray Data actor pool
        env["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    kept = {name: os.environ.get(name) for name in env}
    os.environ.update({name: value for name, value in env.items() if kept[name] is None})
    try:
        if address in (None, "local"):
            cpus = ((os.cpu_count() or 1) if workers is None
                    else math.ceil(workers * cpus_per_worker))
            gpus = {"num_gpus": math.ceil(workers * gpus_per_worker)} if (
                workers is not None and gpus_per_worker) else {}
            ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1", **gpus,
                     **quiet)
        else:
            ray.init(address=address, **quiet)
    finally:
        for name, value in kept.items():
            if value is None:
                os.environ.pop(name, None)
    return True


def _worker_count(workers, cpus_per_worker, gpus_per_worker, n_batches, address) -> int:
    """`workers`, or as many as the cluster's CPUs (and GPUs) hold; at most `n_batches`.
    Refuses (`InputError`) a worker the cluster has no GPU for."""
    import ray

    resources = ray.cluster_resources()
    if gpus_per_worker and resources.get("GPU", 0) < gpus_per_worker:
        where = "this machine" if address in (None, "local") else f"the Ray cluster {address}"
        raise InputError(f"{gpus_per_worker} GPU per worker: {where} has "
                         f"{resources.get('GPU', 0):g} GPU")
    if workers is None:
        workers = int(resources.get("CPU", 1) // cpus_per_worker)
        if gpus_per_worker:
            workers = min(workers, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, min(int(workers), n_batches))


def _user_error(error: Exception) -> Exception:
    """`error` when it is a keras-dae error the user can act on (`messages.user_error_types`),
    else raises it: a bug."""
    from keras_dae.messages import user_error_types

    if not isinstance(error, user_error_types()):
        raise error
    return error


class _TaggingWorker:
    """A Ray Data worker (a callable class for `map_batches`): one `Tagger`, loaded when the
    actor starts; each batch of paths is tagged and written as one Parquet part.

    Ray passes the driver an actor's or a task's exception as text, so a keras-dae error (a
    bad preset, an output it cannot write) is returned in the `worker_error` column instead,
    for the driver to raise; any other exception is a bug and stays one.
    """

    def __init__(self, settings: _WorkerSettings):
        from keras_dae.inference import Tagger, load_model

        self.settings, self.error = settings, None
        try:
            self.tagger = Tagger(load_model(settings.model, settings.mixed_precision),
                                 batch_size=settings.batch_size,
                                 hop_seconds=settings.hop_seconds, aggregate=settings.aggregate)
            self.schema = _parquet_schema(self.tagger, settings)
        except Exception as error:
            self.error = _user_error(error)

    def _tag(self, paths: list[str]) -> list:
        """A `TagResult` or `TagFailure` per path, in order: `Tagger.tag_many`, or file by
        file when it fails as a whole (each unexpected error then a `TagFailure`)."""
        from keras_dae.inference import TagFailure
        from keras_dae.messages import one_line

        options = {"top_k": self.settings.top_k}
        try:
            return list(self.tagger.tag_many(paths, **options))
        except Exception:
            results = []
            for path in paths:
                try:
                    results += list(self.tagger.tag_many([path], **options))
                except Exception as error:
                    results.append(TagFailure(path, f"{path}: {one_line(error)}"))
            return results

    def _write(self, paths: list[str], errors: list) -> pyarrow.Table:
        """Tags the files of `paths` whose `errors` entry is None, writes the part of all
        `paths`, and returns it."""
        import pyarrow.parquet as pq

        from keras_dae import atomic
        from keras_dae.inference import TagFailure

        tagged = iter(self._tag([p for p, e in zip(paths, errors, strict=True) if e is None]))
        rows = [next(tagged) if e is None else TagFailure(p, e)
                for p, e in zip(paths, errors, strict=True)]
        table = _result_table(rows, paths, self.tagger, self.schema)
        name = hashlib.sha1("\n".join(paths).encode("utf-8")).hexdigest()[:20]
        atomic.atomic_write(Path(self.settings.output) / f"part-{name}.parquet",
                            lambda tmp: pq.write_table(table, tmp))
        return table

    def __call__(self, batch):
        """`batch`: a pyarrow table of `path` and `error` (set: refused before tagging).
        Writes its part; returns `path`, `duration`, `error` of each file, and `worker_error`
        (set when the batch could not be tagged or written: nothing was written)."""
        import pyarrow as pa

        paths = batch.column("path").to_pylist()
        n = len(paths)
        try:
            if self.error is not None:
                raise self.error
            table = self._write(paths, batch.column("error").to_pylist())
        except Exception as error:
            failed = _user_error(error)
            return pa.table({"path": paths, "duration": pa.nulls(n, pa.float64()),
                             "error": pa.nulls(n, pa.string()),
                             "worker_error": [str(failed)] * n})
        return pa.table({"path": paths, "duration": table.column("duration"),
                         "error": table.column("error"), "worker_error": pa.nulls(n, pa.string())})


def _parquet_schema(tagger, settings: _WorkerSettings) -> pyarrow.Schema:
    """The rows' pyarrow schema for `tagger`'s classes and streams, with the metadata that
    says what wrote them."""
    import pyarrow as pa

    label = pa.struct([("label", pa.string()), ("mid", pa.string()), ("score", pa.float32())])
    fields = [("path", pa.string()), ("duration", pa.float64()), ("error", pa.string()),
              ("labels", pa.list_(label)),
              ("scores", pa.list_(pa.float32(), len(tagger.class_names)))]
    if settings.embeddings:
        size = tagger.embedding_size // len(tagger.stream_names)
        fields.append(("embedding", pa.list_(pa.float32(), tagger.embedding_size)))
        fields += [(f"embedding_{name}", pa.list_(pa.float32(), size))
                   for name in tagger.stream_names]
    from keras_dae.version import __version__

    metadata = {"keras_dae_version": __version__, "settings": settings.recorded(),
                "class_names": list(tagger.class_names),
                "class_mids": list(tagger.class_mids),
                "stream_names": list(tagger.stream_names), "sample_rate": tagger.sample_rate}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata).encode("utf-8")})


def _result_table(rows: list, paths: list[str], tagger, schema: pyarrow.Schema) -> pyarrow.Table:
    """A pyarrow table of `schema`: one row per `TagResult` or `TagFailure` of `rows`, whose
    `path` is the same place of `paths`."""
    import numpy as np
    import pyarrow as pa

    from keras_dae.inference import TagFailure

    ok = [not isinstance(row, TagFailure) for row in rows]

    def vectors(get) -> list:
        return [np.asarray(get(row), np.float32) if good else None
                for row, good in zip(rows, ok, strict=True)]

    columns = {
        "path": paths,
        "duration": [row.duration if good else None for row, good in zip(rows, ok, strict=True)],
        "error": [None if good else row.reason for row, good in zip(rows, ok, strict=True)],
        "labels": [[{"label": x.label, "mid": x.mid, "score": x.score} for x in row.labels]
                   if good else None for row, good in zip(rows, ok, strict=True)],
        "scores": vectors(lambda row: row.scores["fused"]),
    }
    if "embedding" in schema.names:
        columns["embedding"] = vectors(lambda row: row.embedding)
        for name in tagger.stream_names:
            columns[f"embedding_{name}"] = vectors(
                lambda row, name=name: row.stream_embeddings[name])
    return pa.table({name: pa.array(columns[name], schema.field(name).type)
                     for name in schema.names}, schema=schema)


def add_flags(predict: argparse.ArgumentParser, embed: argparse.ArgumentParser) -> None:
    """Adds `FLAGS` to the `predict` and `embed` subcommands (and `--out DIR` to predict),
    and routes a command given `--ray` to `ray_command`."""
    predict.add_argument("--out", metavar="DIR", help="--ray: the Parquet directory to write")
    for action in embed._actions:
        if "--out" in action.option_strings:
            action.help = f"{action.help} (with --ray: the Parquet directory)"
    for parser, embeddings in ((predict, False), (embed, True)):
        for flag, options in FLAGS:
            parser.add_argument(flag, **options)
        parser.set_defaults(func=functools.partial(
            _command, parser.get_default("func"), embeddings=embeddings))


def _command(local: Callable, args, embeddings: bool) -> int:
    """`local(args)` (the command as it runs without Ray), or `ray_command` with `--ray`."""
    if args.ray is None:
        if not embeddings and args.out is not None:
            raise InputError("predict --out writes Parquet on Ray workers: add --ray (without "
                             "it, predict prints its results)")
        if args.workers is not None or args.cpus_per_worker != 1.0 or args.gpus_per_worker:
            raise InputError("--workers, --cpus-per-worker and --gpus-per-worker size the Ray "
                             "workers: add --ray")
        return local(args)
    return ray_command(args, embeddings)


def ray_command(args, embeddings: bool) -> int:
    """`keras-dae predict --ray` / `embed --ray`: `tag_files` with the flags; exit status 0
    when the output holds at least one tagged file of the inputs, else 2."""
    given = [flag for name, flag in _PRINTING_FLAGS.items() if getattr(args, name, None)]
    if given:
        raise InputError(f"--ray writes each file's clip scores to Parquet: "
                         f"{', '.join(given)} cannot be used with it")
    if args.out is None:
        raise InputError("--ray needs --out DIR: the Parquet directory to write")
    hop = getattr(args, "hop", None)
    report = tag_files(
        args.inputs, args.out, args.model, embeddings=embeddings,
        top_k=getattr(args, "top_k", 5), address=args.ray, workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        batch_size=args.batch_size, hop_seconds=0.5 if hop is None else hop,
        mixed_precision=args.mixed_precision, verbose=True, debug=args.debug)
    if report.tagged or report.failures:
        print(f"wrote {report.output}: {report.tagged + len(report.failures)} rows "
              f"({len(report.failures)} with an error)")
    return 0 if report.tagged or report.already_done else 2
