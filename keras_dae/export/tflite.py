"""TFLite (LiteRT): TensorFlow's converter with builtin ops only, then selective quantization.

The float model comes from `tf.lite.TFLiteConverter.from_saved_model` with
`supported_ops=[TFLITE_BUILTINS]`: no Flex (SELECT_TF_OPS) kernels, so any LiteRT runtime
runs it. Its spectra and YIN's autocorrelation use `keras.ops.rfft` (the RFFT2D builtin) by
default: no DFT matrices in the file (1.5 MB of them in float32). The input's batch is fixed
(1 by default), so the converter folds the shape arithmetic a dynamic batch leaves behind.

Quantization is done on that float file by Google's AI Edge Quantizer, whose recipes choose
per op (by the op's output tensor name) what is quantized and how. TensorFlow's converter
quantizes all or nothing in its float16 and dynamic-range modes, and that breaks the front
ends: every float constant becomes float16 (YIN's and the descriptors' 1.2e-38 floors and
the 1e-10 dB floors flush to zero, giving NaN on silent frames), and dynamic-range int8
quantizes the power spectra fed to the mel, CQT and YIN products (80 dB of range in 8 bits;
measured on the trained 15-class model: probabilities off by up to 0.5, top-5 labels kept
for 73% of clips). The recipes here (`float_parts` says what stays float, and why):

- `float16`: weights stored as float16 and expanded to float32 once at load; all arithmetic
  stays float32. The CQT's kernels (and YIN's, in a matmul-DFT file) stay float32 (as
  float16 they moved the pitch stream's probabilities by 0.08 and 0.01).
- `dynamic-int8`: the Transformer towers' dense layers (not their input projections) get
  int8 weights and int8 arithmetic on activations quantized per row at run time. Front
  ends, normalization, attention products, softmax, layer norms, GELU and heads compute in
  float32; front-end kernels other than the CQT's are stored as float16.
- `int8`: as `dynamic-int8`, and the feed-forward layers (nine tenths of the towers' dense
  weights) run fully in int8 on activation ranges calibrated on representative audio, the
  64 -> 1024 expansions with one weight scale per tensor (per-channel scales would add
  ~0.6 MB). Calibrated ranges in the attention projections cost up to 0.4 in probability, so
  those keep run-time activation quantization.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np

from keras_dae import atomic
from keras_dae.export.artifact import INPUT_NAME, METADATA_KEY
from keras_dae.export.formats import QUANTIZATIONS
from keras_dae.export.savedmodel import SIGNATURE, write_savedmodel
from keras_dae.validation import InputError


def convert_float(model, window: int, batch_size: int | None = 1) -> bytes:
    """`model` (TensorFlow backend) as a float32 TFLite flatbuffer, builtin ops only, whose
    input is `(batch_size, window)` (any batch when `batch_size` is None)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        write_savedmodel(model, tmp, window, batch_size)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return bytes(converter.convert())


def layer_scope(name: str) -> str:
    """Regex matching TFLite tensor names inside the layer `name` (the converter names tensors
    after the Keras name scopes, which may carry a `_1` suffix)."""
    return rf"(^|[/;]){re.escape(name)}(_\d+)?/"


def float_parts(quantize: str) -> list[str]:
    """What keeps float32 arithmetic in a TFLite file of this quantization, and why."""
    if quantize == "none":
        return ["everything"]
    if quantize == "float16":
        return ["all arithmetic: float16 is only how weights are stored (expanded to float32 "
                "at load); the CQT kernels (and YIN's DFT matrices, where the file has them) "
                "are stored as float32 even so (as float16 they moved the pitch stream's "
                "probabilities by up to 0.08 and 0.01)"]
    parts = [
        "front ends (CQT, YIN pitch, MFCC, spectral descriptors, learned filterbank, "
        "Neuralogram): power spectra span 80 dB and pitch needs sub-sample lags; their "
        "constant kernels are stored as float16, except the CQT's (float32)",
        "tower input normalization and projection: their inputs mix Hz, dB and 0-1 features "
        "in one tensor; int8 there moved probabilities by up to 0.1",
        "attention score products and softmax, layer norms, GELU, pooling",
        "output heads and sigmoids: int8 probabilities would tie low scores and reorder "
        "the top labels",
    ]
    if quantize == "int8":
        parts.append("the attention projections compute in int8 but quantize their "
                     "activations per row at run time: with calibrated ranges they moved "
                     "probabilities by up to 0.4")
    return parts


