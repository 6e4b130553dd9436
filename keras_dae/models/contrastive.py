"""Self-supervised pretraining of the four towers: COLA's contrastive objective on 1 s chunks.

COLA (Saeed, Grangier and Zeghidour, ICASSP 2021, arXiv 2010.10915) learns general-purpose
audio embeddings without labels: two segments of the same recording are a positive pair, the
other recordings' segments in the batch are the negatives, and the encoder is trained to pick
each anchor's positive by a bilinear similarity of projected embeddings (softmax over the
batch). `DiverseContrastive` applies it to every stream at once: the shared featurizer and
backbone embed both segments, and each stream has its own projection, its own similarity and
its own loss, so every tower (and the Neuralogram's window network and the learned filterbank,
the front ends that hold weights) learns from its own objective, as each tower is trained on
its own in the supervised recipe. With `prediction_weight` > 0, every tower's embedding also
regresses the handcrafted streams' clip statistics (`ClipStatistics`, `FeaturePrediction`), as
PASE's workers regress MFCCs and prosody beside its contrastive ones; with
`frame_prediction_weight` > 0, every tower's output frames regress those features frame by
frame (`FrameFeatures`), as PASE's workers do.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_dae.models.backbone import DiverseBackbone
from keras_dae.models.featurizer import DiverseFeaturizer
from keras_dae.models.on_backbone import OnBackbone
from keras_dae.serialization import register
from keras_dae.validation import InputError

#: COLA's projection size (its Table 1 setting: a 512-d embedding projected to 512); our towers'
#: embeddings are 64-d, and so are their projections.
DEFAULT_PROJECTION_DIM = 64


@register
class PairSimilarity(keras.layers.Layer):
    """`(anchors (B, D), positives (B, D))` to the bilinear similarities `(B, B)`:
    `s[i, j] = anchor_i^T W positive_j`, COLA's score; row `i`'s right column is `i`."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.bilinear = keras.layers.Dense(self.dim, use_bias=False, name="bilinear",
                                           dtype=self.dtype_policy)

    def build(self, input_shape):
        self.bilinear.build(input_shape[1])

    def call(self, inputs):
        anchors, positives = inputs
        anchors = ops.cast(anchors, "float32")
        transformed = ops.cast(self.bilinear(positives), "float32")
        return ops.matmul(anchors, ops.transpose(transformed))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[1][0])

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


# Keras's JAX trainer counts only the last call's `add_loss` of a layer called more than once in
# a model (keras 3.15), so the two layers below take both views of a pair in one call.


