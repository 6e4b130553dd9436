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
    options = EventOptions(on=0.5, off=0.3)
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
    assert [e[2] for e in as_events(updates)] == [e[2] for e in expected]


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
    stream = StreamTagger(NumpyTagger(), options=EventOptions(on=0.5))
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
    stream = StreamTagger(NumpyTagger())
    assert stream.feed(np.full(1600, 0.9, np.float32)) == []  # no full window yet
    (onset, offset) = stream.close()
    assert (onset.kind, onset.time, offset.kind, offset.time) == ("onset", 0.0, "offset", 0.1)
    with pytest.raises(InputError, match="closed"):
        stream.feed(np.zeros(10, np.float32))
    with pytest.raises(InputError, match="need the future"):
        StreamTagger(NumpyTagger(), options=EventOptions(min_gap=1))
    with pytest.raises(ValueError, match="NaN"):
        StreamTagger(NumpyTagger()).feed(np.array([0.1, np.nan], np.float32))
