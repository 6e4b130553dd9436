"""Sound events in time: from scores over time to `(onset, offset, label, score)` lists.

    from keras_dae.events import EventOptions, detect_events
    from keras_dae.inference import Tagger

    tagger = Tagger("diverse_sampled15", hop_seconds=0.25)       # a window every 0.25 s
    events = tagger.events("street.wav", options=EventOptions(on=0.5, off=0.3))
    [(e.onset, e.offset, e.label, e.score) for e in events]

    detect_events(times, scores, labels, duration, options)      # any scores over time

Each window's score stands for the stretch of time nearest its centre: from the midpoint with
the window before it to the midpoint with the window after it (the first from 0 s, the last
to the clip's end). For each class, in this order:

1. **median filter** of the scores over `median_seconds` (an odd number of windows; 0: off),
   which removes one-window blips without moving the edges of longer events;
2. **hysteresis**: an event starts where the score reaches `on` and lasts while it stays at or
   above `off` (`off <= on`; default `on`), so a score wavering around one threshold does not
   split an event;
3. **gaps** shorter than `min_gap` seconds between two events of the class are closed;
4. events shorter than `min_duration` seconds are dropped.

One event per occurrence, however many (overlapping) windows cover it. An event's score is
the highest filtered score inside it. Thresholds are one number for every class or one per
class (a sequence in the classes' order, or a dict label -> threshold with `default`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from keras_dae.validation import InputError, non_negative_float, unit_interval

__all__ = ["FLAGS", "Event", "EventOptions", "EventOutputs", "EventTracker", "audacity_labels",
           "detect_events", "events_table", "median_filtered", "window_bounds"]


@dataclasses.dataclass(frozen=True)
class Event:
    """One occurrence of a class: `[onset, offset)` seconds and its highest score."""

    onset: float
    offset: float
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"onset": round(self.onset, 3), "offset": round(self.offset, 3),
                "label": self.label, "score": round(self.score, 4)}


@dataclasses.dataclass(frozen=True)
class EventOptions:
    """How scores over time become events (see the module's docstring).

    Attributes:
        on: the score at which an event starts: a number, a sequence (one per class) or a
            dict label -> number (classes not in it: `default`).
        off: the score below which it ends (`None`: `on`); each at most its `on`.
        median_seconds: length of the median filter over time (0: none).
        min_duration: events shorter than this are dropped (s).
        min_gap: gaps shorter than this between two events of a class are closed (s).
        default: the threshold of a class a dict leaves out.

    The defaults (on 0.2, off 0.1, a 1 s median filter, gaps under 1 s closed, no minimum
    duration) have the best event-based F1 of a grid search on the validation soundscapes of
    `scripts/build_soundscapes.py` with the shipped preset at a 0.25 s hop
    (`benchmarks/event_detection.py`).
    """

    on: float | Sequence[float] | Mapping[str, float] = 0.2
    off: float | Sequence[float] | Mapping[str, float] | None = 0.1
    median_seconds: float = 1.0
    min_duration: float = 0.0
    min_gap: float = 1.0
    default: float = 0.2

    def __post_init__(self):
        for name in ("median_seconds", "min_duration", "min_gap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite number >= 0 (seconds), got "
                                 f"{value!r}")

    def thresholds_only(self) -> EventOptions:
        """These thresholds without the rules that wait for later windows (median filter,
        gap closing, minimum duration): a stream's events then come as soon as a window
        crosses a threshold."""
        return dataclasses.replace(self, median_seconds=0.0, min_gap=0.0, min_duration=0.0)

    def median_windows(self, hop_seconds: float) -> int:
        """The median filter's length in windows at `hop_seconds` (odd; 1: no filter)."""
        size = int(round(self.median_seconds / hop_seconds)) if hop_seconds > 0 else 1
        return 1 if size <= 1 else size + 1 - size % 2

    @classmethod
    def from_flags(cls, args) -> EventOptions:
        """The options of the command line's `FLAGS` (a flag left out: the default)."""
        given = {field: getattr(args, field) for _, field, _, _ in FLAGS
                 if getattr(args, field, None) is not None}
        return dataclasses.replace(cls(), **given)

    def thresholds(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`(on, off)` per class, float64 `(n_classes,)` each; raises `InputError`."""
        on = self._per_class(self.on, labels, "on")
        off = on if self.off is None else self._per_class(self.off, labels, "off")
        if np.any(off > on):
            worst = labels[int(np.argmax(off - on))]
            raise InputError(f"off must not exceed on (hysteresis), but for {worst!r} it does")
        return on, off

    def _per_class(self, value, labels, name) -> np.ndarray:
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(labels))
            if unknown:
                raise InputError(f"{name} names unknown classes: {unknown[:5]}")
            array = np.array([value.get(label, self.default) for label in labels], np.float64)
        elif np.ndim(value) == 0:
            array = np.full(len(labels), value, np.float64)
        else:
            array = np.asarray(value, np.float64)
            if array.shape != (len(labels),):
                raise InputError(f"{name} has {array.size} thresholds for {len(labels)} "
                                 "classes")
        if not np.all((array >= 0) & (array <= 1)):
            raise InputError(f"{name} thresholds must be scores from 0 to 1")
        return array


# The command line's flags for the options: (flag, field, argparse type, help). Their defaults
# are `EventOptions`' (a flag left out is None), which the help repeats.
_DEFAULT = EventOptions()
FLAGS = (
    ("--on", "on", unit_interval,
     f"events: the score at which an event starts (default {_DEFAULT.on})"),
    ("--off", "off", unit_interval,
     f"events: the score below which it ends (default {_DEFAULT.off}; at most --on)"),
    ("--median", "median_seconds", non_negative_float,
     f"events: seconds of median filtering of the scores (default {_DEFAULT.median_seconds}; "
     "0: none)"),
    ("--min-gap", "min_gap", non_negative_float,
     f"events: close gaps shorter than this between two events of a class (default "
     f"{_DEFAULT.min_gap} s)"),
    ("--min-duration", "min_duration", non_negative_float,
     f"events: drop events shorter than this (default {_DEFAULT.min_duration} s)"),
)


def window_bounds(times, duration: float) -> np.ndarray:
    """`(n + 1,)` boundaries of the stretches of time the `n` window centres `times` stand
    for: 0, the midpoints between consecutive centres, and `duration`."""
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or times.size == 0:
        raise InputError(f"times must be a non-empty 1-D array of window centres, got shape "
                         f"{times.shape}")
    if np.any(np.diff(times) <= 0):
        raise InputError("window centres must increase")
    middle = (times[:-1] + times[1:]) / 2
    return np.concatenate([[0.0], middle, [max(float(duration), float(times[-1]))]])


def median_filtered(times, scores, seconds: float) -> np.ndarray:
    """`scores` `(n_windows, n_classes)` median-filtered over time, each class on its own,
    over the odd number of windows nearest `seconds` (at the windows' median spacing; fewer
    than 2 windows: unfiltered)."""
    scores = np.asarray(scores, np.float64)
    times = np.asarray(times, np.float64)
    hop = float(np.median(np.diff(times))) if times.size > 1 else 0.0
    size = EventOptions(median_seconds=seconds).median_windows(hop)
    if size <= 1:
        return scores
    from scipy.ndimage import median_filter

    return median_filter(scores, size=(size, 1), mode="nearest")


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """`[(first, last + 1), ...]` of the runs of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def detect_events(times, scores, labels: Sequence[str], duration: float,
                  options: EventOptions | None = None) -> list[Event]:
    """Events of every class, sorted by onset (then label).

    Args:
        times: `(n_windows,)` window centres in seconds, increasing.
        scores: `(n_windows, n_classes)` scores in [0, 1] (e.g. the fused head's).
        labels: the `n_classes` class names.
        duration: the clip's length in seconds (the last window's stretch ends there).
        options: `EventOptions` (default: on = off = 0.5, no filtering).
    """
    options = options or EventOptions()
    scores = np.asarray(scores, np.float64)
    bounds = window_bounds(times, duration)
    if scores.ndim != 2 or scores.shape != (len(bounds) - 1, len(labels)):
        raise InputError(f"scores must be (n_windows, n_classes) = ({len(bounds) - 1}, "
                         f"{len(labels)}), got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise InputError("scores hold NaN or infinite values")
    on, off = options.thresholds(labels)
    filtered = median_filtered(times, scores, options.median_seconds)
    events = []
    for k, label in enumerate(labels):
        column = filtered[:, k]
        spans = []
        for first, end in _runs(column >= off[k]):  # candidate spans at the lower threshold
            if column[first:end].max() >= on[k]:  # that reach the upper one somewhere
                peak = first + int(np.argmax(column[first:end] >= on[k]))
                spans.append([peak, end])  # an event starts where `on` is reached
        merged: list[list[int]] = []
        for first, end in spans:
            if merged and bounds[first] - bounds[merged[-1][1]] < options.min_gap:
                merged[-1][1] = end
            else:
                merged.append([first, end])
        for first, end in merged:
            onset, offset = float(bounds[first]), float(bounds[end])
            if offset - onset >= options.min_duration:
                events.append(Event(onset, offset, label, float(column[first:end].max())))
    return sorted(events, key=lambda e: (e.onset, e.label))


class EventTracker:
    """`detect_events` on windows that arrive one at a time: the events of a stream, each
    reported as soon as the rules can no longer change it.

    Windows are `hop_seconds` apart, the first centred at `window_seconds / 2`. `push(rows)`
    takes the next windows' scores `(n, n_classes)` and `close(duration)` ends the stream;
    both return `(kind, time, class index, score)` tuples, `kind` "onset" or "offset", in the
    order they become certain. With the same options, the events equal `detect_events` on all
    the windows at once (whose centres fall on that grid). The wait, at a hop `h`: a median
    filter of `m` windows needs `(m - 1) / 2` later windows; an onset is reported once its
    event has lasted `min_duration` (so it cannot be dropped), an offset once `min_gap` has
    passed without the class starting again (so it cannot be merged). Memory: the last `m`
    windows and the open events.
    """

    def __init__(self, n_classes: int, hop_seconds: float, window_seconds: float,
                 on: np.ndarray, off: np.ndarray, options: EventOptions):
        self.hop, self.window = float(hop_seconds), float(window_seconds)
        self.on, self.off = np.asarray(on, np.float64), np.asarray(off, np.float64)
        self.options = options
        self.half = options.median_windows(self.hop) // 2
        self._raw: list[np.ndarray] = []  # rows from index self._raw_start on
        self._raw_start = 0
        self._received = 0  # windows pushed
        self._done = 0  # windows filtered and tracked
        self._run = np.zeros(n_classes, bool)  # in a run at or above `off`
        self._started = np.zeros(n_classes, bool)  # that run has reached `on`
        # class -> [onset window, end window (None: open), score, onset reported]
        self._events: dict[int, list] = {}

    def bound(self, index: int) -> float:
        """Where window `index`'s stretch of time starts (0 for the first)."""
        return 0.0 if index == 0 else index * self.hop - self.hop / 2 + self.window / 2

    def _filtered(self, index: int, last: int) -> np.ndarray:
        rows = [self._raw[min(max(j, 0), last) - self._raw_start]
                for j in range(index - self.half, index + self.half + 1)]
        return rows[0] if len(rows) == 1 else np.median(np.stack(rows), axis=0)

    def _finish(self, k: int, end_time: float) -> list[tuple]:
        onset, _, score, reported = self._events.pop(k)
        start = self.bound(onset)
        if reported:
            return [("offset", end_time, k, score)]
        if end_time - start >= self.options.min_duration:
            return [("onset", start, k, score), ("offset", end_time, k, score)]
        return []

    def _track(self, i: int, row: np.ndarray, stretch_end: float) -> list[tuple]:
        """Window `i`'s filtered scores; its stretch of time ends at `stretch_end`."""
        updates = []
        here = self.bound(i)
        for k, event in list(self._events.items()):  # gaps too long to close
            if event[1] is not None and here - self.bound(event[1]) >= self.options.min_gap:
                updates += self._finish(k, self.bound(event[1]))
        for k in np.flatnonzero((row >= self.off) | self._run):
            k, value = int(k), float(row[k])
            if value < self.off[k]:  # the run ends
                self._run[k] = False
                if self._started[k]:
                    self._events[k][1] = i
                    if self.options.min_gap <= 0:  # nothing can merge with it
                        updates += self._finish(k, here)
                self._started[k] = False
                continue
            self._run[k] = True
            if not self._started[k] and value >= self.on[k]:
                self._started[k] = True
                if k in self._events:  # a gap short enough to close
                    self._events[k][1] = None
                else:
                    self._events[k] = [i, None, value, False]
            if self._started[k]:
                event = self._events[k]
                event[2] = max(event[2], value)
                # It lasts at least to this window's end: past min_duration, it stays.
                if not event[3] and (stretch_end - self.bound(event[0])
                                     >= self.options.min_duration):
                    event[3] = True
                    updates.append(("onset", self.bound(event[0]), k, event[2]))
        return updates

    def _advance(self, end: float | None = None) -> list[tuple]:
        """Tracks the windows whose filtered scores are known (all of them, the last one's
        stretch ending at `end`, when the stream has ended)."""
        updates = []
        final = self._received - 1
        while self._done < self._received and (end is not None
                                               or self._done + self.half <= final):
            i = self._done
            stretch_end = end if end is not None and i == final else self.bound(i + 1)
            updates += self._track(i, self._filtered(i, final), stretch_end)
            self._done += 1
        keep = max(0, self._done - self.half) - self._raw_start
        if keep > 0:
            del self._raw[:keep]
            self._raw_start += keep
        return updates

    def push(self, rows) -> list[tuple]:
        """Takes the next windows' scores `(n, n_classes)`; returns the updates now certain."""
        self._append(rows)
        return self._advance()

    def _append(self, rows) -> None:
        for row in np.asarray(rows, np.float64):
            self._raw.append(row)
            self._received += 1

    def close(self, duration: float, rows=None) -> list[tuple]:
        """Ends the stream `duration` seconds long, after its last windows' scores `rows`, if
        any: the last windows are filtered (repeating the last, as `detect_events` does) and
        every event still open or waiting ends. A window that arrives only now (a stream
        shorter than a window, tiled) must come as `rows`: its stretch of time ends at
        `duration`, which `push` cannot know."""
        if rows is not None:
            self._append(rows)
        # As `window_bounds`: the last stretch ends at the stream's end or the last centre.
        end = float(duration)
        if self._received > 1:
            end = max(end, (self._received - 1) * self.hop + self.window / 2)
        updates = self._advance(end)
        for k in sorted(self._events):
            event = self._events[k]
            updates += self._finish(k, end if event[1] is None else self.bound(event[1]))
        return updates


def audacity_labels(events: Sequence[Event]) -> str:
    """An Audacity label track (File > Import > Labels): `onset<TAB>offset<TAB>label` lines."""
    return "".join(f"{e.onset:.6f}\t{e.offset:.6f}\t{e.label}\n" for e in events)


class AudacityTracks:
    """Writes one Audacity label track per audio file into `directory` (created), named after
    the file: `dog.wav` -> `dog.txt`, a second `dog.*` -> `dog_2.txt`. The directory is
    checked as an output before any work (`atomic.check_output_path`); each track is written
    whole (`atomic.write_text`)."""

    def __init__(self, directory, flag: str = "--audacity"):
        from keras_dae import atomic

        self.directory = atomic.check_output_path(directory, (), flag, directory=True)
        self.directory.mkdir(exist_ok=True)
        self._names: set[str] = set()

    def write(self, source, events: Sequence[Event]):
        """Writes `source`'s track; returns its path."""
        from pathlib import Path

        from keras_dae import atomic

        stem = name = Path(str(source)).stem
        n = 1
        while name in self._names:
            n += 1
            name = f"{stem}_{n}"
        self._names.add(name)
        path = self.directory / f"{name}.txt"
        atomic.write_text(path, audacity_labels(events))
        return path


def events_table(events_by_file: Mapping[str, Sequence[Event]], scores: bool = False) -> str:
    """The DCASE / DESED TSV of events, `filename onset offset event_label` (tab-separated,
    with that header; file names as given), as `sed_eval` and `sed_scores_eval` read it.
    `scores=True` adds a `score` column."""
    header = "filename\tonset\toffset\tevent_label" + ("\tscore" if scores else "")
    lines = [header]
    for filename, events in events_by_file.items():
        for e in events:
            line = f"{filename}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}"
            lines.append(line + (f"\t{e.score:.4f}" if scores else ""))
    return "\n".join(lines) + "\n"


class EventOutputs:
    """The files `keras-dae predict --events` writes besides its own output: an Audacity
    label track per audio file (`audacity`: a directory, `AudacityTracks`) and one DCASE/DESED
    table of every file's events with their scores (`tsv`, `events_table`). Both are checked
    as outputs when this is made, before any work; the table is written whole at `close`."""

    def __init__(self, audacity=None, tsv=None):
        from keras_dae import atomic

        self.tsv = atomic.check_output_path(tsv, (".tsv",), "--events-tsv") if tsv else None
        self.tracks = AudacityTracks(audacity) if audacity else None
        self.found: dict[str, Sequence[Event]] = {}

    def add(self, source, events: Sequence[Event]) -> None:
        """Takes one file's events (its track is written now)."""
        self.found[str(source)] = events
        if self.tracks:
            self.tracks.write(source, events)

    def close(self) -> str | None:
        """Writes the table, if one was asked for and any file was tagged; returns the line
        that says so."""
        from keras_dae import atomic

        if self.tsv is None or not self.found:
            return None
        atomic.write_text(self.tsv, events_table(self.found, scores=True))
        return f"wrote {self.tsv}"
