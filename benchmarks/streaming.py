"""Live tagging: how fast the streams run and how late their events come, on soundscapes.

    python scripts/build_soundscapes.py --data /tmp/sampled_fsd50k --out /tmp/soundscapes
    KERAS_BACKEND=jax taskset -c 0 python benchmarks/streaming.py \
        --soundscapes /tmp/soundscapes --max-files 25 --rates 16000,44100

`taskset -c 0` keeps the whole run (the Keras backend's thread pools included) on one CPU
core, the budget a live tagger beside other work gets; the JSON records how many cores the
process could use.

Each eval soundscape is read whole, then fed to two streaming runners in blocks of `--block`
seconds at each rate of `--rates` (a rate other than the files' 16 kHz is made beforehand
with soxr, untimed, and resampled back inside the stream, as a microphone's would be):

- `keras_dae.streaming.StreamTagger` with the preset's Keras model (`Tagger`, a 1 s window
  every `--hop` seconds, on the backend of KERAS_BACKEND);
- `tflite/classify.py`'s `StreamTagger` (LiteRT alone; its `LinearResampler` for other
  rates) on a float32 TFLite export of the same preset (`keras_dae.export.export`, batch 1,
  made once and kept at `--tflite`), on `--threads` interpreter threads.

Both use the default thresholds (`EventOptions().thresholds_only()`: on, off) and nothing else,
for the least delay (tflite/classify.py applies no other rule). Per runner and rate it measures:

- speed: seconds of audio over seconds spent in `feed()` and `close()` (wall clock,
  `time.perf_counter`); each `feed()`'s compute time (median, p95, max over every block,
  and the median over the blocks that completed a window); and the same runner tagging the
  same audio offline, in the same run, file by file between the streams (so the machine's
  load falls on both alike): `Tagger.tag(audio, events=...)` for Keras, and all the
  windows of the clip scored at once for TFLite (resampled first, as `load_mono` does).
  The ratio stream / offline is what streaming costs in speed.
- delay: each reference event (strong label) is matched to the first streamed onset of its
  class whose time lies in [true onset - 0.5 s, true offset] (each streamed event matched
  once). Its onset delay is the stream position (seconds of audio fed) when `feed()`
  returned that onset, plus that `feed()`'s compute time, minus the true onset: when a live
  caller would learn of it. The offset delay is the same for the offset that ends the
  matched streamed event, against the true offset (an event still open at the recording's
  end is ended by `close()` there). Reported: median and p90, and the share of reference
  events matched (recall at onset).

For the Keras runner it also checks that the streamed events equal the offline ones (files
whose windows fall on the hop grid; `keras_dae.streaming`'s promise). Writes
benchmarks/results/streaming.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "streaming.json"
CLASSIFY = HERE.parent / "tflite" / "classify.py"
MATCH_BEFORE = 0.5  # a streamed onset up to this long before the true onset still matches
SHARED = ("the CPU was shared with other benchmarks running at the same time, so every "
          "speed here is lower than an idle machine gives; each stream and its offline "
          "reference ran interleaved file by file, so the load fell on both")


def load_classify():
    """tflite/classify.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("tflite_classify", CLASSIFY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stream_once(feed, close, windows, audio: np.ndarray, rate: int, block: int) -> dict:
    """Feeds `audio` in blocks of `block` samples; returns the updates
    `(kind, time, label, emitted at)` with `emitted at` = stream position + the feed's
    compute time, every feed's `(compute time, windows it completed)`, and the total.
    `windows()`: the windows the stream has scored so far."""
    updates, feeds = [], []
    fed = 0
    for start in range(0, audio.size, block):
        piece = audio[start:start + block]
        before = windows()
        begin = time.perf_counter()
        out = feed(piece)
        spent = time.perf_counter() - begin
        fed += piece.size
        feeds.append((spent, windows() - before))
        updates += [(kind, at, label, fed / rate + spent) for kind, at, label, _ in out]
    begin = time.perf_counter()
    out = close()
    spent = time.perf_counter() - begin
    updates += [(kind, at, label, fed / rate + spent) for kind, at, label, _ in out]
    return {"updates": updates, "feeds": feeds, "close": spent,
            "seconds": sum(f[0] for f in feeds) + spent}


def streamed_events(updates) -> list[dict]:
    """Onsets and offsets paired per class, in the order they came."""
    open_, events = {}, []
    for kind, at, label, emitted in updates:
        if kind == "onset":
            open_[label] = {"label": label, "onset": at, "onset_emitted": emitted}
        else:
            event = open_.pop(label)
            event.update(offset=at, offset_emitted=emitted)
            events.append(event)
    if open_:
        raise RuntimeError(f"the stream left events open: {sorted(open_)}")
    return sorted(events, key=lambda e: (e["onset"], e["label"]))


def match(reference, events) -> list[tuple[tuple, dict]]:
    """Each reference `(onset, offset, label)` with the first unmatched streamed event of its
    class whose onset lies in [onset - MATCH_BEFORE, offset]."""
    used, pairs = set(), []
    for true in sorted(reference):
        onset, offset, label = true
        for i, event in enumerate(events):
            if (i not in used and event["label"] == label
                    and onset - MATCH_BEFORE <= event["onset"] <= offset):
                used.add(i)
                pairs.append((true, event))
                break
    return pairs


def summarise(name: str, rate: int, runs: list[dict], offline_seconds: float,
              audio_seconds: float, labels, files: list[str], agrees: int | None) -> dict:
    feeds = np.array([f[0] for run in runs for f in run["feeds"]]) * 1e3
    scored = np.array([f[0] for run in runs for f in run["feeds"] if f[1]]) * 1e3
    windows = sum(f[1] for run in runs for f in run["feeds"])
    stream_seconds = sum(run["seconds"] for run in runs)
    onset_delays, offset_delays, onset_errors = [], [], []
    n_reference = n_streamed = 0
    for name_, run in zip(files, runs, strict=True):
        reference = labels.events[name_]
        events = streamed_events(run["updates"])
        n_reference += len(reference)
        n_streamed += len(events)
        for (onset, offset, _), event in match(reference, events):
            onset_delays.append(event["onset_emitted"] - onset)
            onset_errors.append(event["onset"] - onset)
            offset_delays.append(event["offset_emitted"] - offset)

    def q(values, p):
        return round(float(np.percentile(values, p)), 3) if len(values) else None

    row = {
        "runner": name, "input_rate": rate, "files": len(files),
        "audio_seconds": round(audio_seconds, 1),
        "stream_seconds": round(stream_seconds, 2),
        "stream_real_time_factor": round(audio_seconds / stream_seconds, 1),
        "offline_seconds": round(offline_seconds, 2),
        "offline_real_time_factor": round(audio_seconds / offline_seconds, 1),
        "stream_over_offline_speed": round(offline_seconds / stream_seconds, 3),
        "blocks": int(feeds.size),
        "block_ms": {"median": q(feeds, 50), "p95": q(feeds, 95), "max": q(feeds, 100)},
        "windows": int(windows),
        "blocks_completing_a_window": int(scored.size),
        "block_completing_a_window_ms": {"median": q(scored, 50), "p95": q(scored, 95)},
        "reference_events": n_reference, "streamed_events": n_streamed,
        "matched": len(onset_delays),
        "recall_at_onset": round(len(onset_delays) / n_reference, 4) if n_reference else None,
        "onset_delay_s": {"median": q(onset_delays, 50), "p90": q(onset_delays, 90)},
        "onset_time_error_s": {"median": q(onset_errors, 50), "p90": q(onset_errors, 90)},
        "offset_delay_s": {"median": q(offset_delays, 50), "p90": q(offset_delays, 90)},
    }
    if agrees is not None:
        row["files_whose_streamed_events_equal_offline"] = agrees
    return row


def same_events(updates, offline) -> bool:
    streamed = sorted((round(e["onset"], 6), round(e["offset"], 6), e["label"])
                      for e in streamed_events(updates))
    return streamed == sorted((round(e.onset, 6), round(e.offset, 6), e.label)
                              for e in offline)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--soundscapes", type=Path, required=True)
    parser.add_argument("--split", default="eval")
    parser.add_argument("--model", default="diverse_sampled15")
    parser.add_argument("--max-files", type=int, default=None,
                        help="the first N files of the split (default: all)")
    parser.add_argument("--block", type=float, default=0.1, help="seconds per block")
    parser.add_argument("--hop", type=float, default=0.25)
    parser.add_argument("--rates", default="16000",
                        help="input rates, comma-separated (others than the files' are "
                        "made with soxr beforehand and resampled in the stream)")
    parser.add_argument("--tflite", type=Path,
                        default=Path("/tmp/keras_dae_streaming/diverse_sampled15.tflite"),
                        help="the float32 TFLite export (made here when missing)")
    parser.add_argument("--threads", type=int, default=1, help="TFLite interpreter threads")
    parser.add_argument("--shared-cpu", action="store_true",
                        help="say in the JSON that other jobs ran on the CPU meanwhile")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]

    import keras
    import soundfile
    import soxr

    from keras_dae.event_evaluation import read_strong_labels
    from keras_dae.events import EventOptions
    from keras_dae.inference import Tagger, load_model
    from keras_dae.streaming import StreamTagger

    classify = load_classify()
    labels = read_strong_labels(args.soundscapes, args.split)
    files = sorted(labels.files)[:args.max_files]
    model = load_model(args.model)
    if not args.tflite.is_file():
        from keras_dae.export import export

        args.tflite.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        print(export(model, args.tflite, "tflite").summary(), flush=True)
        print(f"exported in {time.perf_counter() - start:.0f} s", flush=True)
    options = EventOptions().thresholds_only()
    tagger = Tagger(model, hop_seconds=args.hop)
    lite = classify.Model(args.tflite, args.threads, "fused")
    if tuple(lite.labels) != tagger.class_names or lite.sample_rate != tagger.sample_rate:
        raise SystemExit(f"{args.tflite} is not an export of {args.model}")
    on, off = options.thresholds(tagger.class_names)
    if len(set(on)) != 1 or len(set(off)) != 1:
        raise SystemExit("classify.py takes one threshold for every class")
    on, off = float(on[0]), float(off[0])
    lite_hop = max(1, round(args.hop * lite.sample_rate))

    sr = tagger.sample_rate
    audio16 = {}
    for name in files:
        audio, rate = soundfile.read(str(labels.files[name]), dtype="float32", always_2d=True)
        if rate != sr:
            raise SystemExit(f"{name}: {rate} Hz, expected the model's {sr}")
        audio16[name] = audio.mean(axis=1)
    # Warm-up, untimed: JAX compiles the Tagger's two batch shapes (8 padded, 32) here.
    warm = audio16[files[0]]
    tagger.tag(warm, sample_rate=sr, top_k=0, events=options)
    tagger.forward(np.zeros((1, tagger.chunk_samples), np.float32))
    lite.scores(np.zeros((1, lite.window), np.float32))

    rows = []
    for rate in [int(r) for r in args.rates.split(",")]:
        block = max(1, round(args.block * rate))
        audio = {name: (a if rate == sr else
                        soxr.resample(a, sr, rate, quality="HQ").astype(np.float32))
                 for name, a in audio16.items()}
        seconds = sum(a.size / rate for a in audio.values())
        keras_runs, lite_runs = [], []
        keras_offline = lite_offline = 0.0
        agrees = 0
        for i, name in enumerate(files):
            a = audio[name]
            begin = time.perf_counter()
            offline = tagger.tag(a, sample_rate=rate, top_k=0, events=options).events
            keras_offline += time.perf_counter() - begin

            stream = StreamTagger(tagger, input_rate=rate, options=options)
            run = stream_once(
                lambda b, s=stream: [(u.kind, u.time, u.label, u.score) for u in s.feed(b)],
                lambda s=stream: [(u.kind, u.time, u.label, u.score) for u in s.close()],
                lambda s=stream: s._windows, a, rate, block)
            keras_runs.append(run)
            agrees += same_events(run["updates"], offline)

            begin = time.perf_counter()
            mono = a
            if rate != lite.sample_rate:  # load_mono's linear interpolation
                n = max(1, round(a.size * lite.sample_rate / rate))
                mono = np.interp(np.arange(n) * (rate / lite.sample_rate), np.arange(a.size),
                                 a).astype(np.float32)
            windows, _ = classify.windows_of(mono, lite.window, lite_hop)
            lite.scores(windows)
            lite_offline += time.perf_counter() - begin

            resample = (classify.LinearResampler(rate, lite.sample_rate)
                        if rate != lite.sample_rate else None)
            runner = classify.StreamTagger(lite.scores, lite.labels, lite.window, lite_hop,
                                           lite.sample_rate, on, off, lite.batch)
            lite_runs.append(stream_once(
                lambda b, t=runner, r=resample: t.feed(r(b) if r else b),
                lambda t=runner, r=resample: t.close(r.flush() if r else
                                                     np.zeros(0, np.float32)),
                lambda t=runner: t.windows, a, rate, block))
            print(f"{rate} Hz: {i + 1}/{len(files)} {name}", flush=True)
        keras_name = f"Keras StreamTagger ({keras.backend.backend()})"
        lite_name = f"tflite/classify.py StreamTagger (LiteRT float32, {args.threads} thread)"
        rows.append(summarise(keras_name, rate, keras_runs, keras_offline, seconds, labels,
                              files, agrees))
        rows.append(summarise(lite_name, rate, lite_runs, lite_offline, seconds, labels,
                              files, None))
        for row in rows[-2:]:
            print(json.dumps(row), flush=True)

    import ai_edge_litert
    from export import cpu_name  # benchmarks/export.py (Keras' backend is chosen by now)

    cores_allowed = len(os.sched_getaffinity(0))
    pinned = "taskset -c 0 " if cores_allowed == 1 < (os.cpu_count() or 1) else ""
    result = {
        "command": ("KERAS_BACKEND=" + keras.backend.backend() + " " + pinned
                    + "python benchmarks/"
                    + Path(__file__).name + " " + " ".join(
                        argv if argv is not None else sys.argv[1:])),
        "model": args.model, "backend": keras.backend.backend(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "cores_allowed": cores_allowed, "shared": args.shared_cpu, **({"note": SHARED} if args.shared_cpu else {}),
                    "load_average_1min": {"start": round(load_before, 2),
                                          "end": round(os.getloadavg()[0], 2)},
                    "tflite_threads": args.threads},
        "versions": {"python": platform.python_version(), "keras": keras.__version__,
                     "jax": _version("jax"), "tensorflow": _version("tensorflow"),
                     "ai_edge_litert": getattr(ai_edge_litert, "__version__", None)
                     or _version("ai-edge-litert"),
                     "numpy": np.__version__, "soxr": soxr.__version__},
        "soundscapes": {"split": args.split, "files": len(files),
                        "of": len(labels.files),
                        "events": sum(len(labels.events[n]) for n in files),
                        "audio_seconds_at_16k": round(sum(a.size for a in audio16.values())
                                                      / sr, 1)},
        "block_seconds": args.block, "hop_seconds": args.hop,
        "thresholds": {"on": on, "off": off},
        "tagger_batch_size": tagger.batch_size, "tflite_batch": lite.batch,
        "tflite_size_bytes": args.tflite.stat().st_size,
        "match_window_s": [f"true onset - {MATCH_BEFORE}", "true offset"],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
