"""Where do the towers lose time? Each tower's temporal share at every step, block by block.

    KERAS_BACKEND=jax python benchmarks/temporal_share.py --data /tmp/sampled_fsd50k \\
        --models random,diverse_pretrained,diverse_pretrained:new_attention,diverse_sampled15

A tower's temporal share (`keras_dae.metrics.temporal_share`) is the share of the variance of
its frames, over a set of clips, that lies along time within a clip: 0 when every frame of a
clip holds the same vector. Every pretrained backbone measured so far ends with almost none
(docs/pretraining.md, "Time averaged away"); this follows it through the tower
(`StreamTower.sequences`): the features as they enter, the projected frames with their
position embeddings, the output of every block (pooled where the tower pools) and the final
layer norm's. The clips are the first 1 s chunk of every clip of the dataset's eval split,
real recordings that no pretraining corpus or training split holds.

`--models`: a comma-separated list of preset names or directories (a pretraining run's
`preset/` too), `random` (the `--architecture` preset's towers as drawn, seed 0), and any of
them followed by `:new_attention` (its towers' attention drawn anew, seed 0, as `keras-dae
train --preset diverse_pretrained` does before training: small, query, key and value tied)
or `:new_block_attention` (drawn as a new block draws it), each as `LABEL=MODEL` to give its
row another name than the model's. Rows are merged into
benchmarks/results/temporal_share.json (a model measured again replaces its row).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "temporal_share.json"


def load(name: str, architecture: str):
    """The featurizer and backbone of `name` (see the module's docstring)."""
    import keras

    from keras_dae.models import DiverseClassifier
    from keras_dae.models.contrastive import DiverseContrastive
    from keras_dae.zoo.loading import resolve_preset
    from keras_dae.zoo.preset_files import read_json
    from keras_dae.zoo.presets import PRESETS

    base, _, change = name.partition(":")
    keras.utils.set_random_seed(0)
    if base == "random":
        spec = PRESETS[architecture]
        model = DiverseClassifier.with_default_frontends(
            1, spec["sample_rate"], tower=dict(spec["tower"]))
    elif read_json(resolve_preset(base)[1] / "metadata.json").get("num_classes", 0):
        model = DiverseClassifier.from_preset(base)
    else:
        model = DiverseContrastive.from_preset(base)
    if change in ("new_attention", "new_block_attention"):
        keras.utils.set_random_seed(0)
        model.backbone.reinitialize_attention(like_new_block=change == "new_block_attention")
    elif change:
        raise SystemExit(f"{name}: the changes are ':new_attention' and "
                         "':new_block_attention'")
    return model.featurizer, model.backbone


def first_seconds(data: Path, sample_rate: int = 16000) -> np.ndarray:
    """The first 1 s chunk of every clip of the eval split, `(clips, samples)`."""
    from keras_dae.audio import load_audio
    from keras_dae.data.chunking import chunk_waveform
    from keras_dae.train_run import read_splits

    test = read_splits(data)[2]
    return np.stack([chunk_waveform(load_audio(p, sample_rate), sample_rate)[0]
                     for p in test.paths])


def shares(featurizer, backbone, clips: np.ndarray, batch: int = 50) -> dict:
    """`{stream: [share of the features, of the input frames, after each block, output]}`."""
    import keras

    from keras_dae.metrics import temporal_share

    steps = {s: [] for s in backbone.stream_names}
    for start in range(0, len(clips), batch):
        features = featurizer(clips[start:start + batch])
        for s, tower in backbone.towers.items():
            sequences = [features[s], *tower.sequences(features[s], training=False)]
            steps[s].append([keras.ops.convert_to_numpy(x) for x in sequences])
    return {s: [temporal_share(np.concatenate([part[i] for part in parts]))
                for i in range(len(parts[0]))] for s, parts in steps.items()}


def table(result: dict) -> str:
    rows = result["rows"]
    depth = max(len(v) for row in rows.values() for v in row["shares"].values())
    names = ["features", "input"] + [f"block {i + 1}" for i in range(depth - 3)] + ["output"]
    lines = ["| model | stream | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]
    for model, row in rows.items():
        for stream, values in row["shares"].items():
            lines.append(f"| {model} | {stream} | " + " | ".join(f"{v:.4f}" for v in values)
                         + " |")
    return "\n".join(lines) + (
        f"\n\nTemporal share (share of the frames' variance along time within a clip) of each "
        f"tower at each step, over the first second of the {result['clips']} eval clips: the "
        "features as they enter, the projected frames with their position embeddings, every "
        "block's output (pooled where the tower pools), the final layer norm's.\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a labelled dataset (its eval split)")
    parser.add_argument("--models", default="random,diverse_pretrained")
    parser.add_argument("--architecture", default="diverse_fsd50k",
                        help="the preset whose towers `random` draws")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true",
                        help="print the table of the results file and run nothing")
    args = parser.parse_args(argv)
    if not args.table:
        import keras

        if args.data is None:
            parser.error("--data is required unless --table")
        clips = first_seconds(args.data)
        result = (json.loads(args.results.read_text()) if args.results.exists()
                  else {"rows": {}})
        for entry in args.models.split(","):
            name, _, source = entry.rpartition("=")  # LABEL=MODEL, or MODEL its own label
            name = name or source
            featurizer, backbone = load(source, args.architecture)
            result["rows"][name] = {"model": source, "backend": keras.backend.backend(),
                                    "shares": shares(featurizer, backbone, clips)}
            print(name, {s: round(v[-1], 5) for s, v in result["rows"][name]["shares"].items()},
                  flush=True)
        result.update(clips=len(clips), data=str(args.data),
                      command=f"KERAS_BACKEND={keras.backend.backend()} python "
                              f"benchmarks/temporal_share.py --data {args.data} --models MODELS",
                      machine=f"{platform.machine()}, {os.cpu_count()} CPU cores")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(table(json.loads(args.results.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
