"""The seeds of the Keras model's steps: training streams and content-hashed evaluation seeds.

Without per-example seeds, training step t draws from `stateless_fold_in(seed, t)` (t
the optimizer's step counter plus the skipped steps; and the replica id under a
distribution strategy), so a run is replayed exactly by its seed and its step counter.
Evaluation (`call`, `test_step`) draws from per-example seeds hashed from each example's
content, so a data point's bound does not depend on the batch it comes in.
"""

from __future__ import annotations

import tensorflow as tf

from mcobjectives import _compat, sampling

__all__ = [
    "EVALUATION_STREAM",
    "content_seeds",
    "evaluation_seed_for",
    "evaluation_seeds",
    "step_seed",
]

# Folded into the model seed for `test_step` and `call`, away from training steps.
EVALUATION_STREAM = 2**31 - 1


def step_seed(seed: int, stream) -> tf.Tensor:
    """The [2] int32 seed `seed` folded with `stream` (and the replica id, if several)."""
    folded = tf.random.experimental.stateless_fold_in(
        sampling.stateless_seed(seed), tf.cast(stream, tf.int64)
    )
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
        folded = tf.random.experimental.stateless_fold_in(
            folded, tf.cast(replica.replica_id_in_sync_group, tf.int64)
        )
    # stateless_fold_in gives int64 seeds; their low 32 bits are as good a seed.
    return tf.cast(folded, tf.int32)


def content_seeds(seed: tf.Tensor, tensors: list[tf.Tensor]) -> tf.Tensor:
    """[B, 2] per-example seeds from `seed` and each example's content (bit-exact hash).

    The hash of an example reads its own bits only (integer sums, which no reduction
    order can change), so a data point draws the same samples in any batch.
    """
    hashed = None
    for t in tensors:
        t = tf.convert_to_tensor(t)
        flat = tf.reshape(t, [tf.shape(t)[0], -1])
        if flat.dtype.is_floating:
            bits = tf.cast(tf.bitcast(tf.cast(flat, tf.float32), tf.int32), tf.int64)
        else:
            bits = tf.cast(flat, tf.int64)
        # Odd multipliers that differ per position: a value and its place both count.
        # int64 products and sums wrap around, exactly and in any order.
        position = tf.range(tf.shape(flat)[1], dtype=tf.int64)
        multipliers = position * 0x9E3779B97F4A7C1 * 2 + 1
        row = tf.reduce_sum((bits + 0x632BE5AB) * multipliers, axis=1)
        hashed = row if hashed is None else hashed * 1000003 + row
    mixed = tf.bitwise.bitwise_xor(hashed, tf.bitwise.right_shift(hashed, 29))
    low = tf.bitwise.bitwise_and(mixed, 0x7FFFFFFF)
    high = tf.bitwise.bitwise_and(tf.bitwise.right_shift(mixed, 32), 0x7FFFFFFF)
    seed = tf.cast(seed, tf.int64)
    xor = tf.bitwise.bitwise_xor
    pair = tf.stack([xor(low, seed[0]), xor(high, seed[1])], axis=1)
    return tf.cast(tf.bitwise.bitwise_and(pair, 0x7FFFFFFF), tf.int32)


def evaluation_seeds(model, batch) -> tf.Tensor:
    """[B, 2] evaluation seeds of a checked batch: `model`'s evaluation stream and its content."""
    x, context, _ = batch  # the hash reads x and context side by side
    return content_seeds(
        model.step_seed(EVALUATION_STREAM), [x] if context is None else [x, context]
    )


def evaluation_seed_for(model, batch) -> tf.Tensor:
    """The seeds of `call` and `test_step`: the batch's own, else `evaluation_seeds`."""
    if batch.seed is not None and _compat.in_symbolic_build():
        # Keras builds the model on placeholders whose dtypes it may not keep (a
        # distributed dataset's seeds come as float32): only shapes matter there.
        return model.step_seed(EVALUATION_STREAM)
    return batch.seed if batch.seed is not None else evaluation_seeds(model, batch)
