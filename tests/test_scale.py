"""Scale: mixed precision (bfloat16) with float32 front ends and heads, and data parallelism
over several devices with keras.distribution (JAX), checked against one device."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import assert_same_variables, harmonic_tone, load_recording

from keras_dae import scale, training
from keras_dae.models import build_diverse_classifier
from keras_dae.zoo import PRESETS

TINY = PRESETS["diverse_tiny"]["tower"]
ROOT = Path(__file__).resolve().parents[1]


def _clips():
    speech = load_recording("speech_front_center.wav")[:16000]
    return np.stack([speech, harmonic_tone(220.0), 0.5 * speech[::-1].copy(),
                     harmonic_tone(440.0)]).astype(np.float32)


def test_mixed_precision_keeps_the_sensitive_parts_in_float32():
    with scale.precision("bfloat16"):
        keras.utils.set_random_seed(0)
        model = build_diverse_classifier(4, tower=TINY)
    assert keras.config.dtype_policy().name == "float32"  # restored after the block
    assert scale.model_precision(model) == "bfloat16"
    for frontends in model.featurizer.streams.values():
        for frontend in frontends:
            if type(frontend).__name__ != "Neuralogram":  # a network: follows the policy
                assert frontend.compute_dtype == "float32", frontend.name
    for tower in model.backbone.towers.values():
        assert tower.compute_dtype == "bfloat16"
        assert tower.normalization.compute_dtype == "float32"
        assert all(v.dtype == "float32" for v in tower.trainable_weights)  # master weights
    assert model.fusion_head.compute_dtype == "float32"
    outputs = model.predict(_clips(), verbose=0)
    assert all(outputs[name].dtype == np.float32 for name in outputs)


def test_with_precision_converts_both_ways():
    """A float32 model and its bfloat16 copy share weights, class names and AudioSet ids,
    and agree to bfloat16's resolution (probabilities within 0.05: bfloat16 keeps 8
    significant bits); converting back gives the float32 model's outputs."""
    keras.utils.set_random_seed(0)
    model = build_diverse_classifier(4, tower=TINY, class_names=["a", "b", "c", "d"],
                                     class_mids=["/m/a", "", "", "/m/d"])
    clips = _clips()
    features = model.featurizer(clips)  # as training does: normalised features
    for name, tower in model.backbone.towers.items():
        tower.normalization.adapt(keras.ops.convert_to_numpy(features[name]))
    reference = model.predict(clips, verbose=0)
    half = scale.with_precision(model, "bfloat16")
    assert scale.model_precision(half) == "bfloat16" and scale.model_precision(model) is None
    assert (half.class_names, half.class_mids) == (model.class_names, model.class_mids)
    assert_same_variables(half, model)
    assert keras.config.dtype_policy().name == "float32"
    # The waveform reaches the front ends unrounded: the handcrafted features are float32's.
    for name, value in half.featurizer(clips).items():
        expected = keras.ops.convert_to_numpy(features[name])
        if name != "neuralogram":  # a network: follows the policy
            np.testing.assert_allclose(keras.ops.convert_to_numpy(value), expected,
                                       atol=1e-5 * np.abs(expected).max(), rtol=0)
    lowered = half.predict(clips, verbose=0)
    for name in ("fused", *model.stream_names):
        np.testing.assert_allclose(lowered[name], reference[name], atol=0.05)
    back = scale.with_precision(half, None)
    assert scale.model_precision(back) is None and back.class_names == model.class_names
    assert_same_variables(back, model)
    restored = back.predict(clips, verbose=0)
    for name in reference:
        np.testing.assert_allclose(restored[name], reference[name], atol=1e-5)


def test_trainer_refuses_a_mismatched_setup(tmp_path):
    from fsd50k_fixture import write_small_fsd50k

    from keras_dae.data import read_fsd50k

    data = write_small_fsd50k(tmp_path / "data", per_class=(1, 1, 0))
    train, val = read_fsd50k(data, "train"), read_fsd50k(data, "val")
    model = build_diverse_classifier(len(train.labels), tower=TINY)
    with pytest.raises(ValueError, match="set_mixed_precision"):
        training.Trainer(model, train, val, tmp_path / "run",
                         training.TrainConfig(mixed_precision="bfloat16"))
    with pytest.raises(ValueError, match="float16 is not offered"):
        scale.dtype_policy_name("float16")
    with pytest.raises(ValueError, match="data_parallel"):
        training.Trainer(model, train, val, tmp_path / "run",
                         training.TrainConfig(data_parallel=True))
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="JAX or TensorFlow"), scale.data_parallel(8):
            pass


