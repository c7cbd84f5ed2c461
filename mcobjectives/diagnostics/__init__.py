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

from mcobjectives.diagnostics.gradients import (
    GradientEstimator,
    GradientStatistics,
    gradient_estimates,
    gradient_statistics,
    make_gradient_estimator,
)
from mcobjectives.diagnostics.signal_to_noise import (
    directional_snr,
    log_log_slope,
    random_direction_dsnr,
    snr,
    snr_noise_floor,
    t_statistic_summary,
)

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
