"""Streaming (keras_dae.streaming): blocks of any size and rate in, onsets and offsets out,
equal to the offline events, with memory that does not grow with the stream."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_recording

from keras_dae.events import EventOptions, detect_events
from keras_dae.streaming import StreamTagger
from keras_dae.validation import InputError

SR = 16000


def as_events(updates):
    """`(onset, offset, label, score)` tuples from a stream's updates."""
    open_, done = {}, []
    for u in updates:
        if u.kind == "onset":
            open_[u.label] = u.time
        else:
            done.append((open_.pop(u.label), u.time, u.label, u.score))
    assert not open_
    return sorted(done, key=lambda e: (e[0], e[2]))


@pytest.fixture(scope="module")
def tagger():
    from keras_dae.inference import Tagger

    return Tagger("diverse_sampled15", hop_seconds=0.25, batch_size=8)


@pytest.mark.one_backend  # numpy over the model's outputs, whose backends agree (cross-backend)
def test_stream_events_equal_offline_events_at_any_block_size_and_rate(tagger):
    """Speech then a guitar chord, cut to lie on the window grid, fed in blocks of 0.1 s at
    44.1 kHz and of 1.3 s at 16 kHz: the events of `detect_events` on the whole recording
    (thresholds are compared to within the resamplers' differences: same labels, edges)."""
    speech = load_recording("speech_front_center.wav")
    from keras_dae.audio import load_audio
    from keras_dae.data import demo_clips

    guitar = load_audio(demo_clips()[1], SR)
    audio = np.concatenate([speech, guitar])
    n = tagger.chunk_samples + (len(audio) - tagger.chunk_samples) // 4000 * 4000
    audio = audio[:n]
    options = EventOptions(on=0.5, off=0.3).thresholds_only()  # what a stream applies
    result = tagger.tag(audio, top_k=0)
    times = result.chunk_starts + 0.5
    offline = detect_events(times, result.chunk_scores["fused"], tagger.class_names,
                            result.duration, options)
    expected = [(e.onset, e.offset, e.label) for e in offline]
    assert {label for *_, label in expected} >= {"Speech", "Guitar"}

    stream = StreamTagger(tagger, options=options)
    updates = []
    for begin in range(0, n, 20800):
        updates += stream.feed(audio[begin:begin + 20800])
    updates += stream.close()
    got = as_events(updates)
    assert [(a, b, c) for a, b, c, _ in got] == [pytest.approx(e) for e in expected]
    np.testing.assert_allclose([s for *_, s in got], [e.score for e in offline], atol=1e-5)

    import soxr

    at_44k = soxr.resample(audio, SR, 44100, quality="HQ")
    stream = StreamTagger(tagger, input_rate=44100, options=options)
    updates = []
    for begin in range(0, len(at_44k), 4410):
        updates += stream.feed(at_44k[begin:begin + 4410])
    updates += stream.close()
    assert stream.windows == len(times)  # the resampler's last samples complete the last one
    assert [e[2] for e in as_events(updates)] == [e[2] for e in expected]


@pytest.mark.one_backend
def test_stream_applies_the_offline_rules_with_their_delay(tagger):
    """With the default rules (median filter, hysteresis, gaps, minimum duration), a stream's
    events equal `detect_events` on the whole recording, and each onset comes only once the
    rules cannot change it."""
    from keras_dae.audio import load_audio
    from keras_dae.data import demo_clips

    audio = np.concatenate([load_recording("speech_front_center.wav"),
                            load_audio(demo_clips()[1], SR), np.zeros(SR, np.float32)])
    n = tagger.chunk_samples + (len(audio) - tagger.chunk_samples) // 4000 * 4000
    audio = audio[:n]
    result = tagger.tag(audio, top_k=0)
    options = EventOptions()
    offline = detect_events(result.chunk_starts + 0.5, result.chunk_scores["fused"],
                            tagger.class_names, result.duration, options)
    assert offline

    def streamed(options):
        stream, updates = StreamTagger(tagger, options=options), []
        for begin in range(0, n, 1600):
            updates += [(u, stream.seconds) for u in stream.feed(audio[begin:begin + 1600])]
        return updates + [(u, stream.seconds) for u in stream.close()]

    full = streamed(options)
    got = as_events([u for u, _ in full])
    assert [(a, b, c) for a, b, c, _ in got] == [
        pytest.approx((e.onset, e.offset, e.label)) for e in offline]
    np.testing.assert_allclose([s for *_, s in got], [e.score for e in offline], atol=1e-5)
    # An onset is reported once the event has lasted the minimum duration, never before.
    assert all(at >= u.time + options.min_duration for u, at in full if u.kind == "onset")