def _front_end_regexes(model) -> tuple[str, str]:
    """Regexes of the front-end ops whose kernels are stored as float16 in (int8 files,
    float16 files): the CQT's never are, YIN's only in int8 files (measured on the trained
    model: float16 CQT kernels moved the pitch stream's probabilities by 0.08, YIN's by 0.01,
    the others' by at most 0.003)."""
    from keras_dae.layers import ConstantQTransform, PitchTracker

    frontends = [f for fs in model.featurizer.streams.values() for f in fs]
    cqt = [f.name for f in frontends if isinstance(f, ConstantQTransform)]
    yin = [f.name for f in frontends if isinstance(f, PitchTracker)]

    def all_but(names):
        scope = layer_scope(model.featurizer.name)
        if not names:
            return scope
        return scope + "(?!" + "|".join(re.escape(n) + r"(_\d+)?/" for n in names) + ")"

    return all_but(cqt), all_but(cqt + yin)


def _recipe(quantizer, model, quantize: str) -> None:
    """The AI Edge Quantizer recipe (where several rules match an op, the last one wins)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    op = qtyping.TFLOperationName
    fp16 = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )

    def store_float16(regex):
        quantizer.update_quantization_recipe(regex=regex, operation_name=op.ALL_SUPPORTED,
                                             op_config=fp16,
                                             algorithm_key=AlgorithmName.FLOAT_CASTING)

    int8_front_end, float16_front_end = _front_end_regexes(model)
    backbone = layer_scope(model.backbone.name)
    if quantize == "float16":
        store_float16(float16_front_end)
        store_float16(backbone)
        for head in (model.fusion_head, *model.stream_heads.values()):
            store_float16(layer_scope(head.name))
        return
    if quantize not in ("dynamic-int8", "int8"):
        raise InputError(f"unknown quantization {quantize!r}")
    store_float16(int8_front_end)
    # Every dense layer of the towers except their input projections.
    towers = r"^(?!.*/projection(_\d+)?/).*" + backbone
    quantizer.add_dynamic_config(regex=towers, operation_name=op.FULLY_CONNECTED, num_bits=8)
    if quantize == "int8":
        # One weight scale per tensor for the 64 -> 1024 expansions: per-channel scales (and
        # their int64 zero points) for 1,024 channels x 24 blocks cost ~0.6 MB of the file.
        granularity = {"intermediate": qtyping.QuantGranularity.TENSORWISE,
                       "output": qtyping.QuantGranularity.CHANNELWISE}
        for part, weights in granularity.items():
            quantizer.add_static_config(
                regex=backbone + rf".*/feedforward_{part}_dense", weight_granularity=weights,
                operation_name=op.FULLY_CONNECTED, activation_num_bits=8, weight_num_bits=8)


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
            raise InputError("int8 quantization needs representative audio to calibrate on "
                             "(calibration=...)")
        windows = np.asarray(calibration, np.float32)
        batch = _input_batch(float_model)
        if batch > 1:  # a fixed batch: windows in groups of it (the last group cycled)
            windows = np.resize(windows, (-(-len(windows) // batch) * batch, windows.shape[1]))
        windows = windows.reshape(-1, max(batch, 1), windows.shape[1])
        data = {SIGNATURE: [{INPUT_NAME: w} for w in windows]}
        result = quantizer.calibrate(data, num_threads=1)
    return bytes(quantizer.quantize(result, enable_progress_report=False).quantized_model)


def _input_batch(model_bytes: bytes) -> int:
    """The fixed batch of the signature's input, or -1 when any batch is accepted."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model_bytes).get_signature_runner(SIGNATURE)
    (spec,) = runner.get_input_details().values()
    return int(spec["shape_signature"][0])


def with_metadata(model_bytes: bytes, description: dict) -> bytes:
    """The flatbuffer with `description` as JSON in its metadata entry `keras_dae`, every
    buffer inline (readable by LiteRT runtimes that predate external buffers), and the names
    of inner tensors dropped (~0.3 MB of Keras name scopes; the signature and the input and
    output tensors keep theirs)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    tfl = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    for subgraph in tfl.subgraphs:
        keep = set(subgraph.inputs) | set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = None
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


def output_positions(model_bytes: bytes) -> dict[str, int]:
    """Output name -> its position among the interpreter's outputs (`output(at:)` on iOS,
    `getOutputTensor(i)` on Android), from the signature."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    order = [d["index"] for d in interpreter.get_output_details()]
    runner = interpreter.get_signature_runner(SIGNATURE)
    return {name: order.index(d["index"]) for name, d in runner.get_output_details().items()}


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
                 calibration: np.ndarray | None = None, batch_size: int | None = 1) -> Path:
    """Converts, quantizes, embeds the description and writes `path`. Returns `path`."""
    if quantize not in QUANTIZATIONS:
        raise InputError(f"`quantize` must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    flat = quantize_tflite(convert_float(model, window, batch_size), model, quantize,
                           calibration)
    # For runtimes without signature runners: which of the interpreter's outputs is which.
    description["output_index"] = output_positions(flat)
    flat = with_metadata(flat, description)
    custom = [name for name in op_names(flat) if name.startswith("CUSTOM")]
    if custom:
        from keras_dae.export.export_ready import ExportError

        raise ExportError(f"the TFLite model uses non-builtin ops {custom}")
    return atomic.write_bytes(path, flat)