# Runs in a fresh process with two host (CPU) devices: JAX reads XLA_FLAGS when it starts, and
# TensorFlow's logical devices must be set before it initialises, so this cannot run in the
# test process.
_DATA_PARALLEL = textwrap.dedent("""
    import contextlib, json, os, sys
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from keras_dae import scale, training
    from keras_dae.data import read_fsd50k
    from keras_dae.models import build_diverse_classifier
    from keras_dae.zoo import PRESETS

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000, (32, 1)) * t)
         + 0.05 * rng.standard_normal((32, 16000))).astype("float32")
    y = (rng.random((32, 4)) > 0.5).astype("float32")

    def run(parallel):
        with scale.data_parallel(8) if parallel else contextlib.nullcontext():
            keras.utils.set_random_seed(0)
            model = build_diverse_classifier(4, tower=PRESETS["diverse_tiny"]["tower"])
            names = ["fused", *model.stream_names]
            model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss={n: "binary_crossentropy" for n in names})
            history = model.fit(x, {n: y for n in names}, batch_size=8, epochs=2,
                                shuffle=False, verbose=0)
            devices = scale.device_count()
            # Clip-level evaluation pads its batches to whole ones: 5 clips, 9 chunks here.
            report = training.evaluate(model, read_fsd50k(sys.argv[1], "val").subset(range(5)))
            if keras.backend.backend() == "jax":
                copies = len(model.trainable_variables[0].value.sharding.device_set)
            else:  # a MirroredVariable: one copy per replica
                copies = len(getattr(model.trainable_variables[0].value, "values", [0]))
        return {"loss": history.history["loss"], "devices": devices, "mAP": report["mAP"],
                "variable_devices": copies}

    print(json.dumps({"single": run(False), "parallel": run(True),
                      "local_devices": scale.local_devices()}))
""")


def _two_device_run(tmp_path, backend):
    from fsd50k_fixture import write_small_fsd50k

    data = write_small_fsd50k(tmp_path / "data", per_class=(1, 2, 0))
    env = dict(os.environ, KERAS_BACKEND=backend,
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _DATA_PARALLEL, str(data)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_data_parallel_on_two_host_devices_matches_one_device(tmp_path):
    """keras.distribution.DataParallel over 2 CPU devices trains diverse_tiny to the same
    losses as one device (within 1e-3 relative: only the order of the gradient sums
    differs), and clip-level evaluation runs under it."""
    if keras.backend.backend() != "jax":
        pytest.skip("keras.distribution's DataParallel is JAX's (TensorFlow: MirroredStrategy)")
    result = _two_device_run(tmp_path, "jax")
    assert len(result["local_devices"]) == 2
    single, parallel = result["single"], result["parallel"]
    assert single["devices"] is None and parallel["devices"] == 2
    assert parallel["variable_devices"] == 2 and single["variable_devices"] == 1
    np.testing.assert_allclose(parallel["loss"], single["loss"], rtol=1e-3)
    assert 0 <= parallel["mAP"] <= 1


@pytest.mark.slow
def test_tensorflow_route_mirrored_strategy_on_two_cpus(tmp_path):
    """On TensorFlow the same `scale.data_parallel` opens a MirroredStrategy (here over two
    logical CPUs): one copy of each variable per replica, the single-device losses within
    1e-3, and clip-level evaluation under it."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.distribute route needs TensorFlow")
    result = _two_device_run(tmp_path, "tensorflow")
    single, parallel = result["single"], result["parallel"]
    assert len(result["local_devices"]) == 2
    assert single["devices"] is None and parallel["devices"] == 2
    assert parallel["variable_devices"] == 2
    np.testing.assert_allclose(parallel["loss"], single["loss"], rtol=1e-3)
    assert 0 <= parallel["mAP"] <= 1


@pytest.mark.slow
def test_train_command_in_bfloat16_with_data_parallel(tmp_path):
    """`keras-dae train --mixed-precision bfloat16 --data-parallel` on two host devices:
    trains, says so, and writes a float32 preset that loads and tags."""
    if keras.backend.backend() != "jax":
        pytest.skip("data parallelism over host devices is tested on JAX")
    from fsd50k_fixture import write_small_fsd50k

    data = write_small_fsd50k(tmp_path / "data")
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "keras_dae.cli", "train", "--data", str(data), "--out",
            str(run_dir), "--preset", "diverse_tiny", "--epochs", "4", "--fusion-epochs", "3",
            "--joint-epochs", "0", "--mixed-precision", "bfloat16", "--data-parallel"]
    refused = subprocess.run([*base, "--batch-size", "7"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "does not divide by the 2 devices" in refused.stderr
    done = subprocess.run([*base, "--batch-size", "8"], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mixed_bfloat16, data parallel over 2 devices" in done.stdout
    config = (run_dir / "preset" / "config.json").read_text()
    assert "mixed_bfloat16" not in config
    report = json.loads((run_dir / "report.json").read_text())
    assert report["config"]["mixed_precision"] == "bfloat16"
    assert report["evaluation"]["eval"]["mAP"] > 0.7, report["evaluation"]["eval"]["mAP"]


@pytest.mark.slow
def test_shipped_preset_tags_alike_in_bfloat16():
    """The shipped (float32-trained) preset run in bfloat16 gives the five demo clips the same
    top label, every fused score within 0.02 of float32's and every stream head's within 0.1
    (measured on the current preset: fused 0.010, stream heads 0.055-0.057, the Neuralogram's
    on the guitar clip, on every backend). Before the front ends and towers took float32
    inputs, scores moved by up to 0.7."""
    from keras_dae import demo
    from keras_dae.inference import Tagger, load_model

    model = load_model("diverse_sampled15")
    full, half = Tagger(model), Tagger(scale.with_precision(model, "bfloat16"))
    for clip in demo.demo_clips():
        a, b = full.tag(clip), half.tag(clip)
        assert a.labels[0].label == b.labels[0].label, clip
        for name in a.scores:
            np.testing.assert_allclose(b.scores[name], a.scores[name], rtol=0,
                                       atol=0.02 if name == "fused" else 0.1, err_msg=name)
