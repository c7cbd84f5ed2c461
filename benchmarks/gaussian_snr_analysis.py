"""The toy Gaussian sweep against the theory: SNR slopes, their checks, bias tests, summary.

Functions of the results of `gaussian_snr.run_benchmark` (what results.json holds): the
per-coordinate log-log slopes of every SNR curve, the slopes the theory predicts next to
the measured ones, the paired bias t statistics per K and pooled, and the printed summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mcobjectives import diagnostics

# isort: split
# The benchmarks' own modules, beside this script.
from figures import curve

LARGE_K = 100  # asymptotic slopes are fitted over K >= LARGE_K
TOLERANCE = 0.15  # a slope matches the theory within this
FLOOR_FACTOR = 2.0  # a check is judged only where the fitted SNRs exceed this times the floor
NETWORKS = ("theta", "phi", "b")


class Check(NamedTuple):
    """A slope the theory predicts, of `objective`'s SNR of `network` ("theta", "phi", "b").

    estimator: "plug_in" (|mean| / std of its own estimates) or "via_dreg" (the mean of its
    DReG partner); large_only: fitted over K >= LARGE_K only (an asymptotic rate).
    """

    name: str
    objective: str
    network: str
    estimator: str
    large_only: bool
    expected: float
    source: str


CHECKS = (
    Check("IWAE phi (A, b) SNR via DReG in K", "iwae", "phi", "via_dreg", False, -0.5,
          "Rainforth eq. 6: SNR(phi) = O(sqrt(M / K))"),
    Check("IWAE phi (A, b) SNR in K", "iwae", "phi", "plug_in", False, -0.5,
          "Rainforth eq. 6 (plug-in SNR)"),
    Check("IWAE theta (mu) SNR in K", "iwae", "theta", "plug_in", True, 0.5,
          "Rainforth eq. 5: SNR(theta) = O(sqrt(MK))"),
    Check("IWAE-DReG phi (A, b) SNR in K", "iwae_dreg", "phi", "plug_in", True, 0.5,
          "Tucker et al. section 6.1, figure 1"),
    Check("VAE phi (A, b) SNR in M", "vae", "phi", "plug_in", False, 0.5,
          "Rainforth eq. 6: exact in M"),
    Check("VAE theta (mu) SNR in M", "vae", "theta", "plug_in", False, 0.5,
          "Rainforth eq. 5: exact in M"),
    Check("MIWAE phi (A, b) SNR in M", "miwae", "phi", "plug_in", False, 0.5,
          "Rainforth eq. 6: sqrt(M / K), K fixed"),
    Check("MIWAE theta (mu) SNR in M", "miwae", "theta", "plug_in", False, 0.5,
          "Rainforth eq. 5: sqrt(MK), K fixed"),
)  # fmt: skip
KEYS = {"plug_in": "snr", "via_dreg": "snr_via_dreg"}


def slope_summary(ns: Sequence[int], values: np.ndarray) -> dict | None:
    """Per-coordinate log-log slopes of values [len(ns), P] against ns: median and IQR.

    Coordinates with a non-positive or non-finite value are left out; None with fewer than
    two points or no usable coordinate.
    """
    values = np.asarray(values, np.float64)
    if len(ns) < 2:
        return None
    usable = np.all(np.isfinite(values) & (values > 0), axis=0)
    slopes = [diagnostics.log_log_slope(ns, values[:, j]) for j in np.flatnonzero(usable)]
    if not slopes:
        return None
    q25, median, q75 = np.quantile(slopes, [0.25, 0.5, 0.75])
    return {"median": median, "q25": q25, "q75": q75, "coordinates": len(slopes), "n": list(ns)}


def _fit(results: dict, name: str, key: str, network: str, large_only: bool) -> dict | None:
    ns, values = curve(results, name, key, network)
    keep = [i for i, n in enumerate(ns) if n >= LARGE_K or not large_only]
    return slope_summary([ns[i] for i in keep], values[keep] if keep else values[:0])


def slopes(results: dict) -> dict:
    """Slopes of every SNR curve: slopes[objective][estimator][network][fit range]."""
    out = {}
    for name in results["runs"]:
        out[name] = {}
        for estimator, key in KEYS.items():
            fits = {
                network: {
                    "all": _fit(results, name, key, network, False),
                    f"n>={LARGE_K}": _fit(results, name, key, network, True),
                }
                for network in (NETWORKS if key == "snr" else ("phi", "b"))
            }
            if any(f["all"] is not None for f in fits.values()):
                out[name][estimator] = fits
    return out


def checks(results: dict) -> list[dict]:
    """The theory's slopes next to the measured ones, with a status each."""
    floor = results["noise_floor"]["snr"]
    out = []
    for check in CHECKS:
        if check.objective not in results["runs"]:
            continue
        axis = results["estimators"][check.objective]["axis"]
        fit = _fit(results, check.objective, KEYS[check.estimator], check.network, check.large_only)
        row = {
            **check._asdict(),
            "check": check.name,
            "fit_range": f"{axis} >= {LARGE_K}" if check.large_only else "all",
            "tolerance": TOLERANCE,
            "measured": fit,
            "status": "no fit (fewer than 2 points)",
        }
        del row["name"], row["large_only"]
        if fit is not None:
            # The plug-in SNRs behind the fit: its own, or (via DReG) its DReG partner's.
            name = check.objective
            if check.estimator == "via_dreg":
                name = results["estimators"][name]["partner"]
            runs = results["runs"][name]
            lowest = min(runs[str(n)]["snr_median"][check.network] for n in fit["n"])
            row["lowest_median_snr"] = {"objective": name, "snr": lowest}
            if lowest < FLOOR_FACTOR * floor:
                row["status"] = "below noise floor"
            elif abs(fit["median"] - check.expected) <= TOLERANCE:
                row["status"] = "matches"
            else:
                row["status"] = "differs"
        out.append(row)
    return out


