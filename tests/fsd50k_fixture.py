"""A small dataset in FSD50K's real layout, written from the real recordings in tests/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from conftest import harmonic_tone, load_recording

from keras_dae.data import write_fsd50k_layout

# Class, AudioSet id (where the class exists in AudioSet), source.
CLASSES = [
    ("Speech", "/m/09x0r", lambda: load_recording("speech_front_center.wav", 44100)),
    ("Camera", "", lambda: load_recording("camera_shutter.oga", 44100)),
    ("Telephone", "/m/07cx4", lambda: load_recording("phone_incoming_call.oga", 44100)),
    ("Tone", "", lambda: harmonic_tone(f0=330.0, seconds=1.5, sr=44100)),
]


def write_small_fsd50k(root: Path, per_class=(6, 2, 2), seed: int = 0) -> Path:
    """`per_class` clips of each class for (train, val, eval): gain, noise and a random cut
    vary each copy; saved as 44.1 kHz 16-bit WAV like FSD50K. Returns `root`."""
    rng = np.random.default_rng(seed)
    vocabulary = [(name, mid) for name, mid, _ in CLASSES]
    paths = write_fsd50k_layout(root, [], [], vocabulary)
    dev, ev, fname = [], [], 0
    for split, n in zip(("train", "val", "eval"), per_class, strict=True):
        for name, mid, make in CLASSES:
            source = make()
            for _ in range(n):
                start = int(rng.integers(0, max(1, len(source) // 4)))
                y = source[start:] * rng.uniform(0.3, 1.2)
                y = y + 0.003 * rng.standard_normal(len(y))
                folder = paths["eval_audio"] if split == "eval" else paths["dev_audio"]
                soundfile.write(folder / f"{fname}.wav", np.clip(y, -1, 1), 44100,
                                subtype="PCM_16")
                row = (str(fname), [name], [mid], split)
                (ev if split == "eval" else dev).append(row)
                fname += 1
    write_fsd50k_layout(root, dev, ev, vocabulary)
    return root
