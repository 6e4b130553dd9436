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
