"""The zoo: presets build, save, load, fine-tune, and refuse what they should."""

import json
import pickle
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from keras_dae import zoo
from keras_dae.models import STREAMS
from keras_dae.zoo import PresetError


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch, no_network):
    """Every zoo test: its own KERAS_DAE_HOME, and no network access (conftest.no_network)."""
    monkeypatch.setenv("KERAS_DAE_HOME", str(tmp_path / "home"))


def test_list_presets():
    presets = zoo.list_presets()
    assert {"diverse_fsd50k", "diverse_tiny"} <= set(presets)


def test_fsd50k_preset_builds_without_weights():
    model = zoo.load("diverse_fsd50k", weights=None)
    assert model.num_classes == 200 and model.stream_names == list(STREAMS)
    assert len(model.class_names) == 200


def test_missing_weights_say_where_and_how():
    with pytest.raises(PresetError) as error:
        zoo.load("diverse_fsd50k")
    message = str(error.value)
    assert "presets/diverse_fsd50k/model.weights.h5" in message
    assert "keras-dae train" in message and "weights=None" in message


def test_save_and_load_preset_directory(signals, tmp_path):
    model = zoo.load("diverse_tiny", weights=None)
    x = np.stack([signals["speech"][:16000], signals["chirp"]])
    expected = model.predict(x, verbose=0)
    labels = [f"label {i}" for i in range(10)]
    directory = zoo.save(model, tmp_path / "preset", labels=labels,
                         metadata={"training_data": "none"})
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "labels.csv", "metadata.json", "model.weights.h5"]
    meta = json.loads((directory / "metadata.json").read_text())
    assert meta["backend"] == keras.backend.backend() and meta["sample_rate"] == 16000
    assert meta["training_data"] == "none"
    assert "class_names" not in (directory / "config.json").read_text()  # labels.csv has them
    loaded = zoo.load(directory)
    assert loaded.class_names == labels
    got = loaded.predict(x, verbose=0)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


