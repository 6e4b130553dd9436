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


def write_large_fsd50k_index(root: Path, n_clips: int = 50_000, val_share: float = 0.1,
                             seed: int = 0) -> Path:
    """FSD50K's layout at full size: `n_clips` dev clips (train and val) with FSD50K's
    200-class vocabulary and 1-3 random labels each, every `<fname>.wav` a symbolic link to
    one of four real 44.1 kHz recordings (0.5-3 s; cheap to create, real to probe and decode).
    Returns `root`."""
    import os

    from keras_dae.zoo.presets import preset_vocabulary

    labels, mids = preset_vocabulary("diverse_fsd50k")
    sources = root / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    made = []
    for k, (_, _, make) in enumerate(CLASSES):
        path = sources / f"{k}.wav"
        soundfile.write(path, make(), 44100, subtype="PCM_16")
        made.append(path)
    rng = np.random.default_rng(seed)
    paths = write_fsd50k_layout(root, [], [], list(zip(labels, mids, strict=True)))
    rows = []
    for fname in range(n_clips):
        os.symlink(made[fname % len(made)], paths["dev_audio"] / f"{fname}.wav")
        chosen = rng.choice(len(labels), int(rng.integers(1, 4)), replace=False)
        split = "val" if rng.random() < val_share else "train"
        rows.append((str(fname), [labels[c] for c in chosen], [mids[c] for c in chosen], split))
    write_fsd50k_layout(root, rows, [], list(zip(labels, mids, strict=True)))
    return root
