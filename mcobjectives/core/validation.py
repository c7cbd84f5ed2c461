"""The opt-in run-time checks of `validate_args=True`: NaN and +inf named at their source.

By default a NaN or +inf from q's parameters or from `log_joint` propagates: the log
weights, the bound and the loss are NaN (a step the Keras model skips as non-finite).
With `validate_args=True` an objective, or `log_marginal_estimate`, checks every draw
instead and raises `tf.errors.InvalidArgumentError` naming the piece that produced the
value and the data points (batch indices) where it did, as TFP distributions'
`validate_args` do. The checks are assertions, which run eagerly and in a
`tf.function`; XLA compiles assertions away, so under `jit_compile=True` they do not
run. A log p(x, z) of -inf is not an error: it is a zero importance weight.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["finite_log_weights_assertion", "finite_value_assertion", "nan_for_positive_infinity"]


def nan_for_positive_infinity(log_weights: tf.Tensor) -> tf.Tensor:
    """log weights with +inf (log p = +inf, or log q = -inf at q's own sample) as NaN.

    +inf has no meaning as a weight; by default it propagates as NaN, as NaN does.
    """
    return tf.where(
        log_weights == float("inf"), tf.constant(float("nan"), log_weights.dtype), log_weights
    )


def _bad_points(bad: tf.Tensor) -> tf.Tensor:
    """The batch indices b with a True in bad[:, b] ([S, B] -> [n])."""
    return tf.reshape(tf.where(tf.reduce_any(bad, axis=0)), [-1])


def _non_finite_samples(z) -> tf.Tensor | None:
    """[S, B]: whether any coordinate of a continuous leaf of z is NaN or infinite."""
    flags = []
    for leaf in tf.nest.flatten(z):
        if not leaf.dtype.is_floating:
            continue
        event_axes = list(range(2, leaf.shape.rank))
        flags.append(tf.reduce_any(~tf.math.is_finite(leaf), axis=event_axes))
    if not flags:
        return None
    return tf.reduce_any(tf.stack(flags), axis=0)


def finite_log_weights_assertion(z, log_q: tf.Tensor, log_p: tf.Tensor, caller: str):
    """An op that fails where q's samples, log q or log p(x, z) are NaN or +inf.

    q is checked first: a NaN sample makes log p NaN too, and the data points named for
    `log_joint` are those where q was finite.

    Args:
      z: the samples (q's structure, leaves [S, B, *event]).
      log_q: log q(z|x), [S, B].
      log_p: log p(x, z), [S, B].
      caller: the objective's (or function's) name, for the message.
    """
    bad_q = ~tf.math.is_finite(log_q)
    samples = _non_finite_samples(z)
    if samples is not None:
        bad_q = bad_q | samples
    bad_p = (tf.math.is_nan(log_p) | (log_p == float("inf"))) & ~bad_q
    check_q = tf.debugging.Assert(
        ~tf.reduce_any(bad_q),
        [
            f"{caller} (validate_args=True): q(z|x) gave NaN or infinite samples or "
            "log-densities at the data points (batch indices) below: q's parameters are "
            "NaN or infinite there, or a scale is 0 (check the encoder's outputs).",
            _bad_points(bad_q),
        ],
        summarize=20,
    )
    with tf.control_dependencies([check_q]):
        return tf.debugging.Assert(
            ~tf.reduce_any(bad_p),
            [
                f"{caller} (validate_args=True): `log_joint` returned NaN or +inf at the "
                "data points (batch indices) below, for finite samples of q: log p(x, z) "
                "may be -inf (a zero importance weight) but not NaN or +inf (check the "
                "model's parameters and what the prior and likelihood do with these z).",
                _bad_points(bad_p),
            ],
            summarize=20,
        )


def finite_value_assertion(value: tf.Tensor, what: str):
    """An op that fails where `value` is NaN or infinite, naming `what`."""
    return tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(value)),
        [f"{what} is NaN or infinite (validate_args=True):", value],
        summarize=20,
    )
