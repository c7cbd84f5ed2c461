"""The number of active latent units (Burda et al. 2016, section 5.2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from mcobjectives.core import checks

__all__ = ["active_units"]


def active_units(posterior_means: Any, threshold: float = 1e-2) -> tf.Tensor | Any:
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
        for path, leaf in zip(checks.leaf_paths(posterior_means, len(leaves)), leaves, strict=True)
    ]
    return tf.nest.pack_sequence_as(posterior_means, counts)


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
        posterior_means = checks.with_assertion(check, posterior_means)
    activity = tf.math.reduce_variance(posterior_means, axis=0)
    return tf.reduce_sum(tf.cast(activity > threshold, tf.int32))
