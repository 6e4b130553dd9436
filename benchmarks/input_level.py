"""How a model's accuracy depends on its input's level: eval mAP with every clip attenuated.

    KERAS_BACKEND=torch python benchmarks/input_level.py --model diverse_sampled15 \\
        --data /tmp/sampled_fsd50k --gains 0,-10,-20,-30
    KERAS_BACKEND=torch python benchmarks/input_level.py --model RUN_DIR --name NAME

Recordings reach a tagger at any level: a distant microphone, a quiet room, a file mastered
low. Each eval clip of `--data` is decoded, scaled by each gain in `--gains` (dB), written as
a float WAV file (so nothing is clipped or quantised) and tagged as `keras-dae evaluate` tags
it (1 s chunks, hop 0.5 s, mean over chunks); the fused and per-stream clip mAP at each gain,
and its change from 0 dB, go to benchmarks/results/input_level.json (`--table` prints them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path

import one_stream

RESULTS = Path(__file__).parent / "results" / "input_level.json"


def scaled_copies(dataset, gain_db: float, sample_rate: int, out: Path):
    """`dataset` with each clip replaced by a float WAV file of it scaled by `gain_db` (at 0
    dB, `dataset` itself)."""
    import soundfile

    from keras_dae.audio import load_audio

    if gain_db == 0:
        return dataset
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in dataset.paths:
        copy = out / f"{path.stem}.wav"
        if not copy.is_file():
            waveform = load_audio(path, sample_rate) * 10 ** (gain_db / 20)
            soundfile.write(copy, waveform, sample_rate, subtype="FLOAT")
        paths.append(copy)
    return dataclasses.replace(dataset, paths=paths)


def measure(model_source: str, name: str, data: Path, gains: list[float],
            work: Path) -> list[dict]:
    import keras

    from keras_dae import zoo
    from keras_dae.data import read_split
    from keras_dae.training import evaluate

    model = zoo.load(model_source)
    test = read_split(data, "eval", "fsd50k").with_labels(model.class_names)
    rows = []
    for gain in gains:
        report = evaluate(model, scaled_copies(test, gain, model.sample_rate,
                                               work / f"gain_{gain:g}"))
        rows.append({"model": name, "source": model_source, "gain_db": gain, "n_clips": report["n_clips"],
                     "fused": report["mAP"], "streams": report["streams"],
                     "backend": keras.backend.backend()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(results: dict) -> str:
    """One table per model: fused and per-stream eval mAP at each gain, with the change from
    0 dB beside each."""
    lines = []
    for model in sorted({r["model"] for r in results.get("rows", [])}):
        rows = sorted((r for r in results["rows"] if r["model"] == model),
                      key=lambda r: -r["gain_db"])
        base = next((r for r in rows if r["gain_db"] == 0), None)
        names = ["fused", *rows[0]["streams"]]
        lines += [f"| {model}: gain | " + " | ".join(names) + " |",
                  "|---" * (1 + len(names)) + "|"]
        for r in rows:
            cells = []
            for name in names:
                value = r["fused"] if name == "fused" else r["streams"][name]
                cell = f"{value:.3f}"
                if base is not None and r is not base:
                    start = base["fused"] if name == "fused" else base["streams"][name]
                    cell += f" ({value - start:+.3f})"
                cells.append(cell)
            lines.append(f"| {r['gain_db']:g} dB | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="diverse_sampled15",
                        help="preset name or directory (zoo.load)")
    parser.add_argument("--name", help="the model's name in the results (default: --model)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/sampled_fsd50k"))
    parser.add_argument("--gains", default="0,-10,-20,-30", help="comma-separated dB")
    parser.add_argument("--work", type=Path, help="the scaled copies (default: a temporary dir)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the results and stop")
    args = parser.parse_args(argv)
    if not args.table:
        gains = [float(g) for g in args.gains.split(",")]
        if any(g > 0 for g in gains):
            parser.error("--gains: attenuations only (<= 0 dB); louder copies would clip")
        with tempfile.TemporaryDirectory(prefix="input_level_") as tmp:
            rows = measure(args.model, args.name or args.model, args.data, gains,
                           args.work or Path(tmp))
        # Read after measuring: runs of other models may share the file.
        results = json.loads(args.results.read_text()) if args.results.is_file() else {"rows": []}
        one_stream.merge(results, "rows", rows, lambda r: (r["model"], r["gain_db"]))
        results.update({"command": "python benchmarks/input_level.py --model MODEL --data "
                                   f"{args.data} --gains {args.gains}",
                        "machine": {"cpu": platform.processor() or platform.machine(),
                                    "cores": len(os.sched_getaffinity(0))}})
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(table(json.loads(args.results.read_text()) if args.results.is_file() else {}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
