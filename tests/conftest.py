"""Shared fixtures: test signals at 16 kHz, synthetic and real."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.signal
import soundfile

DATA_DIR = Path(__file__).parent / "data"
SR = 16000


def load_recording(name: str, sr: int = SR) -> np.ndarray:
    """Decodes a file of tests/data, downmixes it to mono and resamples it (polyphase) to sr."""
    audio, file_sr = soundfile.read(DATA_DIR / name, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    g = np.gcd(file_sr, sr)
    return scipy.signal.resample_poly(audio, sr // g, file_sr // g).astype(np.float32)


def harmonic_tone(f0=220.0, seconds=1.0, sr=SR, n_harmonics=6) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, n_harmonics + 1))
    return (0.3 * y).astype(np.float32)


def chirp(f_start=60.0, f_end=4000.0, seconds=1.0, sr=SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * scipy.signal.chirp(t, f_start, seconds, f_end, method="logarithmic")).astype(
        np.float32
    )


def white_noise(seconds=1.0, sr=SR, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32)


def silence(seconds=1.0, sr=SR) -> np.ndarray:
    return np.zeros(int(seconds * sr), np.float32)


SIGNALS = {
    "tone": harmonic_tone,
    "chirp": chirp,
    "noise": white_noise,
    "silence": silence,
    "speech": lambda: load_recording("speech_front_center.wav"),
    "shutter": lambda: load_recording("camera_shutter.oga"),
}


@pytest.fixture(scope="session")
def signals() -> dict[str, np.ndarray]:
    """Name -> mono float32 waveform at 16 kHz: synthetic signals and real recordings."""
    return {name: make() for name, make in SIGNALS.items()}


@pytest.fixture(scope="session")
def backend() -> str:
    return keras.backend.backend()


@pytest.fixture(autouse=True)
def _float32_policy():
    """Tests that change the global dtype policy cannot leak it into the next test."""
    yield
    keras.config.set_dtype_policy("float32")


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')})"


TINY_LABELS = ["Speech", "Dog", "Bird", "Guitar", "Drum_kit", "Piano", "Telephone", "Camera",
               "Tone", "Noise"]


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory) -> Path:
    """A preset directory of `diverse_tiny` with random weights and 10 named classes: enough
    for the plumbing of predict/embed/demo/HEAR, which must work with any preset."""
    from keras_dae import zoo

    directory = tmp_path_factory.mktemp("tiny_preset")
    keras.utils.set_random_seed(0)
    model = zoo.load("diverse_tiny", weights=None)
    mids = ["/m/09x0r"] + [""] * 9
    return zoo.save(model, directory, labels=TINY_LABELS, mids=mids)


def assert_same_variables(copy, model):
    """`copy`, derived from `model` (`keras_dae.models.derived_model`), has every variable
    equal, and each tower's normalisation computes with the same statistics (its mean and
    variance are constants derived when its variables load)."""
    assert len(copy.weights) == len(model.weights)
    for got, want in zip(copy.weights, model.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got),
                                      keras.ops.convert_to_numpy(want), err_msg=want.path)
    for stream, tower in model.backbone.towers.items():
        for statistic in ("mean", "variance"):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(getattr(copy.backbone.towers[stream].normalization,
                                                   statistic)),
                keras.ops.convert_to_numpy(getattr(tower.normalization, statistic)))


@pytest.fixture(autouse=True)
def _sys_path_left_as_found():
    """Every test leaves the repository's folders on `sys.path` as it found them (a test that
    needs one for an import puts it there and takes it off again). Entries outside the
    repository, or inside the running virtualenv, are not compared: libraries add their own on
    first use (setuptools' vendored packages, for one)."""
    import sys

    repository = str(Path(__file__).resolve().parents[1])

    def ours():  # a virtualenv inside the repository (CI's .venv) is not ours
        return [p for p in sys.path
                if str(p).startswith(repository) and not str(p).startswith(sys.prefix)]

    before = ours()
    yield
    assert ours() == before, f"the test changed sys.path: {ours()} (was {before})"


# ---------------------------------------------------------------------------------------------
# No network: loading, predicting, training and evaluating must never open a network socket.


class NetworkAttempt(AssertionError):
    """Raised inside the code under test when it tries to reach the network."""


@pytest.fixture
def no_network(monkeypatch):
    """Fails the test if the code opens an internet socket or resolves a name.

    Patches `socket.socket` creation for AF_INET/AF_INET6, `socket.socket.connect` /
    `connect_ex`, `socket.create_connection` and `socket.getaddrinfo` /
    `gethostbyname`: each attempt raises `NetworkAttempt` where it happens and is recorded,
    and the test fails at teardown even if the code swallowed the exception. Local (AF_UNIX)
    sockets stay allowed. Covers Python code only: a C++ library opening a socket directly
    would not be seen. Usage: `@pytest.mark.usefixtures("no_network")` or a fixture argument.
    """
    import socket

    attempts = []

    def refuse(what):
        attempts.append(what)
        raise NetworkAttempt(f"network access attempted: {what}")

    real_init = socket.socket.__init__

    def guarded_init(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and family in (socket.AF_INET, socket.AF_INET6, -1):
            refuse(f"socket.socket(family={family})")
        real_init(self, family, type, proto, fileno)

    def guarded_connect(self, address):
        if self.family != socket.AF_UNIX:
            refuse(f"connect({address!r})")
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        if self.family != socket.AF_UNIX:
            refuse(f"connect_ex({address!r})")
        return real_connect_ex(self, address)

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    monkeypatch.setattr(socket.socket, "__init__", guarded_init)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "create_connection",
                        lambda address, *a, **k: refuse(f"create_connection({address!r})"))
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *a, **k: refuse(f"getaddrinfo({host!r})"))
    monkeypatch.setattr(socket, "gethostbyname",
                        lambda host: refuse(f"gethostbyname({host!r})"))
    yield attempts
    assert not attempts, f"the code tried to use the network: {attempts}"


def pytest_addoption(parser):
    parser.addoption(
        "--one-backend-run", action="store_true",
        help="run each test marked one_backend only under the backend it names "
             "(`one_backend(\"tensorflow\")`; default PyTorch): tests/run.sh passes it to each "
             "backend's run")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--one-backend-run"):
        return
    here = keras.backend.backend()

    def elsewhere(item):
        marker = item.get_closest_marker("one_backend")
        return marker is not None and (marker.args[0] if marker.args else "torch") != here

    dropped = [item for item in items if elsewhere(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not elsewhere(item)]
