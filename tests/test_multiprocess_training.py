"""Multi-process (multi-host) JAX training, on one machine: two processes on localhost, one CPU
device each, train (and pretrain without labels) to the same losses and weights as one process
with two host devices; each reads its own rows of every batch from the shards; only process 0
writes; a killed process ends the other with a clear message, and `--resume` then finishes the
run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fsd50k_fixture import write_small_fsd50k

pytest.importorskip("grain")
pytest.importorskip("array_record")

from keras_dae import scale  # noqa: E402
from keras_dae.data import (  # noqa: E402
    ShardLoader,
    read_fsd50k,
    read_unlabelled,
    write_shards,
)
from keras_dae.train_config import Processes, TrainConfig  # noqa: E402
from keras_dae.train_run import join_processes  # noqa: E402
from keras_dae.validation import InputError  # noqa: E402

# The processes run JAX whatever the backend of the test run: once, in JAX's run.
pytestmark = pytest.mark.one_backend("jax")

ROOT = Path(__file__).resolve().parents[1]
# Small, but with several batches per epoch, two stages, and a checkpoint every epoch: the
# killed-process test stops process 1 after the first of the three epochs.
RECIPE = ["--preset", "diverse_tiny", "--epochs", "2", "--fusion-epochs", "1", "--joint-epochs", "0",
          "--batch-size", "8", "--seed", "1", "--patience", "10"]


PRETRAIN_RECIPE = ["--preset", "diverse_tiny", "--epochs", "2", "--batch-size", "8", "--seed",
                   "1", "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """`(dataset directory, shard directory)`: the small FSD50K-layout set written from real
    recordings, and its train split as shards."""
    root = write_small_fsd50k(tmp_path_factory.mktemp("fsd50k"))
    shards = write_shards(read_fsd50k(root, "train"), tmp_path_factory.mktemp("shards"),
                          shard_size=8)
    return root, shards.directory


# -- fast: the loader's per-process rows, the settings ----------------------------------------

@pytest.mark.parametrize(("mixup", "balanced", "gain_db"),
                         [(0.0, False, 0.0), (0.4, False, 0.0), (0.0, True, 0.0),
                          (0.4, False, 6.0)])
def test_each_process_reads_its_rows_of_every_global_batch(data, mixup, balanced, gain_db):
    """Two processes' batches, put side by side, are one process's batches, mixup, balanced
    sampling and random levels included, and both have the same number of them."""
    options = dict(batch_size=8, seed=3, epoch=2, mixup=mixup, balanced=balanced,
                   gain_db=gain_db)
    whole = ShardLoader(data[1], drop_last=True, **options)
    parts = [ShardLoader(data[1], process_index=p, process_count=2, **options) for p in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == whole.n_items // 8
    for index in range(len(whole)):
        x, y = whole[index]
        halves = [part[index] for part in parts]
        assert halves[0][0].shape == (4, whole.chunk_samples)
        np.testing.assert_array_equal(x, np.concatenate([h[0] for h in halves]))
        np.testing.assert_array_equal(y, np.concatenate([h[1] for h in halves]))
        np.testing.assert_array_equal(
            whole.batch_items(index), np.concatenate([p.batch_items(index) for p in parts]))


def test_loader_refuses_a_batch_that_does_not_split_over_the_processes(data):
    with pytest.raises(InputError, match="must divide by their number"):
        ShardLoader(data[1], batch_size=9, process_index=0, process_count=2)
    with pytest.raises(InputError, match="ids are 0..1"):
        ShardLoader(data[1], batch_size=8, process_index=2, process_count=2)


def test_settings_come_from_flags_or_keras_environment(monkeypatch):
    for name in (scale.ENV_JOB_ADDRESSES, scale.ENV_NUM_PROCESSES, scale.ENV_PROCESS_ID,
                 scale.ENV_JAX_COORDINATOR):
        monkeypatch.delenv(name, raising=False)
    assert not scale.multiprocess_requested()
    assert scale.multiprocess_requested(num_processes=2)
    assert scale.multiprocess_requested(force=True)
    monkeypatch.setenv(scale.ENV_JOB_ADDRESSES, "10.0.0.1:1234,10.0.0.2:2345")
    monkeypatch.setenv(scale.ENV_PROCESS_ID, "1")
    assert scale.multiprocess_requested()
    assert scale._settings(None, None, None) == ("10.0.0.1:1234", 2, 1)
    assert scale._settings("h:1", 2, 0) == ("h:1", 2, 0)  # flags first
    with pytest.raises(scale.ProcessGroupError, match="lists 2 processes"):
        scale._settings(None, 3, None)
    with pytest.raises(scale.ProcessGroupError, match="not in 0..1"):
        scale._settings("h:1", 2, 5)


def test_a_multi_process_run_needs_shards(data, tmp_path):
    """Refused before joining anything: the audio-file loaders cannot split batches; the
    message says how to write the shards and where to give them."""
    from keras_dae.pretraining import pretrain_run

    processes = Processes(coordinator="localhost:1", num_processes=2, process_id=0)
    with pytest.raises(InputError, match="--shards"):
        join_processes(TrainConfig(), processes)
    with pytest.raises(InputError, match="shard --format unlabelled .* pretrain with --data"):
        pretrain_run(data[0] / "FSD50K.dev_audio", tmp_path / "run", processes=processes)
    assert not (tmp_path / "run").exists()


# -- slow: real processes ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(host_devices: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KERAS_DISTRIBUTION_", "JAX_COORDINATOR", "SLURM_"))}
    env.pop("XLA_FLAGS", None)
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if host_devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={host_devices}"
    return env


def _train_command(data, out, *extra) -> list[str]:
    root, shards = data
    return [sys.executable, "-m", "keras_dae.cli", "train", "--data", str(root), "--shards",
            str(shards), "--out", str(out), *RECIPE, *extra]


def _pretrain_command(shards, out, *extra) -> list[str]:
    return [sys.executable, "-m", "keras_dae.cli", "pretrain", "--data", str(shards), "--out",
            str(out), *PRETRAIN_RECIPE, *extra]


def _start_processes(data, out, *extra, heartbeat: float = 20,
                     command=_train_command) -> list[subprocess.Popen]:
    """Process 0 and process 1 of a run on localhost (one CPU device each)."""
    port = _free_port()
    return [subprocess.Popen(
        command(data, out, "--coordinator", f"localhost:{port}", "--num-processes", "2",
                "--process-id", str(i), "--heartbeat-timeout", str(heartbeat),
                "--process-timeout", "240", *extra),
        env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)]


def _finish(processes, timeout=900) -> list[tuple[int, str, str]]:
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            results.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def _weights(run_dir: Path) -> dict:
    import h5py

    arrays = {}
    with h5py.File(run_dir / "preset" / "model.weights.h5", "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def _losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "report.json").read_text())["history"]
    score = "val_loss" if history[0]["stage"] == "pretrain" else "val_map"
    # a later stage's start (epoch -1) has no training loss
    return [(h["stage"], h["epoch"], np.nan if h["loss"] is None else h["loss"], h[score])
            for h in history]


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = _losses(run_dir), _losses(reference)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    np.testing.assert_allclose([g[2:] for g in got], [w[2:] for w in want], rtol=1e-4,
                               atol=1e-5)
    got, want = _weights(run_dir), _weights(reference)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def one_process_two_devices(data, tmp_path_factory) -> Path:
    """The reference: one process, data parallel over two host devices."""
    out = tmp_path_factory.mktemp("one") / "run"
    done = subprocess.run(_train_command(data, out, "--data-parallel"),
                          env=_environment(host_devices=2), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data parallel over 2 devices" in done.stdout
    return out


@pytest.mark.slow
def test_two_processes_train_as_one_process_on_two_devices(data, one_process_two_devices,
                                                           tmp_path):
    """Same losses, validation mAPs and final weights; process 0 says and writes
    everything, process 1 nothing."""
    out = tmp_path / "run"
    (rc0, out0, err0), (rc1, out1, err1) = _finish(_start_processes(data, out))
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert "data parallel over 2 devices of 2 processes" in out0
    assert "wrote" in out0
    # Process 1 says nothing of its own (gloo, JAX's CPU collectives, greets on stdout).
    assert [line for line in out1.splitlines() if not line.startswith("[Gloo]")] == []
    _assert_same_run(out, one_process_two_devices)
    assert not list(out.glob("**/*not-chief*"))


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_resume_finishes_the_run(
        data, one_process_two_devices, tmp_path):
    """Process 1 killed after the first checkpoint: process 0 ends within a bounded time,
    with one line that says why; both started again with --resume finish the run exactly as
    an uninterrupted one."""
    out = tmp_path / "run"
    processes = _start_processes(data, out, heartbeat=5)
    state = out / "checkpoint" / "state.json"
    try:
        deadline = time.monotonic() + 600
        while not state.is_file() and time.monotonic() < deadline:
            assert processes[0].poll() is None, processes[0].communicate()[1][-3000:]
            time.sleep(0.1)
        assert state.is_file(), "no checkpoint within 600 s"
        assert processes[1].poll() is None, "the run ended before process 1 could be killed"
        processes[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err0 = processes[0].communicate(timeout=120)
        waited = time.monotonic() - killed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert processes[0].returncode not in (0, None)
    assert waited < 120
    lines = [line for line in err0.splitlines() if line.startswith("error:")]
    assert lines, err0[-3000:]
    assert ("process 1 of 2 stopped" in lines[-1]
            or "another process most likely stopped" in lines[-1]), lines
    assert "--resume" in lines[-1] and "Traceback" not in err0
    assert json.loads(state.read_text())["stage"] in ("towers", "fusion")

    (rc0, _, err0), (rc1, _, err1) = _finish(_start_processes(data, out, "--resume"))
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    _assert_same_run(out, one_process_two_devices)


@pytest.mark.slow
def test_two_processes_pretrain_as_one_process_on_two_devices(data, tmp_path):
    """Pretraining from shards of unlabelled audio (`keras-dae shard --format unlabelled`):
    each process feeds its rows of every global batch of pairs, the contrastive negatives
    are the whole global batch, and the run ends with the losses, validation losses and
    weights of one process with two devices."""
    root, _ = data
    shards = write_shards(read_unlabelled(root / "FSD50K.dev_audio"), tmp_path / "shards",
                          shard_size=8).directory
    reference = tmp_path / "one"
    done = subprocess.run(_pretrain_command(shards, reference, "--data-parallel"),
                          env=_environment(host_devices=2), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "two"
    (rc0, out0, err0), (rc1, out1, err1) = _finish(_start_processes(
        shards, out, command=_pretrain_command))
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    assert "2 processes" in out0 and "wrote" in out0
    assert [line for line in out1.splitlines() if not line.startswith("[Gloo]")] == []
    _assert_same_run(out, reference)
