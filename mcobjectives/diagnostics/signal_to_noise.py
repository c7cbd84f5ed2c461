"""Signal-to-noise ratios of numbers at hand, their noise floors, and t-statistic summaries.

`snr` of a mean and a variance, `directional_snr` of kept estimates along a direction,
`snr_noise_floor` (the plug-in SNR of pure noise) and `random_direction_dsnr` (the DSNR
of pure noise), `t_statistic_summary` of a set of paired t statistics, and
`log_log_slope` (e.g. of SNR against K). `gradient_statistics` computes the same ratios
of the estimates it draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mcobjectives.core import checks
from mcobjectives.diagnostics.finite import check_finite, non_finite_counts

__all__ = [
    "directional_ratios",
    "directional_snr",
    "log_log_slope",
    "quartiles",
    "random_direction_dsnr",
    "ratio",
    "snr",
    "snr_noise_floor",
    "t_statistic_summary",
    "unit",
]


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0/0 = 0 and x/0 = inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.abs(numerator) / denominator
    return np.where((numerator == 0) & (denominator == 0), 0.0, out)


def unit(direction: np.ndarray, what: str) -> np.ndarray:
    """`direction` / ||direction||, refusing a non-finite or zero direction named `what`."""
    check_finite(direction, what)
    norm = np.linalg.norm(direction)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"the DSNR direction {what} has norm {norm}: it must be nonzero.")
    return direction / norm


def directional_ratios(chunk: np.ndarray, u: np.ndarray | None) -> np.ndarray:
    """||Delta_par|| / ||Delta_perp|| for each estimate of a [n, ...] chunk (NaN if no u)."""
    if u is None or u.size < 2:
        return np.full(chunk.shape[0], np.nan)
    flat = chunk.reshape(chunk.shape[0], -1)
    parallel = flat @ u.reshape(-1)
    perpendicular = np.linalg.norm(flat - parallel[:, None] * u.reshape(1, -1), axis=1)
    return ratio(parallel, perpendicular)


def quartiles(values: np.ndarray) -> tuple[float, float]:
    """The (25 %, 75 %) quantiles of `values`; NaN, NaN if every value is NaN."""
    if np.all(np.isnan(values)):
        return math.nan, math.nan
    return float(np.quantile(values, 0.25)), float(np.quantile(values, 0.75))


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
    return ratio(mean, np.sqrt(variance))


def directional_snr(estimates: Any, direction: Any) -> tuple[float, tuple[float, float]]:
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
        nan, inf = non_finite_counts(estimates)
        raise ValueError(
            f"`estimates` holds non-finite estimates: {int(rows.sum())} of the "
            f"{len(estimates)} (the first is estimate {int(np.argmax(rows))}), with {nan} NaN "
            f"and {inf} inf entries; their DSNR would be NaN. Leave them out, or find why "
            "the estimator gives them."
        )
    ratios = directional_ratios(estimates, unit(direction, "`direction`"))
    return float(np.mean(ratios)), quartiles(ratios)


def snr_noise_floor(num_estimates: int) -> float:
    """The expected plug-in SNR of R estimates of a zero-mean Gaussian gradient.

    With R independent N(0, s^2) estimates, |sample mean| / sample std = |T| / sqrt(R), T
    Student's t with nu = R - 1 degrees of freedom, so the floor is

        E|T| / sqrt(R) = sqrt(nu / (pi R)) Gamma((nu - 1) / 2) / Gamma(nu / 2)
                       = sqrt(2 / (pi R)) (1 + 3 / (4 R) + O(1 / R^2)),

    the SNR that R estimates show where the true SNR is 0 (0.008 for R = 10^4). Plug-in
    SNRs near it cannot be told from noise. inf for R = 2 (E|T| diverges for nu = 1).
    """
    num_estimates = checks.check_count("num_estimates", num_estimates, minimum=2)
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
    dim = checks.check_count("dim", dim, minimum=3)
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
