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
import warnings
from pathlib import Path

from keras_dae import native_logs
from keras_dae.data import bundled
from keras_dae.data.datasets import DATASET_FORMATS, read_split
from keras_dae.export import formats as export_formats
from keras_dae.validation import (
    InputError,
    non_negative_int,
    positive_float,
    positive_int,
    unit_interval,
)

BACKENDS = ("tensorflow", "jax", "torch")
PLOT_EXTRA = "pip install 'keras-dae[plot]'"


def _picture_path(requested: str | None, default: str) -> str | None:
    """Where a command draws its picture (`--plot`), or None for no picture.

    `requested` is None when --plot was not given: then `default`, if matplotlib is installed
    (else no picture, and `_no_picture_note` says which extra draws it); '' means no picture.
    A picture asked for by name without matplotlib, or where it cannot be written
    (`atomic.check_output_path`), is an error (exit 2), raised before any work.
    """
    from importlib.util import find_spec

    if requested == "":
        return None
    if find_spec("matplotlib") is None:
        if requested is None:
            return None
        raise InputError(f"the picture {requested} needs matplotlib: {PLOT_EXTRA}")
    from keras_dae.atomic import check_output_path

    return str(check_output_path(requested or default, (), "--plot"))


def _no_picture_note(requested: str | None) -> None:
    """The one line that says no picture was drawn for want of matplotlib (--plot not given)."""
    if requested is None:
        print(f"no picture: matplotlib is not installed ({PLOT_EXTRA} draws it)")


def _frontends_command(args) -> int:
    import numpy as np

    from keras_dae.audio import load_audio

    path = Path(args.file) if args.file else bundled.bundled_clip_path()
    picture = _picture_path(args.plot, "frontends.png")
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
    if picture:
        plot_frontends(waveform, args.sample_rate, features, picture, title=path.name)
        print(f"wrote {picture}")
    else:
        _no_picture_note(args.plot)
    return 0


def _train_command(args) -> int:
    """`keras-dae train`: `keras_dae.train_run.train_run` with the recipe from the flags."""
    from keras_dae.train_config import TrainConfig
    from keras_dae.train_run import train_run

    config = TrainConfig(
        tower_epochs=args.epochs, fusion_epochs=args.fusion_epochs,
        joint_epochs=args.joint_epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, mixup=args.mixup, balanced=args.balanced,
        patience=args.patience, seed=args.seed,
        feature_masking={"on": True, "off": False, "preset": None}[args.feature_masking],
        feature_cache=(str(Path(args.out) / "feature_cache") if args.feature_cache == "run"
                       else args.feature_cache),
        mixed_precision=args.mixed_precision, data_parallel=args.data_parallel,
        jit_compile={"auto": "auto", "on": True, "off": False}[args.jit_compile],
    )
    train_run(args.data, args.out, args.preset, config, args.format, args.shards,
              resume=args.resume, overwrite=args.overwrite,
              say=lambda line: print(line, flush=True))
    return 0


def _evaluate_command(args) -> int:
    import json

    from keras_dae import atomic, training, zoo

    if args.json:
        atomic.check_output_path(args.json, (".json",), "--json")
    model = zoo.load(args.model)
    if args.mixed_precision:
        from keras_dae import scale

        model = scale.with_precision(model, args.mixed_precision)
    dataset = read_split(args.data, args.split, args.format)
    if dataset is None:
        print(f"error: {args.data}: no {args.split} split", file=sys.stderr)
        return 2
    dataset = dataset.with_labels(model.class_names)
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
        atomic.write_text(args.json, json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def _load_tagger(args, **kwargs):
    """The `Tagger` of `--model` (in `--mixed-precision`), loaded with the libraries'
    start-up noise silenced."""
    from keras_dae.inference import Tagger, load_model

    with native_logs.stderr_silenced(not args.debug):
        model = args.model
        if getattr(args, "mixed_precision", None):
            from keras_dae import scale

            model = scale.with_precision(load_model(model), args.mixed_precision)
        return Tagger(model, **kwargs)


class _Progress:
    """A one-line progress bar on stderr, shown only on a terminal and for several files."""

    def __init__(self, total: int, enabled: bool | None = None):
        self.total, self.done = total, 0
        self.enabled = (sys.stderr.isatty() and total > 1) if enabled is None else enabled

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")

    def step(self, name: str = "") -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total} files  {Path(name).name[:40]}")
            sys.stderr.flush()


