"""End to end on each backend: train the tiny model on FSD50K-layout real audio, evaluate,
kill and resume (slow), and the `keras-dae train` / `evaluate` commands; checkpoints stay
consistent whatever fails, and training refuses to start where it could not finish."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from fsd50k_fixture import write_small_fsd50k

from keras_dae import training
from keras_dae.cli import main as cli_main
from keras_dae.data import read_fsd50k
from keras_dae.models import build_diverse_classifier
from keras_dae.train_config import JOINT_EPOCHS
from keras_dae.zoo import PRESETS

TINY = PRESETS["diverse_tiny"]["tower"]
FAST = dict(tower_epochs=2, fusion_epochs=1, joint_epochs=0, batch_size=8, patience=5,
            normalization_chunks=32, seed=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_small_fsd50k(tmp_path_factory.mktemp("fsd50k"))


def _trainer(data_dir, run_dir, **overrides):
    train, val = read_fsd50k(data_dir, "train"), read_fsd50k(data_dir, "val")
    keras.utils.set_random_seed(0)
    model = build_diverse_classifier(len(train.labels), tower=TINY)
    config = training.TrainConfig(**{**FAST, **overrides})
    return training.Trainer(model, train, val, run_dir, config, verbose=0)


@pytest.mark.one_backend
@pytest.mark.usefixtures("no_network")
def test_train_and_evaluate_commands(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli_main(["train", "--data", str(data_dir), "--out", str(run_dir), "--preset",
                     "diverse_tiny", "--epochs", "4", "--fusion-epochs", "3",
                     "--batch-size", "8"])
    assert code == 0
    for name in ("report.json", "training_curves.png", "ap_per_class.png",
                 "streams_vs_fused.png", "preset/config.json", "preset/model.weights.h5",
                 "preset/labels.csv", "preset/metadata.json", "logs/towers.csv"):
        assert (run_dir / name).is_file(), name
    metadata = json.loads((run_dir / "preset" / "metadata.json").read_text())
    assert metadata["metrics"]["eval"]["n_clips"] == 8
    # no --joint-epochs: the recipe's joint stage, its start (the fusion stage's choice) scored
    run = json.loads((run_dir / "report.json").read_text())
    assert run["config"]["joint_epochs"] == JOINT_EPOCHS
    joint = [h["epoch"] for h in run["history"] if h["stage"] == "joint"]
    assert joint[0] == -1 and joint[1:] == list(range(len(joint) - 1))
    assert 1 <= len(joint) - 1 <= JOINT_EPOCHS  # fewer when early stopping ends it
    out_json = tmp_path / "eval.json"
    assert cli_main(["evaluate", "--model", str(run_dir), "--data", str(data_dir),
                     "--split", "eval", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert {"mAP", "d_prime", "lwlrap", "per_class_ap", "streams", "n_clips"} <= set(report)
    assert report["n_clips"] == 8
    assert set(report["streams"]) == {"pitch", "timbre", "neuralogram", "end_to_end"}
    assert set(report["per_class_ap"]) == {"Speech", "Camera", "Telephone", "Tone"}
    # Four easy classes of real sounds: the tiny model learns them (chance mAP is ~0.3).
    assert report["mAP"] > 0.8, report["mAP"]
    assert "eval: 8 clips" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Checkpoints: consistent whatever fails


def _checkpointed_trainer(data_dir, run_dir):
    """A trainer with a compiled model and one checkpoint written (no training)."""
    trainer = _trainer(data_dir, run_dir)
    trainer.preflight()
    trainer._compile("towers")
    trainer.model.optimizer.build(trainer.model.trainable_variables)
    trainer.state["epoch"] = 0
    trainer._save_checkpoint()
    return trainer


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _checkpoint_files(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoint").iterdir())


@pytest.mark.parametrize("failing", ["weights", "variables", "state"])
def test_a_checkpoint_write_failing_midway_leaves_the_previous_one(failing, data_dir, tmp_path,
                                                                  monkeypatch):
    """Disk full in the middle of a file (half of it written, then ENOSPC): the previous
    checkpoint stays complete and loadable, no temporary file is left, and the error names
    the file and the cause."""
    run_dir = tmp_path / "run"
    trainer = _checkpointed_trainer(data_dir, run_dir)
    saved_weights = _weights(trainer.model)
    state_before = (run_dir / "checkpoint" / "state.json").read_text()
    files_before = _checkpoint_files(run_dir)

    def half_then_full(write):
        def broken(path, *args, **kwargs):
            write(path, *args, **kwargs)
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return broken

    if failing == "weights":
        def weights(model, path):
            return training.atomic_write(path, half_then_full(model.save_weights))

        monkeypatch.setattr(training, "_atomic_save_weights", weights)
    elif failing == "variables":
        monkeypatch.setattr(training.np, "savez", half_then_full(np.savez))
    else:
        def text(path, content):
            return training.atomic_write(path, half_then_full(
                lambda tmp: open(tmp, "w").write(content)))

        monkeypatch.setattr(training, "_atomic_write_text", text)
    for w in trainer.model.trainable_weights:  # the next epoch's weights differ
        w.assign(w + 1.0)
    trainer.state["epoch"] = 1
    with pytest.raises(training.CheckpointError) as error:
        trainer._save_checkpoint()
    message = str(error.value)
    assert "No space left on device" in message and "previous version is intact" in message
    assert str(run_dir / "checkpoint") in message
    monkeypatch.undo()
    assert (run_dir / "checkpoint" / "state.json").read_text() == state_before
    assert not [n for n in _checkpoint_files(run_dir) if n.startswith(".tmp")]
    resumed = _trainer(data_dir, run_dir)
    assert resumed._restore_checkpoint()
    assert resumed.state["epoch"] == 0
    for got, expected in zip(_weights(resumed.model), saved_weights, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert _checkpoint_files(run_dir) == files_before  # files of the failed one removed


def test_killed_between_files_and_commit_resumes_the_previous_checkpoint(data_dir, tmp_path,
                                                                        monkeypatch):
    """A run killed after writing a checkpoint's weights but before state.json (the commit)
    resumes from the previous checkpoint, whose files are all still there; the orphans go."""
    run_dir = tmp_path / "run"
    trainer = _checkpointed_trainer(data_dir, run_dir)
    saved_weights = _weights(trainer.model)

    class Killed(BaseException):
        pass

    def killed(path, text):
        raise Killed

    monkeypatch.setattr(training, "_atomic_write_text", killed)
    for w in trainer.model.trainable_weights:
        w.assign(w * 2.0)
    with pytest.raises(Killed):
        trainer._save_checkpoint()
    monkeypatch.undo()
    assert len([n for n in _checkpoint_files(run_dir) if n.startswith("model-")]) == 2
    resumed = _trainer(data_dir, run_dir)
    assert resumed._restore_checkpoint()
    for got, expected in zip(_weights(resumed.model), saved_weights, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert _checkpoint_files(run_dir) == ["model-000001.weights.h5", "state.json",
                                          "variables-000001.npz"]


@pytest.mark.one_backend
def test_a_run_of_no_epochs_adapts_the_normalisation_and_finishes(data_dir, tmp_path):
    """Random towers with their feature normalisation adapted (a reference to compare a
    pretrained model with): nothing compiled, nothing trained, the checkpoint says done."""
    trainer = _trainer(data_dir, tmp_path / "run", tower_epochs=0, fusion_epochs=0)
    before = [keras.ops.convert_to_numpy(w) for w in trainer.model.trainable_weights]
    state = trainer.run()
    assert state["stage"] == "done" and state["normalized"] and state["history"] == []
    after = [keras.ops.convert_to_numpy(w) for w in trainer.model.trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    norm = trainer.model.backbone.towers["pitch"].normalization
    assert not np.allclose(keras.ops.convert_to_numpy(norm.mean), 0.0)
    saved = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert saved["stage"] == "done"


@pytest.mark.one_backend
def test_train_run_builds_the_front_ends_it_is_given_and_saves_them(data_dir, tmp_path):
    """`train_run(streams=...)` trains the preset's towers on other front ends (here an
    end-to-end filterbank of 24 filters beside the default timbre stream), and the run's preset
    reloads with them; a pretrained backbone's front ends cannot be replaced."""
    from keras_dae import layers
    from keras_dae.models import DiverseClassifier
    from keras_dae.models.featurizer import default_stream_frontends
    from keras_dae.train_run import train_run
    from keras_dae.validation import InputError

    streams = {"timbre": default_stream_frontends()["timbre"],
               "end_to_end": [layers.LearnedFilterbank(n_filters=24)]}
    config = training.TrainConfig(**{**FAST, "tower_epochs": 1, "fusion_epochs": 0})
    report = train_run(data_dir, tmp_path / "run", "diverse_tiny", config, streams=streams,
                       say=lambda line: None)
    assert set(report["evaluation"]["eval"]["streams"]) == {"timbre", "end_to_end"}
    model = DiverseClassifier.from_preset(tmp_path / "run")
    assert model.stream_names == ["timbre", "end_to_end"]
    assert model.featurizer.streams["end_to_end"][0].n_filters == 24
    with pytest.raises(InputError, match="pretrained backbone: its front ends come with it"):
        train_run(data_dir, tmp_path / "other", "diverse_pretrained", config, streams=streams,
                  say=lambda line: None)


