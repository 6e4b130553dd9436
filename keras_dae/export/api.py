"""`export()`: a `DiverseClassifier` to SavedModel, TFLite or ONNX, checked against itself."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from keras_dae import extras
from keras_dae.atomic import OutputError, check_output_path
from keras_dae.export.artifact import check_sidecars, describe, write_sidecars
from keras_dae.export.export_ready import ExportError, export_ready_model, max_abs_diff, probe_audio
from keras_dae.export.formats import DEFAULT_DFT_MODE, FORMATS, QUANTIZATIONS
from keras_dae.validation import InputError

# The input's batch per format when `batch_size="auto"`: TFLite files take one window per
# call, the on-device norm; a static shape lets the converter fold the shape arithmetic that
# a dynamic batch leaves in the graph (about 600 fewer ops, and faster on one thread).
# SavedModel and ONNX take any batch.
DEFAULT_BATCH_SIZE = {"savedmodel": None, "tflite": 1, "onnx": None}


def pitch_dft_mode(fmt: str, quantize: str, dft_mode: str) -> str:
    """YIN's DFT in an export: the matrix product the Keras model uses, so that its
    discontinuous trough choice is made on the same numbers (see `export_ready_model`), except
    in int8 TFLite files, where an FFT saves the two DFT matrices (0.5 MB as float16) and
    the parity asked of them is top labels and mAP, not 1e-4."""
    if fmt == "tflite" and quantize in ("dynamic-int8", "int8") and dft_mode == "fft":
        return "fft"
    return "matmul"
# Largest difference in probabilities on the probe audio that `export` accepts, per
# quantization. Float32 allows for the ~1e-3 that float32 rounding in another runtime's FFT
# can make in a trained model (export_ready.EXPORT_READY_ATOL); a broken conversion is off
# by 1e-1. The tests hold float32 exports to 1e-4 on real audio. Quantized int8 models are
# measured, not bounded (benchmarks/export.py).
TOLERANCE = {"none": 2e-3, "float16": 1e-2, "dynamic-int8": None, "int8": None}


@dataclasses.dataclass
class ExportResult:
    """What `export` wrote and how close it is to the Keras model."""

    path: Path
    format: str
    quantize: str
    dft_mode: str
    batch_size: int | None
    size_bytes: int
    labels_path: Path
    description_path: Path
    max_abs_diff: dict
    model_backend: str

    def summary(self) -> str:
        """What was written and, when checked, how far it is from the Keras model."""
        text = (f"wrote {self.path} ({self.format}, quantize {self.quantize}, "
                f"{self.size_bytes / 1e6:.2f} MB), labels {self.labels_path}")
        diff = ", ".join(f"{k} {v:.2g}" for k, v in self.max_abs_diff.items())
        if diff:
            text += f"\nlargest difference from the Keras model on probe audio: {diff}"
        return text

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}

    @classmethod
    def from_json(cls, data: dict) -> ExportResult:
        data = dict(data)
        for key in ("path", "labels_path", "description_path"):
            data[key] = Path(data[key])
        return cls(**data)


def artifact_size(path) -> int:
    """Bytes on disk of a file, or of every file under a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _check_args(fmt, quantize, dft_mode, calibration, batch_size):
    if fmt not in FORMATS:
        raise InputError(f"`format` must be one of {list(FORMATS)}, got {fmt!r}")
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"`batch_size` must be a positive integer, None (any batch) or "
                         f"'auto', got {batch_size!r}")
    if quantize not in QUANTIZATIONS:
        raise InputError(f"`quantize` must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    if quantize != "none" and fmt != "tflite":
        raise InputError(f"--quantize {quantize} is for TFLite; {fmt} exports float32 only")
    if quantize == "int8" and calibration is None:
        raise InputError("int8 quantization needs representative audio: pass calibration= "
                         "(a dataset or audio directory, or waveforms)")
    if fmt == "onnx" and dft_mode == "fft":
        raise InputError("ONNX export needs dft_mode='matmul' (tf2onnx leaves FFTs that "
                         "onnxruntime cannot run)")


SUFFIXES = {"tflite": (".tflite",), "onnx": (".onnx",), "savedmodel": ("",)}


def check_export_path(path, fmt: str) -> Path:
    """Refuses (`OutputError`, one line) an export to `path` before the work: a name that
    does not end as the format's files do (`.tflite`, `.onnx`, a SavedModel directory without
    an extension), a missing or read-only folder, a directory that holds something other than
    a SavedModel, and a sidecar path (`artifact.sidecar_paths`) holding a file that no export
    wrote. Returns `path`."""
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"`format` must be one of {list(FORMATS)}, got {fmt!r}")
    directory = fmt == "savedmodel"
    suffixes = () if directory and path.is_dir() else SUFFIXES[fmt]
    check_output_path(path, suffixes, directory=directory)
    if directory and path.is_dir() and any(path.iterdir()) and not (
            path / "saved_model.pb").is_file():
        raise OutputError(f"--out {path}: a directory that holds something other than a "
                          "SavedModel; choose a new or empty directory")
    check_sidecars(path)
    return path


