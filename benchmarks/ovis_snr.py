"""Inference-gradient SNR against K on Rainforth et al.'s toy Gaussian (D = 20), as OVIS reports.

Lievin et al. (2020, arXiv:2008.01998) claim OVIS's inference SNR grows with K where VIMCO's
does not; Rainforth et al. (2018) that IWAE's falls as K^(-1/2); Tucker et al. (2019) that
IWAE-DReG's grows as K^(1/2). At gaussian_snr.py's point near the optimum, each estimator's
median phi SNR (over the 420 entries of A and b) is measured at each K for `--num_seeds`
independent sets of `--num_estimates` draws; the log-log slope is fitted per seed and
reported as mean +- standard error over seeds. results.json and snr.png go to --out_dir.

    python benchmarks/ovis_snr.py --num_estimates=1000 --ks=2,8,32,128 --num_seeds=3
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags

from mcobjectives import diagnostics

# isort: split
import _harness
import gaussian_snr

ESTIMATORS = {
    "ovis": "OVIS(gamma=1)",
    "vimco": "VIMCO",
    "rws": "RWS",
    "iwae": "IWAE",
    "iwae_dreg": "IWAE-DReG",
}
FLAGS = flags.FLAGS


def run(
    num_estimates: int,
    ks: Sequence[int],
    num_seeds: int,
    objectives: Sequence[str],
    chunk_size: int,
    log=print,
) -> dict:
    """{"snr": name -> [seed][k] median phi SNR, "slopes": name -> mean, se, per seed}."""
    problem = gaussian_snr.make_problem(0, high_variance=False)
    params = problem["params"]
    variables = {k: tf.Variable(v, dtype=tf.float64, name=k) for k, v in params.items()}
    x = tf.constant(problem["x"][:1])
    u = gaussian_snr.signal_direction(problem, 1)
    snr = {name: np.zeros((num_seeds, len(ks))) for name in objectives}
    for name in objectives:
        for s in range(num_seeds):
            for j, k in enumerate(ks):
                objective = gaussian_snr.make_objective(name, k, miwae_inner=1)
                estimator = gaussian_snr.make_estimator(
                    objective, variables, x, problem["sigma"], u
                )
                t0 = time.perf_counter()
                stats = diagnostics.gradient_statistics(
                    estimator, num_estimates, tf.constant([1000 + s, k]), chunk_size=chunk_size
                )
                snr[name][s, j] = float(np.median(np.asarray(stats.snr["phi"])))
                log(
                    f"{ESTIMATORS[name]:13s} seed {s} K={k:<5d} median phi SNR "
                    f"{snr[name][s, j]:.4g} ({time.perf_counter() - t0:.1f} s)"
                )
    slopes = {}
    for name, values in snr.items():
        per_seed = [diagnostics.log_log_slope(ks, row) for row in values]
        se = float(np.std(per_seed, ddof=1) / np.sqrt(num_seeds)) if num_seeds > 1 else None
        slopes[name] = {"mean": float(np.mean(per_seed)), "se": se, "per_seed": per_seed}
    return {"ks": list(ks), "snr": snr, "slopes": slopes}


def table(results: dict) -> str:
    ks = results["ks"]
    lines = [f"{'estimator':14s}" + "".join(f"K={k:<9d}" for k in ks) + "slope (mean +- se)"]
    for name, values in results["snr"].items():
        s = results["slopes"][name]
        se = "" if s["se"] is None else f" +- {s['se']:.3f}"
        cells = "".join(f"{v:<11.4g}" for v in np.mean(values, axis=0))
        lines.append(f"{ESTIMATORS[name]:14s}{cells}{s['mean']:+.3f}{se}")
    return "\n".join(lines)


def figure(results: dict, path: pathlib.Path) -> pathlib.Path:
    import matplotlib.figure

    fig = matplotlib.figure.Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    for name, values in results["snr"].items():
        ax.errorbar(
            results["ks"],
            np.mean(values, 0),
            yerr=np.std(values, 0),
            marker="o",
            label=f"{ESTIMATORS[name]} ({results['slopes'][name]['mean']:+.2f})",
        )
    ax.set(xscale="log", yscale="log", xlabel="K", ylabel="median SNR of d/d(A, b)")
    ax.legend(fontsize=7)
    return _harness.save_figure(fig, path)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    tf.get_logger().setLevel(logging.ERROR)
    ks = [int(k) for k in FLAGS.ks]
    unknown = [o for o in FLAGS.objectives if o not in ESTIMATORS]
    if unknown or min(ks) < 2 or len(ks) < 2 or FLAGS.num_seeds < 1 or FLAGS.num_estimates < 2:
        raise app.UsageError(
            "need >= 2 distinct ks >= 2, num_seeds >= 1, num_estimates >= 2 "
            f"and objectives from {', '.join(ESTIMATORS)} (got {unknown})."
        )
    out_dir = pathlib.Path(FLAGS.out_dir or _harness.RESULTS_DIR / "ovis_snr")
    start = time.perf_counter()
    results = run(
        FLAGS.num_estimates,
        ks,
        FLAGS.num_seeds,
        FLAGS.objectives,
        FLAGS.chunk_size,
        log=lambda s: print(s, flush=True),
    )
    results |= {
        "num_estimates": FLAGS.num_estimates,
        "num_seeds": FLAGS.num_seeds,
        "seconds": time.perf_counter() - start,
        "machine": _harness.machine_info(),
    }
    _harness.write_json(out_dir / "results.json", results)
    print(f"wrote {out_dir / 'results.json'}")
    if FLAGS.figures:
        print(f"wrote {figure(results, out_dir / 'snr.png')}")
    print("\n" + table(results))


if __name__ == "__main__":
    flags.DEFINE_integer("num_estimates", 1000, "Gradient estimates per (estimator, K, seed).")
    flags.DEFINE_list("ks", ["2", "8", "32", "128"], "The grid of K (each >= 2).")
    flags.DEFINE_integer("num_seeds", 3, "Independent repetitions, for the slopes' error bars.")
    flags.DEFINE_list("objectives", list(ESTIMATORS), "Estimators to run.")
    flags.DEFINE_integer("chunk_size", 500, "Estimates per vectorized chunk.")
    flags.DEFINE_string("out_dir", None, "Output folder (default results/ovis_snr).")
    flags.DEFINE_bool("figures", True, "Draw snr.png.")
    app.run(main)
