"""Runs and outputs: nothing of an earlier run lost, nothing clobbered, every refusal one line.

A run directory holding a run needs --resume or --overwrite; one process trains in it at a
time (an OS lock, tried with a second real process); a finished run has nothing to resume;
every split's labels are checked before training; numbers are checked when parsed (CLI) and
constructed (TrainConfig); outputs are written whole or not at all, to checked paths; export
writes only what it names and never replaces a file that it did not write.
"""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fsd50k_fixture import write_small_fsd50k

from keras_dae import atomic, runs, training
from keras_dae.cli import main as cli_main
from keras_dae.export import check_export_path, sidecar_paths
from keras_dae.export.artifact import write_sidecars

# The backend does not change what these tests check: tests/run.sh runs them once.
pytestmark = pytest.mark.one_backend

REPO = Path(__file__).resolve().parents[1]
SR = 16000
TINY_RUN = ["--preset", "diverse_tiny", "--epochs", "1", "--fusion-epochs", "1", "--joint-epochs", "0",
            "--batch-size", "8"]


def one_line_error(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_small_fsd50k(tmp_path_factory.mktemp("fsd50k"), per_class=(3, 1, 1))


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """One real `keras-dae train --overwrite` run, to its end (preset, report.json), into a
    directory holding an earlier run's files and a file of the user's."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    (run_dir / "preset").mkdir(parents=True)
    (run_dir / "preset" / "stale.txt").write_text("from the earlier run")
    (run_dir / "report.json").write_text('{"config": {"seed": 7}}')
    (run_dir / "notes.txt").write_text("mine")
    assert cli_main(["train", "--data", str(data_dir), "--out", str(run_dir), *TINY_RUN,
                     "--overwrite"]) == 0
    return run_dir


def _train(data_dir, run_dir, *flags) -> list[str]:
    return ["train", "--data", str(data_dir), "--out", str(run_dir), *TINY_RUN, *flags]


# ---------------------------------------------------------------------------------------------
# An earlier run: --resume continues it, --overwrite replaces it, nothing else touches it


@pytest.mark.parametrize("earlier", ["checkpoint/state.json", "preset/config.json",
                                     "report.json", "logs/towers.csv"])
def test_a_run_directory_holding_a_run_is_refused(earlier, data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / earlier).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / earlier).write_text("{}")
    assert cli_main(_train(data_dir, run_dir)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(run_dir) in line and "holds a run" in line
    assert "--resume" in line and "--overwrite" in line
    assert (run_dir / earlier).read_text() == "{}"  # untouched


def test_resume_and_overwrite_together_are_refused(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "report.json").parent.mkdir(parents=True)
    (run_dir / "report.json").write_text("{}")
    assert cli_main(_train(data_dir, run_dir, "--resume", "--overwrite")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line and "choose one" in line
    assert (run_dir / "report.json").read_text() == "{}"


def test_resuming_a_finished_run_says_so(finished_run, data_dir, capsys):
    report = (finished_run / "report.json").read_text()
    assert cli_main(_train(data_dir, finished_run, "--resume")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "the run is finished" in line and "nothing to resume" in line
    assert (finished_run / "report.json").read_text() == report


def test_a_run_that_ended_before_its_report_resumes_to_the_report(finished_run, data_dir,
                                                                  tmp_path, capsys):
    """Training done ("done" in the checkpoint) but killed before the report: --resume
    trains nothing more and writes the preset and report."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "report.json").unlink()
    shutil.rmtree(run_dir / "preset")
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["stage"] == "done"
    assert cli_main(_train(data_dir, run_dir, "--resume")) == 0, capsys.readouterr().err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["history"] == state["history"]  # no epoch trained again
    assert (run_dir / "preset" / "model.weights.h5").is_file()


def test_overwrite_replaces_the_run_and_keeps_other_files(finished_run):
    report = json.loads((finished_run / "report.json").read_text())
    assert report["config"]["seed"] == 0 and report["history"]
    assert (finished_run / "notes.txt").read_text() == "mine"
    assert not (finished_run / "preset" / "stale.txt").exists()
    assert (finished_run / "preset" / "model.weights.h5").is_file()


# ---------------------------------------------------------------------------------------------
# One process at a time: an OS lock, gone with its process


def _lock_holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding `run_dir`'s lock (through the library) until it is killed."""
    code = ("import sys, time\nfrom keras_dae import runs\n"
            f"with runs.run_lock({str(run_dir)!r}):\n"
            "    print('locked', flush=True)\n    time.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("how", ["fresh", "--resume", "--overwrite"])
def test_a_second_process_is_refused_while_one_trains(how, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    holder = _lock_holder(run_dir)
    try:
        flags = [] if how == "fresh" else [how]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-m", "keras_dae.cli",
                               *_train(data_dir, run_dir, *flags)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2, proc.stderr
        line = one_line_error(proc.stderr)
        assert f"another process (pid {holder.pid})" in line and str(run_dir) in line
        assert runs.run_files(run_dir) == []  # nothing written by the refused one
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    holder = _lock_holder(run_dir)
    with pytest.raises(runs.RunError, match="another process"):
        with runs.run_lock(run_dir):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run_dir / runs.LOCK_FILE).is_file()  # left behind, and stale
    with runs.run_lock(run_dir):
        with runs.run_lock(run_dir):  # re-entrant within a process
            pass


# ---------------------------------------------------------------------------------------------
# Every split and label before training


def _tones(directory: Path, labels, prefix: str):
    rows = []
    t = np.arange(12000) / SR
    for i, label in enumerate(labels):
        path = directory / f"{prefix}_{i}.wav"
        f0 = 200.0 if i % 2 else 900.0
        soundfile.write(path, (0.4 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), SR)
        rows.append((str(path), label))
    return rows


def _write_csv(path: Path, rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)


@pytest.mark.parametrize("split", ["val", "eval"])
def test_a_label_unknown_to_training_is_refused_before_training(split, tmp_path, capsys):
    _write_csv(tmp_path / "train.csv", _tones(tmp_path, ["low", "high"] * 2, "train"))
    labels = {"val": ["low", "high"], "eval": ["low", "high"]}
    labels[split] = ["low", "siren"]
    for name in ("val", "eval"):
        _write_csv(tmp_path / f"{name}.csv", _tones(tmp_path, labels[name], name))
    run_dir = tmp_path / "run"
    assert cli_main(["train", "--data", str(tmp_path), "--format", "csv", "--out",
                     str(run_dir), *TINY_RUN]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"({split})" in line and "['siren']" in line and "training split" in line
    assert runs.run_files(run_dir) == []  # refused before any training


# ---------------------------------------------------------------------------------------------
# Numbers checked when parsed, and by TrainConfig


@pytest.mark.parametrize("command,flag,value", [
    ("train", "--epochs", "-1"), ("train", "--fusion-epochs", "-2"),
    ("train", "--joint-epochs", "-1"), ("train", "--batch-size", "0"),
    ("train", "--learning-rate", "nan"), ("train", "--learning-rate", "inf"),
    ("train", "--learning-rate", "-0.1"), ("train", "--mixup", "-0.5"),
    ("train", "--mixup", "nan"), ("train", "--gain-db", "-6"), ("train", "--patience", "0"),
    ("train", "--seed", "-3"),
    ("train", "--epochs", "two"), ("predict", "--top-k", "0"), ("predict", "--batch-size", "-4"),
    ("embed", "--batch-size", "0"), ("shard", "--workers", "0"),
    ("shard", "--shard-size", "-1"), ("shard", "--sample-rate", "0"),
    ("frontends", "--sample-rate", "-16000"), ("export", "--calibration-windows", "0"),
    ("export", "--batch-size", "-1"),
])
def test_a_number_out_of_range_is_refused_when_parsed(command, flag, value, tmp_path, capsys):
    required = {"train": ["--data", str(tmp_path), "--out", str(tmp_path / "run")],
                "predict": ["x.wav"], "embed": ["x.wav", "--out", str(tmp_path / "e.npz")],
                "shard": ["--data", str(tmp_path), "--out", str(tmp_path / "s")],
                "frontends": [], "export": ["--model", "m", "--format", "tflite", "--out",
                                            str(tmp_path / "m.tflite")]}[command]
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, *required, flag, value])
    assert exit_.value.code == 2
    line = one_line_error(capsys.readouterr().err)
    assert flag in line and repr(value) in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value", [
    ("tower_epochs", -1), ("batch_size", 0), ("batch_size", 2.5), ("learning_rate", float("nan")),
    ("fusion_learning_rate", float("inf")), ("joint_learning_rate", -1e-4), ("mixup", -1.0),
    ("hop_seconds", 0.0), ("chunk_seconds", -1.0), ("patience", 0), ("seed", -1),
    ("normalization_chunks", 0), ("tower_epochs", True), ("gain_db", float("inf")),
])
def test_train_config_refuses_the_same_numbers(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        training.TrainConfig(**{field: value})


def test_a_random_level_is_refused_where_it_cannot_apply(tmp_path, capsys):
    """--gain-db changes the waveform: cached features would not match it, pretraining pairs
    have their own augmentation, and a probe fits heads on the clips as they are."""
    for argv, says in (
            (["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--gain-db",
              "6", "--feature-cache"], "leave out --feature-cache"),
            (["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "pre"), "--gain-db",
              "6"], "unrecognized arguments: --gain-db"),
            (["finetune", "--from", "diverse_sampled15", "--data", str(tmp_path), "--out",
              str(tmp_path / "ft"), "--mode", "probe", "--gain-db", "6"],
             "--gain-db is for --mode heads or full")):
        try:
            code = cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code
        assert code == 2
        assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


# ---------------------------------------------------------------------------------------------
# Outputs: whole or absent, at checked paths


@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_write_leaves_the_previous_file_and_no_temporary(existed, tmp_path):
    path = tmp_path / "report.json"
    if existed:
        path.write_text("old")

    def half_then_fail(tmp):
        Path(tmp).write_text("half")
        # a real failure: the temporary's folder is not where a file can go
        open(Path(tmp) / "nested", "w")

    with pytest.raises(atomic.OutputError) as error:
        atomic.atomic_write(path, half_then_fail)
    message = str(error.value)
    assert message.startswith(f"{path}: could not be written (Not a directory)")
    assert ("previous version is intact" if existed else "nothing was written") in message
    assert (path.read_text() == "old") if existed else not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["report.json"] if existed else [])


