"""The `keras-dae` command line."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

BUNDLED_CLIP = "speech_front_center.wav"


def bundled_clip_path() -> Path:
    """A real recording shipped with the package (a man saying "front center", GPL-2)."""
    return Path(str(resources.files("keras_dae") / "data" / BUNDLED_CLIP))


def _frontends_command(args) -> int:
    import numpy as np

    from keras_dae.audio import AudioDecodeError, load_audio
    from keras_dae.frontend_gallery import compute_frontends, plot_frontends

    path = Path(args.file) if args.file else bundled_clip_path()
    try:
        waveform = load_audio(path, args.sample_rate)
    except AudioDecodeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import keras

    print(f"{path.name}: {len(waveform) / args.sample_rate:.2f} s at {args.sample_rate} Hz, "
          f"keras backend {keras.backend.backend()}")
    features = compute_frontends(waveform, args.sample_rate)
    print(f"{'front end':<22} {'output (frames, features)':<27} {'min':>9} {'max':>9}")
    for name, values in features.items():
        print(f"{name:<22} {str(values.shape):<27} {np.min(values):9.2f} {np.max(values):9.2f}")
    if args.plot:
        try:
            out = plot_frontends(waveform, args.sample_rate, features, args.plot, title=path.name)
        except ImportError:
            print("error: the picture needs matplotlib: pip install 'keras-dae[plot]'",
                  file=sys.stderr)
            return 2
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-dae", description="Diverse Audio Embeddings for Keras 3."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    frontends = sub.add_parser(
        "frontends",
        help="run every in-graph front end on a clip (default: a bundled recording)",
    )
    frontends.add_argument("file", nargs="?", help="audio file (WAV, FLAC, OGG, ...)")
    frontends.add_argument("--sample-rate", type=int, default=16000)
    frontends.add_argument(
        "--plot", default="frontends.png", help="where to write the picture ('' for none)"
    )
    frontends.set_defaults(func=_frontends_command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
