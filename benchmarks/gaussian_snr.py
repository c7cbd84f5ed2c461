r"""Gradient SNR on the toy Gaussian: Rainforth et al. figures 1-4 and 10, Tucker et al. figure 1.

What it reproduces
------------------
The toy Gaussian of Rainforth et al. (2018), section 4 and appendix C (also Tucker et al.
(2019), section 6.1): z ~ N(mu, I), x | z ~ N(z, I) in D = 20 dimensions, so p(x) =
N(mu, 2I) and p(z | x) = N((x + mu) / 2, I / 2); q(z | x) = N(A x + b, sigma^2 I) with
sigma^2 = 2/3. theta = mu is the generative network, phi = (A, b) the inference network.
The data are N = 1024 points x ~ N(mu_true, 2I) with mu_true ~ N(0, I). The optimum is
mu* = the data mean, A* = I / 2, b* = mu* / 2, and the gradients are taken at a point
where every parameter is offset from its optimum by N(0, 0.01^2). `--high_variance` is
their appendix C.3: offsets N(0, 0.5^2) and sigma^2 = 1.

At that point the script draws 10^4 independent gradient estimates (`--num_estimates`) of
each estimator and setting:

* K in {1, 3, 10, 30, 100, 300, 1000} (`--ks`) for IWAE, STL, IWAE-DReG (`DReG(K, 0)`),
  RWS, RWS-DReG (`DReG(K, 1)`), JVI and JVI-DReG. JVI needs K >= 2, and RWS-DReG's
  inference gradient is exactly 0 at K = 1 (its coefficient w~ - w~^2 vanishes), so their
  grids start at K = 3;
* M in the same grid for the VAE (M samples, K = 1) and MIWAE(M, K_inner) with K_inner =
  10 (`--miwae_inner`). MIWAE's grid stops where M K_inner passes the largest K (M <= 100
  by default, `--miwae_max_samples`), so that no setting costs more than IWAE at K = 1000.

It reports, per parameter, the mean, the variance and the SNR |E[Delta]| / sigma[Delta]
(Rainforth eq. 4); per network the DSNR (eq. 12) against the estimator's own mean (figure 3)
and against E[Delta_{1,1000}] of IWAE (figure 4); the RMSE of the theta estimate to the
true gradient grad_mu log p(x) (appendix C.2, figure 10); and, for STL, IWAE-DReG and the
VAE against IWAE, RWS-DReG against RWS and JVI-DReG against JVI, the squared bias with its
paired t statistics (Tucker figure 1: both estimators of a pair see the same draws). It
fits the log-log slope of every SNR curve, puts the theory's slopes next to the measured
ones, and writes into `--out_dir` (benchmarks/results/gaussian_snr, or
gaussian_snr_high_variance with `--high_variance`):

  results.json              every number above (written atomically), slopes and checks
  fig1_histograms.png       Rainforth figure 1 (IWAE in K) and figure 9 (VAE in M)
  fig2_snr.png              figure 2 (per-dimension SNR of b and mu, +-1/2 reference
                            lines), and the median SNR of every estimator
  fig3_dsnr.png             figure 3: DSNR against each estimator's own mean
  fig4_dsnr_k1000.png       figure 4: DSNR against E[Delta_{1,1000}] of IWAE
  fig10_rmse.png            figure 10: RMSE of the mu gradient to grad_mu log p(x)
  tucker_fig1.png           Tucker figure 1: SNR, squared bias and variance over phi

and prints a summary table. Usage:

  python benchmarks/gaussian_snr.py                    # the default run
  python benchmarks/gaussian_snr.py --high_variance    # appendix C.3
  python benchmarks/gaussian_snr.py --num_estimates=2000 --ks=1,10,100 --objectives=iwae,vae
  python benchmarks/gaussian_snr.py --objectives=iwae,vimco   # any mco.objective_names()

Every estimator is built by `mco.make_objective` (`ESTIMATORS`: the papers' estimators above,
then each other registered objective with its default arguments, in K, or in M bounds of
`--miwae_inner` samples for PIWAE); results.json records each setting's `repr(objective)`.

How
---
The model is built in float64 with the library (`mco.make_log_joint` of TFP
distributions); mu, A and b are `tf.Variable`s and each estimator is
`diagnostics.make_gradient_estimator` of the objective's loss, so estimates are ascent
directions (gradients of the bound). An estimate is the nest {"theta": d/dmu [D], "phi":
d/d concat(vec(A), b) [D^2 + D], "phi_u": see Conventions}, so the DSNR is per network as
in Rainforth's figures 3-4; "b" is the last D entries of phi, and the per-dimension
curves of figure 2 are those of b and mu. `diagnostics.gradient_statistics` draws the
estimates in vectorized chunks (`--chunk_size`) from seeds split from (`--seed`, K):
every estimator at the same K or M sees the same seeds. `--seed` also fixes the data and
the offsets.

One data point per estimate. An estimate is the gradient of the bound averaged over the
first `--batch_size` data points (default 1), not over all N = 1024 as in the paper: 10^4
estimates at K = 1000 over 1024 points would take about 10^3 times as long. By Rainforth's
eqs. 9-10, the mean of an average over N points is the average of the per-point means, and
its variance is 1/N^2 times the sum of the per-point variances. Each point's mean and
variance follow the rates of Theorem 1 in K and M, so the slopes in K and M are the same,
and where the per-point means agree, averaging multiplies every SNR by about sqrt(N). One
exception is the mu gradient near the optimum: its per-point limits grad_mu log p(x_n) =
(x_n - mu) / 2 cancel over the data set (mu* is the data mean). So the paper's full-data
mu SNR is small at small K and dips before it rises (their figure 2b; `--batch_size=1024
--objectives=iwae --ks=1,3,10,30,100 --num_estimates=400` gives mu SNRs 0.84, 0.55, 0.56,
0.86, 1.22). With one point nothing cancels, and the mu SNR rises like K^(1/2) from K = 1 on.
One point also makes the problem symmetric under rotations about the line through q's mean
A x + b and the posterior mean (x + mu) / 2 (both covariances are isotropic). So every
estimator's expected b gradient points along that line, and all the expected phi gradients
are parallel: figure 4's phi panel repeats figure 3's, and STL's bias only changes the
length of its expected gradient. A `--batch_size` above 1 breaks the symmetry.

The noise floor, and E[Delta] from the DReG estimators. The plug-in SNR |mean| / std of R
estimates cannot fall below that of pure noise, E|N(0, 1)| / sqrt(R) = 0.008 for R = 10^4
(drawn in the figures). Near the optimum with one data point, IWAE's inference SNR is
about 0.06 at K = 1 and 0.002 at K = 1000 (medians over phi, via DReG below): near or
under the floor from K = 30 on, where the plug-in curve flattens (Rainforth's 1024-point
average lifts theirs above it). IWAE-DReG,
RWS-DReG and JVI-DReG have exactly the expectations of IWAE, RWS and JVI (Tucker et al.;
the paired t tests here check it), with far smaller variance. So |E[Delta]| is also
estimated from them, on the same draws: "SNR via DReG" is |mean of the DReG estimator| /
std of the original estimator. Its numerator carries the DReG estimator's noise (SNR 2.9
at K = 1000), so it follows the true SNR far below the floor, and IWAE's inference slope
is judged on it. For the same reason, the direction of figure 4, E[Delta_{1,1000}] of
IWAE, is the mean of IWAE-DReG at K = 1000 when it is in the run (the mu part is IWAE's
own mean, equal draw by draw). IWAE's own phi mean at K = 1000 is almost pure noise.
Without IWAE-DReG the direction falls back to IWAE's own mean.

Conventions. Slopes are least-squares fits of log SNR against log K (or M)
(`diagnostics.log_log_slope`), one per parameter coordinate, summarized by the median and
the interquartile range over coordinates. The theory's rates are asymptotic in K, so
IWAE's mu slope and IWAE-DReG's phi slope are fitted over K >= 100 only; all others over
the whole grid. A check "matches" when the median slope is within 0.15 of the theory. It
is "below noise floor" (not judged) when a median plug-in SNR behind the fit (for "via
DReG", the DReG estimator's) is under twice the floor. The bias t statistic of a
parameter is the mean of the paired differences over its standard error. An unbiased pair
gives t ~ N(0, 1): mean t^2 about 1, and |t| > 3 for 0.27 % of parameters. But the
parameters' t statistics are not independent: much of the noise lies along the signal
direction u (the unit expected VAE phi gradient, in closed form), so their mean t^2
scatters far more than chi^2 / n. The estimate therefore also carries "phi_u" = phi . u,
one scalar whose paired t ("t along u") is a single clean test per K. Two identities
hold draw by draw (log w's total phi derivative is the path term minus the score term):
STL = IWAE + RWS, so STL's bias against IWAE is the expected RWS update; and IWAE-DReG -
IWAE = -(RWS-DReG - RWS), so those two pairs have the same |t|. With one data point the A
part of every estimate is b's times x^T, so A's SNRs and t statistics repeat b's. The phi
estimates then span only D dimensions, and the DSNR floor is that of random directions
in D dimensions (in about min(B, D + 1) D dimensions for B points).

Run time on this machine (2 cores, shared with other jobs): about 15 minutes for the
default run (26 under a heavier load), most of it at K = 300 and 1000, and about as long
for `--high_variance`. Memory stays under 1.5 GB (chunks of 500 at K = 1000).
`--num_estimates=1000` takes about a tenth of the time.

References:
  [1] Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh. Tighter Variational Bounds
      are Not Necessarily Better. ICML 2018.
  [2] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives. ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import pathlib
import re
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import app, flags

import mcobjectives as mco
from mcobjectives import diagnostics

tfd = tfp.distributions

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
DIM = 20
NUM_POINTS = 1024
DEFAULT_GRID = (1, 3, 10, 30, 100, 300, 1000)
HISTOGRAM_GRID = (1, 10, 100, 1000)
LARGE_K = 100  # asymptotic slopes are fitted over K >= LARGE_K
TOLERANCE = 0.15  # a slope matches the theory within this
FLOOR_FACTOR = 2.0  # a check is judged only where the fitted SNRs exceed this times the floor
T_LIMIT = 3.0
NETWORKS = ("theta", "phi", "b")
RESULTS_FILE = "results.json"
FIGURES = (
    "fig1_histograms.png",
    "fig2_snr.png",
    "fig3_dsnr.png",
    "fig4_dsnr_k1000.png",
    "fig10_rmse.png",
    "tucker_fig1.png",
)


# --------------------------------------------------------------------------- estimators
@dataclasses.dataclass(frozen=True)
class Estimator:
    """One estimator of the sweep.

    Attributes:
      name: the flag name, e.g. "iwae_dreg".
      label: the papers' name, e.g. "IWAE-DReG".
      axis: "K" (samples of one bound) or "M" (bounds averaged).
      objective: the registered name it is built from with `mco.make_objective`
        (default: `name`), e.g. "dreg".
      kwargs: the other keyword arguments of `mco.make_objective`, e.g. {"alpha": 1.0}.
      reference: the estimator its bias is measured against, on the same draws.
      partner: the DReG estimator with the same expectation (for the SNR via DReG).
      min_n: the smallest K or M it takes (at least the objective's `min_num_samples`).
    """

    name: str
    label: str
    axis: str
    objective: str | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)
    reference: str | None = None
    partner: str | None = None
    min_n: int = 1

    @property
    def objective_class(self) -> type[mco.MCObjective]:
        return mco.registry.OBJECTIVES[self.objective or self.name]

    @property
    def grouped(self) -> bool:
        """Whether n is M, the number of bounds of `--miwae_inner` samples (MIWAE, PIWAE)."""
        return "num_outer" in inspect.signature(self.objective_class.__init__).parameters

    @property
    def smallest_n(self) -> int:
        """The smallest K or M of its grid."""
        if self.grouped:
            return self.min_n
        return max(self.min_n, self.objective_class.min_num_samples)


# The estimators of the papers' figures, run by default.
PAPER_ESTIMATORS = (
    Estimator("iwae", "IWAE", "K", partner="iwae_dreg"),
    Estimator("stl", "STL", "K", reference="iwae"),
    Estimator("iwae_dreg", "IWAE-DReG", "K", "dreg", {"alpha": 0.0}, reference="iwae"),
    Estimator("rws", "RWS", "K", partner="rws_dreg"),
    # At K = 1, RWS-DReG's coefficient w~ - w~^2 is 0: its phi gradient is exactly 0.
    Estimator("rws_dreg", "RWS-DReG", "K", "dreg", {"alpha": 1.0}, reference="rws", min_n=2),
    Estimator("jvi", "JVI", "K", partner="jvi_dreg"),
    Estimator("jvi_dreg", "JVI-DReG", "K", "jvi", {"dreg": True}, reference="jvi"),
    Estimator("vae", "VAE", "M", reference="iwae"),
    Estimator("miwae", "MIWAE", "M"),
)
DEFAULT_OBJECTIVES = tuple(e.name for e in PAPER_ESTIMATORS)


def _estimators() -> dict[str, Estimator]:
    """The papers' estimators, then every other registered objective with its defaults."""
    estimators = {e.name: e for e in PAPER_ESTIMATORS}
    for name in mco.objective_names():
        if name not in estimators:
            cls = mco.registry.OBJECTIVES[name]
            grouped = "num_outer" in inspect.signature(cls.__init__).parameters
            estimators[name] = Estimator(name, cls.__name__, "M" if grouped else "K")
    return estimators


ESTIMATORS = _estimators()
COLORS = {
    "iwae": "tab:blue",
    "stl": "tab:orange",
    "iwae_dreg": "tab:green",
    "rws": "tab:purple",
    "rws_dreg": "tab:brown",
    "jvi": "tab:pink",
    "jvi_dreg": "tab:gray",
    "vae": "tab:red",
    "miwae": "tab:olive",
}
OTHER_COLORS = ("tab:cyan", "black", "gold", "navy", "lime", "teal", "maroon")


def estimator_color(name: str) -> str:
    """The estimator's color in the figures."""
    if name in COLORS:
        return COLORS[name]
    others = [n for n in ESTIMATORS if n not in COLORS]
    return OTHER_COLORS[others.index(name) % len(OTHER_COLORS)]


def display_name(results: dict, name: str) -> str:
    """The estimator's name in figures and tables (with the inner K of MIWAE, PIWAE)."""
    if ESTIMATORS[name].grouped:
        return f"{ESTIMATORS[name].label}(K={results['config']['miwae_inner']})"
    return ESTIMATORS[name].label


def make_objective(name: str, n: int, miwae_inner: int) -> mco.MCObjective:
    """The library's objective of estimator `name` with K (or M) = n.

    `mco.make_objective(spec.objective, n, **spec.kwargs)`; for the estimators in M of
    grouped bounds (MIWAE) the budget is n * miwae_inner samples in n bounds.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(ESTIMATORS)}.")
    spec = ESTIMATORS[name]
    kwargs = dict(spec.kwargs)
    if spec.grouped:
        kwargs["num_outer"] = n
        n *= miwae_inner
    return mco.make_objective(spec.objective or spec.name, n, **kwargs)


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class Config:
    """What to run (the command-line flags).

    Attributes:
      num_estimates: R, the gradient estimates per setting.
      ks: the grid of K (and of M).
      objectives: the estimators to run (names of `ESTIMATORS`: the papers' estimators
        and every other registered objective).
      high_variance: Rainforth's appendix C.3 point (offsets 0.5, q covariance I).
      batch_size: data points averaged in one estimate (the first ones of the data).
      miwae_inner: K inside each of MIWAE's (and PIWAE's) M bounds.
      miwae_max_samples: MIWAE (PIWAE) runs the M of the grid with M * miwae_inner <= this
        (None: the largest K).
      chunk_size: estimates per vectorized computation.
      seed: the seed of the data, the offsets and every draw.
      jit_compile: compile each chunk with XLA.
    """

    num_estimates: int = 10_000
    ks: tuple[int, ...] = DEFAULT_GRID
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    high_variance: bool = False
    batch_size: int = 1
    miwae_inner: int = 10
    miwae_max_samples: int | None = None
    chunk_size: int = 500
    seed: int = 0
    jit_compile: bool = False

    def check(self) -> None:
        """Raises ValueError on a setting the sweep cannot run."""
        if self.num_estimates < 2:
            raise ValueError(f"num_estimates must be >= 2, got {self.num_estimates}.")
        if not self.ks or any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must be distinct integers >= 1, got {self.ks}.")
        unknown = [o for o in self.objectives if o not in ESTIMATORS]
        if unknown or not self.objectives:
            raise ValueError(
                f"unknown objectives {unknown} (or none given); choose from "
                f"{', '.join(ESTIMATORS)}."
            )
        if not 1 <= self.batch_size <= NUM_POINTS:
            raise ValueError(f"batch_size must be in [1, {NUM_POINTS}], got {self.batch_size}.")
        for name in ("miwae_inner", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    def grid(self, name: str) -> list[int]:
        """The K (or M) values `name` runs."""
        estimator = ESTIMATORS[name]
        grid = [n for n in sorted(self.ks) if n >= estimator.smallest_n]
        if estimator.grouped:
            budget = self.miwae_max_samples or max(self.ks)
            grid = [m for m in grid if m * self.miwae_inner <= budget]
        return grid


# --------------------------------------------------------------------------- the problem
@dataclasses.dataclass(frozen=True)
class Problem:
    """The toy Gaussian: data, optimum and the point where gradients are taken.

    Attributes:
      x: the N data points, [N, D].
      mu_true: the mean the data were drawn with.
      optimum: mu*, A*, b* (the data mean, I / 2, mu* / 2).
      params: the offset point, {"mu", "A", "b"}.
      offset_scale: the standard deviation of the offsets.
      sigma: q's standard deviation per dimension.
    """

    x: np.ndarray
    mu_true: np.ndarray
    optimum: dict
    params: dict
    offset_scale: float
    sigma: float


def make_problem(seed: int, high_variance: bool) -> Problem:
    """The data set and the parameter point of the default or high-variance variant."""
    data = np.random.default_rng([seed, 0])
    mu_true = data.normal(size=DIM)
    x = mu_true + math.sqrt(2.0) * data.normal(size=(NUM_POINTS, DIM))
    mu_star = x.mean(axis=0)
    optimum = {"mu": mu_star, "A": np.eye(DIM) / 2, "b": mu_star / 2}
    offset_scale = 0.5 if high_variance else 0.01
    offsets = np.random.default_rng([seed, 1])
    params = {k: v + offset_scale * offsets.normal(size=v.shape) for k, v in optimum.items()}
    sigma = 1.0 if high_variance else math.sqrt(2.0 / 3.0)
    return Problem(x, mu_true, optimum, params, offset_scale, sigma)


def signal_direction(problem: Problem, batch_size: int) -> np.ndarray:
    """u: the unit vector of the VAE's exact expected phi gradient (closed form).

    With z = A x + b + sigma eps, the ELBO's gradient w.r.t. q's mean is mu + x - 2 (A x + b)
    = 2 (posterior mean - q's mean); its mean over the batch, and its outer product with x
    for A, give E[Delta_phi] at M = K = 1. With one data point every estimator's expected
    phi gradient is parallel to it (see the module docstring).
    """
    x = problem.x[:batch_size]
    p = problem.params
    g = p["mu"] + x - 2.0 * (x @ p["A"].T + p["b"])  # [B, D]
    phi = np.concatenate([(g[:, :, None] * x[:, None, :]).mean(axis=0).ravel(), g.mean(axis=0)])
    return phi / np.linalg.norm(phi)


def make_estimator(
    objective: mco.MCObjective, variables: dict, x: tf.Tensor, sigma: float, u: np.ndarray
) -> diagnostics.GradientEstimator:
    """seed -> {"theta": d bound / d mu, "phi": d bound / d concat(vec(A), b), "phi_u": phi . u}.

    "phi_u" is phi's component along the fixed unit vector u (`signal_direction`): one
    scalar whose paired t statistic tests the bias along the signal.
    """
    scale = tf.constant(sigma, tf.float64)
    u = tf.constant(u, tf.float64)

    def loss_fn(seed):
        mu, a, b = variables["mu"], variables["A"], variables["b"]
        q = tfd.Independent(tfd.Normal(tf.linalg.matvec(a, x) + b, scale), 1)
        log_joint = mco.make_log_joint(
            tfd.MultivariateNormalDiag(mu, tf.ones_like(mu)),
            lambda z: tfd.MultivariateNormalDiag(z, tf.ones_like(z)),
            x,
        )
        return objective(q, log_joint, seed=seed)

    gradient = diagnostics.make_gradient_estimator(loss_fn, variables)

    def estimator(seed):
        g = gradient(seed)
        phi = tf.concat([tf.reshape(g["A"], [-1]), g["b"]], 0)
        return {"theta": g["mu"], "phi": phi, "phi_u": tf.reduce_sum(phi * u)}

    return estimator


# --------------------------------------------------------------------------- statistics
def snr_noise_floor(num_estimates: int) -> float:
    """E|N(0, 1)| / sqrt(R): the plug-in SNR of R estimates of a zero-mean gradient."""
    return math.sqrt(2.0 / (math.pi * num_estimates))


def directional_snr(estimates: np.ndarray, direction: np.ndarray) -> tuple[float, list]:
    """E[|Delta . u| / ||Delta - (Delta . u) u||], u = direction / ||direction|| (eq. 12).

    The same definition as `diagnostics.gradient_statistics(dsnr_direction=...)`, applied
    to kept estimates [R, P]. Returns the mean and the (25 %, 75 %) quantiles.
    """
    unit = direction / np.linalg.norm(direction)
    parallel = estimates @ unit
    perpendicular = np.linalg.norm(estimates - parallel[:, None] * unit[None, :], axis=1)
    ratios = np.abs(parallel) / perpendicular
    return float(ratios.mean()), [float(q) for q in np.quantile(ratios, [0.25, 0.75])]


def _b(leaf: np.ndarray) -> np.ndarray:
    """The b part of a phi vector (its last D entries)."""
    return np.asarray(leaf)[..., -DIM:]


def t_summary(t: np.ndarray) -> dict:
    """max |t|, mean t^2 and the fraction of |t| > 3 of a set of t statistics."""
    t = np.clip(np.asarray(t, np.float64).ravel(), -1e150, 1e150)  # inf: zero-variance pairs
    return {
        "max_abs_t": float(np.max(np.abs(t))),
        "mean_t2": float(np.mean(t**2)),
        "fraction_above_3": float(np.mean(np.abs(t) > T_LIMIT)),
        "count": int(t.size),
    }


def slope_summary(ns: Sequence[int], values: np.ndarray) -> dict | None:
    """Per-coordinate log-log slopes of values [len(ns), P] against ns: median and IQR.

    Coordinates with a non-positive or non-finite value are left out. None with fewer
    than two points or no usable coordinate.
    """
    values = np.asarray(values, np.float64)
    if len(ns) < 2:
        return None
    usable = np.all(np.isfinite(values) & (values > 0), axis=0)
    slopes = [diagnostics.log_log_slope(ns, values[:, j]) for j in np.flatnonzero(usable)]
    if not slopes:
        return None
    q25, median, q75 = np.quantile(slopes, [0.25, 0.5, 0.75])
    return {
        "median": float(median),
        "q25": float(q25),
        "q75": float(q75),
        "coordinates": len(slopes),
        "n": [int(n) for n in ns],
    }


# --------------------------------------------------------------------------- theory
@dataclasses.dataclass(frozen=True)
class Check:
    """A slope the theory predicts.

    Attributes:
      objective, network: the curve (network is "theta", "phi" or "b").
      estimator: "plug_in" (|mean| / std of its own estimates) or "via_dreg".
      large_only: fit over K >= LARGE_K only (an asymptotic rate).
      expected: the theory's slope.
      source: where the theory comes from.
    """

    objective: str
    network: str
    estimator: str
    large_only: bool
    expected: float
    source: str

    @property
    def name(self) -> str:
        est = ESTIMATORS[self.objective]
        what = {"theta": "theta (mu)", "phi": "phi (A, b)", "b": "b"}[self.network]
        how = " via DReG" if self.estimator == "via_dreg" else ""
        return f"{est.label} {what} SNR{how} in {est.axis}"


CHECKS = (
    Check("iwae", "phi", "via_dreg", False, -0.5, "Rainforth eq. 6: SNR(phi) = O(sqrt(M / K))"),
    Check("iwae", "phi", "plug_in", False, -0.5, "Rainforth eq. 6 (plug-in SNR)"),
    Check("iwae", "theta", "plug_in", True, 0.5, "Rainforth eq. 5: SNR(theta) = O(sqrt(MK))"),
    Check("iwae_dreg", "phi", "plug_in", True, 0.5, "Tucker et al. section 6.1, figure 1"),
    Check("vae", "phi", "plug_in", False, 0.5, "Rainforth eq. 6: exact in M"),
    Check("vae", "theta", "plug_in", False, 0.5, "Rainforth eq. 5: exact in M"),
    Check("miwae", "phi", "plug_in", False, 0.5, "Rainforth eq. 6: sqrt(M / K), K fixed"),
    Check("miwae", "theta", "plug_in", False, 0.5, "Rainforth eq. 5: sqrt(MK), K fixed"),
)


# --------------------------------------------------------------------------- the sweep
def _seed(seed: int, n: int) -> tf.Tensor:
    return tf.constant([seed, n], tf.int32)


def _plan(config: Config) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
    """Every (objective, n) to run, the one giving the figure-4 direction first."""
    plan = [(name, n) for name in config.objectives for n in config.grid(name)]
    k_max = max(config.ks)
    first = None
    for name in ("iwae_dreg", "iwae"):
        if (name, k_max) in plan:
            first = (name, k_max)
            break
    if first is not None:
        plan.remove(first)
        plan.insert(0, first)
    return plan, first


def run_benchmark(config: Config, log: Callable[[str], None] = print) -> dict:
    """Runs the sweep; returns the results (what results.json holds) and the histograms.

    The histogram estimates (IWAE and the VAE at K, M in HISTOGRAM_GRID) are returned
    under the key "_histograms" (not written to the JSON).
    """
    config.check()
    start = time.perf_counter()
    problem = make_problem(config.seed, config.high_variance)
    variables = {k: tf.Variable(v, dtype=tf.float64, name=k) for k, v in problem.params.items()}
    batch = problem.x[: config.batch_size]
    x = tf.constant(batch)
    u = signal_direction(problem, config.batch_size)
    true_gradient = {
        "theta": np.mean(batch - problem.params["mu"], axis=0) / 2.0,
        "phi": np.zeros(DIM * DIM + DIM),
        "phi_u": np.float64(0.0),
    }
    plan, first = _plan(config)
    floor = snr_noise_floor(config.num_estimates)
    phi_span = DIM * min(config.batch_size, DIM + 1)
    results = {
        "config": dataclasses.asdict(config),
        "problem": {
            "dim": DIM,
            "num_points": NUM_POINTS,
            "batch_size": config.batch_size,
            "offset_scale": problem.offset_scale,
            "q_variance": problem.sigma**2,
            "phi_layout": "concat(vec(A) row-major, b); b is the last D entries",
            "true_gradient_theta": true_gradient["theta"].tolist(),
            "u_b": _b(u).tolist(),
            "u_note": "phi_u = phi . u, u the unit expected VAE (M = K = 1) phi gradient",
        },
        "noise_floor": {
            "snr": floor,
            "dsnr_random_direction": {
                "theta": diagnostics.random_direction_dsnr(DIM),
                "phi": diagnostics.random_direction_dsnr(phi_span),
                "phi_span_dimension": phi_span,
            },
        },
        "figure4_direction": None,
        "runs": {name: {} for name in config.objectives},
        "grids": {name: config.grid(name) for name in config.objectives},
    }
    histograms: dict = {"iwae": {}, "vae": {}}
    direction = None
    log(
        f"toy Gaussian: D={DIM}, offsets {problem.offset_scale}, q variance "
        f"{problem.sigma**2:.4g}, batch {config.batch_size}, R={config.num_estimates}, "
        f"{len(plan)} settings"
    )
    for i, (name, n) in enumerate(plan):
        spec = ESTIMATORS[name]

        objective = make_objective(name, n, config.miwae_inner)
        reference = (
            make_objective(spec.reference, n, config.miwae_inner) if spec.reference else None
        )

        def build(objective):
            return make_estimator(objective, variables, x, problem.sigma, u)

        t0 = time.perf_counter()
        # The scalar leaf phi_u has no perpendicular part: its DSNR is inf and the quantiles
        # of its ratios warn (inf - inf); they are not used.
        with np.errstate(invalid="ignore"):
            stats = diagnostics.gradient_statistics(
                build(objective),
                config.num_estimates,
                _seed(config.seed, n),
                chunk_size=config.chunk_size,
                reference=build(reference) if reference is not None else None,
                dsnr_direction="mean",
                true_gradient=true_gradient,
                keep_estimates=True,
                jit_compile=config.jit_compile,
            )
        seconds = time.perf_counter() - t0
        if (name, n) == first:
            direction = {k: np.asarray(v) for k, v in stats.mean.items()}
            results["figure4_direction"] = {
                "objective": name,
                "n": n,
                "note": (
                    "E[Delta_{1,K}] of IWAE at the largest K, estimated by the mean of "
                    + (
                        "IWAE-DReG (same expectation; theta identical draw by draw)"
                        if name == "iwae_dreg"
                        else "IWAE itself"
                    )
                ),
            }
        record = _record(stats, direction, seconds)
        record["objective"] = repr(objective)
        if reference is not None:
            record["reference_objective"] = repr(reference)
        results["runs"][name][str(n)] = record
        if name in histograms and n in HISTOGRAM_GRID:
            histograms[name][n] = {
                "theta": stats.estimates["theta"].copy(),
                "b": _b(stats.estimates["phi"]).copy(),
            }
        ref = f" (paired with {ESTIMATORS[spec.reference].label})" if spec.reference else ""
        log(
            f"[{i + 1:2d}/{len(plan)}] {spec.label:9s} {spec.axis}={n:<5d}{ref}: "
            f"median SNR phi {record['snr_median']['phi']:.3g}, theta "
            f"{record['snr_median']['theta']:.3g}  ({seconds:.1f} s)"
        )
        del stats

    _add_via_dreg(results)
    results["histogram_coordinates"] = _histogram_coordinates(results, histograms)
    results["slopes"] = _slopes(results)
    results["checks"] = _checks(results, floor)
    results["bias_tests"] = _bias_tests(results)
    results["seconds"] = time.perf_counter() - start
    results["_histograms"] = histograms
    return results


def _histogram_coordinates(results: dict, histograms: dict) -> dict:
    """The b and mu coordinates shown in figure 1: the largest SNR at the smallest K (or M)."""
    for name in ("iwae", "vae"):
        if histograms.get(name):
            record = results["runs"][name][str(min(histograms[name]))]
            return {
                "objective": name,
                "b": int(np.argmax(_b(record["snr"]["phi"]))),
                "theta": int(np.argmax(record["snr"]["theta"])),
            }
    return {}


def _record(stats: diagnostics.GradientStatistics, direction, seconds: float) -> dict:
    """What results.json keeps of one setting."""
    snr = {k: np.asarray(v) for k, v in stats.snr.items()}
    networks = ("theta", "phi")
    record = {
        "seconds": seconds,
        "snr": {"theta": snr["theta"], "phi": snr["phi"]},
        "snr_u": float(snr["phi_u"]),
        "snr_median": {
            "theta": float(np.median(snr["theta"])),
            "phi": float(np.median(snr["phi"])),
            "b": float(np.median(_b(snr["phi"]))),
        },
        "mean": {"theta": stats.mean["theta"], "b": _b(stats.mean["phi"])},
        "variance": {"theta": stats.variance["theta"], "b": _b(stats.variance["phi"])},
        "variance_mean": {k: float(np.mean(stats.variance[k])) for k in networks},
        "dsnr": {k: stats.dsnr[k] for k in networks},
        "dsnr_quartiles": {k: list(stats.dsnr_quartiles[k]) for k in networks},
        "rmse_theta": stats.rmse["theta"],
        "rmse_theta_quartiles": list(stats.rmse_quartiles["theta"]),
        "_mean_phi": np.asarray(stats.mean["phi"]),
        "_variance_phi": np.asarray(stats.variance["phi"]),
    }
    if direction is not None:
        record["dsnr_k_max"], record["dsnr_k_max_quartiles"] = {}, {}
        for k in ("theta", "phi"):
            mean, quartiles = directional_snr(stats.estimates[k], direction[k])
            record["dsnr_k_max"][k] = mean
            record["dsnr_k_max_quartiles"][k] = quartiles
    if stats.squared_bias is not None:
        t = {k: np.asarray(v) for k, v in stats.bias_t_statistic.items()}
        squared_bias = {k: np.asarray(v) for k, v in stats.squared_bias.items()}
        with np.errstate(divide="ignore", invalid="ignore"):
            # Var[difference] / R: the squared bias that noise alone shows.
            noise = {k: np.where(t[k] != 0, squared_bias[k] / t[k] ** 2, 0.0) for k in t}
        record["bias"] = {
            "squared_bias_mean": {k: float(np.mean(squared_bias[k])) for k in networks},
            "noise_squared_bias_mean": {k: float(np.mean(noise[k])) for k in networks},
            "squared_bias": {"theta": squared_bias["theta"], "b": _b(squared_bias["phi"])},
            "t": {"theta": t["theta"], "b": _b(t["phi"])},
            "t_summary": {k: t_summary(t[k]) for k in networks},
            "squared_bias_u": float(squared_bias["phi_u"]),
            "t_u": float(t["phi_u"]),
        }
    return record


def _add_via_dreg(results: dict) -> None:
    """SNR of IWAE, RWS and JVI with E[Delta] taken from their DReG partner's mean."""
    runs = results["runs"]
    for name, spec in ESTIMATORS.items():
        if spec.partner is None or name not in runs or spec.partner not in runs:
            continue
        for n, record in runs[name].items():
            partner = runs[spec.partner].get(n)
            if partner is None:
                continue
            phi = np.abs(partner["_mean_phi"]) / np.sqrt(record["_variance_phi"])
            record["_snr_via_dreg"] = {"phi": phi}  # for the fits (b's part is kept below)
            record["snr_via_dreg"] = {"b": _b(phi)}
            record["snr_via_dreg_median"] = {
                "phi": float(np.median(phi)),
                "b": float(np.median(_b(phi))),
            }


def _curve(results: dict, name: str, key: str, network: str) -> tuple[list[int], np.ndarray]:
    """ns and the per-coordinate values [len(ns), P] of runs[name][n][key][network]."""
    ns, rows = [], []
    for n, record in sorted(results["runs"].get(name, {}).items(), key=lambda kv: int(kv[0])):
        if key not in record:
            continue
        leaf = record[key]["phi" if network == "b" else network]
        ns.append(int(n))
        rows.append(_b(leaf) if network == "b" else np.asarray(leaf))
    return ns, np.array(rows)


def _fit(results: dict, name: str, key: str, network: str, large_only: bool) -> dict | None:
    ns, values = _curve(results, name, key, network)
    if large_only:
        keep = [i for i, n in enumerate(ns) if n >= LARGE_K]
        ns, values = [ns[i] for i in keep], values[keep] if keep else values[:0]
    return slope_summary(ns, values)


def _slopes(results: dict) -> dict:
    """Slopes of every SNR curve: slopes[objective][estimator][network][range]."""
    slopes = {}
    for name in results["runs"]:
        slopes[name] = {}
        for key, estimator in (("snr", "plug_in"), ("_snr_via_dreg", "via_dreg")):
            networks = NETWORKS if key == "snr" else ("phi", "b")
            fits = {
                network: {
                    "all": _fit(results, name, key, network, False),
                    f"n>={LARGE_K}": _fit(results, name, key, network, True),
                }
                for network in networks
            }
            if any(f["all"] is not None for f in fits.values()):
                slopes[name][estimator] = fits
    return slopes


def _checks(results: dict, floor: float) -> list[dict]:
    """The theory's slopes next to the measured ones."""
    out = []
    for check in CHECKS:
        if check.objective not in results["runs"]:
            continue
        key = "snr" if check.estimator == "plug_in" else "_snr_via_dreg"
        fit = _fit(results, check.objective, key, check.network, check.large_only)
        row = {
            "check": check.name,
            "objective": check.objective,
            "network": check.network,
            "estimator": check.estimator,
            "fit_range": f"{ESTIMATORS[check.objective].axis} >= {LARGE_K}"
            if check.large_only
            else "all",
            "expected": check.expected,
            "tolerance": TOLERANCE,
            "source": check.source,
            "measured": None,
            "status": "no fit (fewer than 2 points)",
        }
        if fit is not None:
            # The plug-in SNRs behind the fit: the curve's own, or its DReG partner's (whose
            # mean is the numerator of the SNR via DReG).
            name = check.objective
            if check.estimator == "via_dreg":
                name = ESTIMATORS[check.objective].partner
            runs = results["runs"][name]
            lowest = min(runs[str(n)]["snr_median"][check.network] for n in fit["n"])
            row["measured"] = fit
            row["lowest_median_snr"] = {"objective": name, "snr": lowest}
            if lowest < FLOOR_FACTOR * floor:
                row["status"] = "below noise floor"
            elif abs(fit["median"] - check.expected) <= TOLERANCE:
                row["status"] = "matches"
            else:
                row["status"] = "differs"
        out.append(row)
    return out


def _bias_tests(results: dict) -> list[dict]:
    """Paired t statistics of every estimator with a reference, per K and pooled."""
    rows = []
    for name, runs in results["runs"].items():
        reference = ESTIMATORS[name].reference
        if reference is None:
            continue
        pooled, pooled_u = [], []
        for n, record in sorted(runs.items(), key=lambda kv: int(kv[0])):
            summary = record["bias"]["t_summary"]["phi"]
            t_u = record["bias"]["t_u"]
            rows.append(
                {"objective": name, "reference": reference, "n": int(n), **summary, "t_u": t_u}
            )
            pooled.append(record["bias"]["t"]["b"])
            pooled_u.append(t_u)
        u_summary = t_summary(pooled_u)
        rows.append(
            {
                "objective": name,
                "reference": reference,
                "n": "all (b, pooled)",
                **t_summary(np.concatenate(pooled)),
                "t_u": None,
                "t_u_max_abs": u_summary["max_abs_t"],
                "t_u_mean_square": u_summary["mean_t2"],
            }
        )
    return rows


# --------------------------------------------------------------------------- output
def _jsonable(value, digits: int = 6):
    """Plain JSON values: floats to `digits` significant digits (arrays: 4), inf and nan
    to None; keys starting with "_" are left out."""
    if isinstance(value, dict):
        return {k: _jsonable(v, digits) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, np.ndarray):
        return [_jsonable(v, 4) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    return value


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9.eE+-]+|null)(?:,\s*(?:-?[0-9.eE+-]+|null))*)\s*\]")


