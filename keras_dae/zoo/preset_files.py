"""Reading and writing preset directories in the keras-hub layout.

A preset directory holds:
- `config.json`: the model's Keras serialization (class `keras_dae>DiverseClassifier`, or
  `keras_dae>DiverseContrastive` for a pretrained backbone without classes);
- `model.weights.h5`: its weights;
- `metadata.json`: keras-dae and Keras versions, the backend it was saved on, sample rate,
  labels source, training data and metrics, and `weights_sha256`, the SHA-256 of
  `model.weights.h5` (HDF5 has no checksum of its own: a file corrupted in place would
  otherwise load as wrong weights without an error);
- `labels.csv`: `index,label,mid`, one row per output class, UTF-8.

Everything read from a preset is checked before anything is built: JSON size and nesting,
every size a config asks for (`CONFIG_BOUNDS`), the model's class (keras-dae's own), the
labels against the number of classes. A refusal is a `PresetError` of one short line that
names the file and the reason, never the file's content.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import keras

from keras_dae import atomic
from keras_dae.messages import one_line
from keras_dae.validation import InputError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.csv"

# The largest JSON file and label file read from a preset, and the deepest nesting of a
# config (keras-dae's own configs are about 40 KB and 12 levels deep).
MAX_JSON_BYTES = 16 << 20
MAX_LABELS_BYTES = 16 << 20
MAX_CONFIG_DEPTH = 64

# Every size a preset's config may ask for: field -> (min, max), checked wherever the field
# occurs in the config (a list or dict of sizes, such as `feature_dims` or `batch_shape`, is
# checked item by item), before Keras builds or allocates anything. The maxima are far
# above any model keras-dae trains (its largest, `diverse_fsd50k`, has 200 classes, width
# 64, 6 layers of 8 heads, 128 frames) but keep a hostile or damaged config from asking for
# terabytes. None is left to the layer (a default, such as `win_length=None`).
CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    # the model
    "num_classes": (1, 32_768),
    "sample_rate": (1_000, 384_000),
    "feature_dims": (1, 4_096),  # the width of each stream's features
    "projection_dim": (1, 4_096),  # a pretrained backbone's projections
    "dim": (1, 4_096),
    # the Transformer towers
    "d_model": (1, 2_048),
    "intermediate_dim": (1, 8_192),
    "num_layers": (1, 48),
    "num_heads": (1, 128),
    "max_frames": (1, 65_536),
    "sequence_length": (1, 65_536),
    "downsample_every": (0, 48),
    "time_masks": (0, 1_000),
    "feature_masks": (0, 1_000),
    # Keras layers inside front ends and heads
    "units": (1, 32_768),
    "filters": (1, 4_096),
    "kernel_size": (1, 65_536),
    "batch_shape": (1, 1 << 22),
    "shape": (1, 1 << 22),
    "input_shape": (1, 1 << 22),
    # front ends: frames, windows and filter counts. A DFT computed as a matrix product
    # holds an (n_fft, n_fft + 2) float32 matrix: 270 MB at the largest n_fft.
    "n_fft": (1, 8_192),
    "win_length": (1, 8_192),
    "frame_length": (1, 8_192),
    "hop_length": (1, 65_536),
    "n_mels": (1, 1_024),
    "n_mfcc": (1, 1_024),
    "n_bins": (1, 1_024),
    "bins_per_octave": (1, 256),
    "n_filters": (1, 4_096),
    "n_bands": (1, 64),
    "filter_scale": (0.01, 16),
}


class PresetError(InputError):
    """A preset is missing, incomplete or unsafe; the message says which file and why."""


def write_json(path: Path, data) -> None:
    """Writes JSON atomically (`keras_dae.atomic`)."""
    atomic.write_text(path, json.dumps(data, indent=2))


def root_cause(error: BaseException) -> BaseException:
    """The first error of a chain: Keras wraps the one that says what is wrong (an unknown
    class, a layer's refusal of an argument) in generic ones."""
    for _ in range(16):
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    return error


def _check_size(path: Path, limit: int) -> None:
    if not path.is_file():
        raise PresetError(f"{path}: missing")
    size = path.stat().st_size
    if size > limit:
        raise PresetError(f"{path}: {size} bytes, more than the {limit} a preset's file may "
                          "have; refusing to read it")


def read_json(path: Path) -> dict:
    _check_size(path, MAX_JSON_BYTES)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PresetError(f"{path}: not valid JSON (line {error.lineno}, column "
                          f"{error.colno}: {error.msg})") from None
    except UnicodeDecodeError as error:
        raise PresetError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except RecursionError:
        raise PresetError(f"{path}: nested too deeply to be a preset's JSON") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise PresetError(f"{path}: not valid JSON ({one_line(error, 80)})") from None


def write_labels(path: Path, labels: list[str], mids: list[str] | None = None) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["index", "label", "mid"])
    for i, label in enumerate(labels):
        writer.writerow([i, label, mids[i] if mids else ""])
    atomic.write_text(path, text.getvalue())