@pytest.mark.one_backend  # files and names; tests/test_cross_backend.py reloads across
def test_labels_are_model_state(signals, tmp_path, monkeypatch):
    """Class names and AudioSet ids travel with the model: through a `.keras` file, and
    through `save_to_preset` / `from_preset` given a preset directory, a training run
    directory or a preset name."""
    from keras_dae.models import DiverseClassifier

    names, mids = ["Speech", "Dog", "Bird"], ["/m/09x0r", "/m/0bt9lr", ""]
    model = DiverseClassifier.from_preset("diverse_tiny", load_weights=False,
                                          class_names=names, class_mids=mids)
    assert (model.class_names, model.class_mids) == (names, mids)
    assert DiverseClassifier.from_preset("diverse_tiny", load_weights=False,
                                         num_classes=2).class_names == ["class_0", "class_1"]
    x = signals["speech"][None, :16000]
    expected = model.predict(x, verbose=0)["fused"]
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert (reloaded.class_names, reloaded.class_mids) == (names, mids)
    model.save_to_preset(tmp_path / "run" / "preset")
    assert zoo.resolve_preset(tmp_path / "run") == (None, tmp_path / "run" / "preset")
    monkeypatch.setenv("KERAS_DAE_HOME", str(tmp_path / "home"))
    model.save_to_preset(tmp_path / "home" / "presets" / "diverse_tiny")
    for source in (tmp_path / "run" / "preset", tmp_path / "run", str(tmp_path / "run"),
                   "diverse_tiny"):
        loaded = DiverseClassifier.from_preset(source)
        assert (loaded.class_names, loaded.class_mids) == (names, mids), source
        np.testing.assert_allclose(loaded.predict(x, verbose=0)["fused"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="2 class_names for a model with 3 classes"):
        DiverseClassifier.from_preset("diverse_tiny", load_weights=False, num_classes=3,
                                      class_names=["a", "b"])


def test_a_missing_preset_says_how_to_get_one(tmp_path):
    from keras_dae.models import DiverseClassifier

    for missing in (tmp_path / "no_such_run", "diverse_huge"):
        with pytest.raises(PresetError) as error:
            DiverseClassifier.from_preset(missing)
        message = str(error.value)
        assert "\n" not in message and str(missing) in message
        assert "keras-dae train" in message and "diverse_tiny" in message


def test_named_preset_weights_come_from_keras_dae_home(signals, tmp_path):
    model = zoo.load("diverse_tiny", weights=None)
    zoo.save(model, zoo.keras_dae_home() / "presets" / "diverse_tiny")
    x = signals["tone"][None]
    np.testing.assert_allclose(zoo.load("diverse_tiny").predict(x, verbose=0)["fused"],
                               model.predict(x, verbose=0)["fused"], atol=1e-5)


def test_new_heads_keep_the_towers(signals, tmp_path):
    model = zoo.load("diverse_tiny", weights=None)
    directory = zoo.save(model, tmp_path / "p")
    tuned = zoo.load(directory, labels=["dog", "cat", "bird"], freeze_backbone=True)
    assert tuned.num_classes == 3 and tuned.class_names == ["dog", "cat", "bird"]
    x = signals["speech"][None, :16000]
    np.testing.assert_allclose(tuned.predict(x, verbose=0)["embedding"],
                               model.predict(x, verbose=0)["embedding"], atol=1e-5)
    # Frozen: only the five heads (kernel + bias each) train.
    assert len(tuned.trainable_weights) == 10
    assert zoo.load(directory, num_classes=7).num_classes == 7


def _clip_dataset(signals, n_per_class, rng):
    """Random 1 s crops of real recordings and synthetic sounds, with gain and noise."""
    sources = [signals["speech"], signals["shutter"], signals["tone"], signals["chirp"]]
    x, y = [], []
    for label, source in enumerate(sources):
        source = np.pad(source, (0, max(0, 16000 - len(source))))
        for _ in range(n_per_class):
            start = rng.integers(0, len(source) - 16000 + 1)
            clip = source[start:start + 16000] * rng.uniform(0.3, 1.5)
            clip = np.roll(clip, rng.integers(0, 4000)) + 0.01 * rng.standard_normal(16000)
            x.append(clip.astype("float32"))
            y.append(np.eye(len(sources), dtype="float32")[label])
    return np.stack(x), np.stack(y)


@pytest.mark.slow
def test_fine_tuning_a_small_labelled_set_raises_map(signals):
    """Fine-tuning the heads and towers on 32 labelled clips: eval mAP far above untrained."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = _clip_dataset(signals, 8, rng)
    x_eval, y_eval = _clip_dataset(signals, 4, rng)
    model = zoo.load("diverse_tiny", weights=None, labels=["speech", "shutter", "tone", "chirp"])
    for name in STREAMS:  # per-feature normalisation from the training features
        model.backbone.towers[name].normalization.adapt(
            keras.ops.convert_to_numpy(model.featurizer(x_train)[name]))

    def eval_map():
        scores = model.predict(x_eval, verbose=0)["fused"]
        return average_precision_score(y_eval, scores, average="macro")

    before = eval_map()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss={"fused": "binary_crossentropy",
                        **{name: "binary_crossentropy" for name in STREAMS}})
    targets = {"fused": y_train, **{name: y_train for name in STREAMS}}
    model.fit(x_train, targets, epochs=15, batch_size=8, verbose=0)
    after = eval_map()
    assert after > 0.9 and after > before + 0.3, (before, after)


class _RunsCode:
    """Unpickling this runs `marker.write_text(...)`: a pickle that executes code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).write_text, ("code from a pickle ran",))


def _nested_layers(config):
    """Every nested dict of a serialized config that names a class."""
    if isinstance(config, dict):
        if "class_name" in config and "config" in config:
            yield config
        for value in config.values():
            yield from _nested_layers(value)
    elif isinstance(config, list):
        for value in config:
            yield from _nested_layers(value)


@pytest.mark.parametrize("broken", [
    "missing_config", "bad_json", "foreign_class", "truncated_weights", "wrong_labels",
    "corrupted_weights", "corrupted_weights_no_checksum", "missing_weights",
    "unknown_nested_class", "function_from_os", "pickle_weights"])
