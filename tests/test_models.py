"""The model: Transformer blocks against keras-hub, towers, backbone and classifier."""

import importlib.util

import keras
import layer_harness as checks
import numpy as np
import pytest

from keras_dae.models import (
    STREAMS,
    DiverseBackbone,
    DiverseFeaturizer,
    PositionEmbedding,
    StreamTower,
    TransformerEncoder,
    build_diverse_classifier,
)
from keras_dae.zoo import PRESETS

HAS_KERAS_HUB = importlib.util.find_spec("keras_hub") is not None
needs_keras_hub = pytest.mark.skipif(
    not HAS_KERAS_HUB, reason="keras-hub (which needs TensorFlow) is not installed here"
)


# torch.compile (Keras' jit_compile on PyTorch) of a Transformer takes minutes on a CPU: the
# compiled-vs-eager check of the towers and models runs on TensorFlow and JAX (XLA); the whole
# model under torch.compile is measured by benchmarks/train_throughput.py.
COMPILED = checks.BACKEND != "torch"


def tiny_classifier(num_classes=5):
    return build_diverse_classifier(num_classes, tower=PRESETS["diverse_tiny"]["tower"])


@needs_keras_hub
@pytest.mark.parametrize("normalize_first", [False, True])
def test_transformer_encoder_equals_keras_hub(normalize_first):
    import keras_hub

    x = np.random.default_rng(0).standard_normal((2, 7, 16)).astype("float32")
    ours = TransformerEncoder(32, 4, activation="gelu", normalize_first=normalize_first)
    theirs = keras_hub.layers.TransformerEncoder(32, 4, activation="gelu",
                                                 normalize_first=normalize_first)
    ours.build(x.shape)
    theirs.build(x.shape)
    by_path = {w.path.split("/", 1)[1]: w for w in theirs.weights}
    assert len(by_path) == len(ours.weights)
    for w in ours.weights:
        w.assign(by_path[w.path.split("/", 1)[1]])
    np.testing.assert_allclose(checks.to_numpy(ours(x)), checks.to_numpy(theirs(x)), atol=1e-6)


@needs_keras_hub
def test_position_embedding_equals_keras_hub():
    import keras_hub

    x = np.zeros((2, 7, 16), "float32")
    ours, theirs = PositionEmbedding(10), keras_hub.layers.PositionEmbedding(10)
    ours.build(x.shape)
    theirs.build(x.shape)
    ours.position_embeddings.assign(theirs.position_embeddings)
    np.testing.assert_allclose(checks.to_numpy(ours(x)), checks.to_numpy(theirs(x)))


def test_position_embedding_refuses_long_input():
    with pytest.raises(ValueError, match="sequence_length"):
        PositionEmbedding(10).build((1, 11, 4))


def test_transformer_encoder_passes_the_harness(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 7, 16)).astype("float32")
    layer = TransformerEncoder(32, 4, activation="gelu")
    # two layer norms, the attention's 4 kernels and 4 biases, two dense kernels and biases
    checks.run_layer_test(layer, x, tmp_path, compiled=COMPILED, weights=(16, 0))


def test_stream_tower_passes_the_harness_and_pools_each_example_alone(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 101, 12)).astype("float32")
    tower = StreamTower(d_model=16, num_layers=4, num_heads=2, intermediate_dim=32,
                        downsample_every=2)
    checks.run_layer_test(tower, x, tmp_path, compiled=COMPILED)
    out = checks.to_numpy(tower(x))
    assert out.shape == (3, 16)
    # Each example's embedding depends on its own frames only.
    np.testing.assert_allclose(checks.to_numpy(tower(x[:1])), out[:1], atol=1e-5)


def test_attention_drawn_anew_starts_small_and_tied_and_keeps_time_through_the_tower():
    """`reinitialize_attention()` draws the query, key and value kernels as one matrix, every
    kernel within Glorot's bound over its own three axes (smaller than a new block's), biases
    zero; `like_new_block=True` draws them as a new block does (Glorot over the head axes,
    each its own). Through six blocks of a tower, on clips whose frames vary about a level of
    their own, the first keeps what changes over time (the frames' temporal share, followed
    step by step by `sequences`), the second averages the frames. The tied kernels are
    separate variables that one compiled training step moves apart."""
    from keras_dae.metrics import temporal_share

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 1, 12)) + 0.5 * rng.standard_normal((8, 40, 12))).astype(
        "float32")  # temporal share 0.24
    share = {}
    for new in (False, True):
        keras.utils.set_random_seed(0)
        tower = StreamTower(d_model=64, num_layers=6, num_heads=8, intermediate_dim=128,
                            dropout=0.0, downsample_every=0)
        tower.build(x.shape)
        for block in tower.blocks:
            block.reinitialize_attention(like_new_block=new)
        weights = tower.blocks[0]._attention.weights
        kernels = {w.path.split("/")[-2]: checks.to_numpy(w) for w in weights
                   if w.path.endswith("kernel")}
        assert not any(checks.to_numpy(w).any() for w in weights if w.path.endswith("bias"))
        for name, k in kernels.items():  # Keras' attention counts fans over the head axes
            fans = 64 + 64 if new else np.prod(k.shape[:-2]) * (k.shape[-2] + k.shape[-1])
            assert np.sqrt(3 / fans) < np.abs(k).max() <= np.sqrt(6 / fans), name
        same = [np.array_equal(kernels["query"], kernels[n]) for n in ("key", "value")]
        assert same == [not new, not new]
        steps = tower.sequences(x)
        assert len(steps) == 8  # input, six blocks, output
        np.testing.assert_allclose(checks.to_numpy(steps[-1]),
                                   checks.to_numpy(tower(x, return_sequence=True)), atol=1e-5)
        share[new] = temporal_share(checks.to_numpy(steps[-1]))
        if not new:  # tied in value only: one compiled step trains them apart
            model = keras.Sequential([keras.Input(x.shape[1:]), tower, keras.layers.Dense(1)])
            model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile="auto")
            assert np.isfinite(model.train_on_batch(x, np.ones((8, 1), "float32")))
            attention = tower.blocks[0]._attention
            assert not np.array_equal(checks.to_numpy(attention.query_dense.kernel),
                                      checks.to_numpy(attention.key_dense.kernel))
    assert share[False] > 0.2 and share[False] > 5 * share[True], share


