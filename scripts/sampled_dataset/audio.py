"""Decoding recordings and the signal helpers that sources and synthesis both use."""

from __future__ import annotations

import math

import numpy as np
import scipy.signal
import soundfile as sf

from .common import SAMPLE_RATE, BuildError


class AudioCache:
    """Decoded recordings: mono float32 at 44.1 kHz, leading/trailing silence trimmed."""

    def __init__(self) -> None:
        self.audio: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray:
        if path not in self.audio:
            self.audio[path] = trim_silence(read_mono(path))
        return self.audio[path]


def read_mono(path: str, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A file decoded by soundfile, channels averaged, resampled (polyphase) to ``rate``:
    float32."""
    try:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types
        raise BuildError(f"cannot decode {path}: {exc}") from exc
    return resample(data.mean(axis=1), file_rate, rate)


def resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """``x`` at ``rate`` Hz resampled (polyphase, scipy's Kaiser window) to ``new_rate``."""
    if rate == new_rate:
        return x.astype("float32")
    g = math.gcd(int(rate), int(new_rate))
    return scipy.signal.resample_poly(x, new_rate // g, rate // g).astype("float32")


def trim_silence(x: np.ndarray, floor_db: float = -50.0) -> np.ndarray:
    """Cut leading and trailing samples below ``floor_db`` of the peak; empty if silent."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak < 1e-4:
        return np.zeros(0, "float32")
    loud = np.flatnonzero(np.abs(x) > peak * 10 ** (floor_db / 20))
    return x[max(0, loud[0] - 220): loud[-1] + 1].astype("float32")


def same_recording(a: np.ndarray, b: np.ndarray, threshold: float = 0.8,
                   min_overlap: int = 2000) -> bool:
    """Whether two signals contain the same recording (cut, shifted or scaled differently).

    True when, at some lag, the normalised correlation over an overlap of at least
    ``min_overlap`` samples is at least ``threshold``. On Tux Paint's animals at 4 kHz (0.5 s
    overlap), copies score 0.88-1.0 and different recordings at most 0.6. Signals shorter
    than ``min_overlap`` are never matched: short one-shots (kicks, toms, tabla strokes)
    are damped sinusoids that correlate whatever their source.
    """
    if min(len(a), len(b)) < min_overlap:
        return False
    dots = scipy.signal.fftconvolve(b, a[::-1], mode="full")
    shift = np.arange(len(dots)) - (len(a) - 1)  # b index minus a index
    start_a, start_b = np.maximum(0, -shift), np.maximum(0, shift)
    length = np.minimum(len(a) - start_a, len(b) - start_b)
    cum_a = np.concatenate([[0.0], np.cumsum(a.astype("float64") ** 2)])
    cum_b = np.concatenate([[0.0], np.cumsum(b.astype("float64") ** 2)])
    energy_a = cum_a[start_a + length] - cum_a[start_a]
    energy_b = cum_b[start_b + length] - cum_b[start_b]
    ok = ((length >= min_overlap) & (energy_a > 1e-4 * cum_a[-1])
          & (energy_b > 1e-4 * cum_b[-1]))
    if not np.any(ok):
        return False
    return bool(np.max(dots[ok] / np.sqrt(energy_a[ok] * energy_b[ok])) >= threshold)


def active_rms(x: np.ndarray, frame: int = 1024) -> float:
    """RMS over the frames within 30 dB of the loudest frame (level of the sound itself)."""
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2))) if x.size else 0.0
    power = np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1)
    top = power.max()
    return float(np.sqrt(np.mean(power[power >= top * 1e-3]))) if top > 0 else 0.0


def fade(x: np.ndarray, seconds: float = 0.008) -> np.ndarray:
    n = min(len(x) // 2, int(seconds * SAMPLE_RATE))
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype="float32")
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def add_at(out: np.ndarray, x: np.ndarray, start: int, gain: float = 1.0) -> None:
    if start >= len(out) or start + len(x) <= 0:
        return
    a, b = max(0, start), min(len(out), start + len(x))
    out[a:b] += gain * x[a - start:b - start]


def room_reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room (exponentially decaying noise), mixed with the dry."""
    rt60 = rng.uniform(0.2, 0.8)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir = (ir / np.sqrt(np.sum(ir ** 2))).astype("float32")
    wet = scipy.signal.fftconvolve(x, ir)[: len(x)].astype("float32")
    mix = rng.uniform(0.1, 0.35)
    dry_rms, wet_rms = active_rms(x), active_rms(wet)
    if wet_rms > 0:
        wet *= dry_rms / wet_rms
    return (1 - mix) * x + mix * wet


def crop_loud(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """A random ``n``-sample segment of ``x``, preferring segments that are not quiet."""
    if len(x) <= n:
        return x
    best, best_rms = 0, -1.0
    for _ in range(8):
        start = int(rng.integers(0, len(x) - n + 1))
        rms = active_rms(x[start:start + n])
        if rms > best_rms:
            best, best_rms = start, rms
        if rms > 0.3 * active_rms(x):
            break
    return x[best:best + n]
