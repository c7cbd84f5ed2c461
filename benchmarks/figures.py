"""The benchmarks' figures, drawn from a saved results.json alone.

    python benchmarks/figures.py benchmarks/results/mnist_snr/results.json [more.json ...]
    python benchmarks/figures.py --redraw          # every results.json under benchmarks/results

writes the PNGs of each file next to it (or into `--out_dir`). The benchmark scripts draw
their figures the same way, from the results.json they have just written, so a redraw
reproduces them. gaussian_snr: Rainforth et al. figures 1 (and 9), 2, 3, 4 and 10, Tucker
et al. figure 1; mnist_snr: Rainforth et al. figure 8, Tucker et al. figure 2 (top row).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

# isort: split
# The benchmarks' own modules, beside this script.
import _harness

GAUSSIAN_FIGURES = (
    "fig1_histograms.png",
    "fig2_snr.png",
    "fig3_dsnr.png",
    "fig4_dsnr_k1000.png",
    "fig10_rmse.png",
    "tucker_fig1.png",
)
MNIST_FIGURES = ("fig8_snr.png", "tucker_fig2_variance.png")
LAYERS = ("hidden_0", "hidden_1", "output")
GAUSSIAN_COLORS = {
    "iwae": "tab:blue", "stl": "tab:orange", "iwae_dreg": "tab:green", "rws": "tab:purple",
    "rws_dreg": "tab:brown", "jvi": "tab:pink", "jvi_dreg": "tab:gray", "vae": "tab:red",
    "miwae": "tab:olive",
}  # fmt: skip
MNIST_COLORS = {
    "iwae": "tab:blue", "piwae": "tab:orange", "miwae": "tab:green", "ciwae": "tab:red",
    "dreg": "tab:purple", "rws": "tab:brown", "rws_dreg": "tab:pink",
}  # fmt: skip
OTHER_COLORS = ("tab:cyan", "black", "gold", "navy", "lime", "teal", "maroon")


def _color(palette: dict, name: str, names) -> str:
    """The palette's color, else one of OTHER_COLORS by the name's rank among the others."""
    if name in palette:
        return palette[name]
    others = [n for n in names if n not in palette]
    return OTHER_COLORS[others.index(name) % len(OTHER_COLORS)]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _log_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)


def _reference_line(ax, ns, anchor_y, slope, color, label) -> None:
    if np.isfinite(anchor_y):
        ns = np.array([min(ns), max(ns)], np.float64)
        ax.plot(ns, anchor_y * (ns / ns[0]) ** slope, "--", color=color, lw=1.2, label=label)


# --------------------------------------------------------------------- the toy Gaussian
def _estimators(results: dict) -> dict:
    if "estimators" in results:
        return results["estimators"]
    import gaussian_snr  # a results.json written before the estimators were saved in it

    return gaussian_snr.describe_estimators(results["runs"], results["config"]["miwae_inner"])


def _runs(results: dict) -> list[str]:
    """The names of the runs in the order they ran (results.json sorts its keys)."""
    names = [n for n in results["config"]["objectives"] if n in results["runs"]]
    return names + [n for n in results["runs"] if n not in names]


def curve(results: dict, name: str, key: str, network: str) -> tuple[list[int], np.ndarray]:
    """ns and the per-coordinate values [len(ns), P] of runs[name][n][key][network]
    (network "b": the last D entries of "phi")."""
    ns, rows = [], []
    dim = results["problem"]["dim"]
    for n, record in sorted(results["runs"].get(name, {}).items(), key=lambda kv: int(kv[0])):
        if key in record:
            leaf = np.asarray(record[key]["phi" if network == "b" else network], np.float64)
            ns.append(int(n))
            rows.append(leaf[-dim:] if network == "b" else leaf)
    return ns, np.array(rows)


def _series(results: dict, name: str, getter) -> tuple[np.ndarray, np.ndarray]:
    """ns and getter(record) per n (NaN where missing or not positive: log axes)."""
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


def _style(est: dict, name: str, names) -> dict:
    """An estimator's color, line (solid in K, dashed in M) and label."""
    axis = est[name]["axis"]
    color = _color(GAUSSIAN_COLORS, name, names)
    return {
        "color": color,
        "ls": "-" if axis == "K" else "--",
        "label": f"{est[name]['label']} ({axis})",
    }


