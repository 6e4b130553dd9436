"""The base class of keras-dae's front ends: waveform `(batch, samples)` in, features out."""

from __future__ import annotations

import keras
from keras import ops

from keras_dae.layers import signal
from keras_dae.validation import InputError


class AudioFrontend(keras.layers.Layer):
    """Base for layers mapping float waveform `(batch, samples)` to `(batch, frames, features)`.

    Subclasses implement `frontend_call(waveform)` on a float32 waveform, plus
    `num_frames(num_samples)` and `num_features`, from which the output shape is derived.

    Precision: handcrafted front ends compute in float32 whatever the global dtype policy
    (`keras.mixed_precision`), because squared magnitudes overflow float16 and bfloat16 loses
    the resolution that dB and pitch need. They do so by defaulting their own `dtype` to
    `"float32"`; the next layer of a mixed-precision model casts their output down as usual.
    Pass `dtype=` explicitly to override this. Every front end (the Neuralogram too, whose
    window network follows the policy) takes its waveform in float32 (`input_dtype`).

    Args:
        sample_rate: sampling rate of the input waveform in Hz (librosa's `sr`).
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, `trainable`).
    """

    compute_in_float32 = True

    def __init__(self, sample_rate: int = 16000, **kwargs):
        if self.compute_in_float32 and kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        signal.check_positive_int("sample_rate", sample_rate)
        self.sample_rate = int(sample_rate)
        self.input_spec = keras.layers.InputSpec(ndim=2)

    @property
    def input_dtype(self):
        """float32 whatever the policy: Keras would otherwise round the waveform to a mixed
        policy's bfloat16 (8 significant bits) before `call` sees it."""
        return "float32"

    def frontend_call(self, waveform):
        raise NotImplementedError

    def num_frames(self, num_samples: int | None) -> int | None:
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        raise NotImplementedError

    @property
    def framing(self) -> tuple[int, bool, str] | None:
        """`(frame_length, center, pad_mode)` of the frames, or None where every non-empty
        waveform has one (the constant-Q transform)."""
        return None

    @property
    def minimum_samples(self) -> int:
        """Fewest samples a waveform needs here; a shorter one of known length is refused."""
        return 1 if self.framing is None else signal.minimum_samples(*self.framing)

    def check_num_samples(self, num_samples: int | None) -> None:
        """Refuses a waveform too short to make a frame, naming the layer and the minimum
        (librosa refuses it too; a dynamic length is not checked)."""
        if num_samples is None or num_samples >= self.minimum_samples:
            return
        how = ""
        if self.framing is not None:
            frame_length, center, pad_mode = self.framing
            how = (f" (frames of {frame_length} samples, center={center}"
                   + (f", pad_mode={pad_mode!r}" if center else "") + ")")
        raise InputError(
            f"{type(self).__name__} '{self.name}' needs at least {self.minimum_samples} samples"
            f"{how}, got a waveform of {num_samples}: pad it to that length first."
        )

    def call(self, inputs):
        self.check_num_samples(inputs.shape[1])
        waveform = ops.cast(inputs, "float32")
        outputs = self.frontend_call(waveform)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise InputError(
                f"{type(self).__name__} expects waveform of shape (batch, samples), "
                f"got shape {tuple(input_shape)}."
            )
        self.check_num_samples(input_shape[1])
        return (input_shape[0], self.num_frames(input_shape[1]), self.num_features)

    def get_config(self):
        config = super().get_config()
        config.update({"sample_rate": self.sample_rate})
        return config
