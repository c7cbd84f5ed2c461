"""Gradient SNR on the toy Gaussian: Rainforth et al. figures 1-4 and 10, Tucker et al. figure 1.

At a point near the optimum of Rainforth et al.'s toy Gaussian (D = 20; `--high_variance`:
their appendix C.3), draws `--num_estimates` gradient estimates of each estimator at each K
(or M) of `--ks`, and writes into `--out_dir` results.json: per setting the SNR, DSNR, RMSE
and the paired bias t statistics against a reference estimator, the fitted log-log slopes
of every SNR curve next to the theory's, and the histograms of figure 1. The figures are
then drawn from that file (`figures.py`) and a summary is printed. benchmarks/README.md
describes the problem, the estimators and the method.

    python benchmarks/gaussian_snr.py                    # the default run
    python benchmarks/gaussian_snr.py --high_variance    # appendix C.3
    python benchmarks/gaussian_snr.py --num_estimates=2000 --ks=1,10,100 --objectives=iwae,vae
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import app, flags

import mcobjectives as mco
from mcobjectives import diagnostics

# isort: split
# The benchmarks' own modules, beside this script.
import _harness
import figures
import gaussian_snr_analysis as analysis

tfd = tfp.distributions
DIM = 20
NUM_POINTS = 1024
DEFAULT_GRID = (1, 3, 10, 30, 100, 300, 1000)
HISTOGRAM_GRID = (1, 10, 100, 1000)
RESULTS_FILE = "results.json"


# --------------------------------------------------------------------------- estimators
@dataclasses.dataclass(frozen=True)
class Estimator:
    """One estimator: `mco.make_objective(objective or name, n, **kwargs)`, n = K (or M).

    `reference` is the estimator its bias is measured against on the same draws, `partner`
    the DReG estimator of the same expectation (for the SNR via DReG), `min_n` its
    smallest K or M.
    """

    name: str
    label: str
    axis: str  # "K" (samples of one bound) or "M" (bounds of `miwae_inner` samples)
    objective: str | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)
    reference: str | None = None
    partner: str | None = None
    min_n: int = 1

    @property
    def grouped(self) -> bool:
        """Whether n is M, a number of bounds (MIWAE, PIWAE: the objectives with num_outer)."""
        cls = mco.objectives.OBJECTIVES[self.objective or self.name]
        return "num_outer" in inspect.signature(cls.__init__).parameters

    @property
    def smallest_n(self) -> int:
        if self.grouped:
            return self.min_n
        return max(
            self.min_n, mco.objectives.OBJECTIVES[self.objective or self.name].min_num_samples
        )


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
ESTIMATORS = {e.name: e for e in PAPER_ESTIMATORS}
for _name in mco.objective_names():  # every other registered objective, default arguments
    if _name not in ESTIMATORS:
        _estimator = Estimator(_name, mco.objectives.OBJECTIVES[_name].__name__, "K")
        ESTIMATORS[_name] = dataclasses.replace(_estimator, axis="M" if _estimator.grouped else "K")


def make_objective(name: str, n: int, miwae_inner: int) -> mco.MCObjective:
    """Estimator `name`'s objective with K = n, or with n bounds of `miwae_inner` samples."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(ESTIMATORS)}.")
    spec = ESTIMATORS[name]
    kwargs = dict(spec.kwargs)
    if spec.grouped:
        kwargs["num_outer"] = n
        n *= miwae_inner
    return mco.make_objective(spec.objective or spec.name, n, **kwargs)


def describe_estimators(names: Sequence[str], miwae_inner: int) -> dict:
    """What the figures and the summary need to know of each estimator and its reference."""
    out = {}
    references = [ESTIMATORS[n].reference for n in names if ESTIMATORS[n].reference]
    for name in dict.fromkeys([*names, *references]):
        spec = ESTIMATORS[name]
        label = f"{spec.label}(K={miwae_inner})" if spec.grouped else spec.label
        fields = {"label": label, "axis": spec.axis, "reference": spec.reference}
        out[name] = {**fields, "partner": spec.partner}
    return out


