"""The model zoo: named presets and preset directories, loaded offline.

    model = keras_dae.zoo.load("diverse_fsd50k")                  # weights from $KERAS_DAE_HOME
    model = keras_dae.zoo.load("diverse_fsd50k", weights=None)    # random initialisation
    model = keras_dae.zoo.load("runs/my_run/preset")               # a preset directory
    model = keras_dae.zoo.load("diverse_fsd50k", labels=["dog", "cat"], freeze_backbone=True)

Nothing is ever downloaded. Weights of a named preset are looked for in
`$KERAS_DAE_HOME/presets/<name>/` (default `~/.keras-dae/presets/<name>/`); presets whose
weights ship with keras-dae (`diverse_sampled15`) are read from the package unless that
directory holds a preset of the same name.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import keras

from keras_dae.models.classifier import DiverseClassifier, build_diverse_classifier
from keras_dae.version import __version__
from keras_dae.zoo import preset_files as files
from keras_dae.zoo.preset_files import PresetError
from keras_dae.zoo.presets import PRESETS, preset_vocabulary, shipped_preset_dir

__all__ = ["PRESETS", "PresetError", "keras_dae_home", "list_presets", "load", "save"]


def keras_dae_home() -> Path:
    """`$KERAS_DAE_HOME`, default `~/.keras-dae`: where named presets' weights live."""
    return Path(os.environ.get("KERAS_DAE_HOME", Path.home() / ".keras-dae")).expanduser()


def list_presets() -> dict[str, str]:
    """Name -> description of every known preset."""
    return {name: spec["description"] for name, spec in PRESETS.items()}


def save(model: DiverseClassifier, directory, labels=None, mids=None, metadata=None) -> Path:
    """Writes `model` as a preset directory (config, weights, metadata, labels).

    `labels` defaults to `model.class_names` when set, else `class_0`, `class_1`, ...
    """
    if not isinstance(model, DiverseClassifier):
        raise TypeError(f"save() takes a DiverseClassifier, got {type(model).__name__}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    labels = list(labels or getattr(model, "class_names", None) or
                  [f"class_{i}" for i in range(model.num_classes)])
    if len(labels) != model.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {model.num_classes} classes.")
    mids = list(mids or getattr(model, "class_mids", None) or [""] * len(labels))
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)  # a preset is the model, not a training setup
    files.write_json(directory / files.CONFIG_FILE, config)
    tmp = directory / (".tmp." + files.WEIGHTS_FILE)
    model.save_weights(tmp)
    os.replace(tmp, directory / files.WEIGHTS_FILE)
    meta = {
        "keras_dae_version": __version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "sample_rate": model.sample_rate,
        "num_classes": model.num_classes,
        "streams": model.stream_names,
        "parameters": int(model.count_params()),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(metadata or {}),
        "weights_sha256": files.sha256(directory / files.WEIGHTS_FILE),
    }
    files.write_json(directory / files.METADATA_FILE, meta)
    files.write_labels(directory / files.LABELS_FILE, labels, mids)
    return directory


def _resolve(name_or_path) -> tuple[str | None, Path]:
    """(preset name or None, directory to read the preset from)."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return None, path
    name = str(name_or_path)
    if name in PRESETS:
        local = keras_dae_home() / "presets" / name
        if PRESETS[name].get("shipped") and not (local / files.CONFIG_FILE).is_file():
            return name, shipped_preset_dir(name)
        return name, local
    raise PresetError(
        f"{name_or_path!r} is neither a preset directory nor a known preset "
        f"({', '.join(PRESETS)})."
    )


def _missing_weights_message(name: str, directory: Path) -> str:
    return (
        f"No weights for preset {name!r}: looked for {directory / files.WEIGHTS_FILE} "
        f"(set KERAS_DAE_HOME to change where). keras-dae never downloads weights. Train them "
        f"with `{PRESETS[name]['train_command']}` and copy RUN_DIR/preset/ to {directory}, or "
        f"load(..., weights=None) for a randomly initialised model."
    )


def load(name_or_path, weights="auto", labels=None, num_classes=None,
         freeze_backbone: bool = False) -> DiverseClassifier:
    """Returns the classifier of a named preset or a preset directory.

    Args:
        name_or_path: a name from `list_presets()` or a preset directory.
        weights: `"auto"` (the preset's own weights; an error says how to get them when they
            are missing), `None` (random initialisation), or a path to a `.weights.h5` file.
        labels: new class names: keeps the featurizer and towers, and replaces every head
            with a freshly initialised one of `len(labels)` classes (fine-tuning).
        num_classes: the same, with placeholder class names.
        freeze_backbone: make the towers and the learned front ends non-trainable, so that
            training updates only the heads.

    The model's class names are in `model.class_names` (AudioSet ids, when known, in
    `model.class_mids`). Loading uses Keras' safe mode and only keras-dae's own classes: no
    pickle, no lambdas, no code from the preset directory. The weights must match the
    SHA-256 that `metadata.json` records (presets written by `save`), so a file corrupted in
    place is refused rather than loaded as wrong weights.
    """
    name, directory = _resolve(name_or_path)
    if name is not None and not (directory / files.CONFIG_FILE).is_file():
        spec = PRESETS[name]
        model = build_diverse_classifier(spec["num_classes"], spec["sample_rate"],
                                         tower=spec["tower"])
    else:
        config_path = directory / files.CONFIG_FILE
        model = files.model_from_config(files.read_json(config_path), config_path)
        if not isinstance(model, DiverseClassifier):
            raise PresetError(f"{config_path}: holds a {type(model).__name__}, not a "
                              "DiverseClassifier")
    class_names, class_mids = None, None
    if name is not None and not (directory / files.LABELS_FILE).is_file():
        class_names, class_mids = preset_vocabulary(name) or (None, None)
    if (directory / files.LABELS_FILE).is_file():
        class_names, class_mids = files.read_labels(directory / files.LABELS_FILE)
        if len(class_names) != model.num_classes:
            raise PresetError(f"{directory / files.LABELS_FILE}: {len(class_names)} labels for "
                              f"a model with {model.num_classes} classes")
    if weights == "auto":
        if not (directory / files.WEIGHTS_FILE).is_file():
            if name is not None:
                raise PresetError(_missing_weights_message(name, directory))
            raise PresetError(f"{directory / files.WEIGHTS_FILE}: missing")
        expected = None
        if (directory / files.METADATA_FILE).is_file():
            metadata = files.read_json(directory / files.METADATA_FILE)
            expected = metadata.get("weights_sha256") if isinstance(metadata, dict) else None
        files.verify_weights(directory / files.WEIGHTS_FILE, expected)
        files.load_weights(model, directory / files.WEIGHTS_FILE)
    elif weights is not None:
        files.load_weights(model, Path(weights))
    if labels is not None or (num_classes is not None and num_classes != model.num_classes):
        if labels is not None:
            labels = list(labels)
            if num_classes is not None and num_classes != len(labels):
                raise ValueError(f"num_classes={num_classes} but {len(labels)} labels given.")
        n = len(labels) if labels is not None else int(num_classes)
        model = DiverseClassifier(model.backbone, model.featurizer, num_classes=n,
                                  dropout=model.dropout, name=model.name)
        class_names = labels or [f"class_{i}" for i in range(n)]
        class_mids = [""] * n
    if freeze_backbone:
        model.backbone.trainable = False
        model.featurizer.trainable = False
    model.class_names = class_names or [f"class_{i}" for i in range(model.num_classes)]
    model.class_mids = class_mids or [""] * model.num_classes
    return model
