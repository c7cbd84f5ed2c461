"""Inference-network gradient SNR and variance along MNIST training, for six objectives.

Trains Burda et al.'s MNIST model with each objective of `--objectives` (default: IWAE(64),
PIWAE(8, 8), MIWAE(8, 8), CIWAE(64, beta 0.05), IWAE-DReG(64) and RWS(64)) from the same
initial weights on the same batches, and at every checkpoint draws `--num_estimates`
encoder gradient estimates on one fixed batch: the SNR of randomly chosen encoder weights
(Rainforth et al. figure 8) and the encoder's gradient variance, with IWAE-DReG's and
RWS-DReG's drawn on the same seeds at the IWAE and RWS runs' parameters (Tucker et al.
figure 2, top row). Writes `--out_dir`/results.json after every checkpoint, then draws the
figures from it (`figures.py`) and prints a summary. benchmarks/README.md describes the
method.

    python benchmarks/mnist_snr.py                       # default: 6 x 2000 steps
    python benchmarks/mnist_snr.py --objectives=iwae,dreg --steps=500 --eval_every=100
    python benchmarks/mnist_snr.py --objectives=vimco    # any name of mco.objective_names()
"""

from __future__ import annotations

import inspect
import math
import pathlib
import time
import types

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

import mcobjectives as mco
from mcobjectives import diagnostics
from mcobjectives.experimental import mnist

# isort: split
# The benchmarks' own modules, beside this script.
import _harness
import figures

