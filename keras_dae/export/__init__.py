"""Export for deployment: SavedModel, TFLite (float32, float16, dynamic-int8, int8) and ONNX.

    from keras_dae import export, zoo
    model = zoo.load("runs/my_run/preset")
    export.export(model, "tagger.tflite", "tflite", quantize="int8", calibration="data/FSD50K")
    exported = export.load_exported("tagger.tflite")      # LiteRT, onnxruntime or TensorFlow
    probabilities = exported(windows)["fused"]            # windows: (batch, 16000) float32

Every artifact takes raw mono waveform (`waveform`, float32 `(batch, window)`, 1 s at the
model's rate) with the front ends inside the graph, and returns `fused`, one output per
stream, and `embedding`. TensorFlow does the converting (`keras.export.ExportArchive`,
`tf.lite.TFLiteConverter` with builtin ops only, tf2onnx; AI Edge Quantizer for the
quantized TFLite files); a model on JAX or PyTorch is exported through a TensorFlow-backend
subprocess. Each export is run in its own runtime next to the Keras model before it is
returned. Nothing here imports TensorFlow until an export runs, nor Keras until a name other
than the `formats` constants is used.
"""

import importlib

from keras_dae.export.formats import DEFAULT_DFT_MODE, FORMATS, QUANTIZATIONS

__all__ = [
    "DEFAULT_DFT_MODE",
    "FORMATS",
    "QUANTIZATIONS",
    "TOLERANCE",
    "ExportError",
    "ExportResult",
    "ExportedModel",
    "calibration_windows",
    "check_export_path",
    "describe",
    "export",
    "export_ready_model",
    "float_parts",
    "load_exported",
    "probe_audio",
    "sidecar_paths",
]

_LAZY = {
    "TOLERANCE": "keras_dae.export.api",
    "ExportResult": "keras_dae.export.api",
    "check_export_path": "keras_dae.export.api",
    "export": "keras_dae.export.api",
    "describe": "keras_dae.export.artifact",
    "sidecar_paths": "keras_dae.export.artifact",
    "calibration_windows": "keras_dae.export.calibration",
    "ExportError": "keras_dae.export.export_ready",
    "export_ready_model": "keras_dae.export.export_ready",
    "probe_audio": "keras_dae.export.export_ready",
    "ExportedModel": "keras_dae.export.runtime",
    "load_exported": "keras_dae.export.runtime",
    "float_parts": "keras_dae.export.tflite",
}


_SUBMODULES = ("api", "artifact", "calibration", "export_ready", "onnx", "runtime",
               "savedmodel", "tflite", "worker")


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_dae.export.{name}")
    raise AttributeError(f"module 'keras_dae.export' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
