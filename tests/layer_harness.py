"""One test harness for every layer and model of keras-dae, in the spirit of keras-hub's
`run_layer_test` / `run_backbone_test` (keras_hub/src/tests/test_case.py).

    import layer_harness as harness

    harness.run_layer_test(MFCC(sample_rate=16000), waveform, tmp_path, atol=1e-4)
    harness.run_layer_test(tower, frames, tmp_path, weights=(52, 0))   # trains one step too
    harness.run_model_test(classifier, waveform, tmp_path)

`run_layer_test` checks, each with an assertion that can fail:
- the symbolic call (a `keras.Input` of the input's shape) gives the eager output's shape, and
  so does `compute_output_shape` where the layer defines it; outputs are finite float32;
- a clone from `get_config` (weights copied) computes the same outputs, and its config is
  equal;
- saved to `.keras` inside a model and reloaded in safe mode: the same outputs;
- compiled (`jit_compile=True`: XLA on TensorFlow and JAX, torch.compile on PyTorch) equals
  eager;
- the number of trainable and non-trainable weight tensors, when given;
- with trainable weights: one training step (SGD, mean squared error towards zeros) changes
  them and its loss is finite.
`run_model_test` does the same for a `keras.Model` (its `from_config`, `.keras` file,
compiled `predict`, one `fit` step). `check_mixed_precision` compares a layer built under the
`mixed_bfloat16` policy with float32.
"""

from __future__ import annotations

import keras
import numpy as np

BACKEND = keras.backend.backend()


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def _flat(outputs) -> dict[str, np.ndarray]:
    """Outputs as `{name: numpy}` (`""` for a single tensor)."""
    if isinstance(outputs, dict):
        return {name: to_numpy(value) for name, value in outputs.items()}
    return {"": to_numpy(outputs)}


def _assert_close(got, expected, atol, rtol=0.0, what=""):
    got, expected = _flat(got), _flat(expected)
    assert got.keys() == expected.keys(), (what, got.keys(), expected.keys())
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=atol, rtol=rtol,
                                   err_msg=f"{what} {name}".strip())


def db_parity_fraction(ours_db, ref_db, tol_db=1.0, window_db=60.0) -> float:
    """Share of bins within `tol_db` of the reference, among bins within `window_db` of its peak."""
    ours_db, ref_db = np.asarray(ours_db), np.asarray(ref_db)
    assert ours_db.shape == ref_db.shape, (ours_db.shape, ref_db.shape)
    mask = ref_db >= ref_db.max() - window_db
    return float(np.mean(np.abs(ours_db - ref_db)[mask] <= tol_db))


def wrap_in_model(layer, input_shape=(None,)) -> keras.Model:
    """A functional model around `layer`, for inputs of `(batch, *input_shape)`."""
    inputs = keras.Input(shape=tuple(input_shape), name="inputs")
    return keras.Model(inputs, layer(inputs))


def check_output_shape(layer, inputs):
    """The eager output: finite float32, of the shape `compute_output_shape` and the symbolic
    call give. Returns it."""
    out = layer(inputs)
    flat = _flat(out)
    symbolic = layer(keras.Input(batch_shape=tuple(inputs.shape)))
    symbolic = symbolic if isinstance(symbolic, dict) else {"": symbolic}
    for name, value in flat.items():
        assert value.dtype == np.float32, (name, value.dtype)
        assert np.all(np.isfinite(value)), f"non-finite output {name}"
        assert tuple(symbolic[name].shape) == value.shape, (name, symbolic[name].shape,
                                                            value.shape)
    if not isinstance(out, dict):
        try:
            expected = layer.compute_output_shape(inputs.shape)
        except NotImplementedError:
            expected = None
        if expected is not None:
            assert flat[""].shape == tuple(expected), (flat[""].shape, expected)
        return flat[""]
    return flat


def check_config_round_trip(layer, inputs, atol=1e-6):
    """A layer rebuilt from `get_config` computes the same output (weights copied over)."""
    out = layer(inputs)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    clone.build(inputs.shape)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    _assert_close(clone(inputs), out, atol, what="config round trip")


def check_keras_file_round_trip(layer, inputs, tmp_path, atol=1e-6):
    """Saved to `.keras` inside a model and reloaded in safe mode: same outputs."""
    model = wrap_in_model(layer, inputs.shape[1:])
    expected = model(inputs)
    path = tmp_path / f"{layer.name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    _assert_close(reloaded(inputs), expected, atol, what=".keras round trip")