def write_results(results: dict, path: pathlib.Path) -> None:
    """Writes results.json atomically (a temporary file, then a rename).

    Objects are indented; lists of numbers are kept on one line.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_jsonable(results), indent=1, sort_keys=True, allow_nan=False)
    text = _NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def _fmt_slope(fit: dict | None) -> str:
    if fit is None:
        return "-"
    return f"{fit['median']:+.2f} [{fit['q25']:+.2f}, {fit['q75']:+.2f}]"


def summary(results: dict) -> str:
    """The printed summary: theory checks, every slope, median SNRs and bias tests."""
    lines = []
    cfg = results["config"]
    lines.append(
        f"Toy Gaussian gradient SNR: offsets {results['problem']['offset_scale']}, q variance "
        f"{results['problem']['q_variance']:.4g}, batch {cfg['batch_size']}, "
        f"R = {cfg['num_estimates']} estimates, SNR noise floor "
        f"{results['noise_floor']['snr']:.4f}, {results['seconds']:.0f} s"
    )
    lines.append("")
    lines.append(f"Slopes against theory (median [IQR] over coordinates; tolerance {TOLERANCE}):")
    header = f"  {'check':40s} {'fit':8s} {'theory':>6s}  {'measured':24s} status"
    lines.append(header)
    for row in results["checks"]:
        fit = row["fit_range"].replace(" ", "")
        lines.append(
            f"  {row['check']:40s} {fit:8s} {row['expected']:+6.2f}  "
            f"{_fmt_slope(row['measured']):24s} {row['status']}"
        )
    lines.append("")
    lines.append("Every SNR slope (plug-in, whole grid; 'via DReG' where there is a partner):")
    lines.append(
        f"  {'estimator':10s} {'axis':4s} {'phi':24s} {'theta':24s} {'phi via DReG':24s} "
        f"{'theta, K>=' + str(LARGE_K):24s}"
    )
    for name, fits in results["slopes"].items():
        spec = ESTIMATORS[name]
        plug = fits.get("plug_in", {})
        via = fits.get("via_dreg", {})
        lines.append(
            f"  {display_name(results, name):10s} {spec.axis:4s} "
            f"{_fmt_slope(plug.get('phi', {}).get('all')):24s} "
            f"{_fmt_slope(plug.get('theta', {}).get('all')):24s} "
            f"{_fmt_slope(via.get('phi', {}).get('all')):24s} "
            f"{_fmt_slope(plug.get('theta', {}).get(f'n>={LARGE_K}')):24s}"
        )
    grid = sorted({int(n) for runs in results["runs"].values() for n in runs})
    for network, what in (("phi", "phi = (A, b)"), ("theta", "theta = mu")):
        lines.append("")
        lines.append(f"Median SNR of {what} per K (or M):")
        lines.append(f"  {'estimator':18s}" + "".join(f"{n:>9d}" for n in grid))
        for name, runs in results["runs"].items():
            rows = [(display_name(results, name), "snr_median")]
            if network == "phi" and any("snr_via_dreg_median" in r for r in runs.values()):
                rows.append((display_name(results, name) + " via DReG", "snr_via_dreg_median"))
            for title, key in rows:
                cells = []
                for n in grid:
                    value = runs.get(str(n), {}).get(key, {}).get(network)
                    cells.append(f"{value:9.3g}" if value is not None else f"{'-':>9s}")
                lines.append(f"  {title:18s}" + "".join(cells))
    if results["bias_tests"]:
        lines.append("")
        lines.append(
            "Paired bias t statistics over phi's parameters, and of phi . u alone (unbiased: "
            "every t ~ N(0, 1), |t| > 3 for 0.3 %;\n  the parameters' t share the noise along u, "
            "so their mean t^2 scatters much more than a chi^2 of that many degrees):"
        )
        lines.append(
            f"  {'estimator':10s} {'vs':6s} {'K or M':16s} {'max |t|':>10s} {'mean t^2':>10s} "
            f"{'|t| > 3':>8s} {'t along u':>18s}"
        )
        for row in results["bias_tests"]:
            if row["t_u"] is not None:
                along = f"{row['t_u']:18.3g}"
            else:
                along = f"{row['t_u_mean_square']:8.3g} (mean t^2)"
            lines.append(
                f"  {ESTIMATORS[row['objective']].label:10s} "
                f"{ESTIMATORS[row['reference']].label:6s} {row['n']!s:16s} "
                f"{row['max_abs_t']:10.3g} {row['mean_t2']:10.3g} "
                f"{row['fraction_above_3']:8.1%} {along}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures
def _series(results: dict, name: str, getter) -> tuple[np.ndarray, np.ndarray]:
    runs = results["runs"].get(name, {})
    ns = sorted(int(n) for n in runs)
    values = []
    for n in ns:
        try:
            values.append(getter(runs[str(n)]))
        except (KeyError, TypeError):
            values.append(np.nan)
    values = np.array(values, np.float64)
    return np.array(ns, np.float64), np.where(values > 0, values, np.nan)


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _log_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)


def _reference_line(ax, ns, anchor_n, anchor_y, slope, color, label) -> None:
    if not np.isfinite(anchor_y):
        return
    ns = np.array([min(ns), max(ns)], np.float64)
    ax.plot(ns, anchor_y * (ns / anchor_n) ** slope, "--", color=color, lw=1.2, label=label)


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _subtitle(results: dict) -> str:
    p = results["problem"]
    return (
        f"toy Gaussian, D = {p['dim']}, offsets {p['offset_scale']}, q variance "
        f"{p['q_variance']:.3g}, batch {p['batch_size']}, "
        f"{results['config']['num_estimates']} estimates per point"
    )


def figure_histograms(results: dict, path: pathlib.Path) -> None:
    """Rainforth figure 1 (IWAE in K) and figure 9 (VAE in M) for one b and one mu."""
    histograms = results["_histograms"]
    chosen = results["histogram_coordinates"]
    fig = _new_figure(10, 7)
    axes = fig.subplots(2, 2)
    cmap = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for row, name in enumerate(("iwae", "vae")):
        for col, (leaf, what) in enumerate((("b", "inference network"), ("theta", "generative"))):
            ax = axes[row, col]
            data = histograms.get(name, {})
            if not data or leaf not in chosen:
                ax.set_visible(False)
                continue
            j = chosen[leaf]
            for color, (n, d) in zip(cmap, sorted(data.items()), strict=False):
                low, high = np.quantile(d[leaf][:, j], [0.002, 0.998])
                ax.hist(
                    d[leaf][:, j],
                    bins=np.linspace(low, high, 41),
                    density=True,
                    histtype="step",
                    lw=1.4,
                    color=color,
                    label=f"{ESTIMATORS[name].axis} = {n}",
                )
            ax.axvline(0.0, color="k", lw=0.8, ls=":")
            symbol = f"b_{{{j + 1}}}" if leaf == "b" else f"\\mu_{{{j + 1}}}"
            ax.set_xlabel(rf"$\Delta({symbol})$")
            ax.set_ylabel("density")
            spec = ESTIMATORS[name]
            fixed = "M = 1" if spec.axis == "K" else "K = 1"
            ax.set_title(f"{display_name(results, name)} ({fixed}), {what}", fontsize="medium")
            _legend(ax, fontsize="small")
    fig.suptitle("Gradient estimates: Rainforth et al. figures 1 and 9\n" + _subtitle(results))
    fig.savefig(path, dpi=100)


def figure_snr(results: dict, path: pathlib.Path) -> None:
    """Rainforth figure 2 (per-dimension SNR of b and mu) and every estimator's median."""
    fig = _new_figure(11, 9)
    axes = fig.subplots(2, 2)
    floor = results["noise_floor"]["snr"]
    runs = results["runs"]
    for col, network in enumerate(("b", "theta")):
        ax = axes[0, col]
        ends = []
        for name in ("iwae", "vae"):
            if name not in runs or not runs[name]:
                continue
            ns, values = _curve(results, name, "snr", network)
            color = estimator_color(name)
            ax.plot(ns, values, color=color, lw=0.6, alpha=0.35)
            median = np.median(values, axis=1)
            spec = ESTIMATORS[name]
            ax.plot(
                ns,
                median,
                color=color,
                lw=2.2,
                marker="o",
                ms=4,
                label=f"{display_name(results, name)} (median), in {spec.axis}",
            )
            ends.append((name, ns, median))
            if network == "b" and "_snr_via_dreg" in next(iter(runs[name].values())):
                vns, via = _curve(results, name, "_snr_via_dreg", "b")
                ax.plot(
                    vns,
                    np.median(via, axis=1),
                    color=color,
                    lw=2.0,
                    ls=":",
                    marker="s",
                    ms=3,
                    label="IWAE via DReG (median)",
                )
        for name, ns, median in ends:
            if name == "vae":
                _reference_line(ax, ns, ns[0], median[0], 0.5, "k", "slope +1/2")
            elif network == "b":
                _reference_line(ax, ns, ns[0], median[0], -0.5, "tab:green", "slope -1/2")
        ax.axhline(floor, color="0.5", ls="-.", lw=1, label="noise floor")
        title = "inference network: b" if network == "b" else r"generative network: $\mu$"
        _log_axes(ax, "K or M", "SNR", f"{title} (thin: each dimension)")
        _legend(ax, fontsize="x-small")
    for col, network in enumerate(("phi", "theta")):
        ax = axes[1, col]
        for name in runs:
            if not runs[name]:
                continue
            spec = ESTIMATORS[name]
            ls = "-" if spec.axis == "K" else "--"
            ns, values = _series(results, name, lambda r, w=network: r["snr_median"][w])
            ax.plot(
                ns,
                values,
                ls=ls,
                marker="o",
                ms=3,
                color=estimator_color(name),
                label=f"{display_name(results, name)} ({spec.axis})",
            )
            if network == "phi":
                ns, via = _series(results, name, lambda r: r["snr_via_dreg_median"]["phi"])
                if np.isfinite(via).any():
                    ax.plot(
                        ns,
                        via,
                        ls=":",
                        marker="s",
                        ms=3,
                        color=estimator_color(name),
                        label=f"{display_name(results, name)} via DReG",
                    )
        ax.axhline(floor, color="0.5", ls="-.", lw=1, label="noise floor")
        what = r"$\phi$ = (A, b)" if network == "phi" else r"$\theta$ = $\mu$"
        _log_axes(ax, "K (solid) or M (dashed)", "median SNR", f"every estimator: {what}")
        _legend(ax, fontsize="x-small", ncol=2)
    fig.suptitle("Signal-to-noise ratios: Rainforth et al. figure 2\n" + _subtitle(results))
    fig.savefig(path, dpi=100)