def _reason_kind(failure) -> str:
    """`"bad.wav: not readable as audio (...)"` -> `"not readable as audio"`."""
    reason = failure.reason.removeprefix(f"{failure.source}: ")
    return reason.split(" (")[0]


def _summary(verb: str, n_ok: int, failures: list, seconds_of_audio: float,
             elapsed: float) -> str:
    import collections

    total = n_ok + len(failures)
    text = (f"{verb} {n_ok} of {total} file{'s' * (total != 1)} "
            f"({seconds_of_audio:.1f} s of audio) in {elapsed:.1f} s")
    if failures:
        kinds = collections.Counter(_reason_kind(f) for f in failures)
        text += f"; skipped {len(failures)}: " + ", ".join(
            f"{count} {kind}" for kind, count in kinds.most_common())
    return text


def _report_failure(failure, several: bool) -> None:
    print(f"skipped {failure.reason}" if several else f"error: {failure.reason}",
          file=sys.stderr)


def _tag_inputs(args, verb: str, emit, **options):
    """Tags the audio of `args.inputs` (files, directories), calling `emit(result)` for each
    `TagResult` and `emit(failure)` for each `TagFailure` after reporting it on stderr (a
    progress bar between, on terminals). Several inputs end with the summary line, e.g.
    `tagged 3 of 4 files (...)`. Returns the `Tagger` (None when nothing could be read), the
    results and the failures."""
    import time

    from keras_dae.inference import TagFailure, expand_inputs

    started = time.perf_counter()
    paths, failures = expand_inputs(args.inputs)
    several = len(paths) + len(failures) > 1
    for failure in failures:
        _report_failure(failure, several)
        emit(failure)
    tagger, results = None, []
    if paths:
        hop = getattr(args, "hop", None)
        tagger = _load_tagger(args, batch_size=args.batch_size,
                              **({} if hop is None else {"hop_seconds": hop}))
        progress = _Progress(len(paths))
        for result in tagger.tag_many(paths, **options):
            progress.clear()
            if isinstance(result, TagFailure):
                failures.append(result)
                _report_failure(result, several)
            else:
                results.append(result)
            emit(result)
            progress.step(result.source)
        progress.clear()
    if several:
        print(_summary(verb, len(results), failures, sum(r.duration for r in results),
                       time.perf_counter() - started), file=sys.stderr)
    return tagger, results, failures


def _predict_command(args) -> int:
    import json

    from keras_dae import atomic
    from keras_dae.inference import TagFailure

    events = None
    if args.events or args.audacity or args.events_tsv:
        from keras_dae.events import EventOptions, audacity_labels, events_table

        events = EventOptions(on=args.on, off=args.off)
        if args.hop is None:
            args.hop = 0.25  # events: a window every 0.25 s
    if args.events_tsv:
        atomic.check_output_path(args.events_tsv, (".tsv",), "--events-tsv")
    if args.audacity:
        atomic.check_output_path(args.audacity, (), "--audacity", directory=True)
        Path(args.audacity).mkdir(exist_ok=True)
    found, label_files = {}, set()

    def emit(result):
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        elif not isinstance(result, TagFailure):
            print(result.to_text(), flush=True)
        if events is not None and not isinstance(result, TagFailure):
            found[result.source] = result.events
            if args.audacity:  # one label track per file, named after it
                stem, n = Path(result.source).stem, 1
                while f"{stem}.txt" in label_files:
                    stem, n = f"{Path(result.source).stem}_{n + 1}", n + 1
                label_files.add(f"{stem}.txt")
                atomic.write_text(Path(args.audacity) / f"{stem}.txt",
                                  audacity_labels(result.events))

    _, results, _ = _tag_inputs(args, "tagged", emit, top_k=args.top_k,
                                timestamps=args.timestamps, explain=args.explain, events=events)
    if args.events_tsv and results:
        atomic.write_text(args.events_tsv, events_table(found, scores=True))
        print(f"wrote {args.events_tsv}", file=sys.stderr)
    return 0 if results else 2


