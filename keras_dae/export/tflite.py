"""TFLite (LiteRT): TensorFlow's converter with builtin ops only, then selective quantization.

The float model comes from `tf.lite.TFLiteConverter.from_saved_model` with
`supported_ops=[TFLITE_BUILTINS]`: no Flex (SELECT_TF_OPS) kernels, so any LiteRT runtime
runs it. Its spectra use `keras.ops.rfft` (the RFFT2D builtin) by default: no 640 x 514 DFT
matrix in the file, and faster than the matrix product on CPU.

Quantization is done on that float file by Google's AI Edge Quantizer, whose recipes choose
per op (by the op's output tensor name) what is quantized and how. TensorFlow's converter
quantizes all or nothing in its float16 and dynamic-range modes, and that breaks the front
ends: every float constant becomes float16 (YIN's and the descriptors' 1.2e-38 floors and
the 1e-10 dB floors flush to zero, giving NaN on silent frames), and dynamic-range int8
quantizes the power spectra fed to the mel, CQT and YIN products (80 dB of range in 8 bits).
The recipes here:

- `float16`: the weights of every matrix product and convolution stored as float16 and
  expanded to float32 once at load; all arithmetic stays float32.
- `dynamic-int8`: the Transformer towers' dense layers get int8 weights and int8 arithmetic
  on activations quantized at run time, per row. The front ends keep float32 arithmetic
  (their constant kernels are stored as float16), and so do the tower input normalization,
  attention softmax and score products, layer norms, GELU and the output heads.
- `int8`: as `dynamic-int8`, but the towers' dense layers run on int8 activations whose
  ranges were calibrated on representative audio (static, full-integer kernels).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np

from keras_dae.export.artifact import INPUT_NAME, METADATA_KEY
from keras_dae.export.savedmodel import SIGNATURE, write_savedmodel

QUANTIZATIONS = ("none", "float16", "dynamic-int8", "int8")


def convert_float(model, window: int) -> bytes:
    """`model` (TensorFlow backend) as a float32 TFLite flatbuffer, builtin ops only."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        write_savedmodel(model, tmp, window)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return bytes(converter.convert())


def layer_scope(name: str) -> str:
    """Regex matching TFLite tensor names inside the layer `name` (the converter names tensors
    after the Keras name scopes, which may carry a `_1` suffix)."""
    return rf"(^|[/;]){re.escape(name)}(_\d+)?/"


def float_parts(quantize: str) -> list[str]:
    """What stays float32 arithmetic in a TFLite file of this quantization, and why."""
    if quantize == "none":
        return ["everything"]
    if quantize == "float16":
        return ["all arithmetic (float16 is only how weights are stored; they are expanded "
                "to float32 at load)"]
    return [
        "front ends (CQT, YIN pitch, MFCC, spectral descriptors, learned filterbank, "
        "Neuralogram): power spectra span 80 dB and pitch needs sub-sample lags; their "
        "constant kernels are stored as float16",
        "tower input normalization: its inputs mix Hz, dB and 0-1 features in one tensor",
        "attention score products and softmax, layer norms, GELU, pooling",
        "output heads and sigmoids: int8 probabilities would tie low scores and reorder "
        "the top labels",
    ]


def _recipe(quantizer, model, quantize: str) -> None:
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    op = qtyping.TFLOperationName
    fp16 = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )
    if quantize == "float16":
        quantizer.update_quantization_recipe(regex=".*", operation_name=op.ALL_SUPPORTED,
                                             op_config=fp16,
                                             algorithm_key=AlgorithmName.FLOAT_CASTING)
        return
    featurizer = layer_scope(model.featurizer.name)
    backbone = layer_scope(model.backbone.name)
    quantizer.update_quantization_recipe(regex=featurizer, operation_name=op.ALL_SUPPORTED,
                                         op_config=fp16,
                                         algorithm_key=AlgorithmName.FLOAT_CASTING)
    if quantize == "dynamic-int8":
        quantizer.add_dynamic_config(regex=backbone, operation_name=op.FULLY_CONNECTED,
                                     num_bits=8)
    elif quantize == "int8":
        quantizer.add_static_config(regex=backbone, operation_name=op.FULLY_CONNECTED,
                                    activation_num_bits=8, weight_num_bits=8)
    else:
        raise ValueError(f"unknown quantization {quantize!r}")


def quantize_tflite(float_model: bytes, model, quantize: str,
                    calibration: np.ndarray | None = None) -> bytes:
    """`float_model` quantized with this module's recipe for `quantize`.

    `calibration`: `(n, window)` float32 waveforms, needed for `int8` (the activation ranges
    of the int8 layers are their min/max over these windows).
    """
    if quantize == "none":
        return float_model
    from ai_edge_quantizer import quantizer as aeq

    quantizer = aeq.Quantizer(bytearray(float_model))
    _recipe(quantizer, model, quantize)
    result = None
    if quantizer.need_calibration:
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 quantization needs representative audio to calibrate on "
                             "(calibration=...)")
        data = {SIGNATURE: [{INPUT_NAME: np.asarray(w, np.float32)[None]} for w in calibration]}
        result = quantizer.calibrate(data, num_threads=1)
    return bytes(quantizer.quantize(result, enable_progress_report=False).quantized_model)


def with_metadata(model_bytes: bytes, description: dict) -> bytes:
    """The flatbuffer with `description` as JSON in its metadata entry `keras_dae`, and every
    buffer inline (readable by LiteRT runtimes that predate external buffers)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    tfl = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    tfl.metadata = [m for m in (tfl.metadata or []) if m.name not in
                    (METADATA_KEY, METADATA_KEY.encode())]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(description).encode(), np.uint8)
    tfl.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(tfl.buffers) - 1
    tfl.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tfl))


def op_names(model_bytes: bytes) -> list[str]:
    """Names of the operators a TFLite flatbuffer uses (custom ops as `CUSTOM:<name>`)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    tfl = schema.Model.GetRootAs(model_bytes, 0)
    out = set()
    for i in range(tfl.OperatorCodesLength()):
        code = tfl.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            out.add(f"CUSTOM:{(code.CustomCode() or b'').decode()}")
        else:
            out.add(names.get(builtin, str(builtin)))
    return sorted(out)


def write_tflite(model, path, window: int, quantize: str, description: dict,
                 calibration: np.ndarray | None = None) -> Path:
    """Converts, quantizes, embeds the description and writes `path`. Returns `path`."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    flat = quantize_tflite(convert_float(model, window), model, quantize, calibration)
    flat = with_metadata(flat, description)
    custom = [name for name in op_names(flat) if name.startswith("CUSTOM")]
    if custom:
        from keras_dae.export.export_ready import ExportError

        raise ExportError(f"the TFLite model uses non-builtin ops {custom}")
    path = Path(path)
    path.write_bytes(flat)
    return path
