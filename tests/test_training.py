"""End to end on each backend: train the tiny model on FSD50K-layout real audio, evaluate,
interrupt and resume, and the `keras-dae train` / `evaluate` commands."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from fsd50k_fixture import write_small_fsd50k

from keras_dae import training
from keras_dae.cli import main as cli_main
from keras_dae.data import read_fsd50k
from keras_dae.models import build_diverse_classifier
from keras_dae.zoo import PRESETS

TINY = PRESETS["diverse_tiny"]["tower"]
FAST = dict(tower_epochs=2, fusion_epochs=1, batch_size=8, patience=5,
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


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated crash after the first tower epoch")


def test_interrupted_run_resumes_where_it_stopped(data_dir, tmp_path):
    """A run stopped after tower epoch 1 resumes at epoch 2 and ends like an unbroken run."""
    unbroken = _trainer(data_dir, tmp_path / "unbroken")
    unbroken.run()
    crashing = _trainer(data_dir, tmp_path / "resumed")
    original = crashing._callbacks
    crashing._callbacks = lambda stage, loader: [*original(stage, loader), _Crash()]
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["stage"] == "towers" and state["epoch"] == 0
    resumed = _trainer(data_dir, tmp_path / "resumed")
    resumed.run(resume=True)
    epochs = [(h["stage"], h["epoch"]) for h in resumed.state["history"]]
    assert epochs == [("towers", 0), ("towers", 1), ("fusion", 0)]
    # Same seed, same batch order per epoch, optimizer state restored: the same run.
    for a, b in zip(unbroken.state["history"], resumed.state["history"], strict=True):
        np.testing.assert_allclose(a["val_map"], b["val_map"], atol=1e-3)
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3)


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


@pytest.mark.slow
def test_sigkill_mid_training_then_resume(data_dir, tmp_path):
    """SIGKILL the `train` command once a checkpoint exists; `--resume` then completes."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "keras_dae.cli", "train", "--data", str(data_dir),
            "--out", str(run_dir), "--preset", "diverse_tiny", "--epochs", "6",
            "--fusion-epochs", "2", "--batch-size", "8"]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())
    done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads(state.read_text())
    assert final["stage"] == "done"
    epochs = [(h["stage"], h["epoch"]) for h in final["history"]]
    assert len(epochs) == len(set(epochs)), "an epoch was trained twice"
    assert epochs[: len(killed_at["history"])] == [
        (h["stage"], h["epoch"]) for h in killed_at["history"]]
