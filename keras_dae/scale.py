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

Several processes (hosts), JAX only: each process calls `initialize_multiprocess` before
anything else touches JAX, then `data_parallel` spans every process's devices
(`keras.distribution.list_devices()` is global once JAX's distributed runtime runs) and each
process feeds its own rows of every global batch (`DataParallel(auto_shard_dataset=False)`:
the loaders slice the batches themselves, `keras_dae.data.shard_loader`). Process 0 is the
chief (`is_chief`): it alone writes files; `barrier` and `run_on_chief` keep the others in
step, with timeouts. A process that dies, or fails, ends the others with one line on stderr
(`error: ...`) and exit status 3 instead of leaving them waiting: see `initialize_multiprocess`.
docs/multi-host.md says how to launch such a run.

    from keras_dae import scale
    scale.initialize_multiprocess(coordinator="10.0.0.1:1234", num_processes=2, process_id=0)
    with scale.data_parallel(batch_size=256):      # over both processes' devices
        ...
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time

import keras

from keras_dae.validation import InputError

__all__ = [
    "EXIT_PEER_LOST",
    "PRECISIONS",
    "ProcessGroupError",
    "barrier",
    "check_data_parallel",
    "data_parallel",
    "device_count",
    "dtype_policy_name",
    "initialize_multiprocess",
    "is_chief",
    "local_devices",
    "model_precision",
    "multiprocess_requested",
    "precision",
    "process_count",
    "process_index",
    "report_failure",
    "run_on_chief",
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
    when present, else CPUs; in a multi-process run, every process's), the logical GPUs (else
    CPUs) on TensorFlow."""
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
    for a `batch_size` that does not divide by their number (or, in a multi-process run, by
    the number of processes)."""
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
    processes = process_count()
    if batch_size is not None and int(batch_size) % processes:
        raise InputError(f"batch size {batch_size} does not divide by the {processes} "
                         f"processes; use a multiple of {processes}")
    return devices


@contextlib.contextmanager
def data_parallel(batch_size: int | None = None):
    """Runs the block with data parallelism over every device (see module docstring): the
    local ones, or in a multi-process run (`initialize_multiprocess`) every process's.

    Build the model inside the block (so that its variables are replicated), and train in
    it. `batch_size` (the global batch) must divide by the number of devices. Yields the
    list of devices. Raises `ValueError` on the PyTorch backend and for a batch size that
    does not divide.
    """
    devices = check_data_parallel(batch_size)
    if keras.backend.backend() == "jax":
        previous = keras.distribution.distribution()
        # Several processes: each feeds its own rows of every global batch (the loaders
        # slice them), so Keras must not shard the data again.
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=process_count() == 1))
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


# -- several processes (hosts) -----------------------------------------------------------

#: Exit status of a process that stops because another process of its run stopped or failed.
EXIT_PEER_LOST = 3

# Where `keras.distribution.initialize` (Keras) and `jax.distributed.initialize` (JAX) read
# a multi-process run's settings when they are not given.
ENV_JOB_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
ENV_JAX_COORDINATOR = "JAX_COORDINATOR_ADDRESS"

_KEY = "keras_dae"  # the prefix of this module's keys in JAX's coordination service


class ProcessGroupError(InputError):
    """A multi-process run cannot start or go on (bad settings, a process that never came,
    a barrier that timed out, a refusal of process 0's); the message says what to do."""


