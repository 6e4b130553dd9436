"""Export: SavedModel, TFLite (float32, float16, dynamic-int8, int8) and ONNX.

Every artifact is run in its own runtime (TensorFlow, LiteRT, onnxruntime) on real recordings
(tests/data) next to the Keras model it came from. The model is the tiny preset with tower
normalization statistics adapted on real audio, so that the copy of derived layer state is
exercised. On TensorFlow the export runs in this process; on JAX and PyTorch `export()` hands
the model to a TensorFlow-backend subprocess, and the artifact is compared with the JAX or
PyTorch model's own outputs (the backend-by-format table of README). The slow tests train the
tiny model on a sampled FSD50K-layout dataset and measure int8 accuracy against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import assert_same_variables, load_recording

from keras_dae import export, zoo
from keras_dae.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
SR = 16000
BACKEND = keras.backend.backend()
ON_TENSORFLOW = BACKEND == "tensorflow"
PROBABILITIES = ("fused", "pitch", "timbre", "neuralogram", "end_to_end")

# Every export needs TensorFlow; on JAX and PyTorch each one is a TensorFlow subprocess
# (tens of seconds), so there only the TFLite float32 parity test is in the fast suite and
# the other cells of README's backend-by-format table are tested with the slow tests.
subprocess_export = pytest.mark.skipif(
    not ON_TENSORFLOW and os.environ.get("KERAS_DAE_EXPECT_NO_TENSORFLOW") == "1",
    reason="TensorFlow is not installed here, and every export needs it")
SLOW_OFF_TENSORFLOW = [] if ON_TENSORFLOW else [pytest.mark.slow]


def slow_off_tensorflow(test):
    return test if ON_TENSORFLOW else pytest.mark.slow(test)


def real_windows() -> np.ndarray:
    """1 s windows of the three recordings in tests/data (short ones tiled), float32."""
    windows = []
    for name in ("speech_front_center.wav", "camera_shutter.oga", "phone_incoming_call.oga"):
        audio = load_recording(name)
        if len(audio) < SR:
            audio = np.resize(audio, SR)
        windows.append(audio[:SR])
        windows.append(audio[-SR:])
    return np.stack(windows).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    """diverse_tiny with labels, and tower normalization adapted on real audio."""
    keras.utils.set_random_seed(0)
    m = zoo.load("diverse_tiny", weights=None)
    features = m.featurizer(keras.ops.convert_to_tensor(real_windows()))
    for stream, tower in m.backbone.towers.items():
        tower.normalization.adapt(keras.ops.convert_to_numpy(features[stream]))
    m.class_names = [f"sound {i}" for i in range(m.num_classes)]
    m.class_mids = ["/m/09x0r"] + [""] * (m.num_classes - 1)
    return m


@pytest.fixture(scope="module")
def windows():
    return real_windows()


@pytest.fixture(scope="module")
def expected(model, windows):
    return model.predict(windows, verbose=0)


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    """Exports made once per module, keyed by (format, quantize)."""
    made = {}
    root = tmp_path_factory.mktemp("exports")

    def get(fmt, quantize="none"):
        key = (fmt, quantize)
        if key not in made:
            name = {"savedmodel": "sm", "tflite": f"m_{quantize}.tflite", "onnx": "m.onnx"}[fmt]
            made[key] = export.export(model, root / name, fmt, quantize=quantize,
                                      calibration=real_windows())
        return made[key]

    return get


def largest_difference(got: dict, expected: dict) -> dict[str, float]:
    return {k: float(np.max(np.abs(got[k] - expected[k]))) for k in PROBABILITIES}


# A float32 export is held to the Keras model within 1e-3 on every probability of every window
# (float32 runtimes round large, cancelling sums differently: a trained model's quietest
# constant-Q bins differ by up to 0.06 dB between onnxruntime and TensorFlow), with the same
# top-5 fused labels on every window.
FLOAT32_TOLERANCE = 1e-3


def assert_float32_parity(got: dict, expected: dict, context) -> None:
    from keras_dae import metrics

    for name, diff in largest_difference(got, expected).items():
        assert diff <= FLOAT32_TOLERANCE, (context, name, diff)
    kept = metrics.same_top_k(got["fused"], expected["fused"], k=5)
    assert kept.all(), (context, f"top-5 labels differ on windows {np.flatnonzero(~kept)}")


# -- the export-ready copy ----------------------------------------------------------------


# Exports convert on TensorFlow (from the other backends through a preset reloaded there), so
# the copy is TensorFlow's: the fft copy runs there alone; off TensorFlow the matmul copy is
# slow to compile (minutes on JAX), a slow test.
@pytest.mark.parametrize("dft_mode", [
    pytest.param("matmul", marks=SLOW_OFF_TENSORFLOW),
    pytest.param("fft", marks=pytest.mark.one_backend("tensorflow"))])
def test_export_ready_copy_computes_what_the_model_computes(model, windows, expected, dft_mode):
    ready = export.export_ready_model(model, dft_mode=dft_mode, pitch_dft_mode=dft_mode)
    frontends = [f for fs in ready.featurizer.streams.values() for f in fs]
    assert {f.dft_mode for f in frontends if hasattr(f, "dft_mode")} == {dft_mode}
    # By default YIN keeps the model's matrix product (its trough choice is discontinuous).
    default = export.export_ready_model(model, dft_mode=dft_mode, check=False)
    modes = {type(f).__name__: f.dft_mode for fs in default.featurizer.streams.values()
             for f in fs if hasattr(f, "dft_mode")}
    assert modes.pop("PitchTracker") == "matmul" and set(modes.values()) == {dft_mode}
    assert (ready.class_names, ready.class_mids) == (model.class_names, model.class_mids)
    got = ready.predict(windows, verbose=0)
    for name, diff in largest_difference(got, expected).items():
        assert diff <= 1e-4, (name, diff)
    # Every variable came along exactly, and the adapted normalization statistics with them
    # (set_weights alone would leave the copy's Normalization layers at mean 0, variance 1).
    assert_same_variables(ready, model)


@slow_off_tensorflow
@subprocess_export
@pytest.mark.parametrize("check", [True, False])
def test_an_export_is_checked_once_or_not_at_all(check, model, tmp_path, monkeypatch):
    """`check=True`: the artifact is run next to the user's model once, and nothing else runs
    the model (no check of the export-ready copy, none in the worker process); `check=False`:
    the model is never run."""
    from keras_dae.export import api

    calls = []
    real_check = api.check_against
    monkeypatch.setattr(api, "check_against",
                        lambda *a, **k: calls.append("artifact") or real_check(*a, **k))
    real_predict = type(model).predict
    monkeypatch.setattr(type(model), "predict",
                        lambda self, *a, **k: calls.append("predict") or real_predict(
                            self, *a, **k))
    result = export.export(model, tmp_path / "m.tflite", "tflite", check=check)
    assert calls == (["artifact", "predict"] if check else [])
    assert bool(result.max_abs_diff) == check


def test_export_arguments_are_checked(model, tmp_path):
    with pytest.raises(ValueError, match="format"):
        export.export(model, tmp_path / "m.bin", "coreml")
    with pytest.raises(ValueError, match="TFLite"):
        export.export(model, tmp_path / "m.onnx", "onnx", quantize="int8")
    with pytest.raises(ValueError, match="matmul"):
        export.export(model, tmp_path / "m.onnx", "onnx", dft_mode="fft")


# -- parity, each format --------------------------------------------------------------------


@subprocess_export
@pytest.mark.parametrize("fmt", [pytest.param("savedmodel", marks=SLOW_OFF_TENSORFLOW),
                                 "tflite",
                                 pytest.param("onnx", marks=SLOW_OFF_TENSORFLOW)])
def test_float32_export_matches_the_keras_model_on_real_audio(exports, windows, expected, fmt):
    result = exports(fmt)
    assert result.model_backend == BACKEND
    exported = export.load_exported(result.path)
    assert exported.format == fmt and exported.window == SR and exported.sample_rate == SR
    got = exported(windows)
    assert set(got) == {*PROBABILITIES, "embedding"}
    assert_float32_parity(got, expected, fmt)
    np.testing.assert_allclose(got["embedding"], expected["embedding"], atol=1e-3)
    # TFLite files take one window per call by default (`load_exported` loops over the rows);
    # the other formats any batch.
    assert exported.batch_size == (1 if fmt == "tflite" else None)
    one = exported(windows[:1])
    np.testing.assert_allclose(one["fused"], got["fused"][:1], atol=1e-5)


# The TFLite file's batch is the converter's (TensorFlow's) doing, whatever the model's backend:
# fast on TensorFlow, slow elsewhere (three exports through the worker process).
@slow_off_tensorflow
@subprocess_export
def test_tflite_batch_is_fixed_or_dynamic_as_asked(model, windows, expected, tmp_path):
    """`batch_size` sets the input's batch in the file: 1 by default (the converter folds the
    shape arithmetic: fewer ops), a fixed 3 (5 windows run as two padded calls), or any."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_dae.export.tflite import op_names

    ops = {}
    for batch_size, name in ((3, "b3"), (None, "any")):
        result = export.export(model, tmp_path / f"{name}.tflite", "tflite",
                               batch_size=batch_size)
        runner = Interpreter(model_path=str(result.path)).get_signature_runner()
        (spec,) = runner.get_input_details().values()
        assert list(spec["shape_signature"]) == [batch_size or -1, SR]
        exported = export.load_exported(result.path)
        assert exported.batch_size == batch_size
        got = exported(windows[:5])
        assert_float32_parity(got, {k: v[:5] for k, v in expected.items()}, batch_size)
        ops[name] = op_names(result.path.read_bytes())
    # A dynamic batch leaves shape arithmetic (SHAPE ops) that a fixed one folds away.
    assert "SHAPE" in ops["any"] and "SHAPE" not in ops["b3"], ops
    with pytest.raises(ValueError, match="batch_size"):
        export.export(model, tmp_path / "bad.tflite", "tflite", batch_size=0)


