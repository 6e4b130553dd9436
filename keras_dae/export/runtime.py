"""Running exported artifacts from Python: one interface over LiteRT, onnxruntime, TensorFlow.

    model = load_exported("model.tflite")        # or .onnx, or a SavedModel directory
    out = model(windows)                         # (batch, window) float32 -> dict of arrays
    model.labels, model.sample_rate, model.window

Used by the export checks, the tests and `benchmarks/export.py`. (The standalone runner for
devices, `tflite/classify.py`, needs neither this package nor TensorFlow.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keras_dae import extras
from keras_dae.export.artifact import INPUT_NAME, METADATA_KEY, read_description
from keras_dae.export.savedmodel import SIGNATURE
from keras_dae.validation import InputError


def _tflite_interpreter(path: Path, num_threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's copy of the same interpreter
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter(model_path=str(path), num_threads=num_threads)


def tflite_description(path) -> dict | None:
    """The `keras_dae` metadata entry of a TFLite file, or None."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    tfl = schema.Model.GetRootAs(data, 0)
    for i in range(tfl.MetadataLength()):
        entry = tfl.Metadata(i)
        if entry.Name() and entry.Name().decode() == METADATA_KEY:
            buffer = tfl.Buffers(entry.Buffer())
            if buffer.DataLength():
                return json.loads(buffer.DataAsNumpy().tobytes())
            return json.loads(data[buffer.Offset(): buffer.Offset() + buffer.Size()])
    return None


class ExportedModel:
    """An exported keras-dae model loaded in its own runtime.

    Calling it with float32 `(batch, window)` waveforms returns `{output_name: array}`, the
    same names as the Keras model's outputs; an artifact with a fixed batch (`batch_size`) is
    run that many rows at a time. `labels`, `sample_rate` and `window` come from
    the description the export embedded (or wrote beside the artifact).
    """

    def __init__(self, path, num_threads: int | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            self.format = "savedmodel"
        elif self.path.suffix == ".tflite":
            self.format = "tflite"
        elif self.path.suffix == ".onnx":
            self.format = "onnx"
        else:
            raise InputError(f"{path}: not a SavedModel directory, .tflite or .onnx file")
        with extras.naming_the_extra(f"{path}: "):  # its runtime: which extra
            self.description = read_description(self.path) or self._embedded_description()
            if self.description is None:
                raise InputError(f"{path}: no keras-dae description in or beside it")
            self.labels = list(self.description["labels"])
            self.sample_rate = int(self.description["sample_rate"])
            self.window = int(self.description["input"]["shape"][1])
            # A fixed batch (TFLite's default, 1), or None: any number of rows per call.
            self.batch_size = self.description["input"]["shape"][0]
            self._load(num_threads)

    def _embedded_description(self):
        if self.format == "tflite":
            return tflite_description(self.path)
        if self.format == "onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(self.path)).metadata_props}
            return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None
        return None

    def _load(self, num_threads):
        if self.format == "tflite":
            self._interpreter = _tflite_interpreter(self.path, num_threads)
            self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        elif self.format == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
                options.inter_op_num_threads = 1
            self._session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"])
            self._names = [o.name for o in self._session.get_outputs()]
        else:
            import tensorflow as tf

            self._saved = tf.saved_model.load(str(self.path))
            self._function = self._saved.signatures[SIGNATURE]

    def __call__(self, waveform) -> dict[str, np.ndarray]:
        x = np.asarray(waveform, np.float32)
        if x.ndim != 2 or x.shape[1] != self.window:
            raise InputError(f"expected waveform of shape (batch, {self.window}), got {x.shape}")
        if self.batch_size is not None and len(x) != self.batch_size:
            return self._in_batches(x)
        if self.format == "tflite":
            out = self._runner(**{INPUT_NAME: x})
        elif self.format == "onnx":
            out = dict(zip(self._names, self._session.run(None, {INPUT_NAME: x}), strict=True))
        else:
            import tensorflow as tf

            out = {k: v.numpy() for k, v in self._function(**{INPUT_NAME: tf.constant(x)}).items()}
        return {k: np.asarray(v) for k, v in out.items()}


    def _in_batches(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of `x` run `batch_size` at a time (the last group padded with zeros)."""
        b = self.batch_size
        if len(x) == 0:
            raise InputError(f"expected at least one window of {self.window} samples")
        padded = np.concatenate([x, np.zeros((-len(x) % b, x.shape[1]), np.float32)])
        parts = [self(padded[i : i + b]) for i in range(0, len(padded), b)]
        return {k: np.concatenate([p[k] for p in parts])[: len(x)] for k in parts[0]}


def load_exported(path, num_threads: int | None = None) -> ExportedModel:
    """Loads a SavedModel directory, `.tflite` or `.onnx` file written by `export`."""
    return ExportedModel(path, num_threads=num_threads)
