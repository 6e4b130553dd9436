"""Sound events scored against strong labels: event-based F1, segment-based F1 and PSDS.

    from keras_dae.event_evaluation import evaluate_events, read_strong_labels, score_timelines
    from keras_dae.inference import Tagger

    labels = read_strong_labels("soundscapes", "eval")          # DCASE / DESED layout
    tagger = Tagger("diverse_sampled15", hop_seconds=0.25)
    timelines = score_timelines(tagger, labels)
    evaluate_events(timelines, labels, tagger.class_names)["event_f1"]

A strongly labelled set has DESED's layout (`scripts/build_soundscapes.py` makes one):
`DIR/audio/<split>/<file>` and `DIR/metadata/<split>.tsv` (`filename onset offset
event_label`, tab-separated, with that header), with `DIR/metadata/<split>_durations.tsv`
(`filename duration`) when it has one (else durations are read from the audio).

Every metric is computed by `sed_scores_eval` (DCASE's reference implementation of PSDS and
of the collar- and segment-based F-scores), none by hand:

- **event-based F1** of the events `keras_dae.events.detect_events` finds with the given
  `EventOptions`: an event matches a reference event of its class when its onset is within
  200 ms of the reference's, and its offset within 200 ms or 20% of the reference's length,
  whichever is larger (DCASE's collars);
- **segment-based F1** of the same events in 1 s segments;
- **PSDS** (scenario 1 of DCASE 2021-2023: DTC = GTC = 0.7, no cross-trigger penalty,
  alpha_st = 1, eFPR up to 100 per hour) over every threshold of the median-filtered scores,
  so it does not depend on the thresholds.

F-scores are macro averages over the classes the set's reference events hold (a class with no
reference event in the set has no recall to average); PSDS is over those classes too.
The detected events enter `sed_scores_eval` as score tables that are 1 inside an event and 0
elsewhere, at threshold 0.5, so the metrics score exactly the events a user gets.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from keras_dae.events import EventOptions, detect_events, median_filtered, window_bounds
from keras_dae.validation import InputError

__all__ = ["EVENT_COLLARS", "PSDS1", "StrongLabels", "Timeline", "evaluate_events",
           "evaluate_set", "merge_overlaps", "read_strong_labels", "report_text",
           "score_timelines", "tune_event_options"]

# DCASE's collars for event-based F1 (onset 200 ms; offset 200 ms or 20% of the length).
EVENT_COLLARS = {"onset_collar": 0.2, "offset_collar": 0.2, "offset_collar_rate": 0.2}
SEGMENT_SECONDS = 1.0
# PSDS scenario 1 (DCASE 2021-2023 task 4).
PSDS1 = {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None,
         "alpha_ct": 0.0, "alpha_st": 1.0, "max_efpr": 100.0}


@dataclasses.dataclass(frozen=True)
class StrongLabels:
    """One split of a strongly labelled set: its audio files, reference events
    `{filename: [(onset, offset, label), ...]}` and durations `{filename: seconds}`."""

    directory: Path
    split: str
    files: dict[str, Path]
    events: dict[str, list[tuple[float, float, str]]]
    durations: dict[str, float]

    @property
    def classes(self) -> list[str]:
        """The classes of the reference events, sorted."""
        return sorted({label for events in self.events.values() for *_, label in events})


@dataclasses.dataclass(frozen=True)
class Timeline:
    """A file's window scores over time: centres `(n,)` s, fused scores `(n, n_classes)`."""

    times: np.ndarray
    scores: np.ndarray
    duration: float


def _read_tsv(path: Path, columns: Sequence[str]) -> list[dict]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror or error})") from None
    if rows and not set(columns) <= set(rows[0]):
        raise InputError(f"{path}: expected the tab-separated columns {', '.join(columns)}, "
                         f"found {', '.join(rows[0])}")
    return rows


def merge_overlaps(events: Iterable[tuple[float, float, str]]
                   ) -> list[tuple[float, float, str]]:
    """`(onset, offset, label)` events with the overlapping or touching events of each class
    made one (their union), sorted by onset: the form DCASE's tools take."""
    merged: list[list] = []
    for onset, offset, label in sorted(events, key=lambda e: (e[2], e[0], e[1])):
        if merged and merged[-1][2] == label and onset <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset)
        else:
            merged.append([onset, offset, label])
    return sorted((tuple(e) for e in merged), key=lambda e: (e[0], e[2]))


