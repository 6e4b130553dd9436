"""Learned position embeddings for sequences up to a fixed length."""

from __future__ import annotations

import keras
from keras import ops

from keras_dae.serialization import register
from keras_dae.validation import InputError


@register
class PositionEmbedding(keras.layers.Layer):
    """Returns a learned embedding per position, shaped like its input (to be added to it).

    The same computation as `keras_hub.layers.PositionEmbedding` (tested equal where keras-hub
    is installed; see `TransformerEncoder` for why keras-dae carries its own).

    Input `(batch, frames, dim)` with `frames <= sequence_length`; output the same shape: the
    first `frames` rows of a `(sequence_length, dim)` table, broadcast over the batch.
    """

    def __init__(self, sequence_length: int, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if sequence_length is None or sequence_length <= 0:
            raise InputError(f"`sequence_length` must be positive, got {sequence_length!r}.")
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def build(self, inputs_shape):
        frames = inputs_shape[-2]
        if frames is not None and frames > self.sequence_length:
            raise InputError(
                f"Input has {frames} frames, more than this PositionEmbedding's "
                f"sequence_length={self.sequence_length}; raise it in the config."
            )
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, inputs_shape[-1]),
            initializer=self.initializer,
            trainable=True,
        )

    def call(self, inputs):
        shape = ops.shape(inputs)
        table = ops.convert_to_tensor(self.position_embeddings)
        table = ops.slice(table, (0, 0), (shape[-2], shape[-1]))
        return ops.broadcast_to(ops.cast(table, self.compute_dtype), shape)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
