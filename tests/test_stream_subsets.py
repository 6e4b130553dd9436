"""A model on a subset of its streams: `DiverseClassifier.with_streams`, `from_preset` /
`zoo.load(streams=...)` and `export(streams=...)`.

The model is the tiny preset with its towers' normalization adapted on a real recording, so
that the copy of derived layer state (a `Normalization`'s mean and variance) is exercised.
Models are called directly, not through `predict`: on JAX that compiles each op once for all
the subset models instead of the whole graph once per model.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from conftest import load_recording

from keras_dae import export, zoo
from keras_dae.models import DiverseClassifier
from keras_dae.validation import InputError

SR = 16000
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
# As in test_export.py: every export needs TensorFlow, and off TensorFlow each one is a
# TensorFlow subprocess (tens of seconds), so there the export test is a slow one.
subprocess_export = pytest.mark.skipif(
    not ON_TENSORFLOW and os.environ.get("KERAS_DAE_EXPECT_NO_TENSORFLOW") == "1",
    reason="TensorFlow is not installed here, and every export needs it")


def slow_off_tensorflow(test):
    return test if ON_TENSORFLOW else pytest.mark.slow(test)


def speech_windows() -> np.ndarray:
    """The start and the end of a real recording, two 1 s windows, float32."""
    speech = load_recording("speech_front_center.wav")
    return np.stack([speech[:SR], speech[-SR:]]).astype(np.float32)


def outputs(model, windows) -> dict[str, np.ndarray]:
    return {name: keras.ops.convert_to_numpy(value)
            for name, value in model(windows, training=False).items()}


def embedding_columns(model, kept) -> np.ndarray:
    """The columns of `model`'s concatenated embedding (rows of its fusion kernel) that
    belong to the streams `kept`."""
    columns, start = [], 0
    for name in model.stream_names:
        width = model.backbone.towers[name].d_model
        if name in kept:
            columns.extend(range(start, start + width))
        start += width
    return np.array(columns)


@pytest.fixture(scope="module")
def windows():
    return speech_windows()


@pytest.fixture(scope="module")
def model(tiny_preset, windows):
    m = zoo.load(tiny_preset)
    features = m.featurizer(keras.ops.convert_to_tensor(windows))
    for stream, tower in m.backbone.towers.items():
        tower.normalization.adapt(keras.ops.convert_to_numpy(features[stream]))
    return m


@pytest.fixture(scope="module")
def full(model, windows):
    return outputs(model, windows)


def numpy_of(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("streams", [["timbre", "pitch"], ["end_to_end"],
                                     "end_to_end,neuralogram,pitch"])
def test_kept_streams_compute_what_they_computed(model, windows, full, streams):
    subset = model.with_streams(streams)
    kept = [name for name in model.stream_names if name in streams]
    assert subset.stream_names == kept  # the model's order, not the order given
    assert isinstance(subset, DiverseClassifier) and subset is not model
    assert (subset.class_names, subset.class_mids) == (model.class_names, model.class_mids)
    assert subset.dropout == model.dropout
    got = outputs(subset, windows)
    assert set(got) == {"fused", *kept, "embedding"}
    for name in kept:
        np.testing.assert_allclose(got[name], full[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got["embedding"],
                               full["embedding"][:, embedding_columns(model, kept)], atol=1e-5)
    # Every variable of the kept front ends, towers and heads came along, and the towers'
    # normalization statistics (derived from its variables when they load) with them.
    for name in kept:
        for source, target in ((model.featurizer.streams[name], subset.featurizer.streams[name]),
                               ([model.backbone.towers[name]], [subset.backbone.towers[name]]),
                               ([model.stream_heads[name]], [subset.stream_heads[name]])):
            for want, have in zip(numpy_of(w for f in source for w in f.weights),
                                  numpy_of(w for f in target for w in f.weights), strict=True):
                np.testing.assert_array_equal(have, want)
        for statistic in ("mean", "variance"):
            np.testing.assert_array_equal(
                *numpy_of(getattr(m.backbone.towers[name].normalization, statistic)
                          for m in (subset, model)))
    kept_parts = sum(len(layer.weights) for name in kept for layer in (
        *model.featurizer.streams[name], model.backbone.towers[name], model.stream_heads[name]))
    assert len(subset.weights) == kept_parts + len(model.fusion_head.weights)


def test_one_stream_fuses_as_its_own_head(model, windows, full):
    subset = model.with_streams(["timbre"])
    head = subset.stream_heads["timbre"]
    for fused, own in zip(numpy_of(subset.fusion_head.weights), numpy_of(head.weights),
                          strict=True):
        np.testing.assert_array_equal(fused, own)
    got = outputs(subset, windows)
    np.testing.assert_allclose(got["fused"], got["timbre"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(got["fused"], full["timbre"], atol=1e-5)


def test_several_streams_fuse_with_the_bias_and_the_kept_streams_terms(model, windows, full):
    kept = ["pitch", "neuralogram"]
    subset = model.with_streams(kept)
    kernel, bias = numpy_of((model.fusion_head.kernel, model.fusion_head.bias))
    columns = embedding_columns(model, kept)
    # From the full model alone: its embedding's kept columns, its kernel's kept rows.
    logit = full["embedding"][:, columns].astype(np.float64) @ kernel[columns] + bias
    expected = 1.0 / (1.0 + np.exp(-logit))
    np.testing.assert_allclose(outputs(subset, windows)["fused"], expected, atol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(subset.fusion_head.bias), bias)


def test_tower_overrides_of_kept_streams_stay(model):
    """Towers of other widths: the overrides of kept streams stay, and the fusion kernel's
    rows are found by each tower's own width (pitch's front ends are left out of this model
    to keep it quick to build)."""
    from keras_dae.models import DiverseBackbone, DiverseFeaturizer

    config = model.featurizer.get_config()
    config["streams"] = {n: f for n, f in config["streams"].items() if n != "pitch"}
    featurizer = DiverseFeaturizer.from_config(config)
    overrides = {"timbre": {"d_model": 8, "num_heads": 1}, "neuralogram": {"num_heads": 1}}
    backbone = DiverseBackbone(featurizer.feature_dims(), tower=model.backbone.tower_args,
                               tower_overrides=overrides)
    wide = DiverseClassifier(backbone, featurizer, num_classes=model.num_classes)
    subset = wide.with_streams(["end_to_end", "timbre"])
    assert subset.backbone.tower_overrides == {"timbre": overrides["timbre"]}
    assert subset.backbone.tower_args == wide.backbone.tower_args
    assert [subset.backbone.towers[n].d_model for n in subset.stream_names] == [8, 16]
    # timbre: rows 0-7; neuralogram (dropped): 8-23; end_to_end: 24-39.
    columns = embedding_columns(wide, ["timbre", "end_to_end"])
    assert columns.tolist() == [*range(8), *range(24, 40)]
    kernel = keras.ops.convert_to_numpy(wide.fusion_head.kernel)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(subset.fusion_head.kernel),
                                  kernel[columns])


def test_a_subset_saves_and_loads_like_any_classifier(model, windows, tmp_path):
    subset = model.with_streams(["timbre", "end_to_end"])
    config = subset.get_config()
    assert list(config["featurizer"]["config"]["streams"]) == ["timbre", "end_to_end"]
    assert list(config["backbone"]["config"]["feature_dims"]) == ["timbre", "end_to_end"]
    assert DiverseClassifier.from_config(config).get_config() == config
    expected = outputs(subset, windows)

    subset.save(tmp_path / "subset.keras")
    loaded = keras.saving.load_model(tmp_path / "subset.keras")
    assert loaded.get_config() == config

    preset = subset.save_to_preset(tmp_path / "preset")
    metadata = json.loads((preset / "metadata.json").read_text())
    assert metadata["streams"] == ["timbre", "end_to_end"]
    reloaded = DiverseClassifier.from_preset(preset)
    assert reloaded.get_config() == config
    for other in (loaded, reloaded):
        got = outputs(other, windows)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-6, err_msg=name)


def test_presets_load_with_a_subset_of_their_streams(model, windows, full, tmp_path):
    preset = model.save_to_preset(tmp_path / "full")
    for loaded in (zoo.load(preset, streams="timbre,pitch"),
                   DiverseClassifier.from_preset(preset, streams=["pitch", "timbre"])):
        assert loaded.stream_names == ["pitch", "timbre"]
        assert loaded.class_names == model.class_names
        got = outputs(loaded, windows)
        for name in ("pitch", "timbre"):
            np.testing.assert_allclose(got[name], full[name], atol=1e-5, err_msg=name)
    # New heads first, then the subset: the kept streams' towers, the new classes.
    tuned = zoo.load(preset, labels=["dog", "cat"], streams=["neuralogram"],
                     freeze_backbone=True)
    assert tuned.stream_names == ["neuralogram"] and tuned.class_names == ["dog", "cat"]
    assert not tuned.backbone.trainable and not tuned.featurizer.trainable
    np.testing.assert_allclose(outputs(tuned, windows)["embedding"],
                               full["embedding"][:, embedding_columns(model, ["neuralogram"])],
                               atol=1e-5)


@pytest.mark.parametrize(("streams", "named"), [
    (["pitch", "rhythm"], "'rhythm'"),
    ([], r"\[\]"),
    ("", "''"),
    (["timbre", "pitch", "timbre"], "'timbre' is given 2 times"),
])
def test_bad_streams_are_refused_with_the_models_streams(model, tmp_path, streams, named):
    has = r"this model has \['pitch', 'timbre', 'neuralogram', 'end_to_end'\]"
    with pytest.raises(InputError, match=f"{named}.*{has}"):
        model.with_streams(streams)
    with pytest.raises(InputError, match=f"{named}.*{has}"):
        export.export(model, tmp_path / "m.tflite", "tflite", streams=streams)
    assert not list(tmp_path.iterdir())


@slow_off_tensorflow
@subprocess_export
def test_an_export_of_a_subset_runs_as_the_keras_subset(model, windows, tmp_path):
    subset = model.with_streams(["timbre", "end_to_end"])
    expected = subset.predict(windows, verbose=0)
    result = export.export(model, tmp_path / "subset.tflite", "tflite",
                           streams=["end_to_end", "timbre"])
    description = json.loads(result.description_path.read_text())
    assert description["streams"] == ["timbre", "end_to_end"]
    assert description["output_order"] == ["fused", "timbre", "end_to_end", "embedding"]
    width = subset.output["embedding"].shape[-1]
    assert description["outputs"]["embedding"].startswith(f"(batch, {width})")
    assert description["labels"] == model.class_names
    got = export.load_exported(result.path)(windows)
    assert set(got) == {"fused", "timbre", "end_to_end", "embedding"}
    for name in ("fused", "timbre", "end_to_end"):
        # Float32 exports are held to 1e-3 (tests/test_export.py).
        np.testing.assert_allclose(got[name], expected[name], atol=1e-3, err_msg=name)
    np.testing.assert_allclose(got["embedding"], expected["embedding"], atol=1e-3)


@pytest.mark.one_backend("tensorflow")
def test_export_command_streams_flag(tiny_preset, tmp_path, capsys):
    """`keras-dae export --streams`: an unknown stream is refused before anything is written;
    the kept streams are the artifact's."""
    from keras_dae import cli

    out = tmp_path / "t.tflite"
    base = ["export", "--model", str(tiny_preset), "--format", "tflite", "--out", str(out)]
    assert cli.main([*base, "--streams", "timbre,rhythm"]) == 2
    assert "rhythm" in capsys.readouterr().err and not out.exists()
    assert cli.main([*base, "--streams", "timbre"]) == 0
    description = json.loads(out.with_suffix(".json").read_text())
    assert description["streams"] == ["timbre"]
