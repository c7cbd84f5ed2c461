"""Counter-based random bits: SplitMix64 [1] in uint64 integer arithmetic, and uniforms.

Every mode (TensorFlow's kernels, eager or in `tf.function`, and XLA) computes integer
arithmetic exactly, so the same key and counter give the same bits everywhere, and XLA
fuses the whole stream into one cheap loop. Output i of the stream with key k is
mix(k + (i + 1) * gamma), where gamma is the odd constant 2^64 / golden ratio and mix is
SplitMix64's finalizer (the published constants). The key of a seed is mix(seed), the
seed's two 32-bit halves read as one 64-bit word.

References:
  [1] Steele, Lea, Flood. Fast Splittable Pseudorandom Number Generators. OOPSLA 2014.
"""

from __future__ import annotations

import tensorflow as tf

# The building blocks the package's seeds and noise modules use; the public API is
# `mcobjectives.sampling`.
__all__ = [
    "GOLDEN_GAMMA",
    "int32_of_low_bits",
    "int32_pair",
    "mix64",
    "seed_keys",
    "uint32_bits",
    "uint64",
    "uniform",
]

GOLDEN_GAMMA = 0x9E3779B97F4A7C15
"""SplitMix64's increment: the odd integer nearest 2^64 / golden ratio."""

_MIX = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))


def uint64(value: int) -> tf.Tensor:
    """`value` as a uint64 scalar constant."""
    return tf.constant(value, tf.uint64)


def mix64(z: tf.Tensor) -> tf.Tensor:
    """SplitMix64's finalizer, a bijection of uint64 words."""
    for shift, multiplier in _MIX:
        z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, uint64(shift)))
        z = z * uint64(multiplier)
    return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, uint64(31)))


def seed_keys(seed) -> tf.Tensor:
    """SplitMix64 keys of seeds [..., 2]: each component read as its 32 bits."""
    halves = tf.cast(tf.math.floormod(tf.cast(tf.cast(seed, tf.int32), tf.int64), 2**32), tf.uint64)
    return mix64(
        tf.bitwise.bitwise_or(tf.bitwise.left_shift(halves[..., 0], uint64(32)), halves[..., 1])
    )


def int32_of_low_bits(x: tf.Tensor) -> tf.Tensor:
    """The low 32 bits of each integer as an int32 (the bits SplitMix64 reads of a seed)."""
    low = tf.math.floormod(tf.cast(x, tf.int64), 2**32)
    return tf.cast(low - tf.cast(low >= 2**31, tf.int64) * 2**32, tf.int32)


def int32_pair(key: tf.Tensor) -> tf.Tensor:
    """A uint64 key [...] as an int32 seed [..., 2]: its high and low 32 bits."""
    high = tf.bitwise.right_shift(key, uint64(32))
    low = tf.bitwise.bitwise_and(key, uint64(0xFFFFFFFF))
    return tf.stack([int32_of_low_bits(high), int32_of_low_bits(low)], axis=-1)


def uint32_bits(shape, seed) -> tf.Tensor:
    """Random uint32s: the high halves of a SplitMix64 stream keyed by `seed`.

    `seed` is one seed [2], giving bits of `shape`, or seeds [B, 2], giving [B, *shape]
    whose slice b is exactly the bits of `shape` for seed b. Only integer arithmetic,
    so TensorFlow's kernels and XLA give the same bits, and `tf.vectorized_map` can
    vectorize it over a batch of seeds.
    """
    key = seed_keys(seed)
    shape = tf.convert_to_tensor(shape, tf.int32)
    counter = tf.reshape(tf.range(1, _num_elements(shape) + 1, dtype=tf.int64), shape)
    if key.shape.rank == 1:  # per-example keys [B] broadcast over each example's counters
        key = tf.reshape(key, tf.concat([tf.shape(key), tf.ones_like(shape)], axis=0))
    return _stream_bits(key, counter)


def _num_elements(shape) -> tf.Tensor:
    """The number of elements of `shape`, an int64: a draw of 2**31 numbers or more (K *
    B * D) counts on, where an int32 count would wrap around and repeat the stream."""
    return tf.reduce_prod(tf.cast(shape, tf.int64))


def _stream_bits(key: tf.Tensor, counter: tf.Tensor) -> tf.Tensor:
    """Output `counter` (int64, >= 1) of the SplitMix64 stream with `key`: its high 32 bits.

    The counter is read as a uint64, so every counter below 2**63 gives its own output.
    """
    bits = mix64(key + tf.cast(counter, tf.uint64) * uint64(GOLDEN_GAMMA))
    return tf.cast(tf.bitwise.right_shift(bits, uint64(32)), tf.uint32)


def uniform(shape, seed, dtype) -> tf.Tensor:
    """float64 uniforms on (0, 1) with 24 (float32) or 52 (float64) random bits each.

    Shape `shape` for one seed, [B, *shape] for per-example seeds [B, 2].
    """
    shape = tf.convert_to_tensor(shape, dtype=tf.int32)
    if dtype == tf.float64:
        bits = uint32_bits(tf.concat([shape, [2]], axis=0), seed)
        # 52 bits, so that the largest value plus one half stays exactly below 2^52.
        high = tf.cast(tf.bitwise.right_shift(bits[..., 0], tf.constant(6, tf.uint32)), tf.float64)
        low = tf.cast(tf.bitwise.right_shift(bits[..., 1], tf.constant(6, tf.uint32)), tf.float64)
        return (high * 2.0**26 + low + 0.5) * 2.0**-52
    bits = uint32_bits(shape, seed)
    mantissa = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float64)
    return (mantissa + 0.5) * 2.0**-24
