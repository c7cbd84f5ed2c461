"""Gradient statistics of Monte Carlo estimators: SNR, DSNR, bias, variance and RMSE.

A *gradient estimator* here is a function `estimator(seed) -> nest of tensors`: one
stochastic gradient estimate per stateless seed (for instance the gradient of an
objective's bound w.r.t. a network's variables, from `make_gradient_estimator`).
`gradient_statistics` draws many independent estimates, R of them, from seeds split
once from one seed, and returns per-parameter statistics:

    mean            E[Delta]                       (sample mean over the R estimates)
    variance        Var[Delta]                     (unbiased sample variance)
    snr             |E[Delta]| / sqrt(Var[Delta])  Rainforth et al. (2018), eq. 4 [1]
    dsnr            E[ ||Delta_par|| / ||Delta_perp|| ], Delta_par = (Delta . u) u and
                    Delta_perp = Delta - Delta_par, with u = E[Delta] / ||E[Delta]||
                    (the estimator's own mean) or a given direction, e.g. the mean of
                    the K = 1000 estimator; eq. 12 of [1] (figures 3 and 4)
    squared_bias    (E[Delta] - E[Delta_ref])^2 against a reference estimator evaluated
                    on the same seeds, with the paired t statistic of the difference;
                    Tucker et al. (2019), figure 1 and section 6.1 [2]
    rmse            sqrt(E ||Delta - g||^2) against a given true gradient g; [1],
                    appendix C.2

Statistics are computed per leaf of the estimator's output: per parameter (mean,
variance, snr, squared_bias, bias_t_statistic) or per leaf as one vector (dsnr, rmse).
To take the DSNR of several tensors jointly (all of an inference network, say), return
them concatenated as one leaf.

Estimates are drawn in chunks of `chunk_size`, each chunk one vectorized computation
(`tf.vectorized_map` over the chunk's seeds, so R estimates cost a few batched kernels,
not R tape calls), and are reduced into running float64 moments (Chan et al.'s pairwise
update), so memory is bounded by one chunk. Estimate r always uses the r-th seed of
`stateless_split(seed, R)`: the result does not depend on `chunk_size`, and a
reference estimator sees exactly the draws of the estimator it is compared with.
DSNR against the estimator's own mean needs that mean first: the estimates are kept
when they fit in `max_stored_elements`, and are otherwise drawn again from the same
seeds in a second pass.

Non-finite estimates are refused, not averaged: an estimate holding NaN or inf (a
`log_joint` of NaN for some z, say) would make the mean, variance and SNR of its leaf NaN
with no word of why. `gradient_statistics` checks every chunk as it is drawn and raises a
ValueError at the first chunk holding one, naming how many of that chunk's estimates are
non-finite, in which leaves (with their NaN and inf counts), and the first such estimate's
index r, whose seed (the r-th of the split) replays it. A `reference`, a `true_gradient`
and a `dsnr_direction` are checked the same way, as is `directional_snr`'s input. These
are eager utilities (their statistics are NumPy arrays), so the checks are plain Python.

The same statistics apply to numbers at hand: `snr` of a mean and a variance,
`directional_snr` of kept estimates along a direction, `snr_noise_floor` (the plug-in SNR
of pure noise) and `random_direction_dsnr` (the DSNR of pure noise), and
`t_statistic_summary` of a set of paired t statistics.

References:
  [1] Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh. Tighter Variational Bounds
      are Not Necessarily Better. ICML 2018.
  [2] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives. ICLR 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from mcobjectives import _checks, sampling
from mcobjectives.base import ObjectiveResult
from mcobjectives.evaluation import _leaf_paths

__all__ = [
    "GradientEstimator",
    "GradientStatistics",
    "directional_snr",
    "gradient_estimates",
    "gradient_statistics",
    "log_log_slope",
    "make_gradient_estimator",
    "random_direction_dsnr",
    "snr",
    "snr_noise_floor",
    "t_statistic_summary",
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
    flat = [_as_tf_variable(v) for v in tf.nest.flatten(variables)]
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


def _as_tf_variable(v) -> tf.Variable:
    """`v` if a tf.Variable; for a Keras 3 variable, the tf.Variable that stores it.

    A Keras 3 variable (TensorFlow backend) is not a tf.Variable and `GradientTape.watch`
    refuses it, but the layers read the tf.Variable it holds, so watching that one gives
    the gradient.
    """
    if isinstance(v, tf.Variable):
        return v
    if isinstance(v, keras.Variable):
        stored = v.value
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
    seed = sampling.stateless_seed(seed)
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


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0/0 = 0 and x/0 = inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.abs(numerator) / denominator
    return np.where((numerator == 0) & (denominator == 0), 0.0, out)


def _unit(direction: np.ndarray, what: str) -> np.ndarray:
    _check_finite(direction, what)
    norm = np.linalg.norm(direction)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"the DSNR direction {what} has norm {norm}: it must be nonzero.")
    return direction / norm


def _non_finite_counts(values: np.ndarray) -> tuple[int, int]:
    """The numbers of NaN and of +-inf entries of `values`."""
    return int(np.count_nonzero(np.isnan(values))), int(np.count_nonzero(np.isinf(values)))


def _check_finite(values: np.ndarray, what: str) -> None:
    """Refuses an array holding NaN or inf, naming `what` and how many entries."""
    nan, inf = _non_finite_counts(values)
    if nan or inf:
        raise ValueError(
            f"{what} holds {nan} NaN and {inf} inf of its {values.size} entries: it must be finite."
        )


def _leaf_label(path: str) -> str:
    return f"leaf '{path}'" if path else "the estimate"


def _check_finite_estimates(
    name: str, leaves: list[np.ndarray], paths: list[str], start: int, num_estimates: int
) -> None:
    """Refuses a chunk of estimates [n, ...] per leaf (estimates start..start+n-1 of R)
    holding NaN or inf: names how many estimates, in which leaves, and the first one."""
    n = leaves[0].shape[0]
    bad_rows = np.zeros(n, bool)
    by_leaf = []
    for path, leaf in zip(paths, leaves, strict=True):
        rows = ~np.isfinite(leaf.reshape(n, -1)).all(axis=1)
        if rows.any():
            nan, inf = _non_finite_counts(leaf)
            by_leaf.append(
                f"{_leaf_label(path)}: {int(rows.sum())} estimates, {nan} NaN and {inf} inf "
                f"among their {int(rows.sum()) * (leaf.size // max(n, 1))} components"
            )
        bad_rows |= rows
    if not by_leaf:
        return
    first = start + int(np.argmax(bad_rows))
    raise ValueError(
        f"`{name}` returned non-finite gradient estimates: {int(bad_rows.sum())} of the {n} "
        f"estimates {start} to {start + n - 1} (of num_estimates = {num_estimates}) hold NaN "
        f"or inf, so their mean, variance and SNR would be NaN. By leaf: "
        f"{'; '.join(by_leaf)}. The first is estimate {first}: replay it with the seed "
        f"tf.random.experimental.stateless_split(mcobjectives.sampling.stateless_seed(seed), "
        f"{num_estimates})[{first}], and look for the draws z where log_joint or q gives NaN "
        "or inf (a NaN parameter, or a log_joint of -inf for every sample of a data point)."
    )


def _own_unit(mean: np.ndarray) -> np.ndarray | None:
    """The unit direction of an estimator's mean; None (DSNR NaN) if 0 or one number."""
    norm = np.linalg.norm(mean)
    if mean.size < 2 or norm == 0 or not np.isfinite(norm):
        return None
    return mean / norm