@pytest.mark.one_backend
@pytest.mark.parametrize("start_wins", [True, False])
def test_the_fusion_stage_keeps_its_start_unless_an_epoch_scores_higher(
        data_dir, tmp_path, monkeypatch, start_wins):
    """The fusion stage scores its start (the mean of the stream heads' logits) on the
    validation data as epoch -1, and keeps it when none of its epochs scores higher; when one
    does, that epoch's head. The scores are set here; everything else is real training."""
    validate = training.Trainer._validate

    def scripted(self, stage):
        score, fields, line = validate(self, stage)
        if stage == "fusion":
            is_start = not any(h["stage"] == "fusion" for h in self.state["history"])
            score = float(is_start == start_wins)
        return score, fields, line

    starts = []

    def init_fusion(model):
        init_fusion_from_streams(model)
        starts.append(keras.ops.convert_to_numpy(model.fusion_head.kernel).copy())

    init_fusion_from_streams = training.init_fusion_from_streams
    monkeypatch.setattr(training.Trainer, "_validate", scripted)
    monkeypatch.setattr(training, "init_fusion_from_streams", init_fusion)
    trainer = _trainer(data_dir, tmp_path / "run", tower_epochs=1, fusion_epochs=2)
    state = trainer.run()
    assert [h["epoch"] for h in state["history"] if h["stage"] == "fusion"] == [-1, 0, 1]
    kernel = keras.ops.convert_to_numpy(trainer.model.fusion_head.kernel)
    assert len(starts) == 1 and np.array_equal(kernel, starts[0]) == start_wins


