#!/usr/bin/env python3
"""Tags audio with a keras-dae TFLite model: a file's top labels, or a stream's events live.

    python classify.py model.tflite clip.wav [--top 5] [--threads 1]
    arecord -f S16_LE -r 16000 -c 1 | python classify.py model.tflite --stream - [--hop 0.25]
        [--on 0.5 --off 0.3] [--json]          # raw PCM: --rate R [--channels C --sample-format F]

Needs only a TFLite runtime (`ai-edge-litert`, or the older `tflite-runtime`), numpy and
soundfile: not TensorFlow and not keras-dae. The model takes 1 s windows of mono float32
audio at its sample rate; this script decodes the file, mixes it to mono, resamples it
(linear interpolation, adequate for a demo; resample with a proper filter, e.g. soxr, when
accuracy matters), cuts 1 s windows every 0.5 s (a clip shorter than 1 s is repeated to fill
one window), prints the top labels of the window starting at each second, and averages all
window scores for the clip, as keras-dae's evaluation does.

`--stream -` tags standard input as it arrives, as `keras-dae predict --stream -` does
(`keras_dae.streaming`): WAV from a pipe (its header's sizes are not trusted) or raw PCM,
mixed to mono and resampled block by block (the same linear interpolation, carried across
blocks), scored a 1 s window every `--hop` seconds as soon as each is complete, with a buffer
of at most one window and one block. It prints each event's onset and offset as they happen:
an event starts at the first window scoring at least `--on` and ends at the first below
`--off` (default: `--on`), its edges at the midpoints between windows (the first window's at
0 s); at the stream's end (or Ctrl-C) the open events end there. A stream shorter than one
window is repeated to fill one.

Labels come from `<model>.labels.txt` beside the model, else from the `keras_dae` entry of
the model's own metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np


def load_interpreter(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    return Interpreter(model_path=str(path), num_threads=threads)


def _table_field(buf: bytes, table: int, field: int) -> int | None:
    """Position of field `field` of the flatbuffer table at `table`, or None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * field
    if slot >= vtable_size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def embedded_metadata(buf: bytes, key: str = "keras_dae") -> dict | None:
    """The JSON metadata entry `key` of a TFLite flatbuffer (schema: Model.metadata is field 6,
    Model.buffers field 4; Metadata.name field 0, .buffer field 1; Buffer.data field 0,
    .offset field 1, .size field 2)."""
    model = _deref(buf, 0)
    meta_field = _table_field(buf, model, 6)
    buffers_field = _table_field(buf, model, 4)
    if meta_field is None or buffers_field is None:
        return None
    metas, buffers = _deref(buf, meta_field), _deref(buf, buffers_field)
    for i in range(struct.unpack_from("<I", buf, metas)[0]):
        entry = _deref(buf, metas + 4 + 4 * i)
        name_field = _table_field(buf, entry, 0)
        if name_field is None:
            continue
        name = _deref(buf, name_field)
        length = struct.unpack_from("<I", buf, name)[0]
        if buf[name + 4 : name + 4 + length].decode() != key:
            continue
        index_field = _table_field(buf, entry, 1)
        index = struct.unpack_from("<I", buf, index_field)[0] if index_field else 0
        buffer = _deref(buf, buffers + 4 + 4 * index)
        data_field = _table_field(buf, buffer, 0)
        if data_field is not None:
            data = _deref(buf, data_field)
            size = struct.unpack_from("<I", buf, data)[0]
            return json.loads(buf[data + 4 : data + 4 + size])
        offset_field, size_field = _table_field(buf, buffer, 1), _table_field(buf, buffer, 2)
        if offset_field and size_field:
            offset = struct.unpack_from("<Q", buf, offset_field)[0]
            size = struct.unpack_from("<Q", buf, size_field)[0]
            return json.loads(buf[offset : offset + size])
    return None


