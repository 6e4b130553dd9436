"""The tagger: waveform in, fused and per-stream class probabilities out."""

from __future__ import annotations

import keras

from keras_dae.models.backbone import DiverseBackbone
from keras_dae.models.featurizer import DiverseFeaturizer
from keras_dae.serialization import register


@register
class DiverseClassifier(keras.Model):
    """Featurizer + backbone + heads: the Diverse Audio Embeddings tagger (arXiv 2309.08751).

    Input: float32 waveform `(batch, samples)` at the featurizer's sample rate (1 s chunks in
    the paper's recipe). Outputs, a dict:
    - `"fused"`: `(batch, num_classes)` sigmoid probabilities of the fusion head, one linear
      layer on the concatenated stream embeddings;
    - one entry per stream (`"pitch"`, `"timbre"`, ...): that stream's own sigmoid head on its
      own embedding, for training and scoring each stream alone;
    - `"embedding"`: the concatenated embeddings `(batch, n_streams * d_model)`.

    Args:
        backbone: a `DiverseBackbone` (or its serialized config).
        featurizer: a `DiverseFeaturizer` (or its serialized config) whose streams and
            feature sizes match the backbone's inputs.
        num_classes: number of output classes.
        dropout: dropout on the embeddings before the heads during training.
    """

    def __init__(self, backbone, featurizer, num_classes: int, dropout: float = 0.0, **kwargs):
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if isinstance(featurizer, dict):
            featurizer = keras.saving.deserialize_keras_object(featurizer)
        if num_classes is None or num_classes <= 0:
            raise ValueError(f"`num_classes` must be positive, got {num_classes!r}.")
        dims = featurizer.feature_dims()
        if dims != backbone.feature_dims:
            raise ValueError(
                f"The featurizer's streams {dims} do not match the backbone's inputs "
                f"{backbone.feature_dims}."
            )
        waveform = keras.Input(shape=(None,), name="waveform")
        features = featurizer(waveform)
        embeddings = backbone(features)
        heads = {}
        outputs = {}
        drop = keras.layers.Dropout(dropout, name="head_dropout")
        fusion = keras.layers.Dense(num_classes, activation="sigmoid", name="fused",
                                    dtype="float32")
        outputs["fused"] = fusion(drop(embeddings["embedding"]))
        for stream in backbone.stream_names:
            heads[stream] = keras.layers.Dense(num_classes, activation="sigmoid", name=stream,
                                               dtype="float32")
            outputs[stream] = heads[stream](drop(embeddings[stream]))
        outputs["embedding"] = keras.layers.Identity(name="embedding", dtype="float32")(
            embeddings["embedding"]
        )
        super().__init__(inputs=waveform, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.featurizer = featurizer
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        self.fusion_head = fusion
        self.stream_heads = heads

    @property
    def stream_names(self) -> list[str]:
        return self.backbone.stream_names

    def with_feature_inputs(self, streams) -> keras.Model:
        """A model that shares every layer (and weight) of this one, but takes the features
        of `streams` as inputs instead of computing them from the waveform.

        Inputs: a dict with one `(batch, frames, dim)` array per stream of `streams` (under
        `"<stream>_features"`), and `"waveform"` when any other stream is left (its features are computed as usual).
        Outputs: `"fused"` and one per stream, as this model's. Training it trains this
        model: it is how cached handcrafted features (`keras_dae.data.FeatureCache`) are fed.
        """
        streams = list(streams)
        unknown = set(streams) - set(self.stream_names)
        if unknown:
            raise ValueError(f"Unknown streams {sorted(unknown)}; this model has "
                             f"{self.stream_names}.")
        dims = self.featurizer.feature_dims()
        inputs = {f"{name}_features": keras.Input(shape=(None, dims[name]),
                                                  name=f"{name}_features") for name in streams}
        features = {name: inputs[f"{name}_features"] for name in streams}
        computed = [name for name in self.stream_names if name not in streams]
        if computed:
            # The other streams' front ends, wrapped in a model of their own so that their
            # layer names cannot clash with the heads' (a head is named after its stream).
            waveform = keras.Input(shape=(None,), name="waveform")
            rest = keras.Model(waveform, {name: self.featurizer.stream_features(waveform, name)
                                          for name in computed}, name="computed_features")
            inputs["waveform"] = keras.Input(shape=(None,), name="waveform")
            features.update(rest(inputs["waveform"]))
        features = {name: features[name] for name in self.stream_names}
        embeddings = self.backbone(features)
        drop = self.get_layer("head_dropout")
        outputs = {"fused": self.fusion_head(drop(embeddings["embedding"]))}
        for name, head in self.stream_heads.items():
            outputs[name] = head(drop(embeddings[name]))
        return keras.Model(inputs, outputs, name=f"{self.name}_feature_inputs")

    @property
    def sample_rate(self) -> int:
        return self.featurizer.sample_rate

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "featurizer": keras.saving.serialize_keras_object(self.featurizer),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_diverse_classifier(num_classes: int, sample_rate: int = 16000,
                             tower: dict | None = None, streams: dict | None = None,
                             **kwargs) -> DiverseClassifier:
    """The classifier with the default (or given) front ends and tower configuration."""
    featurizer = DiverseFeaturizer(streams=streams, sample_rate=sample_rate)
    backbone = DiverseBackbone(featurizer.feature_dims(), tower=tower)
    return DiverseClassifier(backbone, featurizer, num_classes=num_classes, **kwargs)
