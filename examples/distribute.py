"""The devices and the distribution strategy of a run."""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from config import FlagError


def configure_devices(num_cpu_devices: int) -> None:
    """Splits the CPU into `num_cpu_devices` logical devices (0: leaves it alone).

    Call it before anything else of TensorFlow: devices are fixed when its runtime starts.
    """
    if num_cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices
        )


def make_strategy(name: str, batch_size: int) -> tf.distribute.Strategy | None:
    """The strategy "default" (None: one device), "mirrored" or "multi_worker" names.

    Raises:
      FlagError: if `batch_size` does not split evenly over the strategy's replicas.
    """
    if name == "default":
        if os.environ.get("TF_CONFIG"):
            logging.warning(
                "TF_CONFIG is set but --strategy=default: this process trains alone "
                "(--strategy=multi_worker trains on the cluster it describes)."
            )
        return None
    if name == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        strategy = tf.distribute.MirroredStrategy(gpus or devices)
    if batch_size % strategy.num_replicas_in_sync:
        raise FlagError(
            [
                f"--batch_size={batch_size} must be a multiple of the "
                f"{strategy.num_replicas_in_sync} replicas of --strategy={name}."
            ]
        )
    return strategy


def distribute_dataset(
    strategy: tf.distribute.Strategy | None, dataset: tf.data.Dataset
) -> tf.data.Dataset:
    """`dataset` split over the strategy's replicas (unchanged without a strategy).

    Every worker builds every global batch and keeps its share of each (the replicas'
    slices in order), so the split does not depend on file sharding.
    """
    if strategy is None:
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def gather(strategy: tf.distribute.Strategy | None, value: int) -> list[int]:
    """`value` of every worker, in replica order (just [value] without several workers)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return [value]

    def replica_values():
        context = tf.distribute.get_replica_context()
        return context.all_gather(tf.constant([value], tf.int64), axis=0)

    gathered = tf.function(lambda: strategy.run(replica_values))()
    return [int(v) for v in strategy.experimental_local_results(gathered)[0].numpy()]
