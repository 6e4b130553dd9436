"""Neuralogram: a neural network's embeddings of successive short windows, stacked over time."""

from __future__ import annotations

import copy

import keras
from keras import ops

from keras_dae.layers import signal
from keras_dae.layers.audio_frontend import AudioFrontend
from keras_dae.serialization import register
from keras_dae.validation import InputError


def default_embedding_network(
    win_length: int = 400, embedding_dim: int = 64, hidden_dim: int = 256, n_filters: int = 64
) -> keras.Model:
    """A small window-embedding network: learned filterbank energies, then a two-layer MLP.

    Input `(batch, win_length)` waveform windows; output `(batch, embedding_dim)`. It is a
    placeholder to be trained (or replaced by a trained network) before its Neuralogram
    means much: the Neuralogram is defined by the network it embeds with.
    """
    from keras_dae.layers.learned_filterbank import LearnedFilterbank

    inputs = keras.Input(shape=(win_length,), name="window")
    # One analysis frame per window: hop = window, no centring.
    x = LearnedFilterbank(
        n_filters=n_filters, win_length=win_length, hop_length=win_length, center=False
    )(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.Dense(hidden_dim, activation="gelu")(x)
    outputs = keras.layers.Dense(embedding_dim)(x)
    return keras.Model(inputs, outputs, name="window_embedding")


@register
class Neuralogram(AudioFrontend):
    """Stacks a network's embeddings of short windows over time (Verma et al., arXiv 1904.05073).

    "Neural" + "spectrogram": the waveform is cut into windows of `win_length` samples every
    `hop_length` samples, each window goes through `embedding_network`, and the embeddings
    form a dense time-feature representation `(batch, frames, embedding_dim)`.

    The embedding network is any Keras model mapping `(batch, win_length)` to
    `(batch, embedding_dim)`, e.g. the front part of a trained end-to-end tower. It is
    serialized with the layer (`get_config`), and its weights are saved with the model.
    To use a trained network as a fixed feature extractor, freeze it:
    `Neuralogram(net, trainable=False)` or `layer.embedding_network.trainable = False`.

    Input `(batch, samples)`; output `(batch, frames, embedding_dim)` with
    `frames = 1 + samples // hop_length` when `center=True`.

    Args:
        embedding_network: a `keras.Model` (or layer) from windows to embeddings; defaults to
            `default_embedding_network(win_length)`.
        win_length: window length in samples (default: the network's input length, else 400).
        hop_length: samples between windows (default 160 = 10 ms at 16 kHz).
        center: pad `win_length // 2` zeros on both sides (librosa's convention).
    """

    compute_in_float32 = False

    def __init__(
        self,
        embedding_network: keras.Model | None = None,
        win_length: int | None = None,
        hop_length: int = 160,
        center: bool = True,
        sample_rate: int = 16000,
        **kwargs,
    ):
        super().__init__(sample_rate=sample_rate, **kwargs)
        if isinstance(embedding_network, dict):
            # Deserializing consumes the dict; leave the caller's config intact.
            embedding_network = keras.saving.deserialize_keras_object(
                copy.deepcopy(embedding_network)
            )
        if win_length is None and embedding_network is not None:
            win_length = _input_length(embedding_network)
        win_length = 400 if win_length is None else win_length
        signal.check_positive_int("win_length", win_length)
        signal.check_positive_int("hop_length", hop_length)
        if embedding_network is None:
            embedding_network = default_embedding_network(win_length)
        network_length = _input_length(embedding_network)
        if network_length is not None and network_length != win_length:
            raise InputError(
                f"`win_length` ({win_length}) must equal the embedding network's input length "
                f"({network_length})."
            )
        self.embedding_network = embedding_network
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.center = bool(center)

    def build(self, input_shape):
        if not self.embedding_network.built:
            self.embedding_network.build((None, self.win_length))

    @property
    def num_features(self) -> int:
        shape = self.embedding_network.compute_output_shape((None, self.win_length))
        if len(shape) != 2:
            raise InputError(
                "The embedding network must map (batch, win_length) to (batch, embedding_dim), "
                f"but it outputs shape {shape}."
            )
        return shape[-1]

    @property
    def framing(self):
        return (self.win_length, self.center, "constant")

    def num_frames(self, num_samples):
        return signal.num_frames(num_samples, self.win_length, self.hop_length, self.center)

    def frontend_call(self, waveform):
        x = signal.pad_center(waveform, self.win_length, self.center)
        frames = signal.frame(x, self.win_length, self.hop_length)
        batch, n_frames = ops.shape(frames)[0], ops.shape(frames)[1]
        embeddings = self.embedding_network(ops.reshape(frames, (-1, self.win_length)))
        return ops.reshape(embeddings, (batch, n_frames, self.num_features))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_network": keras.saving.serialize_keras_object(self.embedding_network),
                "win_length": self.win_length,
                "hop_length": self.hop_length,
                "center": self.center,
            }
        )
        return config


def _input_length(network) -> int | None:
    """The window length a network expects, when it declares one."""
    inputs = getattr(network, "inputs", None)
    if inputs:
        shape = inputs[0].shape
        if len(shape) != 2:
            raise InputError(
                f"The embedding network must take (batch, win_length) windows, got input shape "
                f"{tuple(shape)}."
            )
        return shape[1]
    return None
