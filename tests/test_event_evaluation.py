"""Strong labels: Scaper soundscapes from the sampled dataset (scripts/build_soundscapes.py),
and event-based F1, segment-based F1 and PSDS through sed_scores_eval
(keras_dae.event_evaluation, `keras-dae evaluate --events`).

Builds the --small sampled dataset and --small soundscapes (4 val, 4 eval) once.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from keras_dae.event_evaluation import (
    Timeline,
    evaluate_events,
    merge_overlaps,
    read_strong_labels,
    score_timelines,
)
from keras_dae.events import EventOptions
from keras_dae.validation import InputError

# Decoding, Scaper and the metrics do not depend on the backend; the model's scores do, and
# tests/test_cross_backend.py holds the backends to the same scores. Run once, in PyTorch's
# run (its eager steps cost no tracing).
pytestmark = pytest.mark.one_backend

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def run(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=timeout)


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("events")
    built = run(SCRIPTS / "build_sampled_dataset.py", "--out", root / "clips", "--small",
                "--seed", "0")
    assert built.returncode == 0, built.stderr
    built = run(SCRIPTS / "build_soundscapes.py", "--data", root / "clips", "--out",
                root / "soundscapes", "--small", "--seed", "0")
    assert built.returncode == 0, built.stderr
    return root / "soundscapes"


def rows(path: Path, delimiter="\t") -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def test_layout_audio_and_annotations(soundscapes):
    for split in ("val", "eval"):
        table = rows(soundscapes / "metadata" / f"{split}.tsv")
        durations = {r["filename"]: float(r["duration"])
                     for r in rows(soundscapes / "metadata" / f"{split}_durations.tsv")}
        files = sorted((soundscapes / "audio" / split).glob("*.wav"))
        assert len(files) == 4 and set(durations) == {f.name for f in files}
        for path in files:
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.duration == pytest.approx(10.0) == durations[path.name]
            assert np.abs(sf.read(path)[0]).max() > 0.01  # a real mix, not silence
        assert list(table[0]) == ["filename", "onset", "offset", "event_label"]
        by_file: dict[str, list] = {}
        for r in table:
            onset, offset = float(r["onset"]), float(r["offset"])
            assert 0 <= onset < offset <= 10.0
            by_file.setdefault(r["filename"], []).append((onset, offset, r["event_label"]))
        for events in by_file.values():
            assert merge_overlaps(events) == sorted(events, key=lambda e: (e[0], e[2]))
            labels = [e[2] for e in events]
            # A Bird event is an Animal event too, over the same time, as clip labels are.
            for onset, offset, label in events:
                if label == "Bird":
                    assert any(a <= onset and offset <= b for a, b, lab in events
                               if lab == "Animal")
            assert labels


def test_splits_are_disjoint_by_source(soundscapes):
    sources = rows(soundscapes / "sources.csv", ",")
    by_split: dict[str, set] = {"val": set(), "eval": set()}
    for r in sources:
        by_split[r["split"]].add(r["source"])
        if r["label"] != "background":
            folder = "FSD50K.eval_audio" if r["split"] == "eval" else "FSD50K.dev_audio"
            assert r["source"].startswith(folder)
    assert by_split["val"] and by_split["eval"]
    assert not by_split["val"] & by_split["eval"]  # no clip and no background in both
    clips = soundscapes.parent / "clips"
    dev = {r["fname"]: r["split"] for r in rows(clips / "FSD50K.ground_truth/dev.csv", ",")}
    assert {dev[Path(s).stem] for s in by_split["val"] if s.startswith("FSD50K.dev")} == {"val"}


def test_reference_events_score_perfectly_and_shifted_ones_do_not(soundscapes):
    labels = read_strong_labels(soundscapes, "val")
    classes = ["Other", *labels.classes]  # a class with no reference event is left out

    def timelines(shift=0.0):
        out = {}
        for name, events in labels.events.items():
            # A window every millisecond: its edges fall on the references' (3 decimals).
            times = np.arange(0.0005, labels.durations[name], 0.001)
            scores = np.zeros((times.size, len(classes)))
            for onset, offset, label in events:
                inside = (times >= onset + shift) & (times < offset + shift)
                scores[inside, classes.index(label)] = 0.9
            out[name] = Timeline(times, scores, labels.durations[name])
        return out

    exact = EventOptions(on=0.5, off=0.5, median_seconds=0, min_gap=0, min_duration=0)
    perfect = evaluate_events(timelines(), labels, classes, exact)
    assert perfect["event_f1"] == pytest.approx(1.0)
    assert perfect["segment_f1"] == pytest.approx(1.0)
    assert perfect["psds1"] > 0.9
    assert perfect["classes"] == labels.classes
    late = evaluate_events(timelines(shift=0.6), labels, classes, exact)
    assert late["event_f1"] < 0.5 and late["segment_f1"] < perfect["segment_f1"]
    assert late["psds1"] < perfect["psds1"]


def test_evaluate_events_command_matches_the_python_api(soundscapes, tmp_path):
    report_path = tmp_path / "events.json"
    done = run("-m", "keras_dae.cli", "evaluate", "--events", "--data", soundscapes,
               "--model", "diverse_sampled15", "--split", "eval", "--json", report_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    for key in ("event_f1", "segment_f1", "psds1"):
        assert 0.0 <= report[key] <= 1.0
        assert f"{report[key]:.3f}" in done.stdout
    from keras_dae.inference import Tagger

    tagger = Tagger("diverse_sampled15", hop_seconds=0.25)
    labels = read_strong_labels(soundscapes, "eval")
    ours = evaluate_events(score_timelines(tagger, labels), labels, tagger.class_names,
                           EventOptions())
    for key in ("event_f1", "segment_f1", "psds1"):
        assert report[key] == pytest.approx(ours[key], abs=1e-4)
    # The model hears something: some event or segment is right.
    assert report["segment_f1"] > 0


def test_refusals_name_the_problem(soundscapes, tmp_path):
    with pytest.raises(InputError, match="not a strongly labelled set"):
        read_strong_labels(tmp_path, "eval")
    (tmp_path / "metadata").mkdir()
    (tmp_path / "audio" / "eval").mkdir(parents=True)
    (tmp_path / "metadata" / "eval.tsv").write_text("file\tstart\tend\tlabel\nx.wav\t0\t1\tA\n")
    with pytest.raises(InputError, match="expected the tab-separated columns"):
        read_strong_labels(tmp_path, "eval")
    (tmp_path / "metadata" / "eval.tsv").write_text(
        "filename\tonset\toffset\tevent_label\nx.wav\t0\t1\tA\n")
    with pytest.raises(InputError, match="names files that"):
        read_strong_labels(tmp_path, "eval")
    # A file that is not audio: refused, named, before any model runs (no durations table);
    # with one, when it is decoded.
    (tmp_path / "audio" / "eval" / "x.wav").write_bytes(b"not audio at all")
    with pytest.raises(InputError, match="x.wav: cannot read it as audio"):
        read_strong_labels(tmp_path, "eval")
    (tmp_path / "metadata" / "eval_durations.tsv").write_text("filename\tduration\nx.wav\t1\n")
    from keras_dae.event_evaluation import evaluate_set

    with pytest.raises(InputError, match="x.wav"):
        evaluate_set("diverse_sampled15", tmp_path, "eval")
    done = run("-m", "keras_dae.cli", "evaluate", "--events", "--data", tmp_path / "nowhere",
               "--model", "diverse_sampled15")
    assert done.returncode == 2 and "not a strongly labelled set" in done.stderr