@dataclasses.dataclass(frozen=True)
class Config:
    """What to run: the command-line flags (see `define_flags`)."""

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
        if not self.ks or min(self.ks) < 1 or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must be distinct integers >= 1, got {self.ks}.")
        unknown = [o for o in self.objectives if o not in ESTIMATORS]
        if unknown or not self.objectives:
            raise ValueError(
                f"unknown objectives {unknown} (or none given); choose from "
                f"{', '.join(ESTIMATORS)}."
            )
        if not 1 <= self.batch_size <= NUM_POINTS:
            raise ValueError(f"batch_size must be in [1, {NUM_POINTS}], got {self.batch_size}.")
        if min(self.miwae_inner, self.chunk_size) < 1:
            raise ValueError("miwae_inner and chunk_size must be >= 1.")

    def grid(self, name: str) -> list[int]:
        """The K (or M) values `name` runs; M * miwae_inner stays within miwae_max_samples."""
        spec = ESTIMATORS[name]
        grid = [n for n in sorted(self.ks) if n >= spec.smallest_n]
        if spec.grouped:
            budget = self.miwae_max_samples or max(self.ks)
            grid = [m for m in grid if m * self.miwae_inner <= budget]
        return grid


# --------------------------------------------------------------------------- the problem
def make_problem(seed: int, high_variance: bool) -> dict:
    """The data x [N, D], the optimum, the offset point params {mu, A, b} and q's sigma."""
    data = np.random.default_rng([seed, 0])
    mu_true = data.normal(size=DIM)
    x = mu_true + math.sqrt(2.0) * data.normal(size=(NUM_POINTS, DIM))
    optimum = {"mu": x.mean(axis=0), "A": np.eye(DIM) / 2, "b": x.mean(axis=0) / 2}
    offset_scale = 0.5 if high_variance else 0.01
    offsets = np.random.default_rng([seed, 1])
    params = {k: v + offset_scale * offsets.normal(size=v.shape) for k, v in optimum.items()}
    sigma = 1.0 if high_variance else math.sqrt(2.0 / 3.0)
    return {"x": x, "params": params, "offset_scale": offset_scale, "sigma": sigma}


def signal_direction(problem: dict, batch_size: int) -> np.ndarray:
    """u: the unit vector of the VAE's exact expected phi gradient at M = K = 1.

    The ELBO's gradient w.r.t. q's mean is mu + x - 2 (A x + b); its batch mean (and its
    outer product with x for A) is E[Delta_phi].
    """
    x, p = problem["x"][:batch_size], problem["params"]
    g = p["mu"] + x - 2.0 * (x @ p["A"].T + p["b"])
    phi = np.concatenate([(g[:, :, None] * x[:, None, :]).mean(axis=0).ravel(), g.mean(axis=0)])
    return phi / np.linalg.norm(phi)


def make_estimator(objective, variables: dict, x: tf.Tensor, sigma: float, u: np.ndarray):
    """seed -> {"theta": d/d mu, "phi": d/d concat(vec(A), b), "phi_u": phi . u} of the bound."""
    scale, u = tf.constant(sigma, tf.float64), tf.constant(u, tf.float64)

    def loss_fn(seed):
        mu, a, b = variables["mu"], variables["A"], variables["b"]
        q = tfd.Independent(tfd.Normal(tf.linalg.matvec(a, x) + b, scale), 1)
        p_z = tfd.MultivariateNormalDiag(mu, tf.ones_like(mu))
        likelihood = lambda z: tfd.MultivariateNormalDiag(z, tf.ones_like(z))  # noqa: E731
        return objective(q, mco.make_log_joint(p_z, likelihood, x), seed=seed)

    gradient = diagnostics.make_gradient_estimator(loss_fn, variables)

    def estimator(seed):
        g = gradient(seed)
        phi = tf.concat([tf.reshape(g["A"], [-1]), g["b"]], 0)
        return {"theta": g["mu"], "phi": phi, "phi_u": tf.reduce_sum(phi * u)}

    return estimator


def _b(leaf) -> np.ndarray:
    """The b part of a phi vector (its last D entries)."""
    return np.asarray(leaf)[..., -DIM:]


# --------------------------------------------------------------------------- the sweep
def _plan(config: Config) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
    """Every (objective, n) to run, the one giving the figure-4 direction first."""
    plan = [(name, n) for name in config.objectives for n in config.grid(name)]
    first = next(
        ((o, max(config.ks)) for o in ("iwae_dreg", "iwae") if (o, max(config.ks)) in plan), None
    )
    if first is not None:
        plan.remove(first)
        plan.insert(0, first)
    return plan, first


