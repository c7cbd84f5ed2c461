"""Gradient estimators and their statistics over many seeds: mean, variance, SNR, DSNR,
bias against a reference and RMSE against a true gradient (see `mcobjectives.diagnostics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from mcobjectives.core import checks
from mcobjectives.core.objective import ObjectiveResult
from mcobjectives.diagnostics.finite import check_finite, check_finite_estimates, leaf_label
from mcobjectives.diagnostics.signal_to_noise import (
    directional_ratios,
    quartiles,
    ratio,
    snr,
    unit,
)
from mcobjectives.sampling import stateless_seed

__all__ = [
    "GradientEstimator",
    "GradientStatistics",
    "gradient_estimates",
    "gradient_statistics",
    "make_gradient_estimator",
]

GradientEstimator = Callable[[tf.Tensor], Any]
"""A function from a shape-[2] int32 stateless seed to one gradient estimate (a nest)."""

_OWN_MEAN = "mean"


class GradientStatistics(NamedTuple):
    """Statistics of R gradient estimates; nests mirror the estimator's output.

    Attributes:
      num_estimates: R.
      mean: per-parameter sample mean (float64 arrays).
      variance: per-parameter unbiased sample variance.
      snr: per-parameter |mean| / sqrt(variance) (inf where the variance is 0).
      dsnr: per leaf, the mean over estimates of ||Delta_par|| / ||Delta_perp||; None
        unless requested; NaN for a leaf of one number, or whose own mean is 0.
      dsnr_quartiles: per leaf, the (25%, 75%) quantiles of those ratios.
      squared_bias: per-parameter (mean - reference mean)^2; None without a reference.
      bias_t_statistic: per-parameter paired t statistic of estimate - reference
        (mean difference over its standard error); 0 where the two are identical.
      reference_mean: per-parameter mean of the reference estimator.
      reference_variance: per-parameter variance of the reference estimator.
      rmse: per leaf, sqrt(mean over estimates of ||Delta - g||^2); None without g.
      rmse_quartiles: per leaf, the (25%, 75%) quantiles of ||Delta - g||.
      estimates: every estimate, [R, ...] per leaf, if `keep_estimates`; else None.
    """

    num_estimates: int
    mean: Any
    variance: Any
    snr: Any
    dsnr: Any = None
    dsnr_quartiles: Any = None
    squared_bias: Any = None
    bias_t_statistic: Any = None
    reference_mean: Any = None
    reference_variance: Any = None
    rmse: Any = None
    rmse_quartiles: Any = None
    estimates: Any = None


def make_gradient_estimator(
    loss_fn: Callable[[tf.Tensor], tf.Tensor | ObjectiveResult],
    variables: Any,
) -> GradientEstimator:
    """The estimator seed -> -d loss_fn(seed) / d variables, the gradient of the bound.

    Estimates are ascent directions of the bound (minus the loss gradient), the sign
    of the papers' Delta: a direction, a true gradient or a reference then has the
    bound's sign.

    Args:
      loss_fn: seed -> a scalar loss, or an `ObjectiveResult` (its `loss` is used),
        e.g. `lambda seed: objective(q_fn(), log_joint, seed=seed)`. It must build its
        distributions inside the call so that the tape sees the variables.
      variables: a nest (list, dict, ...) of `tf.Variable`s or Keras 3 variables (e.g.
        `model.inference_variables`); the estimate has the same structure. Unconnected
        variables get zeros.
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable seed -> loss, got {type(loss_fn)}.")
    flat = [_tf_variable(v) for v in tf.nest.flatten(variables)]
    if not flat:
        raise ValueError("`variables` is empty: pass the variables to differentiate.")

    def estimator(seed):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(flat)
            out = loss_fn(seed)
        loss = out.loss if isinstance(out, ObjectiveResult) else out
        grads = tape.gradient(loss, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.nest.pack_sequence_as(variables, [-g for g in grads])

    return estimator


def _tf_variable(v) -> tf.Variable:
    """`v` if a tf.Variable; for a Keras 3 variable, the tf.Variable that stores it.

    A Keras 3 variable (TensorFlow backend) is not a tf.Variable and `GradientTape.watch`
    refuses it, but the layers read the tf.Variable it holds, its `.value`, so watching
    that one gives the gradient. Read by duck typing, so that the diagnostics need no
    Keras import (a tf.Variable's own `value` is a method, not a variable).
    """
    if isinstance(v, tf.Variable):
        return v
    stored = getattr(v, "value", None)
    if isinstance(stored, tf.Variable):
        return stored
    raise TypeError(
        f"`variables` must hold tf.Variables (or Keras variables), got {type(v).__name__}: "
        "wrap parameter tensors in tf.Variable (the estimator differentiates w.r.t. variables)."
    )


def _check_estimator(name: str, estimator) -> None:
    if not callable(estimator):
        raise TypeError(
            f"`{name}` must be a callable seed -> nest of gradient tensors, got "
            f"{type(estimator).__name__}; see mcobjectives.diagnostics.make_gradient_estimator."
        )


def _split_seeds(seed, num_estimates: int) -> tf.Tensor:
    seed = stateless_seed(seed)
    return tf.cast(tf.random.experimental.stateless_split(seed, num_estimates), tf.int32)


class _Sampler:
    """Draws chunks of estimates of one or more estimators on the same seeds."""

    def __init__(self, estimators: Sequence[GradientEstimator], jit_compile: bool):
        # The library's samplers vectorize fully; ops pfor cannot vectorize (TF's own
        # stateless RNG, used by distributions `sampling` does not recognise) run as a
        # while loop, with a warning from TensorFlow.
        def draw(seeds):
            return tf.vectorized_map(
                lambda s: tuple(f(s) for f in estimators), seeds, fallback_to_while_loop=True
            )

        self._draw = tf.function(draw, jit_compile=jit_compile)
        self.structure = None  # the first estimator's output nest, once drawn

    def __call__(self, seeds: tf.Tensor) -> list:
        out = self._draw(seeds)
        self.structure = out[0]
        return [[np.asarray(t, np.float64) for t in tf.nest.flatten(o)] for o in out]


def _sampler(estimator, reference, jit_compile: bool) -> _Sampler:
    """The traced sampler of these estimators, kept on `estimator` itself when possible.

    Calling `gradient_statistics` again with the same estimator (at other parameter
    values, say) then reuses its trace, and the trace lives as long as the estimator.
    """
    cache = getattr(estimator, "_mcobjectives_samplers", None)
    if cache is None:
        cache = {}
        try:
            estimator._mcobjectives_samplers = cache
        except AttributeError:  # e.g. a bound method: no caching
            pass
    key = (reference, jit_compile)
    if key not in cache:
        estimators = [estimator] if reference is None else [estimator, reference]
        cache[key] = _Sampler(estimators, jit_compile)
    return cache[key]


class _Moments:
    """Running count, mean and sum of squared deviations of [n, ...] chunks (Chan et al.)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def update(self, chunk: np.ndarray) -> None:
        n = chunk.shape[0]
        mean = chunk.mean(axis=0)
        m2 = ((chunk - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / (self.count - 1)


def _own_unit(mean: np.ndarray) -> np.ndarray | None:
    """The unit direction of an estimator's mean; None (DSNR NaN) if 0 or one number."""
    norm = np.linalg.norm(mean)
    if mean.size < 2 or norm == 0 or not np.isfinite(norm):
        return None
    return mean / norm


def _as_leaves(name: str, value, count: int) -> list[np.ndarray]:
    leaves = tf.nest.flatten(value)
    if len(leaves) != count:
        raise ValueError(
            f"`{name}` has {len(leaves)} leaves but the estimator returns {count}: give it "
            "the estimator's structure."
        )
    return [np.asarray(leaf, np.float64) for leaf in leaves]


def _check_shapes(name: str, leaves: list[np.ndarray], shapes: list[tuple]) -> None:
    for i, (leaf, shape) in enumerate(zip(leaves, shapes, strict=True)):
        if leaf.shape != shape:
            raise ValueError(
                f"`{name}` leaf {i} has shape {leaf.shape}, but the estimate's is {shape}."
            )


def gradient_statistics(
    estimator: GradientEstimator,
    num_estimates: int,
    seed: int | Sequence[int] | np.ndarray | tf.Tensor,
    *,
    chunk_size: int = 256,
    reference: GradientEstimator | None = None,
    dsnr_direction: Any = None,
    true_gradient: Any = None,
    keep_estimates: bool = False,
    jit_compile: bool = False,
    max_stored_elements: int = 2**26,
) -> GradientStatistics:
    """Per-parameter mean, variance and SNR of `num_estimates` gradient estimates.

    Args:
      estimator: seed -> one gradient estimate, a nest of float tensors (see
        `make_gradient_estimator`). It is traced once per chunk shape under
        `tf.vectorized_map`, so it must be traceable (no Python side effects).
      num_estimates: R >= 2, the number of independent estimates.
      seed: a stateless seed (int or shape-[2] integer tensor); estimate r uses the
        r-th of `tf.random.experimental.stateless_split(seed, R)`.
      chunk_size: estimates per vectorized computation; bounds memory. Default 256.
      reference: an optional second estimator, evaluated on the same seeds (paired):
        gives `squared_bias`, `bias_t_statistic`, `reference_mean` and
        `reference_variance` (e.g. IWAE's estimator as the reference of STL's).
      dsnr_direction: None (no DSNR), "mean" (u = the estimator's own mean), or a nest
        like the estimate giving u per leaf (e.g. the mean of another estimator).
      true_gradient: an optional nest like the estimate: gives `rmse`.
      keep_estimates: also return every estimate (R times the estimate's size).
      jit_compile: compile each chunk with XLA.
      max_stored_elements: for dsnr_direction="mean", estimates up to this many
        numbers are kept for the DSNR pass; beyond it they are drawn again.

    Returns:
      A `GradientStatistics` of float64 NumPy arrays and floats.

    Raises:
      ValueError: at the first chunk holding an estimate (of `estimator` or `reference`)
        with NaN or inf, naming how many of its estimates, in which leaves, and the first
        one's index; or a `true_gradient` or `dsnr_direction` holding NaN or inf.
    """
    _check_estimator("estimator", estimator)
    if reference is not None:
        _check_estimator("reference", reference)
    num_estimates = checks.check_count("num_estimates", num_estimates, minimum=2)
    chunk_size = checks.check_count("chunk_size", chunk_size)
    max_stored_elements = checks.check_count("max_stored_elements", max_stored_elements, 0)
    checks.check_seed(seed)
    for name, flag in (("keep_estimates", keep_estimates), ("jit_compile", jit_compile)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {flag!r}.")
    own_mean = isinstance(dsnr_direction, str)
    if own_mean and dsnr_direction != _OWN_MEAN:
        raise ValueError(
            f'`dsnr_direction` must be None, "mean" or a nest of arrays, got {dsnr_direction!r}.'
        )

    seeds = _split_seeds(seed, num_estimates)
    sampler = _sampler(estimator, reference, jit_compile)
    starts = range(0, num_estimates, chunk_size)

    moments = reference_moments = difference_moments = None
    units = truth = shapes = None
    ratios, errors, kept = [], [], []
    for start in starts:
        drawn = sampler(seeds[start : start + chunk_size])
        chunk = drawn[0]
        if moments is None:
            shapes = [c.shape[1:] for c in chunk]
            moments = [_Moments() for _ in chunk]
            if reference is not None:
                _check_shapes("reference", [r[0] for r in drawn[1]], shapes)
                reference_moments = [_Moments() for _ in chunk]
                difference_moments = [_Moments() for _ in chunk]
            if dsnr_direction is not None and not own_mean:
                directions = _as_leaves("dsnr_direction", dsnr_direction, len(chunk))
                _check_shapes("dsnr_direction", directions, shapes)
                labels = checks.leaf_paths(sampler.structure, len(chunk))
                units = [
                    unit(d, f"`dsnr_direction` ({leaf_label(p)})")
                    for d, p in zip(directions, labels, strict=True)
                ]
            if true_gradient is not None:
                truth = _as_leaves("true_gradient", true_gradient, len(chunk))
                _check_shapes("true_gradient", truth, shapes)
                for t, p in zip(
                    truth, checks.leaf_paths(sampler.structure, len(chunk)), strict=True
                ):
                    check_finite(t, f"`true_gradient` ({leaf_label(p)})")
        paths = checks.leaf_paths(sampler.structure, len(chunk))
        check_finite_estimates("estimator", chunk, paths, start, num_estimates)
        if reference is not None:
            check_finite_estimates("reference", drawn[1], paths, start, num_estimates)
        for i, leaf in enumerate(chunk):
            moments[i].update(leaf)
        if reference is not None:
            for i, (leaf, ref) in enumerate(zip(chunk, drawn[1], strict=True)):
                reference_moments[i].update(ref)
                difference_moments[i].update(leaf - ref)
        if units is not None:
            ratios.append([directional_ratios(c, u) for c, u in zip(chunk, units, strict=True)])
        if truth is not None:
            errors.append(
                [
                    np.linalg.norm((c - t).reshape(c.shape[0], -1), axis=1)
                    for c, t in zip(chunk, truth, strict=True)
                ]
            )
        if keep_estimates or (own_mean and _fits(num_estimates, shapes, max_stored_elements)):
            kept.append(chunk)

    if own_mean:
        units = [_own_unit(m.mean) for m in moments]
        if kept:
            chunks = kept
        else:
            chunks = (sampler(seeds[s : s + chunk_size])[0] for s in starts)
        ratios = [
            [directional_ratios(c, u) for c, u in zip(chunk, units, strict=True)]
            for chunk in chunks
        ]

    def pack(leaves):
        return tf.nest.pack_sequence_as(sampler.structure, list(leaves))

    def per_leaf(per_chunk):
        return [np.concatenate(column) for column in zip(*per_chunk, strict=True)]

    stats = dict(
        num_estimates=num_estimates,
        mean=pack(m.mean for m in moments),
        variance=pack(m.variance for m in moments),
        snr=pack(snr(m.mean, m.variance) for m in moments),
    )
    if ratios:
        leaves = per_leaf(ratios)
        stats["dsnr"] = pack(float(r.mean()) for r in leaves)
        stats["dsnr_quartiles"] = pack(quartiles(r) for r in leaves)
    if reference is not None:
        stats["squared_bias"] = pack(d.mean**2 for d in difference_moments)
        stats["bias_t_statistic"] = pack(
            np.sign(d.mean) * ratio(d.mean, np.sqrt(d.variance / d.count))
            for d in difference_moments
        )
        stats["reference_mean"] = pack(r.mean for r in reference_moments)
        stats["reference_variance"] = pack(r.variance for r in reference_moments)
    if errors:
        leaves = per_leaf(errors)
        stats["rmse"] = pack(float(np.sqrt(np.mean(e**2))) for e in leaves)
        stats["rmse_quartiles"] = pack(quartiles(e) for e in leaves)
    if keep_estimates:
        stats["estimates"] = pack(per_leaf(kept))
    return GradientStatistics(**stats)


def _fits(num_estimates: int, shapes, max_stored_elements: int) -> bool:
    return num_estimates * sum(math.prod(s) for s in shapes) <= max_stored_elements


def gradient_estimates(
    estimator: GradientEstimator,
    num_estimates: int,
    seed,
    *,
    chunk_size: int = 256,
    jit_compile: bool = False,
) -> Any:
    """Every one of `num_estimates` estimates, as a nest of float64 arrays [R, ...].

    The same draws as `gradient_statistics` with the same seed (e.g. for histograms).
    """
    return gradient_statistics(
        estimator,
        num_estimates,
        seed,
        chunk_size=chunk_size,
        keep_estimates=True,
        jit_compile=jit_compile,
    ).estimates