DEFAULT_OBJECTIVES = ("iwae", "piwae", "miwae", "ciwae", "dreg", "rws")
COUNTERPARTS = {"iwae": "dreg", "rws": "rws_dreg"}  # measured at the run's parameters
LAYERS = figures.LAYERS
DEFINITIONS = {
    "estimate": "ascent gradient of the objective's bound averaged over the fixed batch, "
    "w.r.t. the encoder; estimates differ only in z",
    "snr": "|mean| / std over the R estimates, per parameter (Rainforth eq. 4)",
    "snr.mean, snr.std": "over the chosen kernel entries of the layer",
    "snr.median_all": "median over the layer's kernel entries with nonzero variance",
    "variance_mean": "per-parameter variance averaged over all encoder parameters",
    "variance_sum": "per-parameter variance summed over the encoder (tr Cov)",
    "paired.variance_ratio": "counterpart variance_mean / own variance_mean",
    "paired.t_summary": "diagnostics.t_statistic_summary of the paired t statistics of own - "
    "counterpart (mean_t_squared about 1 for two unbiased estimators of one gradient)",
    "train.bound": "the objective's own training bound, mean over --log_every steps",
    "test_iwae64": "IWAE-64 on the evaluation test images (mnist.evaluate: the examples' "
    "fixed test binarization, seeds from --seed)",
}


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script: importing is side-free)."""
    names = f"names of mco.objective_names() {mco.objective_names()} or rws_dreg"
    flags.DEFINE_list("objectives", list(DEFAULT_OBJECTIVES), f"Objectives to train: {names}.")
    flags.DEFINE_integer("steps", 2000, "Training steps per objective (the short budget).")
    flags.DEFINE_integer("eval_every", 250, "Steps between checkpoints (step 0 and the last too).")
    flags.DEFINE_integer("num_estimates", 200, "R, estimates per estimator and checkpoint.")
    flags.DEFINE_integer("snr_batch_size", 20, "Training images of the estimates' fixed batch.")
    flags.DEFINE_integer("chunk_size", 20, "Estimates per vectorized computation (bounds memory).")
    flags.DEFINE_integer("num_weights", 20, "Randomly chosen kernel entries per encoder layer.")
    flags.DEFINE_integer("num_samples", 64, "The budget: K, or M x K for PIWAE and MIWAE.")
    flags.DEFINE_integer("num_outer", 8, "M of PIWAE and MIWAE (K / M inner samples).")
    flags.DEFINE_float("beta", 0.05, "CIWAE's weight of the ELBO term.")
    flags.DEFINE_integer("batch_size", 20, "Training batch size.")
    flags.DEFINE_float("learning_rate", 1e-3, "Adam's learning rate.")
    flags.DEFINE_integer("log_every", 50, "Steps per recorded training-bound average.")
    flags.DEFINE_integer("eval_size", 500, "Test images of the IWAE-64 evaluation (0: none).")
    flags.DEFINE_integer("seed", 0, "Seed of the weights, data order, samples and chosen weights.")
    flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
    flags.DEFINE_bool("stats_jit_compile", False, "Compile the gradient estimates with XLA.")
    flags.DEFINE_enum("dataset", "mnist", ["mnist", "binarized_mnist"], "Dynamic or fixed 0/1.")
    flags.DEFINE_bool("download", True, "Let TFDS download the dataset if it is not prepared.")
    flags.DEFINE_integer("train_size", None, "Use only the first N training images (quick runs).")
    out_dir = str(_harness.RESULTS_DIR / "mnist_snr")
    flags.DEFINE_string("out_dir", out_dir, "Where results.json and the PNGs go.")


# --------------------------------------------------------------------------- objectives
def make_objective(name: str, cfg) -> mco.MCObjective:
    """Run `name`'s objective at the budget: "dreg" is IWAE-DReG, "rws_dreg" RWS-DReG, CIWAE
    takes --beta, PIWAE and MIWAE --num_outer bounds; the others their default arguments."""
    registered, kwargs = {
        "ciwae": ("ciwae", {"beta": cfg.beta}),
        "dreg": ("dreg", {"alpha": 0.0}),
        "rws_dreg": ("dreg", {"alpha": 1.0}),
    }.get(name, (name, {}))
    if registered not in mco.objective_names():
        raise ValueError(f"unknown objective {name!r}: not in {mco.objective_names()}, rws_dreg")
    if "num_outer" in inspect.signature(mco.objectives.OBJECTIVES[registered].__init__).parameters:
        kwargs = {**kwargs, "num_outer": cfg.num_outer}
    return mco.make_objective(registered, cfg.num_samples, **kwargs)


PAPER_NAMES = {
    "iwae": "IWAE(K={o.num_samples})",
    "piwae": "PIWAE(M={o.num_outer}, K={o.num_inner})",
    "miwae": "MIWAE(M={o.num_outer}, K={o.num_inner})",
    "ciwae": "CIWAE(K={o.num_samples}, beta={o.beta:g})",
    "dreg": "IWAE-DReG(K={o.num_samples})",
    "rws": "RWS(K={o.num_samples})",
    "rws_dreg": "RWS-DReG(K={o.num_samples})",
}


def describe(name: str, o: mco.MCObjective) -> str:
    """The papers' name of run `name`, e.g. "IWAE-DReG(K=64)"; else `repr(objective)`."""
    return PAPER_NAMES[name].format(o=o) if name in PAPER_NAMES else repr(o)