def load_labels(model_path: Path, metadata: dict | None) -> list[str] | None:
    labels_file = model_path.with_suffix(".labels.txt")
    if labels_file.is_file():
        return [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    if metadata and metadata.get("labels"):
        return list(metadata["labels"])
    return None


def load_mono(path: Path, sample_rate: int) -> np.ndarray:
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != sample_rate and len(audio) > 1:
        n = max(1, round(len(audio) * sample_rate / rate))
        audio = np.interp(np.arange(n) * (rate / sample_rate), np.arange(len(audio)),
                          audio).astype(np.float32)
    return audio


def windows_of(audio: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """1 s windows every `hop` samples (the last one ending at the clip's end); a clip
    shorter than a window is repeated to fill it. Returns (windows, start times in samples)."""
    if len(audio) < window:
        return np.resize(audio, window)[None].astype(np.float32), np.zeros(1, int)
    starts = list(range(0, len(audio) - window + 1, hop))
    if starts[-1] != len(audio) - window:
        starts.append(len(audio) - window)
    return np.stack([audio[s : s + window] for s in starts]).astype(np.float32), np.array(starts)


def top_labels(scores: np.ndarray, labels: list[str], k: int) -> str:
    order = np.argsort(-scores)[:k]
    return ", ".join(f"{labels[i]} {scores[i]:.2f}" for i in order)


class Model:
    """The interpreter's `serving_default` signature: `scores(windows)` runs any number of
    windows in the input's batch (fixed in the file, 1 by default, or -1: any, run one by
    one), the last group padded with silence, and returns output `output`'s rows."""

    def __init__(self, path: Path, threads: int, output: str):
        self.metadata = embedded_metadata(path.read_bytes())
        self.runner = load_interpreter(path, threads).get_signature_runner("serving_default")
        (self.input_name, spec), = self.runner.get_input_details().items()
        self.window = int(spec["shape_signature"][1])
        self.batch = max(int(spec["shape_signature"][0]), 1)
        self.sample_rate = int(self.metadata["sample_rate"]) if self.metadata else 16000
        self.output = output
        n_classes = int(self.runner.get_output_details()[output]["shape_signature"][-1])
        self.labels = (load_labels(path, self.metadata)
                       or [f"class_{i}" for i in range(n_classes)])

    def scores(self, windows: np.ndarray) -> np.ndarray:
        padded = np.concatenate([windows, np.zeros((-len(windows) % self.batch, self.window),
                                                   np.float32)])
        return np.concatenate([self.runner(**{self.input_name: padded[i : i + self.batch]})
                               [self.output] for i in range(0, len(padded), self.batch)]
                              )[: len(windows)]


# -- --stream: standard input, events as they happen (keras_dae.pcm_input, .streaming) ----

SAMPLE_FORMATS = {"s16le": "<i2", "s32le": "<i4", "f32le": "<f4", "u8": "u1"}  # ffmpeg's -f
WAV_FORMATS = {(1, 8): "u8", (1, 16): "s16le", (1, 32): "s32le", (3, 32): "f32le"}


class StreamError(Exception):
    """A stream that cannot be tagged: its message goes to stderr, and the exit status is 2."""


def _read_exactly(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise StreamError("standard input: the stream ended inside its WAV header")
        data += more
    return data


def wav_format(stream) -> tuple[int, int, str]:
    """`(rate, channels, sample format)` of a WAV header read up to its data chunk (its first
    4 bytes, `RIFF`, already read). Sizes in the header are not trusted: a pipe's WAV writer
    cannot know them (0 or 0xFFFFFFFF), and the audio is read to the stream's end."""
    if _read_exactly(stream, 8)[4:] != b"WAVE":
        raise StreamError("standard input: a RIFF stream that is not WAVE audio")
    fmt = None
    while True:
        chunk, size = struct.unpack("<4sI", _read_exactly(stream, 8))
        if chunk == b"data":
            if fmt is None:
                raise StreamError("standard input: a WAV stream without a fmt chunk before "
                                  "its data")
            return fmt
        size += size & 1
        if chunk != b"fmt ":  # skipped, a piece at a time
            while size:
                size -= len(_read_exactly(stream, min(size, 1 << 16)))
            continue
        if not 16 <= size <= 1024:
            raise StreamError(f"standard input: a malformed WAV header (a fmt chunk of {size} "
                              "bytes)")
        body = _read_exactly(stream, size)
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
        if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat
            tag = struct.unpack("<H", body[24:26])[0]
        if (tag, bits) not in WAV_FORMATS:
            raise StreamError(f"standard input: WAV of format {tag} with {bits}-bit samples "
                              "is not read from a stream (16- or 32-bit PCM, 8-bit, 32-bit "
                              "float)")
        if not rate or not channels:
            raise StreamError(f"standard input: a malformed WAV header ({rate} Hz, "
                              f"{channels} channels)")
        fmt = rate, channels, WAV_FORMATS[(tag, bits)]


def pcm_blocks(stream, raw: tuple[int, int, str] | None, block_seconds: float = 0.1):
    """`(rate, blocks)`: the stream's rate and an iterator of its audio as mono float32
    blocks of at most `block_seconds` (whatever the stream has at hand when it has less;
    a block never splits a frame). WAV if it starts with `RIFF` (its header wins over `raw`),
    else raw PCM in the format `raw`, `(rate, channels, sample format)`."""
    head = stream.read(4)
    if not head:
        raise StreamError("standard input is empty: no audio to tag")
    if head == b"RIFF":
        (rate, channels, sample_format), head = wav_format(stream), b""
    elif raw is None:
        raise StreamError("standard input is not WAV: for raw PCM give its rate (--rate), and "
                          "its channels and sample format if not mono s16le")
    else:
        rate, channels, sample_format = raw
    dtype = np.dtype(SAMPLE_FORMATS[sample_format])
    frame = dtype.itemsize * channels
    read = getattr(stream, "read1", stream.read)
    size = max(frame, int(block_seconds * rate) * frame)

    def blocks():
        pending = head
        while True:
            data = read(size)
            pending += data
            whole = len(pending) - len(pending) % frame
            if whole:
                samples = np.frombuffer(pending[:whole], dtype)
                pending = pending[whole:]
                if sample_format == "u8":
                    values = (samples.astype(np.float32) - 128.0) / 128.0
                elif sample_format == "f32le":
                    values = samples.astype(np.float32)
                    if not np.isfinite(values).all():
                        raise StreamError("standard input: NaN or infinite samples")
                else:
                    values = samples.astype(np.float32) / float(2 ** (8 * dtype.itemsize - 1))
                yield values.reshape(-1, channels).mean(axis=1)
            if not data:
                return

    return rate, blocks()


class LinearResampler:
    """`load_mono`'s linear interpolation over a stream: output sample `j` lies at input
    position `j * rate_in / rate_out` whichever block holds it, so block edges do not click,
    and the whole stream comes out as `load_mono` would resample it at once."""

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in, self.rate_out = rate_in, rate_out
        self.received = self.produced = 0
        # The input's last samples: an output is held until the stream's length (`load_mono`'s
        # rounding) reaches it, by up to half an output step after its position.
        self.history = np.zeros(0, np.float32)
        self.keep = rate_in // rate_out + 2

    def __call__(self, block: np.ndarray) -> np.ndarray:
        x = np.concatenate([self.history, block])
        origin = self.received - self.history.size  # the input position of x[0]
        self.received += block.size
        self.history = x[-self.keep:]
        end = min((self.received - 1) * self.rate_out // self.rate_in + 1,  # inside x
                  round(self.received * self.rate_out / self.rate_in))  # load_mono's length
        positions = np.arange(self.produced, end) * (self.rate_in / self.rate_out) - origin
        self.produced = max(self.produced, end)
        return np.interp(positions, np.arange(x.size), x).astype(np.float32)

    def flush(self) -> np.ndarray:
        """The last outputs, up to the stream's length at the output rate (`load_mono`'s);
        past the last input sample they hold it, as `np.interp` does."""
        n = round(self.received * self.rate_out / self.rate_in)
        if n <= self.produced:
            return np.zeros(0, np.float32)
        positions = np.arange(self.produced, n) * (self.rate_in / self.rate_out)
        self.produced = max(self.produced, n)
        start = self.received - self.history.size
        return np.interp(positions - start, np.arange(self.history.size),
                         self.history).astype(np.float32)


class StreamTagger:
    """`keras_dae.streaming.StreamTagger` over `scores(windows)`: blocks at the model's rate
    in, `(kind, time, label, score)` updates out as each window completes; the buffer holds
    at most one window and one block."""

    def __init__(self, scores, labels, window: int, hop: int, sample_rate: int, on: float,
                 off: float, batch: int = 1):
        self.scores, self.labels, self.batch = scores, labels, batch
        self.window, self.hop, self.sample_rate, self.on, self.off = (window, hop, sample_rate,
                                                                      on, off)
        self.buffer = np.zeros(0, np.float32)  # samples from stream position `offset` on
        self.offset = self.received = self.windows = 0
        self.open: dict[int, float] = {}  # class -> highest score of its open event

    def _boundary(self, window: int) -> float:
        """Where window `window`'s stretch starts: 0, or the midpoint with the one before."""
        return 0.0 if window == 0 else (window * self.hop - self.hop / 2
                                        + self.window / 2) / self.sample_rate

    def _score(self, windows: np.ndarray) -> list[tuple]:
        updates = []
        for row in self.scores(windows):
            start = self._boundary(self.windows)
            for k in np.flatnonzero(row >= self.on):
                if int(k) not in self.open:
                    self.open[int(k)] = float(row[k])
                    updates.append(("onset", start, self.labels[k], float(row[k])))
            for k in list(self.open):
                if row[k] < self.off:
                    updates.append(("offset", start, self.labels[k], self.open.pop(k)))
                else:
                    self.open[k] = max(self.open[k], float(row[k]))
            self.windows += 1
        return updates

    def _take(self, samples: np.ndarray) -> None:
        self.buffer = np.concatenate([self.buffer, np.clip(samples, -1.0, 1.0)])
        self.received += samples.size

    def feed(self, block: np.ndarray) -> list[tuple]:
        self._take(block)
        return self._score_complete()

    def _score_complete(self) -> list[tuple]:
        updates = []
        while True:  # the complete windows, a batch at a time
            first = self.windows * self.hop - self.offset
            count = min((self.buffer.size - first - self.window) // self.hop + 1, self.batch)
            if count <= 0:
                break
            updates += self._score(np.stack([self.buffer[s : s + self.window] for s in
                                             range(first, first + count * self.hop, self.hop)]))
        keep = self.windows * self.hop - self.offset  # the next window's first sample
        if keep > 0:
            self.buffer, self.offset = self.buffer[keep:], self.offset + keep
        return updates

    def close(self, tail: np.ndarray) -> list[tuple]:
        """Takes the resampler's `tail`, scores the windows it completes and a stream shorter
        than one window (tiled), and ends every open event at the stream's end."""
        self._take(tail)
        updates = self._score_complete()
        if self.windows == 0 and self.buffer.size:
            updates += self._score(np.resize(self.buffer, self.window)[None])
        end = self.received / self.sample_rate
        return updates + [("offset", end, self.labels[k], self.open.pop(k))
                          for k in sorted(self.open)]


def stream(args, parser) -> int:
    if args.stream != "-" or args.audio is not None:
        parser.error("--stream reads standard input: give '--stream -' and no audio file")
    if args.off is not None and args.off > args.on:
        parser.error("--off must not exceed --on (hysteresis)")
    raw = (args.rate, args.channels, args.sample_format) if args.rate else None
    rate, blocks = pcm_blocks(sys.stdin.buffer, raw)
    model = Model(args.model, args.threads, args.output)
    hop = max(1, round(args.hop * model.sample_rate))
    tagger = StreamTagger(model.scores, model.labels, model.window, hop, model.sample_rate,
                          args.on, args.on if args.off is None else args.off, model.batch)
    resample = LinearResampler(rate, model.sample_rate) if rate != model.sample_rate else None

    def emit(updates):
        for kind, time, label, score in updates:
            print(json.dumps({"kind": kind, "time": round(time, 3), "label": label,
                              "score": round(score, 4)}) if args.json
                  else f"{time:8.2f} s  {kind:<7} {label} ({score:.2f})", flush=True)

    interrupted = False
    try:
        for block in blocks:
            emit(tagger.feed(resample(block) if resample else block))
    except KeyboardInterrupt:  # Ctrl-C: end the open events where the stream stopped
        interrupted = True
    if tagger.received == 0 and not interrupted:
        raise StreamError("standard input holds no audio (a WAV header and no samples, or "
                          "less than one sample frame)")
    emit(tagger.close(resample.flush() if resample else np.zeros(0, np.float32)))
    if interrupted:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value
    return parse


def _score(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a score from 0 to 1, got {text}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a .tflite file exported by keras-dae")
    parser.add_argument("audio", type=Path, nargs="?",
                        help="an audio file (WAV, FLAC, OGG, MP3, ...); or --stream -")
    parser.add_argument("--top", type=int, default=5, help="labels to print (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads")
    parser.add_argument("--output", default="fused", help="output to rank (default fused)")
    parser.add_argument("--json", action="store_true",
                        help="print the scores as JSON (--stream: one event update a line)")
    parser.add_argument("--stream", metavar="-", help="tag standard input (WAV, or raw PCM "
                        "with --rate) as it arrives, printing events as they start and end")
    parser.add_argument("--rate", type=_positive(int), help="--stream of raw PCM: its rate")
    parser.add_argument("--channels", type=_positive(int), default=1,
                        help="raw PCM: interleaved channels (default 1)")
    parser.add_argument("--sample-format", choices=SAMPLE_FORMATS, default="s16le",
                        help="raw PCM: as ffmpeg's -f names it (default s16le)")
    parser.add_argument("--hop", type=_positive(float), default=0.25, metavar="SECONDS",
                        help="--stream: seconds between 1 s windows (default 0.25)")
    parser.add_argument("--on", type=_score, default=0.2,
                        help="--stream: the score at which an event starts (default 0.2, "
                        "keras-dae's, chosen on validation soundscapes)")
    parser.add_argument("--off", type=_score, default=0.1,
                        help="--stream: the score below which it ends (default 0.1, "
                        "keras-dae's; at most --on)")
    args = parser.parse_args(argv)
    try:
        if args.stream is not None:
            return stream(args, parser)
        if args.audio is None:
            parser.error("give an audio file, or --stream - to tag standard input")
        return classify(args)
    except StreamError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the stream's first block (else `stream` ends it)
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def classify(args) -> int:
    model = Model(args.model, args.threads, args.output)
    sample_rate, labels = model.sample_rate, model.labels
    audio = load_mono(args.audio, sample_rate)
    windows, starts = windows_of(audio, model.window, model.window // 2)
    scores = model.scores(windows)
    clip = scores.mean(axis=0)
    if args.json:
        print(json.dumps({"labels": labels, "starts_s": (starts / sample_rate).tolist(),
                          "windows": scores.tolist(), "clip": clip.tolist()}))
        return 0
    print(f"{args.audio.name}: {len(audio) / sample_rate:.2f} s, {len(windows)} windows of "
          f"{model.window / sample_rate:g} s")
    # Windows overlap by half; print those that start on a whole second (and the last).
    for i, (start, row) in enumerate(zip(starts, scores, strict=True)):
        if start % sample_rate == 0 or i == len(starts) - 1:
            print(f"  {start / sample_rate:6.2f} s  {top_labels(row, labels, args.top)}")
    print(f"clip: {top_labels(clip, labels, args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