def _directional_ratios(chunk: np.ndarray, unit: np.ndarray | None) -> np.ndarray:
    """||Delta_par|| / ||Delta_perp|| for each estimate of a [n, ...] chunk (NaN if no u)."""
    if unit is None or unit.size < 2:
        return np.full(chunk.shape[0], np.nan)
    flat = chunk.reshape(chunk.shape[0], -1)
    parallel = flat @ unit.reshape(-1)
    perpendicular = np.linalg.norm(flat - parallel[:, None] * unit.reshape(1, -1), axis=1)
    return _ratio(parallel, perpendicular)


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


def _quartiles(values: np.ndarray) -> tuple[float, float]:
    if np.all(np.isnan(values)):
        return math.nan, math.nan
    return float(np.quantile(values, 0.25)), float(np.quantile(values, 0.75))


def gradient_statistics(
    estimator: GradientEstimator,
    num_estimates: int,
    seed,
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
    num_estimates = _checks.check_count("num_estimates", num_estimates, minimum=2)
    chunk_size = _checks.check_count("chunk_size", chunk_size)
    max_stored_elements = _checks.check_count("max_stored_elements", max_stored_elements, 0)
    _checks.check_seed(seed)
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
                labels = _leaf_paths(sampler.structure, len(chunk))
                units = [
                    _unit(d, f"`dsnr_direction` ({_leaf_label(p)})")
                    for d, p in zip(directions, labels, strict=True)
                ]
            if true_gradient is not None:
                truth = _as_leaves("true_gradient", true_gradient, len(chunk))
                _check_shapes("true_gradient", truth, shapes)
                for t, p in zip(truth, _leaf_paths(sampler.structure, len(chunk)), strict=True):
                    _check_finite(t, f"`true_gradient` ({_leaf_label(p)})")
        paths = _leaf_paths(sampler.structure, len(chunk))
        _check_finite_estimates("estimator", chunk, paths, start, num_estimates)
        if reference is not None:
            _check_finite_estimates("reference", drawn[1], paths, start, num_estimates)
        for i, leaf in enumerate(chunk):
            moments[i].update(leaf)
        if reference is not None:
            for i, (leaf, ref) in enumerate(zip(chunk, drawn[1], strict=True)):
                reference_moments[i].update(ref)
                difference_moments[i].update(leaf - ref)
        if units is not None:
            ratios.append([_directional_ratios(c, u) for c, u in zip(chunk, units, strict=True)])
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
            [_directional_ratios(c, u) for c, u in zip(chunk, units, strict=True)]
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
        stats["dsnr_quartiles"] = pack(_quartiles(r) for r in leaves)
    if reference is not None:
        stats["squared_bias"] = pack(d.mean**2 for d in difference_moments)
        stats["bias_t_statistic"] = pack(
            np.sign(d.mean) * _ratio(d.mean, np.sqrt(d.variance / d.count))
            for d in difference_moments
        )
        stats["reference_mean"] = pack(r.mean for r in reference_moments)
        stats["reference_variance"] = pack(r.variance for r in reference_moments)
    if errors:
        leaves = per_leaf(errors)
        stats["rmse"] = pack(float(np.sqrt(np.mean(e**2))) for e in leaves)
        stats["rmse_quartiles"] = pack(_quartiles(e) for e in leaves)
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


def snr(mean, variance) -> np.ndarray:
    """The signal-to-noise ratio |mean| / sqrt(variance), elementwise (Rainforth et al. eq. 4).

    SNR = |E[Delta]| / sqrt(Var[Delta]) per parameter, here of a given mean and variance
    (e.g. `GradientStatistics.reference_mean` and `.reference_variance`, or one
    estimator's mean over another's variance). 0 where both are 0 (a parameter the
    estimator never moves), inf where only the variance is 0; NaN where either is NaN.

    Raises:
      ValueError: if the shapes differ or a variance is negative.
    """
    mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
    if mean.shape != variance.shape:
        raise ValueError(f"`mean` {mean.shape} and `variance` {variance.shape} differ in shape.")
    if np.any(variance < 0):
        raise ValueError("`variance` must be >= 0 everywhere.")
    return _ratio(mean, np.sqrt(variance))


def directional_snr(estimates, direction) -> tuple[float, tuple[float, float]]:
    """The DSNR of given estimates along a direction, and the quartiles of its ratios.

    With u = direction / ||direction||, each estimate Delta splits into Delta_par =
    (Delta . u) u and Delta_perp = Delta - Delta_par, and

        DSNR = mean over estimates of ||Delta_par|| / ||Delta_perp||

    (Rainforth et al. eq. 12), what `gradient_statistics(dsnr_direction=...)` reports per
    leaf. A ratio is 0 for a zero estimate and inf for one along u.

    Args:
      estimates: [R, ...], R estimates of the direction's shape.
      direction: a nonzero array, the shape of one estimate.

    Returns:
      (DSNR, (25 % quantile, 75 % quantile) of the R ratios); NaN for a direction of one
      number (there is no perpendicular part).

    Raises:
      ValueError: for estimates or a direction holding NaN or inf (naming how many), a
        zero direction, or mismatched shapes.
    """
    estimates = np.asarray(estimates, np.float64)
    direction = np.asarray(direction, np.float64)
    if estimates.ndim < 1 or estimates.shape[1:] != direction.shape or not len(estimates):
        raise ValueError(
            f"`estimates` must be [R, *direction.shape] with R >= 1, got {estimates.shape} "
            f"for a direction of shape {direction.shape}."
        )
    rows = ~np.isfinite(estimates.reshape(len(estimates), -1)).all(axis=1)
    if rows.any():
        nan, inf = _non_finite_counts(estimates)
        raise ValueError(
            f"`estimates` holds non-finite estimates: {int(rows.sum())} of the "
            f"{len(estimates)} (the first is estimate {int(np.argmax(rows))}), with {nan} NaN "
            f"and {inf} inf entries; their DSNR would be NaN. Leave them out, or find why "
            "the estimator gives them."
        )
    ratios = _directional_ratios(estimates, _unit(direction, "`direction`"))
    return float(np.mean(ratios)), _quartiles(ratios)


def snr_noise_floor(num_estimates: int) -> float:
    """The expected plug-in SNR of R estimates of a zero-mean Gaussian gradient.

    With R independent N(0, s^2) estimates, |sample mean| / sample std = |T| / sqrt(R), T
    Student's t with nu = R - 1 degrees of freedom, so the floor is

        E|T| / sqrt(R) = sqrt(nu / (pi R)) Gamma((nu - 1) / 2) / Gamma(nu / 2)
                       = sqrt(2 / (pi R)) (1 + 3 / (4 R) + O(1 / R^2)),

    the SNR that R estimates show where the true SNR is 0 (0.008 for R = 10^4). Plug-in
    SNRs near it cannot be told from noise. inf for R = 2 (E|T| diverges for nu = 1).
    """
    num_estimates = _checks.check_count("num_estimates", num_estimates, minimum=2)
    nu = num_estimates - 1
    if nu == 1:
        return math.inf
    log_gammas = math.lgamma((nu - 1) / 2) - math.lgamma(nu / 2)
    return math.sqrt(nu / (math.pi * num_estimates)) * math.exp(log_gammas)


_T_LIMIT = 3.0  # the |t| of `fraction_abs_t_above_3`


def t_statistic_summary(t) -> dict[str, float]:
    """A summary of paired t statistics (e.g. `GradientStatistics.bias_t_statistic`).

    Exact zeros are left out: `gradient_statistics` gives t = 0 where the two estimators
    agree draw by draw, which tests nothing. Over the n others (inf included: a constant
    nonzero difference):

        count                   n
        zeros                   the number of exact zeros left out
        mean_t_squared          mean of t^2 (about 1 if every t ~ N(0, 1))
        max_abs_t               max |t|
        fraction_abs_t_above_3  the fraction with |t| > 3 (0.27 % if every t ~ N(0, 1))
        expected_max_abs_t      sqrt(2 ln(2 n)), the leading-order size of the largest |t|
                                of n independent N(0, 1)

    The last four are NaN when n = 0.

    Raises:
      ValueError: if a t statistic is NaN.
    """
    t = np.abs(np.asarray(t, np.float64).ravel())
    nan = int(np.count_nonzero(np.isnan(t)))
    if nan:
        raise ValueError(
            f"`t` holds NaN in {nan} of its {t.size} entries (the first at flat index "
            f"{int(np.argmax(np.isnan(t)))}): t statistics are numbers or +-inf."
        )
    kept = t[t != 0]
    n = int(kept.size)
    with np.errstate(over="ignore"):
        squares = kept**2
    return {
        "count": n,
        "zeros": int(t.size - n),
        "mean_t_squared": float(np.mean(squares)) if n else math.nan,
        "max_abs_t": float(np.max(kept)) if n else math.nan,
        "fraction_abs_t_above_3": float(np.mean(kept > _T_LIMIT)) if n else math.nan,
        "expected_max_abs_t": math.sqrt(2.0 * math.log(2 * n)) if n else math.nan,
    }


def random_direction_dsnr(dim: int) -> float:
    """E[|g . u| / ||g - (g . u) u||] for g ~ N(0, I_dim) and any unit u (dim >= 3).

    The DSNR of pure noise, the floor drawn in Rainforth et al.'s figures 3 and 4:
    |g . u| ~ |N(0, 1)| is independent of ||g_perp|| ~ chi_(dim - 1), so the value is
    sqrt(2/pi) * Gamma((dim - 2)/2) / (sqrt(2) Gamma((dim - 1)/2)).
    """
    dim = _checks.check_count("dim", dim, minimum=3)
    log_ratio = math.lgamma((dim - 2) / 2) - math.lgamma((dim - 1) / 2)
    return math.exp(log_ratio) / math.sqrt(math.pi)


def log_log_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """The least-squares slope of log y against log x (e.g. of SNR against K).

    Raises:
      ValueError: if fewer than two points are given, or any x or y is not positive
        and finite.
    """
    try:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"`x` and `y` must be 1-D sequences of positive numbers, got {x!r} and {y!r}."
        ) from error
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(
            f"`x` and `y` must be 1-D of one length >= 2, got shapes {x.shape} and {y.shape}."
        )
    for name, values in (("x", x), ("y", y)):
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"`{name}` must be positive and finite for a log-log fit: {values}")
    slope, _ = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope)
