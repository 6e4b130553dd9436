"""Audio file decoding: any file soundfile (libsndfile) reads, as mono float32 at one rate.

    info = audio_info("clip.wav")                      # header only: rate, channels, length
    y = load_audio("clip.wav", 16000)                  # (samples,) float32 in [-1, 1]
    for block in iter_audio_blocks("hour.flac", 16000, block_seconds=10.0):
        ...                                            # 10 s blocks; bounded memory
    y = read_audio_segment("hour.flac", 16000, start=16000 * 60, length=16000)

No TensorFlow: decoding is libsndfile (WAV, FLAC, OGG/Vorbis, Opus, MP3, AIFF, ... with
libsndfile >= 1.1), resampling is soxr in its "HQ" setting (librosa's default `soxr_hq`), a
band-limited resampler, run as a stream so that long files never need to fit in memory.

What is done with every input (the bad-input corpus in `tests/data/bad/` tests each case):
- any channel count is downmixed to mono by averaging the channels;
- any sample rate is resampled to the one asked for (output length `ceil(frames * ratio)`,
  as `librosa.resample`); integer (8/16/24/32-bit) and float (32/64-bit) samples are read as
  float32, and samples beyond full scale are clipped to [-1, 1];
- silence, clipping and very short files (one sample) are returned as they are;
- refused with `AudioDecodeError`, a one-line message that names the file and the problem:
  a missing file, a directory, a special file (FIFO, device), an empty (0-byte) file, a file
  that cannot be opened (permissions), a text file or any other non-audio content, an
  unsupported container (MP4/M4A, Matroska/WebM, ASF/WMA, ...), a truncated or malformed
  header, a WAV whose data is shorter than its header announces (a truncated copy), a file
  with no samples, and samples that are NaN or infinite. Non-finite samples are refused, not
  repaired: they mean that whatever wrote the file was broken, and replacing them (by zeros,
  or by interpolation) would silently change the audio.
"""

from __future__ import annotations

import math
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from keras_dae.messages import printable
from keras_dae.validation import InputError

__all__ = [
    "AudioDecodeError",
    "AudioInfo",
    "audio_info",
    "iter_audio_blocks",
    "load_audio",
    "problem_kind",
    "read_audio_segment",
    "summarize_problems",
]

SUPPORTED_FORMATS = "WAV, FLAC, OGG/Vorbis, Opus, MP3, AIFF and the other formats of libsndfile"

# Input frames read at a time by `load_audio` and by default by the streaming reader.
_READ_FRAMES = 1 << 18
# Output samples of context decoded on each side of a segment (`read_audio_segment`): soxr's
# HQ filter is far shorter, so a segment equals the same samples of the whole file's
# resampling to float32 rounding (tested).
_SEGMENT_MARGIN = 2048

