"""One configured instance of every front end, for comparisons across backends.

`build_case(name)` returns `(layer, waveform)` with deterministic weights, so the same case
built on TensorFlow, JAX and PyTorch must give the same numbers.
"""

from __future__ import annotations

import numpy as np
from conftest import harmonic_tone, load_recording


def _speech_and_tone() -> np.ndarray:
    return np.stack([load_recording("speech_front_center.wav")[:16000], harmonic_tone()])


def _seeded_weights(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [(0.1 * rng.standard_normal(w.shape)).astype(w.dtype) for w in layer.get_weights()]
    )


def build_case(name: str):
    from keras_dae import layers

    waveform = _speech_and_tone()
    if name == "log_mel":
        layer = layers.LogMelSpectrogram(n_mels=64)
    elif name == "cqt":
        # Magnitude: dB would turn rounding noise 60-80 dB below the peak (0.03 dB, as
        # between XLA and oneDNN on one backend) into a large share of "1e-4 relative".
        layer = layers.ConstantQTransform()
    elif name == "pitch":
        # Tones keep every frame's period decision unambiguous across backends.
        waveform = np.stack([harmonic_tone(f0=220.0), harmonic_tone(f0=330.0)])
        layer = layers.PitchTracker()
    elif name == "mfcc":
        layer = layers.MFCC(n_mfcc=20)
    elif name == "descriptors":
        layer = layers.SpectralDescriptors()
    elif name == "learned_filterbank":
        layer = layers.LearnedFilterbank(n_filters=32)
    elif name == "neuralogram":
        layer = layers.Neuralogram(hop_length=320)
        layer.build(waveform.shape)
        _seeded_weights(layer)
    else:
        raise KeyError(name)
    return layer, waveform


CASES = ["log_mel", "cqt", "pitch", "mfcc", "descriptors", "learned_filterbank", "neuralogram"]
