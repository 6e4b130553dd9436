"""Text for people: refusals on one short line, names safe to print, and how a command's
error becomes that line and an exit status (`run_guarded`).

Standard library only, so that the command line can use it before Keras loads.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

from keras_dae.extras import BACKENDS, missing_module_line
from keras_dae.validation import InputError

# Where libraries append a whole object's config to a message (Keras does, 10-40 KB).
_CONFIG_FOLLOWS = (" Full object config:", " config=", " Received: config=")


def printable(text) -> str:
    """`text` safe to print: each character a terminal would act on (control characters,
    so escape sequences such as `"\\x1b[31m"`, bidirectional overrides, line separators)
    written as its Python escape; other characters, accented or not, are kept."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def one_line(text, limit: int = 200) -> str:
    """`text` as one printable line of at most `limit` characters: an error message fit to
    show, even when the library that raised it embedded a whole config in it."""
    text = " ".join(str(text).split())
    for marker in _CONFIG_FOLLOWS:
        text = text.split(marker)[0]
    text = printable(text)
    if len(text) > limit and ". " in text:  # the first sentence says what went wrong
        text = text.split(". ")[0] + "."
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or environment (one line, exit 2), not a bug.

    Modules that import Keras are consulted only when already loaded (an error of theirs
    cannot have been raised otherwise), so a refusal before Keras loads stays fast and quiet.
    """
    types = [InputError, OSError]  # a ValueError of NumPy's or Keras' is a bug
    if "keras_dae.zoo.preset_files" in sys.modules:
        types.append(sys.modules["keras_dae.zoo.preset_files"].PresetError)
    if "keras_dae.training" in sys.modules:
        training = sys.modules["keras_dae.training"]
        types += [training.PreflightError, training.CheckpointError]
    if "keras_dae.export.export_ready" in sys.modules:
        types.append(sys.modules["keras_dae.export.export_ready"].ExportError)
    return tuple(types)


def error_line(error: BaseException) -> str:
    """`error: <message>` on one short, printable line (`one_line`)."""
    message = error
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}"
    return f"error: {one_line(message, 600) or type(error).__name__}"


def run_guarded(func, args, debug: bool = False) -> int:
    """Runs `func(args)`, a command; its errors become one line on stderr and an exit status.

    2: bad input or environment (`user_error_types`, or the Keras backend not installed);
    1: anything else, which is a bug (the line says so); 130: interrupted. With `debug`, the
    traceback is shown as well.
    """
    try:
        return func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        if debug:
            raise
        return 130
    except Exception as error:
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(error, user_error_types()):
            print(error_line(error), file=sys.stderr)
            return 2
        missing = (getattr(error, "name", None) or "").split(".")[0]
        if isinstance(error, ModuleNotFoundError) and missing in BACKENDS:
            # Keras' backend (KERAS_BACKEND, else ~/.keras/keras.json, else tensorflow) is
            # imported with Keras: an install with another extra, e.g. only [jax].
            print(f"error: {missing} is not installed: choose an installed Keras backend "
                  f"with --backend or KERAS_BACKEND, or pip install 'keras-dae[{missing}]'",
                  file=sys.stderr)
            return 2
        if missing_module_line(error):  # an optional dependency: which extra installs it
            print(f"error: {missing_module_line(error)}", file=sys.stderr)
            return 2
        print(f"{error_line(error)} (an internal error: {type(error).__name__}; please "
              "report it, with the output of --debug)", file=sys.stderr)
        return 1


@contextlib.contextmanager
def warnings_on_one_line(enabled: bool = True):
    """Within the block, each Python warning is shown as `warning: <message>` on one line
    of stderr (no file, line or source), as the command line shows them without --debug."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)

    shown = warnings.showwarning
    if enabled:
        warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
