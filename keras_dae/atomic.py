"""Outputs that are whole or absent: one way to write a file, one way to check where it goes.

`atomic_write` writes a file under a temporary name in its own directory, flushes it to disk
and renames it over the target, so a reader (or a run that resumes) sees the old content or
the new one, never a part; a failure removes the temporary file and raises `OutputError`
naming the user's path. `check_output_path` refuses, before any expensive work, an output
whose folder is missing or not writable, or whose name ends otherwise than its format's.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path


class OutputError(OSError):
    """An output could not be written, or may not go where it was asked to; the message
    names the path and the cause."""


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _cause(error: Exception) -> str:
    """A failed write's cause, short: the errno's text when there is one ("No space left on
    device", "File too large"), not a library's whole report."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    if isinstance(error, OSError) and error.strerror:
        return " ".join(error.strerror.split())
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def temporary_path(path) -> Path:
    """A name beside `path` for writing it before the rename: same directory (a rename never
    crosses file systems), same ending (Keras wants `.weights.h5`, NumPy `.npz`)."""
    path = Path(path)
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def atomic_write(path, write: Callable[[Path], object],
                 error_type: type[OutputError] = OutputError, intact: str | None = None) -> Path:
    """Writes `path` with `write(temporary_path)`, then flushes and renames it over `path`.

    Whatever happens (an exception, a full disk, SIGKILL), `path` holds either its old content
    or the new one; a failure removes the temporary file and raises `error_type` (an
    `OutputError`) naming `path`, the cause, and what is left as it was (`intact`; by default
    the previous version of `path`, or nothing when it did not exist). Returns `path`.
    """
    path = Path(path)
    existed = path.exists()
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        wrapped = isinstance(error, Exception) and not isinstance(error, OutputError)
        if wrapped:
            cause = _cause(error)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover
            pass
        if wrapped:
            after = intact or ("the previous version is intact" if existed
                               else "nothing was written")
            raise error_type(f"{path}: could not be written ({cause}); {after}") from error
        raise
    _fsync_directory(path.parent)
    return path


def save_weights(model, path, error_type: type[OutputError] = OutputError,
                 intact: str | None = None) -> Path:
    """`model.save_weights(path)` (a `.weights.h5` file), through `atomic_write`.

    The HDF5 file is built in memory and written by Python: HDF5 itself, when a write fails
    (a full disk), leaves a file handle that crashes the process when it is closed. With a
    Keras that lacks the in-memory store, Keras writes the temporary file itself.
    """
    try:
        from keras.src.saving import saving_lib

        buffer = io.BytesIO()
        store = saving_lib.H5IOStore(buffer, mode="w")
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                               visited_saveables=set())
        store.close()
    except (ImportError, AttributeError):  # pragma: no cover - another Keras
        return atomic_write(path, model.save_weights, error_type, intact)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()), error_type,
                        intact)


def write_text(path, text: str, error_type: type[OutputError] = OutputError) -> Path:
    """`atomic_write` of a text file (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                        error_type)


def write_bytes(path, data: bytes, error_type: type[OutputError] = OutputError) -> Path:
    """`atomic_write` of a binary file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), error_type)


def check_output_path(path, suffixes: Iterable[str] = (), what: str = "--out",
                      directory: bool = False) -> Path:
    """Refuses, with one-line `OutputError`s, an output path that could not be written.

    `path` must end with one of `suffixes` (when given; `""` allows no suffix), its folder must
    exist and be writable, and it must not be a directory (unless `directory`: then it must
    not be a file). `what` names the option in the message. Returns `path` as a `Path`.
    """
    path = Path(path)
    suffixes = tuple(suffixes)
    if suffixes and not any(str(path).lower().endswith(s) for s in suffixes if s) and not (
            "" in suffixes and path.suffix == ""):
        wanted = " or ".join(s or "a name without an extension" for s in suffixes)
        raise OutputError(f"{what} {path}: the name must end with {wanted}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: the folder {parent} is not writable")
    if directory and path.is_file():
        raise OutputError(f"{what} {path}: is a file, not a directory")
    if not directory and path.is_dir():
        raise OutputError(f"{what} {path}: is a directory")
    return path
