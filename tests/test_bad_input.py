"""The bad-input corpus (tests/bad_inputs.py) through every entry point of this branch:
`keras_dae.audio` (load_audio, audio_info, the streaming reader, segments), the dataset
readers and the loader (an epoch of training), evaluation, and the `keras-dae` commands
(`frontends FILE`, `evaluate`, `train`). Slow: the 1-hour clip."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import keras
import librosa
import numpy as np
import pytest
import soundfile
from bad_inputs import (
    BAD_DIR,
    BY_NAME,
    CASES,
    HOUR_RATE,
    PRIVILEGED,
    PRIVILEGED_REASON,
    REPO,
    check_decoded,
    check_refusal,
    in_process_cases,
    json_line,
    make_corpus,
    run_unprivileged,
    write_hour,
)

from keras_dae.audio import (
    AudioDecodeError,
    audio_info,
    iter_audio_blocks,
    load_audio,
    problem_kind,
    read_audio_segment,
    summarize_problems,
)
from keras_dae.cli import main as cli_main
from keras_dae.data import ChunkLoader, ClipDataset, clip_chunks, read_csv_dataset
from keras_dae.data.chunking import chunk_waveform

SR = 16000
FAST = in_process_cases()  # all but the hour, and (under root) the unreadable file
OK = [c for c in FAST if c.ok]
REFUSED = [c for c in FAST if not c.ok]
EVERY = [c for c in CASES if not c.slow]  # for per-file tests: skips say why under root
# Decoding is no Keras code: its tests run once, in JAX's run (tests/run.sh balances the three).
DECODING_RUN = "jax"


def skip_if_privileged(case):
    if PRIVILEGED and case not in FAST:
        pytest.skip(PRIVILEGED_REASON)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("bad"))


def reference_decode(path, sample_rate=SR):
    """What load_audio computed before streaming: read whole, average channels, soxr_hq."""
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.clip(mono, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The corpus itself


@pytest.mark.one_backend(DECODING_RUN)
def test_committed_corpus_is_what_the_script_writes(tmp_path):
    """tests/data/bad/ is exactly scripts/make_bad_audio.py's output, and the table covers it."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_bad_audio
    finally:
        sys.path.pop(0)
    written = make_bad_audio.write_corpus(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in BAD_DIR.iterdir())
    for path in written:
        assert path.read_bytes() == (BAD_DIR / path.name).read_bytes(), path.name
    committed = {c.file for c in CASES if not c.made_at_test_time}
    assert committed == {p.name for p in written}


# ---------------------------------------------------------------------------------------------
# keras_dae.audio


@pytest.mark.one_backend(DECODING_RUN)
@pytest.mark.parametrize("case", EVERY, ids=lambda c: c.name)
def test_load_audio(case, corpus):
    skip_if_privileged(case)
    path = corpus[case.name]
    if case.ok:
        waveform = load_audio(path, SR)
        check_decoded(case, waveform)
        np.testing.assert_array_equal(waveform, reference_decode(path))
        return
    with pytest.raises(AudioDecodeError) as error:
        load_audio(path, SR)
    check_refusal(case, path, str(error.value))
    assert error.value.kind == case.kind == problem_kind(str(error.value))
    assert error.value.path == path


@pytest.mark.one_backend(DECODING_RUN)
@pytest.mark.parametrize("case", EVERY, ids=lambda c: c.name)
def test_audio_info_refuses_without_decoding(case, corpus):
    """Every refusal but non-finite samples is known from the header (no decoding)."""
    skip_if_privileged(case)
    path = corpus[case.name]
    if case.ok:
        info = audio_info(path)
        assert info.num_samples(SR) == case.samples
        assert info.channels == {"stereo": 2, "six_channel": 6}.get(case.name, 1)
        return
    if case.kind == "NaN or infinite samples":
        assert audio_info(path).frames > 0
        return
    with pytest.raises(AudioDecodeError) as error:
        audio_info(path)
    check_refusal(case, path, str(error.value))


