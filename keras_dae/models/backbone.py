"""The Diverse Audio Embeddings backbone: one Transformer tower per stream."""

from __future__ import annotations

import keras

from keras_dae.models.stream_tower import StreamTower
from keras_dae.serialization import register
from keras_dae.validation import InputError

# SpecAugment-style masking for `keras-dae train --feature-masking on`: two spans of up to 10%
# of the frames and two of up to 10% of the feature channels per example. Off by default: on
# the sampled dataset it raised the streams' val mAP but not eval mAP (docs/results.md, "A real run").
DEFAULT_FEATURE_MASKING = dict(time_masks=2, time_mask_fraction=0.1, feature_masks=2,
                               feature_mask_fraction=0.1)
TOWER_DEFAULTS = dict(
    d_model=64, num_layers=6, num_heads=8, intermediate_dim=1024, dropout=0.1,
    max_frames=128, downsample_every=2, normalize_first=False,
    feature_masking=None,
)


@register
class DiverseBackbone(keras.Model):
    """A functional multi-input model: per-stream feature sequences to per-stream embeddings.

    Inputs: a dict `{stream: (batch, frames, feature_dims[stream])}`. Outputs: a dict with one
    `(batch, d_model)` embedding per stream and `"embedding"`, their concatenation in stream
    order `(batch, n_streams * d_model)`. Each stream has its own `StreamTower`, reachable as
    `backbone.towers[stream]`.

    Args:
        feature_dims: dict of stream name to its number of input features (insertion order is
            the order of the concatenated embedding).
        tower: keyword arguments of `StreamTower` shared by every tower (defaults:
            `TOWER_DEFAULTS`).
        tower_overrides: optional dict of stream name to tower arguments that differ for it.
    """

    def __init__(self, feature_dims: dict, tower: dict | None = None,
                 tower_overrides: dict | None = None, **kwargs):
        tower_args = {**TOWER_DEFAULTS, **(tower or {})}
        tower_overrides = {k: dict(v) for k, v in (tower_overrides or {}).items()}
        unknown = set(tower_overrides) - set(feature_dims)
        if unknown:
            raise InputError(f"tower_overrides names unknown streams {sorted(unknown)}.")
        inputs = {
            name: keras.Input(shape=(None, dim), name=name)
            for name, dim in feature_dims.items()
        }
        towers = {
            name: StreamTower(**{**tower_args, **tower_overrides.get(name, {})},
                              name=f"{name}_tower")
            for name in feature_dims
        }
        outputs = {name: towers[name](inputs[name]) for name in feature_dims}
        outputs["embedding"] = keras.layers.Concatenate(name="embedding")(
            [outputs[name] for name in feature_dims]
        )
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.feature_dims = dict(feature_dims)
        self.tower_args = tower_args
        self.tower_overrides = tower_overrides
        self.towers = towers

    @property
    def stream_names(self) -> list[str]:
        return list(self.feature_dims)

    def reinitialize_attention(self, like_new_block: bool = False) -> None:
        """Draws the attention weights of every tower's blocks anew, keeping all the others
        (`TransformerEncoder.reinitialize_attention`: by default smaller than a new block's,
        query, key and value tied; `like_new_block`: as a new block draws them)."""
        for tower in self.towers.values():
            for block in tower.blocks:
                block.reinitialize_attention(like_new_block)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "feature_dims": self.feature_dims,
            "tower": self.tower_args,
            "tower_overrides": self.tower_overrides,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
