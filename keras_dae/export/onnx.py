"""ONNX: tf2onnx on the model's TensorFlow function, accepted only once onnxruntime runs it.

tf2onnx (and Keras' `model.export(format="onnx")`, which calls it) can write a file without
raising that onnxruntime then refuses: a raw `RFFT` node when an FFT feeds `Real`/`Imag`, or
an op it has no handler for. So the ONNX model is built from the export-ready model with
`dft_mode="matmul"` (no FFT anywhere in the graph), and the file is loaded and run with
onnxruntime before it counts as written.

One op needs a handler that tf2onnx 1.17 lacks: TensorFlow's exact GELU
(`tf.nn.gelu(approximate=False)`, Keras' "gelu") computes `0.5 x erfc(-x / sqrt(2))`, and
ONNX has `Erf` but no `Erfc`. `_erfc_handler` writes it as `1 - Erf(x)` through tf2onnx's
`custom_op_handlers` hook; for GELU the two agree to float32 rounding.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from keras_dae import atomic
from keras_dae.export.artifact import INPUT_NAME, METADATA_KEY

OPSET = 17


def _erfc_handler(ctx, node, name, args):
    """tf2onnx handler: `Erfc(x)` as `1 - Erf(x)` (ONNX has no Erfc)."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]],
                                  name=utils.make_name(f"{node.name}_erfc"))


def write_onnx(model, path, window: int, description: dict, opset: int = OPSET,
               batch_size: int | None = None) -> Path:
    """Converts `model` (TensorFlow backend) to ONNX at `path` and loads it in onnxruntime.

    The graph input is `waveform` float32 `(batch, window)`; outputs carry the model's output
    names. `description` is stored as the model's `keras_dae` metadata property.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    from keras_dae.export.export_ready import ExportError

    signature = [tf.TensorSpec((batch_size, window), tf.float32, name=INPUT_NAME)]
    function = tf.function(functools.partial(model.__call__, training=False),
                           input_signature=signature)
    concrete = function.get_concrete_function()
    # The graph's own input, without the constants the function captures (the front ends'
    # kernels): tf2onnx's `from_function` would make those inputs of the ONNX graph too.
    # Freezing turns them into constants, and `tensors_to_rename` gives the ONNX inputs and
    # outputs the model's names.
    inputs = [t.name for t in concrete.inputs[: len(signature)]]
    outputs = [t.name for t in concrete.outputs]
    renames = {inputs[0]: INPUT_NAME}
    renames.update({t.name: key for key, t in concrete.structured_outputs.items()})
    with tf.device("/cpu:0"):
        frozen = tf2onnx.tf_loader.from_function(concrete, inputs, outputs)
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen, input_names=inputs, output_names=outputs, opset=opset,
            custom_op_handlers={"Erfc": (_erfc_handler, [])}, tensors_to_rename=renames,
        )
    names = sorted(o.name for o in proto.graph.output)
    if names != sorted(concrete.structured_outputs):
        raise ExportError(f"the ONNX graph's outputs {names} are not the model's "
                          f"{sorted(concrete.structured_outputs)}")
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(description)})
    onnx.checker.check_model(proto)
    path = atomic.write_bytes(path, proto.SerializeToString())
    _check_onnxruntime_runs(path, window, batch_size)
    return path


def _check_onnxruntime_runs(path: Path, window: int, batch_size: int | None = None) -> None:
    import onnxruntime

    from keras_dae.export.export_ready import ExportError

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {INPUT_NAME: np.zeros((batch_size or 2, window), np.float32)})
    except Exception as error:  # onnxruntime raises its own exception types
        raise ExportError(f"{path}: onnxruntime cannot run the exported model ({error})") from None
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        if value.shape[0] != 2:
            raise ExportError(f"{path}: output {meta.name!r} has shape {value.shape} for a "
                              "batch of 2")
