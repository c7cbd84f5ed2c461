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
    "check_log_joint",
    "check_log_joint_output",
    "check_seed",
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


def check_log_joint(log_joint) -> None:
    """Checks that `log_joint` is a callable z -> log p(x, z)."""
    if not callable(log_joint):
        raise TypeError(
            f"`log_joint` must be a callable z -> log p(x, z), got "
            f"{type(log_joint).__name__}; see mcobjectives.make_log_joint."
        )


def check_seed(seed) -> None:
    """Checks that a stateless seed was given."""
    if seed is None:
        raise TypeError(
            "`seed` is required: pass an int or a shape-[2] integer tensor (a stateless "
            "seed); split a fresh one per step, e.g. with "
            "tf.random.experimental.stateless_split."
        )


def check_log_joint_output(log_p, q, num_samples: int) -> tf.Tensor:
    """Checks log p(x, z) returned for `num_samples` draws of q: shape [S, B], q's dtype."""
    if not isinstance(log_p, (tf.Tensor, tf.Variable)) and not hasattr(log_p, "dtype"):
        raise TypeError(f"`log_joint` must return a tensor, got {type(log_p).__name__}.")
    log_p = tf.convert_to_tensor(log_p)
    if log_p.dtype != q.dtype:
        raise TypeError(
            f"`log_joint` returned {log_p.dtype.name} but `q` ({q.name}) has dtype "
            f"{q.dtype.name}: build the model and q in the same dtype."
        )
    expected = tf.TensorShape([num_samples]).concatenate(q.batch_shape)
    if not log_p.shape.is_compatible_with(expected):
        raise ValueError(
            f"`log_joint` returned shape {log_p.shape}, expected [num_samples, batch] = "
            f"{expected}: log p(x, z) must sum over the event dimensions of x and z "
            "(e.g. wrap per-dimension distributions in tfd.Independent) and keep the "
            "sample and batch axes."
        )
    return tf.ensure_shape(log_p, expected)