@register
class EmbeddingSpread(keras.layers.Layer):
    """VICReg's variance and covariance terms (Bardes, Ponce and LeCun, ICLR 2022) on a batch
    of embeddings `(B, D)`, or on each of a list of them (the views of a pair), times `weight`
    and summed, added to the model's loss; returns its input.

    Variance: the mean over the `D` dimensions of `relu(1 - std)` (each dimension's standard
    deviation over the batch, `eps` 1e-4 under the root); covariance: the sum of the squared
    off-diagonal covariances over `D`. Together they keep an embedding from collapsing onto a
    few directions, which a contrastive loss over a small batch lets it do."""

    def __init__(self, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = float(weight)

    @staticmethod
    def terms(x):
        x = ops.cast(x, "float32")
        n = ops.cast(ops.shape(x)[0], "float32")
        centred = x - ops.mean(x, axis=0, keepdims=True)
        variance = ops.sum(ops.square(centred), axis=0) / (n - 1.0)
        spread = ops.mean(ops.relu(1.0 - ops.sqrt(variance + 1e-4)))
        covariance = ops.matmul(ops.transpose(centred), centred) / (n - 1.0)
        off_diagonal = ops.sum(ops.square(covariance)) - ops.sum(ops.square(variance))
        return spread + off_diagonal / x.shape[-1]

    def call(self, inputs):
        views = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        self.add_loss(self.weight * sum(self.terms(x) for x in views))
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


@register
class ClipStatistics(keras.layers.Layer):
    """Feature sequences `[(B, T_i, F_i), ...]` to their clip statistics `(B, 2 * sum F_i)`:
    each feature's mean and standard deviation over the frames, concatenated, then
    standardised per statistic (`normalization`, set from training clips by `adapt`). No
    gradient flows through them: they are targets."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.normalization = keras.layers.Normalization(axis=-1, name="normalization",
                                                        dtype="float32")

    def build(self, input_shape):
        self.normalization.build(self.compute_output_shape(input_shape))

    @staticmethod
    def statistics(inputs):
        parts = []
        for x in inputs:
            x = ops.cast(x, "float32")
            mean = ops.mean(x, axis=1)
            deviation = ops.sqrt(ops.mean(ops.square(x - mean[:, None, :]), axis=1) + 1e-6)
            parts += [mean, deviation]
        return ops.concatenate(parts, axis=-1)

    def adapt(self, inputs) -> None:
        """Sets the standardisation from a sample of clips' feature sequences (arrays)."""
        self.normalization.adapt(ops.convert_to_numpy(self.statistics(inputs)))

    def call(self, inputs):
        return ops.stop_gradient(self.normalization(self.statistics(inputs)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2 * sum(shape[-1] for shape in input_shape))


@register
class FrameFeatures(keras.layers.Layer):
    """`[features_1 (B, T_1, F_1), ..., features_n, frames (B, T, D)]` to the `n` feature
    sequences on the grid of `frames` (a tower's output frames), `(B, T, F_1 + ... + F_n)`:
    each stream's features standardised per feature (its own `Normalization`, set from the
    frames of training clips by `adapt`), then averaged over the input frames that fall in each
    output frame (frame `j` of `T_i` in `floor(j * T / T_i)`: the frames of both span the same
    chunk). No gradient flows through them: they are targets."""

    def __init__(self, num_streams: int, **kwargs):
        super().__init__(**kwargs)
        self.num_streams = int(num_streams)
        self.normalizations = [keras.layers.Normalization(axis=-1, name=f"normalization_{i}",
                                                          dtype="float32")
                               for i in range(self.num_streams)]

    def build(self, input_shape):
        for normalization, shape in zip(self.normalizations, input_shape[:-1], strict=True):
            if not normalization.built:  # `adapt` builds it too
                normalization.build(shape)

    def adapt(self, features) -> None:
        """Sets each stream's standardisation from a sample of clips' feature sequences."""
        for normalization, x in zip(self.normalizations, features, strict=True):
            normalization.adapt(ops.convert_to_numpy(x))

    @staticmethod
    def on_grid(x, frames):
        """`x` `(B, T_i, F)` averaged onto `frames` output frames `(B, frames, F)`."""
        t = ops.shape(x)[1]
        index = ops.floor(ops.arange(t, dtype="float32") * ops.cast(frames, "float32")
                          / ops.cast(t, "float32"))
        members = ops.cast(ops.equal(index[:, None], ops.arange(frames, dtype="float32")[None]),
                           "float32")  # (T_i, frames)
        members = members / ops.maximum(ops.sum(members, axis=0, keepdims=True), 1.0)
        return ops.einsum("btf,ts->bsf", x, members)

    def call(self, inputs):
        *features, frames = inputs
        grid = ops.shape(frames)[1]
        parts = [self.on_grid(normalization(ops.cast(x, "float32")), grid)
                 for normalization, x in zip(self.normalizations, features, strict=True)]
        return ops.stop_gradient(ops.concatenate(parts, axis=-1))

    def compute_output_shape(self, input_shape):
        *features, frames = input_shape
        return (frames[0], frames[1], sum(shape[-1] for shape in features))

    def get_config(self):
        return {**super().get_config(), "num_streams": self.num_streams}


@register
class FeaturePrediction(keras.layers.Layer):
    """`[embeddings, targets]`, two lists (one `(B, D)` and one `(B, K)` array per view, or
    `(B, T, D)` and `(B, T, K)` frame by frame), to the embeddings, unchanged; adds to the
    model's loss `weight` times the mean squared error of a linear map of each view's
    embedding to its targets, summed over the views (a
    regression worker of PASE, Pascual et al., Interspeech 2019, arXiv 1904.03416). A linear
    map: what it asks of the embedding is what a linear probe can read."""

    def __init__(self, num_targets: int, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_targets = int(num_targets)
        self.weight = float(weight)
        self.regression = keras.layers.Dense(self.num_targets, name="regression",
                                             dtype=self.dtype_policy)

    def build(self, input_shape):
        self.regression.build(input_shape[0][0])

    def call(self, inputs):
        embeddings, targets = inputs
        error = sum(ops.mean(ops.square(ops.cast(self.regression(x), "float32")
                                        - ops.cast(y, "float32")))
                    for x, y in zip(embeddings, targets, strict=True))
        self.add_loss(self.weight * error)
        return embeddings

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "num_targets": self.num_targets, "weight": self.weight}


@register
class DiverseContrastive(OnBackbone, keras.Model):
    """Featurizer + backbone trained without labels (COLA), one objective per stream.

    Inputs: a dict `{"anchor": (B, samples), "positive": (B, samples)}` of float32 waveforms,
    row `i` of both from the same recording. Outputs: one `(B, B)` array of similarity logits
    per stream; train each with sparse categorical cross-entropy (from logits) against
    `arange(B)` (`keras_dae.pretraining.PairLoader` supplies those targets).

    Each stream's projection is a dense layer, layer normalisation and tanh (COLA's), then
    `PairSimilarity`; with `projection_hidden` > 0, a ReLU layer of that width comes first
    (SimCLR's nonlinear projection head, Chen et al. 2020, arXiv 2002.05709, under which the
    embedding kept more for a linear probe than the head's output; on our corpus, one epoch,
    it left the probe where it was: docs/pretraining.md). After pretraining, `featurizer` and
    `backbone` are what a classifier starts from
    (`DiverseClassifier.from_preset("diverse_pretrained", class_names=...)`); the projections
    are left behind.

    With `spread_weight` > 0, each view's tower embeddings also pay `EmbeddingSpread`'s
    variance and covariance terms (VICReg's) times the weight, added to the loss: a check on
    the embeddings collapsing onto a few directions.

    With `prediction_weight` > 0, each view's tower embeddings also regress, through a linear
    map of their own, the clip statistics of the handcrafted streams' features
    (`featurizer.fixed_streams()`: mean and standard deviation over the frames, standardised
    over training clips by `clip_statistics.adapt`), times the weight: PASE's regression
    workers, which ask every embedding, the learned streams' too, to keep what the classical
    features hold (on our corpus, one epoch at weight 1: the fused probe ties random towers',
    docs/pretraining.md).

    With `frame_prediction_weight` > 0, each tower's output frames (before its mean over time,
    `StreamTower(return_sequence=True)`) regress, through a linear map of their own, the
    handcrafted streams' features on the same frames (`FrameFeatures`), times the weight:
    PASE's workers as they are, frame by frame, meant to keep what a sound does over time in
    the tower's frames, which a clip-level objective lets become all the same (on our corpus,
    one epoch at weight 1, they became the same all the same: docs/pretraining.md).

    Args:
        backbone: a `DiverseBackbone` (or its config).
        featurizer: a `DiverseFeaturizer` (or its config) matching the backbone's inputs.
        projection_dim: size of each stream's projection.
        projection_hidden: width of the projection's hidden ReLU layer (0: none, COLA's).
        spread_weight: weight of the variance and covariance terms (0: none).
        prediction_weight: weight of the regression of the handcrafted streams' clip
            statistics (0: none).
        frame_prediction_weight: weight of the regression of the handcrafted streams'
            features frame by frame from each tower's output frames (0: none).
    """

    # A backbone has no classes: the preset files and the loaders read these.
    num_classes = 0
    class_names: list[str] = []
    class_mids: list[str] = []

    def __init__(self, backbone, featurizer, projection_dim: int = DEFAULT_PROJECTION_DIM,
                 spread_weight: float = 0.0, projection_hidden: int = 0,
                 prediction_weight: float = 0.0, frame_prediction_weight: float = 0.0,
                 **kwargs):
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if isinstance(featurizer, dict):
            featurizer = keras.saving.deserialize_keras_object(featurizer)
        if featurizer.feature_dims() != backbone.feature_dims:
            raise InputError(f"The featurizer's streams {featurizer.feature_dims()} do not "
                             f"match the backbone's inputs {backbone.feature_dims}.")
        if projection_dim is None or int(projection_dim) <= 0:
            raise InputError(f"`projection_dim` must be positive, got {projection_dim!r}.")
        if projection_hidden is None or int(projection_hidden) < 0:
            raise InputError(f"`projection_hidden` must be >= 0, got {projection_hidden!r}.")
        if not float(spread_weight) >= 0:
            raise InputError(f"`spread_weight` must be >= 0, got {spread_weight!r}.")
        for name, weight in (("prediction_weight", prediction_weight),
                             ("frame_prediction_weight", frame_prediction_weight)):
            if not float(weight) >= 0:
                raise InputError(f"`{name}` must be >= 0, got {weight!r}.")
        views = {name: keras.Input(shape=(None,), name=name) for name in ("anchor", "positive")}
        features = {name: featurizer(x) for name, x in views.items()}
        handcrafted = featurizer.fixed_streams()  # once built: the learned ones hold weights
        if (prediction_weight or frame_prediction_weight) and not handcrafted:
            raise InputError("feature prediction needs a handcrafted stream to predict: the "
                             f"streams {featurizer.stream_names} all hold weights.")
        if frame_prediction_weight:  # each tower's frames; their mean is its embedding
            frames = {view: {s: backbone.towers[s](f[s], return_sequence=True)
                             for s in backbone.stream_names} for view, f in features.items()}
        else:
            embedded = {name: backbone(f) for name, f in features.items()}
        clip_statistics = ClipStatistics(name="clip_statistics") if prediction_weight else None
        if prediction_weight:
            targets = {view: clip_statistics([f[s] for s in handcrafted])
                       for view, f in features.items()}
        frame_features = (FrameFeatures(len(handcrafted), name="frame_features")
                          if frame_prediction_weight else None)
        outputs, projections = {}, {}
        for stream in backbone.stream_names:
            hidden = ([keras.layers.Dense(int(projection_hidden), activation="relu",
                                          name="hidden")] if projection_hidden else [])
            projection = keras.Sequential([
                *hidden,
                keras.layers.Dense(projection_dim, name="dense"),
                keras.layers.LayerNormalization(name="norm"),
                keras.layers.Activation("tanh", name="tanh"),
            ], name=f"{stream}_projection")
            similarity = PairSimilarity(projection_dim, name=stream, dtype="float32")
            if frame_prediction_weight:
                of_frames = [frames[view][stream] for view in ("anchor", "positive")]
                on_grid = [frame_features([*(features[view][s] for s in handcrafted), x])
                           for view, x in zip(("anchor", "positive"), of_frames, strict=True)]
                of_frames = FeaturePrediction(
                    on_grid[0].shape[-1], frame_prediction_weight,
                    name=f"{stream}_frame_prediction")([of_frames, on_grid])
                mean = keras.layers.GlobalAveragePooling1D(
                    name=f"{stream}_mean", dtype=backbone.towers[stream].dtype_policy)
                views_of_stream = [mean(x) for x in of_frames]
            else:
                views_of_stream = [embedded[view][stream] for view in ("anchor", "positive")]
            if spread_weight:
                views_of_stream = EmbeddingSpread(spread_weight,
                                                  name=f"{stream}_spread")(views_of_stream)
            if prediction_weight:
                views_of_stream = FeaturePrediction(
                    targets["anchor"].shape[-1], prediction_weight, name=f"{stream}_prediction",
                )([views_of_stream, [targets["anchor"], targets["positive"]]])
            outputs[stream] = similarity([projection(x) for x in views_of_stream])
            projections[stream] = projection
        super().__init__(inputs=views, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.featurizer = featurizer
        self.projection_dim = int(projection_dim)
        self.spread_weight = float(spread_weight)
        self.projection_hidden = int(projection_hidden)
        self.prediction_weight = float(prediction_weight)
        self.frame_prediction_weight = float(frame_prediction_weight)
        # The prediction targets' standardisation (`adapt` them on training clips), or None.
        self.clip_statistics = clip_statistics
        self.frame_features = frame_features
        self.projections = projections

    def get_config(self):
        return {**self.backbone_config(), "projection_dim": self.projection_dim,
                "spread_weight": self.spread_weight, "projection_hidden": self.projection_hidden,
                "prediction_weight": self.prediction_weight,
                "frame_prediction_weight": self.frame_prediction_weight}

    @classmethod
    def with_default_frontends(cls, sample_rate: int = 16000, tower: dict | None = None,
                               streams: dict | None = None, **kwargs) -> DiverseContrastive:
        """A new model on the paper's four streams (or `streams`) with towers configured by
        `tower` (see `TOWER_DEFAULTS`); `kwargs` go to the constructor."""
        featurizer = DiverseFeaturizer(streams=streams, sample_rate=sample_rate)
        backbone = DiverseBackbone(featurizer.feature_dims(), tower=tower)
        return cls(backbone, featurizer, **kwargs)

    @classmethod
    def from_preset(cls, preset, load_weights=True) -> DiverseContrastive:
        """The pretrained backbone of a preset name (`diverse_pretrained`), preset directory
        or pretraining run directory (its `preset/`); `load_weights` as in
        `DiverseClassifier.from_preset`."""
        from keras_dae.zoo.loading import load_preset

        return load_preset(cls, preset, load_weights)

    def save_to_preset(self, preset_dir, metadata: dict | None = None):
        """Writes the pretrained backbone as a preset directory (no classes: its `labels.csv`
        is empty); `DiverseClassifier.from_preset(preset_dir, class_names=...)` puts heads on
        it. Returns the directory."""
        from keras_dae.zoo.loading import save_preset

        return save_preset(self, preset_dir, metadata=metadata)
