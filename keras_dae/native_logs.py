"""Native libraries' log lines kept off the terminal: what `keras-dae` commands do unless
`--debug` is given, and what a script can do too:

    from keras_dae import native_logs

    with native_logs.quiet():
        import keras_dae   # TensorFlow's CUDA probes and oneDNN notices are not printed

TensorFlow's C++ side logs through TF_CPP_MIN_LOG_LEVEL (set before it loads) and, before absl
is set up, straight to file descriptor 2 (sent to /dev/null while TensorFlow's modules execute).
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def stderr_silenced(enabled: bool = True):
    """Sends what C++ libraries write to file descriptor 2 to /dev/null for a while.

    TensorFlow 2.21 logs several INFO lines through absl when it loads, whatever
    TF_CPP_MIN_LOG_LEVEL says. Python's own errors are exceptions, raised after the
    descriptor is restored; `--debug` leaves everything visible.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietImport:
    """A `sys.meta_path` finder that imports `modules` as usual, with file descriptor 2 sent
    to /dev/null while they execute: what TensorFlow's C++ side writes through absl before
    its logging is set up ("All log messages before absl::InitializeLog()", "Could not find
    cuda drivers") obeys no environment variable."""

    modules = ("tensorflow",)

    def find_spec(self, name, path=None, target=None):
        if name not in self.modules:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilencedLoader(spec.loader)
        return spec


class _SilencedLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with stderr_silenced():
            self.loader.exec_module(module)

    def __getattr__(self, name):  # the rest of the loader's interface (resources, ...)
        return getattr(self.loader, name)


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Native libraries' log lines off inside the block (`enabled=False`: on): TensorFlow's
    C++ logs (CUDA probes, oneDNN and CPU-feature notices) through TF_CPP_MIN_LOG_LEVEL, set
    before TensorFlow loads, and its pre-absl lines through `_QuietImport`."""
    if not enabled:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    finder = _QuietImport()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
