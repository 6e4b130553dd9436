"""Reading and writing preset directories, for `DiverseClassifier.from_preset` and
`save_to_preset` (and `keras_dae.zoo.load` / `save`): the model class comes in as an argument,
so the models never import the zoo's front door and the dependencies run one way, as in
keras-hub's `preset_utils`.

A preset directory (the keras-hub layout): `config.json` (the Keras config), `model.weights.h5`,
`metadata.json` (versions, backend, parameter count, `weights_sha256`) and `labels.csv` (class
names and AudioSet ids). What is checked before anything is built: `preset_files`.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import keras

from keras_dae import atomic
from keras_dae.validation import InputError
from keras_dae.version import __version__
from keras_dae.zoo import preset_files as files
from keras_dae.zoo.preset_files import PresetError
from keras_dae.zoo.presets import PRESETS, preset_vocabulary, shipped_preset_dir

BACKBONE_ONLY_CLASS = "keras_dae>DiverseContrastive"


def keras_dae_home() -> Path:
    """`$KERAS_DAE_HOME`, default `~/.keras-dae`: where named presets' weights live."""
    return Path(os.environ.get("KERAS_DAE_HOME", Path.home() / ".keras-dae")).expanduser()


def save_preset(model, directory, labels=None, mids=None, metadata=None) -> Path:
    """Writes a `DiverseClassifier` as a preset directory: `config.json`, `model.weights.h5`
    (written whole or not at all), `metadata.json` (versions, backend, `weights_sha256`, and
    `metadata`) and `labels.csv`. `labels` defaults to `model.class_names`, `mids` to
    `model.class_mids` (or none, when `labels` are given). Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    labels = list(labels) if labels is not None else model.class_names
    if len(labels) != model.num_classes:
        raise InputError(f"{len(labels)} labels for a model with {model.num_classes} classes.")
    if mids is None:
        mids = model.class_mids if labels == model.class_names else [""] * len(labels)
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)  # a preset is the model, not a training setup
    for key in ("class_names", "class_mids"):  # labels.csv holds them
        config["config"].pop(key, None)
    files.write_json(directory / files.CONFIG_FILE, config)
    atomic.save_weights(model, directory / files.WEIGHTS_FILE)
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




def resolve_preset(preset) -> tuple[str | None, Path]:
    """(preset name or None, the directory to read it from) for a preset name, a preset
    directory or a training run directory (whose preset is `RUN_DIR/preset/`).

    A named preset's directory may not exist (its weights were never installed); anything
    else that is not a directory raises a one-line `PresetError` saying how to get one.
    """
    path = Path(str(preset)).expanduser()
    if path.is_dir():
        run_preset = path / "preset"
        if run_preset.is_dir() and not (path / files.CONFIG_FILE).is_file():
            return None, run_preset
        return None, path
    name = str(preset)
    if name in PRESETS:
        local = keras_dae_home() / "presets" / name
        if PRESETS[name].get("shipped") and not (local / files.CONFIG_FILE).is_file():
            return name, shipped_preset_dir(name)
        return name, local
    raise PresetError(
        f"{preset!r} is neither a preset directory, a training run directory nor a known "
        f"preset ({', '.join(PRESETS)}); train one with `keras-dae train --data DATA_DIR "
        f"--out RUN_DIR` and pass RUN_DIR."
    )


def _missing_weights_message(name: str, directory: Path) -> str:
    return (
        f"No weights for preset {name!r}: looked for {directory / files.WEIGHTS_FILE} "
        f"(set KERAS_DAE_HOME to change where). keras-dae never downloads weights. Train them "
        f"with `{PRESETS[name]['train_command']}` and copy RUN_DIR/preset/ to {directory}, or "
        f"load(..., weights=None) for a randomly initialised model."
    )


def load_preset(cls, preset, load_weights=True, **kwargs):
    """`cls.from_preset(preset, load_weights, **kwargs)` (see `DiverseClassifier.from_preset`)."""
    name, directory = resolve_preset(preset)
    config_path, labels_path = directory / files.CONFIG_FILE, directory / files.LABELS_FILE
    built_from_spec = name is not None and not config_path.is_file()
    config = None if built_from_spec else files.read_json(config_path)
    if config is not None:  # before anything else is read or built
        files.check_config_is_safe(config, config_path)
        files.check_config_sizes(config, config_path)
    inner = config.get("config") if isinstance(config, dict) else None
    inner = inner if isinstance(inner, dict) else {}
    # A pretrained backbone (`DiverseContrastive`): no classes, new heads on its towers.
    backbone_only = (PRESETS[name].get("backbone_only", False) if built_from_spec
                     else config.get("registered_name") == BACKBONE_ONLY_CLASS)
    num_classes = PRESETS[name]["num_classes"] if built_from_spec else inner.get("num_classes")
    # New class names, or another number of classes: new heads on the same featurizer and
    # towers, made once the preset's own model has its weights.
    new_heads = None
    if "class_names" in kwargs or kwargs.get("num_classes", num_classes) != num_classes:
        new_heads = {key: kwargs.pop(key) for key in ("num_classes", "class_names", "class_mids")
                     if key in kwargs}
    if not built_from_spec:  # a preset directory: its labels.csv names the classes
        vocabulary = files.read_labels(labels_path)
        if num_classes is not None and len(vocabulary[0]) != num_classes:
            raise PresetError(f"{labels_path}: {len(vocabulary[0])} labels for a model with "
                              f"{num_classes} classes")
    else:
        vocabulary = preset_vocabulary(name) if name is not None else None
    if backbone_only:
        if new_heads is None and cls.__name__ != BACKBONE_ONLY_CLASS.split(">")[1]:
            raise PresetError(
                f"{preset}: a pretrained backbone without classes; give it yours, "
                f"{cls.__name__}.from_preset({str(preset)!r}, class_names=[...]), or "
                f"fine-tune it: keras-dae finetune --from {preset} --data DIR --out RUN_DIR")
        model = _load_backbone(preset, name, directory, config, config_path, load_weights)
        return model if new_heads is None else _with_new_heads(cls, model, new_heads, **kwargs)
    if vocabulary:  # the preset's class names, unless kwargs give the config others
        kwargs = {"class_names": vocabulary[0], "class_mids": vocabulary[1], **kwargs}
    if built_from_spec:
        spec = PRESETS[name]
        kwargs.pop("num_classes", None)
        model = cls.with_default_frontends(spec["num_classes"], spec["sample_rate"],
                                           tower=spec["tower"], **kwargs)
    else:
        inner.update(kwargs)
        model = files.model_from_config(config, config_path)
    if not isinstance(model, cls):
        raise PresetError(f"{config_path}: holds a {type(model).__name__}, not a {cls.__name__}")
    _load_preset_weights(model, name, directory, load_weights)
    if new_heads is not None:
        model = _with_new_heads(cls, model, new_heads, dropout=model.dropout, name=model.name)
    return model


def _with_new_heads(cls, model, new_heads: dict, **kwargs):
    """A `cls` on `model`'s featurizer and towers (their layers and weights shared) with new
    heads: `new_heads` holds `class_names`, `class_mids` and/or `num_classes`."""
    names = new_heads.get("class_names")
    return cls(model.backbone, model.featurizer,
               num_classes=new_heads.get("num_classes", len(names or ())), class_names=names,
               class_mids=new_heads.get("class_mids"), **kwargs)


def _load_backbone(preset, name, directory: Path, config, config_path: Path, load_weights):
    """The `DiverseContrastive` of a pretrained-backbone preset, with its weights (the class
    from Keras' registry: the models import the zoo, not the other way round)."""
    backbone_class = keras.saving.get_registered_object(BACKBONE_ONLY_CLASS)
    if config is None:  # a named preset whose directory is absent
        spec = PRESETS[name]
        model = backbone_class.with_default_frontends(spec["sample_rate"],
                                                      tower=spec["tower"])
    else:
        model = files.model_from_config(config, config_path)
    if not isinstance(model, backbone_class):
        raise PresetError(f"{config_path}: holds a {type(model).__name__}, not a "
                          "DiverseContrastive")
    _load_preset_weights(model, name, directory, load_weights)
    return model


def _load_preset_weights(model, name, directory: Path, load_weights) -> None:
    """The preset's weights (True; checked against `metadata.json`'s SHA-256), those of a
    `.weights.h5` file (a path), or none (False, None)."""
    if load_weights is True:
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
    elif load_weights not in (False, None):
        files.load_weights(model, Path(load_weights))