@pytest.mark.parametrize("name,suffixes,problem", [
    ("missing/out.npz", (".npz",), "the folder"),
    ("out.txt", (".npz",), "must end with .npz"),
    ("a_dir", (), "is a directory"),
    ("a_file/x.json", (".json",), "does not exist"),
])
def test_output_paths_are_checked_before_the_work(name, suffixes, problem, tmp_path):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(atomic.OutputError, match=problem) as error:
        atomic.check_output_path(tmp_path / name, suffixes, "--out")
    assert str(error.value).startswith(f"--out {tmp_path / name}")


@pytest.mark.parametrize("argv,problem", [
    (["evaluate", "--model", "no_such_preset", "--data", ".", "--json", "{tmp}/no/r.json"],
     "does not exist"),
    (["evaluate", "--model", "no_such_preset", "--data", ".", "--json", "{tmp}/r.txt"],
     "must end with .json"),
    (["embed", "nothing.wav", "--out", "{tmp}/e.txt"], "must end with .npz"),
    (["frontends", "nothing.wav", "--plot", "{tmp}/no/f.png"], "--plot"),
    (["demo", "nothing.wav", "--model", "no_such_preset", "--plot", "{tmp}"], "is a directory"),
    (["embed", "nothing.wav", "--out", "{tmp}/no/e.npz"], "does not exist"),
    (["export", "--model", "no_such_preset", "--format", "tflite", "--out", "{tmp}/m.json"],
     "must end with .tflite"),
    (["export", "--model", "no_such_preset", "--format", "onnx", "--out", "{tmp}/m.tflite"],
     "must end with .onnx"),
])
def test_commands_refuse_an_output_path_before_loading_anything(argv, problem, tmp_path, capsys):
    """The model named does not exist: the refusal is the output path's, so it came first."""
    import importlib.util

    import keras

    if "--plot" in argv and importlib.util.find_spec("matplotlib") is None:
        pytest.skip("without matplotlib a named picture is refused for that first")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "export":  # export's default backend is TensorFlow; Keras is loaded here
        argv += ["--backend", keras.backend.backend()]
    assert cli_main(argv) == 2
    line = one_line_error(capsys.readouterr().err)
    assert problem in line and str(tmp_path) in line


