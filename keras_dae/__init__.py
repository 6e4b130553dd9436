"""keras-dae: Diverse Audio Embeddings for Keras 3.

Front ends (`keras_dae.layers`) are Keras layers written with `keras.ops` only, so one model
takes raw waveform on TensorFlow, JAX and PyTorch alike. Submodules are imported on first
use, so that `keras-dae --backend ...` can choose the Keras backend before Keras loads.
"""

import importlib

from keras_dae.version import __version__

_SUBMODULES = (
    "audio", "concurrency", "data", "layers", "metrics", "models", "training", "zoo",
)
__all__ = [*_SUBMODULES, "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_dae.{name}")
    raise AttributeError(f"module 'keras_dae' has no attribute {name!r}")
