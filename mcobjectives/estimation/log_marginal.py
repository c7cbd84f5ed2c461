"""The many-sample estimate of log p(x), in the memory of one chunk of samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import limits, sampling
from mcobjectives.core import checks
from mcobjectives.core.forward import forward
from mcobjectives.core.objective import LogJoint

tfd = tfp.distributions

__all__ = ["estimate_seed", "log_marginal_estimate"]


def _chunk_log_sum_exp(q, log_joint, num_samples, seed, validate_args=False):
    """log sum_k w_k over one chunk of `num_samples` draws, [B]."""
    # The objectives' forward pass; log w is never differentiated here, so the cheapest
    # form (log q and log p at the samples themselves) serves.
    draw = forward(
        q,
        log_joint,
        num_samples,
        seed,
        caller="log_marginal_estimate",
        validate_args=validate_args,
    )
    return tf.stop_gradient(tf.reduce_logsumexp(draw.stopped, axis=0))


def _fold(total, chunk):
    """log(exp(total) + exp(chunk)): the running log-sum-exp, [B]."""
    return tf.math.reduce_logsumexp(tf.stack([total, chunk]), axis=0)


def estimate_seed(seed) -> tf.Tensor:
    """The shape-[2] int32 seed of `log_marginal_estimate` (per-example seeds refused).

    The seed as `log_marginal_estimate` reads it, so that a caller may convert it once
    (e.g. before a `tf.function`, whose trace a Python int seed would key) without
    changing the draws.
    """
    checks.check_seed(seed)
    if sampling.is_per_example_seed(seed):
        raise ValueError(
            "`seed` must be one stateless seed (an int or a shape-[2] tensor) for "
            "log_marginal_estimate, got per-example seeds of shape "
            f"{tf.convert_to_tensor(seed).shape}."
        )
    return sampling.stateless_seed(seed)


def log_marginal_estimate(
    q: tfd.Distribution,
    log_joint: LogJoint,
    seed: int | Sequence[int] | np.ndarray | tf.Tensor,
    num_samples: int = 5000,
    chunk_size: int = 500,
    validate_args: bool = False,
) -> tf.Tensor:
    """log p^(x) = log (1/K) sum_k w_k with K = `num_samples`, per data point.

    The IWAE bound with many samples, the estimate of log p(x) of Burda et al. (2016)
    and Rainforth et al. (2018, section 5.1; K = 5000). Samples are drawn `chunk_size`
    at a time and folded into a running log-sum-exp, so memory is bounded by one chunk,
    whatever K. No gradient flows through the result.

    The full chunks run in one `tf.while_loop` with a static trip count and the
    remainder chunk (if any) after it, so a graph, and an XLA computation, holds the
    chunk's computation at most twice (a full chunk and the remainder) whatever K:
    under XLA the while loop compiles to one loop over fixed-shape buffers, which
    unrolling would not bound. The running total starts at -inf, so the first fold
    returns the first chunk exactly. Eagerly the loop runs chunk by chunk in Python,
    one TensorFlow kernel per operation; wrap the call in a `tf.function` (with
    `jit_compile=True` to fuse each chunk's sampling, log densities and fold, as
    `ImportanceWeightedAutoencoder.log_marginal` does) for evaluation at scale.

    float32 Gaussian draws here read the same random bits as `sampling.sample` but
    turn them into normals by a float32 quantile (AS 241, Wichura 1988): each normal
    within 6 float32 ulps of `sampling.sample`'s, and the estimate the same up to
    float32 rounding (float64 draws are `sampling.sample`'s exactly).

    Args:
      q: q(z|x), batch shape [B]: a single distribution or a `JointDistribution`
        (structured latents; discrete leaves are allowed, q is only sampled and scored).
      log_joint: z (q's structure, leaves [S, B, *event_i]) -> log p(x, z) [S, B], in
        the dtype of log q.
      seed: a stateless seed; chunk i draws with the i-th seed of
        `tf.random.experimental.stateless_split(sampling.stateless_seed(seed), num_chunks)`.
      num_samples: K >= 1.
      chunk_size: samples per chunk, >= 1 (the last chunk holds the remainder).
      validate_args: check every chunk's samples, log q and log p(x, z) for NaN and
        +inf, raising `tf.errors.InvalidArgumentError` naming the piece and the data
        points (not under XLA, which drops assertions). By default a NaN or +inf log
        weight makes that data point's estimate NaN. A log p(x, z) of -inf is a zero
        weight, left out of the sum; the estimate is -inf where every weight is zero.

    Returns:
      A [B] tensor in the dtype of log q (empty for an empty batch).
    """
    num_samples = checks.check_count("num_samples", num_samples)
    chunk_size = min(checks.check_count("chunk_size", chunk_size), num_samples)
    checks.check_distribution(
        q, objective="log_marginal_estimate", needs_reparameterization=False, allow_empty=True
    )
    # Memory is one chunk's, whatever num_samples.
    limits.check_sample_memory(q, chunk_size, argument="chunk_size")
    checks.check_log_joint(log_joint)
    log_joint = checks.bind_log_joint(log_joint, q)
    seed = estimate_seed(seed)
    if not isinstance(validate_args, bool):
        raise TypeError(f"`validate_args` must be a bool, got {validate_args!r}.")
    num_full, remainder = divmod(num_samples, chunk_size)
    seeds = tf.random.experimental.stateless_split(seed, num_full + (1 if remainder else 0))

    # The total's dtype and shape are those of log q, which for a structured or
    # discrete q are not q.dtype and q.batch_shape: read from log q of one draw. Only
    # its dtype and shape are used, so a graph with a static batch size prunes it.
    probe = checks.log_prob(q, sampling.sample(q, 1, seeds[0]))
    total = tf.fill(tf.shape(probe)[1:], tf.constant(-math.inf, probe.dtype))

    def body(i, total):
        chunk = _chunk_log_sum_exp(q, log_joint, chunk_size, seeds[i], validate_args)
        return i + 1, _fold(total, chunk)

    _, total = tf.while_loop(
        lambda i, _: i < num_full, body, (tf.constant(0), total), maximum_iterations=num_full
    )
    if remainder:
        chunk = _chunk_log_sum_exp(q, log_joint, remainder, seeds[num_full], validate_args)
        total = _fold(total, chunk)
    return total - tf.constant(math.log(num_samples), total.dtype)