# ---------------------------------------------------------------------------------------------
# Export writes only its file and sidecars, and replaces only its own


DESCRIPTION = {"schema": "keras_dae.export/1", "labels": ["dog", "cat"]}


@pytest.mark.parametrize("artifact", ["package.tflite", "model.onnx", "saved"])
@pytest.mark.parametrize("which", [0, 1])
def test_export_refuses_to_replace_a_sidecar_it_did_not_write(artifact, which, tmp_path):
    path = tmp_path / artifact
    fmt = {"tflite": "tflite", "onnx": "onnx", "": "savedmodel"}[path.suffix.lstrip(".")]
    sidecar = sidecar_paths(path)[which]
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "savedmodel":
        (path / "saved_model.pb").write_bytes(b"")
    sidecar.write_text('{"name": "my-app", "version": "1.0.0"}\n')
    with pytest.raises(atomic.OutputError, match="was not written by keras-dae export") as e:
        check_export_path(path, fmt)
    assert str(sidecar) in str(e.value)
    assert sidecar.read_text() == '{"name": "my-app", "version": "1.0.0"}\n'


def test_export_replaces_its_own_sidecars(tmp_path):
    path = tmp_path / "tagger.tflite"
    labels, description = write_sidecars(path, DESCRIPTION)
    assert labels.read_text() == "dog\ncat\n"
    check_export_path(path, "tflite")  # ours: may be replaced
    write_sidecars(path, {**DESCRIPTION, "labels": ["bird"]})
    assert labels.read_text() == "bird\n"
    assert json.loads(description.read_text())["labels"] == ["bird"]
    labels.write_text("edited by hand\n")  # no longer the export's
    with pytest.raises(atomic.OutputError, match="tagger.labels.txt: exists"):
        check_export_path(path, "tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tagger.json", "tagger.labels.txt"]


def test_export_refuses_a_directory_that_is_not_a_savedmodel(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(atomic.OutputError, match="something other than a SavedModel"):
        check_export_path(tmp_path / "photos", "savedmodel")
    with pytest.raises(atomic.OutputError, match="without an extension"):
        check_export_path(tmp_path / "model.savedmodel", "savedmodel")
    check_export_path(tmp_path / "empty_new", "savedmodel")



# ---------------------------------------------------------------------------------------------
# A full disk while checkpointing


def test_a_checkpoint_that_does_not_fit_ends_in_one_line(data_dir, tmp_path):
    """A real write failure, without privileges: the training process may not write a file
    over 300 kB (RLIMIT_FSIZE; writes beyond fail with EFBIG), so its first checkpoint's
    weights fail halfway. One line, exit status 2, no crash, no partial or temporary file,
    and no `state.json` naming a checkpoint that is not there."""
    import resource

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "keras_dae.cli", *_train(data_dir, run_dir)],
                          capture_output=True, text=True, env=env, timeout=600,
                          preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc.stderr)
    assert str(run_dir / "checkpoint") in line and "File too large" in line
    checkpoint = sorted(p.name for p in (run_dir / "checkpoint").iterdir())
    assert checkpoint == [], checkpoint
