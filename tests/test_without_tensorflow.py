"""The JAX and PyTorch paths need no TensorFlow.

CI runs the suite a second time in a virtualenv made with `pip install -e ".[jax,torch,shards,test]"`
and KERAS_DAE_EXPECT_NO_TENSORFLOW=1, where these tests check that TensorFlow is really absent
and that the layers, the model and the zoo run without it.
"""

import importlib.util
import os
import sys

import numpy as np
import pytest

EXPECT_NO_TF = os.environ.get("KERAS_DAE_EXPECT_NO_TENSORFLOW") == "1"
pytestmark = pytest.mark.skipif(
    not EXPECT_NO_TF, reason="only meaningful in the TensorFlow-free CI environment"
)


def test_tensorflow_is_not_installed():
    assert importlib.util.find_spec("tensorflow") is None


def test_everything_runs_without_tensorflow(tmp_path):
    from keras_dae import zoo

    model = zoo.load("diverse_tiny", weights=None)
    out = model.predict(np.zeros((1, 16000), "float32"), verbose=0)
    assert out["fused"].shape == (1, 10)
    zoo.save(model, tmp_path / "p")
    zoo.load(tmp_path / "p")
    assert "tensorflow" not in sys.modules


def test_tflite_runner_without_tensorflow():
    """tflite/classify.py with LiteRT alone, on a model exported in CI's TensorFlow stage
    (KERAS_DAE_TFLITE_MODEL)."""
    import subprocess
    from pathlib import Path

    model = os.environ.get("KERAS_DAE_TFLITE_MODEL")
    if not model:
        pytest.skip("KERAS_DAE_TFLITE_MODEL is not set (.ci/run sets it)")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "tflite" / "classify.py"), model,
                           str(repo / "tests" / "data" / "speech_front_center.wav")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("clip: ")


def test_train_evaluate_predict_and_embed_without_tensorflow(tmp_path, capsys):
    """The whole command line on a TensorFlow-free install: shard, train (tiny, a few steps,
    from the files, and on PyTorch from the shards too), evaluate, predict and embed."""
    import json

    import keras
    from fsd50k_fixture import write_small_fsd50k

    from keras_dae.cli import main as cli_main

    data = write_small_fsd50k(tmp_path / "data", per_class=(2, 1, 1))
    run = tmp_path / "run"
    common = ["--preset", "diverse_tiny", "--epochs", "1", "--fusion-epochs", "1", "--joint-epochs", "0",
              "--batch-size", "8"]
    assert cli_main(["train", "--data", str(data), "--out", str(run), *common]) == 0
    assert (run / "preset" / "model.weights.h5").is_file()
    assert (run / "logs" / "towers.csv").is_file()  # the CSV log, not TensorBoard
    if importlib.util.find_spec("grain"):
        shards = tmp_path / "shards"
        assert cli_main(["shard", "--data", str(data), "--out", str(shards)]) == 0
        # The shard reader hands the same numpy batches to every backend: trained from once,
        # on PyTorch (a second training on JAX would only compile the same step again).
        if keras.backend.backend() == "torch":
            assert cli_main(["train", "--data", str(data), "--shards", str(shards),
                             "--out", str(tmp_path / "run_shards"), *common]) == 0
    report = tmp_path / "eval.json"
    assert cli_main(["evaluate", "--model", str(run), "--data", str(data),
                     "--json", str(report)]) == 0
    assert json.loads(report.read_text())["n_clips"] == 4
    capsys.readouterr()
    audio = data / "FSD50K.eval_audio"
    assert cli_main(["predict", str(audio), "--model", str(run), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and all(line["labels"] for line in lines)
    out = tmp_path / "embeddings.npz"
    assert cli_main(["embed", str(audio), "--model", str(run), "--out", str(out)]) == 0
    assert np.load(out)["fused"].shape == (4, 4 * 16)
    assert "tensorflow" not in sys.modules