def _band(ax, results: dict, name: str, quartiles, color: str) -> None:
    """The band between the quartiles (25 %, 75 %) = quartiles(record), against n."""
    ns, low = _series(results, name, lambda r: quartiles(r)[0])
    _, high = _series(results, name, lambda r: quartiles(r)[1])
    ax.fill_between(ns, low, high, color=color, alpha=0.15, lw=0)


def _subtitle(results: dict) -> str:
    p = results["problem"]
    return (
        f"toy Gaussian, D = {p['dim']}, offsets {p['offset_scale']}, q variance "
        f"{p['q_variance']:.3g}, batch {p['batch_size']}, "
        f"{results['config']['num_estimates']} estimates per point"
    )


def fig_histograms(results: dict, est: dict, fig) -> None:
    """Rainforth figure 1 (IWAE in K) and figure 9 (VAE in M) for one b and one mu."""
    histograms, chosen = results.get("histograms", {}), results["histogram_coordinates"]
    axes = fig.subplots(2, 2)
    for row, name in enumerate(("iwae", "vae")):
        for col, (leaf, what) in enumerate((("b", "inference network"), ("theta", "generative"))):
            ax, data = axes[row, col], histograms.get(name, {})
            if not data or leaf not in chosen:
                ax.text(0.5, 0.5, "not in this run", ha="center", transform=ax.transAxes)
                continue
            colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
            for color, n in zip(colors, sorted(data, key=int), strict=False):
                h = data[n][leaf]
                edges = np.linspace(h["low"], h["high"], len(h["density"]) + 1)
                density = np.array(h["density"], np.float64)
                ax.stairs(density, edges, color=color, lw=1.4, label=f"{est[name]['axis']} = {n}")
            ax.axvline(0.0, color="k", lw=0.8, ls=":")
            j = chosen[leaf]
            symbol = f"b_{{{j + 1}}}" if leaf == "b" else f"\\mu_{{{j + 1}}}"
            ax.set_xlabel(rf"$\Delta({symbol})$")
            ax.set_ylabel("density")
            fixed = "M = 1" if est[name]["axis"] == "K" else "K = 1"
            ax.set_title(f"{est[name]['label']} ({fixed}), {what}", fontsize="medium")
            _legend(ax, fontsize="small")
    fig.suptitle("Gradient estimates: Rainforth et al. figures 1 and 9\n" + _subtitle(results))


