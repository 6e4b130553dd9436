"""Tagging and embedding: `keras_dae.inference.Tagger` and `keras-dae predict` / `embed`."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import DATA_DIR, TINY_LABELS

from keras_dae import cli, zoo
from keras_dae.audio import AudioDecodeError, load_audio
from keras_dae.data.chunking import chunk_count, chunk_waveform
from keras_dae.inference import TagFailure, Tagger, TagResult

SR = 16000
FILES = [DATA_DIR / "speech_front_center.wav", DATA_DIR / "camera_shutter.oga",
         DATA_DIR / "phone_incoming_call.oga"]


@pytest.fixture(scope="module")
def tagger(tiny_preset) -> Tagger:
    return Tagger(tiny_preset, batch_size=8)


@pytest.fixture(scope="module")
def model(tiny_preset):
    return zoo.load(tiny_preset)


def _reference(model, waveform):
    """Clip scores and embedding the evaluation path computes: all chunks, mean."""
    out = model.predict(chunk_waveform(waveform, SR), verbose=0)
    return {name: np.mean(value, axis=0) for name, value in out.items()}


def test_file_scores_are_the_mean_of_chunk_scores(tagger, model):
    for path in FILES:
        result = tagger.tag(path, top_k=3)
        expected = _reference(model, load_audio(path, SR))
        for name in ("fused", *tagger.stream_names):
            np.testing.assert_allclose(result.scores[name], expected[name], atol=2e-5)
        np.testing.assert_allclose(result.embedding, expected["embedding"], atol=2e-5)
        assert result.embedding.shape == (tagger.embedding_size,)
        assert result.embedding.dtype == np.float32
        size = tagger.embedding_size // len(tagger.stream_names)
        for i, name in enumerate(tagger.stream_names):
            np.testing.assert_array_equal(result.stream_embeddings[name],
                                          result.embedding[i * size:(i + 1) * size])
        # The labels are the top 3 fused scores, best first, with the preset's names and ids.
        order = np.argsort(-result.scores["fused"])[:3]
        assert [x.label for x in result.labels] == [TINY_LABELS[i] for i in order]
        assert [x.score for x in result.labels] == pytest.approx(result.scores["fused"][order])
        assert result.source == str(path)
        assert result.duration == pytest.approx(len(load_audio(path, SR)) / SR)


def test_arrays_at_any_rate_tag_like_files(tagger):
    path = FILES[0]
    from_file = tagger.tag(path)
    from_array = tagger.tag(load_audio(path, SR))
    np.testing.assert_allclose(from_array.scores["fused"], from_file.scores["fused"], atol=1e-6)
    assert from_array.source == "<array>"
    # The same recording at 48 kHz (its own rate), resampled by the tagger.
    audio, rate = soundfile.read(path, dtype="float32")
    at_48k = tagger.tag(audio, sample_rate=rate)
    assert at_48k.duration == pytest.approx(from_file.duration, abs=1e-3)
    np.testing.assert_allclose(at_48k.scores["fused"], from_file.scores["fused"], atol=1e-3)
    # 16-bit PCM integers are scaled to [-1, 1].
    pcm = np.round(load_audio(path, SR) * 32767).astype(np.int16)
    np.testing.assert_allclose(tagger.tag(pcm).scores["fused"],
                               tagger.tag(pcm / np.float32(32768)).scores["fused"], atol=1e-6)
    np.testing.assert_array_equal(tagger.embed(path), from_file.embedding)


@pytest.mark.parametrize("n_samples", [1, 16, 8000, 16000, 16001, 27200, 48000])
def test_any_length_from_one_sample(tagger, model, n_samples):
    rng = np.random.default_rng(n_samples)
    waveform = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    result = tagger.tag(waveform, timestamps=True, top_k=2)
    assert len(result.chunk_starts) == chunk_count(n_samples, SR)
    assert result.chunk_scores["fused"].shape == (chunk_count(n_samples, SR), 10)
    assert np.all((result.scores["fused"] >= 0) & (result.scores["fused"] <= 1))
    # (A 1-sample clip tiles to a constant, whose near-silent spectra make the model touchy:
    # on PyTorch a batch of 8 and a batch of 1 differ by up to 5e-4 there.)
    np.testing.assert_allclose(result.scores["fused"], _reference(model, waveform)["fused"],
                               atol=2e-5 if n_samples > 16 else 1e-3)
    # Per-second segments tile [0, duration) without gaps; a remainder under 0.25 s joins
    # the second before it.
    segments = result.per_second
    assert segments[0].start == 0 and segments[-1].end == pytest.approx(n_samples / SR)
    for a, b in zip(segments[:-1], segments[1:], strict=True):
        assert a.end == b.start
    expected = {1: 1, 16: 1, 8000: 1, 16000: 1, 16001: 1, 27200: 2, 48000: 3}[n_samples]
    assert len(segments) == expected
    assert all(len(s.labels) == 2 for s in segments)


def test_each_second_is_scored_by_the_window_over_it(tagger):
    waveform = load_audio(FILES[2], SR)
    waveform = np.concatenate([waveform, waveform[::-1], waveform])[: int(3.5 * SR)]
    result = tagger.tag(waveform, timestamps=True, top_k=10)
    starts = list(np.round(result.chunk_starts, 6))
    assert [(s.start, s.end) for s in result.per_second] == [(0, 1), (1, 2), (2, 3), (3, 3.5)]
    for segment in result.per_second[:3]:
        chunk = starts.index(segment.start)  # the 1 s window over exactly this second
        by_label = {x.label: x.score for x in segment.labels}
        np.testing.assert_allclose([by_label[name] for name in TINY_LABELS],
                                   result.chunk_scores["fused"][chunk], rtol=1e-6)
    # The last half second: the window aligned to the clip's end.
    last = {x.label: x.score for x in result.per_second[3].labels}
    np.testing.assert_allclose([last[name] for name in TINY_LABELS],
                               result.chunk_scores["fused"][-1], rtol=1e-6)
    assert result.chunk_starts[-1] == pytest.approx(2.5)


def test_long_audio_is_scored_batch_by_batch(tiny_preset, model):
    tagger = Tagger(tiny_preset, batch_size=8)
    batches = []
    forward = tagger._pipeline.forward

    def spy(x):
        batches.append(x.shape)
        return forward(x)

    tagger._pipeline.forward = spy
    waveform = (0.05 * np.random.default_rng(1).standard_normal(40 * SR)).astype(np.float32)
    result = tagger.tag(waveform)
    assert len(result.chunk_starts) == chunk_count(len(waveform), SR) == 79
    assert max(shape[0] for shape in batches) == 8  # never more than one batch of chunks
    assert sum(shape[0] for shape in batches) == 80  # 79 chunks, the last batch padded
    np.testing.assert_allclose(result.scores["fused"], _reference(model, waveform)["fused"],
                               atol=2e-5)


def test_short_clips_share_batches_and_come_back_in_order(tiny_preset):
    tagger = Tagger(tiny_preset, batch_size=8)
    calls = []
    forward = tagger._pipeline.forward
    tagger._pipeline.forward = lambda x: calls.append(len(x)) or forward(x)
    clips = [np.full(4000 + 1000 * i, 0.01 * (i + 1), np.float32) for i in range(6)]
    results = list(tagger.tag_many(clips))
    assert calls == [8]  # six one-chunk clips, one model call (padded to 8)
    for clip, result in zip(clips, results, strict=True):
        assert result.duration == pytest.approx(len(clip) / SR)
        np.testing.assert_allclose(result.scores["fused"], tagger.tag(clip).scores["fused"],
                                   atol=1e-6)


def test_bad_inputs_are_one_line_errors_naming_them(tagger, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        tagger.tag(bad)
    with pytest.raises(AudioDecodeError, match="missing.wav: no such file"):
        tagger.tag(tmp_path / "missing.wav")
    for array, problem in [(np.zeros(0), "empty"), (np.zeros((2, 100)), "shape"),
                           (np.array([0.1, np.nan]), "NaN"), (np.array(["a"]), "dtype")]:
        with pytest.raises(ValueError, match=problem) as error:
            tagger.tag(array)
        assert "\n" not in str(error.value)
    # In a batch the bad ones are failures in their place; the others are unaffected.
    results = list(tagger.tag_many([FILES[0], bad, np.zeros(0), FILES[1]]))
    assert [type(r) for r in results] == [TagResult, TagFailure, TagFailure, TagResult]
    assert results[1].source == str(bad) and str(bad) in results[1].reason
    np.testing.assert_allclose(results[3].scores["fused"], tagger.tag(FILES[1]).scores["fused"],
                               atol=1e-6)


def test_threads_get_what_one_thread_gets(tagger):
    items = FILES * 3
    alone = [tagger.tag(item, timestamps=True) for item in items]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda item: tagger.tag(item, timestamps=True), items))
    for a, b in zip(alone, together, strict=True):
        assert a.source == b.source
        np.testing.assert_allclose(a.chunk_scores["fused"], b.chunk_scores["fused"], atol=1e-6)
        np.testing.assert_allclose(a.chunk_embeddings, b.chunk_embeddings, atol=1e-6)
        assert [s.labels[0].label for s in a.per_second] == [
            s.labels[0].label for s in b.per_second]


# -- the command line ------------------------------------------------------------------------

@pytest.fixture()
def audio_dir(tmp_path) -> Path:
    """Three real recordings (one in a subfolder), a corrupt .wav and a text file."""
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    for path in FILES[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "sub" / FILES[2].name).write_bytes(FILES[2].read_bytes())
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    (folder / "notes.txt").write_text("not audio")
    return folder


def test_predict_text(tiny_preset, capsys):
    assert cli.main(["predict", str(FILES[0]), "--model", str(tiny_preset), "--top-k", "3",
                     "--timestamps"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{FILES[0]}  (1.43 s)  ")
    assert len(lines[0].split(", ")) == 3
    assert lines[1].split()[0] == "0.0-1.0" and lines[2].split()[0] == "1.0-1.4"
    assert "Traceback" not in err


def test_predict_explain(tiny_preset, capsys):
    """--explain: a line per label with every stream's share (text), the split in JSON."""
    assert cli.main(["predict", str(FILES[0]), "--model", str(tiny_preset), "--top-k", "2",
                     "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("streams alone:" in line for line in lines[1:])
    assert cli.main(["predict", str(FILES[0]), "--model", str(tiny_preset), "--top-k", "2",
                     "--explain", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [e["label"] for e in record["explanations"]] == [x["label"] for x in record["labels"]]
    for explanation in record["explanations"]:
        assert explanation["logit"] == pytest.approx(
            explanation["bias"] + sum(explanation["contributions"].values()), abs=1e-3)


def test_predict_json_directory_skips_and_counts_bad_files(tiny_preset, audio_dir, capsys):
    code = cli.main(["predict", str(audio_dir), "--model", str(tiny_preset), "--json",
                     "--timestamps", "--top-k", "4"])
    out, err = capsys.readouterr()
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).name for r in records] == [
        "broken.wav", "camera_shutter.oga", "speech_front_center.wav",
        "phone_incoming_call.oga"]
    assert set(records[0]) == {"path", "error"} and "broken.wav" in records[0]["error"]
    for record in records[1:]:
        assert set(record) == {"path", "duration", "labels", "per_second"}
        assert record["duration"] > 0
        scores = [label["score"] for label in record["labels"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
        assert all(set(label) == {"label", "mid", "score"} and label["label"] in TINY_LABELS
                   and 0 <= label["score"] <= 1 for label in record["labels"])
        seconds = record["per_second"]
        assert seconds[0]["start"] == 0 and seconds[-1]["end"] == record["duration"]
        assert all(len(s["labels"]) == 4 for s in seconds)
    assert "skipped" in err and "broken.wav" in err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("tagged 3 of 4 files") and "skipped 1: 1 not readable" in summary
    assert "Traceback" not in err


def test_predict_refuses_a_single_bad_file(tiny_preset, audio_dir, capsys):
    code = cli.main(["predict", str(audio_dir / "broken.wav"), "--model", str(tiny_preset)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and err.startswith("error: ")
    assert "broken.wav" in err and "Traceback" not in err


def test_a_refusal_in_a_fresh_process_exits_non_zero_without_traceback(tmp_path):
    missing = tmp_path / "missing.flac"
    run = subprocess.run([sys.executable, "-m", "keras_dae.cli", "predict", str(missing)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {missing}: no such file"
    assert run.stdout == ""


def test_debug_shows_the_traceback(tmp_path, capsys):
    args = ["predict", str(FILES[0]), "--model", str(tmp_path / "no_such_preset")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_preset" in err and "Traceback" not in err
    assert cli.main([*args, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "PresetError" in err


@pytest.mark.one_backend
def test_embed_writes_fused_and_stream_embeddings(tiny_preset, audio_dir, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    code = cli.main(["embed", str(audio_dir), str(FILES[0]), "--out", str(out), "--model",
                     str(tiny_preset)])
    _, err = capsys.readouterr()
    assert code == 0
    assert "skipped 1" in err and "broken.wav" in err
    data = np.load(out)
    tagger = Tagger(tiny_preset)
    assert [Path(p).name for p in data["paths"]] == [
        "camera_shutter.oga", "speech_front_center.wav", "phone_incoming_call.oga",
        "speech_front_center.wav"]
    assert data["fused"].shape == (4, tagger.embedding_size)
    assert data["fused"].dtype == np.float32
    assert list(data["stream_names"]) == list(tagger.stream_names)
    size = tagger.embedding_size // 4
    for i, name in enumerate(tagger.stream_names):
        np.testing.assert_array_equal(data[name], data["fused"][:, i * size:(i + 1) * size])
    np.testing.assert_allclose(data["fused"][1], tagger.embed(FILES[0]), atol=1e-6)
    assert list(data["skipped_paths"]) == [str(audio_dir / "broken.wav")]
    assert data["durations"][1] == pytest.approx(1.428, abs=1e-3)


def test_embed_writes_nothing_when_nothing_decodes(tiny_preset, audio_dir, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    code = cli.main(["embed", str(audio_dir / "broken.wav"), "--out", str(out), "--model",
                     str(tiny_preset)])
    assert code == 2 and not out.exists()
    assert "broken.wav" in capsys.readouterr().err
    assert not list(tmp_path.glob(".emb.npz*"))  # no temporary file left behind


@pytest.mark.slow
def test_an_hour_of_audio(tiny_preset):
    """One hour at 16 kHz: scored chunk batch by chunk batch, the result as for short clips."""
    tagger = Tagger(tiny_preset, batch_size=64)
    hour = np.tile(load_audio(FILES[0], SR), 2600)[: 3600 * SR]
    result = tagger.tag(hour, timestamps=True, top_k=1)
    assert len(result.chunk_starts) == chunk_count(len(hour), SR)
    assert len(result.per_second) == 3600
    assert np.isfinite(result.chunk_scores["fused"]).all()


def test_one_call_from_file_or_array(tiny_preset, tagger):
    import keras_dae

    result = keras_dae.tag(FILES[0], model=tiny_preset, top_k=2)
    assert isinstance(result, TagResult) and len(result.labels) == 2
    np.testing.assert_allclose(result.scores["fused"], tagger.tag(FILES[0]).scores["fused"],
                               atol=1e-6)
    vector = keras_dae.embed(load_audio(FILES[0], SR), model=str(tiny_preset))
    np.testing.assert_allclose(vector, result.embedding, atol=1e-6)


def test_progress_bar_on_terminals_only(capsys):
    from keras_dae.tag_files import ProgressBar

    assert not ProgressBar(3).enabled  # stderr is captured here, not a terminal
    progress = ProgressBar(3, enabled=True)
    for name in ("a.wav", "b.wav", "dir/c.wav"):
        progress.step(name)
    progress.clear()
    err = capsys.readouterr().err
    assert "1/3 files  a.wav" in err and f"[{'#' * 30}] 3/3 files  c.wav" in err
    assert err.endswith("\r\033[K")  # the line is cleared for what follows
