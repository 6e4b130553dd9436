"""keras-dae: Diverse Audio Embeddings for Keras 3.

Front ends (`keras_dae.layers`) are Keras layers written with `keras.ops` only, so one model
takes raw waveform on TensorFlow, JAX and PyTorch alike. Submodules are imported on first
use, so that `keras-dae --backend ...` can choose the Keras backend before Keras loads.
"""

import importlib

from keras_dae.version import __version__

_SUBMODULES = (
    "audio", "concurrency", "data", "export", "layers", "metrics", "models", "scale", "training",
    "zoo",
)
# Tagging and embeddings: `keras_dae.tag("dog.wav")`, `keras_dae.embed(waveform)`.
_INFERENCE = ("tag", "embed", "Tagger", "inference", "hear", "demo")
__all__ = [*_SUBMODULES, *_INFERENCE, "__version__"]


def __getattr__(name):
    if name in _SUBMODULES or name in ("inference", "hear", "demo"):
        return _import(f"keras_dae.{name}")
    if name in _INFERENCE:
        return getattr(_import("keras_dae.inference"), name)
    raise AttributeError(f"module 'keras_dae' has no attribute {name!r}")


def _import(module: str):
    """Imports `module`; a missing Keras backend or optional dependency is a
    `ModuleNotFoundError` of one line naming the extra that installs it."""
    from keras_dae import extras

    with extras.naming_the_extra():
        return importlib.import_module(module)
