"""Predicting with one model from several threads.

Keras' `model.predict` is not thread-safe on the JAX backend: while one call runs, its
trainer moves the model's variables out of the model (their values are None until it ends),
so a second call from another thread finds uninitialised variables and fails. On TensorFlow
and PyTorch concurrent calls give the same results as sequential ones (tested).

    from keras_dae.concurrency import predict
    outputs = predict(model, waveforms, batch_size=64)   # safe from any thread

`predict` serialises calls on one model under JAX (a lock per model) and lets them run
concurrently elsewhere. It scores batch by batch with `predict_on_batch`: `model.predict`
builds a new data pipeline per call, whose memory TensorFlow keeps growing over the
hundreds of calls that scoring an hour-long file makes. Every keras-dae function that
scores audio goes through it.
"""

from __future__ import annotations

import threading
import weakref

import keras
import numpy as np

from keras_dae.validation import InputError

__all__ = ["model_lock", "predict"]

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The lock of `model` (one per model object, created on first use)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def predict(model, x, batch_size: int = 64):
    """What `model.predict(x, batch_size=batch_size)` returns (numpy, a dict for a model with
    named outputs), safe to call from several threads."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    x = np.asarray(x)
    if keras.backend.backend() == "jax":
        with model_lock(model):
            return _batched(model, x, batch_size)
    return _batched(model, x, batch_size)


def _batched(model, x: np.ndarray, batch_size: int):
    parts = [model.predict_on_batch(x[start:start + batch_size])
             for start in range(0, len(x), batch_size)]
    if not parts:
        raise InputError("predict needs at least one example, got an empty batch")
    if isinstance(parts[0], dict):
        return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
    return np.concatenate([np.asarray(p) for p in parts])
