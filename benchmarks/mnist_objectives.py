"""Rainforth et al.'s MNIST table at an equal budget: eight objectives, several seeds each.

    python benchmarks/mnist_objectives.py                      # the stated budget
    python benchmarks/mnist_objectives.py --steps=50 --seeds=1 --eval_size=20 \\
        --eval_num_samples=100 --objectives=iwae,dreg --out_dir=/tmp/quick

Each run trains Burda et al.'s one-stochastic-layer model (784-200-200-(2 x 50) tanh
Gaussian encoder, N(0, I) prior, 50-200-200-784 tanh Bernoulli decoder whose output bias
starts at the logit of the mean training image) on dynamically binarized MNIST, batch
20, Adam(1e-3, epsilon 1e-4), for `--steps` steps, with a budget of 64 weights per data
point for every objective. It then evaluates, on the first `--eval_size` test images
binarized once with a fixed seed: the IWAE-64 bound, log p^(x) with K = 5000, -KL(Q||P)
= IWAE-64 - log p^(x), the mean ESS of 64 samples over 64, and the active units. The
model, the binarization and the evaluation are the examples' own
(`mcobjectives.experimental.mnist`), with the same evaluation seeds for every run.

Results go to <out_dir>/results.json: `config` (the flags and the data source), `machine`
and `runs`, one record per
(objective, seed) written as soon as the run ends, so an interrupted invocation keeps
the finished runs and a rerun skips them. `figure.png`, drawn from results.json
alone (`--redraw`), shows every objective's mean +- sd against Rainforth et al. (2018)
table 1 at full budget (3280 epochs); the run ends by printing the table with standard
errors. Method and measured results: benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _harness
import numpy as np
import tensorflow as tf
from absl import app, flags

import mcobjectives as mco
from mcobjectives.experimental import mnist

# The budget of 64 weights per data point, as in Rainforth et al. (2018) table 1.
OBJECTIVES = {
    "IWAE(64)": lambda: mco.IWAE(64),
    "VAE(M=64)": lambda: mco.VAE(64),
    "MIWAE(8,8)": lambda: mco.MIWAE(8, 8),
    "PIWAE(8,8)": lambda: mco.PIWAE(8, 8),
    "CIWAE(0.05)": lambda: mco.CIWAE(64, beta=0.05),
    "DReG(64)": lambda: mco.DReG(64),
    "RWS(64)": lambda: mco.RWS(64),
    "STL(64)": lambda: mco.STL(64),
}
# Rainforth et al. (2018) table 1: test IWAE-64 and log p^(x), mean +- sd of 4 runs of
# 3280 epochs.
RAINFORTH_TABLE_1 = {
    "IWAE(64)": ((-86.11, 0.10), (-84.52, 0.02)),
    "PIWAE(8,8)": ((-85.74, 0.07), (-84.46, 0.06)),
    "MIWAE(8,8)": ((-85.69, 0.04), (-84.97, 0.10)),
    "CIWAE(0.05)": ((-85.91, 0.11), (-84.57, 0.09)),
    "VAE(M=64)": ((-86.69, 0.08), (-86.21, 0.19)),
}
KEYS = {name.split("(")[0].lower(): name for name in OBJECTIVES}
# How the runs are evaluated, recorded in results.json's config: runs evaluated otherwise
# (an earlier version's own evaluation) do not mix with these.
EVALUATION = "mcobjectives.experimental.mnist.evaluate"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script: importing is side-free)."""
    flags.DEFINE_list("objectives", list(KEYS), f"Objectives to run, of {sorted(KEYS)}.")
    flags.DEFINE_integer("seeds", 3, "Seeds per objective (0, 1, ...).")
    flags.DEFINE_integer("steps", 3000, "Training steps per run (batch 20: 3000 is one epoch).")
    flags.DEFINE_integer("eval_size", 1000, "Test images evaluated.")
    flags.DEFINE_integer("eval_num_samples", 5000, "K of the log p^(x) estimate.")
    flags.DEFINE_string("out_dir", "benchmarks/results/mnist_objectives", "Output folder.")
    flags.DEFINE_bool("download", True, "Let TensorFlow Datasets download MNIST if not prepared.")
    flags.DEFINE_bool("redraw", False, "Only redraw the figure and the table from results.json.")