def figure_dsnr(results: dict, path: pathlib.Path, key: str, title: str) -> None:
    """Rainforth figure 3 (key "dsnr") or 4 (key "dsnr_k_max"), both networks."""
    fig = _new_figure(11, 4.8)
    axes = fig.subplots(1, 2)
    floors = results["noise_floor"]["dsnr_random_direction"]
    for ax, network in zip(axes, ("phi", "theta"), strict=True):
        for name in results["runs"]:
            spec = ESTIMATORS[name]
            ns, values = _series(results, name, lambda r, w=network: r[key][w])
            if not np.isfinite(values).any():
                continue
            bold = name in ("iwae", "vae")
            ax.plot(
                ns,
                values,
                ls="-" if spec.axis == "K" else "--",
                marker="o",
                ms=3,
                lw=2.2 if bold else 1.0,
                color=estimator_color(name),
                label=f"{display_name(results, name)} ({spec.axis})",
            )
            if bold:
                _, low = _series(results, name, lambda r, w=network: r[key + "_quartiles"][w][0])
                _, high = _series(results, name, lambda r, w=network: r[key + "_quartiles"][w][1])
                ax.fill_between(ns, low, high, color=estimator_color(name), alpha=0.15, lw=0)
        ax.axhline(floors[network], color="0.3", ls="-.", lw=1, label="random direction")
        what = r"inference network $\phi$" if network == "phi" else r"generative network $\mu$"
        _log_axes(ax, "K (solid) or M (dashed)", "DSNR", what)
        _legend(ax, fontsize="x-small", ncol=2)
    fig.suptitle(f"{title}\n" + _subtitle(results))
    fig.savefig(path, dpi=100)


