"""`tf.distribute` plumbing shared by the library's training loops.

NWV joint optimisation, MTZ retraining, the Fisher and the Hessians run under
whatever `tf.distribute.Strategy` is in scope; this module makes one from a
name (the command lines' `--strategy` and `--cpu_replicas`), tells the chief
(the only writer of checkpoints), and distributes a dataset so that each
replica reads `global batch / replicas` examples and each worker its own shard.

    strategy = make_strategy("mirrored", cpu_replicas=2)   # 2 logical CPU devices
    with strategy.scope():
        ...                                               # variables mirrored

Names (`STRATEGIES`): "default" (no distribution), "mirrored" (every local GPU,
else the logical CPU devices of `split_cpu`), "multi_worker" (one process per
worker, described by the TF_CONFIG environment variable as TensorFlow documents).
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

__all__ = ["STRATEGIES", "split_cpu", "make_strategy", "is_chief", "distribute_batches",
           "num_replicas"]

STRATEGIES = ("default", "mirrored", "multi_worker")


def split_cpu(replicas: int) -> None:
    """Splits this machine's CPU into `replicas` logical devices, so a mirrored
    strategy runs (and is tested) without GPUs.

    Args:
      replicas: logical CPU devices (>= 1).
    Raises:
      ValueError: replicas < 1.
      RuntimeError: TensorFlow already initialised its devices (call this first).
    """
    if replicas < 1:
        raise ValueError(f"expected cpu_replicas >= 1, received {replicas}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
    except RuntimeError as err:
        raise RuntimeError(f"cannot split the CPU into {replicas} devices: TensorFlow has "
                           f"already initialised its devices ({err}); pass --cpu_replicas "
                           f"before anything runs") from None


def make_strategy(name: str = "default", *, cpu_replicas: int | None = None):
    """A `tf.distribute.Strategy` by name.

    Args:
      name: "default", "mirrored" or "multi_worker" (`STRATEGIES`).
      cpu_replicas: split the CPU into this many logical devices first (`split_cpu`);
        a mirrored strategy without GPUs then mirrors over them.
    Returns:
      The strategy (enter its `scope()` before creating variables).
    Raises:
      ValueError: an unknown name, or multi_worker without TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise ValueError(f"expected a strategy in {list(STRATEGIES)}, received {name!r}")
    if cpu_replicas:
        split_cpu(cpu_replicas)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if "TF_CONFIG" not in os.environ:
        raise ValueError("strategy 'multi_worker' needs the TF_CONFIG environment variable "
                         "(cluster and task of this worker, as TensorFlow documents)")
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def num_replicas(strategy=None) -> int:
    """Replicas in sync of `strategy` (default: the one in scope)."""
    return int((strategy or tf.distribute.get_strategy()).num_replicas_in_sync)


def is_chief(strategy=None) -> bool:
    """True for the process that writes checkpoints and results: always, except in a
    multi-worker strategy, where it is the chief task (or worker 0 without a chief).

    Args:
      strategy: the strategy (default: the one in scope).
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id) == 0


def distribute_batches(make_dataset, global_batch: int, strategy=None):
    """An iterator of distributed batches.

    Args:
      make_dataset: callable(batch_size, shard) -> `tf.data.Dataset` of batches of
        `batch_size` examples; `shard` is (number of input pipelines, this one's
        index) or None, to be applied per example before batching.
      global_batch: examples per step over all replicas (a multiple of the replicas).
      strategy: the strategy (default: the one in scope).
    Returns:
      An iterator whose elements feed `strategy.run` (per-replica batches of
      global_batch / replicas examples).
    Raises:
      ValueError: a global batch that the replicas do not divide.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = num_replicas(strategy)
    if global_batch % replicas:
        raise ValueError(f"expected a global batch size divisible by the {replicas} "
                         f"replicas, received {global_batch}")

    def dataset_fn(context):
        shard = ((context.num_input_pipelines, context.input_pipeline_id)
                 if context.num_input_pipelines > 1 else None)
        return make_dataset(context.get_per_replica_batch_size(global_batch), shard)

    if replicas == 1 and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return iter(make_dataset(global_batch, None))
    return iter(strategy.distribute_datasets_from_function(dataset_fn))
