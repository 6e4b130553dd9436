"""Neuralogram: embeddings of successive windows, a pluggable network, the layer contract."""

import keras
import layer_harness as checks
import numpy as np
import pytest

from keras_dae.layers.neuralogram import Neuralogram, default_embedding_network


def energy_network(win_length=400):
    """A network whose embedding is known in closed form: [mean square, mean abs]."""
    inputs = keras.Input((win_length,))
    square = keras.layers.Lambda(lambda w: keras.ops.mean(w * w, axis=-1, keepdims=True))
    absolute = keras.layers.Lambda(lambda w: keras.ops.mean(keras.ops.abs(w), axis=-1, keepdims=True))
    return keras.Model(inputs, keras.layers.Concatenate()([square(inputs), absolute(inputs)]))


def test_frames_are_embedded_in_order(signals):
    """Each output frame is the network applied to the matching centred window."""
    y = signals["speech"][:4000]
    layer = Neuralogram(energy_network(400), hop_length=160)
    out = checks.to_numpy(layer(y[None]))[0]
    padded = np.pad(y, 200)
    n_frames = 1 + len(y) // 160
    windows = np.stack([padded[t * 160 : t * 160 + 400] for t in range(n_frames)])
    expected = np.stack([(windows**2).mean(-1), np.abs(windows).mean(-1)], axis=-1)
    assert out.shape == (n_frames, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_plugged_network_can_be_frozen(signals):
    """A trained network plugged in and frozen is not updated by training the model."""
    net = default_embedding_network(win_length=400, embedding_dim=16)
    layer = Neuralogram(net, hop_length=400)
    layer.embedding_network.trainable = False
    inputs = keras.Input((8000,))
    h = keras.layers.GlobalAveragePooling1D()(layer(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    before = [w.copy() for w in net.get_weights()]
    x = np.stack([signals["speech"][:8000], signals["noise"][:8000]])
    model.fit(x, np.array([[1.0], [0.0]]), epochs=2, verbose=0)
    for a, b in zip(before, net.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(model.trainable_weights) == 2  # only the head's kernel and bias


def test_gradients_flow_into_the_network(signals):
    keras.utils.set_random_seed(1)
    layer = Neuralogram(default_embedding_network(400, embedding_dim=8), hop_length=400)
    inputs = keras.Input((8000,))
    h = keras.layers.GlobalAveragePooling1D()(layer(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    before = [w.copy() for w in layer.embedding_network.get_weights()]
    x = np.stack([signals["speech"][:8000], signals["noise"][:8000]] * 2)
    model.fit(x, np.array([[1.0], [0.0]] * 2), epochs=2, verbose=0)
    changed = [np.abs(a - b).max() > 0 for a, b in zip(before, layer.embedding_network.get_weights(), strict=True)]
    assert all(changed)


def test_win_length_comes_from_the_network():
    assert Neuralogram(default_embedding_network(win_length=256)).win_length == 256
    with pytest.raises(ValueError, match="win_length"):
        Neuralogram(default_embedding_network(win_length=256), win_length=400)


@pytest.mark.parametrize("num_samples", [1, 399, 16000])
def test_any_length(num_samples):
    y = np.random.default_rng(0).standard_normal((2, num_samples)).astype("float32")
    out = checks.check_output_shape(Neuralogram(hop_length=160), y)
    assert out.shape == (2, 1 + num_samples // 160, 64)


def test_layer_contract(signals, tmp_path):
    keras.utils.set_random_seed(0)
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    checks.run_layer_test(Neuralogram(hop_length=320), y, tmp_path, atol=1e-4)


def test_mixed_precision(signals):
    """Under mixed_bfloat16 the embedding network runs in bfloat16 (its own policy) and the
    Neuralogram's output is bfloat16: finite, and within bfloat16 rounding (rel. 2**-7) of
    float32. The closed-form network keeps the comparison about the layer, not about how a
    random network conditions bfloat16 noise."""
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    ref = checks.to_numpy(Neuralogram(energy_network(), hop_length=320)(y))
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = Neuralogram(energy_network(), hop_length=320)
        out = layer(y)
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    out = checks.to_numpy(keras.ops.cast(out, "float32"))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=2**-7, atol=1e-6)


def test_window_network_filterbank_is_scaled_and_old_configs_load_unscaled(signals):
    """The default window network's filterbank stores its filters scaled (see
    `LearnedFilterbank`); a Neuralogram saved before that loads its filterbank unscaled."""
    from keras_dae.layers.learned_filterbank import LearnedFilterbank

    def filterbank(layer):
        return next(x for x in layer.embedding_network.layers
                    if isinstance(x, LearnedFilterbank))

    layer = Neuralogram()
    assert filterbank(layer).scaled_kernel
    config = keras.saving.serialize_keras_object(layer)
    nested = config["config"]["embedding_network"]["config"]["layers"]
    for node in nested:
        node["config"].pop("scaled_kernel", None)
    old = keras.saving.deserialize_keras_object(config)
    assert not filterbank(old).scaled_kernel
    y = signals["speech"][None, :8000]
    old.build(y.shape)
    layer.build(y.shape)
    old.set_weights(layer.get_weights())  # the same stored kernel, read unscaled
    assert not np.allclose(checks.to_numpy(old(y)), checks.to_numpy(layer(y)), atol=1e-3)