def check_compiled(layer, inputs, rtol=1e-4):
    """`model.predict` with jit compilation (XLA on TF and JAX) matches the eager call.

    Tolerance: `rtol` of the largest output magnitude, elementwise. On PyTorch, Keras'
    jit_compile means torch.compile (Dynamo); it is exercised too.
    """
    _check_compiled_model(wrap_in_model(layer, inputs.shape[1:]), inputs, rtol)


def _check_compiled_model(model, inputs, rtol):
    eager = _flat(model(inputs))
    model.compile(jit_compile=True)
    compiled = _flat(model.predict(inputs, batch_size=_batch_size(inputs), verbose=0))
    for name, value in eager.items():
        np.testing.assert_allclose(compiled[name], value, atol=rtol * np.abs(value).max(),
                                   rtol=0, err_msg=f"compiled {name}")


def check_weight_counts(layer, trainable: int, non_trainable: int):
    assert (len(layer.trainable_weights), len(layer.non_trainable_weights)) == (
        trainable, non_trainable)


def _check_one_training_step(model, inputs):
    """One SGD step towards zero outputs: finite loss, and every trainable weight that the
    loss reaches moves (at least one does)."""
    before = [to_numpy(w).copy() for w in model.trainable_weights]
    outputs = model(inputs)
    targets = ({name: np.zeros(tuple(v.shape), "float32") for name, v in outputs.items()}
               if isinstance(outputs, dict) else np.zeros(tuple(outputs.shape), "float32"))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    history = model.fit(inputs, targets, batch_size=_batch_size(inputs), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    moved = [not np.array_equal(b, to_numpy(w)) for b, w in zip(before,
                                                               model.trainable_weights,
                                                               strict=True)]
    assert any(moved), "no trainable weight changed in a training step"


def check_mixed_precision(make_layer, inputs, atol):
    """Under the global mixed_bfloat16 policy the output stays finite and close to float32."""
    reference = make_layer()(inputs)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed_layer = make_layer()
        out = mixed_layer(inputs)
        out = ({k: keras.ops.cast(v, "float32") for k, v in out.items()}
               if isinstance(out, dict) else keras.ops.cast(out, "float32"))
    finally:
        keras.config.set_dtype_policy("float32")
    assert all(np.all(np.isfinite(v)) for v in _flat(out).values())
    _assert_close(out, reference, atol, what="mixed precision")


def run_layer_test(layer, inputs, tmp_path, atol=1e-5, compiled=True, weights=None,
                   train=None):
    """Every check of the module's docstring on `layer` and `inputs` (a batch).

    Args:
        atol: tolerance of the round trips.
        compiled: run the compiled-vs-eager check (False where a test covers it apart).
        weights: `(trainable, non_trainable)` weight tensor counts to expect.
        train: run one training step (default: when the layer has trainable weights).
    """
    check_output_shape(layer, inputs)
    if weights is not None:
        check_weight_counts(layer, *weights)
    check_config_round_trip(layer, inputs, atol=atol)
    check_keras_file_round_trip(layer, inputs, tmp_path, atol=atol)
    if compiled:
        check_compiled(layer, inputs)
    if train if train is not None else bool(layer.trainable_weights):
        _check_one_training_step(wrap_in_model(layer, inputs.shape[1:]), inputs)


def _symbolic(inputs):
    if isinstance(inputs, dict):
        return {name: keras.Input(batch_shape=tuple(v.shape), name=name)
                for name, v in inputs.items()}
    return keras.Input(batch_shape=tuple(inputs.shape))


def _batch_size(inputs) -> int:
    return len(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)


def run_model_test(model, inputs, tmp_path, atol=1e-5, compiled=True, weights=None,
                   train=True):
    """`run_layer_test` for a `keras.Model` with its own `from_config` (inputs: an array or a
    dict of arrays): symbolic call, config and `.keras` round trips, compiled `predict`,
    weight counts, one `fit` step."""
    expected = model(inputs)
    symbolic = model(_symbolic(inputs))
    symbolic = symbolic if isinstance(symbolic, dict) else {"": symbolic}
    for name, value in _flat(expected).items():
        assert value.dtype == np.float32 and np.all(np.isfinite(value)), name
        assert tuple(symbolic[name].shape) == value.shape, (name, symbolic[name].shape)
    if weights is not None:
        check_weight_counts(model, *weights)
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    _assert_close(clone(inputs), expected, atol, what="config round trip")
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert type(reloaded) is type(model)
    _assert_close(reloaded(inputs), expected, atol, what=".keras round trip")
    if compiled:
        _check_compiled_model(clone, inputs, 1e-4)
    if train:
        _check_one_training_step(reloaded, inputs)
