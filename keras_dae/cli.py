"""The `keras-dae` command line: it parses, calls the library, and prints.

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
from pathlib import Path

from keras_dae import distributed, extras, messages, microphone, native_logs, pcm_input, streaming
from keras_dae import events as events_module
from keras_dae import finetune as finetune_flags
from keras_dae.data import bundled
from keras_dae.data.datasets import DATASET_FORMATS, read_split
from keras_dae.events import EventOptions
from keras_dae.export import formats as export_formats
from keras_dae.extras import BACKENDS
from keras_dae.pcm_input import stdin_blocks
from keras_dae.pretraining import FLAGS as PRETRAIN_FLAGS
from keras_dae.pretraining import pretrain_run
from keras_dae.validation import InputError, non_negative_int, positive_float, positive_int


def _frontends_command(args) -> int:
    from keras_dae.audio import load_audio

    path = Path(args.file) if args.file else bundled.bundled_clip_path()
    picture = extras.picture_path(args.plot, "frontends.png")
    waveform = load_audio(path, args.sample_rate)  # a bad file refused before Keras loads
    import keras

    from keras_dae.frontend_gallery import compute_frontends, frontends_table, plot_frontends

    print(f"{path.name}: {len(waveform) / args.sample_rate:.2f} s at {args.sample_rate} Hz, "
          f"keras backend {keras.backend.backend()}")
    features = compute_frontends(waveform, args.sample_rate)
    print(frontends_table(features))
    if picture:
        plot_frontends(waveform, args.sample_rate, features, picture, title=path.name)
        print(f"wrote {picture}")
    elif note := extras.no_picture_line(args.plot):
        print(note)
    return 0


def _run_command(args) -> int:
    """`keras-dae train`, `finetune` and `pretrain`: their `*_run` with the flags' recipe."""
    from keras_dae import train_config, train_run

    config, say = train_config.from_flags(args), lambda line: print(line, flush=True)
    processes = train_config.processes_from_flags(args) if args.command != "finetune" else None
    if args.command == "train":
        train_run.train_run(args.data, args.out, args.preset, config, args.format, args.shards,
                            args.resume, args.overwrite, say, processes)
    elif args.command == "finetune":
        finetune_flags.finetune_run(args.source, args.data, args.out, args.mode, args.streams,
                                    config, args.format, args.val_fraction, args.resume,
                                    args.overwrite, say)
    else:
        pretrain_run(args.data, args.out, args.preset, config, args.val_fraction, args.resume,
                     args.overwrite, say, processes)
    return 0


