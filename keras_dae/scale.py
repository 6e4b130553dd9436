"""Scale: mixed precision and data parallelism, with Keras' own machinery.

    from keras_dae import scale

    scale.set_mixed_precision("bfloat16")          # before building the model
    with scale.data_parallel(batch_size=256):      # JAX: keras.distribution.DataParallel
        model = build_diverse_classifier(200)      #      over every local device
        Trainer(model, train, val, run_dir,
                TrainConfig(mixed_precision="bfloat16", data_parallel=True,
                            batch_size=256)).run()

Mixed precision is Keras' `mixed_bfloat16` policy: the towers and the Neuralogram's window
network compute in bfloat16 with float32 variables, while the handcrafted front ends and the
learned filterbank (`AudioFrontend`), the towers' feature normalisation and masking, and the
five sigmoid heads compute in float32 whatever the policy (they set their own dtype), so dB,
pitch and the losses keep float32 resolution. bfloat16 has float32's exponent range, so no
loss scaling is needed. Only bfloat16 is offered: float16 overflows the squared magnitudes of
the spectra (see README, "Front ends").

Data parallelism: on JAX, `keras.distribution.DataParallel` over
`keras.distribution.list_devices()` replicates the variables on every device and splits each
batch along its first axis; `fit`, `evaluate` and `predict` do the rest. On TensorFlow the
same context uses `tf.distribute.MirroredStrategy` (variables and the optimizer must be
created inside it, which the context covers when the model is built inside it). Keras' PyTorch
backend has neither, so there it is refused. Every global batch must divide by the number of
devices: the context checks `batch_size`, the trainer drops an epoch's last, smaller batch,
and `keras_dae.clip_pipeline` pads every batch to `batch_size` rows.
"""

from __future__ import annotations

import contextlib

import keras

from keras_dae.validation import InputError

__all__ = [
    "PRECISIONS",
    "check_data_parallel",
    "data_parallel",
    "device_count",
    "dtype_policy_name",
    "local_devices",
    "model_precision",
    "precision",
    "set_mixed_precision",
    "with_precision",
]

# What `--mixed-precision` accepts -> Keras' dtype policy.
PRECISIONS = {None: "float32", "float32": "float32", "bfloat16": "mixed_bfloat16",
              "mixed_bfloat16": "mixed_bfloat16"}


def dtype_policy_name(mixed_precision: str | None) -> str:
    """Keras' policy for a `mixed_precision` setting: None/"float32" -> "float32",
    "bfloat16" -> "mixed_bfloat16"; anything else raises `ValueError`."""
    if mixed_precision not in PRECISIONS:
        raise InputError(
            f"mixed_precision must be None or 'bfloat16', got {mixed_precision!r} (float16 is "
            "not offered: the front ends' squared magnitudes overflow it)")
    return PRECISIONS[mixed_precision]


def set_mixed_precision(mixed_precision: str | None) -> str:
    """Sets Keras' global dtype policy for the models built afterwards; returns its name."""
    name = dtype_policy_name(mixed_precision)
    keras.config.set_dtype_policy(name)
    return name


@contextlib.contextmanager
def precision(mixed_precision: str | None):
    """`set_mixed_precision` for the block only: the previous global policy comes back."""
    previous = keras.config.dtype_policy()
    set_mixed_precision(mixed_precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def model_precision(model) -> str | None:
    """`"bfloat16"` if `model`'s towers compute in bfloat16, else None (float32)."""
    towers = getattr(getattr(model, "backbone", None), "towers", {})
    dtypes = {tower.compute_dtype for tower in towers.values()}
    return "bfloat16" if "bfloat16" in dtypes else None


def _without_policies(config):
    """A serialized config without its layers' dtype policies (the dicts Keras writes as
    `"dtype": {"class_name": "DTypePolicy", ...}`); plain dtype strings (inputs, tensors)
    are kept."""
    if isinstance(config, dict):
        return {key: _without_policies(value) for key, value in config.items()
                if not (key == "dtype" and isinstance(value, dict)
                        and "DTypePolicy" in str(value.get("class_name", "")))}
    if isinstance(config, list):
        return [_without_policies(value) for value in config]
    return config


def with_precision(model, mixed_precision: str | None):
    """A copy of a `DiverseClassifier` that computes in another precision, same weights.

    The copy is rebuilt from `model`'s config under the policy of `mixed_precision` (None:
    float32; "bfloat16": `mixed_bfloat16`), so every layer that sets its own dtype in code
    (front ends, normalisation, heads) keeps it, and the others follow the policy; the
    variables (float32 under either policy) are copied, and the class names come along with
    the config. Use it to run a float32 preset in
    bfloat16 (`Tagger(with_precision(zoo.load(name), "bfloat16"))`), or to save a model
    trained in mixed precision as a float32 preset (what `finish_run` does).
    """
    from keras_dae.models.derived import derived_model

    with precision(mixed_precision):
        return derived_model(model, _without_policies)


def local_devices() -> list[str]:
    """The devices data parallelism would use: Keras' `list_devices()` on JAX (GPUs or TPUs
    when present, else CPUs), the logical GPUs (else CPUs) on TensorFlow."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [d.name for d in devices]
    if backend == "jax":
        return list(keras.distribution.list_devices())
    return []


def check_data_parallel(batch_size: int | None = None) -> list[str]:
    """The devices `data_parallel` would use; raises `ValueError` on the PyTorch backend and
    for a `batch_size` that does not divide by their number."""
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        raise InputError(
            f"data parallelism needs the JAX or TensorFlow backend; Keras' {backend} backend "
            "has no multi-device fit (run with --backend jax, or KERAS_BACKEND=jax)")
    devices = local_devices()
    if batch_size is not None and int(batch_size) % len(devices):
        raise InputError(
            f"batch size {batch_size} does not divide by the {len(devices)} devices "
            f"({', '.join(devices)}); use a multiple of {len(devices)}")
    return devices


@contextlib.contextmanager
def data_parallel(batch_size: int | None = None):
    """Runs the block with data parallelism over every local device (see module docstring).

    Build the model inside the block (so that its variables are replicated), and train in
    it. `batch_size` (the global batch) must divide by the number of devices. Yields the
    list of devices. Raises `ValueError` on the PyTorch backend and for a batch size that
    does not divide.
    """
    devices = check_data_parallel(batch_size)
    if keras.backend.backend() == "jax":
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield devices
        finally:
            keras.distribution.set_distribution(previous)
    else:
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(devices=devices).scope():
            yield devices


def device_count() -> int | None:
    """Devices the current data-parallel context splits batches over; None outside one."""
    backend = keras.backend.backend()
    if backend == "jax":
        distribution = keras.distribution.distribution()
        return None if distribution is None else int(distribution.device_mesh.devices.size)
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.distribute.has_strategy():
            return None
        return int(tf.distribute.get_strategy().num_replicas_in_sync)
    return None
