"""The front ends trace whole under `torch.compile`: their constants (filterbanks, DFT, DCT and
window matrices) are tensors made when the layer is created, so `call` converts no numpy array
and hits no graph break. `fullgraph=True` turns any break into an error; the "eager" backend
traces with TorchDynamo without generating code, so the test is quick. On JAX and TensorFlow,
the front-end tests compare compiled with eager calls (`layer_harness.py`). The Neuralogram is
not among them: it calls a Keras network, and Keras' own `Layer.__call__` breaks TorchDynamo's
full graph (it inspects the call's signature)."""

import keras
import numpy as np
import pytest

from keras_dae import layers

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="torch.compile is PyTorch's")

FRONT_ENDS = {
    "ConstantQTransform": lambda mode: layers.ConstantQTransform(to_db=True, top_db=60.0),
    "PitchTracker": lambda mode: layers.PitchTracker(frame_length=1024, hop_length=256,
                                                     dft_mode=mode),
    "LogMelSpectrogram": lambda mode: layers.LogMelSpectrogram(dft_mode=mode),
    "MFCC": lambda mode: layers.MFCC(n_mfcc=20, n_mels=64, dft_mode=mode),
    "SpectralDescriptors": lambda mode: layers.SpectralDescriptors(dft_mode=mode),
    "LearnedFilterbank": lambda mode: layers.LearnedFilterbank(),
}


# Front ends with a dft_mode, in both; the others have one way to compute.
CASES = [(name, mode) for name in sorted(FRONT_ENDS) for mode in ("fft", "matmul")
         if mode == "fft" or name not in ("ConstantQTransform", "LearnedFilterbank")]


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_front_end_traces_as_one_graph(name, mode, signals):
    import torch

    layer = FRONT_ENDS[name](mode)
    waveform = torch.as_tensor(np.stack([signals["speech"][:16000], signals["chirp"][:16000]]))
    eager = keras.ops.convert_to_numpy(layer(waveform))
    torch._dynamo.reset()
    traced = torch.compile(layer.frontend_call, backend="eager", fullgraph=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(traced(waveform)), eager,
                               rtol=1e-5, atol=1e-5)