@pytest.mark.one_backend(DECODING_RUN)
@pytest.mark.parametrize("case", EVERY, ids=lambda c: c.name)
def test_streamed_blocks_equal_load_audio(case, corpus):
    """Blocks of 50 ms and 0.3 s, concatenated, are load_audio's result bit for bit (the
    resampler runs as one stream across block boundaries)."""
    skip_if_privileged(case)
    path = corpus[case.name]
    if not case.ok:
        with pytest.raises(AudioDecodeError) as error:
            list(iter_audio_blocks(path, SR, block_seconds=0.05))
        check_refusal(case, path, str(error.value))
        return
    whole = load_audio(path, SR)
    for seconds in (0.05, 0.3):
        blocks = list(iter_audio_blocks(path, SR, block_seconds=seconds))
        size = int(round(seconds * SR))
        assert all(b.size == size for b in blocks[:-1]) and 0 < blocks[-1].size <= size
        np.testing.assert_array_equal(np.concatenate(blocks), whole)


@pytest.mark.one_backend(DECODING_RUN)
@pytest.mark.parametrize("name", ["rate_8k", "rate_44k1", "rate_96k", "six_channel", "silence"])
def test_segments_equal_load_audio(name, corpus):
    """A segment read by seeking equals the same samples of the whole file to 1e-6."""
    whole = load_audio(corpus[name], SR)
    for start, length in [(0, 1000), (1, 3000), (2500, 2000), (whole.size - 700, 1000)]:
        segment = read_audio_segment(corpus[name], SR, start, length)
        expected = whole[start : start + length]
        assert segment.shape == expected.shape
        np.testing.assert_allclose(segment, expected, atol=1e-6)


@pytest.mark.one_backend(DECODING_RUN)
def test_summary_counts_kinds():
    reasons = {"a": "empty file (0 bytes)", "b": "truncated WAV: ...", "c": "truncated WAV: x"}
    assert summarize_problems(reasons, total=10) == (
        "skipped 3 of 10 files: 2 truncated, 1 empty file")
    assert summarize_problems({}, total=4) == "skipped 0 of 4 files"


@pytest.mark.one_backend(DECODING_RUN)
@pytest.mark.skipif(not PRIVILEGED, reason="not root: test_load_audio[unreadable] covers it")
def test_unreadable_file_as_an_unprivileged_user():
    """Under root, chmod 000 stops nobody; so a subprocess drops to uid 65534 after its
    imports, and load_audio, audio_info and the loader must refuse the file there."""
    directory = Path(tempfile.mkdtemp(prefix="keras-dae-unreadable-"))
    try:
        directory.chmod(0o755)
        paths = make_corpus(directory, cases=[BY_NAME["unreadable"], BY_NAME["tenth_second"]])
        code = f"""
import json
from keras_dae.audio import AudioDecodeError, audio_info, load_audio
from keras_dae.data import ClipDataset, ChunkLoader
import numpy as np
good, bad = {str(paths["tenth_second"])!r}, {str(paths["unreadable"])!r}
load_audio(good)
# --- drop privileges ---
out = {{}}
for name, call in (("load_audio", load_audio), ("audio_info", audio_info)):
    try:
        call(bad)
        out[name] = None
    except AudioDecodeError as error:
        out[name] = str(error)
loader = ChunkLoader(ClipDataset([good, bad], np.eye(2), ["a", "b"], ["", ""], ["g", "b"]),
                     batch_size=2, shuffle=False)
out["loader"] = loader.skipped
out["summary"] = loader.skip_summary()
print(json.dumps(out))
"""
        done = run_unprivileged(code, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json_line(done.stdout)
        case = BY_NAME["unreadable"]
        for name in ("load_audio", "audio_info"):
            check_refusal(case, paths["unreadable"], out[name])
        assert list(out["loader"]) == [str(paths["unreadable"])]
        assert out["summary"] == "skipped 1 of 2 files: 1 permission denied"
    finally:
        for path in directory.iterdir():
            if path.is_file():
                path.chmod(0o600)
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Datasets, the loader, evaluation


def write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return path


def corpus_dataset(corpus, directory: Path, label_of=lambda case: "ok" if case.ok else "bad"):
    """A CSV dataset of every in-process case's file; missing ones are left out (warned)."""
    rows = [(str(corpus[c.name]), label_of(c)) for c in FAST]
    csv_path = write_csv(directory / "corpus.csv", rows)
    with pytest.warns(UserWarning, match="do not exist"):
        dataset = read_csv_dataset(csv_path, labels=["ok", "bad"])
    left_out = {str(p) for p in dataset.missing}
    assert left_out == {str(corpus[c.name]) for c in FAST if not c.in_dataset}
    return dataset


@pytest.mark.one_backend
def test_folder_dataset_of_the_corpus(corpus, tmp_path):
    """Class folders holding the corpus: audio files are listed (bad ones included, for the
    loader to refuse), and the unsupported container is reported, not silently ignored."""
    from keras_dae.data import read_folder_dataset

    copied = []
    for case in FAST:
        path = corpus[case.name]
        # Regular files only (a folder dataset lists files); the unreadable one is tested
        # on its own (it cannot be copied without privileges).
        if case.in_dataset and path.is_file() and case.name != "unreadable":
            target = tmp_path / ("ok" if case.ok else "bad") / case.file
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, target)
            copied.append(case)
    with pytest.warns(UserWarning, match=r"1 files in audio formats keras-dae cannot read "
                                         r"were ignored .*container.m4a"):
        dataset = read_folder_dataset(tmp_path)
    listed = {p.name for p in dataset.paths}
    assert "container.m4a" not in listed and "nan.wav" in listed and "ñandú 鳥の声 – çà.wav" in listed
    loader = ChunkLoader(dataset, SR, batch_size=8, shuffle=False)
    for i in range(len(loader)):
        loader[i]
    refused = {Path(p).name for p in loader.skipped}
    assert refused == {c.file for c in copied if not c.ok and c.file != "container.m4a"}


