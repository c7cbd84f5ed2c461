r"""Inference-network gradient SNR and variance along MNIST training, for six objectives.

Reproduces, over a short training budget:

* Rainforth et al. (2018), figure 8: the signal-to-noise ratio of the inference network's
  gradient estimates during training, as the mean +- standard deviation over 20 randomly
  chosen weights per encoder layer, for IWAE(64), PIWAE(8, 8), MIWAE(8, 8),
  CIWAE(64, beta = 0.05), DReG(64, alpha = 0) (IWAE-DReG) and RWS(64);
* Tucker et al. (2019), figure 2, top row: the variance of the inference network's gradient
  estimator along training, with IWAE's estimator (dashed) against IWAE-DReG's (solid) at
  the parameters of the IWAE run, and RWS's wake update (dashed) against RWS-DReG's
  (DReG(64, alpha = 1), solid) at the parameters of the RWS run.

Setup (Burda et al.'s model): encoder 784-200-200-(2 x 50) tanh giving a diagonal Gaussian
q(z|x), N(0, I) prior, decoder 50-200-200-784 tanh of Bernoulli pixels with the output
bias at the logit of the mean training image; dynamically binarized MNIST, batch 20, Adam
(learning rate 1e-3, epsilon 1e-4), a budget of 64 samples per data point. Every run
starts from the same initial weights and sees the same batches in the same order.

Definitions. At each checkpoint (step 0 and every --eval_every steps), the run's
gradient estimator for the encoder is evaluated R = --num_estimates times on one fixed
batch: the first --snr_batch_size training images with one fixed binarization, the same
for every run and checkpoint. The R estimates differ only in the draws of z (estimate r
uses the r-th seed split from one fixed seed, so every run and checkpoint use the same
noise). An estimate is the gradient of the objective's bound averaged over the batch
(the ascent direction `mco.diagnostics.make_gradient_estimator` returns), w.r.t. all
217,300 encoder parameters.

* SNR of a parameter (Rainforth eq. 4): |mean of the R estimates| / their standard
  deviation. Per encoder layer (hidden_0: 784 x 200, hidden_1: 200 x 200, output:
  200 x 100 kernels), 20 kernel entries are drawn once with a fixed seed (the same for all
  runs); hidden_0's are drawn among the pixels that are on in at least one image of the
  fixed batch, since the others have an identically zero gradient. Reported: the mean and
  standard deviation of the SNR over these 20 weights, and the median over all of the
  layer's kernel entries with a nonzero variance.
* Gradient variance (Tucker's figure 2): the per-parameter variance of the estimates,
  averaged over all encoder parameters (weights and biases), i.e. tr Cov[Delta] / 217,300.
  `variance_sum` (the trace itself) is recorded too.
* IWAE vs IWAE-DReG and RWS vs RWS-DReG: both estimators are drawn on the same seeds
  (paired) at the same parameters; the variance ratio is counterpart / original. Each
  pair estimates the same expected gradient, which the paired t statistics check
  (`paired.mean_t_squared`, over the parameters whose gradient is not identically
  zero, should be about 1).

Also recorded: the training bound (each objective's own bound on its training batches,
averaged over --log_every steps) and, at each checkpoint, the IWAE-64 bound on the first
--eval_size test images (binarized once, fixed seed).

Outputs in --out_dir: results.json (rewritten atomically after every checkpoint),
fig8_snr.png (one panel per encoder layer: SNR against step, +-std bands),
tucker_fig2_variance.png (gradient variance against step, log y: every objective, then
IWAE vs IWAE-DReG and RWS vs RWS-DReG), and a summary table on stdout.

    python benchmarks/mnist_snr.py                       # default: 6 x 2000 steps
    python benchmarks/mnist_snr.py --objectives=iwae,dreg --steps=500 --eval_every=100
    python benchmarks/mnist_snr.py --objectives=vimco    # any name of mco.objective_names()

Each run's objective is `mco.make_objective(name, --num_samples, ...)`; results.json records
its `repr` ("objective") next to the papers' name ("description").

The default run (6 objectives x 2000 steps, 9 checkpoints, R = 200; 8 estimators per
checkpoint: the 6 runs' own and the 2 DReG counterparts) used 27 CPU-minutes (1307 s user,
316 s system): about 16 minutes of a quiet 2-core machine. Measured here: 42.6 minutes,
with the 2 cores shared by 4-5 other jobs (load average 6-9). Training took 140-210 s per
objective and the statistics 180-390 s per objective (each `gradient_statistics` call
traces its vectorized chunk function anew, a few seconds), peak memory 2.1 GB.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import app, flags, logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import mcobjectives as mco
from mcobjectives import diagnostics

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import mnist_data

tfd = tfp.distributions

# The runs of Rainforth et al.'s figure 8, trained by default; --objectives takes any name
# of `mco.objective_names()` (and "rws_dreg").
DEFAULT_OBJECTIVES = ("iwae", "piwae", "miwae", "ciwae", "dreg", "rws")
# Each run's DReG counterpart, measured at the run's parameters (Tucker et al.'s figure 2).
COUNTERPARTS = {"iwae": "dreg", "rws": "rws_dreg"}
LAYERS = ("hidden_0", "hidden_1", "output")
COLORS = {
    "iwae": "tab:blue",
    "piwae": "tab:orange",
    "miwae": "tab:green",
    "ciwae": "tab:red",
    "dreg": "tab:purple",
    "rws": "tab:brown",
    "rws_dreg": "tab:pink",
}
OTHER_COLORS = ("tab:gray", "tab:olive", "tab:cyan", "black", "gold", "navy")
DEFAULT_OUT_DIR = pathlib.Path(__file__).resolve().parent / "results" / "mnist_snr"

flags.DEFINE_list(
    "objectives",
    list(DEFAULT_OBJECTIVES),
    f"Objectives to train: names of mco.objective_names() {mco.objective_names()} or rws_dreg.",
)
flags.DEFINE_integer("steps", 2000, "Training steps per objective (the short budget).")
flags.DEFINE_integer("eval_every", 250, "Steps between checkpoints (step 0 and the last too).")
flags.DEFINE_integer("num_estimates", 200, "R, gradient estimates per estimator and checkpoint.")
flags.DEFINE_integer("snr_batch_size", 20, "Training images in the fixed batch of the estimates.")
flags.DEFINE_integer("chunk_size", 20, "Estimates per vectorized computation (bounds memory).")
flags.DEFINE_integer("num_weights", 20, "Randomly chosen kernel entries per encoder layer.")
flags.DEFINE_integer("num_samples", 64, "The budget: K, or M x K for PIWAE and MIWAE.")
flags.DEFINE_integer("num_outer", 8, "M of PIWAE and MIWAE (K / M inner samples).")
flags.DEFINE_float("beta", 0.05, "CIWAE's weight of the ELBO term.")
flags.DEFINE_integer("batch_size", 20, "Training batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam's learning rate.")
flags.DEFINE_integer("log_every", 50, "Steps per recorded training-bound average.")
flags.DEFINE_integer("eval_size", 500, "Test images of the IWAE-64 evaluation (0: none).")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights, data order, samples and weights.")
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
flags.DEFINE_bool("stats_jit_compile", False, "Compile the gradient estimates with XLA.")
flags.DEFINE_enum(
    "dataset",
    "mnist",
    list(mnist_data.DATASETS),
    "mnist (dynamically binarized) or binarized_mnist (fixed binarization).",
)
flags.DEFINE_bool("download", True, "Let TFDS download the dataset if it is not prepared.")
flags.DEFINE_integer("train_size", None, "Use only the first N training images (quick runs).")
flags.DEFINE_string("out_dir", str(DEFAULT_OUT_DIR), "Where results.json and the PNGs go.")

FLAGS = flags.FLAGS


# --------------------------------------------------------------------------- objectives
def objective_settings() -> dict[str, tuple[str, dict]]:
    """run name -> (registered name, keyword arguments of `mco.make_objective`).

    Every registered objective with its default arguments, except CIWAE (beta from --beta)
    and the two DReG estimators: "dreg" is IWAE-DReG (alpha = 0), "rws_dreg" RWS-DReG.
    """
    settings = {name: (name, {}) for name in mco.objective_names()}
    settings["ciwae"] = ("ciwae", {"beta": FLAGS.beta})
    settings["dreg"] = ("dreg", {"alpha": 0.0})
    settings["rws_dreg"] = ("dreg", {"alpha": 1.0})
    return settings


def make_objective(name: str) -> mco.MCObjective:
    """The objective of run `name` with the budget of the flags (M = --num_outer bounds for
    the objectives that take `num_outer`: PIWAE and MIWAE)."""
    registered, kwargs = objective_settings()[name]
    parameters = inspect.signature(mco.registry.OBJECTIVES[registered].__init__).parameters
    if "num_outer" in parameters:
        kwargs = {**kwargs, "num_outer": FLAGS.num_outer}
    return mco.make_objective(registered, FLAGS.num_samples, **kwargs)


def describe(name: str, objective: mco.MCObjective) -> str:
    """The papers' name of run `name`, e.g. "IWAE-DReG(K=64)"; else `repr(objective)`."""
    o = objective
    papers = {
        "iwae": lambda: f"IWAE(K={o.num_samples})",
        "piwae": lambda: f"PIWAE(M={o.num_outer}, K={o.num_inner})",
        "miwae": lambda: f"MIWAE(M={o.num_outer}, K={o.num_inner})",
        "ciwae": lambda: f"CIWAE(K={o.num_samples}, beta={o.beta:g})",
        "dreg": lambda: f"IWAE-DReG(K={o.num_samples})",
        "rws": lambda: f"RWS(K={o.num_samples})",
        "rws_dreg": lambda: f"RWS-DReG(K={o.num_samples})",
    }
    return papers[name]() if name in papers else repr(objective)


