"""Writes the bad-input corpus: audio files that real collections hold and that break readers.

    python scripts/make_bad_audio.py                 # (re)writes tests/data/bad/
    python scripts/make_bad_audio.py --out DIR

Every file is generated here, deterministically (fixed seeds, libsndfile's WAV writer), and
small (about 1 MB in all), so the result is committed. The cases that cannot be committed
(a 1-hour clip, an unreadable file, a directory named like a file, a missing file, a broken
link, a FIFO) are made at test time by `tests/bad_inputs.py`, which also holds the table of
what keras-dae must do with each file (and `write_long_clip` below makes the hour).

No dependency beyond numpy and soundfile.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np
import soundfile

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "bad"


def _tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format="WAV")
    data = bytearray(buffer.getvalue())
    # Float WAVs get a 'PEAK' chunk with the time of writing: zero it (reproducible bytes).
    peak = data.find(b"PEAK", 12)
    if peak > 0:
        data[peak + 12 : peak + 16] = bytes(4)  # after id, size and version: the timestamp
    return bytes(data)


def _mp4_bytes() -> bytes:
    """A minimal MP4/M4A container: an 'ftyp' box (brand M4A) and an 'mdat' box."""
    brands = b"M4A " + struct.pack(">I", 0) + b"M4A mp42isom"
    ftyp = struct.pack(">I", 8 + len(brands)) + b"ftyp" + brands
    payload = bytes(range(256)) * 8
    mdat = struct.pack(">I", 8 + len(payload)) + b"mdat" + payload
    return ftyp + mdat


def corpus() -> dict[str, bytes]:
    """File name -> content of every committed file of the corpus."""
    rng = np.random.default_rng(9)
    files: dict[str, bytes] = {}
    good = _wav_bytes(_tone(1.0, 16000), 16000)

    # Broken files.
    files["empty.wav"] = b""
    files["truncated_header.wav"] = good[:20]  # RIFF header and half a 'fmt ' chunk
    files["truncated_body.wav"] = good[: 44 + 2 * 5000]  # 1 s announced, 5,000 frames held
    files["header_only.wav"] = _wav_bytes(np.zeros((0, 1), np.float32), 16000)  # no samples
    files["text.wav"] = ("This is a text file that someone named .wav.\n" * 40).encode()
    files["random_bytes.wav"] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    files["container.m4a"] = _mp4_bytes()

    # Numerically bad or extreme samples.
    nan = _tone(0.5, 16000)
    nan[4000:4010] = np.nan
    files["nan.wav"] = _wav_bytes(nan, 16000, "FLOAT")
    inf = _tone(0.5, 16000)
    inf[100], inf[7000] = np.inf, -np.inf
    files["inf.wav"] = _wav_bytes(inf, 16000, "FLOAT")
    files["silence.wav"] = _wav_bytes(np.zeros(16000, np.float32), 16000)
    noise = np.where(rng.random(16000) < 0.5, -1.0, 1.0).astype(np.float32)  # full scale
    files["clipped_noise.wav"] = _wav_bytes(noise, 16000)
    over = 4.0 * rng.uniform(-1, 1, 8000).astype(np.float32)  # float beyond full scale
    files["float_over_full_scale.wav"] = _wav_bytes(over, 16000, "FLOAT")

    # Channels, rates, sample formats.
    stereo = np.stack([_tone(0.5, 44100, 440.0), _tone(0.5, 44100, 660.0, 0.25)], axis=1)
    files["stereo.wav"] = _wav_bytes(stereo, 44100)
    six = np.stack([_tone(0.5, 48000, 110.0 * (k + 1), 0.1 * (k + 1)) for k in range(6)],
                   axis=1)
    files["six_channel.wav"] = _wav_bytes(six, 48000)
    files["rate_8k.wav"] = _wav_bytes(_tone(0.5, 8000, 1000.0), 8000)
    files["rate_44k1.wav"] = _wav_bytes(_tone(0.5, 44100, 1000.0), 44100)
    files["rate_96k.wav"] = _wav_bytes(_tone(0.5, 96000, 1000.0), 96000)
    files["pcm_u8.wav"] = _wav_bytes(_tone(0.5, 16000, 500.0), 16000, "PCM_U8")
    files["pcm_24.wav"] = _wav_bytes(_tone(0.5, 16000, 500.0), 16000, "PCM_24")
    files["float32.wav"] = _wav_bytes(_tone(0.5, 16000, 500.0), 16000, "FLOAT")

    # Lengths (the hour is made at test time).
    files["one_ms.wav"] = _wav_bytes(_tone(0.001, 16000, 1000.0), 16000)
    files["tenth_second.wav"] = _wav_bytes(_tone(0.1, 16000, 1000.0), 16000)

    # Names.
    files["name with spaces.wav"] = _wav_bytes(_tone(0.5, 16000, 300.0), 16000)
    files["ñandú 鳥の声 – çà.wav"] = _wav_bytes(_tone(0.5, 16000, 350.0), 16000)
    return files


def write_corpus(out: Path = DEFAULT_OUT) -> list[Path]:
    """Writes every file of `corpus()` under `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in corpus().items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written


def write_long_clip(path: Path, seconds: float = 3600.0, rate: int = 22050,
                    block_seconds: float = 60.0) -> Path:
    """A long mono 16-bit WAV (default one hour at 22,050 Hz, 159 MB), written in blocks.

    Each minute holds a tone of its own frequency plus quiet noise, so any block can be told
    from the others. Memory: one block.
    """
    total = int(round(seconds * rate))
    block = int(round(block_seconds * rate))
    with soundfile.SoundFile(str(path), "w", rate, 1, subtype="PCM_16", format="WAV") as f:
        for index, begin in enumerate(range(0, total, block)):
            n = min(block, total - begin)
            t = (begin + np.arange(n)) / rate
            rng = np.random.default_rng(index)
            y = 0.3 * np.sin(2 * np.pi * (200.0 + 10.0 * (index % 60)) * t)
            f.write((y + 0.01 * rng.standard_normal(n)).astype(np.float32))
    return Path(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in write_corpus(args.out):
        print(f"{path.stat().st_size:>8}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
