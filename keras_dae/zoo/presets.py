"""The known presets: name -> how to build the model, its class vocabulary, and where its
weights come from."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from keras_dae.models.backbone import TOWER_DEFAULTS

PRESETS: dict[str, dict] = {
    "diverse_fsd50k": {
        "description": (
            "Diverse Audio Embeddings (arXiv 2309.08751) for FSD50K's 200 classes: four "
            "streams (pitch, timbre, Neuralogram, end-to-end), each a 6-layer Transformer "
            "tower (d_model 64) to a 64-d embedding, fused by a linear classifier; 3.9M "
            "parameters, 16 kHz, 1 s chunks."
        ),
        "num_classes": 200,
        "sample_rate": 16000,
        "tower": dict(TOWER_DEFAULTS),
        "labels_source": "FSD50K.ground_truth/vocabulary.csv",
        "vocabulary": "fsd50k.csv",
        "train_command": (
            "keras-dae train --data /path/to/FSD50K --format fsd50k "
            "--preset diverse_fsd50k --out RUN_DIR"
        ),
    },
    "diverse_sampled15": {
        "description": (
            "The diverse_fsd50k architecture trained with keras-dae's own recipe on the repo's "
            "sampled FSD50K-layout dataset (15 AudioSet sound classes: instruments, speech, "
            "birds, animals; real recordings and sampled instruments from Debian packages). "
            "Weights ship with the package: works offline out of the box."
        ),
        "num_classes": 15,
        "sample_rate": 16000,
        "tower": dict(TOWER_DEFAULTS),
        "labels_source": "scripts/build_sampled_dataset.py (vocabulary.csv)",
        "shipped": True,
        "train_command": "bash scripts/train_shipped_preset.sh",
    },
    "diverse_pretrained": {
        "description": (
            "The diverse_fsd50k architecture's front ends and four towers pretrained without "
            "labels (COLA's contrastive objective on 1 s chunks of the same file) on hours of "
            "real audio from Debian packages that no labelled dataset of keras-dae evaluates "
            "on: a backbone without classes, to fine-tune or train on your labels."
        ),
        "num_classes": None,
        "backbone_only": True,
        "sample_rate": 16000,
        "tower": dict(TOWER_DEFAULTS),
        "labels_source": None,
        "train_command": "bash scripts/pretrain_preset.sh",
    },
    "diverse_tiny": {
        "description": (
            "A tiny configuration of the same architecture (one 2-head block of width 16 per "
            "tower, 10 classes) for tests and quick experiments."
        ),
        "num_classes": 10,
        "sample_rate": 16000,
        "tower": dict(
            d_model=16, num_layers=1, num_heads=2, intermediate_dim=32, dropout=0.0,
            max_frames=128, downsample_every=0, normalize_first=False, feature_masking=None,
        ),
        "labels_source": None,
        "train_command": (
            "keras-dae train --data DATA_DIR --preset diverse_tiny --out RUN_DIR"
        ),
    },
}


def vocabulary_path(filename: str) -> Path:
    """A class vocabulary shipped in the package (`keras_dae/zoo/vocabularies/`)."""
    return Path(str(resources.files("keras_dae.zoo") / "vocabularies" / filename))


def preset_vocabulary(name: str) -> tuple[list[str], list[str]] | None:
    """(labels, AudioSet mids) of a named preset whose vocabulary ships with keras-dae."""
    from keras_dae.data.datasets import read_fsd50k_vocabulary

    filename = PRESETS[name].get("vocabulary")
    return read_fsd50k_vocabulary(vocabulary_path(filename)) if filename else None


def shipped_preset_dir(name: str) -> Path:
    """Where a preset whose weights ship inside the package lives (`keras_dae/zoo/shipped/`)."""
    return Path(str(resources.files("keras_dae.zoo") / "shipped" / name))
