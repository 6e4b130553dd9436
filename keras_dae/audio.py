"""Audio file decoding: any file soundfile (libsndfile) reads, as mono float32 at one rate.

No TensorFlow: decoding is libsndfile (WAV, FLAC, OGG/Vorbis, Opus, MP3 with libsndfile >=
1.1), resampling is librosa's soxr ("soxr_hq"), a proper band-limited resampler.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import soundfile


class AudioDecodeError(ValueError):
    """A file could not be turned into audio; the message names the file and the problem."""


def load_audio(path, sample_rate: int = 16000) -> np.ndarray:
    """Reads `path` as mono float32 in [-1, 1] at `sample_rate` Hz, shape `(samples,)`.

    Multichannel audio is averaged to mono; other rates are resampled with soxr. Raises
    `AudioDecodeError` naming the file for missing, empty, unreadable or non-audio files, and
    for samples that are NaN or infinite.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioDecodeError(f"{path}: is a directory, not an audio file")
    if not path.exists():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")
    try:
        audio, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioDecodeError(f"{path}: not readable as audio ({error})") from None
    if audio.shape[0] == 0:
        raise AudioDecodeError(f"{path}: contains no samples")
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise AudioDecodeError(f"{path}: {bad} samples are NaN or infinite")
    mono = audio.mean(axis=1)
    if file_rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=file_rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.clip(mono, -1.0, 1.0).astype(np.float32)
