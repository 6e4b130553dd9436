"""Registration of keras-dae classes with Keras' serialization."""

import keras

PACKAGE = "keras_dae"


def register(cls):
    """Class decorator: registers `cls` as Keras-serializable under the `keras_dae` package.

    Every public layer and model goes through this decorator, so a `.keras` file or a preset
    config that names `keras_dae>ClassName` can be loaded in safe mode without custom objects.
    """
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