def test_preflight_refuses_a_full_disk_before_training(data_dir, tmp_path, monkeypatch):
    trainer = _trainer(data_dir, tmp_path / "run")
    need = trainer.checkpoint_bytes()
    weights = training.weight_bytes(trainer.model)
    assert 2 * weights < need <= 9 * weights + trainer.DISK_MARGIN_BYTES
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: usage._replace(free=need - 1))
    with pytest.raises(training.PreflightError, match=r"MiB free on its disk, but the "
                                                      r"checkpoints need about"):
        trainer.run()
    assert not list((tmp_path / "run" / "checkpoint").iterdir())  # nothing written
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=need))
    trainer.preflight()


def test_preflight_refuses_an_unwritable_run_directory(data_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(training.PreflightError, match="cannot create the run directory"):
        _trainer(data_dir, tmp_path / "file" / "run").run()
    if os.geteuid() == 0:
        return  # root writes into a read-only directory anyway; the case above covers it
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(training.PreflightError, match="cannot"):
            _trainer(data_dir, locked / "run").run()
    finally:
        locked.chmod(0o700)


def test_preflight_refuses_a_split_without_readable_audio(data_dir, tmp_path):
    trainer = _trainer(data_dir, tmp_path / "run")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    trainer.val = trainer.val.subset([0])
    trainer.val.paths = [empty]
    with pytest.raises(training.PreflightError,
                       match="none of the 1 validation files is readable audio "
                             r"\(skipped 1 of 1 files: 1 empty file\)"):
        trainer.run()


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-epoch (slow)


def _train_args(data_dir, run_dir):
    return [sys.executable, "-m", "keras_dae.cli", "train", "--data", str(data_dir),
            "--out", str(run_dir), "--preset", "diverse_tiny", "--epochs", "4",
            "--fusion-epochs", "2", "--joint-epochs", "1", "--batch-size", "8", "--patience",
            "10"]


# `keras-dae train` with one callback more in the towers stage: it SIGKILLs its own process
# halfway through tower epoch 3 (index 2). The kill is the real thing (no handler runs, no
# file is closed), but it lands at the same batch however fast the machine is; a kill timed
# from outside once landed after the towers stage had ended.
_KILL_MID_EPOCH = """
import os, signal, sys
import keras
from keras_dae import cli, training

class KillMidEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch + 1 == max(1, (self.params.get("steps") or 2) // 2):
            os.kill(os.getpid(), signal.SIGKILL)

callbacks = training.Trainer._callbacks
training.Trainer._callbacks = lambda self, stage, loader: callbacks(self, stage, loader) + (
    [KillMidEpoch()] if stage == "towers" else [])
sys.exit(cli.main(sys.argv[1:]))
"""


# What a resumed run must reproduce, and how closely: the same seed and batch order, the
# optimizer's and the dropout generators' state restored, so only floating-point reduction
# order can differ (multi-threaded CPU kernels).
RESUME_TOLERANCE = {"val_map": 1e-3, "loss_rtol": 1e-3, "final_map": 1e-3}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_unbroken_run(data_dir, tmp_path):
    """SIGKILL `keras-dae train` halfway through tower epoch 3, `--resume` it: every epoch is
    trained once, every checkpoint the kill left was complete, and the history and final
    metrics equal those of an uninterrupted run with the same seed (RESUME_TOLERANCE)."""
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    unbroken_dir, run_dir = tmp_path / "unbroken", tmp_path / "run"
    unbroken = subprocess.Popen(_train_args(data_dir, unbroken_dir), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = subprocess.run([sys.executable, "-c", _KILL_MID_EPOCH,
                             *_train_args(data_dir, run_dir)[3:]],
                            env=env, capture_output=True, text=True, timeout=1800)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run_dir / "report.json").exists()
    killed_at = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert (killed_at["stage"], killed_at["epoch"]) == ("towers", 1), killed_at
    for name in killed_at["files"].values():  # the checkpoint is complete and loadable
        assert (run_dir / "checkpoint" / name).is_file()
    done = subprocess.run([*_train_args(data_dir, run_dir), "--resume"], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert unbroken.wait(timeout=1800) == 0, unbroken.stderr.read()[-3000:]
    resumed = json.loads((run_dir / "report.json").read_text())
    reference = json.loads((unbroken_dir / "report.json").read_text())
    epochs = [(h["stage"], h["epoch"]) for h in resumed["history"]]
    assert epochs == [(h["stage"], h["epoch"]) for h in reference["history"]]
    assert len(epochs) == len(set(epochs)), "an epoch was trained twice"
    worst = {"val_map": 0.0, "loss_rel": 0.0, "final_map": 0.0}
    for a, b in zip(resumed["history"], reference["history"], strict=True):
        assert abs(a["val_map"] - b["val_map"]) <= RESUME_TOLERANCE["val_map"], (a, b)
        worst["val_map"] = max(worst["val_map"], abs(a["val_map"] - b["val_map"]))
        if b["epoch"] < 0:  # a stage's start: scored, not trained
            assert a["loss"] is None and b["loss"] is None, (a, b)
            continue
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=RESUME_TOLERANCE["loss_rtol"])
        worst["loss_rel"] = max(worst["loss_rel"], abs(a["loss"] - b["loss"]) / abs(b["loss"]))
    for split in reference["evaluation"]:
        got, expected = resumed["evaluation"][split], reference["evaluation"][split]
        assert abs(got["mAP"] - expected["mAP"]) <= RESUME_TOLERANCE["final_map"], split
        for stream in expected["streams"]:
            assert abs(got["streams"][stream] - expected["streams"][stream]) <= (
                RESUME_TOLERANCE["final_map"])
        worst["final_map"] = max(worst["final_map"], abs(got["mAP"] - expected["mAP"]))
    print(f"killed after towers epoch {killed_at['epoch']}; resumed vs unbroken, largest "
          f"differences: {worst}")