def fig_snr(results: dict, est: dict, fig) -> None:
    """Rainforth figure 2 (per-dimension SNR of b and mu) and every estimator's median."""
    axes, runs, floor = fig.subplots(2, 2), results["runs"], results["noise_floor"]["snr"]
    for col, network in enumerate(("b", "theta")):
        ax, ends = axes[0, col], []
        for name in (n for n in ("iwae", "vae") if runs.get(n)):
            ns, values = curve(results, name, "snr", network)
            color, median = GAUSSIAN_COLORS[name], np.median(values, axis=1)
            ax.plot(ns, values, color=color, lw=0.6, alpha=0.35)
            label = f"{est[name]['label']} (median), in {est[name]['axis']}"
            ax.plot(ns, median, color=color, lw=2.2, marker="o", ms=4, label=label)
            ends.append((name, ns, median[0]))
            vns, via = _series(results, name, lambda r: r["snr_via_dreg_median"]["b"])
            if network == "b" and np.isfinite(via).any():
                label = "IWAE via DReG (median)"
                ax.plot(vns, via, color=color, lw=2.0, ls=":", marker="s", ms=3, label=label)
        for name, ns, first in ends:
            if name == "vae":
                _reference_line(ax, ns, first, 0.5, "k", "slope +1/2")
            elif network == "b":
                _reference_line(ax, ns, first, -0.5, "tab:green", "slope -1/2")
        ax.axhline(floor, color="0.5", ls="-.", lw=1, label="noise floor")
        title = "inference network: b" if network == "b" else r"generative network: $\mu$"
        _log_axes(ax, "K or M", "SNR", f"{title} (thin: each dimension)")
        _legend(ax, fontsize="x-small")
    for col, network in enumerate(("phi", "theta")):
        ax = axes[1, col]
        for name in (n for n in _runs(results) if runs[n]):
            style = _style(est, name, _runs(results))
            ns, values = _series(results, name, lambda r, w=network: r["snr_median"][w])
            ax.plot(ns, values, marker="o", ms=3, **style)
            ns, via = _series(results, name, lambda r: r["snr_via_dreg_median"]["phi"])
            if network == "phi" and np.isfinite(via).any():
                label = f"{est[name]['label']} via DReG"
                ax.plot(ns, via, ls=":", marker="s", ms=3, color=style["color"], label=label)
        ax.axhline(floor, color="0.5", ls="-.", lw=1, label="noise floor")
        what = r"$\phi$ = (A, b)" if network == "phi" else r"$\theta$ = $\mu$"
        _log_axes(ax, "K (solid) or M (dashed)", "median SNR", f"every estimator: {what}")
        _legend(ax, fontsize="x-small", ncol=2)
    fig.suptitle("Signal-to-noise ratios: Rainforth et al. figure 2\n" + _subtitle(results))


def fig_dsnr(results: dict, est: dict, fig, key: str, title: str) -> None:
    """Rainforth figure 3 (key "dsnr") or 4 (key "dsnr_k_max"), both networks."""
    floors = results["noise_floor"]["dsnr_random_direction"]
    for ax, network in zip(fig.subplots(1, 2), ("phi", "theta"), strict=True):
        for name in _runs(results):
            ns, values = _series(results, name, lambda r, w=network: r[key][w])
            if not np.isfinite(values).any():
                continue
            bold, style = name in ("iwae", "vae"), _style(est, name, _runs(results))
            ax.plot(ns, values, marker="o", ms=3, lw=2.2 if bold else 1.0, **style)
            if bold:
                quartiles = lambda r, w=network: r[key + "_quartiles"][w]  # noqa: E731
                _band(ax, results, name, quartiles, style["color"])
        ax.axhline(floors[network], color="0.3", ls="-.", lw=1, label="random direction")
        what = r"inference network $\phi$" if network == "phi" else r"generative network $\mu$"
        _log_axes(ax, "K (solid) or M (dashed)", "DSNR", what)
        _legend(ax, fontsize="x-small", ncol=2)
    fig.suptitle(f"{title}\n" + _subtitle(results))


def fig_rmse(results: dict, est: dict, fig) -> None:
    """Rainforth figure 10: RMSE of the mu gradient to grad_mu log p(x), with the IQR."""
    ax = fig.subplots()
    for name in ("iwae", "vae", "miwae"):
        if not results["runs"].get(name):
            continue
        ns, values = _series(results, name, lambda r: r["rmse_theta"])
        style = _style(est, name, _runs(results)) | {"ls": "-"}
        ax.plot(ns, values, marker="o", ms=3, lw=2, **style)
        _band(ax, results, name, lambda r: r["rmse_theta_quartiles"], style["color"])
        if name == "iwae":
            _reference_line(ax, ns, values[0], -0.5, "k", "slope -1/2")
    _log_axes(ax, "K or M", r"RMSE to $\nabla_\mu \log p(x)$", "")
    _legend(ax, fontsize="small")
    title = "RMSE of the generative gradient: Rainforth et al. figure 10\n"
    fig.suptitle(title + _subtitle(results), fontsize="medium")