def export(model, path, format: str, quantize: str = "none", calibration=None,
           calibration_windows: int = 200, dft_mode: str | None = None,
           window_seconds: float = 1.0, batch_size: int | str | None = "auto",
           check: bool = True, streams=None) -> ExportResult:
    """Exports `model` (a `DiverseClassifier`) to `path`.

    Args:
        model: the classifier, on any Keras backend. TensorFlow does the exporting: on JAX or
            PyTorch the model is saved as a preset and exported by a TensorFlow-backend
            subprocess (TensorFlow must be installed: `pip install "keras-dae[export]"`).
        path: a `.tflite` or `.onnx` file, or a directory for a SavedModel.
        format: "savedmodel", "tflite" or "onnx".
        quantize: TFLite only: "none", "float16", "dynamic-int8" or "int8" (see
            `keras_dae.export.tflite`).
        calibration: int8 only: representative audio, a dataset directory, audio directory or
            file (see `calibration.audio_files`), or an array `(n, window)` of waveforms.
        calibration_windows: how many 1 s windows to calibrate on.
        dft_mode: how spectra compute their DFT; default per format (`DEFAULT_DFT_MODE`).
        window_seconds: the exported input length (the model's 1 s chunks by default).
        batch_size: the input's batch: a fixed number of windows per call, None for any, or
            "auto" (`DEFAULT_BATCH_SIZE`: 1 for TFLite, any for SavedModel and ONNX).
        check: run the artifact in its runtime next to `model` on probe audio (real speech,
            a chirp, noise) and raise `ExportError` if a probability differs by more than the
            quantization's tolerance (`TOLERANCE`: 2e-3 float32, 1e-2 float16) or is not
            finite. This is the export's one check (on JAX and PyTorch too: against the
            model on its own backend); `check=False` runs none.
        streams: None (every stream), or the streams to export (a list, or
            `"pitch,timbre"`): the artifact is `model.with_streams(streams)`'s, with only
            those front ends and towers inside, and is checked against that model. Its fused
            output leaves out the other streams (see `DiverseClassifier.with_streams`).

    The input is `waveform`, float32 `(batch, window)`; the outputs are named `fused`, one per
    stream (of `streams`, when given), and `embedding`. Labels are written beside the artifact
    (and embedded in TFLite and ONNX files). Returns an `ExportResult`.
    """
    import keras

    dft_mode = dft_mode or DEFAULT_DFT_MODE.get(format)
    if batch_size == "auto":
        batch_size = DEFAULT_BATCH_SIZE.get(format)
    _check_args(format, quantize, dft_mode, calibration, batch_size)
    if streams is not None:
        model = model.with_streams(streams)
    missing = extras.missing_for_export(format, quantize)
    if missing:
        raise ExportError(missing)
    path = check_export_path(path, format)
    window = int(round(window_seconds * model.sample_rate))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        result = _export_tensorflow(model, path, format, quantize, calibration,
                                    calibration_windows, dft_mode, window, batch_size)
    else:
        result = _export_in_subprocess(model, path, format, quantize, calibration,
                                       calibration_windows, dft_mode, window_seconds,
                                       batch_size)
    result.model_backend = backend
    if check:
        result.max_abs_diff = check_against(model, path, TOLERANCE[quantize])
    return result


