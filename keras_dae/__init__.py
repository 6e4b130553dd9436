"""keras-dae: Diverse Audio Embeddings for Keras 3.

Front ends (`keras_dae.layers`) are Keras layers written with `keras.ops` only, so one model
takes raw waveform on TensorFlow, JAX and PyTorch alike.
"""

from keras_dae import layers
from keras_dae.version import __version__

__all__ = ["layers", "__version__"]
