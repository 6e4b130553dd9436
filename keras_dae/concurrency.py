"""Predicting with one model from several threads.

Keras' `model.predict` is not thread-safe on the JAX backend: while one call runs, its
trainer moves the model's variables out of the model (their values are None until it ends),
so a second call from another thread finds uninitialised variables and fails. On TensorFlow
and PyTorch concurrent calls give the same results as sequential ones (tested).

    from keras_dae.concurrency import predict
    outputs = predict(model, waveforms, batch_size=64)   # safe from any thread

`predict` serialises calls on one model under JAX (a lock per model) and lets them run
concurrently elsewhere. Every keras-dae function that scores audio goes through it.
"""

from __future__ import annotations

import threading
import weakref

import keras

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


def predict(model, x, batch_size: int = 64, **kwargs):
    """`model.predict(x, batch_size=..., verbose=0)`, safe to call from several threads."""
    kwargs.setdefault("verbose", 0)
    if keras.backend.backend() == "jax":
        with model_lock(model):
            return model.predict(x, batch_size=batch_size, **kwargs)
    return model.predict(x, batch_size=batch_size, **kwargs)
