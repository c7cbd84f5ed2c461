"""Argument checks shared by the objectives: each raises before any graph is traced."""

from __future__ import annotations

import math
import numbers

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = [
    "check_count",
    "check_distribution",
    "check_unit_interval",
]


def check_count(name: str, value, minimum: int = 1) -> int:
    """Returns `value` as an int, or raises if it is not an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be a Python int >= {minimum}, got {value!r} of type "
            f"{type(value).__name__}; pass a plain integer such as {name}={max(minimum, 8)}."
        )
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}.")
    return int(value)


def check_unit_interval(name: str, value, *, open_interval: bool = False) -> float:
    """Returns `value` as a float, or raises if it is not a real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a Python float in [0, 1], got {value!r} of type "
            f"{type(value).__name__}."
        )
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must lie in [0, 1], got {value}.")
    if open_interval and value in (0.0, 1.0):
        raise ValueError(
            f"`{name}` must lie strictly inside (0, 1) here, got {value}: a learnable "
            "value is kept in (0, 1) by a sigmoid, which cannot start at an endpoint."
        )
    return value


def check_distribution(q, *, objective: str, needs_reparameterization: bool) -> None:
    """Checks the inference distribution q(z|x) handed to an objective."""
    if not isinstance(q, tfd.Distribution):
        raise TypeError(
            f"`q` must be a tfp.distributions.Distribution, got {type(q).__name__}; "
            "build q(z|x) from the encoder's outputs, e.g. "
            "tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)."
        )
    if not isinstance(q.dtype, tf.dtypes.DType) or not q.dtype.is_floating:
        raise TypeError(
            f"`q` ({q.name}) must have a single floating-point event, got dtype {q.dtype}; "
            "structured (joint) or discrete latents are not supported."
        )
    batch_rank = q.batch_shape.rank
    if batch_rank != 1:
        hint = ""
        if batch_rank is not None and batch_rank > 1:
            hint = (
                " If the trailing batch dimensions are latent dimensions, wrap it: "
                f"tfd.Independent(q, reinterpreted_batch_ndims={batch_rank - 1})."
            )
        raise ValueError(
            f"`q` ({q.name}) must have batch shape [B], one distribution per data point, "
            f"got batch shape {q.batch_shape}.{hint}"
        )
    if needs_reparameterization and q.reparameterization_type != tfd.FULLY_REPARAMETERIZED:
        raise ValueError(
            f"{objective} differentiates through the samples z ~ q, but `q` "
            f"({type(q).__name__} '{q.name}') is not fully reparameterized "
            f"(reparameterization_type={q.reparameterization_type}). Use a reparameterized "
            "family such as Normal, MultivariateNormalTriL or a TransformedDistribution of "
            "one, or use RWS, whose inference update needs only log q."
        )
