"""The tagger: waveform in, fused and per-stream class probabilities out."""

from __future__ import annotations

import keras

from keras_dae.models.backbone import DiverseBackbone
from keras_dae.models.featurizer import DiverseFeaturizer
from keras_dae.models.on_backbone import OnBackbone
from keras_dae.serialization import register
from keras_dae.validation import InputError


@register
class DiverseClassifier(OnBackbone, keras.Model):
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
        class_names: the name of each class (default `class_0`, `class_1`, ...).
        class_mids: the AudioSet id of each class, `""` where there is none (default: none).

    The class names and AudioSet ids are part of the model's config: saving (`.keras`, a
    preset), loading, `keras_dae.scale.with_precision` and the export-ready copy keep them.

    Presets (see `keras_dae.zoo`), as in keras-hub:

        model = DiverseClassifier.from_preset("diverse_sampled15")
        tuned = DiverseClassifier.from_preset("runs/my_run", class_names=["dog", "cat"])
        model.save_to_preset("my_preset")
    """

    def __init__(self, backbone, featurizer, num_classes: int, dropout: float = 0.0,
                 class_names=None, class_mids=None, **kwargs):
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if isinstance(featurizer, dict):
            featurizer = keras.saving.deserialize_keras_object(featurizer)
        if num_classes is None or num_classes <= 0:
            raise InputError(f"`num_classes` must be positive, got {num_classes!r}.")
        class_names = list(class_names) if class_names is not None else default_class_names(
            num_classes)
        class_mids = list(class_mids) if class_mids is not None else [""] * num_classes
        for what, values in (("class_names", class_names), ("class_mids", class_mids)):
            if len(values) != num_classes:
                raise InputError(f"{len(values)} {what} for a model with {num_classes} classes.")
        dims = featurizer.feature_dims()
        if dims != backbone.feature_dims:
            raise InputError(
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
        self.class_names = class_names
        self.class_mids = class_mids
        self.fusion_head = fusion
        self.stream_heads = heads

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
            raise InputError(f"Unknown streams {sorted(unknown)}; this model has "
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

    def with_streams(self, streams) -> DiverseClassifier:
        """A new classifier on some of this one's streams, with their variables.

        Args:
            streams: the names of the streams to keep (a list, or one string separated by
                commas: `"pitch,timbre"`); they keep this model's stream order, whatever
                order they are given in.

        The copy has the same front ends, tower settings (and the kept streams' overrides),
        classes and dropout, and every variable of the kept front ends, towers and stream
        heads, so each kept stream's output is this model's. The fused output: with one
        stream, that stream's own head (the two outputs are equal); with several, the rows of
        the fusion kernel that read the kept streams' embeddings and the original bias. The
        full model's fused logit is the bias plus one term per stream, so this leaves out the
        dropped streams' terms: an approximation. For the best fused accuracy on a subset,
        refit the fusion head on it (`keras-dae finetune --mode probe --streams ...`).

        The copy is rebuilt from this model's config as `keras_dae.models.derived_model`
        does (under the current dtype policy) and saves and loads like any classifier.
        An unknown stream, a stream given twice, or none raise an `InputError` naming them.
        """
        from keras_dae.models.stream_subset import with_streams

        return with_streams(self, streams)

    def get_config(self):
        return {
            **self.backbone_config(),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "class_names": [str(name) for name in self.class_names],
            "class_mids": [str(mid) for mid in self.class_mids],
        }

    @classmethod
    def with_default_frontends(cls, num_classes: int, sample_rate: int = 16000,
                               tower: dict | None = None, streams: dict | None = None,
                               **kwargs) -> DiverseClassifier:
        """A new classifier of `num_classes` on the paper's four streams (or `streams`, name ->
        list of front-end layers) and towers configured by `tower` (see `TOWER_DEFAULTS`);
        `kwargs` go to the constructor (`dropout`, `class_names`, ...)."""
        featurizer = DiverseFeaturizer(streams=streams, sample_rate=sample_rate)
        backbone = DiverseBackbone(featurizer.feature_dims(), tower=tower)
        return cls(backbone, featurizer, num_classes=num_classes, **kwargs)

    @classmethod
    def from_preset(cls, preset, load_weights=True, streams=None,
                    **kwargs) -> DiverseClassifier:
        """The classifier of a preset name (`keras_dae.zoo.list_presets()`), a preset
        directory or a training run directory (its `preset/`).

        Args:
            preset: the name or directory.
            load_weights: True: the preset's weights (a one-line `PresetError` says how to
                get or train them when they are missing); False: random initialisation; a
                path to a `.weights.h5` file: those weights.
            **kwargs: config values to override. `class_names` (with `class_mids`, default
                none) or a different `num_classes` keep the featurizer and towers with their
                weights and replace every head by a freshly initialised one (fine-tuning).
            streams: None (every stream), or the streams to keep: the loaded model (with its
                weights, and its new heads when `**kwargs` ask for them) becomes
                `model.with_streams(streams)`.

        Loading uses Keras' safe mode and only keras-dae's own classes, and refuses weights
        whose SHA-256 is not the one the preset's `metadata.json` records.
        """
        from keras_dae.zoo.loading import load_preset

        model = load_preset(cls, preset, load_weights, **kwargs)
        return model if streams is None else model.with_streams(streams)

    def save_to_preset(self, preset_dir, metadata: dict | None = None):
        """Writes this model as a preset directory: `config.json`, `model.weights.h5`,
        `metadata.json` (versions, backend, `weights_sha256`, and `metadata`) and
        `labels.csv` (the class names and AudioSet ids). Returns the directory."""
        from keras_dae.zoo.loading import save_preset

        return save_preset(self, preset_dir, metadata=metadata)


def default_class_names(num_classes: int) -> list[str]:
    """`class_0`, `class_1`, ...: the names of classes nobody named."""
    return [f"class_{i}" for i in range(int(num_classes))]


def build_diverse_classifier(num_classes: int, sample_rate: int = 16000,
                             tower: dict | None = None, streams: dict | None = None,
                             **kwargs) -> DiverseClassifier:
    """The classifier with the default (or given) front ends and tower configuration
    (`DiverseClassifier.with_default_frontends`)."""
    return DiverseClassifier.with_default_frontends(num_classes, sample_rate, tower, streams,
                                                    **kwargs)
