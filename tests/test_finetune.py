"""Fine-tuning (`keras-dae finetune`, keras_dae.finetune): new labels on a preset's towers."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import soundfile

from keras_dae import cli, finetune
from keras_dae.audio import load_audio
from keras_dae.data.bundled import demo_clips
from keras_dae.data.datasets import ClipDataset, read_folder_dataset
from keras_dae.models import DiverseClassifier
from keras_dae.train_config import TrainConfig

SR = 16000


def _variables(layer) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in layer.weights]  # not seeds


@pytest.fixture(scope="module")
def my_sounds(tmp_path_factory):
    """One folder per class, as a user has them: 1.5 s crops (with gains) of five real
    recordings, six clips each, no val split."""
    root = tmp_path_factory.mktemp("my_sounds")
    rng = np.random.default_rng(0)
    for path in demo_clips()[:5]:
        audio = load_audio(path, SR)
        folder = root / path.stem.split("_")[0]
        folder.mkdir()
        for i in range(6):
            start = int(rng.integers(0, max(1, len(audio) - 24000)))
            clip = audio[start:start + 24000] * rng.uniform(0.3, 1.0)
            soundfile.write(folder / f"{i}.wav", clip, SR)
    return root


@pytest.mark.one_backend
def test_split_off_holds_out_each_class_and_keeps_sources_together():
    labels = ["a", "b", "rare"]
    rows = [0] * 10 + [1] * 5 + [2] * 2
    targets = np.eye(3, dtype=np.float32)[rows]
    targets[8, 1] = 1.0  # a source of a and b counts as b's (its rarest label)
    groups = [f"{labels[k]}{i // 2}" for i, k in enumerate(rows)]  # two clips per source
    data = ClipDataset([f"{i}.wav" for i in rows], targets, labels, [""] * 3,
                       [str(i) for i in range(len(rows))], groups)
    rest, held, too_few = data.split_off(0.2, seed=0)
    assert too_few == ["rare"] and len(rest) + len(held) == len(data)
    assert set(rest.clip_ids).isdisjoint(held.clip_ids)
    counts = held.label_counts()
    assert 2 <= len(held) <= 4 and counts[0] >= 1 and counts[1] >= 1  # about 20% of each
    assert set(rest.groups).isdisjoint(held.groups)
    assert held.label_counts()[2] == 0  # rare stays whole in training
    again = data.split_off(0.2, seed=0)[1]
    assert again.clip_ids == held.clip_ids  # seeded
    with pytest.raises(ValueError, match="at least 3 clips"):
        data.subset([15, 16]).split_off(0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        data.split_off(1.5)


@pytest.mark.one_backend
def test_probe_from_the_shipped_preset_on_a_folder_per_class(my_sounds, tmp_path, capsys):
    """The probe on the shipped preset's towers: a preset of the user's classes comes out, the
    towers unchanged, validated on clips held out because the data has no val split."""
    out = tmp_path / "run"
    assert cli.main(["finetune", "--from", "diverse_sampled15", "--data", str(my_sounds),
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no val split, so 5 of its 30 training clips are held out" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["finetune_mode"] == "probe" and report["finetuned_from"] == "diverse_sampled15"
    assert set(report["evaluation"]) == {"val"}
    assert report["evaluation"]["val"]["mAP"] > 0.6  # five classes: chance is about 0.2
    assert [h["stage"] for h in report["history"]] == ["probe"] * len(report["history"])
    assert (out / "training_curves.png").is_file()

    model = DiverseClassifier.from_preset(out)
    assert model.class_names == sorted(p.name for p in my_sounds.iterdir())
    shipped = DiverseClassifier.from_preset("diverse_sampled15")
    for name in model.stream_names:
        for a, b in zip(_variables(model.backbone.towers[name]),
                        _variables(shipped.backbone.towers[name]), strict=True):
            np.testing.assert_array_equal(a, b)
    # A finished run is not trained again by accident.
    assert cli.main(["finetune", "--from", "diverse_sampled15", "--data", str(my_sounds),
                     "--out", str(out)]) == 2
    assert "holds a run" in capsys.readouterr().err


@pytest.mark.one_backend
def test_embeddings_are_computed_once(my_sounds, tmp_path):
    """The probe's cache is read back while the clips and the model are the same, even when
    the audio is gone; another model (key) computes them again."""
    model = DiverseClassifier.from_preset("diverse_sampled15")
    data = read_folder_dataset(my_sounds).subset([0, 6])
    copy = tmp_path / "clips"
    copy.mkdir()
    for path in data.paths:
        (copy / f"{path.parent.name}.wav").write_bytes(path.read_bytes())
    data = ClipDataset(sorted(copy.iterdir()), data.targets, data.labels, data.mids,
                       data.clip_ids)
    cache, config = tmp_path / "train.npz", TrainConfig(batch_size=8)
    first, clips = finetune.chunk_embeddings(model, data, config, cache, {"source": "x"})
    assert first.shape == (len(clips), 4 * 64) and set(clips.tolist()) == {0, 1}
    for path in data.paths:
        path.unlink()
    again, _ = finetune.chunk_embeddings(model, data, config, cache, {"source": "x"})
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match="no clip of the 2 could be decoded"):
        finetune.chunk_embeddings(model, data, config, cache, {"source": "another"})


@pytest.mark.one_backend
@pytest.mark.parametrize("mode", ["heads", "full"])
def test_heads_train_the_heads_and_full_everything(mode, my_sounds, tiny_preset, tmp_path):
    """heads: the front ends, towers and their normalisation stay the preset's; full: the
    joint stage moves the towers too."""
    start = DiverseClassifier.from_preset(tiny_preset)
    config = TrainConfig(tower_epochs=1, fusion_epochs=1, batch_size=8)
    report = finetune.finetune_run(tiny_preset, my_sounds, tmp_path / mode, mode,
                                   config=dataclasses.replace(config, joint_epochs=1)
                                   if mode == "full" else config, say=lambda line: None)
    # epoch -1: a later stage's start, scored before its first epoch
    assert [(h["stage"], h["epoch"]) for h in report["history"]] == (
        [("towers", 0), ("fusion", -1), ("fusion", 0)]
        + ([("joint", -1), ("joint", 0)] if mode == "full" else []))
    tuned = DiverseClassifier.from_preset(tmp_path / mode / "preset")
    same = [np.array_equal(a, b) for name in start.stream_names
            for a, b in zip(_variables(tuned.backbone.towers[name]),
                            _variables(start.backbone.towers[name]), strict=True)]
    assert all(same) if mode == "heads" else not all(same)
    kernel = keras.ops.convert_to_numpy(tuned.fusion_head.kernel)
    assert kernel.shape == (4 * 16, 5) and np.isfinite(kernel).all()


@pytest.mark.one_backend
def test_refusals(my_sounds, tmp_path, capsys):
    base = ["finetune", "--from", "diverse_sampled15", "--data", str(my_sounds)]
    assert cli.main([*base, "--out", str(tmp_path / "a"), "--joint-epochs", "2"]) == 2
    assert "that is --mode full" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "a"), "--mode", "full",
                     "--joint-epochs", "0"]) == 2
    assert "which is --mode heads" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--feature-cache"]) == 2
    assert "--feature-cache is for" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        cli.main([*base, "--out", str(tmp_path / "c"), "--val-fraction", "1"])
    assert "--val-fraction: must be a number between 0 and 1" in capsys.readouterr().err
    assert cli.main(["finetune", "--from", "diverse_sampled15", "--data",
                     str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.one_backend
def test_probe_skips_and_reports_files_that_cannot_be_read(my_sounds, tiny_preset, tmp_path):
    """A truncated and an empty file among the clips: reported and skipped, the run goes on."""
    import shutil

    data = tmp_path / "sounds"
    shutil.copytree(my_sounds, data)
    first = sorted(data.iterdir())[0]
    (first / "empty.wav").write_bytes(b"")
    (first / "truncated.wav").write_bytes((first / "0.wav").read_bytes()[:30])
    lines = []
    report = finetune.finetune_run(tiny_preset, data, tmp_path / "run", say=lines.append)
    assert report["evaluation"]["val"]["n_clips"] >= 1
    said = "\n".join(lines)
    assert "skipped 2 of 32 files" in said, said
