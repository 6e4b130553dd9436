"""Run directories: one training process at a time, and nothing of an earlier run lost.

A run directory (`keras-dae train --out RUN`, `Trainer(run_dir=...)`) holds the files of
`RUN_FILES`. Training into a directory that holds some of them continues that run with
`resume`, or replaces it with `overwrite` (its own files are removed first; other files in the
directory are left alone); without either it is refused, and so is asking for both. While a
process trains, it holds an OS lock (`flock`) on `RUN/.keras-dae.lock`: a second process is
refused at once. The lock goes with the process, so a run that crashed or was killed leaves
no lock behind. A finished run (stage "done" and its report written) has nothing to resume.

Imports no Keras: the command line refuses before loading anything heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no protection
    fcntl = None

#: What a run writes into its directory (keras_dae.training), and `overwrite` removes.
RUN_FILES = ("checkpoint", "logs", "preset", "report.json", "feature_cache", "embedding_cache",
             "training_curves.png", "ap_per_class.png", "streams_vs_fused.png")
LOCK_FILE = ".keras-dae.lock"


class PreflightError(OSError):
    """Training cannot start: the output directory is not writable, its disk is too full for
    the checkpoints, or no file of a split is readable. The message says which and why."""


class RunError(PreflightError):
    """A run directory cannot be trained into as asked; the message says why, in one line."""


_held: dict[Path, list] = {}  # run directory -> [open lock file, depth] of this process


def run_files(run_dir) -> list[str]:
    """The names of `RUN_FILES` present in `run_dir` (empty: no run there)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def is_finished(run_dir) -> bool:
    """Whether the run in `run_dir` completed: its last checkpoint says "done" and its report
    is written."""
    run_dir = Path(run_dir)
    try:
        state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("stage") == "done" and (run_dir / "report.json").is_file()


@contextlib.contextmanager
def run_lock(run_dir):
    """Holds the run directory's lock (creating the directory) for the `with` block.

    Raises `RunError` at once when another process holds it. Re-entrant within a process
    (the command line holds it around `Trainer.run`, which takes it too).
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        _held[run_dir][1] += 1
        try:
            yield run_dir
        finally:
            _held[run_dir][1] -= 1
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+")
    except OSError as error:
        raise RunError(f"{run_dir}: cannot create the run directory "
                       f"({error.strerror or error})") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise RunError(f"{run_dir}: another process (pid {holder}) is training in "
                               "this run directory; wait for it or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _held[run_dir] = [handle, 1]
        try:
            yield run_dir
        finally:
            del _held[run_dir]
    finally:
        handle.close()  # closing the file releases the lock


def prepare(run_dir, resume: bool = False, overwrite: bool = False) -> None:
    """Refuses, with one-line `RunError`s, to train into `run_dir` otherwise than asked:
    an earlier run there needs `resume` or `overwrite`, both together are refused, and a
    finished run has nothing to resume. With `overwrite`, removes the earlier run's files.
    Call it while holding `run_lock(run_dir)`."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunError(f"{run_dir}: --resume continues a run and --overwrite replaces it: "
                       "choose one")
    found = run_files(run_dir)
    if not found:
        return
    if overwrite:
        for name in found:
            path = run_dir / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as error:
                raise RunError(f"{path}: cannot remove it to overwrite the run "
                               f"({error.strerror or error})") from None
        return
    if not resume:
        raise RunError(f"{run_dir}: holds a run ({', '.join(found)}); --resume continues it, "
                       "--overwrite replaces it")
    if is_finished(run_dir):
        raise RunError(f"{run_dir}: the run is finished (its preset and report.json are "
                       "written): nothing to resume; --overwrite trains it again")
