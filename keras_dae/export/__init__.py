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
returned. Nothing here imports TensorFlow until an export runs.
"""

from keras_dae.export.api import (
    DEFAULT_DFT_MODE,
    FORMATS,
    TOLERANCE,
    ExportResult,
    check_export_path,
    export,
)
from keras_dae.export.artifact import describe, sidecar_paths
from keras_dae.export.calibration import calibration_windows
from keras_dae.export.export_ready import ExportError, export_ready_model, probe_audio
from keras_dae.export.runtime import ExportedModel, load_exported
from keras_dae.export.tflite import QUANTIZATIONS, float_parts

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