def _evaluate_command(args) -> int:
    import json

    from keras_dae import atomic, training
    from keras_dae.inference import load_model

    if args.json:
        atomic.check_output_path(args.json, (".json",), "--json")
    if args.events:  # strong labels: event-based and segment-based F1, PSDS
        from keras_dae import event_evaluation as ev

        report = ev.evaluate_set(lambda: load_model(args.model, args.mixed_precision), args.data,
                                 args.split, EventOptions.from_flags(args), args.hop)
        print(ev.report_text(report))
    else:
        dataset = _split(args)
        model = load_model(args.model, args.mixed_precision)
        report = training.evaluate(model, dataset.with_labels(model.class_names))
        print(training.report_text(report, args.split))
    if args.json:
        atomic.write_text(args.json, json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def _split(args):
    dataset = read_split(args.data, args.split, args.format)
    if dataset is None:
        raise InputError(f"{args.data}: no {args.split} split for --format {args.format}")
    return dataset


def _tag_inputs(args, verb: str, emit, **options):
    """`tag_files.tag_files` on `args.inputs` with the tagger of the flags."""
    from keras_dae.tag_files import tag_files

    hop = getattr(args, "hop", None)
    kwargs = {"batch_size": args.batch_size} | ({} if hop is None else {"hop_seconds": hop})
    return tag_files(args.inputs, lambda: _load_tagger(args, **kwargs), emit, verb, **options)


def _load_tagger(args, **kwargs):
    """The `Tagger` of `--model` (in `--mixed-precision`), its libraries' start-up quiet."""
    from keras_dae.inference import Tagger, load_model

    with native_logs.stderr_silenced(not args.debug):
        return Tagger(load_model(args.model, getattr(args, "mixed_precision", None)), **kwargs)


def _predict_command(args) -> int:
    import json

    from keras_dae.inference import TagFailure

    events = None
    if args.events or args.audacity or args.events_tsv or args.stream:
        events = EventOptions.from_flags(args)
        args.hop = 0.25 if args.hop is None else args.hop  # events: a window every 0.25 s
    if args.stream:
        return _stream(args)
    outputs = events_module.EventOutputs(args.audacity, args.events_tsv)

    def emit(result):
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        elif not isinstance(result, TagFailure):
            print(result.to_text(), flush=True)
        if events is not None and not isinstance(result, TagFailure):
            outputs.add(result.source, result.events)

    _, results, _ = _tag_inputs(args, "tagged", emit, top_k=args.top_k,
                                timestamps=args.timestamps, explain=args.explain, events=events)
    if results and (line := outputs.close()):
        print(line, file=sys.stderr)
    return 0 if results else 2


def _stream(args) -> int:
    """`predict --stream -` (standard input) and `listen` (the microphone): `print_stream`."""
    if args.command == "listen":
        rate, blocks = microphone.microphone_blocks(args.device, args.rate, args.channels)
    else:
        rate, blocks = stdin_blocks(args.inputs, args.rate, args.channels, args.sample_format)
    tagger = _load_tagger(args, batch_size=args.batch_size, hop_seconds=args.hop or 0.25)
    options = EventOptions.from_flags(args)  # the offline rules, applied as windows come
    streaming.print_stream(tagger, rate, blocks, options, args.json)
    return 0


def _embed_command(args) -> int:
    from keras_dae import atomic
    from keras_dae.inference import save_embeddings

    out = atomic.check_output_path(args.out, (".npz",))
    tagger, results, failures = _tag_inputs(args, "embedded", lambda result: None, top_k=0)
    if not results:  # a single file's refusal was the one line already
        if len(failures) > 1:
            raise InputError(f"nothing written to {out}: no file could be embedded")
        return 2
    n, width = save_embeddings(out, results, failures, tagger.stream_names, str(args.model),
                               tagger.sample_rate).shape
    print(f"wrote {out}: fused {n}x{width}; {', '.join(tagger.stream_names)} "
          f"{n}x{width // len(tagger.stream_names)} each")
    return 0


def _shard_command(args) -> int:
    from keras_dae.data import write_shards

    shards = write_shards(_split(args), args.out, sample_rate=args.sample_rate,
                          shard_size=args.shard_size, workers=args.workers,
                          overwrite=args.overwrite, verbose=True)
    print(f"wrote {shards}")
    return 0


def _demo_command(args) -> int:
    from keras_dae import demo

    paths = [Path(p) for p in args.files] if args.files else bundled.demo_clips()
    picture = extras.picture_path(args.plot, "demo.png")
    tagger, name = _load_tagger(args), Path(str(args.model)).name
    print(demo.heading(tagger, name) + "\n")
    results = demo.run(tagger, paths)
    for result in results:
        print(demo.describe(result, tagger) + "\n")
    if picture:
        demo.plot(results, picture, tagger.class_names, tagger.stream_names, tagger.sample_rate,
                  title=f"keras-dae demo: {name} on {len(results)} real recordings")
        print(f"wrote {picture}: {demo.PICTURE}")
    elif note := extras.no_picture_line(args.plot):
        print(note)
    return 0


def _export_command(args) -> int:
    """`keras-dae export`: a preset or run to SavedModel, TFLite or ONNX (see keras_dae.export)."""
    missing = extras.missing_for_export(args.format, args.quantize)
    if missing:  # before Keras loads
        raise InputError(missing)
    from keras_dae import export, zoo

    export.check_export_path(args.out, args.format)  # before the model loads
    model = zoo.load(args.model)
    calibration = args.calibration
    if args.format == "tflite" and args.quantize == "int8" and calibration is None:
        calibration = export.calibration.training_data(zoo.resolve_preset(args.model)[1])
    batch_size = "auto" if args.batch_size is None else (args.batch_size or None)
    result = export.export(model, args.out, args.format, quantize=args.quantize,
                           calibration=calibration, calibration_windows=args.calibration_windows,
                           dft_mode=args.dft_mode, check=not args.no_check, batch_size=batch_size,
                           streams=args.streams)
    print(result.summary())
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, refusing in the command line's one-line form (`error: ...`, exit 2)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} "
                     "--help)\n")