def _embed_command(args) -> int:
    from keras_dae import atomic
    from keras_dae.inference import save_embeddings

    out = atomic.check_output_path(args.out, (".npz",))
    tagger, results, failures = _tag_inputs(args, "embedded", lambda result: None, top_k=0)
    if not results:
        if len(failures) > 1:  # a single file's refusal was the one line already
            print(f"error: nothing written to {out}: no file could be embedded",
                  file=sys.stderr)
        return 2
    fused = save_embeddings(out, results, failures, tagger.stream_names, str(args.model),
                            tagger.sample_rate)
    size = fused.shape[1] // len(tagger.stream_names)
    streams = ", ".join(tagger.stream_names)
    print(f"wrote {out}: fused {fused.shape[0]}x{fused.shape[1]}; {streams} "
          f"{fused.shape[0]}x{size} each")
    return 0


def _shard_command(args) -> int:
    from keras_dae.data import write_shards

    dataset = read_split(args.data, args.split, args.format)
    if dataset is None:
        raise InputError(f"{args.data}: no {args.split} split for --format {args.format}")
    print(f"shard: {len(dataset)} clips of {args.data} ({args.split}) -> {args.out}, "
          f"{args.sample_rate} Hz, 1 s chunks every 0.5 s, {args.workers} workers", flush=True)
    shards = write_shards(dataset, args.out, sample_rate=args.sample_rate,
                          shard_size=args.shard_size, workers=args.workers,
                          overwrite=args.overwrite, verbose=True)
    for path, reason in shards.skipped.items():
        print(f"  skipped {path}: {reason}")
    print(f"wrote {shards}")
    return 0


def _demo_command(args) -> int:
    from keras_dae import demo

    paths = [Path(p) for p in args.files] if args.files else bundled.demo_clips()
    picture = _picture_path(args.plot, "demo.png")
    tagger = _load_tagger(args)
    import keras

    name = Path(str(args.model)).name
    print(f"keras-dae demo: model {name} ({len(tagger.class_names)} classes, streams "
          f"{', '.join(tagger.stream_names)}), keras backend {keras.backend.backend()}\n")
    results = demo.run(tagger, paths)
    for result in results:
        print(demo.describe(result, tagger) + "\n")
    if picture:
        title = f"keras-dae demo: {name} on {len(results)} real recordings"
        demo.plot(results, picture, tagger.class_names, tagger.stream_names,
                  tagger.sample_rate, title=title)
        print(f"wrote {picture}: per-second labels, spectrograms, fused scores over time, "
              "and each stream's scores beside the fused ones")
    else:
        _no_picture_note(args.plot)
    return 0


