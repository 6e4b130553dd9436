"""In-graph audio front ends: Keras layers from waveform `(batch, samples)` to features."""

from keras_dae.layers.audio_frontend import AudioFrontend
from keras_dae.layers.constant_q_transform import ConstantQTransform
from keras_dae.layers.learned_filterbank import LearnedFilterbank
from keras_dae.layers.log_mel_spectrogram import LogMelSpectrogram
from keras_dae.layers.mfcc import MFCC
from keras_dae.layers.neuralogram import Neuralogram
from keras_dae.layers.pitch_tracker import PitchTracker
from keras_dae.layers.spectral_descriptors import SpectralDescriptors
from keras_dae.layers.spectrogram_frontend import SpectrogramFrontend

__all__ = [
    "AudioFrontend",
    "ConstantQTransform",
    "LearnedFilterbank",
    "LogMelSpectrogram",
    "MFCC",
    "Neuralogram",
    "PitchTracker",
    "SpectralDescriptors",
    "SpectrogramFrontend",
]