class _Group:
    """This process's place in a multi-process run, and the watchdog that ends it when
    another process stops."""

    def __init__(self, process_id: int, num_processes: int, timeout: float,
                 heartbeat_timeout: float):
        self.process_id, self.num_processes = process_id, num_processes
        self.timeout, self.heartbeat_timeout = float(timeout), float(heartbeat_timeout)
        self.sequence = 0  # barriers and chief results so far (the same on every process)
        self.failed_status: int | None = None  # set by `report_failure`
        self.finished = False

    @property
    def client(self):
        from jax._src import distributed

        return distributed.global_state.client

    def next_key(self, kind: str) -> str:
        self.sequence += 1
        return f"{_KEY}/{kind}/{self.sequence}"

    def watch(self, interval: float = 0.5) -> None:
        """Beats (a counter under `keras_dae/alive/<id>`) and watches the others' beats and
        failures, until this process ends; `_stop` when one stops or fails."""
        me, others = self.process_id, range(self.num_processes)
        heard = {p: (None, time.monotonic()) for p in others if p != me}
        beat = 0
        while not self.finished:
            beat += 1
            try:
                self.client.key_value_set(f"{_KEY}/alive/{me}", str(beat), allow_overwrite=True)
                beats = dict(self.client.key_value_dir_get(f"{_KEY}/alive/"))
                done = {key.rsplit("/", 1)[-1] for key, _ in
                        self.client.key_value_dir_get(f"{_KEY}/done/")}
                failures = self.client.key_value_dir_get(f"{_KEY}/failed/")
            except Exception:  # the coordination service (process 0) is gone
                if self.finished or me == 0:
                    return
                self._stop(f"process 0 of {self.num_processes} (the coordinator) stopped: "
                           "it cannot be reached")
                return
            for key, message in failures:
                failed = int(key.rsplit("/", 1)[-1])
                if failed != me:
                    self._stop(f"process {failed} of {self.num_processes} failed: {message}")
            now = time.monotonic()
            for process, (last, since) in list(heard.items()):
                value = beats.get(f"{_KEY}/alive/{process}")
                if str(process) in done:
                    heard.pop(process)
                elif value != last:
                    heard[process] = (value, now)
                elif now - since > self.heartbeat_timeout:
                    self._stop(f"process {process} of {self.num_processes} stopped (no sign "
                               f"of it for {self.heartbeat_timeout:g} s: killed, crashed or "
                               "cut off)")
            time.sleep(interval)

    def _stop(self, why: str) -> None:
        """Ends this process at once (other threads may be blocked in a collective that
        will never complete): one line on stderr, exit status `EXIT_PEER_LOST`."""
        if self.failed_status is None:
            print(f"error: {why}; process {self.process_id} stops too. Start every process "
                  "again with --resume to continue from the last checkpoint", file=sys.stderr,
                  flush=True)
        sys.stdout.flush()
        os._exit(EXIT_PEER_LOST if self.failed_status is None else self.failed_status)

    def at_exit(self) -> None:
        """Marks a normal end (the others stop watching this process); after a failure, ends
        at once instead of waiting in JAX's shutdown barrier for processes that may be
        blocked in a collective."""
        if self.failed_status is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.failed_status)
        self.finished = True
        try:
            self.client.key_value_set(f"{_KEY}/done/{self.process_id}", "1",
                                      allow_overwrite=True)
        except Exception:  # the coordinator already ended
            pass


_GROUP: _Group | None = None


def multiprocess_requested(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, force: bool = False) -> bool:
    """Whether this process is to join a multi-process run: `force` (then JAX's cluster
    detection, e.g. SLURM or Open MPI, supplies what is missing), one of the settings given,
    or one of Keras' `KERAS_DISTRIBUTION_*` variables or JAX's `JAX_COORDINATOR_ADDRESS` set."""
    given = any(v is not None for v in (coordinator, num_processes, process_id))
    variables = (ENV_JOB_ADDRESSES, ENV_NUM_PROCESSES, ENV_PROCESS_ID, ENV_JAX_COORDINATOR)
    return bool(force or given or any(os.environ.get(name) for name in variables))


def _environment_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ProcessGroupError(f"{name}={value!r} is not an integer") from None