def test_featurizer_streams_and_shapes():
    featurizer = DiverseFeaturizer()
    assert featurizer.stream_names == list(STREAMS)
    x = np.random.default_rng(0).standard_normal((2, 16000)).astype("float32") * 0.1
    out = featurizer(x)
    dims = featurizer.feature_dims()
    frames = featurizer.num_frames(16000)
    for name in STREAMS:
        assert tuple(out[name].shape) == (2, frames[name], dims[name])
        assert np.isfinite(checks.to_numpy(out[name])).all()


def test_featurizer_refuses_mismatched_frame_rates():
    from keras_dae import layers

    with pytest.raises(ValueError, match="hop_length"):
        DiverseFeaturizer({"mixed": [layers.LogMelSpectrogram(hop_length=160),
                                     layers.LearnedFilterbank(hop_length=320)]})


def test_featurizer_refuses_no_streams_and_a_stream_without_front_ends():
    with pytest.raises(ValueError, match="No streams: give at least one"):
        DiverseFeaturizer({})
    with pytest.raises(ValueError, match="Stream 'pitch' has no front end"):
        DiverseFeaturizer({"pitch": []})


def test_paper_configuration_parameter_count():
    """The paper reports about 4M parameters; ours, with 200 classes: 3.87M (see README)."""
    model = build_diverse_classifier(200)
    total = model.count_params()
    assert 3.5e6 < total < 4.5e6, total
    for name in STREAMS:
        assert 0.85e6 < model.backbone.towers[name].count_params() < 0.95e6
    assert model.backbone.get_layer("embedding").output.shape[-1] == 4 * 64


def test_classifier_outputs_each_stream_and_the_fusion(signals):
    model = tiny_classifier(num_classes=5)
    x = np.stack([signals["speech"][:16000], signals["tone"]])
    out = model.predict(x, verbose=0)
    assert set(out) == {"fused", "embedding", *STREAMS}
    for name in ("fused", *STREAMS):
        assert out[name].shape == (2, 5)
        assert ((out[name] > 0) & (out[name] < 1)).all()
    assert out["embedding"].shape == (2, 4 * 16)


def test_classifier_takes_any_length(signals):
    model = tiny_classifier()
    for n in (4000, 24000):
        assert model.predict(signals["noise"][None, :n], verbose=0)["fused"].shape == (1, 5)


def test_classifier_passes_the_harness(signals, tmp_path):
    """Symbolic call, config and `.keras` round trips (reloaded as a DiverseClassifier with
    its DiverseBackbone), compiled predict and one training step. Seeded: with some random
    weights TensorFlow's XLA and eager outputs differ by up to 1.1x the harness tolerance
    (about 2e-4 of 1.8; YIN's trough choice is discontinuous), so an unseeded run is flaky."""
    keras.utils.set_random_seed(0)
    model = tiny_classifier()
    x = np.stack([signals["speech"][:16000], signals["chirp"]])
    checks.run_model_test(model, x, tmp_path, compiled=COMPILED)
    reloaded = keras.saving.load_model(tmp_path / f"{model.name}.keras", safe_mode=True)
    assert isinstance(reloaded.backbone, DiverseBackbone)


def test_backbone_passes_the_harness(tmp_path):
    """The backbone alone, on features of each stream's width (50 frames, 2 examples)."""
    backbone = tiny_classifier().backbone
    rng = np.random.default_rng(0)
    features = {name: rng.standard_normal((2, 50, int(x.shape[-1]))).astype("float32")
                for name, x in backbone.input.items()}
    checks.run_model_test(backbone, features, tmp_path, compiled=COMPILED)


def test_backbone_rejects_unknown_override():
    with pytest.raises(ValueError, match="unknown streams"):
        DiverseBackbone({"pitch": 4}, tower_overrides={"timbre": {"num_layers": 1}})