def figure_rmse(results: dict, path: pathlib.Path) -> None:
    """Rainforth figure 10: RMSE of the mu gradient to grad_mu log p(x), with the IQR."""
    fig = _new_figure(6.5, 4.8)
    ax = fig.subplots()
    for name in ("iwae", "vae", "miwae"):
        if not results["runs"].get(name):
            continue
        spec = ESTIMATORS[name]
        ns, values = _series(results, name, lambda r: r["rmse_theta"])
        ax.plot(
            ns,
            values,
            marker="o",
            ms=3,
            lw=2,
            color=estimator_color(name),
            label=f"{display_name(results, name)} ({spec.axis})",
        )
        _, low = _series(results, name, lambda r: r["rmse_theta_quartiles"][0])
        _, high = _series(results, name, lambda r: r["rmse_theta_quartiles"][1])
        ax.fill_between(ns, low, high, color=estimator_color(name), alpha=0.15, lw=0)
        if name == "iwae":
            _reference_line(ax, ns, ns[0], values[0], -0.5, "k", "slope -1/2")
    _log_axes(ax, "K or M", r"RMSE to $\nabla_\mu \log p(x)$", "")
    _legend(ax, fontsize="small")
    fig.suptitle(
        "RMSE of the generative gradient: Rainforth et al. figure 10\n" + _subtitle(results),
        fontsize="medium",
    )
    fig.savefig(path, dpi=100)