def run_benchmark(config: Config, log: Callable[[str], None] = print) -> dict:
    """Runs the sweep; returns what results.json holds."""
    config.check()
    start = time.perf_counter()
    problem = make_problem(config.seed, config.high_variance)
    variables = {k: tf.Variable(v, dtype=tf.float64, name=k) for k, v in problem["params"].items()}
    batch = problem["x"][: config.batch_size]
    u = signal_direction(problem, config.batch_size)
    true_gradient = {
        "theta": np.mean(batch - problem["params"]["mu"], axis=0) / 2.0,
        "phi": np.zeros(DIM * DIM + DIM),
        "phi_u": np.float64(0.0),
    }
    plan, first = _plan(config)
    phi_span = DIM * min(config.batch_size, DIM + 1)
    results = {
        "benchmark": "gaussian_snr",
        "config": dataclasses.asdict(config),
        "estimators": describe_estimators(config.objectives, config.miwae_inner),
        "problem": {
            "dim": DIM,
            "num_points": NUM_POINTS,
            "batch_size": config.batch_size,
            "offset_scale": problem["offset_scale"],
            "q_variance": problem["sigma"] ** 2,
            "phi_layout": "concat(vec(A) row-major, b); b is the last D entries",
            "true_gradient_theta": true_gradient["theta"],
            "u_b": _b(u),
            "u_note": "phi_u = phi . u, u the unit expected VAE (M = K = 1) phi gradient",
        },
        "noise_floor": {
            "snr": diagnostics.snr_noise_floor(config.num_estimates),
            "dsnr_random_direction": {
                "theta": diagnostics.random_direction_dsnr(DIM),
                "phi": diagnostics.random_direction_dsnr(phi_span),
                "phi_span_dimension": phi_span,
            },
        },
        "figure4_direction": None,
        "runs": {name: {} for name in config.objectives},
        "grids": {name: config.grid(name) for name in config.objectives},
        "machine": _harness.machine_info(),
    }
    kept, phi, direction = {}, {}, None  # (name, n) -> estimates for the histograms, phi's moments
    log(
        f"toy Gaussian: D={DIM}, offsets {problem['offset_scale']}, q variance "
        f"{problem['sigma'] ** 2:.4g}, batch {config.batch_size}, R={config.num_estimates}, "
        f"{len(plan)} settings"
    )
    for i, (name, n) in enumerate(plan):
        spec = ESTIMATORS[name]
        objective = make_objective(name, n, config.miwae_inner)
        reference = spec.reference and make_objective(spec.reference, n, config.miwae_inner)
        build = lambda o: make_estimator(o, variables, tf.constant(batch), problem["sigma"], u)  # noqa: E731
        t0 = time.perf_counter()
        with np.errstate(invalid="ignore"):  # the scalar phi_u has no DSNR (inf - inf)
            stats = diagnostics.gradient_statistics(
                build(objective),
                config.num_estimates,
                tf.constant([config.seed, n], tf.int32),
                chunk_size=config.chunk_size,
                reference=build(reference) if reference else None,
                dsnr_direction="mean",
                true_gradient=true_gradient,
                keep_estimates=True,
                jit_compile=config.jit_compile,
            )
        seconds = time.perf_counter() - t0
        if (name, n) == first:
            direction = {k: np.asarray(v) for k, v in stats.mean.items()}
            how = "IWAE-DReG (same expectation)" if name == "iwae_dreg" else "IWAE itself"
            note = f"E[Delta_(1,K)] of IWAE at the largest K, estimated by the mean of {how}"
            results["figure4_direction"] = {"objective": name, "n": n, "note": note}
        record = _record(stats, direction, seconds)
        record["objective"] = repr(objective)
        if reference:
            record["reference_objective"] = repr(reference)
        results["runs"][name][str(n)] = record
        phi[name, str(n)] = (stats.mean["phi"], stats.variance["phi"])
        if name in ("iwae", "vae") and n in HISTOGRAM_GRID:
            kept[name, n] = {"theta": stats.estimates["theta"], "b": _b(stats.estimates["phi"])}
        paired = f" (paired with {ESTIMATORS[spec.reference].label})" if reference else ""
        log(
            f"[{i + 1:2d}/{len(plan)}] {spec.label:9s} {spec.axis}={n:<5d}{paired}: median SNR phi "
            f"{record['snr_median']['phi']:.3g}, theta {record['snr_median']['theta']:.3g}  "
            f"({seconds:.1f} s)"
        )
        del stats
    analysis.add_snr_via_dreg(results, phi)
    results["histogram_coordinates"], results["histograms"] = analysis.histograms(results, kept)
    results["slopes"] = analysis.slopes(results)
    results["checks"] = analysis.checks(results)
    results["bias_tests"] = analysis.bias_tests(results)
    results["seconds"] = time.perf_counter() - start
    return results


