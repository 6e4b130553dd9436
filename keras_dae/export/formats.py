"""The names the export API and the command line share: formats, quantizations, and how each
format computes spectra by default. Nothing is imported here, so the command line reads them
before it loads Keras."""

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic-int8", "int8")
# How each format computes spectra (see export_ready): TFLite runs RFFT2D as a builtin and is
# smaller and faster with it; ONNX needs the matrix-product DFT.
DEFAULT_DFT_MODE = {"savedmodel": "fft", "tflite": "fft", "onnx": "matmul"}
