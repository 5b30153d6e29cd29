"""Data-parallel training on several devices or machines, on every Keras backend.

`--distribute mirrored` copies the model onto every local device and splits
each global batch between them: `tf.distribute.MirroredStrategy` under
TensorFlow, `keras.distribution.DataParallel` under JAX. `--distribute
multiworker` does the same over several machines with TensorFlow's
`MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG` environment
variable. `CITYSCAPES_CPU_REPLICAS=N` splits a CPU into N devices, so that
both run (slowly) on a machine without GPUs; that is how they are tested.

Every worker runs the same program on the same seeded data; TensorFlow
shards each batch between them. Only the chief writes the run's outputs:
the others write into a temporary folder that is removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import keras
import numpy as np

from cityscapes_unet.errors import DistributeError

#: The environment variable that splits a CPU into N devices for `--distribute mirrored`.
CPU_REPLICAS = "CITYSCAPES_CPU_REPLICAS"


def cpu_replicas_from_env() -> int:
    """The CPU devices `CITYSCAPES_CPU_REPLICAS` asks for (1 when unset).

    Raises:
        DistributeError: For a value that is not a positive integer.
    """
    raw = os.environ.get(CPU_REPLICAS, "1")
    if not raw.strip().isdigit() or int(raw) < 1:
        raise DistributeError(f"{CPU_REPLICAS}={raw}: must be a positive integer")
    return int(raw)


def split_cpu(replicas: int) -> None:
    """Expose the CPU as `replicas` devices; call before the backend starts.

    Args:
        replicas: Number of CPU devices (1 leaves the CPU as it is).

    Raises:
        DistributeError: If the backend has started already or cannot split.
    """
    if replicas <= 1:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
            )
        except RuntimeError:
            raise DistributeError(
                f"{CPU_REPLICAS}={replicas}: TensorFlow has started already; it must be set first"
            ) from None
    elif backend == "jax":
        # Read when JAX first lists its devices, which has not happened yet.
        flag = f"--xla_force_host_platform_device_count={replicas}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    else:
        raise DistributeError(f"{CPU_REPLICAS}={replicas}: not available with the {backend} backend")


def _chief_of(tf_config: dict) -> bool:
    # The chief is task "chief", or worker 0 when the cluster names no chief
    # (TensorFlow's own rule).
    task = tf_config.get("task", {})
    kind, index = task.get("type"), int(task.get("index", 0))
    if "chief" in tf_config.get("cluster", {}):
        return kind == "chief"
    return kind == "worker" and index == 0


def read_tf_config() -> dict:
    """The `TF_CONFIG` of a multi-worker run, checked.

    Returns:
        The parsed `TF_CONFIG`.

    Raises:
        DistributeError: If it is missing or malformed.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributeError(
            "--distribute multiworker: set TF_CONFIG on each machine "
            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}})'
        )
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        if not isinstance(workers, list) or task["type"] not in ("worker", "chief"):
            raise ValueError
        int(task.get("index", 0))
    except (ValueError, KeyError, TypeError):
        raise DistributeError(
            "--distribute multiworker: TF_CONFIG is not valid JSON with cluster.worker (a list of "
            "host:port) and task.type / task.index"
        ) from None
    return config


@dataclass
class Distribution:
    """How a run spreads over devices.

    Attributes:
        mode: `none`, `mirrored` or `multiworker`.
        replicas: Number of model replicas (devices over all workers).
        is_chief: Whether this process writes the outputs.
        description: One line for the log.
        strategy: The `tf.distribute.Strategy`, or None.
        sync_batchnorm: Whether batch norm must average its statistics over
            the replicas (TensorFlow strategies; JAX's data parallelism
            computes them over the global batch by itself).
    """

    mode: str = "none"
    replicas: int = 1
    is_chief: bool = True
    description: str = "one device"
    strategy: object | None = None
    sync_batchnorm: bool = False
    _scope: contextlib.AbstractContextManager | None = field(default=None, repr=False)

    def scope(self) -> contextlib.AbstractContextManager:
        """Context in which the model, its optimizer and metrics are built.

        Returns:
            The strategy's scope, or a context that does nothing.
        """
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()


def setup(mode: str, cpu_replicas: int = 1) -> Distribution:
    """Create the distribution of `--distribute MODE`; call before any other backend work.

    Args:
        mode: `none`, `mirrored` or `multiworker`.
        cpu_replicas: Split the CPU into this many devices (for machines
            without GPUs; see `split_cpu` and `CPU_REPLICAS`).

    Returns:
        A `Distribution`.

    Raises:
        DistributeError: If the mode cannot run with this backend or setup.
    """
    backend = keras.backend.backend()
    check_mode(mode, cpu_replicas, backend)
    if mode == "none":
        return Distribution()
    if backend == "jax":
        return _jax_data_parallel(mode, cpu_replicas)
    if mode == "multiworker":
        return _tf_multiworker()
    return _tf_mirrored(mode, cpu_replicas)


def check_mode(mode: str, cpu_replicas: int, backend: str) -> None:
    """Refuse a `--distribute` mode that cannot run with this backend or CPU split.

    Args:
        mode: The requested mode.
        cpu_replicas: The requested CPU split.
        backend: The Keras backend.

    Raises:
        DistributeError: One line, why it cannot run.
    """
    lone_cpu_split = mode != "mirrored" and cpu_replicas > 1
    if mode == "none":
        if lone_cpu_split:
            raise DistributeError(f"{CPU_REPLICAS}={cpu_replicas}: only with --distribute mirrored")
        return
    if backend == "torch":
        raise DistributeError(
            f"--distribute {mode}: not available with the torch backend (use KERAS_BACKEND=tensorflow or jax)"
        )
    if backend == "jax" and mode == "multiworker":
        raise DistributeError(
            "--distribute multiworker: needs the TensorFlow backend (JAX: --distribute mirrored on one machine)"
        )
    if lone_cpu_split:
        raise DistributeError(f"{CPU_REPLICAS}={cpu_replicas}: only with --distribute mirrored")


