"""Audio arriving on a byte stream (a pipe, standard input, a socket): WAV or raw PCM, read
block by block as mono float32, for `keras_dae.streaming.StreamTagger`.

    ffmpeg -i rtsp://camera -f s16le -ac 1 -ar 16000 - | keras-dae predict --stream - --rate 16000
    arecord -f S16_LE -r 44100 -c 2 | keras-dae predict --stream -       # WAV: read from its header

A stream that starts with a RIFF/WAVE header is read as WAV whatever its header's data size
says (tools that write WAV to a pipe cannot know it: `arecord`, `ffmpeg -f wav`). Anything
else is raw PCM, whose rate must be given. Blocks are returned as soon as the stream has them
(`read1`), so a slow source is tagged as it comes; a block never splits a sample frame.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from keras_dae.validation import InputError, positive_int

__all__ = ["FLAGS", "SAMPLE_FORMATS", "PcmFormat", "pcm_blocks", "stdin_blocks"]

# Raw sample formats, named as ffmpeg's `-f` names them (little-endian).
SAMPLE_FORMATS = {"s16le": "<i2", "s32le": "<i4", "f32le": "<f4", "u8": "u1"}

# `keras-dae predict --stream -`'s flags for raw PCM on standard input: (flag, argparse options).
FLAGS = (
    ("--rate", {"type": positive_int, "help": "--stream of raw PCM: its sample rate"}),
    ("--channels", {"type": positive_int, "default": 1, "help": "raw PCM: channels"}),
    ("--sample-format", {"choices": SAMPLE_FORMATS, "default": "s16le",
                         "help": "raw PCM: as ffmpeg's -f names it (default s16le)"}),
)


@dataclasses.dataclass(frozen=True)
class PcmFormat:
    """How the stream's samples are laid out: interleaved `channels`, `rate` frames a second."""

    rate: int
    channels: int = 1
    sample_format: str = "s16le"

    def __post_init__(self):
        if int(self.rate) <= 0 or int(self.channels) <= 0:
            raise InputError(f"a PCM stream needs a positive rate and channel count, got "
                             f"{self.rate} Hz and {self.channels} channels")
        if self.sample_format not in SAMPLE_FORMATS:
            raise InputError(f"sample format {self.sample_format!r}: one of "
                             f"{', '.join(SAMPLE_FORMATS)}")

    @property
    def frame_bytes(self) -> int:
        return np.dtype(SAMPLE_FORMATS[self.sample_format]).itemsize * self.channels

    def to_mono(self, data: bytes) -> np.ndarray:
        """Whole frames of `data` -> mono float32 in [-1, 1] (channels averaged)."""
        samples = np.frombuffer(data, SAMPLE_FORMATS[self.sample_format])
        if self.sample_format == "u8":
            values = (samples.astype(np.float32) - 128.0) / 128.0
        elif self.sample_format == "f32le":
            values = samples.astype(np.float32)
        else:
            values = samples.astype(np.float32) / float(2 ** (8 * samples.itemsize - 1))
        return values.reshape(-1, self.channels).mean(axis=1)


def _read_exactly(stream: BinaryIO, n: int, what: str) -> bytes:
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise InputError(f"{what}: the stream ended inside its WAV header")
        data += more
    return data


def _wav_format(stream: BinaryIO, what: str) -> PcmFormat:
    """Reads a WAV header up to its data chunk (the stream's first 4 bytes, `RIFF`, already
    read) and returns its format."""
    if _read_exactly(stream, 8, what)[4:] != b"WAVE":
        raise InputError(f"{what}: a RIFF stream that is not WAVE audio")
    fmt = None
    while True:
        chunk_id, size = struct.unpack("<4sI", _read_exactly(stream, 8, what))
        if chunk_id == b"data":
            break
        body = _read_exactly(stream, size + (size & 1), what)
        if chunk_id == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat
                tag = struct.unpack("<H", body[24:26])[0]
            names = {(1, 8): "u8", (1, 16): "s16le", (1, 32): "s32le", (3, 32): "f32le"}
            if (tag, bits) not in names:
                raise InputError(f"{what}: WAV of format {tag} with {bits}-bit samples is not "
                                 "read from a stream (16- or 32-bit PCM, 8-bit, 32-bit float)")
            fmt = PcmFormat(rate, channels, names[(tag, bits)])
    if fmt is None:
        raise InputError(f"{what}: a WAV stream without a fmt chunk before its data")
    return fmt


def pcm_blocks(stream: BinaryIO, raw: PcmFormat | None = None, block_seconds: float = 0.1,
               what: str = "standard input") -> tuple[PcmFormat, Iterator[np.ndarray]]:
    """The format of `stream` and an iterator of its audio as mono float32 blocks.

    A stream that starts with `RIFF` is WAV (its header gives the format; `raw` must then be
    None or agree on nothing: the header wins); any other stream is raw PCM in the format
    `raw`, refused (`InputError`, naming `what`) when `raw` is None. Each block holds at most
    `block_seconds` of audio, and whatever the stream has at hand when it has less; a partial
    frame at the stream's end is dropped. The iterator ends when the stream does.
    """
    head = stream.read(4)
    if head == b"RIFF":
        fmt = _wav_format(stream, what)
        head = b""
    elif raw is None:
        raise InputError(f"{what} is not WAV: for raw PCM give its rate (--rate), and its "
                         "channels and sample format if not mono s16le")
    else:
        fmt = raw
    read = getattr(stream, "read1", stream.read)
    size = max(fmt.frame_bytes, int(block_seconds * fmt.rate) * fmt.frame_bytes)

    def blocks() -> Iterator[np.ndarray]:
        pending = head
        while True:
            data = read(size)
            pending += data
            whole = len(pending) - len(pending) % fmt.frame_bytes
            if whole:
                yield fmt.to_mono(pending[:whole])
                pending = pending[whole:]
            if not data:
                return

    return fmt, blocks()


def stdin_blocks(inputs, rate: int | None = None, channels: int = 1,
                 sample_format: str = "s16le") -> tuple[int, Iterator[np.ndarray]]:
    """`keras-dae predict --stream -`'s source: standard input's sample rate and mono float32
    blocks (`pcm_blocks`; raw PCM in the format `rate`, `channels`, `sample_format` when
    `rate` is given). `inputs` must be `["-"]`, else `InputError`."""
    import sys

    if list(inputs) != ["-"]:
        raise InputError("--stream reads standard input: give '-' as the only input")
    raw = PcmFormat(rate, channels, sample_format) if rate else None
    fmt, blocks = pcm_blocks(sys.stdin.buffer, raw)
    return fmt.rate, blocks
