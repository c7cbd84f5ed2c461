"""Numerically stable functions of log importance weights, along the sample axis.

Every function here normalizes over the sample axis of each data point only (axis 0
by default: log weights are laid out [num_samples, batch]), never across the batch.

Zero weights. A log weight of -inf (log p(x, z) = -inf: a sample outside the support of
a bounded prior or likelihood) is a weight of exactly 0, and every function here gives
the limit in which that weight tends to 0: the sample contributes nothing, with no
0 * -inf or -inf - (-inf) formed on the way. Where every weight of a data point is 0
the normalized weights and the effective sample size are 0 (no sample carries weight)
and `log_mean_exp` is -inf. A NaN log weight gives NaN.
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = [
    "effective_sample_size",
    "leave_one_out_logsumexp",
    "log_mean_exp",
    "max_log_weight",
    "normalized_weights",
]


def log_mean_exp(log_weights: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """log (1/K) sum_k exp(log_weights_k): the IWAE bound of each data point."""
    num = tf.cast(tf.shape(log_weights)[axis], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=axis) - tf.math.log(num)


def normalized_weights(log_weights: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """w~_k = w_k / sum_j w_j, the self-normalized weights of each data point.

    A weight of 0 (log weight -inf) gets w~ = 0; where every weight is 0, every w~ is 0
    (the softmax would be 0 / 0).
    """
    log_weights = tf.convert_to_tensor(log_weights)
    normalized = tf.nn.softmax(log_weights, axis=axis)
    all_zero = tf.reduce_all(log_weights == -math.inf, axis=axis, keepdims=True)
    return tf.where(all_zero, tf.zeros_like(normalized), normalized)


def max_log_weight(log_weights: tf.Tensor, axis: int = 0, keepdims: bool = False) -> tf.Tensor:
    """The largest log weight along `axis`, or 0 where every weight is 0 (all -inf).

    The shift that log-sum-exp style computations subtract: log w - max would be
    -inf - (-inf) = NaN where every log weight is -inf, while log w - 0 keeps them -inf.
    """
    x_max = tf.reduce_max(log_weights, axis=axis, keepdims=keepdims)
    return tf.where(tf.math.is_finite(x_max), x_max, tf.zeros_like(x_max))


def effective_sample_size(log_weights: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """ESS = (sum_k w_k)^2 / sum_k w_k^2 (Rainforth et al. eq. 19), in [1, K].

    The maximum log weight is subtracted first: ESS is invariant to it, and log weights
    of magnitude ~1e3 would otherwise cost float32 about 1e-4 relative accuracy. Zero
    weights do not count; where every weight is 0 the ESS is 0.
    """
    log_weights = tf.convert_to_tensor(log_weights)
    shifted = log_weights - tf.stop_gradient(max_log_weight(log_weights, axis=axis, keepdims=True))
    ess = tf.exp(
        2.0 * tf.reduce_logsumexp(shifted, axis=axis)
        - tf.reduce_logsumexp(2.0 * shifted, axis=axis)
    )
    all_zero = tf.reduce_all(log_weights == -math.inf, axis=axis)
    return tf.where(all_zero, tf.zeros_like(ess), ess)


def leave_one_out_logsumexp(x: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """out_i = log sum_{j != i} exp(x_j) along `axis`, in O(K) time and memory.

    Subtracting a term from the total loses all precision when that term dominates,
    so the entry holding the maximum is computed from the other entries directly, and
    every other entry i as m + log(sum_j exp(x_j - m) - exp(x_i - m)), m the maximum:
    there the subtracted term is at most the maximum's share (1), and the difference
    is at least 1, so the cancellation costs at most a factor two in relative error.

    Args:
      x: a tensor with at least two entries along `axis`.
      axis: the axis to leave entries out of.

    Returns:
      A tensor of the shape of `x`.
    """
    x = tf.convert_to_tensor(x)
    rank = x.shape.rank
    axis = axis % rank
    if axis != 0:
        perm = [axis] + [i for i in range(rank) if i != axis]
        x = tf.transpose(x, perm)
    num = x.shape[0]
    if num is not None and num < 2:
        raise ValueError(f"`x` needs at least two entries along axis {axis}, got {num}.")
    is_max = tf.one_hot(
        tf.argmax(x, axis=0), tf.shape(x)[0], axis=0, on_value=True, off_value=False
    )
    # Entries of -inf (zero weights) are left out of every sum; where all are -inf the
    # shift is 0, so that every out_i is log 0 = -inf rather than -inf - (-inf).
    x_max = max_log_weight(x, axis=0)
    # Entries other than the maximum: the total minus their own term.
    shifted = tf.exp(x - x_max)
    total = tf.reduce_sum(shifted, axis=0)
    others = x_max + tf.math.log(total - shifted)
    # The maximum's entry: the log-sum-exp of everything else.
    without_max = tf.where(is_max, tf.constant(-math.inf, x.dtype), x)
    at_max = tf.reduce_logsumexp(without_max, axis=0)
    out = tf.where(is_max, at_max, others)
    if axis != 0:
        out = tf.transpose(out, tf.math.invert_permutation(perm))
    return out