def read_labels(path: Path) -> tuple[list[str], list[str]]:
    """Labels and AudioSet ids from `index,label,mid` (header optional, mid may be empty).

    Refusals say which row, never what it holds: the file may be a link to one outside the
    preset."""
    _check_size(path, MAX_LABELS_BYTES)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PresetError(f"{path}: not UTF-8 text (byte {error.start})") from None
    if "\0" in text:
        raise PresetError(f"{path}: not text (it holds NUL bytes)")
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as error:
        raise PresetError(f"{path}: not CSV ({one_line(error, 80)})") from None
    if rows and rows[0][:2] == ["index", "label"]:
        rows = rows[1:]
    labels, mids = [], []
    for line, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) < 2 or not row[0].strip().isdigit() or int(row[0]) != len(labels):
            raise PresetError(f"{path}: row {line} is not 'index,label,mid' with index "
                              f"{len(labels)}")
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


def _bound_problem(field: str, value, where: str) -> str | None:
    """Why `value` of `field` is out of `CONFIG_BOUNDS`, or None. A list of sizes (and the
    `feature_dims` dict) is checked item by item; None is left to the layer."""
    if isinstance(value, (list, tuple)) or (isinstance(value, dict) and field == "feature_dims"):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if item is not None and _bound_problem(field, item, ""):
                return _bound_problem(field, item, f"{where}[{key!r}]")
        return None
    low, high = CONFIG_BOUNDS[field]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None or (number and low <= value <= high):  # NaN compares false: refused
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 30:
        shown = f"about 10^{int(value.bit_length() * 0.30103)}"
    else:
        shown = one_line(repr(value), 40)
    return f"{where} is {shown}, outside keras-dae's bounds for {field!r} [{low}, {high}]"


def check_config_sizes(config, path: Path) -> None:
    """Refuses a config nested deeper than `MAX_CONFIG_DEPTH` or asking for a size outside
    `CONFIG_BOUNDS`, before anything is built: one line naming the file, field and bound."""
    stack = [(config, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise PresetError(f"{path}: nested more than {MAX_CONFIG_DEPTH} levels deep; "
                              "refusing to build the model")
        if isinstance(node, dict):
            for key, value in node.items():
                key_where = f"{where}.{one_line(key, 40)}".lstrip(".")
                key_where = key_where if len(where) < 160 else where
                if key in CONFIG_BOUNDS:
                    problem = _bound_problem(key, value, key_where)
                    if problem:
                        raise PresetError(f"{path}: {problem}; refusing to build the model")
                if isinstance(value, (dict, list, tuple)):
                    stack.append((value, key_where, depth + 1))
        elif isinstance(node, (list, tuple)):
            stack.extend((value, f"{where}[{i}]" if len(where) < 160 else where, depth + 1)
                         for i, value in enumerate(node) if isinstance(value, (dict, list, tuple)))


def model_from_config(config: dict, path: Path) -> keras.Model:
    check_config_is_safe(config, path)
    check_config_sizes(config, path)
    # Presets written before keras-dae 0.1 kept the training compile settings; a loaded
    # preset is not compiled (compile it to train), so they are dropped.
    config = {k: v for k, v in config.items() if k != "compile_config"}
    try:
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:  # Keras raises many types for bad configs
        raise PresetError(f"{path}: cannot build the model from it "
                          f"({one_line(root_cause(error))})") from error


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
        recorded = str(expected).lower()
        recorded = (f"records {recorded[:16]}..." if len(recorded) == 64 and
                    all(c in "0123456789abcdef" for c in recorded) else "records no SHA-256")
        raise PresetError(f"{path}: corrupted or modified: its SHA-256 is {actual[:16]}..., "
                          f"metadata.json {recorded}")


def load_weights(model: keras.Model, path: Path) -> None:
    if not path.is_file():
        raise PresetError(f"{path}: missing")
    try:
        model.load_weights(path)
    except Exception as error:  # h5py and Keras raise many types for bad files
        raise PresetError(f"{path}: cannot load the weights ({one_line(error)})") from None
