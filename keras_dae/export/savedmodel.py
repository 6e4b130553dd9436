"""SavedModel: Keras' `ExportArchive` with one signature from raw waveform to named outputs."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import keras

from keras_dae import atomic
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
    # Written beside its place and swapped in: an earlier export there stays whole until the
    # new one is complete (export.check_export_path refused anything else there).
    directory = Path(directory)
    tmp = atomic.temporary_path(directory)
    old = tmp.with_name(tmp.name + ".old")
    try:
        archive.write_out(str(tmp), verbose=False)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return directory