def run_color(name: str) -> str:
    """The run's color in the figures."""
    if name in COLORS:
        return COLORS[name]
    return OTHER_COLORS[list(objective_settings()).index(name) % len(OTHER_COLORS)]


def check_flags() -> list[str]:
    """The objectives to run, after checking every flag (before any data are loaded)."""
    names = [n.strip().lower() for n in FLAGS.objectives if n.strip()]
    choices = tuple(objective_settings())
    unknown = sorted(set(names) - set(choices))
    if unknown or not names:
        raise app.UsageError(f"--objectives must be a list from {choices}, got {unknown}.")
    if len(set(names)) != len(names):
        raise app.UsageError(f"--objectives lists an objective twice: {names}.")
    for name in ("steps", "eval_every", "snr_batch_size", "chunk_size", "num_weights"):
        if FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {FLAGS[name].value}.")
    if FLAGS.num_estimates < 2:
        raise app.UsageError(f"--num_estimates must be >= 2, got {FLAGS.num_estimates}.")
    if FLAGS.num_outer < 1 or FLAGS.num_samples % FLAGS.num_outer:
        raise app.UsageError(
            f"--num_outer={FLAGS.num_outer} must divide --num_samples={FLAGS.num_samples}."
        )
    if FLAGS.log_every < 1 or FLAGS.eval_size < 0:
        raise app.UsageError("--log_every must be >= 1 and --eval_size >= 0.")
    for name in {*names, *(COUNTERPARTS[n] for n in names if n in COUNTERPARTS)}:
        try:  # each objective built once: bad settings fail before any data are loaded
            make_objective(name)
        except (TypeError, ValueError) as e:
            raise app.UsageError(f"objective {name}: {e}") from e
    return names


