"""Raw waveform to one feature sequence per stream, built from the front-end layers."""

from __future__ import annotations

import copy

import keras
from keras import ops

from keras_dae import layers
from keras_dae.serialization import register
from keras_dae.validation import InputError

STREAMS = ("pitch", "timbre", "neuralogram", "end_to_end")


def default_stream_frontends(sample_rate: int = 16000) -> dict[str, list]:
    """The paper's four streams, as lists of front ends whose outputs are concatenated.

    - pitch: constant-Q spectrum in dB, 80 dB deep (84 bins from C1, 12 per octave) and YIN pitch
      (f0 and periodicity), both at a 256-sample hop (16 ms at 16 kHz);
    - timbre: 20 MFCCs (64 mel bands) and the spectral descriptors (centroid, bandwidth,
      roll-off interpolated inside its bin, flatness, contrast with `contrast_floor=1e-4`),
      at a 160-sample hop (10 ms);
    - neuralogram: a window-embedding network's 64-d embeddings of 25 ms windows every 10 ms;
    - end_to_end: a learned, Gabor-initialised filterbank of 64 filters on 25 ms windows.
    """
    sr = sample_rate
    return {
        "pitch": [
            # librosa's 80 dB range: 60 dB kept float32 ONNX closer to Keras (3.7e-5 against
            # 1.1e-4) but cost the pitch stream 0.038 eval mAP (docs/export.md).
            layers.ConstantQTransform(sample_rate=sr, hop_length=256, to_db=True, top_db=80.0),
            layers.PitchTracker(sample_rate=sr, frame_length=1024, hop_length=256),
        ],
        "timbre": [
            layers.MFCC(sample_rate=sr, n_mfcc=20, n_mels=64, n_fft=512, hop_length=160),
            # Contrast floored 80 dB below each frame's peak and roll-off interpolated inside its
            # bin, for float32 export parity; why and what it costs: docs/export.md, "Known
            # limits of export".
            layers.SpectralDescriptors(sample_rate=sr, n_fft=512, hop_length=160,
                                       contrast_floor=1e-4, interpolate_rolloff=True),
        ],
        "neuralogram": [layers.Neuralogram(sample_rate=sr, win_length=400, hop_length=160)],
        "end_to_end": [
            layers.LearnedFilterbank(sample_rate=sr, n_filters=64, win_length=400, hop_length=160)
        ],
    }


@register
class DiverseFeaturizer(keras.layers.Layer):
    """Waveform `(batch, samples)` to a dict of per-stream features `(batch, frames_s, dim_s)`.

    Each stream is a list of front-end layers run on the same waveform; their outputs, which
    must have the same frame rate, are concatenated along the feature axis.

    Args:
        streams: dict of stream name to a list of front-end layers (or their serialized
            configs); default `default_stream_frontends(sample_rate)`.
        sample_rate: rate of the input waveform in Hz; every front end must use it.
    """

    def __init__(self, streams: dict | None = None, sample_rate: int = 16000, **kwargs):
        super().__init__(**kwargs)
        if streams is None:
            streams = default_stream_frontends(sample_rate)
        if not streams:
            raise InputError("No streams: give at least one (a dict of stream name to a list "
                             "of front ends), or None for the default four.")
        self.sample_rate = int(sample_rate)
        self.streams = {}
        for name, frontends in streams.items():
            built = [
                keras.saving.deserialize_keras_object(copy.deepcopy(f))
                if isinstance(f, dict) else f
                for f in frontends
            ]
            if not built:
                raise InputError(f"Stream {name!r} has no front end.")
            for f in built:
                if getattr(f, "sample_rate", sample_rate) != sample_rate:
                    raise InputError(
                        f"Stream {name!r}: {type(f).__name__} has sample_rate={f.sample_rate}, "
                        f"but the featurizer's is {sample_rate}."
                    )
            frames = {type(f).__name__: f.num_frames(16000) for f in built}
            if len(set(frames.values())) > 1:
                raise InputError(
                    f"Stream {name!r}: front ends give different frame counts for 1 s of audio "
                    f"({frames}); give them the same hop_length."
                )
            self.streams[name] = built

    @property
    def stream_names(self) -> list[str]:
        return list(self.streams)

    @property
    def input_dtype(self):
        # The waveform reaches the front ends in float32 under any dtype policy (a mixed
        # policy would round it to bfloat16 first).
        return "float32"

    def feature_dims(self) -> dict[str, int]:
        return {name: sum(f.num_features for f in fs) for name, fs in self.streams.items()}

    def num_frames(self, num_samples: int) -> dict[str, int]:
        return {name: fs[0].num_frames(num_samples) for name, fs in self.streams.items()}

    def build(self, input_shape):
        for frontends in self.streams.values():
            for f in frontends:
                if not f.built:
                    f.build(input_shape)

    def stream_features(self, waveform, name: str):
        """One stream's features `(batch, frames, dim)`: its front ends' outputs, concatenated."""
        parts = [ops.cast(f(waveform), "float32") for f in self.streams[name]]
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)

    def fixed_streams(self) -> list[str]:
        """Streams whose front ends hold no weights (the handcrafted ones): their features
        depend on the waveform only, so they can be computed once and cached."""
        return [name for name, frontends in self.streams.items()
                if not any(f.weights for f in frontends)]

    def call(self, waveform):
        return {name: self.stream_features(waveform, name) for name in self.streams}

    def compute_output_shape(self, input_shape):
        frames = self.num_frames(input_shape[1]) if input_shape[1] is not None else None
        dims = self.feature_dims()
        return {
            name: (input_shape[0], None if frames is None else frames[name], dims[name])
            for name in self.streams
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sample_rate": self.sample_rate,
                "streams": {
                    name: [keras.saving.serialize_keras_object(f) for f in fs]
                    for name, fs in self.streams.items()
                },
            }
        )
        return config
