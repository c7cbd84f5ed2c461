"""Noise from uniforms: standard normal, logistic and Gumbel, one seed or one per example.

The random bits come from `bits`. float32 normals are AS 241's quantile [1] of a 24-bit
uniform, computed in float32 (`normal32_of_bits`): within 6 float32 ulps of float64
`ndtri` of the same uniform, every mode within 8 ulps of every other. float64 normals,
logistic and Gumbel noise are evaluated in float64 from 52-bit uniforms (`bits.uniform`),
so that every mode gives the same noise up to the last bits of `ndtri`.

References:
  [1] Wichura. Algorithm AS 241: The Percentage Points of the Normal Distribution.
      Applied Statistics 37(3), 477-484, 1988.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mcobjectives.core import checks
from mcobjectives.core.compiled import compiling_pieces
from mcobjectives.sampling import bits as _bits
from mcobjectives.sampling.seeds import stateless_seed

__all__ = [
    "gumbel",
    "logistic",
    "noise",
    "normal32_of_bits",
    "normal_of",
    "standard_normal",
]


def _check_float(dtype) -> tf.DType:
    try:
        dtype = tf.as_dtype(dtype)
    except TypeError as error:
        raise TypeError(f"`dtype` must be tf.float32 or tf.float64, got {dtype!r}.") from error
    if dtype not in (tf.float32, tf.float64):
        raise TypeError(f"`dtype` must be float32 or float64, got {dtype.name}.")
    return dtype


def _check_shape(shape):
    """`shape` for `standard_normal`: a list of sizes (ints >= 0 or integer scalar
    tensors), a 1-D integer array or tensor, or a fully defined TensorShape."""
    if isinstance(shape, tf.TensorShape):
        if not shape.is_fully_defined():
            raise ValueError(f"`shape` must be fully defined, got {shape}.")
        return shape.as_list()
    if isinstance(shape, np.ndarray) and shape.ndim == 1 and shape.dtype.kind in "iu":
        shape = shape.tolist()
    if isinstance(shape, (tf.Tensor, tf.Variable)):
        if not shape.dtype.is_integer or shape.shape.rank != 1:
            raise TypeError(
                f"`shape` must be a list of ints or a 1-D integer tensor, got a "
                f"{shape.dtype.name} tensor of shape {shape.shape}."
            )
        value = tf.get_static_value(shape)
        if value is not None and np.any(value < 0):
            raise ValueError(f"`shape` must have sizes >= 0, got {value.tolist()}.")
        return shape
    if not isinstance(shape, (list, tuple)):
        raise TypeError(
            f"`shape` must be a list of ints or a 1-D integer tensor, got "
            f"{type(shape).__name__} {shape!r}."
        )
    for size in shape:
        if isinstance(size, (tf.Tensor, tf.Variable)) and size.dtype.is_integer:
            if size.shape.rank != 0:
                raise TypeError(
                    f"`shape` must be a list of sizes, got a size of shape {size.shape}."
                )
            continue
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
            raise TypeError(
                f"`shape` must be a list of ints, got {shape!r} (a {type(size).__name__} size)."
            )
        if not 0 <= size <= checks.MAX_DIMENSION:
            raise ValueError(f"`shape` must have sizes in [0, 2**31), got {list(shape)}.")
    return list(shape)


def standard_normal(
    shape: Sequence[int] | tf.TensorShape | tf.Tensor,
    seed: int | Sequence[int] | np.ndarray | tf.Tensor,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Standard normal noise of `shape`, the same with and without XLA (float64 to its last
    bits, float32 within 8 ulps).

    Args:
      shape: the output shape (a list or a 1-D int tensor).
      seed: a stateless seed: an int or a shape-[2] integer tensor.
      dtype: `tf.float32` or `tf.float64`. float32 draws use 24 random bits per
        number (`normal32_of_bits`), float64 draws 52.

    Returns:
      A tensor of `shape` and `dtype`, the normal quantile of `u` uniform on (0, 1): in
      float64 `ndtri(u)`, in float32 AS 241's quantile, within 6 ulps of it.
    """
    dtype = _check_float(dtype)
    shape = _check_shape(shape)
    return _draw(shape, stateless_seed(seed), dtype, normal_of(dtype))