def build_parser() -> argparse.ArgumentParser:
    from keras_dae import train_config
    from keras_dae.inference import DEFAULT_MODEL

    parser = _Parser(prog="keras-dae", description="Diverse Audio Embeddings for Keras 3.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}

    def command(name, func, help, model=None, data=False, mixed_precision=False):
        """A subcommand; `model`: "optional" (default: the shipped preset) or "required"."""
        p = commands[name] = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        if model:
            p.add_argument("--model", required=model == "required",
                           default=DEFAULT_MODEL if model == "optional" else None,
                           help="preset name, preset directory or training run directory"
                           + (f" (default: {DEFAULT_MODEL}, shipped)" if model == "optional"
                              else ""))
        if data:
            p.add_argument("--data", required=True, help="dataset directory")
            p.add_argument("--format", choices=DATASET_FORMATS, default="fsd50k")
        if mixed_precision:
            p.add_argument("--mixed-precision", choices=("bfloat16",), default=None,
                           help="compute in mixed precision (front ends, normalisation and "
                           "heads stay float32)")
        return p

    frontends = command("frontends", _frontends_command,
                        "run every in-graph front end on a clip (default: a bundled recording)")
    frontends.add_argument("file", nargs="?", help="audio file (WAV, FLAC, OGG, ...)")
    frontends.add_argument("--sample-rate", type=positive_int, default=16000)
    frontends.add_argument("--plot", help="where to write the picture ('' for none; default "
                           "frontends.png, drawn when matplotlib is installed)")

    train = command("train", _run_command, "train the four towers, then the fusion head",
                    data=True, mixed_precision=True)
    train.add_argument("--out", required=True, help="run directory (checkpoints, preset, report)")
    train.add_argument("--preset", default="diverse_fsd50k", help="model configuration")
    train.add_argument("--shards", metavar="DIR",
                       help="read the training chunks from shards written by `keras-dae shard` "
                            "(val and eval still come from --data)")
    train_config.add_arguments(train, processes=True)
    finetune = command("finetune", _run_command, "new labels on a preset's towers: fit "
                       "the heads (probe, heads) or everything (full)", mixed_precision=True)
    for flag, options in finetune_flags.FLAGS:  # --from, --data, --out, --mode, --streams, ...
        finetune.add_argument(flag, **options)
    train_config.add_arguments(finetune)
    pretrain = command("pretrain", _run_command, "pretrain the towers on unlabelled audio "
                       "(contrastive, COLA)", mixed_precision=True)
    for flag, options in PRETRAIN_FLAGS:  # --data, --out, --preset, --val-fraction
        pretrain.add_argument(flag, **options)
    train_config.add_arguments(pretrain, pretraining=True, processes=True)

    evaluate = command("evaluate", _evaluate_command, "clip-level metrics of a run or preset "
                       "(--events: events in time against strong labels)", model="required",
                       data=True, mixed_precision=True)
    evaluate.add_argument("--split", choices=("eval", "val"), default="eval")
    evaluate.add_argument("--events", action="store_true", help="--data holds strong labels "
                          "(DCASE/DESED layout): event-based F1, segment-based F1, PSDS1")
    evaluate.add_argument("--hop", type=positive_float, default=0.25, help="--events: seconds "
                          "between 1 s windows")
    evaluate.add_argument("--json", help="also write the report as JSON here")

    shard = command("shard", _shard_command,
                    "decode, resample and chunk a split once into ArrayRecord shards", data=True)
    shard.add_argument("--out", required=True, help="shard directory")
    shard.add_argument("--split", choices=("train", "val", "eval"), default="train")
    shard.add_argument("--sample-rate", type=positive_int, default=16000)
    shard.add_argument("--shard-size", type=positive_int, default=4096, help="1 s chunks per file")
    shard.add_argument("--workers", type=positive_int, default=1, help="decoding processes")
    shard.add_argument("--overwrite", action="store_true", help="replace existing shards")

    predict = command("predict", _predict_command, "tag audio files: labels of each file (and "
                      "of each second)", model="optional", mixed_precision=True)
    embed = command("embed", _embed_command, "write the fused and per-stream embeddings of "
                    "audio files to .npz", model="optional", mixed_precision=True)
    listen = command("listen", _stream, "tag the microphone, printing each event's onset "
                     "and offset as it happens", model="optional", mixed_precision=True)
    for flag, options in microphone.FLAGS:  # --device, --list-devices, --rate, --channels
        listen.add_argument(flag, **options)
    for p in (predict, embed):
        p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                       help="audio files, or directories searched for them")
    for p in (predict, embed, listen):
        p.add_argument("--batch-size", type=positive_int, default=32,
                       help="1 s chunks per model call")
    for flag, options in streaming.FLAGS:  # --json, --hop
        for p in (predict, listen):
            p.add_argument(flag, **options)
    for flag, field, parse, help in events_module.FLAGS:  # defaults: EventOptions'
        for p in (predict, listen, evaluate):
            p.add_argument(flag, dest=field, type=parse, default=None, help=help)
    predict.add_argument("--top-k", type=positive_int, default=5, help="labels per file (default 5)")
    predict.add_argument("--timestamps", action="store_true",
                         help="also the labels of each second")
    predict.add_argument("--explain", action="store_true",
                         help="also each stream's share of every label's fused score")
    predict.add_argument("--events", action="store_true",
                         help="also each sound's events in time (onset, offset, label, score)")
    predict.add_argument("--audacity", metavar="DIR",
                         help="events: write an Audacity label track (.txt) per file to DIR")
    predict.add_argument("--events-tsv", metavar="FILE.tsv",
                         help="events: write all files' events as a DCASE/DESED TSV")
    predict.add_argument("--stream", action="store_true", help="tag standard input ('-') as it "
                         "arrives, printing each event's onset and offset as they happen")
    for flag, options in pcm_input.FLAGS:  # --rate, --channels, --sample-format
        predict.add_argument(flag, **options)
    embed.add_argument("--out", required=True, metavar="FILE.npz", help="where to write")
    distributed.add_flags(predict, embed)  # --ray [ADDRESS], --workers, ...: Parquet to --out

    demo = command("demo", _demo_command, "tag the bundled real recordings and draw the labels "
                   "over time", model="optional", mixed_precision=True)
    demo.add_argument("files", nargs="*", metavar="FILE",
                      help="audio files to show instead of the bundled clips")
    demo.add_argument("--plot", help="where to write the picture ('' for none; default "
                      "demo.png, drawn when matplotlib is installed)")

    exporter = command("export", _export_command, "export to SavedModel, TFLite or ONNX",
                       model="required")
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
    exporter.add_argument("--streams", type=finetune_flags.stream_list, metavar="A,B",
                          help="only these streams (e.g. pitch,timbre; refit the fusion on "
                          "them first: finetune --mode probe --streams)")
    exporter.add_argument("--no-check", action="store_true",
                          help="skip running the artifact next to the Keras model")

    for name, p in commands.items():
        # export loads the preset under TensorFlow (its converters), whatever it was trained on
        p.add_argument("--backend", choices=BACKENDS,
                       default="tensorflow" if name == "export" else None,
                       help="Keras backend (default: " + ("tensorflow)" if name == "export"
                                                           else "KERAS_BACKEND or keras.json)"))
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != args.backend:
            print("error: --backend must be chosen before Keras is imported", file=sys.stderr)
            return 2
        os.environ["KERAS_BACKEND"] = args.backend

    with messages.warnings_on_one_line(not args.debug), native_logs.quiet(not args.debug):
        return messages.run_guarded(args.func, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