@slow_off_tensorflow
@subprocess_export
@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "onnx"])
def test_labels_travel_with_the_artifact(model, exports, fmt):
    result = exports(fmt)
    assert result.labels_path.read_text().splitlines() == model.class_names
    description = json.loads(result.description_path.read_text())
    assert description["labels"] == model.class_names
    assert description["mids"] == model.class_mids
    batch = 1 if fmt == "tflite" else None
    assert description["sample_rate"] == SR and description["input"]["shape"] == [batch, SR]
    assert description["output_order"] == ["fused", *model.stream_names, "embedding"]
    if fmt == "tflite":
        # Which interpreter output is which, for runtimes without signature runners.
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(result.path))
        runner = interpreter.get_signature_runner("serving_default")
        outputs = interpreter.get_output_details()
        for name, position in description["output_index"].items():
            assert outputs[position]["index"] == runner.get_output_details()[name]["index"]
    if fmt != "savedmodel":
        # The file alone still knows its labels.
        result.labels_path.rename(result.labels_path.with_suffix(".moved"))
        result.description_path.rename(result.description_path.with_suffix(".moved"))
        try:
            assert export.load_exported(result.path).labels == model.class_names
        finally:
            result.labels_path.with_suffix(".moved").rename(result.labels_path)
            result.description_path.with_suffix(".moved").rename(result.description_path)


