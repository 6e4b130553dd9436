"""The model zoo: named presets and preset directories, loaded offline.

    model = DiverseClassifier.from_preset("diverse_fsd50k")      # weights from $KERAS_DAE_HOME
    model = DiverseClassifier.from_preset("diverse_fsd50k", load_weights=False)  # random
    model = DiverseClassifier.from_preset("runs/my_run")          # a run (its preset/)
    model = keras_dae.zoo.load("diverse_fsd50k", labels=["dog", "cat"], freeze_backbone=True)
    model = keras_dae.zoo.load("diverse_fsd50k", streams=["pitch", "timbre"])  # two streams
    model.save_to_preset("my_preset")                              # or keras_dae.zoo.save

Nothing is ever downloaded. Weights of a named preset are looked for in
`$KERAS_DAE_HOME/presets/<name>/` (default `~/.keras-dae/presets/<name>/`); presets whose
weights ship with keras-dae (`diverse_sampled15`) are read from the package unless that
directory holds a preset of the same name.
"""

from __future__ import annotations

from pathlib import Path

from keras_dae.models.classifier import DiverseClassifier
from keras_dae.zoo.loading import keras_dae_home, load_preset, resolve_preset, save_preset
from keras_dae.zoo.preset_files import PresetError
from keras_dae.zoo.presets import PRESETS

__all__ = ["PRESETS", "PresetError", "keras_dae_home", "list_presets", "load", "load_preset",
           "resolve_preset", "save"]


def list_presets() -> dict[str, str]:
    """Name -> description of every known preset."""
    return {name: spec["description"] for name, spec in PRESETS.items()}


def save(model: DiverseClassifier, directory, labels=None, mids=None, metadata=None) -> Path:
    """Writes `model` as a preset directory (config, weights, metadata, labels):
    `model.save_to_preset(directory)`, with other class names (`labels`, `mids`) for the
    preset when given. `labels` defaults to `model.class_names`, `mids` to `model.class_mids`
    (or none, when `labels` are given).
    """
    if not isinstance(model, DiverseClassifier):
        raise TypeError(f"save() takes a DiverseClassifier, got {type(model).__name__}.")
    return save_preset(model, directory, labels, mids, metadata)


def load(name_or_path, weights="auto", labels=None, num_classes=None,
         freeze_backbone: bool = False, streams=None) -> DiverseClassifier:
    """Returns the classifier of a named preset, a preset directory or a training run
    directory: `DiverseClassifier.from_preset`, with zoo's argument names.

    Args:
        name_or_path: a name from `list_presets()`, a preset directory or a run directory.
        weights: `"auto"` (the preset's own weights; an error says how to get them when they
            are missing), `None` (random initialisation), or a path to a `.weights.h5` file.
        labels: new class names: keeps the featurizer and towers, and replaces every head
            with a freshly initialised one of `len(labels)` classes (fine-tuning).
        num_classes: the same, with placeholder class names.
        freeze_backbone: make the towers and the learned front ends non-trainable, so that
            training updates only the heads.
        streams: None (every stream), or the streams to keep, as a list or `"pitch,timbre"`:
            `model.with_streams(streams)` of the loaded model (after its weights and new
            heads), a smaller model whose fused output leaves out the other streams (see
            `DiverseClassifier.with_streams`).

    The model's class names are in `model.class_names` (AudioSet ids, when known, in
    `model.class_mids`). Loading uses Keras' safe mode and only keras-dae's own classes: no
    pickle, no lambdas, no code from the preset directory. The weights must match the
    SHA-256 that `metadata.json` records (presets written by `save`), so a file corrupted in
    place is refused rather than loaded as wrong weights.
    """
    head = {}
    if labels is not None:
        head["class_names"] = list(labels)
    if num_classes is not None:
        head["num_classes"] = int(num_classes)
    model = DiverseClassifier.from_preset(
        name_or_path, load_weights=True if weights == "auto" else weights, streams=streams,
        **head)
    if freeze_backbone:
        model.backbone.trainable = False
        model.featurizer.trainable = False
    return model
