"""The JAX and PyTorch paths need no TensorFlow.

CI runs the suite a second time in a virtualenv made with `pip install -e ".[jax,torch,test]"`
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
