"""What travels with an exported model: its labels and a small JSON description.

Every artifact gets two files beside it (inside it, for a SavedModel directory):
- a labels file, one class name per line, line `i` naming output column `i`;
- a JSON description: sample rate, input window, output names, labels, AudioSet ids,
  quantization and which parts stay in float.
TFLite and ONNX files also carry the same JSON inside them (TFLite metadata entry
`keras_dae`, ONNX metadata property `keras_dae`), so a lone file still knows its labels.
"""

from __future__ import annotations

import json
from pathlib import Path

from keras_dae import atomic
from keras_dae.atomic import OutputError
from keras_dae.validation import InputError
from keras_dae.version import __version__

METADATA_KEY = "keras_dae"
INPUT_NAME = "waveform"
SCHEMA = "keras_dae.export/1"


def output_names(stream_names) -> list[str]:
    """The exported outputs, in this order: fused probabilities, each stream's, embedding."""
    return ["fused", *stream_names, "embedding"]


def describe(model, fmt: str, quantize: str, window: int, dft_mode: str,
             float_parts: list[str] | None = None, batch_size: int | None = None) -> dict:
    """The JSON description of an export of `model` (a `DiverseClassifier`)."""
    streams = list(model.stream_names)
    outputs = {"fused": f"(batch, {model.num_classes}) fused sigmoid probabilities"}
    for stream in streams:
        outputs[stream] = f"(batch, {model.num_classes}) the {stream} stream's own probabilities"
    embed = model.backbone.output["embedding"].shape[-1]
    outputs["embedding"] = f"(batch, {embed}) the concatenated stream embeddings"
    return {
        "schema": SCHEMA,
        "keras_dae_version": __version__,
        "format": fmt,
        "quantize": quantize,
        "dft_mode": dft_mode,
        "sample_rate": int(model.sample_rate),
        "input": {"name": INPUT_NAME, "shape": [batch_size, int(window)], "dtype": "float32",
                  "description": "mono waveform in [-1, 1] at sample_rate; one window per row"
                                 + ("" if batch_size is None else
                                    f"; exactly {batch_size} row(s) per call")},
        "window_seconds": window / model.sample_rate,
        "hop_seconds": window / model.sample_rate / 2,
        "clip_score": "mean of the window scores (windows every hop_seconds)",
        "outputs": outputs,
        "output_order": output_names(streams),
        "streams": streams,
        "labels": list(model.class_names),
        "mids": list(model.class_mids),
        "float_parts": list(float_parts or []),
    }


def sidecar_paths(artifact) -> tuple[Path, Path]:
    """(labels file, JSON description) for an artifact path.

    `model.tflite` -> `model.labels.txt`, `model.json`; a SavedModel directory `dir` ->
    `dir/assets.extra/labels.txt`, `dir/assets.extra/keras_dae.json` (TF Serving's place for
    extra files).
    """
    artifact = Path(artifact)
    if artifact.is_dir() or artifact.suffix == "":
        extra = artifact / "assets.extra"
        return extra / "labels.txt", extra / f"{METADATA_KEY}.json"
    return artifact.with_suffix(".labels.txt"), artifact.with_suffix(".json")


def _is_ours(sidecar: Path, json_path: Path) -> bool:
    """Whether an existing sidecar was written by an export: the JSON description carries
    `SCHEMA`; the labels file is the one its description lists."""
    try:
        description = json.loads(json_path.read_text())
        if not str(description.get("schema", "")).startswith(SCHEMA.split("/")[0] + "/"):
            return False
        if sidecar == json_path:
            return True
        return sidecar.read_text() == "".join(f"{x}\n" for x in description["labels"])
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False


def check_sidecars(artifact) -> None:
    """Refuses (`OutputError`) to go on when a sidecar path of `artifact` holds a file that an
    export did not write (a `package.json` beside `package.tflite`, say)."""
    labels_path, json_path = sidecar_paths(artifact)
    for sidecar in (labels_path, json_path):
        if sidecar.exists() and not _is_ours(sidecar, json_path):
            raise OutputError(f"{sidecar}: exists and was not written by keras-dae export "
                              f"(it would be replaced by the export's "
                              f"{'labels' if sidecar == labels_path else 'description'}); "
                              "move it or choose another --out")


def write_sidecars(artifact, description: dict) -> tuple[Path, Path]:
    labels_path, json_path = sidecar_paths(artifact)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    check_sidecars(artifact)
    atomic.write_text(labels_path, "".join(f"{label}\n" for label in description["labels"]))
    atomic.write_text(json_path, json.dumps(description, indent=1) + "\n")
    return labels_path, json_path


def read_description(artifact) -> dict | None:
    """The JSON description beside `artifact`, or None."""
    _, json_path = sidecar_paths(artifact)
    if not json_path.is_file():
        return None
    try:
        return json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{json_path}: not a readable export description ({error})") from None