@pytest.mark.one_backend
def test_pretraining_pairs_replace_every_bad_file_of_an_unlabelled_folder(corpus, tmp_path):
    """The corpus as unlabelled audio (`keras-dae pretrain --data`): each bad file is reported
    with its reason and its row takes another file's pair, one not already in the batch (a
    file twice in a batch would be its own negative); every view is finite."""
    from keras_dae.data import read_unlabelled
    from keras_dae.data.pair_loader import PairLoader

    # Regular files (the unreadable one needs privileges to copy), but for the 1 ms clip: its
    # padded chunk equals the 0.1 s clip's, and each view here must name its file.
    for case in FAST:
        if (case.in_dataset and corpus[case.name].is_file()
                and case.name not in ("unreadable", "one_ms")):
            shutil.copyfile(corpus[case.name], tmp_path / case.file)
    data = read_unlabelled(tmp_path)
    loader = PairLoader(data, ["timbre"], augment=False, batch_size=4, seed=0)
    chunks = {c.file: chunk_waveform(load_audio(tmp_path / c.file, SR), SR) for c in OK
              if (tmp_path / c.file).exists()}
    replaced = 0
    for epoch in range(2):
        loader.set_epoch(epoch)
        for i in range(len(loader)):
            inputs, targets = loader[i]
            np.testing.assert_array_equal(targets["timbre"], np.arange(4))
            owners = []
            for anchor, positive in zip(inputs["anchor"], inputs["positive"], strict=True):
                assert np.isfinite(anchor).all() and np.isfinite(positive).all()
                owner = {f for f, cs in chunks.items()
                         if any(np.array_equal(c, anchor) for c in cs)}
                assert len(owner) == 1 and any(np.array_equal(c, positive)
                                               for c in chunks[next(iter(owner))])
                owners += owner
            assert len(set(owners)) == 4, owners  # four files: none twice
            listed = {data.paths[loader.clips[p]].name for p in loader.batch_items(i)}
            replaced += len(listed - set(owners))
    assert replaced > 0  # bad files were drawn, and replaced
    bad = {str(tmp_path / c.file): c for c in REFUSED
           if (tmp_path / c.file).exists() and c.file != "container.m4a"}
    assert set(loader.skipped) == set(bad)
    for path, case in bad.items():
        check_refusal(case, Path(path), f"{path}: {loader.skipped[path]}")


