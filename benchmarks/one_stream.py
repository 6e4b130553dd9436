"""Shared by the benchmarks that weigh one front-end setting: one stream trained alone.

A setting that makes exports agree better with the Keras model (a floor, a narrower dB
range) can cost accuracy. `train_stream` measures that cost: one stream of the default
featurizer, with some of its front ends' config changed, trained from scratch with the
preset's tower on the dataset's train split, its best-on-val epoch scored on val and eval
(clip mAP). Seeds vary the initial weights and the batch order, and the spread over seeds is
the noise a setting is compared against.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def frontend_of(model, layer_class):
    """The model's first front end that is a `layer_class`."""
    return next(f for fs in model.featurizer.streams.values() for f in fs
                if isinstance(f, layer_class))


def stream_frontends(stream: str, sample_rate: int, changes: dict) -> list:
    """The default featurizer's `stream` front ends, with `changes[class name]` (a dict of
    config values) applied to the layers of that class, nested ones too (the Neuralogram's
    window network's filterbank; with another `n_filters` its window network is built anew,
    its layers sized for that many filters)."""
    import keras

    from keras_dae import layers
    from keras_dae.layers.neuralogram import default_embedding_network
    from keras_dae.models.featurizer import default_stream_frontends

    n_filters = changes.get("LearnedFilterbank", {}).get("n_filters")
    built = []
    for layer in default_stream_frontends(sample_rate)[stream]:
        if isinstance(layer, layers.Neuralogram) and n_filters is not None:
            layer = layers.Neuralogram(
                default_embedding_network(layer.win_length, n_filters=n_filters),
                hop_length=layer.hop_length, center=layer.center, sample_rate=sample_rate)
        built.append(keras.saving.deserialize_keras_object(
            changed(keras.saving.serialize_keras_object(layer), changes)))
    return built


def changed(node, changes: dict):
    """A serialized Keras object `node` whose objects of class `name` (at any depth) have
    the config values `changes[name]`; changed in place and returned."""
    if isinstance(node, dict):
        if node.get("class_name") in changes:
            node["config"].update(changes[node["class_name"]])
        for value in node.values():
            changed(value, changes)
    elif isinstance(node, list):
        for value in node:
            changed(value, changes)
    return node


def train_stream(data: Path, stream: str, changes: dict, seed: int, epochs: int,
                 cache: Path, frontends: list | None = None) -> tuple[dict, object]:
    """Trains `stream` alone with `changes` (see `stream_frontends`), or on `frontends`
    instead of the default featurizer's; returns its scores (`val_map`, `eval_map`,
    `train_seconds`) and the trained model. Features without weights are cached under
    `cache`, which must be specific to the changes."""
    import keras

    from keras_dae import training
    from keras_dae.data import read_split
    from keras_dae.models import build_diverse_classifier
    from keras_dae.zoo.presets import PRESETS

    train = read_split(data, "train", "fsd50k")
    val = read_split(data, "val", "fsd50k").with_labels(train.labels)
    test = read_split(data, "eval", "fsd50k").with_labels(train.labels)
    spec = PRESETS["diverse_fsd50k"]
    keras.utils.set_random_seed(seed)
    if frontends is None:
        frontends = stream_frontends(stream, spec["sample_rate"], changes)
    model = build_diverse_classifier(len(train.labels), spec["sample_rate"],
                                     tower=dict(spec["tower"]), streams={stream: frontends})
    # A learned front end trains with its tower: only fixed features can be cached.
    cached = str(cache) if model.featurizer.fixed_streams() else None
    config = training.TrainConfig(tower_epochs=epochs, fusion_epochs=0, joint_epochs=0,
                                  batch_size=32, seed=seed, feature_cache=cached)
    run = Path(tempfile.mkdtemp(prefix=f"{stream}_stream_"))
    try:
        start = time.time()
        training.Trainer(model, train, val, run, config, verbose=0).run()
        seconds = time.time() - start
    finally:
        shutil.rmtree(run, ignore_errors=True)
    scores = {"seed": seed, "epochs": epochs, "train_seconds": round(seconds),
              "val_map": training.evaluate(model, val)["streams"][stream],
              "eval_map": training.evaluate(model, test)["streams"][stream]}
    return scores, model


