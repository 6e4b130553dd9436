"""The `keras-dae` command line."""

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
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} files:")
        for path, reason in report["skipped"].items():
            print(f"  {path}: {reason}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def _export_command(args) -> int:
    """`keras-dae export`: a preset or run to SavedModel, TFLite or ONNX (see keras_dae.export)."""
    import importlib.util
    import json

    if importlib.util.find_spec("tensorflow") is None:
        print("error: export needs TensorFlow and the converters: "
              "pip install \"keras-dae[export]\"", file=sys.stderr)
        return 2
    from keras_dae import export, zoo
    from keras_dae.zoo import PresetError

    model_path = Path(args.model)
    if (model_path / "preset").is_dir():
        model_path = model_path / "preset"
    try:
        model = zoo.load(model_path if model_path.exists() else args.model)
    except PresetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    calibration = args.calibration
    if args.format == "tflite" and args.quantize == "int8" and calibration is None:
        # Default: the data the preset was trained on, when it is still there.
        metadata = model_path / "metadata.json"
        if metadata.is_file():
            calibration = json.loads(metadata.read_text()).get("training_data")
        if not calibration or not Path(calibration).exists():
            print("error: --quantize int8 calibrates on representative audio: give "
                  "--calibration DATASET_OR_AUDIO_DIR", file=sys.stderr)
            return 2
    try:
        result = export.export(model, args.out, args.format, quantize=args.quantize,
                               calibration=calibration,
                               calibration_windows=args.calibration_windows,
                               dft_mode=args.dft_mode, check=not args.no_check)
    except (ValueError, export.ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    diff = ", ".join(f"{k} {v:.2g}" for k, v in result.max_abs_diff.items())
    print(f"wrote {result.path} ({result.format}, quantize {result.quantize}, "
          f"{result.size_bytes / 1e6:.2f} MB), labels {result.labels_path}")
    if diff:
        print(f"largest difference from the Keras model on probe audio: {diff}")
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

    # keras_dae.export.FORMATS and QUANTIZATIONS (not imported here: they import Keras, and
    # the backend is chosen after parsing).
    export_formats = ("savedmodel", "tflite", "onnx")
    quantizations = ("none", "float16", "dynamic-int8", "int8")
    exporter = sub.add_parser("export", help="export to SavedModel, TFLite or ONNX")
    exporter.add_argument("--model", required=True, help="run directory, preset directory or name")
    exporter.add_argument("--format", required=True, choices=export_formats)
    exporter.add_argument("--quantize", choices=quantizations, default="none",
                          help="TFLite only (default none: float32)")
    exporter.add_argument("--out", required=True,
                          help="output .tflite / .onnx file, or SavedModel directory")
    exporter.add_argument("--calibration", help="int8: dataset or audio directory to calibrate "
                          "on (default: the preset's training data, if present)")
    exporter.add_argument("--calibration-windows", type=int, default=200,
                          help="int8: 1 s windows to calibrate on")
    exporter.add_argument("--dft-mode", choices=("fft", "matmul"),
                          help="spectra's DFT (default: fft for TFLite and SavedModel, matmul "
                          "for ONNX)")
    exporter.add_argument("--no-check", action="store_true",
                          help="skip running the artifact next to the Keras model")
    # The converters are TensorFlow's: the preset is loaded under TensorFlow whatever backend
    # it was trained on (presets load on every backend).
    exporter.add_argument("--backend", choices=("tensorflow", "jax", "torch"),
                          default="tensorflow", help="Keras backend (default tensorflow)")
    exporter.set_defaults(func=_export_command)

    for command in (frontends, train, evaluate):
        command.add_argument("--backend", choices=("tensorflow", "jax", "torch"),
                             help="Keras backend (default: KERAS_BACKEND or keras.json)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != args.backend:
            print("error: --backend must be chosen before Keras is imported", file=sys.stderr)
            return 2
        os.environ["KERAS_BACKEND"] = args.backend
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