def expected_skips(corpus):
    return {str(corpus[c.name]): c for c in REFUSED if c.in_dataset}


def tiny_model(n_classes):
    inputs = keras.Input((SR,))
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((100, 160))(inputs))
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="sigmoid")(h))


@pytest.mark.usefixtures("no_network")
def test_a_dataset_of_every_bad_file_trains_for_an_epoch(corpus, tmp_path):
    """Bad files are reported, counted and skipped (their chunks replaced); the good ones
    train; the summary names every reason. Labels: "ok" for decodable files, "bad" else,
    so no batch may hold a "bad" target."""
    dataset = corpus_dataset(corpus, tmp_path)
    loader = ChunkLoader(dataset, SR, batch_size=4, seed=0)
    expected = expected_skips(corpus)
    # Everything but non-finite samples is known from the headers, at indexing time.
    assert set(loader.skipped) == {p for p, c in expected.items()
                                   if c.kind != "NaN or infinite samples"}
    model = tiny_model(2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    history = model.fit(loader, epochs=1, shuffle=False, verbose=0,
                        callbacks=[loader.epoch_callback()])
    assert np.isfinite(history.history["loss"]).all()
    for i in range(len(loader)):  # a second pass: every batch full, no bad file's chunk
        x, y = loader[i]
        assert x.shape == (len(loader.batch_items(i)), SR) and np.isfinite(x).all()
        assert not y[:, 1].any()
    assert set(loader.skipped) == set(expected)
    for path, case in expected.items():
        check_refusal(case, Path(path), f"{path}: {loader.skipped[path]}")
    summary = loader.skip_summary()
    n_bad, total = len(expected), len(dataset)
    assert summary.startswith(f"skipped {n_bad} of {total} files: ")
    for kind in {c.kind for c in expected.values()}:
        count = sum(c.kind == kind for c in expected.values())
        assert f"{count} {kind}" in summary


@pytest.mark.one_backend
@pytest.mark.usefixtures("no_network")
def test_evaluation_skips_and_counts_bad_files(corpus, tmp_path):
    from keras_dae import training, zoo

    dataset = corpus_dataset(corpus, tmp_path)
    model = zoo.load("diverse_tiny", weights=None, labels=["ok", "bad"])
    report = training.evaluate(model, dataset)
    expected = expected_skips(corpus)
    assert report["n_clips"] == len(dataset) - len(expected)
    assert set(report["skipped"]) == set(expected)
    assert report["skip_summary"].startswith(f"skipped {len(expected)} of {len(dataset)}")
    assert np.isfinite(report["mAP"])


@pytest.mark.one_backend
def test_clip_chunks_equal_chunked_load_audio(corpus):
    """Streamed chunk groups (forced by max_chunks=1) equal chunking the whole clip."""
    for case in OK:
        whole = chunk_waveform(load_audio(corpus[case.name], SR), SR)
        groups = list(clip_chunks(corpus[case.name], SR, max_chunks=1))
        np.testing.assert_array_equal(np.concatenate(groups), whole)


@pytest.mark.one_backend
def test_long_clips_are_read_chunk_by_chunk(corpus, tmp_path):
    """Clips over long_clip_seconds are read by segments: the same chunks to 1e-6."""
    long_wav = tmp_path / "long.wav"
    tone = np.sin(np.arange(int(7.3 * 44100)) * 0.05).astype(np.float32) * 0.5
    soundfile.write(long_wav, tone, 44100)
    dataset = ClipDataset([long_wav], np.ones((1, 1), np.float32), ["a"], [""], ["long"])
    streamed = ChunkLoader(dataset, SR, batch_size=32, shuffle=False, long_clip_seconds=2.0)
    whole = ChunkLoader(dataset, SR, batch_size=32, shuffle=False)
    assert streamed.n_items == whole.n_items == 14
    np.testing.assert_allclose(streamed[0][0], whole[0][0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The command line


def one_line_error(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]


@pytest.mark.parametrize("case", [c for c in EVERY if not c.ok], ids=lambda c: c.name)
def test_frontends_command_refuses_a_bad_file(case, corpus, capsys):
    """A single file: exit 2, one line naming the file and the problem, no traceback."""
    skip_if_privileged(case)
    assert cli_main(["frontends", str(corpus[case.name]), "--plot", ""]) == 2
    err = capsys.readouterr().err
    check_refusal(case, corpus[case.name], one_line_error(err))


@pytest.mark.one_backend
@pytest.mark.parametrize("name", ["one_ms", "six_channel"])  # decoding: test_load_audio
def test_frontends_command_takes_odd_good_files(name, corpus, capsys):
    assert cli_main(["frontends", str(corpus[name]), "--plot", ""]) == 0
    assert "LogMelSpectrogram" in capsys.readouterr().out


@pytest.mark.one_backend
def test_no_traceback_unless_debug(tmp_path):
    """In a real process: the refusal is one line on stderr; --debug adds the traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "keras_dae.cli", "frontends", str(BAD_DIR / "nan.wav"),
            "--plot", ""]
    plain = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()]  # nothing else at all
    check_refusal(BY_NAME["nan"], BAD_DIR / "nan.wav", plain.stderr)
    with_debug = subprocess.run([*args, "--debug"], capture_output=True, text=True, env=env,
                                timeout=300)
    assert with_debug.returncode == 2 and "Traceback" in with_debug.stderr
    assert "AudioDecodeError" in with_debug.stderr
    # An error raised outside the audio decoder: an evaluation dataset that does not exist.
    evaluate = [sys.executable, "-m", "keras_dae.cli", "evaluate", "--model", "diverse_tiny",
                "--data", str(tmp_path / "nothing"), "--format", "csv"]
    missing = subprocess.run(evaluate, capture_output=True, text=True, env=env, timeout=300,
                             cwd=tmp_path)
    assert missing.returncode == 2, missing.stderr
    assert "Traceback" not in missing.stderr
    debug = subprocess.run([*evaluate, "--debug"], capture_output=True, text=True, env=env,
                           timeout=300, cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


@pytest.mark.one_backend
def test_a_backend_that_is_not_installed_is_named_in_one_line():
    """An install with another backend's extra only (e.g. `pip install "keras-dae[jax]"`) and
    Keras' default backend: one line naming both ways out, exit 2, not an internal error."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    script = ("import sys; sys.modules['tensorflow'] = None; from keras_dae.cli import main; "
              "sys.exit(main(['frontends', '--backend', 'tensorflow', '--plot', '']))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == ("error: tensorflow is not installed: choose an installed Keras "
                           "backend with --backend or KERAS_BACKEND, or pip install "
                           "'keras-dae[tensorflow]'\n")


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    from keras_dae import zoo

    model = zoo.load("diverse_tiny", weights=None, labels=["ok", "bad"])
    return zoo.save(model, tmp_path_factory.mktemp("preset") / "preset")


@pytest.mark.one_backend
@pytest.mark.usefixtures("no_network")
def test_evaluate_command_with_bad_files(corpus, preset, tmp_path, capsys):
    rows = [(str(corpus[c.name]), "ok" if c.ok else "bad") for c in FAST]
    write_csv(tmp_path / "eval.csv", rows)
    out_json = tmp_path / "report.json"
    code = cli_main(["evaluate", "--model", str(preset), "--data", str(tmp_path), "--format",
                     "csv", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    expected = expected_skips(corpus)
    total = sum(c.in_dataset for c in FAST)
    assert f"skipped {len(expected)} of {total} files: " in captured.out
    for path in expected:
        assert path in captured.out
    assert "Traceback" not in captured.err
    report = json.loads(out_json.read_text())
    assert report["n_clips"] == total - len(expected)


@pytest.mark.one_backend  # refused before the model runs
@pytest.mark.usefixtures("no_network")
def test_evaluate_command_refuses_an_all_bad_dataset(corpus, preset, tmp_path, capsys):
    write_csv(tmp_path / "eval.csv", [(str(corpus[c.name]), "bad") for c in REFUSED
                                      if c.in_dataset])
    assert cli_main(["evaluate", "--model", str(preset), "--data", str(tmp_path),
                     "--format", "csv"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "no clip of the" in line and "could be decoded" in line and "truncated" in line


def tone_files(directory: Path, n: int, seed: int):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = directory / f"tone_{seed}_{i}.wav"
        f0 = 200.0 if i % 2 else 900.0
        t = np.arange(12000) / SR
        y = 0.4 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.size)
        soundfile.write(path, y.astype(np.float32), SR)
        paths.append((path, "low" if i % 2 else "high"))
    return paths


@pytest.mark.one_backend
@pytest.mark.usefixtures("no_network")
def test_train_command_with_bad_files(corpus, tmp_path, capsys):
    """Training data holding every bad file: the run completes, and its summary says how
    many files of each split were skipped and why."""
    bad = [(str(corpus[c.name]), "low") for c in FAST if not c.ok]
    good = [(str(corpus[c.name]), "high") for c in FAST if c.ok]
    write_csv(tmp_path / "train.csv", [*tone_files(tmp_path, 6, 0), *good, *bad])
    write_csv(tmp_path / "val.csv", [*tone_files(tmp_path, 4, 1), *bad[:3]])
    code = cli_main(["train", "--data", str(tmp_path), "--format", "csv", "--out",
                     str(tmp_path / "run"), "--preset", "diverse_tiny", "--epochs", "1",
                     "--fusion-epochs", "1", "--joint-epochs", "0", "--batch-size", "16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    expected = expected_skips(corpus)
    n_train = 6 + len(good) + len(expected)
    assert f"train: skipped {len(expected)} of {n_train} files: " in captured.out
    assert "val: skipped 3 of 7 files: " in captured.out
    assert "Traceback" not in captured.err
    assert (tmp_path / "run" / "preset" / "model.weights.h5").is_file()


@pytest.mark.one_backend
def test_train_command_refuses_an_unusable_output_directory(tmp_path, capsys):
    """Known before training: a run directory that cannot be created (its parent is a file:
    root cannot get around that, unlike permissions)."""
    write_csv(tmp_path / "train.csv", tone_files(tmp_path, 2, 0))
    write_csv(tmp_path / "val.csv", tone_files(tmp_path, 2, 1))
    (tmp_path / "a_file").write_text("x")
    code = cli_main(["train", "--data", str(tmp_path), "--format", "csv", "--out",
                     str(tmp_path / "a_file" / "run"), "--preset", "diverse_tiny"])
    assert code == 2
    line = one_line_error(capsys.readouterr().err)
    assert "cannot create the run directory" in line and "Not a directory" in line


# ---------------------------------------------------------------------------------------------
# The hour (slow)


@pytest.fixture(scope="module")
def hour(tmp_path_factory):
    return write_hour(tmp_path_factory.mktemp("hour") / "hour.wav")


def _peak_rss_of(code: str) -> dict:
    """Runs `code` in a fresh interpreter; it prints JSON, to which the peak RSS (VmHWM)
    growth since the line `# --- measure ---` is added (MiB)."""
    before, after = code.split("# --- measure ---")
    program = (before + "\ndef _rss(key):\n    for line in open('/proc/self/status'):\n"
               "        if line.startswith(key):\n            return int(line.split()[1]) / 1024\n"
               "open('/proc/self/clear_refs', 'w').write('5')\n_base = _rss('VmRSS')\n"
               + after + "\nimport json as _json\nprint(_json.dumps({**result, "
               "'peak_growth_mib': _rss('VmHWM') - _base}))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json_line(done.stdout)


@pytest.mark.slow
def test_hour_streams_with_bounded_memory(hour):
    """An hour at 22,050 Hz streamed to 16 kHz in 10 s blocks: the blocks equal load_audio,
    and memory stays bounded: Python allocations (tracemalloc) under 16 MiB, process peak
    RSS growth under 64 MiB (the decoded hour is 220 MiB)."""
    case = BY_NAME["hour"]
    info = audio_info(hour)
    assert info.sample_rate == HOUR_RATE and info.num_samples(SR) == case.samples
    tracemalloc.start()
    try:
        n, peak_value, checksum = 0, 0.0, 0.0
        for block in iter_audio_blocks(hour, SR, block_seconds=10.0):
            n += block.size
            peak_value = max(peak_value, float(np.abs(block).max()))
            checksum += float(block.astype(np.float64).sum())
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == case.samples and case.peak[0] <= peak_value <= case.peak[1]
    assert traced_peak < 16 * 2**20, traced_peak / 2**20
    whole = load_audio(hour, SR)
    check_decoded(case, whole)
    assert checksum == pytest.approx(float(whole.astype(np.float64).sum()), abs=1e-3)
    offset = 0  # block by block, exactly
    for block in iter_audio_blocks(hour, SR, block_seconds=60.0):
        np.testing.assert_array_equal(block, whole[offset : offset + block.size])
        offset += block.size
    del whole
    measured = _peak_rss_of(f"""
from keras_dae.audio import iter_audio_blocks
list(iter_audio_blocks({str(BAD_DIR / 'rate_44k1.wav')!r}, 16000, 1.0))  # warm up
# --- measure ---
n = 0
for block in iter_audio_blocks({str(hour)!r}, 16000, block_seconds=10.0):
    n += block.size
result = {{"samples": n}}
""")
    print(f"hour streamed: peak RSS growth {measured['peak_growth_mib']:.1f} MiB, "
          f"tracemalloc peak {traced_peak / 2**20:.1f} MiB")
    assert measured["samples"] == case.samples
    assert measured["peak_growth_mib"] < 64, measured


@pytest.mark.slow
@pytest.mark.usefixtures("no_network")
def test_hour_in_a_dataset_trains_and_evaluates_with_bounded_memory(hour, corpus, tmp_path):
    """The loader reads the hour chunk by chunk (7,199 chunks indexed, a few batches read);
    evaluation streams it (a score from all its chunks), in a subprocess whose peak RSS
    growth is measured."""
    good = corpus["tenth_second"]
    dataset = ClipDataset([hour, good], np.eye(2, dtype=np.float32), ["hour", "short"],
                          ["", ""], ["hour", "short"])
    loader = ChunkLoader(dataset, SR, batch_size=32, seed=0, cache_mb=8)
    assert loader.n_items == 7199 + 1 and loader.skipped == {}
    tracemalloc.start()
    try:
        for i in range(5):
            x, _ = loader[i]
            assert x.shape == (32, SR) and np.isfinite(x).all()
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert traced_peak < 32 * 2**20, traced_peak / 2**20
    six_minutes = tmp_path / "six_minutes.wav"
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_bad_audio
    finally:
        sys.path.pop(0)
    make_bad_audio.write_long_clip(six_minutes, 360.0, HOUR_RATE)
    growth = {}
    for name, long_clip in (("six minutes", six_minutes), ("hour", hour)):
        measured = _peak_rss_of(f"""
import numpy as np
from keras_dae import training, zoo
from keras_dae.data import ClipDataset
model = zoo.load("diverse_tiny", weights=None, num_classes=2)
model.predict(np.zeros((64, 16000), "float32"), batch_size=64, verbose=0)  # warm up
dataset = ClipDataset([{str(long_clip)!r}, {str(good)!r}], np.eye(2, dtype=np.float32),
                      ["a", "b"], ["", ""], ["long", "short"])
# --- measure ---
scores, kept, skipped = training.predict_clips(model, dataset, 16000)
result = {{"kept": kept.tolist(), "finite": bool(np.isfinite(scores["fused"]).all()),
          "skipped": skipped}}
""")
        assert measured["kept"] == [0, 1] and measured["finite"] and not measured["skipped"]
        growth[name] = measured["peak_growth_mib"]
    print(f"evaluated: peak RSS growth {growth['six minutes']:.1f} MiB for six minutes, "
          f"{growth['hour']:.1f} MiB for the hour (decoded whole, the hour is 220 MiB and its "
          "chunks 440 MiB)")
    # Bounded: ten times the audio does not mean ten times the memory. The peak wobbles with
    # the allocator (JAX's more than the others': runs 70-140 MiB apart on a busy 2-core
    # machine, flat in between), far below the 660 MiB that holding the hour and its chunks
    # would add.
    assert growth["hour"] < growth["six minutes"] + 192, growth
    assert growth["hour"] < 440, growth


@pytest.mark.one_backend
def test_rss_helper_sees_allocations():
    """The RSS measurement used by the slow tests does see a 100 MiB allocation."""
    measured = _peak_rss_of("""
import numpy as np
# --- measure ---
x = np.ones(100 * 2**20 // 8)
result = {}
""")
    assert 90 < measured["peak_growth_mib"] < 200, measured



# ---------------------------------------------------------------------------------------------
# predict, embed and the Python API over the same corpus


@pytest.fixture(scope="module")
def tagger(preset):
    from keras_dae.inference import Tagger

    return Tagger(str(preset))


@pytest.mark.one_backend
@pytest.mark.parametrize("case", EVERY, ids=lambda c: c.name)
def test_python_api_on_each_file(case, corpus, tagger):
    """`Tagger.tag`: an ok file is tagged over its decoded length; a bad one raises a
    one-line `AudioDecodeError` naming it."""
    from keras_dae.audio import AudioDecodeError

    skip_if_privileged(case)
    path = corpus[case.name]
    if case.ok:
        result = tagger.tag(path, timestamps=True)
        assert result.duration == pytest.approx(case.samples / SR, abs=1e-3)
        assert all(np.isfinite(s.score) for s in result.labels)
        assert len(result.per_second) == max(1, int(np.ceil(case.samples / SR)))
    else:
        with pytest.raises(AudioDecodeError) as error:
            tagger.tag(path)
        check_refusal(case, path, str(error.value))


def for_commands(case):
    """predict and embed take directories too: a directory named like a file is searched, and
    refused for holding no audio."""
    if case.name == "directory":
        return dataclasses.replace(case, refused="no audio files in this directory")
    return case


@pytest.mark.one_backend
@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("case", [c for c in EVERY if not c.ok], ids=lambda c: c.name)
def test_predict_and_embed_refuse_a_single_bad_file(case, corpus, preset, tmp_path, capsys):
    skip_if_privileged(case)
    path = corpus[case.name]
    case = for_commands(case)
    assert cli_main(["predict", str(path), "--model", str(preset)]) == 2
    check_refusal(case, path, one_line_error(capsys.readouterr().err))
    out = tmp_path / "e.npz"
    assert cli_main(["embed", str(path), "--model", str(preset), "--out", str(out)]) == 2
    check_refusal(case, path, one_line_error(capsys.readouterr().err))
    assert not out.exists()


@pytest.mark.one_backend
@pytest.mark.usefixtures("no_network")
def test_predict_and_embed_over_the_whole_corpus(corpus, preset, tmp_path, capsys):
    """A batch of every file: the good ones are tagged and embedded, the bad ones reported,
    counted and skipped, and the summary says how many and why."""
    paths = [str(corpus[c.name]) for c in FAST]
    good = [c for c in FAST if c.ok]
    bad = [c for c in FAST if not c.ok]
    assert cli_main(["predict", *paths, "--model", str(preset), "--json"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    tagged = {r["path"] for r in records if "labels" in r}
    failed = {r["path"]: r["error"] for r in records if "error" in r}
    assert tagged == {str(corpus[c.name]) for c in good}
    assert set(failed) == {str(corpus[c.name]) for c in bad}
    for case in bad:
        check_refusal(for_commands(case), corpus[case.name], failed[str(corpus[case.name])])
    assert f"skipped {len(bad)}" in captured.err
    out = tmp_path / "corpus.npz"
    assert cli_main(["embed", *paths, "--model", str(preset), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {len(bad)}" in captured.err + captured.out
    with np.load(out) as saved:
        assert saved["fused"].shape[0] == len(good) and np.isfinite(saved["fused"]).all()
