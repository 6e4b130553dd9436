"""A classifier on some of its streams: `DiverseClassifier.with_streams`.

The streams kept are rebuilt from the model's own config (same front ends, same tower
settings and overrides, same classes) and get every variable of their front ends, towers
and heads through `copy_variables`, so each kept stream computes exactly what it computed in
the full model. Only the fusion head changes: it is made from the original's (see
`fusion_variables`).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_dae.models.derived import copy_variables, rebuilt_model
from keras_dae.validation import InputError


def chosen_streams(model_streams, streams) -> list[str]:
    """`streams` (a list of names, or one string of names separated by commas) in the model's
    own stream order; an `InputError` naming the value for an unknown stream, a stream given
    twice, or none."""
    model_streams = list(model_streams)
    given = ([part.strip() for part in streams.split(",") if part.strip()]
             if isinstance(streams, str) else list(streams))
    if not given:
        raise InputError(f"No streams given ({streams!r}); this model has {model_streams}.")
    for name in given:
        if name not in model_streams:
            raise InputError(f"Unknown stream {name!r}; this model has {model_streams}.")
        if given.count(name) > 1:
            raise InputError(f"Stream {name!r} is given {given.count(name)} times; this model "
                             f"has {model_streams}.")
    return [name for name in model_streams if name in given]


def subset_config(config: dict, kept: list[str]) -> dict:
    """A serialized `DiverseClassifier` config reduced to the streams `kept`."""
    inner = config["config"]
    featurizer = inner["featurizer"]["config"]
    featurizer["streams"] = {name: featurizer["streams"][name] for name in kept}
    backbone = inner["backbone"]["config"]
    backbone["feature_dims"] = {name: backbone["feature_dims"][name] for name in kept}
    backbone["tower_overrides"] = {name: value for name, value in
                                   (backbone.get("tower_overrides") or {}).items()
                                   if name in kept}
    return config


def fusion_variables(model, kept: list[str]) -> dict:
    """The fusion head of the subset, as a store for `load_own_variables` (kernel `"0"`,
    bias `"1"`).

    One stream: that stream's own head, so the fused output is the stream's output. Several:
    the rows of the original fusion kernel that multiply the kept streams' embeddings, and
    the original bias. The fused logit of the full model is the bias plus one term per
    stream; this keeps the kept streams' terms and leaves out the others', an approximation
    that is only as good as the dropped terms are small or constant.
    """
    store = {}
    if len(kept) == 1:
        model.stream_heads[kept[0]].save_own_variables(store)
        return store
    model.fusion_head.save_own_variables(store)
    rows, start = [], 0
    for name in model.stream_names:
        width = model.backbone.towers[name].d_model
        if name in kept:
            rows.append(np.arange(start, start + width))
        start += width
    store["0"] = keras.ops.convert_to_numpy(store["0"])[np.concatenate(rows)]
    return store


def with_streams(model, streams):
    """`model.with_streams(streams)` (see `DiverseClassifier.with_streams`)."""
    kept = chosen_streams(model.stream_names, streams)
    subset = rebuilt_model(model, lambda config: subset_config(config, kept))
    for name in kept:
        for source, target in zip(model.featurizer.streams[name],
                                  subset.featurizer.streams[name], strict=True):
            copy_variables(source, target)
        copy_variables(model.backbone.towers[name], subset.backbone.towers[name])
        copy_variables(model.stream_heads[name], subset.stream_heads[name])
    subset.fusion_head.load_own_variables(
        {key: keras.ops.convert_to_numpy(value)
         for key, value in fusion_variables(model, kept).items()})
    return subset