def _record(stats: diagnostics.GradientStatistics, direction, seconds: float) -> dict:
    """What results.json keeps of one setting."""
    snr = {k: np.asarray(v) for k, v in stats.snr.items()}
    networks = ("theta", "phi")
    record = {
        "seconds": seconds,
        "snr": {"theta": snr["theta"], "phi": snr["phi"]},
        "snr_u": float(snr["phi_u"]),
        "snr_median": {
            **{k: float(np.median(snr[k])) for k in networks},
            "b": float(np.median(_b(snr["phi"]))),
        },
        "mean": {"theta": stats.mean["theta"], "b": _b(stats.mean["phi"])},
        "variance": {"theta": stats.variance["theta"], "b": _b(stats.variance["phi"])},
        "variance_mean": {k: float(np.mean(stats.variance[k])) for k in networks},
        "dsnr": {k: stats.dsnr[k] for k in networks},
        "dsnr_quartiles": {k: stats.dsnr_quartiles[k] for k in networks},
        "rmse_theta": stats.rmse["theta"],
        "rmse_theta_quartiles": stats.rmse_quartiles["theta"],
    }
    if direction is not None:
        along = {k: diagnostics.directional_snr(stats.estimates[k], direction[k]) for k in networks}
        record["dsnr_k_max"] = {k: v[0] for k, v in along.items()}
        record["dsnr_k_max_quartiles"] = {k: v[1] for k, v in along.items()}
    if stats.squared_bias is not None:
        t = {k: np.asarray(v) for k, v in stats.bias_t_statistic.items()}
        squared_bias = {k: np.asarray(v) for k, v in stats.squared_bias.items()}
        with np.errstate(divide="ignore", invalid="ignore"):  # Var[difference] / R
            noise = {k: np.where(t[k] != 0, squared_bias[k] / t[k] ** 2, 0.0) for k in t}
        record["bias"] = {
            "squared_bias_mean": {k: float(np.mean(squared_bias[k])) for k in networks},
            "noise_squared_bias_mean": {k: float(np.mean(noise[k])) for k in networks},
            "squared_bias": {"theta": squared_bias["theta"], "b": _b(squared_bias["phi"])},
            "t": {"theta": t["theta"], "b": _b(t["phi"])},
            "t_summary": {k: diagnostics.t_statistic_summary(t[k]) for k in networks},
            "squared_bias_u": float(squared_bias["phi_u"]),
            "t_u": float(t["phi_u"]),
        }
    return record


# --------------------------------------------------------------------------- command line
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script: importing is side-free)."""
    flags.DEFINE_integer("num_estimates", 10_000, "Gradient estimates per setting (R).")
    flags.DEFINE_list("ks", [str(k) for k in DEFAULT_GRID], "The grid of K, and of M.")
    flags.DEFINE_list(
        "objectives", list(DEFAULT_OBJECTIVES), f"Estimators to run, from {', '.join(ESTIMATORS)}."
    )
    flags.DEFINE_bool("high_variance", False, "Offsets 0.5 and q covariance I (appendix C.3).")
    flags.DEFINE_integer("batch_size", 1, "Data points averaged in each estimate.")
    flags.DEFINE_integer("miwae_inner", 10, "K inside each of MIWAE's (PIWAE's) M bounds.")
    flags.DEFINE_integer("miwae_max_samples", None, "Largest M * K_inner (default: max K).")
    flags.DEFINE_integer("chunk_size", 500, "Estimates per vectorized chunk (bounds memory).")
    flags.DEFINE_integer("seed", 0, "Seed of the data, the offsets and every draw.")
    flags.DEFINE_bool("jit_compile", False, "Compile each chunk with XLA.")
    flags.DEFINE_string(
        "out_dir", None, "Output folder (default results/gaussian_snr[_high_variance])."
    )
    flags.DEFINE_bool("figures", True, "Draw the PNG figures from results.json.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    tf.get_logger().setLevel(logging.ERROR)  # every setting is a new trace, on purpose
    values = _harness.flag_values(exclude=("out_dir", "figures"))
    try:
        values["ks"] = tuple(int(k) for k in values["ks"])
        config = Config(**{**values, "objectives": tuple(values["objectives"])})
        config.check()
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    default = "gaussian_snr_high_variance" if config.high_variance else "gaussian_snr"
    out_dir = pathlib.Path(FLAGS.out_dir or _harness.RESULTS_DIR / default)
    results = run_benchmark(config, log=lambda s: print(s, flush=True))
    _harness.write_json(out_dir / RESULTS_FILE, results)
    print(f"wrote {out_dir / RESULTS_FILE}")
    if FLAGS.figures:
        for path in figures.draw(out_dir / RESULTS_FILE):
            print(f"wrote {path}")
    print("\n" + analysis.summary(results))


if __name__ == "__main__":
    define_flags()
    app.run(main)