def _settings(coordinator, num_processes, process_id):
    """The settings given, completed from Keras' environment variables (as
    `keras.distribution.initialize` reads them); None where neither says."""
    addresses = [a.strip() for a in os.environ.get(ENV_JOB_ADDRESSES, "").split(",") if a.strip()]
    if coordinator is None and addresses:
        coordinator = addresses[0]  # one address (the coordinator's), or every process's
    if num_processes is None:
        num_processes = _environment_int(ENV_NUM_PROCESSES)
    if num_processes is None and len(addresses) > 1:
        num_processes = len(addresses)
    if process_id is None:
        process_id = _environment_int(ENV_PROCESS_ID)
    if len(addresses) > 1 and num_processes is not None and num_processes != len(addresses):
        raise ProcessGroupError(f"{ENV_JOB_ADDRESSES} lists {len(addresses)} processes but the "
                                f"number of processes is {num_processes}")
    if num_processes is not None and num_processes < 1:
        raise ProcessGroupError(f"the number of processes must be at least 1, got "
                                f"{num_processes}")
    if process_id is not None and num_processes is not None and not (
            0 <= process_id < num_processes):
        raise ProcessGroupError(f"process id {process_id} is not in 0..{num_processes - 1} "
                                f"(the ids of {num_processes} processes)")
    return coordinator, num_processes, process_id


def initialize_multiprocess(coordinator: str | None = None, num_processes: int | None = None,
                            process_id: int | None = None, timeout: float = 300.0,
                            heartbeat_timeout: float = 60.0) -> tuple[int, int]:
    """Joins this process to a multi-process (multi-host) JAX run: returns
    `(process_id, num_processes)`.

    Call it in every process, before anything else uses JAX. `coordinator` ("host:port",
    process 0's address, a port free there and reachable from every host), `num_processes`
    and `process_id` (0..N-1, distinct) default to Keras' variables
    (`KERAS_DISTRIBUTION_JOB_ADDRESSES`: the coordinator's address, or every process's,
    comma-separated, the coordinator's first; `KERAS_DISTRIBUTION_NUM_PROCESSES`;
    `KERAS_DISTRIBUTION_PROCESS_ID`), then to JAX's (`JAX_COORDINATOR_ADDRESS`, and its
    detection of SLURM, Open MPI and Kubernetes). Calling it again with the same settings
    does nothing.

    `timeout` (seconds): how long the processes wait for each other to start, and at every
    `barrier`. `heartbeat_timeout`: a process not heard of for that long is taken for dead,
    and each other process prints `error: process I of N stopped ...` and exits with status
    `EXIT_PEER_LOST`; so does every process when one fails (`report_failure`). JAX's own
    heartbeat, which aborts the process, is given twice as long plus 10 s.

    Raises `ProcessGroupError` off the JAX backend, for inconsistent settings, and when the
    processes do not all come within `timeout`.
    """
    global _GROUP
    if keras.backend.backend() != "jax":
        raise ProcessGroupError(
            f"multi-process training needs the JAX backend, not {keras.backend.backend()} "
            "(run with --backend jax, or KERAS_BACKEND=jax)")
    coordinator, num_processes, process_id = _settings(coordinator, num_processes, process_id)
    if _GROUP is not None:
        wanted = (process_id, num_processes)
        if any(w is not None and w != h for w, h in
               zip(wanted, (_GROUP.process_id, _GROUP.num_processes), strict=True)):
            raise ProcessGroupError(f"this process already joined a run as process "
                                    f"{_GROUP.process_id} of {_GROUP.num_processes}")
        return _GROUP.process_id, _GROUP.num_processes
    import jax

    if not jax.distributed.is_initialized():
        try:
            jax.distributed.initialize(
                coordinator, num_processes, process_id,
                initialization_timeout=max(1, int(timeout)),
                heartbeat_timeout_seconds=max(1, int(2 * heartbeat_timeout + 10)),
                shutdown_timeout_seconds=max(1, int(timeout)))
        except Exception as error:
            where = f" at {coordinator}" if coordinator else ""
            raise ProcessGroupError(
                f"process {process_id if process_id is not None else '?'} of "
                f"{num_processes or '?'} could not join the run{where} within {timeout:g} s "
                f"({' '.join(str(error).split())[:300]}): start every process with the same "
                "coordinator address and number of processes, each with its own id "
                "0..N-1, before anything else uses JAX") from None
    _GROUP = _Group(jax.process_index(), jax.process_count(), timeout, heartbeat_timeout)
    if _GROUP.num_processes > 1:
        threading.Thread(target=_GROUP.watch, name="keras_dae-process-watchdog",
                         daemon=True).start()
        atexit.register(_GROUP.at_exit)  # after JAX's own handler, so it runs before it
    return _GROUP.process_id, _GROUP.num_processes


