"""Sound events in time: the event rules' defaults chosen on validation soundscapes, then
event-based F1, segment-based F1 and PSDS on the eval soundscapes at several hops.

    python scripts/build_soundscapes.py --data /tmp/sampled_fsd50k --out /tmp/soundscapes
    python benchmarks/event_detection.py --soundscapes /tmp/soundscapes

For each hop, every soundscape of both splits is scored once (the fused window scores,
through the `Tagger`'s clip pipeline, timed). The rules (`keras_dae.events.EventOptions`:
thresholds with hysteresis, median filter, gap closing, minimum duration) are chosen by
event-based F1 on the val split at the tuning hop (0.25 s, `predict --events`' default) over
`GRID`; the chosen rules, and the untuned ones (threshold 0.5, nothing else), are then scored
on the eval split at every hop. Writes benchmarks/results/event_detection.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "event_detection.json"
GRID = {"on": [0.2, 0.3, 0.4, 0.5, 0.6], "off_gap": [0.0, 0.1, 0.2],
        "median_seconds": [0.0, 0.5, 1.0], "min_gap": [0.0, 0.5, 1.0],
        "min_duration": [0.0, 0.5]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--soundscapes", type=Path, required=True)
    parser.add_argument("--model", default="diverse_sampled15")
    parser.add_argument("--hops", default="0.5,0.25,0.1")
    parser.add_argument("--tune-hop", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import keras

    from keras_dae.event_evaluation import (
        evaluate_events,
        read_strong_labels,
        score_timelines,
        tune_event_options,
    )
    from keras_dae.events import EventOptions
    from keras_dae.inference import Tagger, load_model

    hops = [float(h) for h in args.hops.split(",")]
    if args.tune_hop not in hops:
        hops.append(args.tune_hop)
    splits = {s: read_strong_labels(args.soundscapes, s) for s in ("val", "eval")}
    model = load_model(args.model)
    timelines, costs = {}, {}
    for hop in hops:
        tagger = Tagger(model, hop_seconds=hop)
        tagger.forward(__import__("numpy").zeros((1, tagger.chunk_samples), "float32"))
        for split, labels in splits.items():
            start = time.perf_counter()
            timelines[hop, split] = score_timelines(tagger, labels)
            seconds = time.perf_counter() - start
            audio = sum(labels.durations.values())
            windows = sum(t.times.size for t in timelines[hop, split].values())
            costs[hop, split] = {"seconds": round(seconds, 2), "windows": windows,
                                 "audio_seconds": round(audio, 1),
                                 "windows_per_audio_second": round(windows / audio, 2),
                                 "real_time_factor": round(audio / seconds, 1)}
            print(f"hop {hop}: {split} scored, {windows} windows in {seconds:.1f} s", flush=True)
    names = tagger.class_names
    start = time.perf_counter()
    tuned, grid_rows = tune_event_options(timelines[args.tune_hop, "val"], splits["val"],
                                          names, GRID)
    print(f"tuned on val in {time.perf_counter() - start:.0f} s: {tuned}", flush=True)
    untuned = EventOptions(on=0.5, off=0.5, median_seconds=0.0, min_gap=0.0, min_duration=0.0)
    rows = []
    for hop in hops:
        for name, options in (("tuned on val", tuned), ("untuned (0.5)", untuned)):
            for split in ("val", "eval"):
                report = evaluate_events(timelines[hop, split], splits[split], names, options)
                rows.append({"hop": hop, "rules": name, "split": split,
                             **{k: round(report[k], 4) for k in
                                ("event_f1", "event_precision", "event_recall",
                                 "segment_f1", "psds1")},
                             "classes": len(report["classes"]), "files": report["files"],
                             **costs[hop, split]})
                print(rows[-1], flush=True)
    result = {
        "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "model": args.model, "backend": keras.backend.backend(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "soundscapes": {s: {"files": len(labels.files), "classes": labels.classes,
                            "events": sum(len(e) for e in labels.events.values())}
                        for s, labels in splits.items()},
        "tune_hop": args.tune_hop, "grid": GRID,
        "tuned": {"on": tuned.on, "off": tuned.off, "median_seconds": tuned.median_seconds,
                  "min_gap": tuned.min_gap, "min_duration": tuned.min_duration},
        "grid_top": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                     for r in grid_rows[:10]],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
