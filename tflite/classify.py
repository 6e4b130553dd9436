#!/usr/bin/env python3
"""Tags an audio file with a keras-dae TFLite model: top labels for each second and the clip.

    python classify.py model.tflite clip.wav [--top 5] [--threads 1]

Needs only a TFLite runtime (`ai-edge-litert`, or the older `tflite-runtime`), numpy and
soundfile: not TensorFlow and not keras-dae. The model takes 1 s windows of mono float32
audio at its sample rate; this script decodes the file, mixes it to mono, resamples it
(linear interpolation, adequate for a demo; resample with a proper filter, e.g. soxr, when
accuracy matters), cuts 1 s windows every 0.5 s (a clip shorter than 1 s is repeated to fill
one window), prints the top labels of the window starting at each second, and averages all
window scores for the clip, as keras-dae's evaluation does.

Labels come from `<model>.labels.txt` beside the model, else from the `keras_dae` entry of
the model's own metadata.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np


def load_interpreter(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    return Interpreter(model_path=str(path), num_threads=threads)


def _table_field(buf: bytes, table: int, field: int) -> int | None:
    """Position of field `field` of the flatbuffer table at `table`, or None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * field
    if slot >= vtable_size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def embedded_metadata(buf: bytes, key: str = "keras_dae") -> dict | None:
    """The JSON metadata entry `key` of a TFLite flatbuffer (schema: Model.metadata is field 6,
    Model.buffers field 4; Metadata.name field 0, .buffer field 1; Buffer.data field 0,
    .offset field 1, .size field 2)."""
    model = _deref(buf, 0)
    meta_field = _table_field(buf, model, 6)
    buffers_field = _table_field(buf, model, 4)
    if meta_field is None or buffers_field is None:
        return None
    metas, buffers = _deref(buf, meta_field), _deref(buf, buffers_field)
    for i in range(struct.unpack_from("<I", buf, metas)[0]):
        entry = _deref(buf, metas + 4 + 4 * i)
        name_field = _table_field(buf, entry, 0)
        if name_field is None:
            continue
        name = _deref(buf, name_field)
        length = struct.unpack_from("<I", buf, name)[0]
        if buf[name + 4 : name + 4 + length].decode() != key:
            continue
        index_field = _table_field(buf, entry, 1)
        index = struct.unpack_from("<I", buf, index_field)[0] if index_field else 0
        buffer = _deref(buf, buffers + 4 + 4 * index)
        data_field = _table_field(buf, buffer, 0)
        if data_field is not None:
            data = _deref(buf, data_field)
            size = struct.unpack_from("<I", buf, data)[0]
            return json.loads(buf[data + 4 : data + 4 + size])
        offset_field, size_field = _table_field(buf, buffer, 1), _table_field(buf, buffer, 2)
        if offset_field and size_field:
            offset = struct.unpack_from("<Q", buf, offset_field)[0]
            size = struct.unpack_from("<Q", buf, size_field)[0]
            return json.loads(buf[offset : offset + size])
    return None


def load_labels(model_path: Path, metadata: dict | None) -> list[str] | None:
    labels_file = model_path.with_suffix(".labels.txt")
    if labels_file.is_file():
        return [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    if metadata and metadata.get("labels"):
        return list(metadata["labels"])
    return None


def load_mono(path: Path, sample_rate: int) -> np.ndarray:
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != sample_rate and len(audio) > 1:
        n = max(1, round(len(audio) * sample_rate / rate))
        audio = np.interp(np.arange(n) * (rate / sample_rate), np.arange(len(audio)),
                          audio).astype(np.float32)
    return audio


def windows_of(audio: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """1 s windows every `hop` samples (the last one ending at the clip's end); a clip
    shorter than a window is repeated to fill it. Returns (windows, start times in samples)."""
    if len(audio) < window:
        return np.resize(audio, window)[None].astype(np.float32), np.zeros(1, int)
    starts = list(range(0, len(audio) - window + 1, hop))
    if starts[-1] != len(audio) - window:
        starts.append(len(audio) - window)
    return np.stack([audio[s : s + window] for s in starts]).astype(np.float32), np.array(starts)


def top_labels(scores: np.ndarray, labels: list[str], k: int) -> str:
    order = np.argsort(-scores)[:k]
    return ", ".join(f"{labels[i]} {scores[i]:.2f}" for i in order)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a .tflite file exported by keras-dae")
    parser.add_argument("audio", type=Path, help="an audio file (WAV, FLAC, OGG, MP3, ...)")
    parser.add_argument("--top", type=int, default=5, help="labels to print (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads")
    parser.add_argument("--output", default="fused", help="output to rank (default fused)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args(argv)

    metadata = embedded_metadata(args.model.read_bytes())
    interpreter = load_interpreter(args.model, args.threads)
    runner = interpreter.get_signature_runner("serving_default")
    (input_name, spec), = runner.get_input_details().items()
    window = int(spec["shape_signature"][1])
    sample_rate = int(metadata["sample_rate"]) if metadata else 16000
    n_classes = int(runner.get_output_details()[args.output]["shape_signature"][-1])
    labels = load_labels(args.model, metadata) or [f"class_{i}" for i in range(n_classes)]

    audio = load_mono(args.audio, sample_rate)
    windows, starts = windows_of(audio, window, window // 2)
    # The input's batch: fixed in the file (1 by default) or -1 (any); run that many windows
    # per call, the last group padded with silence.
    batch = max(int(spec["shape_signature"][0]), 1)
    padded = np.concatenate([windows, np.zeros((-len(windows) % batch, window), np.float32)])
    scores = np.concatenate([runner(**{input_name: padded[i : i + batch]})[args.output]
                             for i in range(0, len(padded), batch)])[: len(windows)]
    clip = scores.mean(axis=0)
    if args.json:
        print(json.dumps({"labels": labels, "starts_s": (starts / sample_rate).tolist(),
                          "windows": scores.tolist(), "clip": clip.tolist()}))
        return 0
    print(f"{args.audio.name}: {len(audio) / sample_rate:.2f} s, {len(windows)} windows of "
          f"{window / sample_rate:g} s")
    # Windows overlap by half; print those that start on a whole second (and the last).
    for i, (start, row) in enumerate(zip(starts, scores, strict=True)):
        if start % sample_rate == 0 or i == len(starts) - 1:
            print(f"  {start / sample_rate:6.2f} s  {top_labels(row, labels, args.top)}")
    print(f"clip: {top_labels(clip, labels, args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