def check_against(model, path, tolerance: float | None) -> dict[str, float]:
    """Runs the artifact at `path` next to `model` on `probe_audio`; returns the largest
    absolute difference per output, raising `ExportError` above `tolerance` (or non-finite)."""
    from keras_dae.export.runtime import load_exported

    exported = load_exported(path)
    x = probe_audio(model.sample_rate, exported.window / model.sample_rate)
    expected = model.predict(x, verbose=0)
    got = exported(x)
    missing = set(expected) - set(got)
    if missing:
        raise ExportError(f"{path}: outputs {sorted(missing)} are missing")
    for name, value in got.items():
        if not np.all(np.isfinite(value)):
            raise ExportError(f"{path}: output {name!r} is not finite on the probe audio")
    diff = max_abs_diff(expected, got)
    probabilities = {k: v for k, v in diff.items() if k != "embedding"}
    worst = max(probabilities, key=probabilities.get)
    if tolerance is not None and probabilities[worst] > tolerance:
        raise ExportError(f"{path}: output {worst!r} differs from the Keras model by "
                          f"{probabilities[worst]:.3g} > {tolerance} on the probe audio")
    return diff


def _export_tensorflow(model, path, fmt, quantize, calibration, calibration_windows,
                       dft_mode, window, batch_size) -> ExportResult:
    from keras_dae.export import tflite
    from keras_dae.export.calibration import calibration_windows as windows_from
    from keras_dae.export.onnx import write_onnx
    from keras_dae.export.savedmodel import write_savedmodel

    pitch_mode = pitch_dft_mode(fmt, quantize, dft_mode)
    # Not checked here: `export` checks the artifact itself against the user's model, once.
    ready = export_ready_model(model, dft_mode=dft_mode, pitch_dft_mode=pitch_mode, check=False)
    parts = tflite.float_parts(quantize) if fmt == "tflite" else ["everything"]
    description = describe(ready, fmt, quantize, window, dft_mode, parts, batch_size)
    description["pitch_dft_mode"] = pitch_mode
    if fmt == "savedmodel":
        write_savedmodel(ready, path, window, batch_size)
    elif fmt == "onnx":
        write_onnx(ready, path, window, description, batch_size=batch_size)
    else:
        windows = None
        if quantize == "int8":
            windows = windows_from(calibration, model.sample_rate, window, calibration_windows)
        tflite.write_tflite(ready, path, window, quantize, description, windows, batch_size)
    labels_path, description_path = write_sidecars(path, description)
    return ExportResult(path=path, format=fmt, quantize=quantize, dft_mode=dft_mode,
                        batch_size=batch_size, size_bytes=artifact_size(path), labels_path=labels_path,
                        description_path=description_path, max_abs_diff={},
                        model_backend="tensorflow")


def _export_in_subprocess(model, path, fmt, quantize, calibration, calibration_windows,
                          dft_mode, window_seconds, batch_size) -> ExportResult:
    """Saves `model` as a preset and exports it with a TensorFlow-backend Python."""
    from keras_dae import zoo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preset = zoo.save(model, tmp / "preset")
        if calibration is not None and not isinstance(calibration, (str, Path)):
            np.save(tmp / "calibration.npy", np.asarray(calibration, np.float32))
            calibration = str(tmp / "calibration.npy")
        request = {"model": str(preset), "path": str(Path(path).resolve()), "format": fmt,
                   "quantize": quantize, "calibration": None if calibration is None else
                   str(calibration), "calibration_windows": calibration_windows,
                   "dft_mode": dft_mode, "window_seconds": window_seconds,
                   "batch_size": batch_size,
                   "result": str(tmp / "result.json")}
        (tmp / "request.json").write_text(json.dumps(request))
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        proc = subprocess.run([sys.executable, "-m", "keras_dae.export.worker",
                               str(tmp / "request.json")], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0 or not (tmp / "result.json").is_file():
            raise ExportError(f"the TensorFlow export subprocess failed (exit "
                              f"{proc.returncode}):\n{proc.stderr[-4000:]}")
        return ExportResult.from_json(json.loads((tmp / "result.json").read_text()))