def bias_tests(results: dict) -> list[dict]:
    """`diagnostics.t_statistic_summary` of every estimator against its reference: over phi
    per K, and over b pooled over K; with the t statistic along u (of phi . u)."""
    rows = []
    for name, runs in results["runs"].items():
        reference = results["estimators"][name]["reference"]
        if reference is None:
            continue
        pooled, pooled_u = [], []
        for n, record in sorted(runs.items(), key=lambda kv: int(kv[0])):
            bias = record["bias"]
            row = {"objective": name, "reference": reference, "n": int(n), "t_u": bias["t_u"]}
            rows.append({**row, **bias["t_summary"]["phi"]})
            pooled.append(np.asarray(bias["t"]["b"], np.float64))
            pooled_u.append(bias["t_u"])
        u_summary = diagnostics.t_statistic_summary(np.asarray(pooled_u, np.float64))
        row = {"objective": name, "reference": reference, "n": "all (b, pooled)", "t_u": None}
        t = diagnostics.t_statistic_summary(np.concatenate(pooled))
        rows.append({**row, **t, "t_u_summary": u_summary})
    return rows


def add_snr_via_dreg(results: dict, phi: dict) -> None:
    """SNR of IWAE, RWS and JVI with E[Delta] taken from their DReG partner's mean.

    phi: (name, n) -> (mean, variance) of the phi estimates of every setting.
    """
    dim = results["problem"]["dim"]
    for (name, n), (_, variance) in phi.items():
        partner = (results["estimators"][name]["partner"], n)
        if partner in phi:
            snr = diagnostics.snr(phi[partner][0], variance)
            record = results["runs"][name][n]
            record["snr_via_dreg"] = {"phi": snr, "b": snr[-dim:]}
            medians = {"phi": np.median(snr), "b": np.median(snr[-dim:])}
            record["snr_via_dreg_median"] = {k: float(v) for k, v in medians.items()}


def histograms(results: dict, kept: dict, bins: int = 40) -> tuple[dict, dict]:
    """Figure 1: the coordinates of b and mu with the largest SNR at the smallest K (or M),
    and the density of their estimates over `bins` bins between the 0.2 % and 99.8 %
    quantiles; kept: (name, n) -> {"b": [R, D], "theta": [R, D]} estimates."""
    if not kept:
        return {}, {}
    name, smallest = min(kept, key=lambda key: (key[0] != "iwae", key[1]))
    snr = results["runs"][name][str(smallest)]["snr"]
    dim = results["problem"]["dim"]
    chosen = {"b": int(np.argmax(snr["phi"][-dim:])), "theta": int(np.argmax(snr["theta"]))}
    out = {}
    for (run, n), estimates in sorted(kept.items()):
        for leaf, j in chosen.items():
            values = estimates[leaf][:, j]
            low, high = (float(q) for q in np.quantile(values, [0.002, 0.998]))
            density = np.histogram(values, np.linspace(low, high, bins + 1), density=True)[0]
            entry = {"low": low, "high": high, "density": density}
            out.setdefault(run, {}).setdefault(str(n), {})[leaf] = entry
    return {"objective": name, **chosen}, out