def test_broken_presets_are_refused(broken, tmp_path):
    """Each is refused with a PresetError naming the preset's file, and nothing runs."""
    directory = zoo.save(zoo.load("diverse_tiny", weights=None), tmp_path / "p")
    marker = tmp_path / "code_ran"
    weights = directory / "model.weights.h5"
    config = json.loads((directory / "config.json").read_text())
    if broken == "missing_config":
        (directory / "config.json").unlink()
    elif broken == "bad_json":
        (directory / "config.json").write_text("{not json")
    elif broken == "foreign_class":
        config = json.loads((directory / "config.json").read_text())
        config["registered_name"] = "Functional"
        config["module"] = "keras.src.models.functional"
        (directory / "config.json").write_text(json.dumps(config))
    elif broken == "truncated_weights":
        data = (directory / "model.weights.h5").read_bytes()
        (directory / "model.weights.h5").write_bytes(data[: len(data) // 2])
    elif broken == "wrong_labels":
        (directory / "labels.csv").write_text("index,label,mid\n0,a,\n")
    elif broken.startswith("corrupted_weights"):
        # Same size, some bytes of the data region flipped: HDF5 has no checksum of its
        # own, so the preset's SHA-256 is what catches it.
        data = bytearray(weights.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
        weights.write_bytes(bytes(data))
        if broken == "corrupted_weights_no_checksum":  # flip bytes of the HDF5 superblock
            data[:64] = bytes(64)
            weights.write_bytes(bytes(data))
            (directory / "metadata.json").unlink()
    elif broken == "missing_weights":
        weights.unlink()
    elif broken == "unknown_nested_class":
        layer = next(c for c in _nested_layers(config["config"])
                     if str(c.get("registered_name", "")).startswith("keras_dae>"))
        layer["class_name"], layer["registered_name"] = "NoSuchLayer", "keras_dae>NoSuchLayer"
        (directory / "config.json").write_text(json.dumps(config))
    elif broken == "function_from_os":  # a layer's activation naming os.system
        dense = next(c for c in _nested_layers(config["config"])
                     if c["class_name"] == "Dense")
        dense["config"]["activation"] = {"module": "os", "class_name": "function",
                                         "config": "system", "registered_name": "system"}
        (directory / "config.json").write_text(json.dumps(config))
    elif broken == "pickle_weights":  # a pickle where the weights should be, no checksum
        weights.write_bytes(pickle.dumps(_RunsCode(marker)))
        (directory / "metadata.json").unlink()
    with pytest.raises(PresetError, match=re.escape(str(directory))) as error:
        zoo.load(directory)
    assert "\n" not in str(error.value)
    assert not marker.exists()
    if broken.startswith("corrupted_weights") and broken != "corrupted_weights_no_checksum":
        assert "corrupted or modified" in str(error.value)


def test_lambda_in_config_is_not_executed(tmp_path):
    """A Lambda smuggled into a preset is refused by Keras' safe mode, never run."""
    directory = zoo.save(zoo.load("diverse_tiny", weights=None), tmp_path / "p")
    config = json.loads((directory / "config.json").read_text())
    marker = tmp_path / "pwned"
    lam = keras.layers.Lambda(lambda x: x)
    lam_config = keras.saving.serialize_keras_object(lam)
    lam_config["config"]["function"]["config"]["code"] = (
        f"open({str(marker)!r}, 'w').write('x')")
    config["config"]["featurizer"]["config"]["streams"]["pitch"].append(lam_config)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(PresetError):
        zoo.load(directory)
    assert not marker.exists()


def test_fsd50k_preset_carries_fsd50k_vocabulary():
    model = zoo.load("diverse_fsd50k", weights=None)
    assert model.class_names[0] == "Accelerating_and_revving_and_vroom"
    assert model.class_names[158] == "Speech" and model.class_mids[158] == "/m/09x0r"
    assert model.class_names[-1] == "Zipper_(clothing)" and model.class_mids[-1] == "/m/01s0vc"
    assert model.class_names == sorted(model.class_names)
    assert len(set(model.class_names)) == 200 and len(set(model.class_mids)) == 200
    assert all(re.fullmatch(r"/[mt]/[0-9a-z_]+", mid) for mid in model.class_mids)
    # Fine-tuning replaces the vocabulary.
    tuned = zoo.load("diverse_fsd50k", weights=None, labels=["dog", "cat"])
    assert tuned.class_names == ["dog", "cat"] and tuned.class_mids == ["", ""]



def test_the_no_network_guard_sees_connections(no_network):
    """The guard every zoo test runs under does catch a connection and a name lookup."""
    import socket

    from conftest import NetworkAttempt

    with pytest.raises(NetworkAttempt):
        socket.create_connection(("example.org", 80), timeout=1)
    with pytest.raises(NetworkAttempt):
        socket.getaddrinfo("example.org", 80)
    with pytest.raises(NetworkAttempt):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    assert len(no_network) == 3
    no_network.clear()  # expected here; any attempt elsewhere fails its test
    left, right = socket.socketpair()  # local sockets stay allowed
    left.close()
    right.close()