def check_flags(cfg) -> list[str]:
    """The objectives to run, after checking every flag (before any data are loaded)."""
    names = [n.strip().lower() for n in cfg.objectives if n.strip()]
    if not names or len(set(names)) != len(names):
        raise app.UsageError(f"--objectives must name distinct objectives, got {names}.")
    for name in ("steps", "eval_every", "snr_batch_size", "chunk_size", "num_weights", "log_every"):
        if getattr(cfg, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {getattr(cfg, name)}.")
    if cfg.num_estimates < 2 or cfg.eval_size < 0:
        raise app.UsageError("--num_estimates must be >= 2 and --eval_size >= 0.")
    if cfg.num_outer < 1 or cfg.num_samples % cfg.num_outer:
        raise app.UsageError(f"--num_outer={cfg.num_outer} must divide --num_samples.")
    for name in {*names, *(COUNTERPARTS[n] for n in names if n in COUNTERPARTS)}:
        try:  # each objective built once: bad settings fail before any data are loaded
            make_objective(name, cfg)
        except (TypeError, ValueError) as e:
            raise app.UsageError(f"objective {name}: {e}") from e
    return names


# --------------------------------------------------------------------------- the model
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


def choose_weights(model, snr_x: np.ndarray, cfg) -> dict[str, list[list[int]]]:
    """`--num_weights` kernel entries per layer, drawn once with a fixed seed; hidden_0's
    among the rows of pixels on in some image of the fixed batch (the others have an
    identically zero gradient)."""
    rng = np.random.default_rng([cfg.seed, 0x5E1EC7])
    chosen = {}
    for layer, i in layer_kernels(model).items():
        rows, cols = model.inference_variables[i].shape
        allowed = np.arange(rows * cols)
        if layer == "hidden_0":
            on = np.flatnonzero(snr_x.max(axis=0) > 0)
            allowed = (on[:, None] * cols + np.arange(cols)[None, :]).ravel()
        flat = rng.choice(allowed, size=min(cfg.num_weights, allowed.size), replace=False)
        chosen[layer] = [[int(f // cols), int(f % cols)] for f in np.sort(flat)]
    return chosen


def summarize(means, variances, kernels: dict, weights: dict) -> dict:
    """SNR per layer (the chosen weights, and all entries) and the gradient variance."""
    variance_sum = float(sum(v.sum() for v in variances))
    out = {
        "variance_mean": variance_sum / sum(v.size for v in variances),
        "variance_sum": variance_sum,
        "mean_gradient_norm": math.sqrt(sum(float((m**2).sum()) for m in means)),
        "snr": {},
    }
    for layer, i in kernels.items():
        ratios = diagnostics.snr(means[i], variances[i])
        chosen = ratios[tuple(np.array(weights[layer]).T)]
        out["snr"][layer] = {
            "mean": float(chosen.mean()),
            "std": float(chosen.std()),
            "values": chosen,
            "median_all": float(np.median(ratios[variances[i] > 0])),
        }
    return out


def measure(estimator, counterpart, kernels, weights, seed, cfg) -> dict:
    """Statistics of the run's estimator, and of its DReG counterpart on the same seeds."""
    start = time.perf_counter()
    stats = diagnostics.gradient_statistics(
        estimator,
        cfg.num_estimates,
        seed,
        chunk_size=cfg.chunk_size,
        reference=counterpart,
        jit_compile=cfg.stats_jit_compile,
    )
    result = {"own": summarize(stats.mean, stats.variance, kernels, weights)}
    if counterpart is not None:
        other = summarize(stats.reference_mean, stats.reference_variance, kernels, weights)
        result["counterpart"] = other
        t = np.concatenate([np.ravel(s) for s in stats.bias_t_statistic])
        result["paired"] = {
            "variance_ratio": other["variance_mean"] / result["own"]["variance_mean"],
            "t_summary": diagnostics.t_statistic_summary(t),
        }
    result["seconds"] = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------- a run
def train_and_measure(name: str, data: dict, record: dict, save, cfg) -> None:
    """Trains objective `name`, measuring its estimator at every checkpoint into `record`."""
    objective = make_objective(name, cfg)
    snr_x = tf.constant(data["snr_x"])
    model = _harness.burda_model(objective, snr_x[:2], cfg.seed, data["mean_pixel"])
    optimizer = _harness.adam(cfg.learning_rate)
    step_fn = mco.make_train_step(model, optimizer, jit_compile=cfg.jit_compile)
    variables = model.inference_variables
    estimator = diagnostics.make_gradient_estimator(
        lambda seed: model.objective_result(snr_x, seed), variables
    )
    counterpart = other = None
    if name in COUNTERPARTS:
        other = make_objective(COUNTERPARTS[name], cfg)
        counterpart = diagnostics.make_gradient_estimator(
            lambda seed: other(model.posterior(snr_x), model.log_joint(snr_x), seed=seed), variables
        )
    # The examples' test-set evaluation, IWAE-64 only (traced once per run).
    evaluator = mnist.make_evaluator(model, seed=cfg.seed, num_samples=None)
    pair = COUNTERPARTS[name] if other is not None else None
    run = record["runs"][name] = {
        "description": describe(name, objective),
        "objective": repr(objective),
        "counterpart": pair,
        "counterpart_description": pair and describe(pair, other),
        "counterpart_objective": pair and repr(other),
        "train": {"step": [], "bound": []},
        "checkpoints": [],
    }
    batches = training_batches(data["train"], cfg.batch_size, cfg.seed, data["dynamic"])
    step, window, train_seconds = 0, [], 0.0
    for target in data["checkpoints"]:
        tick = time.perf_counter()
        while step < target:
            window.append(step_fn(next(batches))["bound"])
            step += 1
            if step % cfg.log_every == 0 or step == target:
                bound = float(np.mean([float(b) for b in window]))
                if not math.isfinite(bound):
                    raise FloatingPointError(f"{name}: non-finite training bound at step {step}")
                run["train"]["step"].append(step)
                run["train"]["bound"].append(bound)
                window = []
        train_seconds += time.perf_counter() - tick
        seed = tf.constant([cfg.seed, 0x5A12], tf.int32)
        checkpoint = {
            "step": step,
            **measure(estimator, counterpart, layer_kernels(model), data["weights"], seed, cfg),
        }
        checkpoint["train_bound"] = run["train"]["bound"][-1] if step else None
        tests = data["test_batches"]
        checkpoint["test_iwae64"] = evaluator(tests)["iwae64"] if tests else None
        run["checkpoints"].append(checkpoint)
        run["train_seconds"] = train_seconds
        run["statistics_seconds"] = sum(c["seconds"] for c in run["checkpoints"])
        snrs = " ".join(f"{la} {checkpoint['own']['snr'][la]['mean']:.3f}" for la in LAYERS)
        own = checkpoint["own"]["variance_mean"]
        line = f"{run['description']:>22} step {step:5d}: SNR {snrs}; variance {own:.3e}"
        if other is not None:
            ratio = checkpoint["paired"]["variance_ratio"]
            line += f" ({run['counterpart_description']} / own: {ratio:.3f})"
        print(line + f" [{checkpoint['seconds']:.1f} s]", flush=True)
        save()


def training_batches(images: np.ndarray, batch_size: int, seed: int, dynamic: bool):
    """Endless batches: epoch after epoch of a seeded permutation, batch t binarized from
    a seed of (seed, t) (`mnist.binarize`); the same for every run."""
    rng = np.random.default_rng([seed, 0xDA7A])
    base, step = tf.constant([seed, 0xDA7A], tf.int32), 0
    while True:
        order = rng.permutation(len(images))
        for i in range(len(images) // batch_size):
            x = tf.constant(images[order[i * batch_size : (i + 1) * batch_size]])
            if dynamic:
                x = mnist.binarize(x, tf.random.experimental.stateless_fold_in(base, step))
            yield x
            step += 1


# ------------------------------------------------------------------------------ output
def summary(record: dict) -> dict:
    """Start / end SNRs and variances per objective, and the paired variance ratios."""
    out = {}
    for name, run in record["runs"].items():
        first, last = run["checkpoints"][0], run["checkpoints"][-1]
        entry = {
            "description": run["description"],
            "steps": last["step"],
            "snr_start": {la: first["own"]["snr"][la]["mean"] for la in LAYERS},
            "snr_end": {la: last["own"]["snr"][la]["mean"] for la in LAYERS},
            "variance_start": first["own"]["variance_mean"],
            "variance_end": last["own"]["variance_mean"],
            "train_bound_end": last["train_bound"],
            "test_iwae64_end": last["test_iwae64"],
        }
        if run["counterpart"]:
            ratios = [c["paired"]["variance_ratio"] for c in run["checkpoints"]]
            entry.update(
                counterpart=run["counterpart_description"],
                variance_ratio_per_checkpoint=ratios,
                variance_ratio_start=ratios[0],
                variance_ratio_end=ratios[-1],
                variance_ratio_geometric_mean=float(np.exp(np.mean(np.log(ratios)))),
            )
        out[name] = entry
    return out


def print_summary(record: dict) -> None:
    print(f"\nEncoder-gradient SNR (mean over {record['num_weights']} weights), start -> end:")
    header = f"{'objective':>22} | " + " | ".join(f"{la:>15}" for la in LAYERS)
    header += f" | {'variance start -> end':>21} | {'train bound':>11} | {'test IWAE-64':>12}"
    print(header + "\n" + "-" * len(header))
    nan = float("nan")
    for e in record["summary"].values():
        cells = " | ".join(f"{e['snr_start'][la]:6.3f} -> {e['snr_end'][la]:5.3f}" for la in LAYERS)
        print(
            f"{e['description']:>22} | {cells} | {e['variance_start']:9.3e} -> "
            f"{e['variance_end']:8.3e} | {e['train_bound_end'] or nan:11.2f} | "
            f"{e['test_iwae64_end'] or nan:12.2f}"
        )
    for e in record["summary"].values():
        if "counterpart" in e:
            ratios = ", ".join(f"{r:.3f}" for r in e["variance_ratio_per_checkpoint"])
            print(
                f"variance {e['counterpart']} / {e['description']} per checkpoint: {ratios} "
                f"(geometric mean {e['variance_ratio_geometric_mean']:.3f})"
            )


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")  # each gradient_statistics call traces anew, on purpose
    cfg = types.SimpleNamespace(**_harness.flag_values())
    names = check_flags(cfg)
    out_dir = pathlib.Path(cfg.out_dir)
    wall = time.perf_counter()
    source = mnist.load_mnist(cfg.dataset, download=cfg.download)
    train = source.train[: cfg.train_size]
    if len(train) < max(cfg.batch_size, cfg.snr_batch_size):
        raise app.UsageError(f"{len(train)} images: fewer than --batch_size or --snr_batch_size.")
    dynamic = not source.binarized

    def fixed(images, stream):  # binarized once, with a seed fixed by --seed and `stream`
        return mnist.binarize(images, [cfg.seed, stream]).numpy() if dynamic else images

    data = {
        "train": train,
        "dynamic": dynamic,
        "mean_pixel": train.mean(axis=0),
        "snr_x": fixed(train[: cfg.snr_batch_size], 0x5B),
        "test_batches": mnist.test_batches(source.test[: cfg.eval_size], binarized=not dynamic),
        "checkpoints": sorted(set(range(0, cfg.steps, cfg.eval_every)) | {cfg.steps}),
    }
    x = tf.constant(data["snr_x"][:2])
    first = _harness.burda_model(mco.IWAE(1), x, cfg.seed, data["mean_pixel"])
    data["weights"] = choose_weights(first, data["snr_x"], cfg)
    record = {
        "benchmark": "mnist_snr",
        "reproduces": "Rainforth et al. (2018) figure 8; Tucker et al. (2019) figure 2, top row",
        "dataset": source.source,
        "num_train_images": len(train),
        "num_test_images": min(cfg.eval_size, len(source.test)),
        "config": {k: v for k, v in vars(cfg).items() if k != "out_dir"} | {"objectives": names},
        "checkpoint_steps": data["checkpoints"],
        "num_encoder_parameters": sum(int(np.prod(v.shape)) for v in first.inference_variables),
        "num_weights": cfg.num_weights,
        "weights": data["weights"],
        "definitions": DEFINITIONS,
        "machine": _harness.machine_info(),
        "runs": {},
    }
    path = out_dir / "results.json"

    def save():
        record["seconds"] = time.perf_counter() - wall
        _harness.write_json(path, record)

    print(
        f"mnist_snr: {', '.join(names)} on {source.source} ({len(train)} images), {cfg.steps} "
        f"steps, checkpoints {data['checkpoints']}, R = {cfg.num_estimates}, fixed batch of "
        f"{cfg.snr_batch_size}; out_dir {out_dir}",
        flush=True,
    )
    for name in names:
        train_and_measure(name, data, record, save, cfg)
    record["summary"] = summary(record)
    save()
    figures.draw(path)
    print_summary(record)
    print(f"\nWrote {path} and the figures in {record['seconds']:.0f} s.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