@pytest.mark.one_backend
def test_event_tracker_equals_detect_events_on_random_scores():
    """`EventTracker`, fed windows a few at a time, against `detect_events` on them all, over
    random scores and every combination of rules (and a stream of one short window)."""
    from keras_dae.events import EventTracker

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    for trial in range(300):
        n = int(rng.integers(1, 50))
        scores = (np.abs(np.cumsum(rng.normal(0, 0.25, (n, 3)), axis=0)) % 1.0
                  if trial % 2 else rng.random((n, 3)))
        options = EventOptions(on=float(rng.choice([0.3, 0.5, 0.7])),
                               off=None if trial % 3 else 0.2,
                               median_seconds=float(rng.choice([0, 0.5, 1.0, 1.5])),
                               min_gap=float(rng.choice([0, 0.5, 1.0])),
                               min_duration=float(rng.choice([0, 0.5, 1.0])))
        if n > 1:
            times, duration = np.arange(n) * 0.25 + 0.5, (n - 1) * 0.25 + 1.0
        else:
            duration = float(rng.uniform(0.1, 1.0))
            times = np.array([duration / 2])
        expected = [(e.onset, e.offset, e.label, e.score)
                    for e in detect_events(times, scores, labels, duration, options)]
        tracker = EventTracker(3, 0.25, 1.0, *options.thresholds(labels), options)
        updates, i = [], 0
        while i < n:
            step = int(rng.integers(1, 5))
            updates += tracker.push(scores[i:i + step])
            i += step
        updates += tracker.close(duration)
        open_, got = {}, []
        for kind, time, k, score in updates:
            if kind == "onset":
                open_[k] = time
            else:
                got.append((open_.pop(k), time, labels[k], score))
        assert not open_
        got.sort(key=lambda e: (e[0], e[2]))
        assert got == [pytest.approx(e) for e in expected], (trial, options)


class NumpyTagger:
    """A stand-in model for the stream's bookkeeping: a window's score is its peak."""

    sample_rate, chunk_samples, hop_seconds, batch_size = SR, SR, 0.25, 16
    class_names = ("loud",)

    def forward(self, windows):
        return {"fused": np.abs(windows).max(axis=1, keepdims=True)}


@pytest.mark.one_backend
def test_an_hour_streams_with_bounded_memory_and_events_in_place():
    """An hour in 1 s blocks, a 2 s burst every 10 minutes: six onsets and offsets where the
    bursts are, and a buffer that never holds more than a window and a block."""
    stream = StreamTagger(NumpyTagger(), options=EventOptions(on=0.5).thresholds_only())
    updates, largest = [], 0
    for second in range(3600):
        block = np.full(SR, 0.01, np.float32)
        if second % 600 in (300, 301):
            block[:] = 0.9
        updates += stream.feed(block)
        largest = max(largest, stream._buffer.size)
    updates += stream.close()
    events = as_events(updates)
    assert len(events) == 6
    for i, (onset, offset, _, score) in enumerate(events):
        # windows overlapping the burst: from 299.0 s to 302.0 s of each 10 minutes
        assert onset == pytest.approx(600 * i + 299.0 + 0.625)
        assert offset == pytest.approx(600 * i + 302.0 + 0.375)
        assert score == pytest.approx(0.9)
    assert largest <= SR + SR
    assert stream.seconds == 3600


@pytest.mark.one_backend
def test_short_streams_and_refusals():
    stream = StreamTagger(NumpyTagger(), options=EventOptions().thresholds_only())
    assert stream.feed(np.full(1600, 0.9, np.float32)) == []  # no full window yet
    (onset, offset) = stream.close()
    assert (onset.kind, onset.time, offset.kind, offset.time) == ("onset", 0.0, "offset", 0.1)
    with pytest.raises(InputError, match="closed"):
        stream.feed(np.zeros(10, np.float32))
    # With a minimum duration of 0.5 s, 0.1 s is shorter: no event.
    stream = StreamTagger(NumpyTagger(), options=EventOptions(min_duration=0.5))
    assert stream.feed(np.full(1600, 0.9, np.float32)) == [] and stream.close() == []
    with pytest.raises(ValueError, match="NaN"):
        StreamTagger(NumpyTagger()).feed(np.array([0.1, np.nan], np.float32))


# -- audio on a byte stream (keras_dae.pcm_input) and `keras-dae predict --stream -` ----------


class Trickle:
    """A pipe that hands out at most `step` bytes a read, as a slow source does."""

    def __init__(self, data: bytes, step: int = 1000):
        import io

        self._io, self.step = io.BytesIO(data), step

    def read(self, n=-1):
        return self._io.read(self.step if n < 0 else min(n, self.step))

    read1 = read