def read_strong_labels(directory, split: str = "eval") -> StrongLabels:
    """Reads split `split` of a DESED-layout set (see the module's docstring); raises
    `InputError` naming the file at fault. Overlapping events of a class are one event
    (`merge_overlaps`)."""
    import soundfile as sf

    directory = Path(directory)
    table = directory / "metadata" / f"{split}.tsv"
    audio = directory / "audio" / split
    if not table.is_file() or not audio.is_dir():
        raise InputError(f"{directory} is not a strongly labelled set: expected {table} and "
                         f"{audio}/ (DCASE / DESED layout; scripts/build_soundscapes.py "
                         "makes one)")
    events: dict[str, list] = {}
    for row in _read_tsv(table, ("filename", "onset", "offset", "event_label")):
        try:
            onset, offset = float(row["onset"]), float(row["offset"])
        except (TypeError, ValueError):
            raise InputError(f"{table}: {row['filename']} has a bad onset or offset "
                             f"({row['onset']!r}, {row['offset']!r})") from None
        if not 0 <= onset < offset:
            raise InputError(f"{table}: {row['filename']} has an event that ends before it "
                             f"starts ({onset} to {offset} s)")
        events.setdefault(row["filename"], []).append((onset, offset, row["event_label"]))
    files = {path.name: path for path in sorted(audio.iterdir()) if path.is_file()}
    missing = sorted(set(events) - set(files))
    if missing:
        raise InputError(f"{table} names files that {audio} lacks: {missing[:3]}")
    durations_table = directory / "metadata" / f"{split}_durations.tsv"
    if durations_table.is_file():
        durations = {row["filename"]: float(row["duration"])
                     for row in _read_tsv(durations_table, ("filename", "duration"))}
    else:
        durations = {}
    for name, path in files.items():
        if name not in durations:
            try:
                durations[name] = sf.info(str(path)).duration
            except RuntimeError as error:  # soundfile: not audio, truncated
                raise InputError(f"{path}: cannot read it as audio ({error})") from None
        events[name] = merge_overlaps(events.get(name, []))  # none: every detection is false
    return StrongLabels(directory, split, files, events, durations)


def score_timelines(tagger, labels: StrongLabels) -> dict[str, Timeline]:
    """Each file's fused window scores (one window every `tagger.hop_seconds`), through the
    `Tagger`'s clip pipeline. A file that cannot be decoded raises `InputError`: a strong-label
    evaluation must not silently drop a file."""
    from keras_dae.inference import TagFailure

    names = list(labels.files)
    timelines = {}
    results = tagger.tag_many([str(labels.files[name]) for name in names], top_k=0)
    for name, result in zip(names, results, strict=True):
        if isinstance(result, TagFailure):
            raise InputError(result.reason)
        timelines[name] = Timeline(result.chunk_times, result.chunk_scores["fused"],
                                   result.duration)
    return timelines


def _sed_scores_eval():
    try:
        import sed_scores_eval
    except ImportError as error:
        raise InputError(f"event metrics need sed_scores_eval ({error}): "
                         'pip install "keras-dae[events]"') from None
    return sed_scores_eval


def _class_columns(class_names: Sequence[str], classes: Sequence[str]) -> list[int]:
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise InputError(f"the reference events hold classes the model does not: {unknown}")
    return [list(class_names).index(c) for c in classes]


def _event_tables(detected: Mapping[str, list], durations: Mapping[str, float],
                  classes: Sequence[str]) -> dict:
    """Detected events as `sed_scores_eval` score tables: 1 inside an event, 0 outside."""
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    tables = {}
    for name, events in detected.items():
        edges = sorted({0.0, float(durations[name])}
                       | {t for e in events for t in (e.onset, e.offset)})
        edges = np.asarray(edges)
        middles = (edges[:-1] + edges[1:]) / 2
        values = np.zeros((len(middles), len(classes)))
        for e in events:
            inside = (middles > e.onset) & (middles < e.offset)
            values[inside, classes.index(e.label)] = 1.0
        tables[name] = create_score_dataframe(values, edges, list(classes))
    return tables


def evaluate_events(timelines: Mapping[str, Timeline], labels: StrongLabels,
                    class_names: Sequence[str], options: EventOptions | None = None,
                    psds: bool = True) -> dict:
    """Event-based F1, segment-based F1 and PSDS (scenario 1) of `timelines` against
    `labels` (see the module's docstring).

    Args:
        timelines: `score_timelines`' output.
        labels: the reference (`read_strong_labels`).
        class_names: the model's classes, in its scores' order.
        options: how scores become events (default `EventOptions()`).
        psds: also compute PSDS (it takes longer than the F-scores).

    Returns a dict: `event_f1`, `event_precision`, `event_recall`, `segment_f1`, `psds1`
    (when asked), `per_class` (`{class: {"event_f1", "segment_f1"}}`), `classes`, `files`.
    """
    sse = _sed_scores_eval()
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    options = options or EventOptions()
    classes = labels.classes
    if not classes:
        raise InputError(f"{labels.directory}: the {labels.split} split has no reference "
                         "events")
    columns = _class_columns(class_names, classes)
    if set(timelines) != set(labels.files):
        raise InputError("the timelines and the reference cover different files")
    detected = {}
    for name, t in timelines.items():
        found = detect_events(t.times, t.scores, class_names, t.duration, options)
        detected[name] = [e for e in found if e.label in classes]
    tables = _event_tables(detected, labels.durations, classes)
    reference = {name: list(events) for name, events in labels.events.items()}
    f, p, r, _ = sse.collar_based.fscore(tables, reference, 0.5, **EVENT_COLLARS)
    fs, _, _, _ = sse.segment_based.fscore(tables, reference, labels.durations, 0.5,
                                           segment_length=SEGMENT_SECONDS)
    report = {
        "event_f1": float(f["macro_average"]), "event_precision": float(p["macro_average"]),
        "event_recall": float(r["macro_average"]), "segment_f1": float(fs["macro_average"]),
        "per_class": {c: {"event_f1": float(f[c]), "segment_f1": float(fs[c])}
                      for c in classes},
        "classes": classes, "files": len(timelines),
    }
    if psds:
        filtered = {
            name: create_score_dataframe(
                median_filtered(t.times, t.scores, options.median_seconds)[:, columns],
                window_bounds(t.times, t.duration), classes)
            for name, t in timelines.items()}
        value, *_ = sse.intersection_based.psds(filtered, reference, labels.durations,
                                                **PSDS1)
        report["psds1"] = float(value)
    return report


