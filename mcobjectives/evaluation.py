"""Evaluation: the many-sample estimate of log p(x) in bounded memory."""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _checks, sampling
from mcobjectives.base import LogJoint

tfd = tfp.distributions

__all__ = ["log_marginal_estimate"]


def _chunk_log_sum_exp(q, log_joint, num_samples, seed):
    z = sampling.sample(q, num_samples, seed)
    log_w = _checks.check_log_joint_output(log_joint(z), q, num_samples) - q.log_prob(z)
    return tf.reduce_logsumexp(log_w, axis=0)


def log_marginal_estimate(
    q: tfd.Distribution,
    log_joint: LogJoint,
    seed,
    num_samples: int = 5000,
    chunk_size: int = 500,
) -> tf.Tensor:
    """log p^(x) = log (1/K) sum_k w_k with K = `num_samples`, per data point.

    The IWAE bound with many samples, the estimate of log p(x) of Burda et al. (2016)
    and Rainforth et al. (2018, section 5.1; K = 5000). Samples are drawn `chunk_size`
    at a time and folded into a running log-sum-exp, so memory is bounded by one chunk,
    whatever K. No gradient flows through the result.

    Args:
      q: q(z|x), batch shape [B].
      log_joint: z [S, B, *event] -> log p(x, z) [S, B].
      seed: a stateless seed; chunk i draws with the i-th seed of
        `tf.random.experimental.stateless_split(sampling.stateless_seed(seed), num_chunks)`.
      num_samples: K >= 1.
      chunk_size: samples per chunk, >= 1 (the last chunk holds the remainder).

    Returns:
      A [B] tensor.
    """
    num_samples = _checks.check_count("num_samples", num_samples)
    chunk_size = min(_checks.check_count("chunk_size", chunk_size), num_samples)
    _checks.check_distribution(q, objective="log_marginal_estimate", needs_reparameterization=False)
    _checks.check_log_joint(log_joint)
    _checks.check_seed(seed)
    num_full, remainder = divmod(num_samples, chunk_size)
    seeds = tf.random.experimental.stateless_split(
        sampling.stateless_seed(seed), num_full + (1 if remainder else 0)
    )

    def body(i, total):
        chunk = tf.stop_gradient(_chunk_log_sum_exp(q, log_joint, chunk_size, seeds[i]))
        return i + 1, tf.math.reduce_logsumexp(tf.stack([total, chunk]), axis=0)

    init = tf.fill(q.batch_shape_tensor(), tf.constant(-math.inf, q.dtype))
    _, total = tf.while_loop(
        lambda i, _: i < num_full, body, (tf.constant(0), init), maximum_iterations=num_full
    )
    if remainder:
        chunk = tf.stop_gradient(_chunk_log_sum_exp(q, log_joint, remainder, seeds[num_full]))
        total = tf.math.reduce_logsumexp(tf.stack([total, chunk]), axis=0)
    return total - tf.constant(math.log(num_samples), q.dtype)
