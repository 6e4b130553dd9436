"""The `keras-dae` command line.

Errors the user can act on (a bad audio file, an unreadable dataset or preset, an unwritable
output directory, a full disk) end the command with one line on stderr, `error: <what>`, and
exit status 2 (1 for anything unexpected), without a traceback; `--debug` shows the traceback.
Bad files inside a dataset are not errors: each is reported once, skipped, and counted in the
summary at the end (`skipped 3 of 40 files: 2 truncated, 1 empty file`).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

BUNDLED_CLIP = "speech_front_center.wav"


def bundled_clip_path() -> Path:
    """A real recording shipped with the package (a man saying "front center", GPL-2)."""
    return Path(str(resources.files("keras_dae") / "data" / BUNDLED_CLIP))


def _frontends_command(args) -> int:
    import numpy as np

    from keras_dae.audio import load_audio

    path = Path(args.file) if args.file else bundled_clip_path()
    # Before Keras loads: a bad file is refused at once (AudioDecodeError: one line, exit 2).
    waveform = load_audio(path, args.sample_rate)
    import keras

    from keras_dae.frontend_gallery import compute_frontends, plot_frontends

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


def load_split(data: Path, fmt: str, split: str):
    """One split of a dataset directory, in one of the three supported layouts.

    - fsd50k: the FSD50K layout (`FSD50K.ground_truth/dev.csv` with its official train/val
      split, `eval.csv`, `vocabulary.csv`, and the `FSD50K.*_audio/` folders);
    - csv: `DIR/<split>.csv` files with a `path,labels` header;
    - folders: `DIR/<split>/<class>/<audio files>`.
    Returns None when the split is absent (csv and folders).
    """
    from keras_dae.data import read_csv_dataset, read_folder_dataset, read_fsd50k

    if fmt == "fsd50k":
        return read_fsd50k(data, split)
    if fmt == "csv":
        path = data / f"{split}.csv"
        return read_csv_dataset(path) if path.is_file() else None
    path = data / split
    return read_folder_dataset(path) if path.is_dir() else None


def _with_labels(dataset, labels):
    """The dataset's targets re-indexed to the vocabulary `labels` (a model's classes)."""
    import numpy as np

    if dataset is None or list(dataset.labels) == list(labels):
        return dataset
    unknown = sorted(set(dataset.labels) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} of the data are not classes of the model")
    column = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(dataset), len(labels)), np.float32)
    for j, label in enumerate(dataset.labels):
        targets[:, column[label]] = dataset.targets[:, j]
    return type(dataset)(paths=dataset.paths, targets=targets, labels=list(labels),
                         mids=[""] * len(labels), clip_ids=dataset.clip_ids,
                         groups=dataset.groups)


def _train_command(args) -> int:
    from keras_dae import training
    from keras_dae.models import build_diverse_classifier
    from keras_dae.zoo.presets import PRESETS

    data = Path(args.data)
    train = load_split(data, args.format, "train")
    val = load_split(data, args.format, "val")
    if train is None or val is None:
        print(f"error: {data}: needs a train and a val split for --format {args.format}",
              file=sys.stderr)
        return 2
    val = _with_labels(val, train.labels)
    spec = PRESETS[args.preset]
    tower = dict(spec["tower"])
    import keras

    keras.utils.set_random_seed(args.seed)  # the initial weights too: same seed, same run
    model = build_diverse_classifier(len(train.labels), spec["sample_rate"], tower=tower)
    config = training.TrainConfig(
        tower_epochs=args.epochs, fusion_epochs=args.fusion_epochs,
        joint_epochs=args.joint_epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, mixup=args.mixup, balanced=args.balanced,
        patience=args.patience, seed=args.seed,
    )
    print(f"train: {len(train)} clips, val: {len(val)} clips, {len(train.labels)} classes; "
          f"preset {args.preset} ({model.count_params():,} parameters); "
          f"backend {__import__('keras').backend.backend()}", flush=True)
    trainer = training.Trainer(model, train, val, args.out, config)
    trainer.run(resume=args.resume)
    eval_sets = {"val": val}
    test = load_split(data, args.format, "eval")
    if test is not None:
        eval_sets = {"eval": _with_labels(test, train.labels), "val": val}
    report = training.finish_run(trainer, eval_sets, training_data=str(data.resolve()))
    for split, r in report["evaluation"].items():
        streams = "  ".join(f"{k} {v:.3f}" for k, v in r["streams"].items())
        print(f"{split}: fused mAP {r['mAP']:.3f}  |  {streams}  ({r['n_clips']} clips)")
    summaries = trainer.skip_summary()  # train and val
    if "eval" in report["evaluation"]:
        summaries["eval"] = report["evaluation"]["eval"]["skip_summary"]
    for split, line in summaries.items():
        print(f"{split}: {line}")
    print(f"wrote {Path(args.out) / 'preset'}, report.json and plots")
    return 0


def _evaluate_command(args) -> int:
    import json

    from keras_dae import training, zoo

    model_path = Path(args.model)
    if (model_path / "preset").is_dir():
        model_path = model_path / "preset"
    model = zoo.load(model_path if model_path.exists() else args.model)
    dataset = load_split(Path(args.data), args.format, args.split)
    if dataset is None:
        print(f"error: {args.data}: no {args.split} split", file=sys.stderr)
        return 2
    dataset = _with_labels(dataset, model.class_names)
    report = training.evaluate(model, dataset)
    print(f"{args.split}: {report['n_clips']} clips  mAP {report['mAP']:.4f}  "
          f"d' {report['d_prime'] if report['d_prime'] is None else round(report['d_prime'], 3)}"
          f"  lwlrap {report['lwlrap']:.4f}")
    for name, value in report["streams"].items():
        print(f"  stream {name:<12} mAP {value:.4f}")
    print(report["skip_summary"])
    for path, reason in report["skipped"].items():
        print(f"  {path}: {reason}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
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

    formats = ("fsd50k", "csv", "folders")
    train = sub.add_parser("train", help="train the four towers, then the fusion head")
    train.add_argument("--data", required=True, help="dataset directory")
    train.add_argument("--out", required=True, help="run directory (checkpoints, preset, report)")
    train.add_argument("--format", choices=formats, default="fsd50k")
    train.add_argument("--preset", default="diverse_fsd50k", help="model configuration")
    train.add_argument("--epochs", type=int, default=10, help="stage 1 (tower) epochs")
    train.add_argument("--fusion-epochs", type=int, default=5)
    train.add_argument("--joint-epochs", type=int, default=0, help="optional stage 3")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    train.add_argument("--balanced", action="store_true", help="balanced sampling")
    train.add_argument("--patience", type=int, default=3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR's checkpoint")
    train.set_defaults(func=_train_command)

    evaluate = sub.add_parser("evaluate", help="clip-level metrics of a run or preset")
    evaluate.add_argument("--model", required=True, help="run directory, preset directory or name")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--format", choices=formats, default="fsd50k")
    evaluate.add_argument("--split", choices=("eval", "val"), default="eval")
    evaluate.add_argument("--json", help="also write the report as JSON here")
    evaluate.set_defaults(func=_evaluate_command)

    for command in (frontends, train, evaluate):
        command.add_argument("--backend", choices=("tensorflow", "jax", "torch"),
                             help="Keras backend (default: KERAS_BACKEND or keras.json)")
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback of an error")
    return parser


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or environment (one line, exit 2), not a bug.

    Modules that import Keras are consulted only when already loaded (an error of theirs
    cannot have been raised otherwise), so a refusal before Keras loads stays fast and quiet.
    """
    from keras_dae.audio import AudioDecodeError

    types = [AudioDecodeError, OSError, ValueError]
    if "keras_dae.zoo.preset_files" in sys.modules:
        types.append(sys.modules["keras_dae.zoo.preset_files"].PresetError)
    if "keras_dae.training" in sys.modules:
        training = sys.modules["keras_dae.training"]
        types += [training.PreflightError, training.CheckpointError]
    return tuple(types)


def error_line(error: BaseException) -> str:
    """`error: <message>` on one line (newlines of the message joined)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}"
    return f"error: {message}"


def run_guarded(func, args, debug: bool = False) -> int:
    """Runs a command; errors become one line on stderr and an exit status (see module doc).

    2: bad input or environment (`user_error_types`); 1: anything else, which is a bug
    (the line says so); 130: interrupted. With `debug`, the traceback is shown as well.
    """
    try:
        return func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        if debug:
            raise
        return 130
    except Exception as error:
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(error, user_error_types()):
            print(error_line(error), file=sys.stderr)
            return 2
        print(f"{error_line(error)} (an internal error: {type(error).__name__}; please "
              "report it, with the output of --debug)", file=sys.stderr)
        return 1


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != args.backend:
            print("error: --backend must be chosen before Keras is imported", file=sys.stderr)
            return 2
        os.environ["KERAS_BACKEND"] = args.backend
    import warnings

    shown = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _one_line_warning
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info logs
    try:
        return run_guarded(args.func, args, debug=args.debug)
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
