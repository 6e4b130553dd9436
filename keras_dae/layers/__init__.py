"""In-graph audio front ends: Keras layers from waveform `(batch, samples)` to features."""

from keras_dae.layers.audio_frontend import AudioFrontend
from keras_dae.layers.log_mel_spectrogram import LogMelSpectrogram
from keras_dae.layers.spectrogram_frontend import SpectrogramFrontend

__all__ = ["AudioFrontend", "LogMelSpectrogram", "SpectrogramFrontend"]