@slow_off_tensorflow
@subprocess_export
def test_tflite_uses_builtin_ops_only(exports):
    from keras_dae.export.tflite import op_names

    for quantize in ("none", "int8"):
        ops = op_names(exports("tflite", quantize).path.read_bytes())
        assert not [op for op in ops if op.startswith("CUSTOM") or "FLEX" in op.upper()], ops
        assert "FULLY_CONNECTED" in ops


@slow_off_tensorflow
@subprocess_export
def test_float16_tflite_is_within_1e_2_and_smaller(exports, windows, expected):
    result = exports("tflite", "float16")
    got = export.load_exported(result.path)(windows)
    for name, diff in largest_difference(got, expected).items():
        assert diff <= 1e-2, (name, diff)
    assert result.size_bytes < exports("tflite").size_bytes


@slow_off_tensorflow
@subprocess_export
@pytest.mark.parametrize("quantize", ["dynamic-int8", "int8"])
def test_int8_tflite_runs_and_keeps_the_front_end_in_float(exports, windows, expected, quantize):
    from keras_dae.export.tflite import op_names

    result = exports("tflite", quantize)
    got = export.load_exported(result.path)(windows)
    assert all(np.all(np.isfinite(v)) for v in got.values())
    # Close, not equal: an untrained tiny model is no accuracy test (see the slow tests).
    for name, diff in largest_difference(got, expected).items():
        assert diff < 0.2, (name, diff)
    ops = op_names(result.path.read_bytes())
    # The front ends' FFT and their float arithmetic are there; int8 layers are too.
    assert "RFFT2D" in ops
    if quantize == "int8":
        assert {"QUANTIZE", "DEQUANTIZE"} <= set(ops)
    description = json.loads(result.description_path.read_text())
    assert description["quantize"] == quantize
    assert any("front end" in part for part in description["float_parts"])


