"""Which fixed features a tower learns best from, alone: where the timbre stream's lead over
the learned streams comes from.

    python benchmarks/feature_sets.py --features timbre,mfcc,descriptors,log_mel --seeds 0,1,2

The learned streams trail the handcrafted ones on the sampled dataset, even with their
filters frozen at the mel-like Gabor start (`filterbank_scaling.py --kernels frozen`). Each
setting here trains one tower alone, as `filterbank_scaling.py` does (`one_stream.train_stream`:
the preset's tower from scratch, 8 epochs, best-on-val epoch, clip mAP on val and eval; the
features are fixed, so cached), on: the timbre stream as shipped (`timbre`: 20 MFCCs of 64
mel bands and the spectral descriptors), its MFCCs alone (`mfcc`), its descriptors alone
(`descriptors`), and the 64 log-mel bands the MFCCs are taken from, over the learned
filterbank's 25 ms windows every 10 ms (`log_mel`: librosa's dB with an 80 dB range, the
front end the Gabor start imitates, fixed).

Results are merged into benchmarks/results/feature_sets.json (`--table` prints them).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import one_stream  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "feature_sets.json"
FEATURES = ("timbre", "mfcc", "descriptors", "log_mel")


def feature(value: str) -> str:
    if value not in FEATURES:
        raise ValueError(f"--features takes {', '.join(FEATURES)}, got {value!r}")
    return value


def frontends(setting: str, sample_rate: int) -> list:
    """The front ends of `setting`, the timbre stream's as configured in the default
    featurizer."""
    from keras_dae import layers
    from keras_dae.models.featurizer import default_stream_frontends

    timbre = default_stream_frontends(sample_rate)["timbre"]
    if setting == "timbre":
        return timbre
    if setting == "mfcc":
        return [f for f in timbre if isinstance(f, layers.MFCC)]
    if setting == "descriptors":
        return [f for f in timbre if isinstance(f, layers.SpectralDescriptors)]
    return [layers.LogMelSpectrogram(sample_rate=sample_rate, n_mels=64, n_fft=512,
                                     win_length=400, hop_length=160)]


def trainer(stream: str):
    def train(data: Path, setting: str, seed: int, epochs: int, cache: Path) -> dict:
        from keras_dae.zoo.presets import PRESETS

        sample_rate = PRESETS["diverse_fsd50k"]["sample_rate"]
        scores, _ = one_stream.train_stream(data, stream, {}, seed, epochs, cache / setting,
                                            frontends=frontends(setting, sample_rate))
        return {"stream": stream, "features": setting, **scores}

    return train


def table(results: dict) -> str:
    lines = ["| features | eval mAP per seed | mean ± sd | val mean |", "|---|---|---|---|"]
    groups = one_stream.by_stream_and(results, "features")
    for (_, setting), rows in sorted(groups.items(), key=lambda kv: FEATURES.index(kv[0][1])):
        lines.append(f"| {setting} | {one_stream.accuracy_cells(rows)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return one_stream.stream_main(
        argv, __doc__.split("\n")[0], ("--features", ",".join(FEATURES),
                                       f"comma-separated: {', '.join(FEATURES)}",
                                       "keras_dae_feature_sets"),
        ("alone",), RESULTS, trainer, table, "features",
        "every setting is a fixed front end, exported as the shipped ones are", setting=feature)


if __name__ == "__main__":
    raise SystemExit(main())