def _export_command(args) -> int:
    """`keras-dae export`: a preset or run to SavedModel, TFLite or ONNX (see keras_dae.export)."""
    from keras_dae import extras

    missing = extras.missing_for_export(args.format, args.quantize)
    if missing:  # before Keras loads
        print(f"error: {missing}", file=sys.stderr)
        return 2
    from keras_dae import export, zoo
    from keras_dae.zoo import PresetError, preset_files

    export.check_export_path(args.out, args.format)  # before the model loads
    try:
        model_path = zoo.resolve_preset(args.model)[1]
        model = zoo.load(args.model)
    except PresetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    calibration = args.calibration
    if args.format == "tflite" and args.quantize == "int8" and calibration is None:
        # Default: the data the preset was trained on, when it is still there.
        metadata = model_path / "metadata.json"
        if metadata.is_file():
            calibration = preset_files.read_json(metadata).get("training_data")
        if not calibration or not Path(calibration).exists():
            print("error: --quantize int8 calibrates on representative audio: give "
                  "--calibration DATASET_OR_AUDIO_DIR", file=sys.stderr)
            return 2
    try:
        result = export.export(model, args.out, args.format, quantize=args.quantize,
                               calibration=calibration,
                               calibration_windows=args.calibration_windows,
                               dft_mode=args.dft_mode, check=not args.no_check,
                               batch_size="auto" if args.batch_size is None else
                               (args.batch_size or None))
    except (ValueError, export.ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    diff = ", ".join(f"{k} {v:.2g}" for k, v in result.max_abs_diff.items())
    print(f"wrote {result.path} ({result.format}, quantize {result.quantize}, "
          f"{result.size_bytes / 1e6:.2f} MB), labels {result.labels_path}")
    if diff:
        print(f"largest difference from the Keras model on probe audio: {diff}")
    return 0


def _recipe_flags(parser):
    """`flag(name, field, **kwargs)`: a flag of `parser` whose type (its range) and default
    are those of `TrainConfig.field`."""
    from keras_dae import train_config

    def flag(name: str, field: str, **kwargs):
        parser.add_argument(name, type=train_config.parse_type(field),
                            default=train_config.default(field), **kwargs)

    return flag


class _Parser(argparse.ArgumentParser):
    """argparse, with its refusals in the command line's one-line form (`error: ...`, exit 2)
    instead of the usage text followed by the message."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} "
                     "--help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="keras-dae", description="Diverse Audio Embeddings for Keras 3."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    frontends = sub.add_parser(
        "frontends",
        help="run every in-graph front end on a clip (default: a bundled recording)",
    )
    frontends.add_argument("file", nargs="?", help="audio file (WAV, FLAC, OGG, ...)")
    frontends.add_argument("--sample-rate", type=positive_int, default=16000)
    frontends.add_argument(
        "--plot", help="where to write the picture ('' for none; default frontends.png, "
        "drawn when matplotlib is installed)"
    )
    frontends.set_defaults(func=_frontends_command)

    train = sub.add_parser("train", help="train the four towers, then the fusion head")
    train.add_argument("--data", required=True, help="dataset directory")
    train.add_argument("--out", required=True, help="run directory (checkpoints, preset, report)")
    train.add_argument("--format", choices=DATASET_FORMATS, default="fsd50k")
    train.add_argument("--preset", default="diverse_fsd50k", help="model configuration")
    recipe = _recipe_flags(train)  # defaults and ranges: keras_dae.train_config.TrainConfig
    recipe("--epochs", "tower_epochs", help="stage 1 (tower) epochs")
    recipe("--fusion-epochs", "fusion_epochs")
    recipe("--joint-epochs", "joint_epochs", help="optional stage 3")
    recipe("--batch-size", "batch_size")
    recipe("--learning-rate", "learning_rate")
    recipe("--mixup", "mixup", help="mixup alpha (0: off)")
    train.add_argument("--balanced", action="store_true", help="balanced sampling")
    train.add_argument("--feature-masking", choices=("on", "off", "preset"), default="preset",
                       help="SpecAugment-style masking of the towers' features in training "
                            "(default: as the preset's towers say)")
    train.add_argument("--feature-cache", nargs="?", const="run", default=None, metavar="DIR",
                       help="compute the handcrafted streams' features once and keep them in "
                            "DIR (default RUN_DIR/feature_cache)")
    train.add_argument("--shards", metavar="DIR",
                       help="read the training chunks from shards written by `keras-dae shard` "
                            "(val and eval still come from --data)")
    train.add_argument("--mixed-precision", choices=("bfloat16",), default=None,
                       help="train in mixed precision (front ends, normalisation and heads "
                            "stay float32); the preset is saved in float32")
    train.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                       help="compile the train step (auto: XLA on TensorFlow and JAX, eager "
                            "on PyTorch; on: also torch.compile)")
    train.add_argument("--data-parallel", action="store_true",
                       help="split every batch over all local devices (JAX: "
                            "keras.distribution.DataParallel; TensorFlow: MirroredStrategy); "
                            "the batch size must divide by the device count")
    recipe("--patience", "patience")
    recipe("--seed", "seed")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in RUN_DIR from its checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in RUN_DIR (its own files are removed first)")
    train.set_defaults(func=_train_command)

    evaluate = sub.add_parser("evaluate", help="clip-level metrics of a run or preset")
    evaluate.add_argument("--model", required=True, help="run directory, preset directory or name")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--format", choices=DATASET_FORMATS, default="fsd50k")
    evaluate.add_argument("--split", choices=("eval", "val"), default="eval")
    evaluate.add_argument("--json", help="also write the report as JSON here")
    evaluate.set_defaults(func=_evaluate_command)

    shard = sub.add_parser(
        "shard", help="decode, resample and chunk a split once into ArrayRecord shards")
    shard.add_argument("--data", required=True, help="dataset directory")
    shard.add_argument("--out", required=True, help="shard directory")
    shard.add_argument("--format", choices=DATASET_FORMATS, default="fsd50k")
    shard.add_argument("--split", choices=("train", "val", "eval"), default="train")
    shard.add_argument("--sample-rate", type=positive_int, default=16000)
    shard.add_argument("--shard-size", type=positive_int, default=4096, help="1 s chunks per file")
    shard.add_argument("--workers", type=positive_int, default=1, help="decoding processes")
    shard.add_argument("--overwrite", action="store_true", help="replace existing shards")
    shard.set_defaults(func=_shard_command)

    from keras_dae.inference import DEFAULT_MODEL

    model_help = ("preset name, preset directory or training run directory "
                  f"(default: {DEFAULT_MODEL}, shipped with keras-dae)")
    predict = sub.add_parser(
        "predict", help="tag audio files: labels of each file (and of each second)")
    predict.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                         help="audio files, or directories searched for them")
    predict.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    predict.add_argument("--top-k", type=positive_int, default=5, help="labels per file (default 5)")
    predict.add_argument("--json", action="store_true",
                         help="one JSON object per file and line, instead of text")
    predict.add_argument("--timestamps", action="store_true",
                         help="also the labels of each second")
    predict.add_argument("--explain", action="store_true",
                         help="also each stream's share of every label's fused score")
    predict.add_argument("--events", action="store_true",
                         help="also each sound's events in time (onset, offset, label, score)")
    predict.add_argument("--hop", type=positive_float, default=None, metavar="SECONDS",
                         help="seconds between 1 s windows (default 0.5; 0.25 with events)")
    predict.add_argument("--on", type=unit_interval, default=0.5,
                         help="events: the score at which an event starts (default 0.5)")
    predict.add_argument("--off", type=unit_interval, default=None,
                         help="events: the score below which it ends (default: --on)")
    predict.add_argument("--audacity", metavar="DIR",
                         help="events: write an Audacity label track (.txt) per file to DIR")
    predict.add_argument("--events-tsv", metavar="FILE.tsv",
                         help="events: write all files' events as a DCASE/DESED TSV")
    predict.add_argument("--batch-size", type=positive_int, default=32, help="1 s chunks per model call")
    predict.set_defaults(func=_predict_command)

    embed = sub.add_parser(
        "embed", help="write the fused and per-stream embeddings of audio files to .npz")
    embed.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                       help="audio files, or directories searched for them")
    embed.add_argument("--out", required=True, metavar="FILE.npz", help="where to write")
    embed.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    embed.add_argument("--batch-size", type=positive_int, default=32, help="1 s chunks per model call")
    embed.set_defaults(func=_embed_command)

    demo = sub.add_parser(
        "demo", help="tag the bundled real recordings and draw the labels over time")
    demo.add_argument("files", nargs="*", metavar="FILE",
                      help="audio files to show instead of the bundled clips")
    demo.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    demo.add_argument("--plot", help="where to write the picture ('' for none; default "
                      "demo.png, drawn when matplotlib is installed)")
    demo.set_defaults(func=_demo_command)

    for command in (predict, embed, demo, evaluate):
        command.add_argument("--mixed-precision", choices=("bfloat16",), default=None,
                             help="run the model in mixed precision (front ends and heads "
                                  "stay float32)")
    exporter = sub.add_parser("export", help="export to SavedModel, TFLite or ONNX")
    exporter.add_argument("--model", required=True, help="run directory, preset directory or name")
    exporter.add_argument("--format", required=True, choices=export_formats.FORMATS)
    exporter.add_argument("--quantize", choices=export_formats.QUANTIZATIONS, default="none",
                          help="TFLite only (default none: float32)")
    exporter.add_argument("--out", required=True,
                          help="output .tflite / .onnx file, or SavedModel directory")
    exporter.add_argument("--calibration", help="int8: dataset or audio directory to calibrate "
                          "on (default: the preset's training data, if present)")
    exporter.add_argument("--calibration-windows", type=positive_int, default=200,
                          help="int8: 1 s windows to calibrate on")
    exporter.add_argument("--dft-mode", choices=("fft", "matmul"),
                          help="spectra's DFT (default: fft for TFLite and SavedModel, matmul "
                          "for ONNX)")
    exporter.add_argument("--batch-size", type=non_negative_int, default=None,
                          help="windows per call, fixed in the file; 0 for any (default: 1 "
                          "for TFLite, any for SavedModel and ONNX)")
    exporter.add_argument("--no-check", action="store_true",
                          help="skip running the artifact next to the Keras model")
    # The converters are TensorFlow's: the preset is loaded under TensorFlow whatever backend
    # it was trained on (presets load on every backend).
    exporter.add_argument("--backend", choices=BACKENDS,
                          default="tensorflow", help="Keras backend (default tensorflow)")
    exporter.set_defaults(func=_export_command)

    for command in (frontends, train, evaluate, predict, embed, demo, shard, exporter):
        if command is not exporter:  # export has its own default (TensorFlow)
            command.add_argument("--backend", choices=BACKENDS,
                                 help="Keras backend (default: KERAS_BACKEND or keras.json)")
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback of an error")
    return parser


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or environment (one line, exit 2), not a bug.

    Modules that import Keras are consulted only when already loaded (an error of theirs
    cannot have been raised otherwise), so a refusal before Keras loads stays fast and quiet.
    """
    types = [InputError, OSError]  # a ValueError of NumPy's or Keras' is a bug
    if "keras_dae.zoo.preset_files" in sys.modules:
        types.append(sys.modules["keras_dae.zoo.preset_files"].PresetError)
    if "keras_dae.training" in sys.modules:
        training = sys.modules["keras_dae.training"]
        types += [training.PreflightError, training.CheckpointError]
    return tuple(types)


def error_line(error: BaseException) -> str:
    """`error: <message>` on one short, printable line (`messages.one_line`)."""
    from keras_dae.messages import one_line

    message = error
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}"
    return f"error: {one_line(message, 600) or type(error).__name__}"


def run_guarded(func, args, debug: bool = False) -> int:
    """Runs a command; errors become one line on stderr and an exit status (see module doc).

    2: bad input or environment (`user_error_types`, or the Keras backend not installed);
    1: anything else, which is a bug (the line says so); 130: interrupted. With `debug`, the
    traceback is shown as well.
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
        missing = (getattr(error, "name", None) or "").split(".")[0]
        if isinstance(error, ModuleNotFoundError) and missing in BACKENDS:
            # Keras' backend (KERAS_BACKEND, else ~/.keras/keras.json, else tensorflow) is
            # imported with Keras: an install with another extra, e.g. only [jax].
            print(f"error: {missing} is not installed: choose an installed Keras backend "
                  f"with --backend or KERAS_BACKEND, or pip install 'keras-dae[{missing}]'",
                  file=sys.stderr)
            return 2
        from keras_dae.extras import missing_module_line

        if missing_module_line(error):  # an optional dependency: which extra installs it
            print(f"error: {missing_module_line(error)}", file=sys.stderr)
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

    shown = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _one_line_warning
    try:
        with native_logs.quiet(not args.debug):
            return run_guarded(args.func, args, debug=args.debug)
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