def with_frontend_config(model, changes: dict, change=None):
    """A copy of `model`, with its variables, whose front ends of class `name` have the
    config values `changes[name]`, after `change` (a function of the serialized model, for
    callers that change more) when given."""
    from keras_dae.models.derived import derived_model

    return derived_model(model, lambda config: changed(change(config) if change else config,
                                                       changes))


def merge(results: dict, key: str, rows: list[dict], identity) -> None:
    """Puts `rows` into `results[key]`, replacing rows with the same `identity(row)`."""
    kept = {identity(r): r for r in results.get(key, [])}
    kept.update({identity(r): r for r in rows})
    results[key] = sorted(kept.values(), key=lambda r: tuple(str(v) for v in identity(r)))


def mean_sd(values) -> str:
    """`mean ± sd` (sample sd) to three decimals."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sd:.3f}"


def accuracy_cells(rows: list[dict]) -> str:
    """One setting's table cells: eval mAP per seed, their mean ± sd, the mean val mAP."""
    import numpy as np

    rows = sorted(rows, key=lambda r: r["seed"])
    seeds = ", ".join(f"{r['eval_map']:.3f}" for r in rows)
    return (f"{seeds} | {mean_sd([r['eval_map'] for r in rows])} | "
            f"{np.mean([r['val_map'] for r in rows]):.3f}")


def parser(description: str, settings_flag: str, default_settings: str, settings_help: str,
           cache_name: str) -> argparse.ArgumentParser:
    """The command line these benchmarks share; `settings_flag` names the setting's values."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=Path("/tmp/sampled_fsd50k"))
    parser.add_argument(settings_flag, dest="settings", default=default_settings,
                        help=settings_help)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / cache_name)
    parser.add_argument("--parity", action="store_true", help="measure export parity instead")
    parser.add_argument("--model", default="diverse_sampled15", help="model for --parity")
    parser.add_argument("--table", action="store_true", help="print the results as tables")
    parser.add_argument("--results", type=Path, default=None,
                        help="results file (default: the benchmark's own)")
    return parser


def run(args, results_path: Path, train, parity, table, accuracy_id, parity_id,
        setting=float) -> int:
    """Trains (`train(data, setting, seed, epochs, cache)`, one row per setting and seed) or
    measures parity (`parity(model, data, settings)`, rows); merges the rows into
    `results_path` by `accuracy_id` / `parity_id`, and prints `table(results)`. `setting`
    parses each of the comma-separated settings."""

    def add(key: str, rows: list[dict], identity) -> None:
        # Read again before each write: runs of other settings may share the file.
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        merge(results, key, rows, identity)
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    if not args.table:
        settings = [setting(v) for v in args.settings.split(",")]
        if args.parity:
            add("parity", parity(args.model, args.data, settings), parity_id)
        else:  # written after every row, so a stopped run keeps the rows it trained
            for seed in (int(s) for s in args.seeds.split(",")):
                for value in settings:
                    row = train(args.data, value, seed, args.epochs, args.cache)
                    print(json.dumps(row), flush=True)
                    add("accuracy", [row], accuracy_id)
    print(table(json.loads(results_path.read_text()) if results_path.is_file() else {}))
    return 0


def by_stream_and(results: dict, key: str) -> dict:
    """The accuracy rows of `results` grouped by `(stream, row[key])`."""
    groups = {}
    for r in results.get("accuracy", []):
        groups.setdefault((r["stream"], r[key]), []).append(r)
    return groups


def stream_main(argv, description: str, settings: tuple, streams: tuple, results_path: Path,
                trainer, table, key: str, no_parity: str, setting=float) -> int:
    """`main` of a benchmark that weighs a setting of the learned front ends on one learned
    stream (`--stream`) trained alone: `settings` is `parser`'s `(flag, default, help,
    cache name)`, `trainer(stream)` gives `run`'s `train`, rows are identified by stream,
    `row[key]`, seed and epochs; `--parity` is refused with `no_parity`."""
    parser_ = parser(description, *settings)
    parser_.add_argument("--stream", choices=streams, default=streams[0])
    args = parser_.parse_args(argv)
    if args.parity:
        parser_.error(f"--parity: {no_parity}")
    return run(args, args.results or results_path, trainer(args.stream), None, table,
               accuracy_id=lambda r: (r["stream"], r[key], r["seed"], r["epochs"]),
               parity_id=None, setting=setting)
