"""SavedModel: Keras' `ExportArchive` with one signature from raw waveform to named outputs."""

from __future__ import annotations

import functools
from pathlib import Path

import keras

from keras_dae.export.artifact import INPUT_NAME

SIGNATURE = "serving_default"


def write_savedmodel(model, directory, window: int, batch_size: int | None = None) -> Path:
    """Writes `model` (TensorFlow backend) as a SavedModel at `directory`.

    The `serving_default` signature (also the `serve` endpoint) takes `waveform`, float32
    `(batch, window)` (`batch` fixed to `batch_size`, or any when None), and returns the
    model's dict of outputs under their names.
    """
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        functools.partial(model.__call__, training=False),
        input_signature=[tf.TensorSpec((batch_size, window), tf.float32, name=INPUT_NAME)],
    )
    directory = Path(directory)
    archive.write_out(str(directory), verbose=False)
    return directory
