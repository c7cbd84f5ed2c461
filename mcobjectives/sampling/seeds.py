"""Stateless seeds: what a seed may be, int32 seeds, per-example seeds and child seeds.

Every draw of the package is keyed by an int32 seed [2] (or per-example int32 seeds
[B, 2]); this module turns what a user passes into one, refusing what is not a seed,
and derives the seeds of a joint distribution's parts.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.core import checks
from mcobjectives.sampling.bits import (
    GOLDEN_GAMMA,
    int32_of_low_bits,
    int32_pair,
    mix64,
    seed_keys,
    uint64,
)

tfd = tfp.distributions

__all__ = [
    "assert_one_seed_per_example",
    "child_seeds",
    "is_per_example_seed",
    "seed_for",
    "stateless_seed",
]


def stateless_seed(seed) -> tf.Tensor:
    """A shape-[2] int32 stateless seed from an int or an integer tensor of shape [] or [2].

    What a seed may be, and which stream it gives:

    * A Python (or NumPy) int in [0, 2**62) maps to the fixed seed
      [seed >> 31, seed & (2**31 - 1)] (TFP's `sanitize_seed` would treat it as a
      stateful seed and draw anew on every call). A negative int, or one of 2**62 or
      more, is refused. An integer scalar tensor (or 0-d array), whose value may be
      unknown until run time, maps by the same formula: as the int would, and outside
      [0, 2**62) to the [2] seed it gives, read as below.
    * A [2] seed (a list, a NumPy array or a tensor, of any integer dtype) whose two
      components lie in the int32 range [-2**31, 2**31) is that int32 seed: int64 seeds
      of int32 values, as `tf.random.experimental.stateless_fold_in` returns, give the
      same stream as their int32 cast.
    * A [2] seed with a component outside the int32 range (an int64 seed of
      `stateless_split`, or [2**40, 3]) is not truncated to its low 32 bits: its two
      whole 64-bit components are hashed into an int32 seed, so distinct seeds give
      distinct streams (up to a 2**-64 chance of collision), in every mode, also for a
      symbolic int64 tensor. A Python or NumPy component outside the int64 range
      [-2**63, 2**63) is refused; a uint64 tensor is read as the int64 of its bits.

    Floats, bools, strings, ragged lists and seeds of any other shape are refused with
    a TypeError or ValueError naming `seed`, never rounded or truncated.
    """
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        seed = int(seed)
        if not 0 <= seed < 2**62:
            raise ValueError(
                f"`seed` must be an int in [0, 2**62) (or a shape-[2] integer tensor), got {seed}."
            )
        return tf.constant([seed >> 31, seed & 0x7FFFFFFF], tf.int32)
    seed = _seed_tensor(seed)
    if seed.shape.rank == 0:
        seed = tf.cast(seed, tf.int64)
        seed = tf.stack(
            [tf.bitwise.right_shift(seed, 31), tf.bitwise.bitwise_and(seed, 0x7FFFFFFF)]
        )
    elif seed.shape.rank != 1 or not seed.shape.is_compatible_with([2]):
        raise ValueError(
            f"`seed` must be an int or a stateless seed of shape [2] (or, where per-example "
            f"seeds are taken, [B, 2]); got shape {seed.shape}. Split one seed per step, "
            "e.g. with tf.random.experimental.stateless_split."
        )
    return _int32_seeds(seed)


_SEED_KINDS = (
    "`seed` must be an int, or an integer tensor of shape [2] (one stateless seed) or "
    "[B, 2] (per-example seeds)"
)


def _seed_tensor(seed) -> tf.Tensor:
    """`seed` as an integer tensor of known rank, or a TypeError/ValueError naming it."""
    checks.check_seed(seed)
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{_SEED_KINDS}; got a bool.")
    if isinstance(seed, (str, bytes, dict)):
        raise TypeError(f"{_SEED_KINDS}; got {type(seed).__name__} {seed!r}.")
    if isinstance(seed, (tf.Tensor, tf.Variable)):
        tensor = tf.convert_to_tensor(seed)
    else:
        tensor = tf.convert_to_tensor(_seed_array(seed))
    if not tensor.dtype.is_integer:
        raise TypeError(f"{_SEED_KINDS}; got dtype {tensor.dtype.name}.")
    if tensor.shape.rank is None:
        raise ValueError(
            f"{_SEED_KINDS}; got a tensor of unknown rank: give it a static rank, e.g. "
            "tf.ensure_shape(seed, [2]) or an input_signature of shape [2]."
        )
    return tensor


def _seed_array(seed) -> np.ndarray:
    """A Python or NumPy seed as an integer array, checked before TensorFlow sees it."""
    try:
        array = np.asarray(seed)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{_SEED_KINDS}; got {type(seed).__name__} {seed!r}, which is not a rectangular "
            "array of integers."
        ) from error
    if array.dtype == object:
        leaves = array.reshape([-1]).tolist()
        if array.ndim and all(isinstance(v, int) and not isinstance(v, bool) for v in leaves):
            raise ValueError(
                f"{_SEED_KINDS}; got {seed!r}, whose components must lie in the int64 range "
                "[-2**63, 2**63)."
            )
        raise TypeError(f"{_SEED_KINDS}; got {type(seed).__name__} {seed!r}.")
    if array.size == 0:
        raise ValueError(f"{_SEED_KINDS}; got an empty seed of shape {array.shape}.")
    if array.dtype == np.bool_:
        raise TypeError(f"{_SEED_KINDS}; got a bool array.")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{_SEED_KINDS}; got {type(seed).__name__} of dtype {array.dtype}.")
    if array.dtype == np.uint64 and np.any(array >= np.uint64(2**63)):
        raise ValueError(
            f"{_SEED_KINDS}; got {seed!r}, whose components must lie in the int64 range "
            "[-2**63, 2**63)."
        )
    return array


# Salts the hash of seeds outside the int32 range (the SHA-512 initial value H2).
_WIDE_SEED_SALT = 0x3C6EF372FE94F82B


def _int32_seeds(seeds: tf.Tensor) -> tf.Tensor:
    """Integer seeds [..., 2] as int32 seeds [..., 2] (see `stateless_seed`).

    A seed whose components both lie in the int32 range is itself. Any other seed is
    a hash of its two whole components: each int64 component is its low 32 bits and
    the 32 bits above them that differ from the low half's sign extension (zero
    exactly when it fits an int32), and the 64 bits of excess are mixed into the key of
    the low halves through SplitMix64's bijective finalizer.
    """
    if seeds.dtype == tf.int32:
        return seeds
    if seeds.dtype in (tf.int8, tf.int16, tf.uint8, tf.uint16):
        return tf.cast(seeds, tf.int32)
    wide = tf.cast(seeds, tf.int64)
    low = int32_of_low_bits(wide)
    sign = tf.bitwise.right_shift(tf.cast(low, tf.int64), 31)  # 0 or -1
    excess = tf.bitwise.bitwise_and(
        tf.bitwise.bitwise_xor(tf.bitwise.right_shift(wide, 32), sign), 0xFFFFFFFF
    )
    outside = tf.reduce_any(tf.not_equal(excess, 0), axis=-1, keepdims=True)
    excess = tf.cast(excess, tf.uint64)
    packed = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(excess[..., 0], uint64(32)), excess[..., 1]
    )
    key = mix64(
        tf.bitwise.bitwise_xor(
            seed_keys(low), mix64(tf.bitwise.bitwise_xor(packed, uint64(_WIDE_SEED_SALT)))
        )
    )
    return tf.where(outside, int32_pair(key), low)


def is_per_example_seed(seed) -> bool:
    """Whether `seed` is a `[B, 2]` tensor of per-example seeds (rather than one seed)."""
    if seed is None or isinstance(seed, (int, bool, np.integer, np.bool_, str, bytes)):
        return False
    try:
        return _seed_tensor(seed).shape.rank == 2
    except (TypeError, ValueError):
        return False  # not a valid seed at all: `stateless_seed` says why


# A salt keeps child keys away from the parent's own noise stream.
_CHILD_SALT = 0x6A09E667F3BCC909


def child_seeds(seed: tf.Tensor, index: int) -> tf.Tensor:
    """The seed of part `index` of a joint draw, from one seed [2] or seeds [B, 2].

    SplitMix64 of the parent key at a counter of its own, split into two int32s, so
    every mode derives the same child seeds.
    """
    key = tf.bitwise.bitwise_xor(seed_keys(seed), uint64(_CHILD_SALT))
    return int32_pair(mix64(key + uint64((index + 1) * GOLDEN_GAMMA % 2**64)))


def seed_for(q: tfd.Distribution, seed) -> tf.Tensor:
    """One int32 seed [2] or per-example int32 seeds [B, 2] for sampling q."""
    if isinstance(seed, (int, np.integer)):
        return stateless_seed(seed)
    tensor = _seed_tensor(seed)
    if tensor.shape.rank == 2:
        return _per_example_seeds(tensor, q)
    return stateless_seed(tensor)


def _per_example_seeds(seed: tf.Tensor, q: tfd.Distribution) -> tf.Tensor:
    """Checks [B, 2] per-example seeds against q's batch shape [B] (every part's, for a
    joint q), statically or, where B is not static, at run time; returns them as int32."""
    batch_shapes = checks.flat_shapes(q.batch_shape)
    if any(s.rank != 1 for s in batch_shapes) or not seed.shape[1:].is_compatible_with([2]):
        raise ValueError(
            f"Per-example seeds (a `seed` of shape [B, 2]) need a q of batch shape [B]; got "
            f"seed shape {seed.shape} and q batch shape {q.batch_shape}."
        )
    if not all(seed.shape[:1].is_compatible_with(s) for s in batch_shapes):
        raise ValueError(
            f"Per-example seeds (a `seed` of shape [B, 2]) of shape {seed.shape} do not match "
            f"q's batch shape {q.batch_shape}: give one seed per data point, shape [B, 2]."
        )
    if not checks.is_joint(q):  # a joint q's parts are checked as they are drawn
        seed = assert_one_seed_per_example(seed, q, 0)
    return _int32_seeds(seed)


def assert_one_seed_per_example(seed: tf.Tensor, d: tfd.Distribution, axis: int):
    """Per-example seeds [B', 2], checked at run time against the size of `d`'s batch
    axis `axis` where either is not static: a mismatch would broadcast silently (B' = 1)
    or fail inside TensorFlow."""
    if seed.shape.rank != 2:
        return seed
    static = d.batch_shape[axis] if d.batch_shape.rank is not None else None
    if seed.shape[0] is not None and static is not None:
        return seed
    size = d.batch_shape_tensor()[axis]
    check = tf.debugging.assert_equal(
        tf.shape(seed, out_type=size.dtype)[0],
        size,
        message=(
            "Per-example seeds (a `seed` of shape [B, 2]) do not match q's batch size: give "
            "one seed per data point, shape [B, 2] (below: the number of seeds, then B)."
        ),
    )
    return checks.with_assertion(check, seed)
