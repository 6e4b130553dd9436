"""Derived models: a model rebuilt from its own config with some settings changed, carrying
every variable of the original.

    ready = derived_model(model, lambda config: with_dft_mode(config, "matmul"))

A setting that only changes how a layer computes (a DFT mode, a dtype policy, a front end's
floor) leaves the variables as they are, so the copy is the same model computing another
way. The variables are copied layer by layer through each layer's own saving hooks
(`save_own_variables` / `load_own_variables`), as `load_weights` copies them but without a
file: layers with state derived from their variables (a `Normalization` keeps its
statistics as constants, computed in `finalize_state`) finish it exactly as after loading.
"""

from __future__ import annotations

import keras

from keras_dae.validation import InputError


def copy_variables(source: keras.Layer, target: keras.Layer) -> None:
    """Copies every variable of `source` into `target`, a model or layer of the same
    architecture (the same layers in the same order), running each layer's loading hooks.

    Raises `ValueError` when a layer of `target` is not of its counterpart's class, and
    Keras' own error when its variables do not match (in number or shape).
    """
    sources = list(source._flatten_layers(include_self=True))
    targets = list(target._flatten_layers(include_self=True))
    if [type(a) for a in sources] != [type(b) for b in targets]:
        raise InputError(f"cannot copy the variables of {source.name!r} into {target.name!r}: "
                         "their layers differ")
    for a, b in zip(sources, targets, strict=True):
        store = {}
        a.save_own_variables(store)
        if store or b._trainable_variables or b._non_trainable_variables:
            b.load_own_variables({key: keras.ops.convert_to_numpy(value)
                                  for key, value in store.items()})


def rebuilt_model(model: keras.Model, change=None) -> keras.Model:
    """A new model built from `model`'s config, changed by `change` (a function from the
    serialized config to the new one; None: unchanged), with freshly initialised variables.

    The config is deserialized in safe mode under the current dtype policy (wrap the call in
    `keras_dae.scale.precision` to change it) and without the model's compile settings.
    """
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    if change is not None:
        config = change(config)
    return keras.saving.deserialize_keras_object(config, safe_mode=True)


def derived_model(model: keras.Model, change=None) -> keras.Model:
    """A copy of `model` rebuilt from its config, changed by `change` (a function from the
    serialized config to the new one; None: unchanged), with every variable of `model`.

    The config is deserialized as `rebuilt_model` does: in safe mode under the current dtype
    policy, without the model's compile settings.
    """
    twin = rebuilt_model(model, change)
    copy_variables(model, twin)
    return twin
