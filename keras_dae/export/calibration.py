"""Representative audio for int8 calibration: 1 s windows drawn from a dataset or files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_dae.audio import AudioDecodeError, load_audio
from keras_dae.data import AUDIO_EXTENSIONS, chunk_waveform
from keras_dae.validation import InputError

DEFAULT_WINDOWS = 200


def audio_files(source) -> list[Path]:
    """The audio files of `source`: a dataset directory in any layout keras-dae reads (its
    training split), a directory of audio files (searched recursively), or one file."""
    from keras_dae.data import detect_format, find_audio_files, read_split

    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such file or directory")
    if detect_format(source) is not None:
        return [Path(p) for p in read_split(source, "train").paths]
    files = find_audio_files(source)
    if not files:
        raise FileNotFoundError(f"{source}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


def training_data(preset_dir) -> Path:
    """The default int8 calibration audio of a preset: the dataset it was trained on (its
    `metadata.json`'s `training_data`), when it is still there; refused otherwise."""
    from keras_dae.zoo import preset_files

    metadata = Path(preset_dir) / "metadata.json"
    data = preset_files.read_json(metadata).get("training_data") if metadata.is_file() else None
    if not data or not Path(data).exists():
        raise InputError("--quantize int8 calibrates on representative audio: give "
                         "--calibration DATASET_OR_AUDIO_DIR")
    return Path(data)


def calibration_windows(source, sample_rate: int, window: int,
                        max_windows: int = DEFAULT_WINDOWS, seed: int = 0) -> np.ndarray:
    """Up to `max_windows` windows `(n, window)` float32 of representative audio.

    `source` is a path (see `audio_files`) or an array of waveforms `(n, window)`. Files are
    visited in a seeded random order and one random window is taken from each until
    `max_windows` are collected (files that fail to decode are skipped), so the set spans as
    many recordings as possible.
    """
    if not isinstance(source, (str, Path)):
        windows = np.asarray(source, np.float32)
        if windows.ndim != 2 or windows.shape[1] != window:
            raise InputError(f"calibration audio must have shape (n, {window}), got "
                             f"{windows.shape}")
        return windows[:max_windows]
    files = audio_files(source)
    rng = np.random.default_rng(seed)
    out = []
    for index in rng.permutation(len(files)):
        try:
            chunks = chunk_waveform(load_audio(files[index], sample_rate), sample_rate,
                                    window / sample_rate)
        except (AudioDecodeError, ValueError, OSError):
            continue
        out.append(chunks[rng.integers(len(chunks))])
        if len(out) >= max_windows:
            break
    if not out:
        raise InputError(f"{source}: no decodable audio for calibration")
    return np.stack(out).astype(np.float32)