def figure_tucker(results: dict, path: pathlib.Path) -> None:
    """Tucker et al. figure 1: SNR, squared bias and variance over phi, against K."""
    groups = (
        ("IWAE family (bias against IWAE)", ("iwae", "stl", "iwae_dreg", "vae")),
        ("RWS and JVI (bias against RWS, JVI)", ("rws", "rws_dreg", "jvi", "jvi_dreg")),
    )
    fig = _new_figure(14, 8.5)
    axes = fig.subplots(2, 3)
    for row, (group, names) in enumerate(groups):
        for name in names:
            if not results["runs"].get(name):
                continue
            spec = ESTIMATORS[name]
            label = "K ELBOs (VAE, M = K)" if name == "vae" else display_name(results, name)
            color = estimator_color(name)
            ns, snr = _series(results, name, lambda r: r["snr_median"]["phi"])
            axes[row, 0].plot(ns, snr, marker="o", ms=3, color=color, label=label)
            ns, via = _series(results, name, lambda r: r["snr_via_dreg_median"]["phi"])
            if np.isfinite(via).any():
                axes[row, 0].plot(
                    ns, via, ls=":", marker="s", ms=3, color=color, label=f"{label} via DReG"
                )
            ns, bias = _series(results, name, lambda r: r["bias"]["squared_bias_mean"]["phi"])
            if np.isfinite(bias).any():
                axes[row, 1].plot(
                    ns,
                    bias,
                    marker="o",
                    ms=3,
                    color=color,
                    label=f"{label} vs {ESTIMATORS[spec.reference].label}",
                )
                ns, noise = _series(
                    results, name, lambda r: r["bias"]["noise_squared_bias_mean"]["phi"]
                )
                axes[row, 1].plot(
                    ns, noise, ls=":", lw=1, color=color, label=f"{label}: noise level"
                )
            ns, var = _series(results, name, lambda r: r["variance_mean"]["phi"])
            axes[row, 2].plot(ns, var, marker="o", ms=3, color=color, label=label)
        axes[row, 0].axhline(
            results["noise_floor"]["snr"], color="0.5", ls="-.", lw=1, label="noise floor"
        )
        for col, ylabel in enumerate(("median SNR", "squared bias (mean)", "variance (mean)")):
            _log_axes(axes[row, col], "K", f"{ylabel} over phi", group if col == 0 else "")
            _legend(axes[row, col], fontsize="x-small")
    fig.suptitle(
        "SNR, squared bias and variance of the inference gradient: Tucker et al. figure 1\n"
        + _subtitle(results)
    )
    fig.savefig(path, dpi=100)