def checkpoint_steps(num_steps: int, every: int) -> list[int]:
    """0, every, 2 every, ..., and num_steps."""
    return sorted(set(range(0, num_steps, every)) | {num_steps})


# --------------------------------------------------------------------------------- data
def binarize(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dynamic binarization: pixel ~ Bernoulli(intensity)."""
    return (rng.random(images.shape, dtype=np.float32) < images).astype(np.float32)


def training_batches(
    images: np.ndarray, batch_size: int, seed: int, dynamic: bool
) -> Iterator[np.ndarray]:
    """Endless batches: epoch after epoch of a seeded permutation; the same for every run."""
    rng = np.random.default_rng([seed, 0xDA7A])
    steps_per_epoch = len(images) // batch_size
    while True:
        order = rng.permutation(len(images))
        for i in range(steps_per_epoch):
            x = images[order[i * batch_size : (i + 1) * batch_size]]
            yield binarize(x, rng) if dynamic else x


def fixed_binarization(images: np.ndarray, stream: int, dynamic: bool) -> np.ndarray:
    """`images` binarized once with a seed fixed by --seed and `stream`."""
    if not dynamic:
        return images.astype(np.float32)
    return binarize(images, np.random.default_rng([FLAGS.seed, stream]))


# -------------------------------------------------------------------------------- model
def build_model(objective: mco.MCObjective, mean_pixel: np.ndarray, x: tf.Tensor):
    """Burda et al.'s one-stochastic-layer model, built (its variables created) on `x`."""
    latent = 50
    model = mco.ImportanceWeightedAutoencoder(
        encoder=mco.networks.GaussianEncoder(latent_size=latent),
        decoder=mco.networks.BernoulliDecoder(event_size=784, mean_pixel=mean_pixel),
        prior=tfd.Independent(tfd.Normal(tf.zeros(latent), tf.ones(latent)), 1),
        objective=objective,
        seed=FLAGS.seed,
    )
    model(x)
    return model


def layer_kernels(model) -> dict[str, int]:
    """Encoder layer name -> index of its kernel in `model.inference_variables`."""
    index = {}
    for i, v in enumerate(model.inference_variables):
        parts = v.path.split("/")
        if parts[-1] == "kernel" and parts[-2] in LAYERS:
            index[parts[-2]] = i
    if sorted(index) != sorted(LAYERS):
        raise RuntimeError(f"unexpected encoder variables: {[v.path for v in model.variables]}")
    return index


def choose_weights(model, snr_x: np.ndarray) -> dict[str, list[list[int]]]:
    """`--num_weights` kernel entries per layer, drawn once (fixed seed).

    hidden_0's rows are pixels: only those on in some image of the fixed batch have a
    gradient that is not identically zero, so the entries are drawn among them.
    """
    rng = np.random.default_rng([FLAGS.seed, 0x5E1EC7])
    chosen = {}
    for layer, i in layer_kernels(model).items():
        rows, cols = model.inference_variables[i].shape
        allowed_rows = np.flatnonzero(snr_x.max(axis=0) > 0) if layer == "hidden_0" else None
        allowed = np.arange(rows * cols)
        if allowed_rows is not None:
            allowed = (allowed_rows[:, None] * cols + np.arange(cols)[None, :]).ravel()
        flat = rng.choice(allowed, size=min(FLAGS.num_weights, allowed.size), replace=False)
        chosen[layer] = [[int(f // cols), int(f % cols)] for f in np.sort(flat)]
    return chosen


# --------------------------------------------------------------------------- statistics
def snr(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """|mean| / sqrt(variance), 0 where both are 0 (as `diagnostics` defines it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.abs(mean) / np.sqrt(variance)
    return np.where((mean == 0) & (variance == 0), 0.0, out)


def summarize(means: list, variances: list, kernels: dict, weights: dict) -> dict:
    """SNR per layer (chosen weights and all entries) and the gradient variance."""
    num_parameters = sum(v.size for v in variances)
    variance_sum = float(sum(v.sum() for v in variances))
    out = {
        "variance_mean": variance_sum / num_parameters,
        "variance_sum": variance_sum,
        "mean_gradient_norm": float(math.sqrt(sum(float((m**2).sum()) for m in means))),
        "snr": {},
    }
    for layer, i in kernels.items():
        ratios = snr(means[i], variances[i])
        rows, cols = np.array(weights[layer]).T
        chosen = ratios[rows, cols]
        out["snr"][layer] = {
            "mean": float(chosen.mean()),
            "std": float(chosen.std()),
            "values": [float(r) for r in chosen],
            "median_all": float(np.median(ratios[variances[i] > 0])),
        }
    return out


def measure(model, estimator, counterpart, kernels, weights, seed) -> dict:
    """Statistics of the run's estimator (and its DReG counterpart, paired) at the params."""
    start = time.perf_counter()
    stats = diagnostics.gradient_statistics(
        estimator,
        FLAGS.num_estimates,
        seed,
        chunk_size=FLAGS.chunk_size,
        reference=counterpart,
        jit_compile=FLAGS.stats_jit_compile,
    )
    result = {"own": summarize(stats.mean, stats.variance, kernels, weights)}
    if counterpart is not None:
        result["counterpart"] = summarize(
            stats.reference_mean, stats.reference_variance, kernels, weights
        )
        # t is exactly 0 where both estimators' gradients are identically 0 (pixels off
        # in every image of the batch): those parameters are left out.
        t = np.concatenate([np.ravel(s) for s in stats.bias_t_statistic])
        t = t[np.isfinite(t) & (t != 0)]
        result["paired"] = {
            "variance_ratio": result["counterpart"]["variance_mean"]
            / result["own"]["variance_mean"],
            "mean_t_squared": float(np.mean(t**2)),
            "max_abs_t": float(np.max(np.abs(t))),
            "fraction_abs_t_above_3": float(np.mean(np.abs(t) > 3)),
            "num_parameters_compared": int(t.size),
        }
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def make_test_bound(model, eval_x: np.ndarray) -> Callable[[], float]:
    """The mean IWAE-64 bound on the evaluation images, with a fixed seed."""
    iwae64 = mco.IWAE(64)

    @tf.function
    def bound(x, seed):
        return iwae64(model.posterior(x), model.log_joint(x), seed=seed).bound

    def evaluate() -> float:
        values = [
            bound(tf.constant(eval_x[i : i + 100]), tf.constant([FLAGS.seed, 0x7E57 + i]))
            for i in range(0, len(eval_x), 100)
        ]
        return float(np.mean(np.concatenate([v.numpy() for v in values])))

    return evaluate


# ------------------------------------------------------------------------------- a run
def train_and_measure(
    name: str,
    data: dict,
    init_weights: dict,
    record: dict,
    save: Callable[[], None],
) -> None:
    """Trains objective `name`, measuring its estimator at every checkpoint into `record`."""
    objective = make_objective(name)
    description = describe(name, objective)
    snr_x = tf.constant(data["snr_x"])
    model = build_model(objective, data["mean_pixel"], snr_x[:2])
    model.encoder.set_weights(init_weights["encoder"])
    model.decoder.set_weights(init_weights["decoder"])
    optimizer = keras.optimizers.Adam(FLAGS.learning_rate, epsilon=1e-4)
    step_fn = mco.make_train_step(model, optimizer, jit_compile=FLAGS.jit_compile)
    variables = model.inference_variables
    estimator = diagnostics.make_gradient_estimator(
        lambda seed: model.objective_result(snr_x, seed), variables
    )
    counterpart = other = None
    counterpart_name = counterpart_description = None
    if name in COUNTERPARTS:
        counterpart_name = COUNTERPARTS[name]
        other = make_objective(counterpart_name)
        counterpart_description = describe(counterpart_name, other)
        counterpart = diagnostics.make_gradient_estimator(
            lambda seed: other(model.posterior(snr_x), model.log_joint(snr_x), seed=seed),
            variables,
        )
    kernels = layer_kernels(model)
    test_bound = make_test_bound(model, data["eval_x"]) if len(data["eval_x"]) else None
    stats_seed = tf.constant([FLAGS.seed, 0x5A12], tf.int32)

    run = record["runs"][name] = {
        "description": description,
        "objective": repr(objective),
        "counterpart": counterpart_name,
        "counterpart_description": counterpart_description,
        "counterpart_objective": None if other is None else repr(other),
        "train": {"step": [], "bound": []},
        "checkpoints": [],
    }
    batches = training_batches(data["train"], FLAGS.batch_size, FLAGS.seed, dynamic=data["dynamic"])
    step, window = 0, []
    train_seconds = 0.0
    for target in data["checkpoints"]:
        tick = time.perf_counter()
        while step < target:
            window.append(step_fn(tf.constant(next(batches)))["bound"])
            step += 1
            if step % FLAGS.log_every == 0 or step == target:
                bound = float(np.mean([float(b) for b in window]))
                if not math.isfinite(bound):
                    raise FloatingPointError(f"{name}: non-finite training bound at step {step}")
                run["train"]["step"].append(step)
                run["train"]["bound"].append(bound)
                window = []
        train_seconds += time.perf_counter() - tick
        checkpoint = {"step": step}
        checkpoint.update(
            measure(model, estimator, counterpart, kernels, data["weights"], stats_seed)
        )
        checkpoint["train_bound"] = run["train"]["bound"][-1] if step else None
        checkpoint["test_iwae64"] = test_bound() if test_bound is not None else None
        run["checkpoints"].append(checkpoint)
        run["train_seconds"] = round(train_seconds, 2)
        run["statistics_seconds"] = round(sum(c["seconds"] for c in run["checkpoints"]), 2)
        snrs = " ".join(
            f"{layer} {checkpoint['own']['snr'][layer]['mean']:.3f}" for layer in kernels
        )
        line = (
            f"{description:>22} step {step:5d}: SNR {snrs}; variance "
            f"{checkpoint['own']['variance_mean']:.3e}"
        )
        if counterpart is not None:
            line += (
                f" ({counterpart_description} / own: {checkpoint['paired']['variance_ratio']:.3f})"
            )
        print(line + f" [{checkpoint['seconds']:.1f} s]", flush=True)
        save()


# ------------------------------------------------------------------------------ output
def write_json_atomically(path: pathlib.Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save_figure(figure: Figure, path: pathlib.Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    FigureCanvasAgg(figure)
    figure.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)


def series(run: dict, which: str, key: Callable[[dict], float]) -> tuple[list, list]:
    steps = [c["step"] for c in run["checkpoints"]]
    return steps, [key(c[which]) for c in run["checkpoints"]]


def plot_snr(record: dict, path: pathlib.Path) -> None:
    """Rainforth figure 8: one panel per encoder layer, SNR mean +- std against step."""
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    axes = figure.subplots(1, len(LAYERS), sharey=False)
    for ax, layer in zip(axes, LAYERS, strict=True):
        for name, run in record["runs"].items():
            steps, mean = series(run, "own", lambda s, layer=layer: s["snr"][layer]["mean"])
            _, std = series(run, "own", lambda s, layer=layer: s["snr"][layer]["std"])
            mean, std = np.array(mean), np.array(std)
            color = run_color(name)
            ax.plot(steps, mean, marker="o", ms=3, color=color, label=run["description"])
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
        ax.set_title(f"encoder {layer} ({record['num_weights']} random weights)")
        ax.set_xlabel("training step")
        ax.set_ylabel("SNR")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(
        f"SNR of inference-network gradients during training (mean +- std over weights; "
        f"R = {record['config']['num_estimates']}, {record['dataset']})",
        fontsize=10,
    )
    save_figure(figure, path)


def plot_variance(record: dict, path: pathlib.Path) -> None:
    """Tucker figure 2, top row: encoder gradient variance against step (log y)."""
    runs = record["runs"]
    pairs = [n for n in ("iwae", "rws") if n in runs]
    figure = Figure(figsize=(4.2 * (1 + len(pairs)), 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, 1 + len(pairs)))
    ax = axes[0]
    for name, run in runs.items():
        steps, variance = series(run, "own", lambda s: s["variance_mean"])
        ax.plot(steps, variance, marker="o", ms=3, color=run_color(name), label=run["description"])
    ax.set_title("every objective's own estimator")
    ax.legend(fontsize=7)
    for ax, name in zip(axes[1:], pairs, strict=True):
        run = runs[name]
        steps, own = series(run, "own", lambda s: s["variance_mean"])
        _, other = series(run, "counterpart", lambda s: s["variance_mean"])
        ax.plot(steps, own, "--", marker="o", ms=3, color=run_color(name), label=run["description"])
        ax.plot(
            steps,
            other,
            "-",
            marker="o",
            ms=3,
            color=run_color(run["counterpart"]),
            label=run["counterpart_description"],
        )
        ax.set_title(f"at the {run['description']} run's parameters")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("variance, mean over encoder parameters")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    figure.suptitle(
        f"Variance of the inference-network gradient estimator (R = "
        f"{record['config']['num_estimates']}, {record['dataset']})",
        fontsize=10,
    )
    save_figure(figure, path)


def summary(record: dict) -> dict:
    """Start / end SNRs and variances per objective, and the paired variance ratios."""
    out = {}
    for name, run in record["runs"].items():
        first, last = run["checkpoints"][0], run["checkpoints"][-1]
        entry = {
            "description": run["description"],
            "steps": last["step"],
            "snr_start": {layer: first["own"]["snr"][layer]["mean"] for layer in LAYERS},
            "snr_end": {layer: last["own"]["snr"][layer]["mean"] for layer in LAYERS},
            "variance_start": first["own"]["variance_mean"],
            "variance_end": last["own"]["variance_mean"],
            "train_bound_end": last["train_bound"],
            "test_iwae64_end": last["test_iwae64"],
        }
        if run["counterpart"]:
            ratios = [c["paired"]["variance_ratio"] for c in run["checkpoints"]]
            entry["counterpart"] = run["counterpart_description"]
            entry["variance_ratio_per_checkpoint"] = ratios
            entry["variance_ratio_start"] = ratios[0]
            entry["variance_ratio_end"] = ratios[-1]
            entry["variance_ratio_geometric_mean"] = float(np.exp(np.mean(np.log(ratios))))
        out[name] = entry
    return out


def print_summary(record: dict) -> None:
    rows = record["summary"]
    print(f"\nEncoder-gradient SNR (mean over {record['num_weights']} weights), start -> end:")
    header = f"{'objective':>22} | " + " | ".join(f"{layer:>15}" for layer in LAYERS)
    header += f" | {'variance start -> end':>21} | {'train bound':>11} | {'test IWAE-64':>12}"
    print(header)
    print("-" * len(header))
    for entry in rows.values():
        cells = [f"{entry['snr_start'][la]:6.3f} -> {entry['snr_end'][la]:5.3f}" for la in LAYERS]
        bound, test = entry["train_bound_end"], entry["test_iwae64_end"]
        print(
            f"{entry['description']:>22} | "
            + " | ".join(f"{c:>15}" for c in cells)
            + f" | {entry['variance_start']:9.3e} -> {entry['variance_end']:8.3e}"
            + f" | {bound if bound is not None else float('nan'):11.2f}"
            + f" | {test if test is not None else float('nan'):12.2f}"
        )
    for entry in rows.values():
        if "counterpart" in entry:
            ratios = ", ".join(f"{r:.3f}" for r in entry["variance_ratio_per_checkpoint"])
            print(
                f"variance {entry['counterpart']} / {entry['description']} per checkpoint: "
                f"{ratios} (geometric mean {entry['variance_ratio_geometric_mean']:.3f})"
            )


# -------------------------------------------------------------------------------- main
def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    # Every gradient_statistics call traces its chunk function anew (a few seconds), and
    # TensorFlow warns about the retracing; the cost is counted in the timings.
    tf.get_logger().setLevel("ERROR")
    names = check_flags()
    out_dir = pathlib.Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()

    data_source = mnist_data.load_mnist(FLAGS.dataset, download=FLAGS.download)
    train = data_source.train if FLAGS.train_size is None else data_source.train[: FLAGS.train_size]
    if len(train) < max(FLAGS.batch_size, FLAGS.snr_batch_size):
        raise app.UsageError(
            f"{len(train)} training images: fewer than --batch_size or --snr_batch_size."
        )
    dynamic = not data_source.binarized
    data = {
        "train": train,
        "dynamic": dynamic,
        "mean_pixel": train.mean(axis=0),
        "snr_x": fixed_binarization(train[: FLAGS.snr_batch_size], 0x5B, dynamic),
        "eval_x": fixed_binarization(data_source.test[: FLAGS.eval_size], 0x7E, dynamic),
        "checkpoints": checkpoint_steps(FLAGS.steps, FLAGS.eval_every),
    }

    # The same initial weights for every run: those of the first model built.
    keras.utils.set_random_seed(FLAGS.seed)
    first = build_model(mco.IWAE(1), data["mean_pixel"], tf.constant(data["snr_x"][:2]))
    init_weights = {"encoder": first.encoder.get_weights(), "decoder": first.decoder.get_weights()}
    data["weights"] = choose_weights(first, data["snr_x"])
    num_parameters = sum(int(np.prod(v.shape)) for v in first.inference_variables)

    record = {
        "benchmark": "mnist_snr",
        "reproduces": "Rainforth et al. (2018) figure 8; Tucker et al. (2019) figure 2, top row",
        "dataset": data_source.source,
        "num_train_images": len(train),
        "num_test_images": len(data["eval_x"]),
        "config": {name: FLAGS[name].value for name in _flag_names() if name != "out_dir"},
        "checkpoint_steps": data["checkpoints"],
        "num_encoder_parameters": num_parameters,
        "num_weights": FLAGS.num_weights,
        "weights": data["weights"],
        "definitions": {
            "estimate": "ascent gradient of the objective's bound averaged over the fixed "
            "batch, w.r.t. the encoder; estimates differ only in z",
            "snr": "|mean| / std over the R estimates, per parameter (Rainforth eq. 4)",
            "snr.mean, snr.std": "over the chosen kernel entries of the layer",
            "snr.median_all": "median over the layer's kernel entries with nonzero variance",
            "variance_mean": "per-parameter variance averaged over all encoder parameters",
            "variance_sum": "per-parameter variance summed over the encoder (tr Cov)",
            "paired.variance_ratio": "counterpart variance_mean / own variance_mean",
            "paired.mean_t_squared": "mean over parameters (those with a gradient not "
            "identically 0) of the squared paired t statistic of own - counterpart (about 1 "
            "for two unbiased estimators of one gradient)",
            "train.bound": f"the objective's own training bound, mean over {FLAGS.log_every} steps",
            "test_iwae64": "IWAE-64 on the evaluation test images (fixed binarization, seed)",
        },
        "runs": {},
    }
    results_path = out_dir / "results.json"

    def save():
        record["seconds"] = round(time.perf_counter() - wall, 1)
        write_json_atomically(results_path, record)

    print(
        f"mnist_snr: {', '.join(names)} on {data_source.source} ({len(train)} images), "
        f"{FLAGS.steps} steps, checkpoints {data['checkpoints']}, R = {FLAGS.num_estimates}, "
        f"fixed batch of {FLAGS.snr_batch_size}; out_dir {out_dir}",
        flush=True,
    )
    for name in names:
        train_and_measure(name, data, init_weights, record, save)
    record["summary"] = summary(record)
    save()
    plot_snr(record, out_dir / "fig8_snr.png")
    plot_variance(record, out_dir / "tucker_fig2_variance.png")
    print_summary(record)
    print(f"\nWrote {results_path} and the figures in {record['seconds']:.0f} s.")


def _flag_names() -> list[str]:
    return [f.name for f in FLAGS.get_key_flags_for_module(sys.modules[__name__])]


if __name__ == "__main__":
    app.run(main)