def wav_bytes(audio, rate, subtype="PCM_16", channels=1):
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    data = np.repeat(audio[:, None], channels, axis=1) if channels > 1 else audio
    sf.write(buffer, data, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


@pytest.mark.one_backend
@pytest.mark.parametrize("subtype,channels,atol", [("PCM_16", 1, 1 / 32768), ("FLOAT", 2, 1e-7),
                                                   ("PCM_32", 2, 1e-7), ("PCM_U8", 1, 1 / 128)])
def test_wav_on_a_stream_reads_as_the_file_does(subtype, channels, atol):
    """A WAV written by libsndfile, read through a pipe 1,000 bytes at a time: its format from
    the header, the samples those of `soundfile.read` (downmixed), in blocks of whole frames."""
    import io

    import soundfile as sf

    from keras_dae.pcm_input import pcm_blocks

    audio = load_recording("speech_front_center.wav")[:20000] * 0.9
    data = wav_bytes(audio, 22050, subtype, channels)
    fmt, blocks = pcm_blocks(Trickle(data))
    assert (fmt.rate, fmt.channels) == (22050, channels)
    blocks = list(blocks)
    assert len(blocks) > 10 and all(b.ndim == 1 and b.dtype == np.float32 for b in blocks)
    expected, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    np.testing.assert_allclose(np.concatenate(blocks), expected.mean(axis=1), atol=atol)


@pytest.mark.one_backend
def test_raw_pcm_needs_its_rate_and_keeps_whole_frames():
    from keras_dae.pcm_input import PcmFormat, pcm_blocks

    rng = np.random.default_rng(0)
    frames = rng.integers(-30000, 30000, size=(999, 2)).astype("<i2")
    data = frames.tobytes() + b"\x01"  # a partial frame at the end is dropped
    with pytest.raises(InputError, match="standard input is not WAV: .*--rate"):
        pcm_blocks(Trickle(data))
    fmt, blocks = pcm_blocks(Trickle(data, step=333), PcmFormat(8000, 2, "s16le"))
    out = np.concatenate(list(blocks))
    np.testing.assert_allclose(out, frames.mean(axis=1) / 32768, atol=1e-6)
    with pytest.raises(InputError, match="sample format"):
        PcmFormat(16000, 1, "s24be")
    with pytest.raises(InputError, match="ended inside its WAV header"):
        pcm_blocks(Trickle(b"RIFF\x00\x00\x00\x00WAVEfmt "))
    with pytest.raises(InputError, match="format 2 with 4-bit"):  # ADPCM
        header = b"RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + np.array(
            [2, 1], "<u2").tobytes() + np.array([8000, 4000], "<u4").tobytes() + np.array(
            [1, 4], "<u2").tobytes()
        pcm_blocks(Trickle(header + b"data\x00\x00\x00\x00"))


@pytest.mark.one_backend
def test_predict_stream_prints_the_stream_events_as_they_come(tagger, monkeypatch, capsys):
    """`keras-dae predict --stream -` on speech then a guitar piped as WAV at 44.1 kHz, and
    as raw stereo s16le: the JSON lines are StreamTagger's updates on the same audio; text
    lines name the onsets and offsets; a file argument is refused."""
    import io
    import json
    import types

    from keras_dae.audio import load_audio
    from keras_dae.cli import main
    from keras_dae.data import demo_clips

    audio = np.concatenate([load_audio(conftest_path("speech_front_center.wav"), 44100),
                            load_audio(demo_clips()[1], 44100)]) * 0.9
    stream = StreamTagger(tagger, input_rate=44100, options=EventOptions(on=0.5))
    expected = [u.to_dict() for u in stream.run([audio])]
    assert {u["label"] for u in expected} >= {"Speech", "Guitar"}

    pcm = (np.repeat(audio[:, None], 2, axis=1) * 32767).astype("<i2").tobytes()
    runs = [(wav_bytes(audio, 44100, "FLOAT"), []),
            (pcm, ["--rate", "44100", "--channels", "2"])]
    for data, flags in runs:
        monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=Trickle(data, 8192)))
        assert main(["predict", "--stream", "-", "--model", "diverse_sampled15", "--json",
                     "--batch-size", "8", "--on", "0.5", *flags]) == 0
        got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(u["kind"], u["label"]) for u in got] == [(u["kind"], u["label"])
                                                          for u in expected]
        np.testing.assert_allclose([u["time"] for u in got], [u["time"] for u in expected],
                                   atol=1e-3)
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(runs[0][0])))
    assert main(["predict", "--stream", "-", "--model", "diverse_sampled15"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(" onset   Speech (" in line for line in lines)
    assert any(" offset  Guitar (" in line for line in lines)
    assert main(["predict", "--stream", "a.wav"]) == 2
    assert "give '-' as the only input" in capsys.readouterr().err


def conftest_path(name):
    from conftest import DATA_DIR

    return DATA_DIR / name
