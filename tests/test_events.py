"""Events from scores over time (keras_dae.events): hysteresis, median filtering, gap
merging, minimum duration, one event per occurrence, and refusals.

The score tracks are written by hand, so each expected onset and offset follows from the
rules in the module's docstring; `Tagger.events` on a real recording is tested at the end.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from keras_dae.events import Event, EventOptions, detect_events, window_bounds
from keras_dae.validation import InputError

HOP = 0.25
# The rules with nothing but a 0.5 threshold, so each test turns on the rule it is about.
RAW = EventOptions(on=0.5, off=None, median_seconds=0.0, min_gap=0.0, min_duration=0.0,
                   default=0.5)


def raw(**rules) -> EventOptions:
    return dataclasses.replace(RAW, **rules)


def track(*values, labels=("a",)):
    """Window centres every HOP from 0.5 s (1 s windows), scores of one or more classes."""
    scores = np.array(values, np.float64).reshape(len(values), -1)
    times = 0.5 + HOP * np.arange(len(values))
    duration = float(times[-1] + 0.5)
    return times, scores, list(labels), duration


@pytest.mark.one_backend
def test_window_bounds_are_midpoints_from_zero_to_the_end():
    np.testing.assert_allclose(window_bounds([0.5, 0.75, 1.0], 1.5), [0, 0.625, 0.875, 1.5])
    # an end-aligned last window, closer to its predecessor than the hop
    np.testing.assert_allclose(window_bounds([0.5, 0.75, 0.85], 1.35),
                               [0, 0.625, 0.8, 1.35])


@pytest.mark.one_backend
def test_one_event_per_occurrence_with_edges_at_the_window_midpoints():
    times, scores, labels, duration = track(0.1, 0.7, 0.9, 0.8, 0.2, 0.1)
    (event,) = detect_events(times, scores, labels, duration, RAW)
    assert event == Event(onset=0.625, offset=1.375, label="a", score=0.9)


@pytest.mark.one_backend
def test_hysteresis_keeps_a_wavering_event_whole():
    values = (0.1, 0.6, 0.45, 0.55, 0.42, 0.6, 0.1)
    times, scores, labels, duration = track(*values)
    assert len(detect_events(times, scores, labels, duration, raw(on=0.5))) == 3
    (event,) = detect_events(times, scores, labels, duration, raw(on=0.5, off=0.4))
    assert (event.onset, event.offset) == (0.625, 1.875)
    # an event starts where `on` is reached, not where the score first passes `off`
    times, scores, labels, duration = track(0.1, 0.45, 0.6, 0.1)
    (event,) = detect_events(times, scores, labels, duration, raw(on=0.5, off=0.4))
    assert event.onset == 0.875


@pytest.mark.one_backend
def test_median_filter_removes_blips_and_keeps_long_events():
    values = (0.1, 0.9, 0.1, 0.1, 0.8, 0.8, 0.8, 0.8, 0.1, 0.1)
    times, scores, labels, duration = track(*values)
    assert len(detect_events(times, scores, labels, duration, RAW)) == 2
    (event,) = detect_events(times, scores, labels, duration, raw(median_seconds=0.75))
    assert (event.onset, event.offset) == (1.375, 2.375)


@pytest.mark.one_backend
def test_short_gaps_close_and_short_events_go():
    values = (0.9, 0.9, 0.1, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1)
    times, scores, labels, duration = track(*values)
    assert len(detect_events(times, scores, labels, duration, RAW)) == 3
    merged = detect_events(times, scores, labels, duration, raw(min_gap=0.3))
    assert [(e.onset, e.offset) for e in merged] == [(0.0, 1.625), (2.375, 2.625)]
    kept = detect_events(times, scores, labels, duration,
                         raw(min_gap=0.3, min_duration=0.5))
    assert [(e.onset, e.offset) for e in kept] == [(0.0, 1.625)]


@pytest.mark.one_backend
def test_per_class_thresholds_and_sorting():
    times, scores, labels, duration = track((0.6, 0.3), (0.6, 0.35), (0.1, 0.3),
                                            labels=("dog", "bird"))
    assert [e.label for e in detect_events(times, scores, labels, duration, RAW)] == ["dog"]
    for on in ({"bird": 0.3}, [0.5, 0.3]):
        events = detect_events(times, scores, labels, duration, raw(on=on))
        assert [(e.label, e.onset) for e in events] == [("bird", 0.0), ("dog", 0.0)]


@pytest.mark.one_backend
def test_the_defaults_are_those_chosen_on_validation_soundscapes():
    """benchmarks/event_detection.py chose the rules on the validation soundscapes; the
    defaults must be what it chose (rerun it and update both if the shipped preset changes)."""
    chosen = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" /
                         "event_detection.json").read_text())["tuned"]
    defaults = EventOptions()
    assert defaults.on == chosen["on"] == defaults.default
    assert (defaults.on if defaults.off is None else defaults.off) == chosen["off"]
    for rule in ("median_seconds", "min_gap", "min_duration"):
        assert getattr(defaults, rule) == chosen[rule]
    assert EventOptions().thresholds_only() == raw(on=chosen["on"], off=chosen["off"],
                                                   default=chosen["on"])


@pytest.mark.one_backend
def test_bad_options_and_scores_are_refused():
    times, scores, labels, duration = track(0.1, 0.9)
    with pytest.raises(InputError, match="off must not exceed on"):
        detect_events(times, scores, labels, duration, raw(on=0.4, off=0.5))
    with pytest.raises(InputError, match="unknown classes"):
        EventOptions(on={"cat": 0.5}).thresholds(labels)
    with pytest.raises(InputError, match="min_gap"):
        EventOptions(min_gap=-1)
    with pytest.raises(InputError, match="NaN"):
        detect_events(times, np.array([[np.nan], [0.5]]), labels, duration, RAW)
    with pytest.raises(InputError, match="n_windows"):
        detect_events(times, scores[:1], labels, duration, RAW)
    with pytest.raises(InputError, match="increase"):
        detect_events(times[::-1], scores, labels, duration, RAW)


@pytest.mark.one_backend  # numpy over the model's outputs, whose backends agree (cross-backend)
def test_tagger_events_on_a_real_recording():
    """The shipped preset on Czech speech, windows every 0.25 s: one Speech event covering
    most of the clip, and every event inside the clip."""
    from conftest import load_recording

    from keras_dae.inference import Tagger

    tagger = Tagger("diverse_sampled15", hop_seconds=0.25, batch_size=16)
    waveform = load_recording("speech_front_center.wav")
    duration = len(waveform) / 16000
    events = tagger.events(waveform, options=raw(off=0.3, min_gap=0.5))
    speech = [e for e in events if e.label == "Speech"]
    assert len(speech) == 1 and speech[0].offset - speech[0].onset > 0.5 * duration
    assert all(0 <= e.onset < e.offset <= duration + 1e-9 for e in events)


@pytest.mark.one_backend
def test_predict_events_writes_audacity_tracks_and_a_dcase_table(tmp_path, capsys):
    """`predict --events` on two bundled clips: events in the JSON, an Audacity label track
    per file, and one DCASE/DESED TSV (header, one row per event)."""
    from keras_dae import cli
    from keras_dae.data import demo_clips

    clips = [str(path) for path in demo_clips()[:2]]
    code = cli.main(["predict", *clips, "--json", "--events", "--on", "0.4", "--off", "0.3",
                     "--audacity", str(tmp_path / "labels"),
                     "--events-tsv", str(tmp_path / "events.tsv")])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == clips
    rows = (tmp_path / "events.tsv").read_text().splitlines()
    assert rows[0] == "filename\tonset\toffset\tevent_label\tscore"
    assert len(rows) - 1 == sum(len(r["events"]) for r in records) > 0
    for record in records:
        track = (tmp_path / "labels" / f"{Path(record['path']).stem}.txt").read_text()
        lines = [line.split("\t") for line in track.splitlines()]
        assert [(float(a), float(b), c) for a, b, c in lines] == [
            (pytest.approx(e["onset"], abs=1e-3), pytest.approx(e["offset"], abs=1e-3),
             e["label"]) for e in record["events"]]
        assert all(0 <= e["onset"] < e["offset"] <= record["duration"] + 1e-3
                   for e in record["events"])