def fig_tucker(results: dict, est: dict, fig) -> None:
    """Tucker et al. figure 1: SNR, squared bias and variance over phi, against K."""
    groups = (
        ("IWAE family (bias against IWAE)", ("iwae", "stl", "iwae_dreg", "vae")),
        ("RWS and JVI (bias against RWS, JVI)", ("rws", "rws_dreg", "jvi", "jvi_dreg")),
    )
    axes = fig.subplots(2, 3)
    for row, (group, names) in enumerate(groups):
        for name in (n for n in names if results["runs"].get(n)):
            label = "K ELBOs (VAE, M = K)" if name == "vae" else est[name]["label"]
            color = GAUSSIAN_COLORS[name]
            ns, snr = _series(results, name, lambda r: r["snr_median"]["phi"])
            axes[row, 0].plot(ns, snr, marker="o", ms=3, color=color, label=label)
            ns, via = _series(results, name, lambda r: r["snr_via_dreg_median"]["phi"])
            if np.isfinite(via).any():
                via_label = f"{label} via DReG"
                axes[row, 0].plot(ns, via, ls=":", marker="s", ms=3, color=color, label=via_label)
            ns, bias = _series(results, name, lambda r: r["bias"]["squared_bias_mean"]["phi"])
            if np.isfinite(bias).any():
                versus = f"{label} vs {est[est[name]['reference']]['label']}"
                axes[row, 1].plot(ns, bias, marker="o", ms=3, color=color, label=versus)
                noise = lambda r: r["bias"]["noise_squared_bias_mean"]["phi"]  # noqa: E731
                ns, noise = _series(results, name, noise)
                axes[row, 1].plot(
                    ns, noise, ls=":", lw=1, color=color, label=f"{label}: noise level"
                )
            ns, var = _series(results, name, lambda r: r["variance_mean"]["phi"])
            axes[row, 2].plot(ns, var, marker="o", ms=3, color=color, label=label)
        floor = results["noise_floor"]["snr"]
        axes[row, 0].axhline(floor, color="0.5", ls="-.", lw=1, label="noise floor")
        for col, ylabel in enumerate(("median SNR", "squared bias (mean)", "variance (mean)")):
            _log_axes(axes[row, col], "K", f"{ylabel} over phi", group if col == 0 else "")
            _legend(axes[row, col], fontsize="x-small")
    title = "SNR, squared bias and variance of the inference gradient: Tucker et al. figure 1\n"
    fig.suptitle(title + _subtitle(results))


