"""What every model built on a featurizer and a backbone has in common (the classifier, the
pretraining model): its streams, its sample rate and the core of its config."""

from __future__ import annotations

import keras


class OnBackbone:
    """Mixin for a `keras.Model` with `featurizer` (`DiverseFeaturizer`) and `backbone`
    (`DiverseBackbone`) attributes."""

    @property
    def stream_names(self) -> list[str]:
        return self.backbone.stream_names

    @property
    def sample_rate(self) -> int:
        return self.featurizer.sample_rate

    def backbone_config(self) -> dict:
        """The config entries of the model's name, featurizer and backbone."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "featurizer": keras.saving.serialize_keras_object(self.featurizer),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
