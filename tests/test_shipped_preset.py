"""The pretrained preset that ships in the package: offline, small, labelled, and it works."""

import json

import numpy as np
import pytest
from conftest import load_recording

from keras_dae import zoo
from keras_dae.data import chunk_waveform
from keras_dae.zoo.presets import shipped_preset_dir

NAME = "diverse_sampled15"


@pytest.fixture(scope="module")
def model():
    return zoo.load(NAME)


@pytest.fixture(autouse=True)
def _empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DAE_HOME", str(tmp_path / "empty_home"))


def test_ships_in_the_package_and_is_small():
    directory = shipped_preset_dir(NAME)
    for name in ("config.json", "model.weights.h5", "metadata.json", "labels.csv"):
        assert (directory / name).is_file(), name
    assert (directory / "model.weights.h5").stat().st_size <= 20 * 2**20
    meta = json.loads((directory / "metadata.json").read_text())
    assert meta["train_command"] == "bash scripts/train_shipped_preset.sh"
    # The recorded eval mAP is the one README quotes; well above chance (~0.1).
    assert meta["metrics"]["eval"]["mAP"] > 0.4 and meta["metrics"]["eval"]["n_clips"] == 300
    assert set(meta["metrics"]["eval"]["streams"]) == {"pitch", "timbre", "neuralogram",
                                                       "end_to_end"}


def test_loads_offline_with_its_labels(model):
    assert NAME in zoo.list_presets()
    assert model.num_classes == 15 and len(model.class_names) == 15
    assert "Speech" in model.class_names and "Piano" in model.class_names
    assert model.class_mids[model.class_names.index("Speech")] == "/m/09x0r"


def test_a_local_preset_of_the_same_name_takes_precedence(model, tmp_path, monkeypatch):
    home = tmp_path / "home"
    zoo.save(zoo.load("diverse_tiny", weights=None, num_classes=15), home / "presets" / NAME)
    monkeypatch.setenv("KERAS_DAE_HOME", str(home))
    assert zoo.load(NAME).count_params() < model.count_params()


@pytest.mark.one_backend
def test_tags_a_real_recording_of_speech(model):
    chunks = chunk_waveform(load_recording("speech_front_center.wav"), 16000, 1.0, 0.5)
    scores = model.predict(chunks, verbose=0)["fused"].mean(axis=0)
    assert model.class_names[int(np.argmax(scores))] == "Speech"
    assert scores[model.class_names.index("Speech")] > 0.5


@pytest.mark.one_backend
def test_explanations_split_the_fused_logit_exactly_over_the_streams(model):
    """Each label's stream contributions plus the bias are the mean of the chunks' fused
    logits (checked against the fused head's own chunk scores); the shares add up; the
    stream heads' scores are the clip's; the text names every stream."""
    from keras_dae.inference import DISAGREEMENT, Tagger

    tagger = Tagger(model, batch_size=8)
    result = tagger.tag(load_recording("speech_front_center.wav"), top_k=4, explain=True)
    assert [e.label for e in result.explanations] == [x.label for x in result.labels]
    assert result.explanations[0].label == "Speech"
    fused = np.clip(result.chunk_scores["fused"].astype(np.float64), 1e-7, 1 - 1e-7)
    chunk_logits = np.log(fused) - np.log1p(-fused)
    for explanation in result.explanations:
        k = model.class_names.index(explanation.label)
        assert set(explanation.contributions) == set(model.stream_names)
        assert explanation.logit == pytest.approx(
            explanation.bias + sum(explanation.contributions.values()), abs=1e-9)
        assert explanation.logit == pytest.approx(chunk_logits[:, k].mean(), abs=1e-4)
        assert sum(abs(v) for v in explanation.shares.values()) == pytest.approx(1.0)
        for name, score in explanation.stream_scores.items():
            assert score == pytest.approx(float(result.scores[name][k]))
        spread = max(explanation.stream_scores.values()) - min(explanation.stream_scores.values())
        assert explanation.disagree == (spread >= DISAGREEMENT)
        text = explanation.to_text()
        assert all(name in text for name in model.stream_names)
    assert tagger.explain(load_recording("speech_front_center.wav"), top_k=2) == \
        result.explanations[:2]
    assert "explanations" in result.to_dict() and "streams alone" in result.to_text()
