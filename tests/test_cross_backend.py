"""Every front end gives the same numbers on TensorFlow, JAX and PyTorch.

The other installed backends run `backend_outputs.py` in subprocesses (Keras fixes its backend
at import). Tolerance: 1e-4 of each output's largest magnitude, elementwise (the guide's
"1e-4 relative"). `.keras` files saved on each backend are also reloaded here, in safe mode,
and must reproduce this backend's outputs to the same tolerance.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from backend_outputs import CASES, TINY_CLASSES, TINY_MIDS, build_case, shipped_preset_outputs

# Runs every backend itself, in subprocesses: tests/run.sh runs it once.
pytestmark = pytest.mark.one_backend

HERE = Path(__file__).parent
BACKENDS = ("tensorflow", "jax", "torch")
CURRENT = keras.backend.backend()
OTHERS = [b for b in BACKENDS if b != CURRENT and importlib.util.find_spec(b) is not None]


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


@pytest.fixture(scope="module")
def other_backend_dirs(tmp_path_factory):
    """Each other backend's outputs, computed in subprocesses that run side by side (their
    messages go to a file each, so that neither waits on a full pipe)."""
    dirs = {backend: tmp_path_factory.mktemp(backend) for backend in OTHERS}
    processes = {}
    for backend, out in dirs.items():
        with open(out / "log.txt", "w") as log:
            processes[backend] = subprocess.Popen(
                [sys.executable, str(HERE / "backend_outputs.py"), str(out)],
                env=dict(os.environ, KERAS_BACKEND=backend), stdout=log,
                stderr=subprocess.STDOUT)
    try:
        for backend, process in processes.items():
            process.wait(timeout=600)
            log = (dirs[backend] / "log.txt").read_text()
            assert process.returncode == 0, f"{backend} failed:\n{log[-3000:]}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return dirs


@pytest.fixture(scope="module")
def current_outputs():
    return {
        name: keras.ops.convert_to_numpy(layer(waveform))
        for name, (layer, waveform) in (
            (name, build_case(name)) for name in CASES
        )
    }


def test_required_backends_are_installed():
    """tests/run.sh requires all three backends (KERAS_DAE_REQUIRE_BACKENDS); this fails if
    one went missing, rather than silently comparing fewer."""
    required = os.environ.get("KERAS_DAE_REQUIRE_BACKENDS", ",".join(BACKENDS)).split(",")
    missing = [b for b in required if b != CURRENT and b not in OTHERS]
    assert not missing, f"required backends not importable: {missing}"


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("case", CASES)
def test_same_output_on_every_backend(case, backend, other_backend_dirs, current_outputs):
    theirs = np.load(other_backend_dirs[backend] / "outputs.npz")[case]
    _close(current_outputs[case], theirs)


@pytest.mark.parametrize("backend", OTHERS)
def test_keras_file_saved_on_another_backend_reloads_here(backend, other_backend_dirs, current_outputs):
    model = keras.saving.load_model(other_backend_dirs[backend] / "frontends.keras", safe_mode=True)
    _, waveform = build_case("log_mel")  # the input every case but "pitch" uses
    outputs = model(waveform)
    for case in CASES:
        if case != "pitch":  # pitch's case runs on tones; its parity is checked above
            _close(keras.ops.convert_to_numpy(outputs[case]), current_outputs[case])


@pytest.mark.parametrize("backend", OTHERS)
def test_preset_saved_on_another_backend_loads_here(backend, other_backend_dirs):
    """A preset, and the same model as a `.keras` file, saved there load here with the same
    outputs and class names: every ordered pair of backends is covered because the suite
    runs on each backend."""
    from keras_dae import zoo

    expected = np.load(other_backend_dirs[backend] / "preset_outputs.npz")
    _, waveform = build_case("log_mel")
    for model in (zoo.load(other_backend_dirs[backend] / "preset"),
                  keras.saving.load_model(other_backend_dirs[backend] / "classifier.keras",
                                          safe_mode=True)):
        assert (model.class_names, model.class_mids) == (TINY_CLASSES, TINY_MIDS)
        got = model.predict(waveform, verbose=0)
        for key in ("fused", "embedding", "pitch", "timbre", "neuralogram", "end_to_end"):
            _close(got[key], expected[key])


@pytest.fixture(scope="module")
def shipped_outputs():
    return shipped_preset_outputs()


@pytest.mark.parametrize("backend", OTHERS)
def test_shipped_preset_scores_the_same_on_every_backend(backend, other_backend_dirs,
                                                        shipped_outputs):
    """The pretrained `diverse_sampled15` gives this backend's numbers on the others."""
    expected = np.load(other_backend_dirs[backend] / "shipped_outputs.npz")
    got = shipped_outputs
    for key in ("fused", "embedding", "pitch", "timbre", "neuralogram", "end_to_end"):
        _close(got[key], expected[key])