def _jax_data_parallel(mode: str, cpu_replicas: int) -> Distribution:
    # keras.distribution.DataParallel over the GPUs, else the (split) CPU.
    split_cpu(cpu_replicas)
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    devices = keras.distribution.list_devices("gpu" if gpus else "cpu")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    kind = "GPU" if gpus else "CPU"
    return Distribution(
        mode, len(devices), True, f"keras.distribution.DataParallel over {len(devices)} {kind} device(s)"
    )


def _tf_multiworker() -> Distribution:
    import tensorflow as tf

    config = read_tf_config()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    patch_keras_multiworker_logs()
    workers = len(config["cluster"]["worker"]) + len(config["cluster"].get("chief", []))
    task = config["task"]
    return Distribution(
        "multiworker",
        strategy.num_replicas_in_sync,
        _chief_of(config),
        f"MultiWorkerMirroredStrategy: {workers} workers, {strategy.num_replicas_in_sync} replicas "
        f"(this is {task['type']} {task.get('index', 0)})",
        strategy,
        sync_batchnorm=True,
    )


def _tf_mirrored(mode: str, cpu_replicas: int) -> Distribution:
    import tensorflow as tf

    split_cpu(cpu_replicas)
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    strategy = tf.distribute.MirroredStrategy(devices)
    kind = "GPU" if gpus else "CPU"
    return Distribution(
        mode,
        strategy.num_replicas_in_sync,
        True,
        f"MirroredStrategy over {len(devices)} {kind} device(s)",
        strategy,
        sync_batchnorm=len(devices) > 1,
    )


def _batchnorms(model: keras.Model) -> Iterator[keras.layers.BatchNormalization]:
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer


def set_sync_batchnorm(model: keras.Model, on: bool) -> None:
    """Make every batch norm of `model` average its batch statistics over the replicas.

    Without it each replica normalises by its own share of the batch, and
    two replicas would not train like one on the same global batch. Call
    before the first training step (the step reads the flag when traced).

    Args:
        model: The model.
        on: Synchronise (TensorFlow strategies only) or not.
    """
    for layer in _batchnorms(model):
        layer.synchronized = on


@contextlib.contextmanager
def portable_batchnorm(model: keras.Model):
    """Save a model as a plain one: `synchronized=False` in its file.

    Keras refuses `synchronized=True` outside TensorFlow, so a model saved
    with it would not load under JAX or PyTorch. The flag only matters while
    training under a strategy; the traced training step keeps it.

    Args:
        model: The model about to be saved.

    Yields:
        The model, its batch norms unsynchronised until the context ends.
    """
    synced = [layer for layer in _batchnorms(model) if layer.synchronized]
    for layer in synced:
        layer.synchronized = False
    try:
        yield model
    finally:
        for layer in synced:
            layer.synchronized = True


def predict_padded(model: keras.Model, x, multiple: int = 1):
    """`model.predict` on one batch, padded to a multiple of the replicas.

    JAX's data parallelism splits every batch into equal shares, so a batch
    of 1 cannot go to 2 devices; the padding rows are dropped again.

    Args:
        model: The model.
        x: Array `(B, ...)`.
        multiple: Number of replicas.

    Returns:
        The predictions for the `B` inputs, as a NumPy array.
    """
    x = np.asarray(x)
    n = len(x)
    extra = -n % multiple
    if extra:
        x = np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)])
    return np.asarray(model.predict(x, batch_size=len(x), verbose=0))[:n]


def prebuild(model: keras.Model, dist: Distribution) -> None:
    """Build the model's training state from shapes before `fit` under a TensorFlow strategy.

    Under a strategy, Keras 3's `fit` and `evaluate` first take one batch
    from the data to learn its shapes (`_maybe_symbolic_build`) and then
    start the data again. That costs the run its first shuffle and flip
    draws: a distributed run would see other epochs than one replica with
    the same seed. Under MultiWorkerMirroredStrategy that step also fails
    outright: it averages the batch over the workers ("Attempt to convert a
    value (PerReplica...)", keras-team/keras#20585). Building the same
    state from a zero batch of the right shapes, and skipping that step,
    avoids both.

    Args:
        model: Compiled model, built in `dist.scope()`.
        dist: The distribution (nothing to do without a strategy).
    """
    if dist.strategy is None:
        return
    scores = model.output_shape[1:]
    batch = (
        np.zeros((1, *model.input_shape[1:]), np.uint8),
        np.zeros((1, *scores), np.uint8),
        np.zeros((1, *scores[:-1]), np.uint8),
    )
    with dist.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def patch_keras_multiworker_logs() -> None:
    """Let Keras 3's TensorFlow trainer average scalar logs over several workers.

    Its `reduce_per_replica` averages the per-step logs of a
    MultiWorkerMirroredStrategy with `strategy.reduce("MEAN", v, axis=0)`;
    the logs are scalars, which have no axis 0, so the first training step
    fails ("Invalid reduction dimension 0 for input with 0 dimensions",
    keras-team/keras#20585). This averages them over the replicas instead
    (`axis=None`). Only the step logs go through it: the epoch's figures are
    read again from the metrics, whose counts are summed over all replicas.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "_scalar_safe", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._scalar_safe = True
    trainer.reduce_per_replica = reduce_per_replica
