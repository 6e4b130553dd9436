"""Reading and writing preset directories in the keras-hub layout.

A preset directory holds:
- `config.json`: the classifier's Keras serialization (class `keras_dae>DiverseClassifier`);
- `model.weights.h5`: its weights;
- `metadata.json`: keras-dae and Keras versions, the backend it was saved on, sample rate,
  labels source, training data and metrics, and `weights_sha256`, the SHA-256 of
  `model.weights.h5` (HDF5 has no checksum of its own: a file corrupted in place would
  otherwise load as wrong weights without an error);
- `labels.csv`: `index,label,mid`, one row per output class.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import keras

from keras_dae import atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.csv"


class PresetError(ValueError):
    """A preset is missing, incomplete or unsafe; the message says which file and why."""


def write_json(path: Path, data) -> None:
    """Writes JSON atomically (`keras_dae.atomic`)."""
    atomic.write_text(path, json.dumps(data, indent=2))


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise PresetError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PresetError(f"{path}: not valid JSON ({error})") from None


def write_labels(path: Path, labels: list[str], mids: list[str] | None = None) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["index", "label", "mid"])
    for i, label in enumerate(labels):
        writer.writerow([i, label, mids[i] if mids else ""])
    atomic.write_text(path, text.getvalue())


def read_labels(path: Path) -> tuple[list[str], list[str]]:
    """Labels and AudioSet ids from `index,label,mid` (header optional, mid may be empty)."""
    if not path.is_file():
        raise PresetError(f"{path}: missing")
    rows = list(csv.reader(path.read_text().splitlines()))
    if rows and rows[0][:2] == ["index", "label"]:
        rows = rows[1:]
    labels, mids = [], []
    for line, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) < 2 or not row[0].strip().isdigit() or int(row[0]) != len(labels):
            raise PresetError(f"{path}: row {line} is not 'index,label,mid' in order: {row}")
        labels.append(row[1])
        mids.append(row[2] if len(row) > 2 else "")
    return labels, mids


def check_config_is_safe(config: dict, path: Path) -> None:
    """Only keras-dae's own registered classes may be the root of a preset's model."""
    name = config.get("registered_name") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name.startswith("keras_dae>"):
        raise PresetError(
            f"{path}: the model class {name!r} is not a keras-dae class; refusing to load it"
        )


def model_from_config(config: dict, path: Path) -> keras.Model:
    check_config_is_safe(config, path)
    # Presets written before keras-dae 0.1 kept the training compile settings; a loaded
    # preset is not compiled (compile it to train), so they are dropped.
    config = {k: v for k, v in config.items() if k != "compile_config"}
    try:
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:  # Keras raises many types for bad configs
        raise PresetError(f"{path}: cannot build the model from it "
                          f"({' '.join(str(error).split())})") from error


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: Path, expected: str | None) -> None:
    """Refuses weights whose SHA-256 is not the one the preset's metadata records."""
    if expected is None:
        return
    if not path.is_file():
        raise PresetError(f"{path}: missing")
    actual = sha256(path)
    if actual != expected:
        raise PresetError(f"{path}: corrupted or modified: its SHA-256 is {actual[:16]}..., "
                          f"metadata.json records {str(expected)[:16]}...")


def load_weights(model: keras.Model, path: Path) -> None:
    if not path.is_file():
        raise PresetError(f"{path}: missing")
    try:
        model.load_weights(path)
    except Exception as error:  # h5py and Keras raise many types for bad files
        raise PresetError(f"{path}: cannot load the weights "
                          f"({' '.join(str(error).split())})") from None