# Containers and files that libsndfile does not read, by their first bytes: (offset, magic,
# what it is). Used only to make the refusal say what the file is.
_FOREIGN_MAGIC = (
    (4, b"ftyp", "an MP4/M4A container (AAC or ALAC audio)"),
    (0, b"\x1a\x45\xdf\xa3", "a Matroska/WebM container"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "an ASF/WMA container"),
    (0, b"#!AMR", "an AMR file"),
    (0, b"MThd", "a MIDI file (notes, not sampled audio)"),
    (0, b"\xff\xf1", "raw AAC (ADTS)"),
    (0, b"\xff\xf9", "raw AAC (ADTS)"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"%PDF", "a PDF document"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
)


class AudioDecodeError(InputError):
    """A file could not be turned into audio; the message names the file and the problem.

    `AudioDecodeError(path, problem)` makes the message `"<path>: <problem>"`;
    `AudioDecodeError(message)` takes a whole message (then `path` is None).

    Attributes: `path`, `problem` (the message without the path) and `kind`, a short name
    of the kind of problem (`problem_kind`), for summaries such as "3 truncated".
    """

    def __init__(self, path_or_message, problem: str | None = None):
        if problem is None:
            self.path, self.problem = None, str(path_or_message)
            message = self.problem
        else:
            self.path, self.problem = Path(path_or_message), problem
            message = f"{_name(self.path)}: {problem}"
        self.kind = problem_kind(self.problem)
        super().__init__(message)

    def __reduce__(self):  # picklable (worker processes)
        if self.path is None:
            return type(self), (self.problem,)
        return type(self), (self.path, self.problem)


# The kinds of problem, each recognised by a phrase of its messages (all written here).
PROBLEM_KINDS = (
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("not a regular file", "not a regular file"),
    ("empty file", "empty file (0 bytes)"),
    ("permission denied", "permission denied"),
    ("unreadable", "cannot be read"),
    ("unreadable", "cannot access"),
    ("unsupported format", "unsupported format"),
    ("not audio", "not audio"),
    ("not audio", "not readable as audio"),
    ("truncated", "truncated"),
    ("invalid header", "invalid header"),
    ("no samples", "contains no samples"),
    ("NaN or infinite samples", "NaN or infinite"),
    ("decoding failed", "decoding failed"),
)


def problem_kind(message: str) -> str:
    """The kind of a refusal (`"truncated"`, `"NaN or infinite samples"`, ...) from its
    message, or `"other"`."""
    for kind, phrase in PROBLEM_KINDS:
        if phrase in message:
            return kind
    return "other"


def summarize_problems(reasons, total: int | None = None, what: str = "files") -> str:
    """One line: how many files were skipped and why, e.g.
    `"skipped 3 of 20 files: 2 truncated, 1 empty file"`. `reasons`: messages (or a
    path -> message dict)."""
    reasons = list(reasons.values()) if isinstance(reasons, dict) else list(reasons)
    if not reasons:
        return f"skipped 0 {what}" if total is None else f"skipped 0 of {total} {what}"
    counts: dict[str, int] = {}
    for reason in reasons:
        kind = problem_kind(str(reason))
        counts[kind] = counts.get(kind, 0) + 1
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    of = "" if total is None else f" of {total}"
    return f"skipped {len(reasons)}{of} {what}: {parts}"


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says (`audio_info`)."""

    path: Path
    sample_rate: int  # Hz, of the file
    channels: int
    frames: int  # samples per channel, as the header announces them
    format: str  # libsndfile's major format, e.g. "WAV", "FLAC"
    subtype: str  # e.g. "PCM_16", "FLOAT"

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate

    def num_samples(self, sample_rate: int) -> int:
        """Length `load_audio(path, sample_rate)` returns: `ceil(frames * sample_rate / rate)`."""
        return _resampled_length(self.frames, self.sample_rate, sample_rate)


def _name(path: Path) -> str:
    """The path as text on one line (control characters escaped: `messages.printable`)."""
    return printable(path)


def _error(path: Path, problem: str) -> AudioDecodeError:
    return AudioDecodeError(path, " ".join(str(problem).split()))  # one line, always


def _resampled_length(frames: int, file_rate: int, sample_rate: int) -> int:
    if file_rate == sample_rate:
        return int(frames)
    return int(math.ceil(frames * (float(sample_rate) / file_rate)))  # librosa.resample


def _check_rate(sample_rate) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or (
        sample_rate <= 0
    ):
        raise InputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def _check_file(path: Path) -> bytes:
    """Refuses what is not a readable, non-empty regular file; returns its first bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        problem = "no such file (a broken symbolic link)" if path.is_symlink() else "no such file"
        raise _error(path, problem) from None
    except OSError as error:
        raise _error(path, f"cannot access it ({error.strerror or error})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _error(path, "is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise _error(path, "not a regular file (a FIFO, device or socket), not an audio file")
    if st.st_size == 0:
        raise _error(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            return f.read(64)
    except PermissionError:
        raise _error(path, "permission denied: the file cannot be opened for reading") from None
    except OSError as error:
        raise _error(path, f"cannot be read ({error.strerror or error})") from None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and all(c.isprintable() or c in "\t\r\n" for c in text)


def _wav_problem(path: Path, head: bytes, size: int) -> str | None:
    """Checks a RIFF/WAVE file's chunks against its size: a truncated header or data chunk.

    libsndfile reads a WAV whose data chunk is cut short without complaint (it returns the
    samples that are there); a truncated copy is refused here instead, naming both lengths.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align, offset = None, 12
    with open(path, "rb") as f:
        while True:
            f.seek(offset)
            header = f.read(8)
            if len(header) < 8:
                return (f"truncated WAV header: the file ends after {size} bytes, before its "
                        "'data' chunk")
            chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"fmt ":
                fmt = f.read(min(chunk_size, 16))
                if len(fmt) < 16:
                    return f"truncated WAV header: the 'fmt ' chunk is cut at {size} bytes"
                block_align = struct.unpack("<H", fmt[12:14])[0]
            elif chunk_id == b"data":
                present = size - (offset + 8)
                if chunk_size in (0, 0xFFFFFFFF) or block_align in (None, 0):
                    return None  # a streamed WAV (length unknown) or no fmt: libsndfile decides
                if chunk_size > present:
                    frames, held = chunk_size // block_align, max(present, 0) // block_align
                    return (f"truncated WAV: the header announces {frames} frames, the file "
                            f"holds {held} ({present} of {chunk_size} data bytes)")
                return None
            offset += 8 + chunk_size + (chunk_size & 1)
            if offset > size:
                return (f"truncated WAV header: chunk {chunk_id!r} runs past the end of the "
                        f"file ({size} bytes) before the 'data' chunk")


def _unreadable_reason(path: Path, head: bytes, libsndfile_message: str) -> str:
    for offset, magic, what in _FOREIGN_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return (f"unsupported format: {what}; keras-dae reads {SUPPORTED_FORMATS}; "
                    "convert it first (e.g. ffmpeg -i IN OUT.wav)")
    if _looks_like_text(head):
        return "a text file, not audio"
    return f"not readable as audio ({libsndfile_message.strip().rstrip('.')})"


def _open(path) -> tuple[soundfile.SoundFile, AudioInfo]:
    """Opens `path` for decoding after every check that needs no decoding."""
    path = Path(path)
    head = _check_file(path)
    size = path.stat().st_size
    problem = _wav_problem(path, head, size)
    if problem is not None:
        raise _error(path, problem)
    try:
        sf = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        message = getattr(error, "error_string", None) or str(error)
        raise _error(path, _unreadable_reason(path, head, message)) from None
    info = AudioInfo(path, int(sf.samplerate), int(sf.channels), int(sf.frames),
                     str(sf.format), str(sf.subtype))
    if info.sample_rate <= 0 or info.channels <= 0:
        sf.close()
        raise _error(path, f"invalid header ({info.sample_rate} Hz, {info.channels} channels)")
    if info.frames <= 0:
        sf.close()
        raise _error(path, "contains no samples")
    return sf, info


def audio_info(path) -> AudioInfo:
    """The file's header: rate, channels, length in frames, format. Decodes nothing.

    Raises `AudioDecodeError` for every problem that can be known without decoding (all of
    `load_audio`'s refusals except non-finite samples).
    """
    sf, info = _open(path)
    sf.close()
    return info


def _read_mono(sf: soundfile.SoundFile, info: AudioInfo, frames: int, position: int):
    """Reads up to `frames` frames as mono float32; refuses non-finite samples."""
    try:
        block = sf.read(frames, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        message = getattr(error, "error_string", None) or str(error)
        seconds = position / info.sample_rate
        raise _error(info.path, f"decoding failed at {seconds:.3f} s ({message})") from None
    if block.shape[0] and not np.isfinite(block).all():
        first = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0]) + position
        raise _error(info.path, f"holds NaN or infinite samples (the first at "
                                f"{first / info.sample_rate:.6f} s); non-finite audio is "
                                "refused, not repaired")
    if block.shape[1] == 1:
        return block[:, 0]
    return block.mean(axis=1, dtype=np.float32)


def _blocks(path, sample_rate: int, read_frames: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of the resampled stream (lengths vary), ending with its tail.

    The total is `ceil(decoded_frames * ratio)` samples (zeros pad the end, as
    `librosa.resample`'s length fix does).
    """
    sf, info = _open(path)
    with sf:
        same_rate = info.sample_rate == sample_rate
        stream = None if same_rate else soxr.ResampleStream(
            info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
        decoded = emitted = 0
        while True:
            mono = _read_mono(sf, info, read_frames, decoded)
            decoded += mono.size
            last = mono.size < read_frames
            out = mono if same_rate else stream.resample_chunk(mono, last=last)
            if decoded == 0 and last:
                raise _error(info.path, "contains no samples")
            if last:
                total = _resampled_length(decoded, info.sample_rate, sample_rate)
                out = out[: max(total - emitted, 0)]
                pad = total - emitted - out.size
                if pad > 0:
                    out = np.concatenate([out, np.zeros(pad, np.float32)])
            if out.size:
                emitted += out.size
                yield np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)
            if last:
                return


def load_audio(path, sample_rate: int = 16000) -> np.ndarray:
    """Reads `path` as mono float32 in [-1, 1] at `sample_rate` Hz, shape `(samples,)`.

    Multichannel audio is averaged to mono; other rates are resampled with soxr (HQ), the
    output having `ceil(frames * sample_rate / file_rate)` samples. Memory: the result plus
    one block of the file, whatever the file's channels and rate. Raises `AudioDecodeError`
    naming the file and the problem (see the module's docstring for every case).
    """
    sample_rate = _check_rate(sample_rate)
    expected = audio_info(path).num_samples(sample_rate)
    out = np.empty(expected, np.float32)  # filled in place: no second copy of the result
    filled, extra = 0, []
    for part in _blocks(path, sample_rate, _READ_FRAMES):
        room = min(part.size, expected - filled)
        out[filled : filled + room] = part[:room]
        filled += room
        if room < part.size:  # more than the header announced (MP3 estimates)
            extra.append(part[room:])
    if extra:
        return np.concatenate([out, *extra])
    return out[:filled] if filled < expected else out


def iter_audio_blocks(path, sample_rate: int = 16000,
                      block_seconds: float = 10.0) -> Iterator[np.ndarray]:
    """Streams `path` as mono float32 blocks at `sample_rate`, with bounded memory.

    Every block has `round(block_seconds * sample_rate)` samples except the last, which is
    shorter (never empty). Concatenated, the blocks equal `load_audio(path, sample_rate)`
    exactly: the resampler runs as one stream across block boundaries. Memory is a few
    blocks, whatever the file's length. File-level problems raise `AudioDecodeError` before
    the first block; non-finite samples and decoding failures raise it when reached.
    """
    sample_rate = _check_rate(sample_rate)
    if not (block_seconds > 0 and math.isfinite(block_seconds)):
        raise InputError(f"block_seconds must be a positive number, got {block_seconds!r}")
    block = max(1, int(round(block_seconds * sample_rate)))
    read_frames = min(_READ_FRAMES, max(1024, block))
    pending, held = [], 0
    for part in _blocks(path, sample_rate, read_frames):
        pending.append(part)
        held += part.size
        while held >= block:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:block].copy() if joined.size > block else joined
            rest = joined[block:]
            pending, held = ([rest] if rest.size else []), rest.size
    if held:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def read_audio_segment(path, sample_rate: int, start: int, length: int) -> np.ndarray:
    """Samples `[start, start + length)` of `load_audio(path, sample_rate)`, float32.

    Decodes only that part of the file (seeking) plus a short margin on each side for the
    resampler, so reading a second from the middle of an hour costs a second's work; the
    result equals the same samples of `load_audio` to float32 rounding (1e-6). Samples past
    the end are not returned (the result is shorter).
    """
    sample_rate = _check_rate(sample_rate)
    start, length = int(start), int(length)
    if start < 0 or length < 0:
        raise InputError(f"start and length must be >= 0, got {start} and {length}")
    sf, info = _open(path)
    with sf:
        total = info.num_samples(sample_rate)
        stop = min(start + length, total)
        if stop <= start:
            return np.zeros(0, np.float32)
        if info.sample_rate == sample_rate:
            sf.seek(start)
            return np.clip(_read_mono(sf, info, stop - start, start), -1, 1)
        g = math.gcd(info.sample_rate, sample_rate)
        p, q = sample_rate // g, info.sample_rate // g  # output sample k*p <-> input k*q
        first = max(0, (start - _SEGMENT_MARGIN) // p) * p  # on the grid: exact alignment
        in_start = first // p * q
        in_stop = min(info.frames, -(-(stop + _SEGMENT_MARGIN) * q // p))
        sf.seek(in_start)
        mono = _read_mono(sf, info, in_stop - in_start, in_start)
        out = soxr.resample(mono, info.sample_rate, sample_rate, quality="soxr_hq")
        out = out[start - first : stop - first]
        if out.size < stop - start:  # the zero padding of the last samples
            out = np.concatenate([out, np.zeros(stop - start - out.size, np.float32)])
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)

