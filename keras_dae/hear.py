"""The HEAR benchmark's common API (https://hearbenchmark.com/hear-api.html), on any backend.

    from keras_dae import hear

    model = hear.load_model()                  # the shipped preset (or a preset/run directory)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)

`audio` is `(n_sounds, n_samples)` float32 in [-1, 1] at `model.sample_rate` (16 kHz).

- `get_timestamp_embeddings` returns `(n_sounds, n_timestamps, 256)` float32 embeddings and
  `(n_sounds, n_timestamps)` float32 timestamps in milliseconds: the centres of 1 s windows
  every `hop_ms` (default 50 ms), the first at 0 ms and the last at or before the end of the
  audio. Each window is centred on its timestamp; beyond the sound's ends it holds zeros.
- `get_scene_embeddings` returns `(n_sounds, 256)` float32: the mean of the embeddings of
  the sound's 1 s chunks every 0.5 s, the protocol the model was trained and evaluated with
  (shorter sounds are tiled to 1 s), i.e. `Tagger.embed`.
- The embedding is the model's `"embedding"` output: the four streams' 64-d embeddings,
  concatenated (pitch, timbre, Neuralogram, end-to-end), the input of the fused head.

HEAR's tools accept a model that is a `tf.Module` or a `torch.nn.Module`, and pass and expect
tensors of that framework. A Keras 3 model is neither on TensorFlow, and on JAX it is no
module of either, so `load_model` returns a small wrapper of the right kind:
a `tf.Module` on the TensorFlow backend, a `torch.nn.Module` on PyTorch, and on JAX a
`torch.nn.Module` when PyTorch is installed, else a `tf.Module` when TensorFlow is (the model
itself runs on JAX either way). The functions accept numpy arrays and TensorFlow, PyTorch or
JAX tensors, and return tensors of the wrapper's framework (`framework="numpy"` in
`load_model` gives numpy arrays). The wrapper holds no per-call state.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from keras_dae.inference import DEFAULT_MODEL, Tagger
from keras_dae.validation import InputError

__all__ = ["HOP_MS", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]

HOP_MS = 50.0
"""Milliseconds between timestamp embeddings (HEAR suggests 50 ms or less)."""

_FRAMEWORKS = ("tensorflow", "torch", "numpy")
_CLASSES: dict[str, type] = {}


def _default_framework() -> str:
    import keras

    backend = keras.backend.backend()
    if backend in ("tensorflow", "torch"):
        return backend
    for framework in ("torch", "tensorflow"):
        if importlib.util.find_spec(framework) is not None:
            return framework
    return "numpy"


def _wrapper_class(framework: str) -> type:
    if framework not in _CLASSES:
        if framework == "tensorflow":
            import tensorflow as tf

            base = tf.Module
        elif framework == "torch":
            import torch

            base = torch.nn.Module
        else:
            base = object

        class HearModel(base):
            """A keras-dae model as HEAR expects it: `sample_rate`, `scene_embedding_size`,
            `timestamp_embedding_size`; use it with this module's functions."""

            def __init__(self, tagger: Tagger, hop_ms: float):
                super().__init__()
                self.tagger = tagger
                self.framework = framework
                self.hop_ms = float(hop_ms)
                self.sample_rate = int(tagger.sample_rate)
                self.scene_embedding_size = int(tagger.embedding_size)
                self.timestamp_embedding_size = int(tagger.embedding_size)

            def __repr__(self) -> str:
                return (f"HearModel({self.framework}, sample_rate={self.sample_rate}, "
                        f"embedding size {self.scene_embedding_size}, hop {self.hop_ms} ms)")

        HearModel.__qualname__ = HearModel.__name__ = f"HearModel_{framework}"
        _CLASSES[framework] = HearModel
    return _CLASSES[framework]