def noise(shape, seed, dtype, example_axis: int, transform) -> tf.Tensor:
    """transform(uniforms) of `shape`; with seeds [B, 2], slice i along `example_axis`
    comes from seed i alone (exactly the draws of that seed for the other axes)."""
    if seed.shape.rank == 1:
        if compiling_pieces():  # the same bits, fused by XLA (`core.compiled`)
            return _compiled_noise(shape, seed, dtype, transform)
        return _draw(shape, seed, dtype, transform)
    rest = tf.concat([shape[:example_axis], shape[example_axis + 1 :]], axis=0)
    values = _draw(rest, seed, dtype, transform)  # [B, *rest]
    rank = values.shape.rank
    perm = [*range(1, example_axis + 1), 0, *range(example_axis + 1, rank)]
    return tf.transpose(values, perm)


@tf.function(jit_compile=True, autograph=False)
def _compiled_noise(shape, seed, dtype, transform) -> tf.Tensor:
    """`_draw(shape, seed, dtype, transform)` in one XLA computation (no gradient needed:
    noise is a function of the seed alone)."""
    return _draw(shape, seed, dtype, transform)


def _draw(shape, seed, dtype, transform) -> tf.Tensor:
    """transform of the uniforms of `shape`, or of their uint32 bits if it reads bits."""
    if transform is normal32_of_bits:
        return transform(_bits.uint32_bits(shape, seed))
    return transform(_bits.uniform(shape, seed, dtype))


def normal_of(dtype):
    """The transform into standard normals of `dtype`: float32 draws read their bits
    (`normal32_of_bits`); float64 draws are `ndtri` of 52-bit uniforms."""
    if dtype == tf.float32:
        # A float32 quantile, not float64 ndtri rounded: a fraction of its cost, within
        # 6 ulps of it. Not float32 ndtri: XLA's is up to about 90 ulps off in the tails.
        return normal32_of_bits
    return lambda u: tf.cast(tf.math.ndtri(u), dtype)


# AS 241's PPND7 [1], the normal quantile to about 1 part in 1e7: a rational function of
# r = 0.180625 - (t - 1/2)^2 for t >= 0.075, else of sqrt(-log t) - 1.6. Its third range,
# sqrt(-log t) > 5 (t < 1.4e-11), lies below the smallest t drawn here, 2^-25.
_CENTRAL = ((3.3871327179, 50.434271938, 159.29113202, 59.109374720),
            (1.0, 17.895169469, 78.757757664, 67.187563600))  # fmt: skip
_TAIL = ((1.4234372777, 2.7568153900, 1.3067284816, 0.17023821103),
         (1.0, 0.73700164250, 0.12021132975))  # fmt: skip


def _polynomial(coefficients, r: tf.Tensor) -> tf.Tensor:
    value = tf.constant(coefficients[-1], r.dtype)
    for coefficient in reversed(coefficients[:-1]):
        value = value * r + coefficient
    return value


def normal32_of_bits(bits: tf.Tensor) -> tf.Tensor:
    """float32 standard normals of uint32 bits: the quantile of the same 24-bit uniform
    u = (m + 1/2) 2^-24 (m the top 24 bits) as the float64 path, computed in float32.

    The quantile is odd about 1/2, so z = -N^-1(1 - u) for u > 1/2, and t = min(u, 1 - u)
    = (min(m, 2^24 - 1 - m) + 1/2) 2^-24 is exact in float32 (no rounding of u near 1).
    N^-1(t) is AS 241's PPND7 [1]. Over all 2^24 values of m, measured against float64
    ndtri: at most 6 float32 ulps (relative error below 4e-7), both on TensorFlow's
    kernels and under XLA (`tests/test_float32_normals.py` checks every value).
    """
    m = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.int32)
    upper = m >= 2**23
    t = (tf.cast(tf.where(upper, 2**24 - 1 - m, m), tf.float32) + 0.5) * 2.0**-24
    q = t - 0.5
    r = 0.180625 - q * q
    central = q * _polynomial(_CENTRAL[0], r) / _polynomial(_CENTRAL[1], r)
    s = tf.sqrt(-tf.math.log(t)) - 1.6
    tail = -_polynomial(_TAIL[0], s) / _polynomial(_TAIL[1], s)
    lower = tf.where(t >= 0.075, central, tail)  # N^-1(t) <= 0
    return tf.where(upper, -lower, lower)


def logistic(u):
    """Standard logistic noise log u - log(1 - u) of uniforms `u`."""
    return tf.math.log(u) - tf.math.log1p(-u)


def gumbel(u):
    """Standard Gumbel noise -log(-log u) of uniforms `u`."""
    return -tf.math.log(-tf.math.log(u))