def _slope(fit: dict | None) -> str:
    if fit is None:
        return "-"
    return f"{fit['median']:+.2f} [{fit['q25']:+.2f}, {fit['q75']:+.2f}]"


def summary(results: dict) -> str:
    """The printed summary: theory checks, every slope, median SNRs and bias tests."""
    cfg, problem, labels = results["config"], results["problem"], results["estimators"]
    lines = [
        f"Toy Gaussian gradient SNR: offsets {problem['offset_scale']}, q variance "
        f"{problem['q_variance']:.4g}, batch {cfg['batch_size']}, R = {cfg['num_estimates']} "
        f"estimates, SNR noise floor {results['noise_floor']['snr']:.4f}, "
        f"{results['seconds']:.0f} s",
        "",
        f"Slopes against theory (median [IQR] over coordinates; tolerance {TOLERANCE}):",
        f"  {'check':40s} {'fit':8s} {'theory':>6s}  {'measured':24s} status",
    ]
    for row in results["checks"]:
        lines.append(
            f"  {row['check']:40s} {row['fit_range'].replace(' ', ''):8s} {row['expected']:+6.2f}  "
            f"{_slope(row['measured']):24s} {row['status']}"
        )
    lines += [
        "",
        "Every SNR slope (plug-in, whole grid; 'via DReG' where there is a partner):",
        f"  {'estimator':12s} {'axis':4s} {'phi':24s} {'theta':24s} {'phi via DReG':24s} "
        f"{'theta, K>=' + str(LARGE_K):24s}",
    ]
    for name, fits in results["slopes"].items():
        plug, via = fits.get("plug_in", {}), fits.get("via_dreg", {})
        cells = (
            plug.get("phi", {}).get("all"),
            plug.get("theta", {}).get("all"),
            via.get("phi", {}).get("all"),
            plug.get("theta", {}).get(f"n>={LARGE_K}"),
        )
        label = labels[name]
        lines.append(
            f"  {label['label']:12s} {label['axis']:4s} "
            + " ".join(f"{_slope(c):24s}" for c in cells)
        )
    grid = sorted({int(n) for runs in results["runs"].values() for n in runs})
    for network, what in (("phi", "phi = (A, b)"), ("theta", "theta = mu")):
        lines += ["", f"Median SNR of {what} per K (or M):"]
        lines.append(f"  {'estimator':22s}" + "".join(f"{n:>9d}" for n in grid))
        for name, runs in results["runs"].items():
            rows = [(labels[name]["label"], "snr_median")]
            if network == "phi" and any("snr_via_dreg_median" in r for r in runs.values()):
                rows.append((labels[name]["label"] + " via DReG", "snr_via_dreg_median"))
            for title, key in rows:
                values = [runs.get(str(n), {}).get(key, {}).get(network) for n in grid]
                lines.append(
                    f"  {title:22s}"
                    + "".join(f"{'-':>9s}" if v is None else f"{v:9.3g}" for v in values)
                )
    if results["bias_tests"]:
        lines += [
            "",
            "Paired bias t statistics over phi's parameters, and of phi . u alone (unbiased: "
            "every t ~ N(0, 1), |t| > 3 for 0.3 %;\n  the parameters' t share the noise along u, "
            "so their mean t^2 scatters much more than a chi^2 of that many degrees):",
            f"  {'estimator':10s} {'vs':6s} {'K or M':16s} {'max |t|':>10s} {'mean t^2':>10s} "
            f"{'|t| > 3':>8s} {'t along u':>18s}",
        ]
        for row in results["bias_tests"]:
            if row["t_u"] is not None:
                along = f"{row['t_u']:18.3g}"
            else:
                along = f"{row['t_u_summary']['mean_t_squared']:8.3g} (mean t^2)"
            lines.append(
                f"  {labels[row['objective']]['label']:10s} {labels[row['reference']]['label']:6s} "
                f"{row['n']!s:16s} {row['max_abs_t']:10.3g} {row['mean_t_squared']:10.3g} "
                f"{row['fraction_abs_t_above_3']:8.1%} {along}"
            )
    return "\n".join(lines)