def _jax_group() -> tuple[int, int]:
    """`(process index, process count)` of JAX's distributed runtime, `(0, 1)` without one
    (what `keras.distribution.initialize` or `jax.distributed.initialize` set up counts too)."""
    if _GROUP is not None:
        return _GROUP.process_id, _GROUP.num_processes
    jax = sys.modules.get("jax")
    if jax is None or keras.backend.backend() != "jax" or not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def process_index() -> int:
    """This process's id in a multi-process run (0: the chief); 0 outside one."""
    return _jax_group()[0]


def process_count() -> int:
    """The number of processes of the run (1 outside a multi-process run)."""
    return _jax_group()[1]


def is_chief() -> bool:
    """Whether this process writes the run's files: process 0, or the only process."""
    return process_index() == 0


def _client_and_timeout():
    if _GROUP is not None:
        return _GROUP.client, _GROUP.timeout, _GROUP.next_key
    from jax._src import distributed

    counter = iter(range(1, 1 << 62))
    return distributed.global_state.client, 300.0, lambda kind: f"{_KEY}/{kind}/x{next(counter)}"


def barrier(name: str) -> None:
    """Waits until every process of the run has reached `barrier(name)` (every process calls
    the same barriers in the same order); returns at once in a single process. Raises
    `ProcessGroupError` when they do not all come within the run's timeout."""
    if process_count() == 1:
        return
    client, timeout, next_key = _client_and_timeout()
    try:
        client.wait_at_barrier(next_key("barrier"), int(timeout * 1000))
    except Exception as error:
        raise ProcessGroupError(
            f"the processes did not all reach '{name}' within {timeout:g} s "
            f"({' '.join(str(error).split())[:200]}): one of them is stuck or stopped") from None


def run_on_chief(name: str, func):
    """`func()` on process 0 only; the others wait for it (the run's timeout) and raise
    `ProcessGroupError` with its message when it raised. Returns `func()`'s result on
    process 0, None on the others. In a single process: `func()`."""
    if process_count() == 1:
        return func()
    client, timeout, next_key = _client_and_timeout()
    key = next_key("chief")
    if is_chief():
        try:
            result = func()
        except Exception as error:
            client.key_value_set(key, "error: " + " ".join(str(error).split())[:600])
            raise
        client.key_value_set(key, "ok")
        return result
    try:
        status = client.blocking_key_value_get(key, int(timeout * 1000))
    except Exception:
        raise ProcessGroupError(f"process 0 did not finish '{name}' within {timeout:g} s") \
            from None
    if status != "ok":
        raise ProcessGroupError(f"process 0 could not {name}: {status[len('error: '):]}")
    return None


def report_failure(error: BaseException, status: int = 2) -> None:
    """Tells the other processes that this one failed with `error` (they stop, saying so),
    and makes this process exit with `status` at once after its own message instead of
    waiting in JAX's shutdown for them. Does nothing outside a multi-process run."""
    if _GROUP is None or _GROUP.num_processes == 1 or _GROUP.failed_status is not None:
        return
    _GROUP.failed_status = status
    message = " ".join(str(error).split())[:600] or type(error).__name__
    try:
        _GROUP.client.key_value_set(f"{_KEY}/failed/{_GROUP.process_id}", message,
                                    allow_overwrite=True)
    except Exception:  # the coordinator is gone: the others stop anyway
        pass