def train(model, train_images: np.ndarray, steps: int, seed: int) -> float:
    """`steps` Adam steps on dynamically binarized batches; returns seconds per step."""
    step = mco.make_train_step(model, mnist.adam(1e-3), jit_compile=True)
    images = tf.constant(train_images)
    rng = np.random.default_rng(seed)
    per_epoch = len(train_images) // 20
    order = np.concatenate(
        [rng.permutation(len(train_images)) for _ in range(steps // per_epoch + 1)]
    )

    @tf.function
    def batch(indices, t):
        return mnist.binarize(tf.gather(images, indices), tf.stack([seed, t]))  # seed: int

    start = time.perf_counter()
    for t in range(steps):
        logs = step(batch(tf.constant(order[t * 20 : (t + 1) * 20]), tf.constant(t)))
        if not bool(logs["finite"]):
            raise FloatingPointError(f"step {t}: non-finite loss; lower the learning rate.")
    return (time.perf_counter() - start) / steps


METRICS = ("iwae64", "log_px", "neg_kl", "ess_fraction", "active_units")


def evaluate(model, tests: list[dict], num_samples: int) -> dict:
    """`METRICS` of the trained model (`mnist.evaluate`), with evaluation seeds fixed for
    every run."""
    result = mnist.evaluate(
        model, tests, seed=0, num_samples=num_samples, chunk_size=min(500, num_samples)
    )
    return {metric: result[metric] for metric in METRICS}


def summarize(runs: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{objective: {metric: (mean, standard error, number of seeds)}}, objectives in table order."""
    table = {}
    for name in OBJECTIVES:
        rows = [r for r in runs if r["objective"] == name]
        if rows:
            table[name] = {}
            for metric in METRICS:
                values = np.array([r[metric] for r in rows], dtype=np.float64)
                se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
                table[name][metric] = (float(values.mean()), float(se), len(values))
    return table


def markdown(table) -> str:
    lines = [
        "| objective | seeds | test IWAE-64 | test log p^(x) | -KL(Q\\|\\|P) | ESS / 64 "
        "| active units |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        cells = [f"{row[m][0]:.2f} +- {row[m][1]:.2f}" for m in ("iwae64", "log_px", "neg_kl")]
        cells += [f"{row['ess_fraction'][0]:.3f}", f"{row['active_units'][0]:.1f}"]
        lines.append(f"| {name} | {row['iwae64'][2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(results: dict, path: pathlib.Path) -> None:
    """Test IWAE-64 and log p^(x), mean +- sd over seeds, beside Rainforth et al.'s table 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarize(results["runs"])
    names = list(table)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, column, title in (
        (axes[0], "iwae64", 0, "test IWAE-64"),
        (axes[1], "log_px", 1, "test log p^(x), K = 5000"),
    ):
        for i, name in enumerate(names):
            values = [r[metric] for r in results["runs"] if r["objective"] == name]
            ax.errorbar(
                i,
                np.mean(values),
                yerr=np.std(values, ddof=1) if len(values) > 1 else 0,
                fmt="o",
                color="C0",
                capsize=4,
                label="this run" if i == 0 else None,
            )
            ax.plot([i] * len(values), values, ".", color="C0", alpha=0.4)
            if name in RAINFORTH_TABLE_1:
                mean, sd = RAINFORTH_TABLE_1[name][column]
                ax.errorbar(
                    i + 0.2,
                    mean,
                    yerr=sd,
                    fmt="s",
                    color="C3",
                    capsize=4,
                    label="Rainforth et al. table 1 (3280 epochs)" if i == 0 else None,
                )
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_title(f"{title}: {results['config']['steps']} steps (mean +- sd)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="center right", fontsize=8)
    fig.tight_layout()
    _harness.save_figure(fig, path)
    plt.close(fig)


def main(argv):
    del argv
    names = []
    for key in FLAGS.objectives:
        if key not in KEYS:
            raise app.UsageError(f"--objectives: unknown {key!r}; choose from {sorted(KEYS)}.")
        names.append(KEYS[key])
    for flag in ("seeds", "steps", "eval_size", "eval_num_samples"):
        if getattr(FLAGS, flag) < 1:
            raise app.UsageError(f"--{flag} must be >= 1, got {getattr(FLAGS, flag)}.")
    if FLAGS.eval_num_samples < mnist.BOUND_SAMPLES:  # -KL = IWAE-64 - log p^(x)
        raise app.UsageError(
            f"--eval_num_samples must be >= {mnist.BOUND_SAMPLES}, the K of the IWAE-64 "
            f"bound that -KL compares log p^(x) with; got {FLAGS.eval_num_samples}."
        )
    out_dir = pathlib.Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {f: getattr(FLAGS, f) for f in ("steps", "eval_size", "eval_num_samples")}
    config["evaluation"] = EVALUATION
    path = out_dir / "results.json"
    if FLAGS.redraw:
        results = json.loads(path.read_text())
        draw(results, out_dir / "figure.png")
        print(markdown(summarize(results["runs"])))
        return
    data = mnist.load_mnist("mnist", download=FLAGS.download)
    train_images = data.train
    config["dataset"] = data.source
    tests = mnist.test_batches(data.test[: FLAGS.eval_size], binarized=data.binarized)
    saved = json.loads(path.read_text()) if path.exists() else {"config": config, "runs": []}
    if saved["config"] != config:
        differ = sorted(
            k for k in {*config, *saved["config"]} if config.get(k) != saved["config"].get(k)
        )
        raise app.UsageError(
            f"{path} holds runs of {saved['config']}, which differ in {', '.join(differ)}: "
            "use another --out_dir."
        )
    saved.setdefault("machine", _harness.machine_info())
    mean_pixel = train_images.mean(axis=0)
    for seed in range(FLAGS.seeds):
        for name in names:
            if any(r["objective"] == name and r["seed"] == seed for r in saved["runs"]):
                continue
            model = _harness.burda_model(OBJECTIVES[name](), train_images[:20], seed, mean_pixel)
            seconds = train(model, train_images, FLAGS.steps, seed)
            record = {
                "objective": name,
                "seed": seed,
                "steps": FLAGS.steps,
                **evaluate(model, tests, FLAGS.eval_num_samples),
                "seconds_per_step": seconds,
            }
            saved["runs"].append(record)
            _harness.write_json(path, saved)
            print(json.dumps(record), flush=True)
    draw(saved, out_dir / "figure.png")
    print(markdown(summarize(saved["runs"])))


if __name__ == "__main__":
    define_flags()
    app.run(main)