def test_int8_needs_calibration_audio(model, tmp_path):
    with pytest.raises(ValueError, match="calibrat"):
        export.export(model, tmp_path / "m.tflite", "tflite", quantize="int8")


def test_calibration_windows_from_a_dataset_directory(tmp_path):
    from fsd50k_fixture import write_small_fsd50k

    root = write_small_fsd50k(tmp_path / "data", per_class=(2, 1, 1))
    windows = export.calibration_windows(root, SR, SR, max_windows=5)
    assert windows.shape == (5, SR) and windows.dtype == np.float32
    assert np.all(np.abs(windows).max(axis=1) > 0)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for name in ("speech_front_center.wav", "camera_shutter.oga", "phone_incoming_call.oga"):
        shutil.copy(REPO / "tests" / "data" / name, recordings / name)
    single = export.calibration_windows(recordings, SR, SR, max_windows=50)
    assert single.shape == (3, SR)  # one window per recording


# -- command line and the standalone runner -------------------------------------------------


@slow_off_tensorflow
@subprocess_export
def test_export_command(model, tmp_path, capsys):
    preset = zoo.save(model, tmp_path / "preset", labels=model.class_names)
    out = tmp_path / "tagger.tflite"
    assert cli_main(["export", "--model", str(preset), "--format", "tflite", "--out",
                     str(out), "--backend", BACKEND]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "largest difference" in printed
    assert out.with_suffix(".labels.txt").read_text().splitlines() == model.class_names
    # Refusals name the problem.
    assert cli_main(["export", "--model", str(preset), "--format", "onnx", "--quantize",
                     "int8", "--out", str(tmp_path / "m.onnx"), "--backend", BACKEND]) == 2
    assert "TFLite" in capsys.readouterr().err
    assert cli_main(["export", "--model", str(preset), "--format", "tflite", "--quantize",
                     "int8", "--out", str(tmp_path / "q.tflite"), "--backend", BACKEND]) == 2
    assert "--calibration" in capsys.readouterr().err


def test_command_line_choices_match_the_package():
    from keras_dae.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["export"]
    choices = {a.dest: a.choices for a in sub._actions if a.choices}
    assert tuple(choices["format"]) == export.FORMATS
    assert tuple(choices["quantize"]) == export.QUANTIZATIONS


# A guard that makes `import tensorflow` (and keras, keras_dae) fail inside the runner's
# process, then runs tflite/classify.py as a script.
_NO_TENSORFLOW = """
import runpy, sys
for name in ("tensorflow", "keras", "keras_dae", "jax", "torch"):
    sys.modules[name] = None
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
"""


@slow_off_tensorflow
@subprocess_export
def test_standalone_runner_needs_no_tensorflow(model, exports):
    result = exports("tflite", "int8")
    audio = REPO / "tests" / "data" / "speech_front_center.wav"
    code = _NO_TENSORFLOW.format(script=str(REPO / "tflite" / "classify.py"))
    proc = subprocess.run([sys.executable, "-c", code, str(result.path), str(audio), "--top",
                           "3"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("speech_front_center.wav: 1.43 s, 2 windows")
    assert lines[-1].startswith("clip: ")
    assert any(line.strip().startswith("0.00 s") for line in lines)
    # The clip's ranking is the mean of the windows' scores, with the model's labels.
    proc = subprocess.run([sys.executable, "-c", code, str(result.path), str(audio), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    scores = json.loads(proc.stdout)
    assert scores["labels"] == model.class_names
    np.testing.assert_allclose(scores["clip"], np.mean(scores["windows"], axis=0), atol=1e-6)
    top = lines[-1].split(": ", 1)[1].split(", ")[0].rsplit(" ", 1)[0]
    assert top == model.class_names[int(np.argmax(scores["clip"]))]


@subprocess_export
def test_runner_reads_labels_from_the_model_file_itself(model, exports, tmp_path):
    sys.path.insert(0, str(REPO / "tflite"))
    try:
        import classify
    finally:
        sys.path.pop(0)
    metadata = classify.embedded_metadata(exports("tflite", "none").path.read_bytes())
    assert metadata["labels"] == model.class_names and metadata["sample_rate"] == SR
    assert classify.load_labels(tmp_path / "elsewhere.tflite", metadata) == model.class_names


# -- a trained model: int8 accuracy ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """diverse_tiny trained briefly on the sampled FSD50K-layout dataset (60 real clips of 15
    classes, scripts/build_sampled_dataset.py --small), with its eval split."""
    from keras_dae import training
    from keras_dae.data import read_fsd50k
    from keras_dae.models import build_diverse_classifier
    from keras_dae.zoo import PRESETS

    root = tmp_path_factory.mktemp("sampled") / "fsd50k"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_sampled_dataset.py"),
                           "--out", str(root), "--small", "--seed", "3"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (
        f"building the sampled dataset failed (its Debian packages: python "
        f"scripts/build_sampled_dataset.py --install):\n{proc.stderr[-2000:]}")
    train, val = read_fsd50k(root, "train"), read_fsd50k(root, "val")
    keras.utils.set_random_seed(0)
    m = build_diverse_classifier(len(train.labels), tower=PRESETS["diverse_tiny"]["tower"])
    config = training.TrainConfig(tower_epochs=6, fusion_epochs=3, joint_epochs=0, batch_size=8, patience=6,
                                  normalization_chunks=64, seed=0)
    training.Trainer(m, train, val, tmp_path_factory.mktemp("run"), config, verbose=0).run()
    m.class_names = list(train.labels)
    return m, root, read_fsd50k(root, "eval")


def clip_scores(run, dataset):
    """Fused clip scores (mean over 1 s windows every 0.5 s) of `run(windows)`."""
    from keras_dae.data.loader import iterate_clips

    return np.stack([run(chunks)["fused"].mean(axis=0) for _, chunks in
                     iterate_clips(dataset, SR)])


@pytest.mark.slow
@subprocess_export
def test_int8_keeps_top_labels_and_map_of_a_trained_model(trained, tmp_path):
    from keras_dae import metrics

    model, root, eval_set = trained
    keras_scores = clip_scores(lambda x: model.predict(x, verbose=0), eval_set)
    reference_map = metrics.mean_average_precision(eval_set.targets, keras_scores)
    assert reference_map > 0.3  # it learned something (chance is ~0.1)
    for quantize in ("int8", "dynamic-int8"):
        result = export.export(model, tmp_path / f"{quantize}.tflite", "tflite",
                               quantize=quantize, calibration=root)
        exported = export.load_exported(result.path)
        scores = clip_scores(exported, eval_set)
        kept = np.mean(metrics.same_top_k(scores, keras_scores, k=5))
        assert kept >= 0.9, (quantize, kept)
        loss = reference_map - metrics.mean_average_precision(eval_set.targets, scores)
        assert loss <= 0.01, (quantize, loss)


@pytest.mark.slow
@subprocess_export
def test_float_exports_of_a_trained_model_match_it(trained, tmp_path):
    model, _, eval_set = trained
    from keras_dae.data.loader import iterate_clips

    x = np.concatenate([chunks for _, chunks in iterate_clips(eval_set, SR)])
    expected = model.predict(x, verbose=0)
    for fmt, name in (("savedmodel", "sm"), ("tflite", "m.tflite"), ("onnx", "m.onnx")):
        result = export.export(model, tmp_path / name, fmt)
        assert_float32_parity(export.load_exported(result.path)(x), expected, fmt)


@pytest.mark.slow
@subprocess_export
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_float32_exports_of_the_shipped_preset_match_it(fmt, tmp_path):
    """The trained `diverse_sampled15` (the constant-Q spectrum's 80 dB range, whose quietest
    bins round differently in each runtime), exported and run on the bundled demo recordings,
    every 1 s chunk."""
    from keras_dae import demo
    from keras_dae.audio import load_audio
    from keras_dae.data import chunk_waveform

    model = zoo.load("diverse_sampled15")
    x = np.concatenate([chunk_waveform(load_audio(clip, SR), SR, 1.0, 0.5)
                        for clip in demo.demo_clips()]).astype(np.float32)
    assert len(x) >= 20
    expected = model.predict(x, verbose=0)
    result = export.export(model, tmp_path / f"shipped.{fmt}", fmt)
    assert_float32_parity(export.load_exported(result.path)(x), expected, fmt)