def make_figures(results: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes every figure into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f for f in FIGURES]
    figure_histograms(results, paths[0])
    figure_snr(results, paths[1])
    figure_dsnr(results, paths[2], "dsnr", "DSNR against each estimator's own mean: figure 3")
    figure_dsnr(
        results,
        paths[3],
        "dsnr_k_max",
        f"DSNR against E[Delta] of IWAE at K = {max(results['config']['ks'])}: figure 4",
    )
    figure_rmse(results, paths[4])
    figure_tucker(results, paths[5])
    return paths


# --------------------------------------------------------------------------- command line
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script: importing is side-free)."""
    flags.DEFINE_integer("num_estimates", 10_000, "Gradient estimates per setting (R).")
    flags.DEFINE_list("ks", [str(k) for k in DEFAULT_GRID], "The grid of K, and of M.")
    flags.DEFINE_list(
        "objectives",
        list(DEFAULT_OBJECTIVES),
        f"Estimators to run, from {', '.join(ESTIMATORS)} (the names of "
        "mco.objective_names() with their default arguments, and the papers' estimators).",
    )
    flags.DEFINE_bool("high_variance", False, "Offsets 0.5 and q covariance I (appendix C.3).")
    flags.DEFINE_integer("batch_size", 1, "Data points averaged in each estimate.")
    flags.DEFINE_integer("miwae_inner", 10, "K inside each of MIWAE's M bounds.")
    flags.DEFINE_integer(
        "miwae_max_samples", None, "MIWAE runs M with M * K_inner <= this (default: max K)."
    )
    flags.DEFINE_integer("chunk_size", 500, "Estimates per vectorized chunk (bounds memory).")
    flags.DEFINE_integer("seed", 0, "Seed of the data, the offsets and every draw.")
    flags.DEFINE_bool("jit_compile", False, "Compile each chunk with XLA.")
    flags.DEFINE_string(
        "out_dir",
        None,
        "Output folder (default benchmarks/results/gaussian_snr[_high_variance]).",
    )
    flags.DEFINE_bool("figures", True, "Write the PNG figures.")


def config_from_flags() -> Config:
    try:
        ks = tuple(int(k) for k in FLAGS.ks)
    except ValueError as e:
        raise app.UsageError(f"--ks must be integers: {e}") from e
    config = Config(
        num_estimates=FLAGS.num_estimates,
        ks=ks,
        objectives=tuple(FLAGS.objectives),
        high_variance=FLAGS.high_variance,
        batch_size=FLAGS.batch_size,
        miwae_inner=FLAGS.miwae_inner,
        miwae_max_samples=FLAGS.miwae_max_samples,
        chunk_size=FLAGS.chunk_size,
        seed=FLAGS.seed,
        jit_compile=FLAGS.jit_compile,
    )
    try:
        config.check()
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    return config


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Every setting is a new tf.function: TensorFlow's retracing warnings are expected.
    tf.get_logger().setLevel(logging.ERROR)
    config = config_from_flags()
    default = "gaussian_snr_high_variance" if config.high_variance else "gaussian_snr"
    out_dir = pathlib.Path(FLAGS.out_dir) if FLAGS.out_dir else RESULTS_DIR / default
    results = run_benchmark(config, log=lambda s: print(s, flush=True))
    if FLAGS.figures:
        for path in make_figures(results, out_dir):
            print(f"wrote {path}")
    write_results(results, out_dir / RESULTS_FILE)
    print(f"wrote {out_dir / RESULTS_FILE}\n")
    print(summary(results))


if __name__ == "__main__":
    define_flags()
    app.run(main)
