"""The handcrafted-feature cache: equal to the front ends' output, reused only when valid,
and training on it gives the model that training without it gives."""

import json

import keras
import numpy as np
import pytest
from fsd50k_fixture import write_small_fsd50k

from keras_dae import training
from keras_dae.data import ChunkLoader, FeatureCache, read_fsd50k
from keras_dae.models import build_diverse_classifier
from keras_dae.zoo import PRESETS

TINY = PRESETS["diverse_tiny"]["tower"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_small_fsd50k(tmp_path_factory.mktemp("fsd50k"))


@pytest.fixture(scope="module")
def model(data_dir):
    keras.utils.set_random_seed(0)
    return build_diverse_classifier(len(read_fsd50k(data_dir, "train").labels), tower=TINY)


def _loader(data_dir, **kwargs):
    return ChunkLoader(read_fsd50k(data_dir, "train"), batch_size=8, shuffle=False,
                       **kwargs)


@pytest.mark.one_backend
def test_cache_holds_the_front_ends_output_and_is_reused(data_dir, model, tmp_path):
    loader = _loader(data_dir)
    featurizer = model.featurizer
    assert featurizer.fixed_streams() == ["pitch", "timbre"]
    cache = FeatureCache.build(loader, featurizer, tmp_path / "cache", verbose=False)
    assert cache.streams == ["pitch", "timbre"]
    items = np.array([0, 5, loader.n_items - 1])
    waveforms = np.stack([loader.chunk(i) for i in items])
    expected = {k: keras.ops.convert_to_numpy(v) for k, v in featurizer(waveforms).items()}
    got = cache.lookup(items)
    for stream in ("pitch", "timbre"):
        scale = np.max(np.abs(expected[stream]))
        np.testing.assert_allclose(got[f"{stream}_features"], expected[stream],
                                   atol=1e-5 * scale)
        assert got[f"{stream}_features"].shape[0] == 3
    # A second build finds the complete cache and computes nothing.
    stamp = (tmp_path / "cache" / "pitch.npy").stat().st_mtime_ns
    again = FeatureCache.build(loader, featurizer, tmp_path / "cache", verbose=False)
    assert (tmp_path / "cache" / "pitch.npy").stat().st_mtime_ns == stamp
    assert again.arrays["pitch"].shape == cache.arrays["pitch"].shape


def test_cache_for_other_chunking_or_front_ends_is_not_reused(data_dir, model, tmp_path):
    FeatureCache.build(_loader(data_dir), model.featurizer, tmp_path / "c", verbose=False)
    assert FeatureCache.open(tmp_path / "c", _loader(data_dir), model.featurizer) is not None
    assert FeatureCache.open(tmp_path / "c", _loader(data_dir, hop_seconds=0.25),
                             model.featurizer) is None
    same = build_diverse_classifier(model.num_classes, tower=TINY)
    assert FeatureCache.open(tmp_path / "c", _loader(data_dir), same.featurizer) is not None
    from keras_dae.models import DiverseFeaturizer, default_stream_frontends
    streams = default_stream_frontends(16000)
    streams["timbre"][0] = type(streams["timbre"][0])(sample_rate=16000, n_mfcc=13, n_mels=64,
                                                      n_fft=512, hop_length=160)
    assert FeatureCache.open(tmp_path / "c", _loader(data_dir),
                             DiverseFeaturizer(streams)) is None
    index = json.loads((tmp_path / "c" / "cache.json").read_text())
    index["key"] = "stale"
    (tmp_path / "c" / "cache.json").write_text(json.dumps(index))
    assert FeatureCache.open(tmp_path / "c", _loader(data_dir), model.featurizer) is None


def test_learned_streams_are_not_cached(data_dir, model, tmp_path):
    with pytest.raises(ValueError, match="trainable front ends"):
        FeatureCache.build(_loader(data_dir), model.featurizer, tmp_path / "c",
                           streams=["end_to_end"], verbose=False)


def test_loader_serves_cached_features_and_mixes_them_like_the_waveforms(data_dir, model,
                                                                         tmp_path):
    plain = _loader(data_dir)
    cache = FeatureCache.build(plain, model.featurizer, tmp_path / "c", verbose=False)
    cached = _loader(data_dir, feature_cache=cache)
    x, y = cached[0]
    assert set(x) == {"waveform", "pitch_features", "timbre_features"}
    np.testing.assert_array_equal(x["waveform"], plain[0][0])
    np.testing.assert_array_equal(x["pitch_features"], cache.lookup(plain.batch_items(0))[
        "pitch_features"])
    no_wave = _loader(data_dir, feature_cache=cache, include_waveform=False)
    assert set(no_wave[0][0]) == {"pitch_features", "timbre_features"}
    # Mixup applies one weight and one partner per row to every array, targets included.
    mixing = _loader(data_dir, feature_cache=cache, mixup=0.4)
    base = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    inputs, targets = mixing._mix({"a": base, "b": 2 * base}, base.copy(), index=0)
    np.testing.assert_allclose(inputs["b"], 2 * inputs["a"], rtol=1e-6)
    np.testing.assert_allclose(targets, inputs["a"], rtol=1e-6)
    assert not np.allclose(inputs["a"], base)


@pytest.mark.slow
def test_training_on_the_cache_matches_training_without_it(data_dir, tmp_path):
    """One tower epoch with and without the cache: the same losses and weights (up to the
    float rounding of computing the features in other batch sizes)."""
    train, val = read_fsd50k(data_dir, "train"), read_fsd50k(data_dir, "val")
    results = {}
    for name, cache in (("plain", None), ("cached", str(tmp_path / "cache"))):
        keras.utils.set_random_seed(0)
        net = build_diverse_classifier(len(train.labels), tower=TINY)
        config = training.TrainConfig(tower_epochs=1, fusion_epochs=0, joint_epochs=0, batch_size=8,
                                      normalization_chunks=32, seed=0, feature_cache=cache)
        trainer = training.Trainer(net, train, val, tmp_path / name, config, verbose=0)
        state = trainer.run()
        results[name] = (state["history"][0], [keras.ops.convert_to_numpy(w)
                                                for w in net.weights])
    (plain, w_plain), (cached, w_cached) = results["plain"], results["cached"]
    assert (tmp_path / "cache" / "cache.json").is_file()
    assert cached["loss"] == pytest.approx(plain["loss"], rel=1e-3)
    assert cached["val_map"] == pytest.approx(plain["val_map"], abs=1e-3)
    for a, b in zip(w_plain, w_cached, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3 * (1 + np.max(np.abs(a))))
