"""`keras_dae.hear`: the HEAR 2021 common API, checked against its documented contract.

The checks follow the API page (hearbenchmark.com/hear-api.html) and what the HEAR validator
(hearbenchmark/hear-validator) asserts: the model is a `tf.Module` or a `torch.nn.Module`
with `sample_rate`, `scene_embedding_size` and `timestamp_embedding_size` (ints); timestamp
embeddings are `(n_sounds, n_timestamps, D)` float32 tensors of that framework with
`(n_sounds, n_timestamps)` timestamps in ms, regularly spaced (deviation under 1 ms), 50 ms
or less apart, starting within one hop of 0 and ending within one hop of the end without
passing it; scene embeddings are `(n_sounds, D)` float32.
"""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pytest
from conftest import load_recording

from keras_dae import hear
from keras_dae.inference import Tagger

SR = 16000


@pytest.fixture(scope="module")
def model(tiny_preset):
    return hear.load_model(str(tiny_preset))


def _numpy(tensor) -> np.ndarray:
    if hasattr(tensor, "detach"):
        return tensor.detach().cpu().numpy()
    return tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)


def _framework_audio(model, audio: np.ndarray):
    """The audio as the HEAR tools pass it: a tensor of the model's framework."""
    if model.framework == "torch":
        import torch

        return torch.from_numpy(audio)
    if model.framework == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(audio)
    return audio


def test_the_model_is_a_module_of_the_framework_hear_expects(model):
    backend = keras.backend.backend()
    expected = backend if backend != "jax" else (
        "torch" if importlib.util.find_spec("torch") else "tensorflow")
    assert model.framework == expected
    if expected == "torch":
        import torch

        assert isinstance(model, torch.nn.Module)
        assert model.to("cpu") is model  # HEAR moves the model to its device
    else:
        import tensorflow as tf

        assert isinstance(model, tf.Module)
    for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        assert type(getattr(model, name)) is int
    assert model.sample_rate in (16000, 22050, 32000, 44100, 48000)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 64  # diverse_tiny


@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0])
def test_timestamp_embeddings_follow_the_api(model, seconds):
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1, 1, (2, int(seconds * model.sample_rate))).astype(np.float32)
    embeddings, timestamps = hear.get_timestamp_embeddings(_framework_audio(model, audio),
                                                           model)
    assert type(embeddings) is type(timestamps) is type(_framework_audio(model, audio))
    embeddings, timestamps = _numpy(embeddings), _numpy(timestamps)
    assert embeddings.dtype == np.float32 and timestamps.dtype == np.float32
    assert embeddings.ndim == 3 and timestamps.ndim == 2
    assert embeddings.shape[0] == 2 and embeddings.shape[:2] == timestamps.shape
    assert embeddings.shape[2] == model.timestamp_embedding_size
    assert np.isfinite(embeddings).all()
    steps = np.diff(timestamps, axis=1)
    assert np.max(np.abs(steps - steps.mean())) < 1.0 and steps.max() <= 50.0
    length_ms = 1000 * seconds
    assert timestamps.min() == 0.0
    assert length_ms - 50.0 <= timestamps.max() <= length_ms
    assert timestamps.shape[1] == int(length_ms // 50) + 1


def test_a_timestamp_embedding_is_the_window_centred_on_it(model, tiny_preset):
    speech = load_recording("speech_front_center.wav")
    embeddings, timestamps = hear.get_timestamp_embeddings(speech[None], model)
    embeddings, timestamps = _numpy(embeddings)[0], _numpy(timestamps)[0]
    tagger = Tagger(tiny_preset)
    padded = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(8000, np.float32)])
    for k in (0, 7, len(timestamps) - 1):
        centre = int(round(timestamps[k] * SR / 1000))  # in the clip; +8000 in `padded`
        window = padded[centre:centre + SR]
        expected = tagger.forward(window[None])["embedding"][0]
        np.testing.assert_allclose(embeddings[k], expected, atol=2e-5)


def test_timestamps_do_not_drift_over_long_audio():
    """Centres are computed per frame: at 44.1 kHz a 25 ms hop is 1102.5 samples."""
    stamps = hear.timestamps_ms(20 * 60 * 44100, 44100, hop_ms=25.0)
    assert stamps[-1] == 20 * 60 * 1000.0 and len(stamps) == 48001
    np.testing.assert_array_equal(np.diff(stamps), 25.0)


def test_scene_embeddings_follow_the_api(model, tiny_preset):
    rng = np.random.default_rng(1)
    audio = rng.uniform(-1, 1, (4, int(2.74 * model.sample_rate))).astype(np.float32)
    audio[1] = 0.1 * audio[1]
    scene = hear.get_scene_embeddings(_framework_audio(model, audio), model)
    assert type(scene) is type(_framework_audio(model, audio))
    scene = _numpy(scene)
    assert scene.dtype == np.float32 and scene.shape == (4, model.scene_embedding_size)
    tagger = Tagger(tiny_preset)
    np.testing.assert_allclose(scene[1], tagger.embed(audio[1]), atol=1e-6)
    assert not np.allclose(scene[0], scene[1])


def test_numpy_framework_and_bad_audio(tiny_preset):
    model = hear.load_model(str(tiny_preset), framework="numpy", hop_ms=25.0)
    assert not hasattr(model, "parameters")
    speech = load_recording("speech_front_center.wav")[None]
    embeddings, timestamps = hear.get_timestamp_embeddings(speech, model)
    assert isinstance(embeddings, np.ndarray) and np.diff(timestamps[0]).max() == 25.0
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(speech[0], model)
    with pytest.raises(ValueError, match="NaN"):
        hear.get_timestamp_embeddings(np.full((1, 100), np.nan, np.float32), model)
    with pytest.raises(ValueError, match="framework"):
        hear.load_model(str(tiny_preset), framework="mxnet")