def tune_event_options(timelines: Mapping[str, Timeline], labels: StrongLabels,
                       class_names: Sequence[str], grid: Mapping[str, Iterable] | None = None
                       ) -> tuple[EventOptions, list[dict]]:
    """The `EventOptions` with the best event-based F1 on `labels` (a validation split) over
    `grid` (`{"on": [...], "off_gap": [on - off, ...], "median_seconds": [...],
    "min_gap": [...], "min_duration": [...]}`, each tried with every other); returns it and
    every combination's F-scores, best first."""
    grid = dict(grid or {})
    names = ("on", "off_gap", "median_seconds", "min_gap", "min_duration")
    unknown = sorted(set(grid) - set(names))
    if unknown:
        raise InputError(f"unknown grid entries {unknown}; choose from {list(names)}")
    defaults = EventOptions()
    axes = [list(grid.get(n, [0.0 if n == "off_gap" else getattr(defaults, n)]))
            for n in names]
    rows = []
    for on, gap, median, min_gap, min_duration in itertools.product(*axes):
        if gap > on:
            continue
        options = EventOptions(on=on, off=round(on - gap, 6), median_seconds=median,
                               min_gap=min_gap, min_duration=min_duration)
        report = evaluate_events(timelines, labels, class_names, options, psds=False)
        rows.append({"on": on, "off": round(on - gap, 6), "median_seconds": median,
                     "min_gap": min_gap, "min_duration": min_duration,
                     "event_f1": report["event_f1"], "segment_f1": report["segment_f1"]})
    if not rows:
        raise InputError("the grid has no valid combination (off_gap must not exceed on)")
    rows.sort(key=lambda row: (-row["event_f1"], -row["segment_f1"]))
    best = rows[0]
    return EventOptions(on=best["on"], off=best["off"], median_seconds=best["median_seconds"],
                        min_gap=best["min_gap"], min_duration=best["min_duration"]), rows


def report_text(report: Mapping) -> str:
    """`evaluate --events`' lines (an `evaluate_set` report): the three scores, the rules,
    then each class's F-scores."""
    rules = report["rules"]
    lines = [f"{report['split']}: event-based F1 {report['event_f1']:.3f} (precision "
             f"{report['event_precision']:.3f}, recall {report['event_recall']:.3f}), "
             f"segment-based F1 {report['segment_f1']:.3f}"
             + (f", PSDS1 {report['psds1']:.3f}" if "psds1" in report else "")
             + f" over {report['files']} files and {len(report['classes'])} classes",
             f"rules: a window every {report['hop_seconds']} s, on {rules['on']}, off "
             f"{rules['on'] if rules['off'] is None else rules['off']}, median "
             f"{rules['median_seconds']} s, gaps under {rules['min_gap']} s closed, events "
             f"under {rules['min_duration']} s dropped",
             f"{'class':<42} event F1  segment F1"]
    lines += [f"{c:<42} {v['event_f1']:8.3f}  {v['segment_f1']:10.3f}"
              for c, v in report["per_class"].items()]
    return "\n".join(lines)


def evaluate_set(model, directory, split: str = "eval", options: EventOptions | None = None,
                 hop_seconds: float = 0.25, batch_size: int = 32) -> dict:
    """`evaluate_events` of `model` on split `split` of the strongly labelled set in
    `directory`, with a window every `hop_seconds`: what `keras-dae evaluate --events`
    reports. `model`: a `DiverseClassifier`, a preset name or directory, or a function that
    returns one, called once the set has been read (so a bad set is refused first)."""
    from keras_dae.inference import Tagger

    options = options or EventOptions()
    labels = read_strong_labels(directory, split)
    model = model() if callable(model) and not hasattr(model, "predict") else model
    tagger = Tagger(model, batch_size=batch_size, hop_seconds=hop_seconds)
    report = evaluate_events(score_timelines(tagger, labels), labels, tagger.class_names,
                             options)
    rules = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return report | {"split": split, "hop_seconds": hop_seconds, "rules": rules}
