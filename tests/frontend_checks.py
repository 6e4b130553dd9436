"""Checks every front-end layer must pass, shared by the per-layer test modules.

Each check asserts something that can fail: output shapes against `compute_output_shape`,
outputs after a config round trip and a `.keras` save/reload, compiled against eager, and
mixed precision against float32.
"""

from __future__ import annotations

import keras
import numpy as np

BACKEND = keras.backend.backend()


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def db_parity_fraction(ours_db, ref_db, tol_db=1.0, window_db=60.0) -> float:
    """Share of bins within `tol_db` of the reference, among bins within `window_db` of its peak."""
    ours_db, ref_db = np.asarray(ours_db), np.asarray(ref_db)
    assert ours_db.shape == ref_db.shape, (ours_db.shape, ref_db.shape)
    mask = ref_db >= ref_db.max() - window_db
    return float(np.mean(np.abs(ours_db - ref_db)[mask] <= tol_db))


def wrap_in_model(layer, num_samples=None) -> keras.Model:
    inputs = keras.Input(shape=(num_samples,), name="waveform")
    return keras.Model(inputs, layer(inputs))


def check_output_shape(layer, waveform):
    out = to_numpy(layer(waveform))
    expected = layer.compute_output_shape(waveform.shape)
    assert out.shape == tuple(expected), (out.shape, expected)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out)), "non-finite output"
    return out


def check_config_round_trip(layer, waveform, atol=1e-6):
    """A layer rebuilt from `get_config` computes the same output (weights copied over)."""
    out = to_numpy(layer(waveform))
    config = layer.get_config()
    clone = type(layer).from_config(config)
    clone.build(waveform.shape)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    np.testing.assert_allclose(to_numpy(clone(waveform)), out, atol=atol, rtol=0)


def check_keras_file_round_trip(layer, waveform, tmp_path, atol=1e-6):
    """Saved to `.keras` inside a model and reloaded in safe mode: same outputs."""
    model = wrap_in_model(layer)
    expected = to_numpy(model(waveform))
    path = tmp_path / "frontend.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(to_numpy(reloaded(waveform)), expected, atol=atol, rtol=0)


def check_compiled(layer, waveform, rtol=1e-4):
    """`model.predict` with jit compilation (XLA on TF and JAX) matches the eager call.

    Tolerance: `rtol` of the largest output magnitude, elementwise. On PyTorch, Keras'
    jit_compile means torch.compile (Dynamo); it is exercised too.
    """
    model = wrap_in_model(layer, waveform.shape[1])
    eager = to_numpy(model(waveform))
    model.compile(jit_compile=True)
    compiled = model.predict(waveform, batch_size=len(waveform), verbose=0)
    np.testing.assert_allclose(compiled, eager, atol=rtol * np.abs(eager).max(), rtol=0)


def check_mixed_precision(make_layer, waveform, atol):
    """Under the global mixed_bfloat16 policy the output stays finite and close to float32."""
    reference = to_numpy(make_layer()(waveform))
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed_layer = make_layer()
        out = to_numpy(keras.ops.cast(mixed_layer(waveform), "float32"))
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, reference, atol=atol, rtol=0)


def check_all(layer, waveform, tmp_path, atol=1e-5):
    """Shape, config round trip, `.keras` round trip and compiled-vs-eager in one call."""
    check_output_shape(layer, waveform)
    check_config_round_trip(layer, waveform, atol=atol)
    check_keras_file_round_trip(layer, waveform, tmp_path, atol=atol)
    check_compiled(layer, waveform)