def load_model(model_file_path: str = "", hop_ms: float = HOP_MS, batch_size: int = 32,
               framework: str | None = None):
    """The model for HEAR's functions.

    Args:
        model_file_path: a preset directory, a training run directory or a preset name;
            empty for the shipped preset (`diverse_sampled15`).
        hop_ms: milliseconds between timestamp embeddings (default 50).
        batch_size: 1 s windows per model call.
        framework: `"tensorflow"`, `"torch"` or `"numpy"`: what the model is (a `tf.Module`,
            a `torch.nn.Module`, a plain object) and what the functions return. Default: the
            Keras backend's (see the module docstring for JAX).
    """
    framework = framework or _default_framework()
    if framework not in _FRAMEWORKS:
        raise InputError(f"framework must be one of {_FRAMEWORKS}, got {framework!r}")
    if not hop_ms > 0:
        raise InputError(f"hop_ms must be positive, got {hop_ms!r}")
    tagger = Tagger(model_file_path or DEFAULT_MODEL, batch_size=batch_size)
    return _wrapper_class(framework)(tagger, hop_ms)


def _as_numpy(audio) -> np.ndarray:
    if hasattr(audio, "detach"):  # torch
        audio = audio.detach().cpu().numpy()
    elif hasattr(audio, "numpy") and not isinstance(audio, np.ndarray):  # tensorflow
        audio = audio.numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2:
        raise InputError(f"audio must be (n_sounds, n_samples), got shape {audio.shape}")
    if audio.shape[1] == 0:
        raise InputError("audio has no samples (n_samples is 0)")
    if not np.isfinite(audio).all():
        raise InputError("audio has NaN or infinite samples")
    return audio


def _to_framework(array: np.ndarray, model, like):
    if model.framework == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(array)
    if model.framework == "torch":
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(like.device) if isinstance(like, torch.Tensor) else tensor
    return array


def timestamps_ms(n_samples: int, sample_rate: int, hop_ms: float = HOP_MS) -> np.ndarray:
    """Window centres in ms: `0, hop, 2 hop, ...` up to the end of `n_samples` samples."""
    duration_ms = 1000.0 * n_samples / sample_rate
    count = int(np.floor(duration_ms / hop_ms + 1e-9)) + 1
    return np.arange(count, dtype=np.float64) * hop_ms


def get_timestamp_embeddings(audio, model):
    """`(n_sounds, n_timestamps, D)` float32 embeddings of 1 s windows centred on the
    timestamps, and the `(n_sounds, n_timestamps)` float32 timestamps in milliseconds."""
    sounds = _as_numpy(audio)
    tagger: Tagger = model.tagger
    n_sounds, n_samples = sounds.shape
    times = timestamps_ms(n_samples, model.sample_rate, model.hop_ms)
    # Each centre is rounded on its own (no accumulated rounding over long audio).
    centres = np.round(times * model.sample_rate / 1000.0).astype(np.int64)
    chunk = tagger.chunk_samples
    half = chunk // 2
    padded = np.zeros((n_sounds, n_samples + chunk), np.float32)
    padded[:, half:half + n_samples] = sounds
    windows = np.lib.stride_tricks.sliding_window_view(padded, chunk, axis=1)  # a view
    embeddings = np.empty((n_sounds, len(times), tagger.embedding_size), np.float32)
    for i in range(n_sounds):
        for begin in range(0, len(times), tagger.batch_size):
            rows = windows[i, centres[begin:begin + tagger.batch_size]]  # (b, chunk), a copy
            embeddings[i, begin:begin + len(rows)] = tagger.forward(rows)["embedding"]
    stamps = np.broadcast_to(times.astype(np.float32), (n_sounds, len(times))).copy()
    return _to_framework(embeddings, model, audio), _to_framework(stamps, model, audio)


def get_scene_embeddings(audio, model):
    """`(n_sounds, D)` float32: each sound's mean embedding over its 1 s chunks."""
    sounds = _as_numpy(audio)
    tagger: Tagger = model.tagger
    results = list(tagger.tag_many(list(sounds), sample_rate=model.sample_rate, top_k=0))
    for result in results:
        if not hasattr(result, "embedding"):
            raise InputError(result.reason)
    scene = np.stack([result.embedding for result in results]).astype(np.float32)
    return _to_framework(scene, model, audio)
