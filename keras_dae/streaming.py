"""Tagging audio as it arrives: blocks of any size and rate in, event onsets and offsets out.

    from keras_dae.inference import Tagger
    from keras_dae.microphone import microphone_blocks
    from keras_dae.streaming import StreamTagger

    rate, blocks = microphone_blocks()                # or any iterable of numpy arrays
    stream = StreamTagger(Tagger("diverse_sampled15", hop_seconds=0.25), input_rate=rate)
    for block in blocks:                              # numpy arrays, any length
        for update in stream.feed(block):             # as soon as a window completes
            print(update)                             # EventUpdate("onset", 3.25, "Speech", 0.91)
    stream.close()                                    # ends the events still open

Blocks are resampled to the model's rate as a stream (soxr, as files are read), kept in a
buffer of at most one window plus one block, and cut into the `Tagger`'s windows (1 s every
`hop_seconds`) as soon as each is complete; the windows of a block are scored in batches of
the `Tagger`'s `batch_size`. Their fused scores go through the offline event rules
(`keras_dae.events.EventTracker`: median filter, hysteresis, gap closing, minimum duration;
`EventOptions`, the same defaults as `predict --events`), and each onset and offset is
reported as soon as those rules can no longer change it. The events equal
`keras_dae.events.detect_events` on the whole recording with the same options, for a
recording whose windows fall on the hop grid (offline chunking adds a last window aligned to
the clip's end).

How late: a window is complete 0.625 s after the start of the stretch its score stands for (1
s windows, 0.25 s hop); a median filter of m windows waits (m - 1) / 2 more windows; an onset
is reported once the event has lasted `min_duration` (it can no longer be dropped), an
offset once `min_gap` has passed without the class starting again (it can no longer be
merged). With the defaults at a 0.25 s hop (a median filter of 5 windows, 1 s gaps, no
minimum duration) an onset comes 0.5 s and an offset 1.5 s later than with
`EventOptions.thresholds_only()`, whose
events come as soon as a window crosses a threshold. Memory does not grow with the stream's
length: a window plus a block of audio, the median filter's windows and the open events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from keras_dae.events import EventOptions, EventTracker
from keras_dae.validation import InputError, positive_float

__all__ = ["FLAGS", "EventUpdate", "StreamTagger", "print_stream"]

# The command line's flags for how streamed events are scored and printed, shared by
# `keras-dae predict` (files and `--stream`) and `keras-dae listen`: (flag, argparse options).
# The event rules' flags are `keras_dae.events.FLAGS`.
FLAGS = (
    ("--json", {"action": "store_true", "help": "one JSON object per line (a file's, or an "
                "event's onset or offset), instead of text"}),
    ("--hop", {"type": positive_float, "default": None, "metavar": "SECONDS",
               "help": "seconds between 1 s windows (default 0.5; 0.25 with events)"}),
)


@dataclasses.dataclass(frozen=True)
class EventUpdate:
    """An event starting (`kind="onset"`) or ending (`"offset"`) at `time` seconds of the
    stream; `score` is the window's score at an onset, the event's highest at an offset."""

    kind: str
    time: float
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"kind": self.kind, "time": round(self.time, 3), "label": self.label,
                "score": round(self.score, 4)}

    def to_text(self) -> str:
        """`  12.25 s  onset   Speech (0.91)`."""
        return f"{self.time:8.2f} s  {self.kind:<7} {self.label} ({self.score:.2f})"


class StreamTagger:
    """Scores a stream window by window and reports events as they start and end.

    Args:
        tagger: a `keras_dae.inference.Tagger` (its model, window, hop and batch size).
        input_rate: the blocks' sample rate (default: the model's).
        options: the event rules (`EventOptions`, default `EventOptions()`, as offline);
            `options.thresholds_only()` reports events with the least delay.
    """

    def __init__(self, tagger, input_rate: int | None = None,
                 options: EventOptions | None = None):
        self.tagger = tagger
        self.options = options or EventOptions()
        self.sample_rate = tagger.sample_rate
        self.input_rate = int(input_rate or self.sample_rate)
        if self.input_rate <= 0:
            raise InputError(f"input_rate must be a positive integer (Hz), got {input_rate!r}")
        self.chunk = tagger.chunk_samples
        self.hop = int(round(tagger.hop_seconds * self.sample_rate))
        on, off = self.options.thresholds(tagger.class_names)
        self._tracker = EventTracker(len(tagger.class_names), self.hop / self.sample_rate,
                                     self.chunk / self.sample_rate, on, off, self.options)
        self._resampler = None
        if self.input_rate != self.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(self.input_rate, self.sample_rate, 1,
                                                  dtype="float32", quality="HQ")
        self._buffer = np.zeros(0, np.float32)  # samples from `_offset` on
        self._offset = 0  # stream position of _buffer[0]
        self._received = 0  # samples at the model's rate so far
        self._windows = 0  # windows scored
        self._closed = False

    @property
    def seconds(self) -> float:
        """Seconds of audio received (at the model's rate)."""
        return self._received / self.sample_rate

    @property
    def windows(self) -> int:
        """Windows scored so far."""
        return self._windows

    def _take(self, samples: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, samples])
        self._received += samples.size

    def _updates(self, found) -> list[EventUpdate]:
        return [EventUpdate(kind, time, self.tagger.class_names[k], score)
                for kind, time, k, score in found]

    def _score(self, windows: np.ndarray) -> list[EventUpdate]:
        scores = self.tagger.forward(windows)["fused"]
        self._windows += len(windows)
        return self._updates(self._tracker.push(scores))

    def feed(self, block) -> list[EventUpdate]:
        """Takes the next block (1-D, at `input_rate`; float or integer PCM) and returns the
        events that started or ended in the windows it completed."""
        from keras_dae.clip_pipeline import as_waveform

        if self._closed:
            raise InputError("the stream is closed")
        block = np.asarray(block)
        if block.size == 0:
            return []
        block = as_waveform(block, self.input_rate, self.input_rate)  # checks, scales PCM
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block, last=False)
        self._take(np.clip(block, -1.0, 1.0).astype(np.float32, copy=False))
        return self._score_complete()

    def _score_complete(self) -> list[EventUpdate]:
        """Scores the buffer's complete windows, a batch at a time, and drops the samples no
        later window needs."""
        updates = []
        while True:
            first = self._windows * self.hop - self._offset
            count = (self._buffer.size - first - self.chunk) // self.hop + 1
            if count <= 0:
                break
            count = min(count, self.tagger.batch_size)
            view = np.lib.stride_tricks.sliding_window_view(self._buffer, self.chunk)
            updates += self._score(view[first:first + count * self.hop:self.hop].copy())
        keep = self._windows * self.hop - self._offset  # the next window's first sample
        if keep > 0:
            self._buffer = self._buffer[keep:]
            self._offset += keep
        return updates

    def run(self, blocks) -> Iterator[EventUpdate]:
        """Feeds every block of the iterable `blocks` (e.g. `pcm_input.pcm_blocks`), yielding
        updates as they come, and closes the stream when the blocks end. Interrupted
        (Ctrl-C while a block is awaited), it yields the offsets of the open events first,
        then lets the `KeyboardInterrupt` go on."""
        try:
            for block in blocks:
                yield from self.feed(block)
        except KeyboardInterrupt:
            yield from self.close()
            raise
        yield from self.close()

    def close(self) -> list[EventUpdate]:
        """Ends the stream: scores the windows the resampler's last samples complete and a
        stream shorter than one window (tiled, as clips are), and ends every open event at
        the stream's end."""
        if self._closed:
            return []
        self._closed = True
        updates = []
        if self._resampler is not None:
            self._take(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            updates += self._score_complete()
        last = None
        if self._windows == 0 and self._buffer.size:  # its stretch ends at the stream's end
            last = self.tagger.forward(np.resize(self._buffer, self.chunk)[None])["fused"]
            self._windows += 1
        return updates + self._updates(self._tracker.close(self.seconds, last))


def print_stream(tagger, input_rate: int, blocks, options: EventOptions | None = None,
                 json: bool = False, file=None) -> None:
    """Tags `blocks` as they come (`StreamTagger(tagger, input_rate, options).run(blocks)`) and
    prints each update as it happens, on a line of its own, flushed: `EventUpdate.to_text()`,
    or with `json` its `to_dict()` as JSON (to `file`, default standard output). What
    `keras-dae predict --stream` and `keras-dae listen` print; Ctrl-C prints the offsets of
    the open events, then raises `KeyboardInterrupt`."""
    import json as json_module
    import sys

    for update in StreamTagger(tagger, input_rate, options).run(blocks):
        line = json_module.dumps(update.to_dict()) if json else update.to_text()
        print(line, file=file or sys.stdout, flush=True)
