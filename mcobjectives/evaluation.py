"""Evaluation: the many-sample estimate of log p(x) in bounded memory; active latent units."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _checks, _validation, limits, sampling
from mcobjectives.base import LogJoint

tfd = tfp.distributions

__all__ = ["active_units", "log_marginal_estimate"]


def _chunk_log_sum_exp(q, log_joint, num_samples, seed, validate_args=False):
    """log sum_k w_k over one chunk of `num_samples` draws, [B]."""
    z = sampling.sample(q, num_samples, seed)
    log_q = _checks.log_prob(q, z)
    log_p = _checks.call_log_joint(log_joint, z, log_q)
    log_p = _checks.check_log_joint_output(log_p, log_q, num_samples)
    log_w = log_p - log_q
    if validate_args:
        log_w = _checks.with_assertion(
            _validation.finite_log_weights_assertion(z, log_q, log_p, "log_marginal_estimate"),
            log_w,
        )
    log_w = _validation.nan_for_positive_infinity(log_w)  # as in the objectives
    return tf.stop_gradient(tf.reduce_logsumexp(log_w, axis=0))


def _fold(total, chunk):
    """log(exp(total) + exp(chunk)): the running log-sum-exp, [B]."""
    return tf.math.reduce_logsumexp(tf.stack([total, chunk]), axis=0)


def _estimate_seed(seed) -> tf.Tensor:
    """The shape-[2] int32 seed of `log_marginal_estimate` (per-example seeds refused).

    The seed as `log_marginal_estimate` reads it, so that a caller may convert it once
    (e.g. before a `tf.function`, whose trace a Python int seed would key) without
    changing the draws.
    """
    _checks.check_seed(seed)
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
    seed,
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
    num_samples = _checks.check_count("num_samples", num_samples)
    chunk_size = min(_checks.check_count("chunk_size", chunk_size), num_samples)
    _checks.check_distribution(
        q, objective="log_marginal_estimate", needs_reparameterization=False, allow_empty=True
    )
    # Memory is one chunk's, whatever num_samples.
    limits.check_sample_memory(q, chunk_size, argument="chunk_size")
    _checks.check_log_joint(log_joint)
    log_joint = _checks.bind_log_joint(log_joint, q)
    seed = _estimate_seed(seed)
    if not isinstance(validate_args, bool):
        raise TypeError(f"`validate_args` must be a bool, got {validate_args!r}.")
    num_full, remainder = divmod(num_samples, chunk_size)
    seeds = tf.random.experimental.stateless_split(seed, num_full + (1 if remainder else 0))

    # The total's dtype and shape are those of log q, which for a structured or
    # discrete q are not q.dtype and q.batch_shape: read from log q of one draw. Only
    # its dtype and shape are used, so a graph with a static batch size prunes it.
    probe = _checks.log_prob(q, sampling.sample(q, 1, seeds[0]))
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


def active_units(posterior_means, threshold: float = 1e-2):
    """The number of active latent units (Burda et al. 2016, section 5.2).

    Unit i is active if A_i = Cov_x(E_{q(z|x)}[z_i]) > `threshold` (1e-2 in the paper):
    its posterior mean varies across the data set.

    Args:
      posterior_means: [N, D], E_q[z] for each of N >= 2 data points (e.g. `q.mean()`); or,
        for structured latents, a structure (a list, a dict, ...) of [N, D_i] tensors,
        one per latent leaf (e.g. each layer's posterior mean).
      threshold: the activity threshold, > 0.

    Returns:
      An int32 scalar; for a structure, the same structure of int32 scalars (the
      active units of each leaf).

    Raises:
      ValueError: for means holding NaN or inf (a unit whose activity is NaN is neither
        active nor inactive), naming how many entries, in which units and data points,
        where the values are known (eagerly, or constants); in a `tf.function` the check
        is a run-time assertion (`tf.errors.InvalidArgumentError` with the counts),
        which XLA compiles away: count active units eagerly, on the means it returns.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold <= 0:
        raise ValueError(f"`threshold` must be a positive float, got {threshold!r}.")
    if not _is_structure(posterior_means):
        return _active_units(posterior_means, threshold, "`posterior_means`")
    leaves = tf.nest.flatten(posterior_means)
    if not leaves:
        raise ValueError("`posterior_means` is an empty structure: give one [N, D] per leaf.")
    counts = [
        _active_units(leaf, threshold, f"Leaf '{path}' of `posterior_means`")
        for path, leaf in zip(_leaf_paths(posterior_means, len(leaves)), leaves, strict=True)
    ]
    return tf.nest.pack_sequence_as(posterior_means, counts)


def _leaf_paths(structure, count: int) -> list[str]:
    """A name per leaf ("z1", "0", "layer/z2"), in `tf.nest.flatten` order."""

    def walk(item, prefix):
        if isinstance(item, Mapping):
            for key in sorted(item):  # tf.nest's order
                yield from walk(item[key], [*prefix, str(key)])
        elif isinstance(item, tuple) and hasattr(item, "_fields"):
            for key, value in zip(item._fields, item, strict=True):
                yield from walk(value, [*prefix, key])
        elif isinstance(item, (list, tuple)):
            for index, value in enumerate(item):
                yield from walk(value, [*prefix, str(index)])
        else:
            yield "/".join(prefix)

    paths = list(walk(structure, []))
    return paths if len(paths) == count else [str(i) for i in range(count)]


def _is_structure(value) -> bool:
    """Whether `value` is a structure of [N, D_i] arrays rather than one array-like.

    A dict is a structure; a list or tuple is one when it holds tensors or arrays (a
    nested list of Python numbers is a single [N, D] array).
    """
    if isinstance(value, Mapping):
        return True
    if not isinstance(value, (list, tuple)):
        return False
    return any(
        isinstance(leaf, (tf.Tensor, tf.Variable, np.ndarray)) for leaf in tf.nest.flatten(value)
    )


def _active_units(posterior_means, threshold: float, what: str) -> tf.Tensor:
    try:
        posterior_means = tf.convert_to_tensor(posterior_means)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{what} must be an [N, D] array of numbers, got {type(posterior_means).__name__}."
        ) from error
    if posterior_means.shape.rank != 2:
        raise ValueError(
            f"{what} must have shape [N, D], got {posterior_means.shape}: stack "
            "E_q[z] of every data point along the first axis."
        )
    if not (
        posterior_means.dtype.is_floating
        or posterior_means.dtype.is_integer
        or posterior_means.dtype == tf.bool
    ):
        raise TypeError(
            f"{what} must hold numbers (posterior means), got dtype {posterior_means.dtype.name}."
        )
    num_points = posterior_means.shape[0]
    if num_points is not None and num_points < 2:
        raise ValueError(
            f"{what} has N = {num_points} data points: the activity of a unit is the "
            "variance of its posterior mean across data points, which needs N >= 2."
        )
    if not posterior_means.dtype.is_floating:
        posterior_means = tf.cast(posterior_means, tf.float64)
    # A unit with a NaN or inf mean has activity NaN, which no threshold compares with:
    # refused, not counted as inactive. Known values are checked here; a graph's at run
    # time (an assertion, which XLA compiles away).
    known = tf.get_static_value(posterior_means)
    if known is not None:
        bad = ~np.isfinite(known)
        if bad.any():

            def listing(indices):
                shown = ", ".join(str(i) for i in indices[:10])
                return shown + (", ..." if len(indices) > 10 else "")

            units, rows = np.flatnonzero(bad.any(axis=0)), np.flatnonzero(bad.any(axis=1))
            raise ValueError(
                f"{what} holds {int(np.isnan(known).sum())} NaN and "
                f"{int(np.isinf(known).sum())} inf entries, in {units.size} of its "
                f"{known.shape[1]} units (columns {listing(units)}) and {rows.size} of its "
                f"{known.shape[0]} data points (rows {listing(rows)}): the activity of such a "
                "unit (the variance of its posterior mean across data points) is NaN, neither "
                "active nor inactive. Find why q's mean is not finite for those data points."
            )
    else:
        finite = tf.math.is_finite(posterior_means)
        check = tf.debugging.Assert(
            tf.reduce_all(finite),
            [
                f"{what} holds NaN or inf entries (the activity of their units is NaN); "
                "non-finite entries, then units:",
                tf.reduce_sum(tf.cast(~finite, tf.int32)),
                tf.reduce_sum(tf.cast(~tf.reduce_all(finite, axis=0), tf.int32)),
            ],
        )
        posterior_means = _checks.with_assertion(check, posterior_means)
    activity = tf.math.reduce_variance(posterior_means, axis=0)
    return tf.reduce_sum(tf.cast(activity > threshold, tf.int32))
