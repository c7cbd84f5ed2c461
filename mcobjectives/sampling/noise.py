"""Noise from uniforms: standard normal, logistic and Gumbel, one seed or one per example.

The uniforms come from `bits.uniform`; each transform is evaluated in float64 (and the
normal cast to the draw's dtype), so that every mode gives the same noise up to the last
bits of `ndtri`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mcobjectives.core import checks
from mcobjectives.core.compiled import compiling_pieces
from mcobjectives.sampling.bits import uniform
from mcobjectives.sampling.seeds import stateless_seed

__all__ = ["gumbel", "logistic", "noise", "normal_of", "standard_normal"]


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
    """Standard normal noise of `shape` that is identical with and without XLA.

    Args:
      shape: the output shape (a list or a 1-D int tensor).
      seed: a stateless seed: an int or a shape-[2] integer tensor.
      dtype: `tf.float32` or `tf.float64`. float32 draws use 24 random bits per
        number, float64 draws 52.

    Returns:
      A tensor of `shape` and `dtype`, `ndtri(u)` with `u` uniform on (0, 1).
    """
    dtype = _check_float(dtype)
    shape = _check_shape(shape)
    return normal_of(dtype)(uniform(shape, stateless_seed(seed), dtype))


def noise(shape, seed, dtype, example_axis: int, transform) -> tf.Tensor:
    """transform(uniforms) of `shape`; with seeds [B, 2], slice i along `example_axis`
    comes from seed i alone (exactly the draws of that seed for the other axes)."""
    if seed.shape.rank == 1:
        if compiling_pieces():  # the same bits, fused by XLA (`core.compiled`)
            return _compiled_noise(shape, seed, dtype, transform)
        return transform(uniform(shape, seed, dtype))
    rest = tf.concat([shape[:example_axis], shape[example_axis + 1 :]], axis=0)
    values = transform(uniform(rest, seed, dtype))  # [B, *rest]
    rank = values.shape.rank
    perm = [*range(1, example_axis + 1), 0, *range(example_axis + 1, rank)]
    return tf.transpose(values, perm)


@tf.function(jit_compile=True, autograph=False)
def _compiled_noise(shape, seed, dtype, transform) -> tf.Tensor:
    """transform(uniform(shape, seed, dtype)) in one XLA computation (no gradient needed:
    noise is a function of the seed alone)."""
    return transform(uniform(shape, seed, dtype))


def normal_of(dtype):
    """The transform of uniforms into standard normals of `dtype`, `ndtri` in float64."""
    # ndtri is evaluated in float64 even for float32 draws: XLA's float32 ndtri is less
    # accurate than TensorFlow's kernel, and the two would disagree in the tails.
    return lambda u: tf.cast(tf.math.ndtri(u), dtype)


def logistic(u):
    """Standard logistic noise log u - log(1 - u) of uniforms `u`."""
    return tf.math.log(u) - tf.math.log1p(-u)


def gumbel(u):
    """Standard Gumbel noise -log(-log u) of uniforms `u`."""
    return -tf.math.log(-tf.math.log(u))
