"""One stream's Transformer tower: feature sequence in, a fixed-size embedding out."""

from __future__ import annotations

import keras

from keras_dae.models.feature_masking import FeatureMasking
from keras_dae.models.position_embedding import PositionEmbedding
from keras_dae.models.transformer_encoder import TransformerEncoder
from keras_dae.serialization import register
from keras_dae.validation import InputError


@register
class StreamTower(keras.layers.Layer):
    """Maps a feature sequence `(batch, frames, features)` to an embedding `(batch, d_model)`.

    Per-feature normalisation (`keras.layers.Normalization`, whose mean and variance are set
    from training data with `tower.normalization.adapt(...)` and saved with the weights),
    SpecAugment-style masking of frames and features in training (`FeatureMasking`), a
    linear projection to `d_model`, learned position embeddings, `num_layers` Transformer
    encoder blocks with average pooling over time by 2 after every `downsample_every` blocks
    (as in Audio Transformers, arXiv 2105.00335, which pools inside the stack), then a final
    layer norm and mean pooling over time. `tower(features, return_sequence=True)` gives the
    frames before that mean, `(batch, output_frames, d_model)` (`output_frames`: the input's
    frames halved, rounding up, at each pooling): what a frame-level objective reads.

    Args:
        d_model: width of the tower and size of its embedding (the paper's 64).
        num_layers: Transformer blocks.
        num_heads: attention heads per block.
        intermediate_dim: feed-forward width inside each block.
        dropout: dropout inside the blocks.
        max_frames: longest input the position table covers (frames per chunk).
        downsample_every: pool time by 2 after every this many blocks (0 or None: never).
        normalize_first: pre-norm blocks (default post-norm, as keras-hub's default).
        feature_masking: arguments of the `FeatureMasking` layer applied to the normalised
            features in training (None: no masking).
    """

    def __init__(
        self,
        d_model: int = 64,
        num_layers: int = 6,
        num_heads: int = 8,
        intermediate_dim: int = 1024,
        dropout: float = 0.1,
        max_frames: int = 128,
        downsample_every: int | None = 2,
        normalize_first: bool = False,
        feature_masking: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("d_model", d_model), ("num_layers", num_layers),
                            ("max_frames", max_frames)):
            if value is None or value <= 0:
                raise InputError(f"`{name}` must be positive, got {value!r}.")
        self.d_model = int(d_model)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.max_frames = int(max_frames)
        self.downsample_every = int(downsample_every or 0)
        self.normalize_first = bool(normalize_first)
        self.feature_masking = dict(feature_masking) if feature_masking else None
        policy = self.dtype_policy
        # Feature statistics stay in float32 under mixed precision.
        self.normalization = keras.layers.Normalization(axis=-1, name="normalization",
                                                        dtype="float32")
        self.masking = FeatureMasking(
            **(self.feature_masking or {"time_masks": 0, "feature_masks": 0}),
            name="feature_masking", dtype="float32")
        self.projection = keras.layers.Dense(d_model, name="projection", dtype=policy)
        self.position_embedding = PositionEmbedding(max_frames, name="position_embedding",
                                                    dtype=policy)
        self.blocks = [
            TransformerEncoder(intermediate_dim, num_heads, dropout=dropout, activation="gelu",
                               normalize_first=normalize_first, name=f"block_{i}", dtype=policy)
            for i in range(num_layers)
        ]
        self.pool = keras.layers.AveragePooling1D(2, padding="same", dtype=policy)
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm",
                                                          dtype=policy)

    @property
    def input_dtype(self):
        # Features enter in float32 under any dtype policy: normalisation (float32) comes
        # first, and raw features (Hz, dB) rounded to bfloat16 would lose up to 1/256 of
        # their value before it. The projection casts the normalised features down.
        return "float32"

    def set_feature_masking(self, feature_masking: dict | None) -> None:
        """Changes the training-time masking (None: off); takes effect at the next compile."""
        self.feature_masking = dict(feature_masking) if feature_masking else None
        wanted = FeatureMasking(**{"time_masks": 0, "feature_masks": 0,
                                   **(self.feature_masking or {})})
        for key in FeatureMasking.PARAMETERS:
            setattr(self.masking, key, getattr(wanted, key))

    def _pools_after(self, index: int) -> bool:
        return (self.downsample_every > 0 and (index + 1) % self.downsample_every == 0
                and index + 1 < self.num_layers)

    def build(self, input_shape):
        self.normalization.build(input_shape)
        self.projection.build(input_shape)
        shape = (*input_shape[:-1], self.d_model)
        self.position_embedding.build(shape)
        for i, block in enumerate(self.blocks):
            block.build(shape)
            if self._pools_after(i):
                frames = None if shape[1] is None else -(-shape[1] // 2)
                shape = (shape[0], frames, self.d_model)
        self.final_norm.build(shape)

    def call(self, features, training=None, return_sequence=False):
        x = self.sequences(features, training=training)[-1]
        return x if return_sequence else keras.ops.mean(x, axis=1)

    def sequences(self, features, training=None) -> list:
        """The frames at each step of the tower, `[input, block_0, ..., block_{n-1}, output]`:
        the normalised (and, in training, masked) features projected to `d_model` with their
        position embeddings, each block's output (pooled over time where the tower pools
        after it), and the final layer norm's (`return_sequence`'s frames). What a sound does
        over time can be followed through them (`keras_dae.metrics.temporal_share`)."""
        x = self.masking(self.normalization(features), training=training)
        x = self.projection(x)
        steps = [x + self.position_embedding(x)]
        for i, block in enumerate(self.blocks):
            x = block(steps[-1], training=training)
            steps.append(self.pool(x) if self._pools_after(i) else x)
        steps.append(self.final_norm(steps[-1]))
        return steps

    def output_frames(self, frames: int | None) -> int | None:
        """How many frames `return_sequence` gives for `frames` input frames."""
        for i in range(self.num_layers):
            if frames is not None and self._pools_after(i):
                frames = -(-frames // 2)
        return frames

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.d_model)

    def compute_output_spec(self, features, training=None, return_sequence=False):
        shape = ((features.shape[0], self.output_frames(features.shape[1]), self.d_model)
                 if return_sequence else self.compute_output_shape(features.shape))
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "d_model": self.d_model,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "max_frames": self.max_frames,
                "downsample_every": self.downsample_every,
                "normalize_first": self.normalize_first,
                "feature_masking": self.feature_masking,
            }
        )
        return config
