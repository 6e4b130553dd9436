"""SpecAugment-style masking of a feature sequence, active only in training."""

from __future__ import annotations

import keras
from keras import ops

from keras_dae.serialization import register
from keras_dae.validation import InputError


@register
class FeatureMasking(keras.layers.Layer):
    """Zeroes random spans of frames and of features in `(batch, frames, features)` inputs.

    The masking of SpecAugment (Park et al., Interspeech 2019, arXiv 1904.08779), applied to
    any stream's features: each example gets `time_masks` spans of consecutive frames, each
    of a width drawn uniformly from `[0, time_mask_fraction * frames]`, and `feature_masks`
    spans of consecutive feature channels, each up to `feature_mask_fraction * features`
    wide. Masked values are set to `mask_value` (0 after per-feature normalisation, i.e. the
    training mean). The layer is the identity outside training and when both counts are 0.

    Widths are fractions rather than SpecAugment's absolute F and T so that one setting
    suits streams of different frame rates and feature sizes.

    Args:
        time_masks: spans of frames masked per example.
        time_mask_fraction: the widest time span, as a fraction of the frames.
        feature_masks: spans of feature channels masked per example.
        feature_mask_fraction: the widest feature span, as a fraction of the features.
        mask_value: what masked positions are set to.
        seed: seed of the layer's random generator.
    """

    PARAMETERS = ("time_masks", "time_mask_fraction", "feature_masks",
                  "feature_mask_fraction", "mask_value")

    def __init__(self, time_masks: int = 2, time_mask_fraction: float = 0.1,
                 feature_masks: int = 2, feature_mask_fraction: float = 0.1,
                 mask_value: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("time_masks", time_masks), ("feature_masks", feature_masks)):
            if value is None or int(value) != value or value < 0:
                raise InputError(f"`{name}` must be a non-negative integer, got {value!r}.")
        for name, value in (("time_mask_fraction", time_mask_fraction),
                            ("feature_mask_fraction", feature_mask_fraction)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"`{name}` must be in [0, 1], got {value!r}.")
        self.time_masks = int(time_masks)
        self.time_mask_fraction = float(time_mask_fraction)
        self.feature_masks = int(feature_masks)
        self.feature_mask_fraction = float(feature_mask_fraction)
        self.mask_value = float(mask_value)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    @property
    def active(self) -> bool:
        return (self.time_masks > 0 and self.time_mask_fraction > 0) or (
            self.feature_masks > 0 and self.feature_mask_fraction > 0)

    def _span_mask(self, batch, length, count, fraction):
        """bool `(batch, length)`: True inside any of `count` random spans per example."""
        length_f = ops.cast(length, "float32")
        widths = ops.floor(keras.random.uniform((batch, count), seed=self.seed_generator)
                           * (fraction * length_f + 1.0))
        widths = ops.minimum(widths, length_f)
        starts = ops.floor(keras.random.uniform((batch, count), seed=self.seed_generator)
                           * (length_f - widths + 1.0))
        positions = ops.cast(ops.arange(length), "float32")[None, None, :]
        inside = ops.logical_and(positions >= starts[:, :, None],
                                 positions < (starts + widths)[:, :, None])
        return ops.any(inside, axis=1)

    def call(self, inputs, training=None):
        if not training or not self.active:
            return inputs
        shape = ops.shape(inputs)
        batch, frames, features = shape[0], shape[1], shape[2]
        masked = ops.zeros_like(inputs[..., 0], dtype="bool")
        if self.time_masks > 0 and self.time_mask_fraction > 0:
            masked = ops.logical_or(masked, self._span_mask(
                batch, frames, self.time_masks, self.time_mask_fraction))
        keep = ops.logical_not(masked)[:, :, None]
        if self.feature_masks > 0 and self.feature_mask_fraction > 0:
            channels = self._span_mask(batch, features, self.feature_masks,
                                       self.feature_mask_fraction)
            keep = ops.logical_and(keep, ops.logical_not(channels)[:, None, :])
        fill = ops.cast(self.mask_value, inputs.dtype)
        return ops.where(keep, inputs, fill)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self.PARAMETERS}, seed=self.seed)
        return config