def draw_gaussian(results: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    est = _estimators(results)
    figure_4 = f"DSNR against E[Delta] of IWAE at K = {max(results['config']['ks'])}: figure 4"
    drawers = (
        (fig_histograms, (10, 7), ()),
        (fig_snr, (11, 9), ()),
        (fig_dsnr, (11, 4.8), ("dsnr", "DSNR against each estimator's own mean: figure 3")),
        (fig_dsnr, (11, 4.8), ("dsnr_k_max", figure_4)),
        (fig_rmse, (6.5, 4.8), ()),
        (fig_tucker, (14, 8.5), ()),
    )
    paths = []
    for name, (draw_one, size, args) in zip(GAUSSIAN_FIGURES, drawers, strict=True):
        if draw_one is fig_histograms and "histograms" not in results:
            print(f"{name}: this results.json predates saved histograms; left as it is")
            continue
        fig = _figure(*size)
        draw_one(results, est, fig, *args)
        paths.append(_harness.save_figure(fig, out_dir / name))
    return paths


# ------------------------------------------------------------------ MNIST in training
def _checkpoints(run: dict, which: str, key) -> tuple[list, np.ndarray]:
    steps = [c["step"] for c in run["checkpoints"]]
    return steps, np.array([key(c[which]) for c in run["checkpoints"]], np.float64)


def fig_mnist_snr(record: dict, fig) -> None:
    """Rainforth figure 8: one panel per encoder layer, SNR mean +- std against step."""
    for ax, layer in zip(fig.subplots(1, len(LAYERS)), LAYERS, strict=True):
        for name in _runs(record):
            run = record["runs"][name]
            steps, mean = _checkpoints(run, "own", lambda s, la=layer: s["snr"][la]["mean"])
            _, std = _checkpoints(run, "own", lambda s, la=layer: s["snr"][la]["std"])
            color = _color(MNIST_COLORS, name, _runs(record))
            ax.plot(steps, mean, marker="o", ms=3, color=color, label=run["description"])
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
        ax.set(
            title=f"encoder {layer} ({record['num_weights']} random weights)",
            xlabel="training step",
            ylabel="SNR",
        )
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(
        f"SNR of inference-network gradients during training (mean +- std over weights; "
        f"R = {record['config']['num_estimates']}, {record['dataset']})",
        fontsize=10,
    )


def fig_mnist_variance(record: dict, fig) -> None:
    """Tucker figure 2, top row: encoder gradient variance against step (log y)."""
    runs = record["runs"]
    pairs = [n for n in ("iwae", "rws") if n in runs]
    axes = np.atleast_1d(fig.subplots(1, 1 + len(pairs)))
    for name in _runs(record):
        steps, variance = _checkpoints(runs[name], "own", lambda s: s["variance_mean"])
        style = {"color": _color(MNIST_COLORS, name, _runs(record))}
        axes[0].plot(steps, variance, marker="o", ms=3, label=runs[name]["description"], **style)
    axes[0].set_title("every objective's own estimator")
    for ax, name in zip(axes[1:], pairs, strict=True):
        run = runs[name]
        steps, own = _checkpoints(run, "own", lambda s: s["variance_mean"])
        _, other = _checkpoints(run, "counterpart", lambda s: s["variance_mean"])
        color = _color(MNIST_COLORS, name, _runs(record))
        ax.plot(steps, own, "--", marker="o", ms=3, color=color, label=run["description"])
        color = _color(MNIST_COLORS, run["counterpart"], [*_runs(record), run["counterpart"]])
        label = run["counterpart_description"]
        ax.plot(steps, other, "-", marker="o", ms=3, color=color, label=label)
        ax.set_title(f"at the {run['description']} run's parameters")
    axes[0].set_ylabel("variance, mean over encoder parameters")
    for ax in axes:
        ax.set(yscale="log", xlabel="training step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Variance of the inference-network gradient estimator (R = "
        f"{record['config']['num_estimates']}, {record['dataset']})",
        fontsize=10,
    )


def draw_mnist(record: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    pairs = len([n for n in ("iwae", "rws") if n in record["runs"]])
    sizes = ((12, 3.6), (4.2 * (1 + pairs), 3.6))
    paths, drawers = [], (fig_mnist_snr, fig_mnist_variance)
    for name, draw_one, size in zip(MNIST_FIGURES, drawers, sizes, strict=True):
        fig = _figure(*size)
        draw_one(record, fig)
        paths.append(_harness.save_figure(fig, out_dir / name))
    return paths


def draw(path: pathlib.Path, out_dir: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Draws the figures of one results.json into out_dir (default: its folder)."""
    path = pathlib.Path(path)
    results = _harness.read_json(path)
    out_dir = pathlib.Path(out_dir or path.parent)
    kind = results.get("benchmark", "gaussian_snr" if "problem" in results else None)
    if kind == "gaussian_snr":
        return draw_gaussian(results, out_dir)
    if kind == "mnist_snr":
        return draw_mnist(results, out_dir)
    return []  # throughput: tables only


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=pathlib.Path, help="results.json files")
    parser.add_argument("--redraw", action="store_true", help="every results.json in results/")
    parser.add_argument("--out_dir", type=pathlib.Path, help="where the PNGs go (one file only)")
    args = parser.parse_args(argv)
    saved = sorted(_harness.RESULTS_DIR.glob("*/results.json")) if args.redraw else []
    paths = list(args.results) + saved
    if not paths or (args.out_dir and len(paths) > 1):
        parser.error("give one or more results.json files, or --redraw (--out_dir: one file)")
    for path in paths:
        for png in draw(path, args.out_dir):
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
