"""The training and evaluation machinery shared by `mnist.py` and `structured_mnist.py`.

A run is a pure function of its flags: every random number (the order of the data, the
dynamic binarization, the samples of the objective) is drawn from a stateless seed
derived from `--seed` and the global step. A checkpoint therefore needs to hold only
the model, the optimizer and its step counter: a run killed at any point and started
again with the same command continues from its last checkpoint and ends with the same
parameters as a run that was never interrupted.

Data. The training images are held in memory (the equivalent of `tf.data`'s `cache`);
epoch e visits them in the order of a permutation seeded by (seed, e) (`shuffle`), and
batches are assembled by a parallel `map` and `prefetch`ed, so the input pipeline runs
beside the training step. Each batch carries one seed per image, so an image draws the
same binarization and the same z whichever device of a distribution strategy gets it.

Startup. Every flag is checked before any data are loaded or any graph is traced
(`flag_problems`); all problems are reported at once, each naming its flag and what to
do, and the run exits with status 2. Then, on the chief:

* `<out_dir>/.lock` is taken for the lifetime of the process (`rundir.OutDirLock`): a
  second run in the same out_dir is refused, naming the process that holds it.
* `<out_dir>/config.json` stores the run's configuration when it first starts. A rerun
  resumes the run only if its flags agree on everything that defines the run; it may
  change only `RESUMABLE_FLAGS` (how long to train, how and how often to evaluate, log
  and checkpoint, and on what devices). Otherwise it is refused, naming the flags that
  differ.
* Temporary files of an interrupted save are removed, and the newest intact checkpoint
  is restored: one that cannot be read in full, or holds non-finite values, is moved to
  `checkpoints/corrupt/` with a warning.

Training stops, with status 1, at the first step whose loss or gradients are not finite
(the step returned by `mco.make_train_step` skips its update), naming the step and
suggesting a lower --learning_rate; no checkpoint is ever written from non-finite
variables.

Distribution. --strategy=mirrored splits each global batch over the local devices;
--strategy=multi_worker over the workers of a `tf.distribute.MultiWorkerMirroredStrategy`
described by the TF_CONFIG environment variable (see `mnist.py`). Either way the run
trains the same model as on one device, up to the order of floating-point sums. Only
the chief writes to out_dir; the other workers save their (required) checkpoints to a
temporary folder deleted at exit, and restore the checkpoint the chief restores, so
out_dir must be on a filesystem all workers share to resume a multi-worker run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import keras
import numpy as np
import rundir
import tensorflow as tf
import tensorflow_probability as tfp
from absl import flags, logging

import mcobjectives as mco

import mnist_data

tfd = tfp.distributions

OBJECTIVES = mco.objective_names()  # every objective registered in mcobjectives.registry
# The flags that are keyword arguments of `mco.make_objective`, each given to the
# objectives whose constructor takes it (and is not None): flag name -> argument name.
OBJECTIVE_FLAGS = {
    "num_outer": "num_outer",
    "beta": "beta",
    "learnable_beta": "learnable_beta",
    "alpha": "alpha",
    "jvi_dreg": "dreg",
}
# Draws of the upstream layers behind the posterior means of a conditional latent leaf.
MEAN_SAMPLES = 32
# Burda et al. (2016): stage i = 0..7 runs 3^i epochs at learning rate 1e-3 * 10^(-i/7).
NUM_STAGES = 8
PAPER_EPOCHS = sum(3**i for i in range(NUM_STAGES))  # 3280
# (training, test) images of each TFDS dataset; the bundled fallback has fewer, checked
# once it is loaded.
DATASET_SIZES = {"mnist": (60000, 10000), "binarized_mnist": (50000, 10000)}
MAX_SEED = 2**31 - 1  # seeds are int32 tensors
# The flags a rerun may change and still resume the run in its out_dir: how long it
# trains, how and how often it evaluates, logs and checkpoints, and on which devices.
# Every other flag (the data, the model, the objective, the optimizer, the seed)
# defines the run, and a rerun that changes one is refused.
RESUMABLE_FLAGS = frozenset(
    {
        "epochs",
        "max_steps",
        "eval_every_epochs",
        "eval_size",
        "eval_num_samples",
        "eval_chunk_size",
        "eval_batch_size",
        "checkpoint_every",
        "log_every",
        "jit_compile",
        "strategy",
        "num_cpu_devices",
        "download",
        "out_dir",
    }
)
EXIT_FLAGS = 2  # invalid flags or environment (a usage error)
EXIT_FAILURE = 1  # a refused or stopped run (out_dir in use, resume mismatch, divergence)
EXIT_INTERRUPTED = 130  # Ctrl-C
# Training has diverged once its bound is this many bits per pixel worse than a model
# of fair coin flips (1 bit per binary pixel): no run that is learning gets there (the
# decoders start at the mean image, below 1 bit per pixel), while a learning rate far
# too high does within steps, with bounds that stay finite (-1e10 nats per image).
DIVERGED_BITS_PER_PIXEL = 100
CORRUPT_DIR = "corrupt"  # under checkpoints/: where unreadable checkpoints are moved

flags.DEFINE_enum(
    "dataset",
    "mnist",
    ["mnist", "binarized_mnist"],
    "mnist (dynamically binarized) or binarized_mnist (Larochelle's fixed binarization).",
)
flags.DEFINE_bool(
    "download",
    True,
    "Let TFDS download the dataset if it is not prepared (else use the bundled subset).",
)
flags.DEFINE_enum(
    "objective", "iwae", OBJECTIVES, "The training objective (a name of mco.make_objective)."
)
flags.DEFINE_integer(
    "num_samples",
    64,
    "Samples per data point (>= 1; >= 2 for vimco and jvi): K, or the budget M * K for "
    "miwae and piwae.",
)
flags.DEFINE_integer(
    "num_outer",
    8,
    "M, the number of outer averages, for miwae and piwae (>= 1, dividing --num_samples).",
)
flags.DEFINE_float(
    "beta", 0.05, "CIWAE's weight of the ELBO term, in [0, 1] (in (0, 1) if learnable)."
)
flags.DEFINE_bool("learnable_beta", False, "CIWAE: learn beta (initialised at --beta).")
flags.DEFINE_float(
    "alpha",
    None,
    "DReG's alpha in [0, 1] (default 0: IWAE-DReG; 1 is RWS-DReG); VR-IWAE's Renyi alpha "
    "in [0, 1) (default 0.5).",
)
flags.DEFINE_bool(
    "jvi_dreg", False, "JVI (and VR-IWAE): use the doubly reparameterized estimator (`dreg`)."
)
flags.DEFINE_integer(
    "batch_size",
    20,
    "The global batch size (>= 1, at most the training images; a multiple of the replicas "
    "under a distribution strategy).",
)
flags.DEFINE_float("learning_rate", 1e-3, "The learning rate of stage 0 (> 0).")
flags.DEFINE_integer(
    "epochs", None, f"Epochs to train (>= 1; default: the paper's {PAPER_EPOCHS})."
)
flags.DEFINE_integer(
    "max_steps", None, "Stop after this many steps (>= 1; a budget for short runs)."
)
flags.DEFINE_integer(
    "train_size", None, "Use only the first N training images (>= 1; default: all)."
)
flags.DEFINE_integer("latent_size", 50, "The dimension of z (>= 1).")
flags.DEFINE_integer("hidden_units", 200, "Units of each of the two hidden layers (>= 1).")
flags.DEFINE_bool("jit_compile", False, "Compile the gradient computation with XLA.")
flags.DEFINE_integer("seed", 0, f"The seed of every random number of the run, in [0, {MAX_SEED}].")
flags.DEFINE_string(
    "out_dir",
    None,
    "Where metrics, checkpoints and summaries go (default runs/<task>_<objective>); rerun "
    "the same command to resume the run there.",
)
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker"],
    "Distribution strategy: default (one device), mirrored (the local GPUs, or "
    "--num_cpu_devices CPUs) or multi_worker (MultiWorkerMirroredStrategy over the "
    "machines of the TF_CONFIG environment variable).",
)
flags.DEFINE_integer(
    "num_cpu_devices",
    0,
    "Split the CPU into this many logical devices (>= 0; 0: leave it alone), for "
    "--strategy=mirrored.",
)
flags.DEFINE_integer(
    "eval_every_epochs", 0, "Also evaluate every N epochs (>= 0; 0: stage ends only)."
)
flags.DEFINE_integer("eval_size", None, "Evaluate on the first N test images (>= 1; default: all).")
flags.DEFINE_integer("eval_num_samples", 5000, "K of the log p^(x) estimate (>= 1).")
flags.DEFINE_integer(
    "eval_chunk_size",
    500,
    "Samples per chunk of the log p^(x) estimate (>= 1; a memory bound: a chunk larger "
    "than --eval_num_samples draws them all at once).",
)
flags.DEFINE_integer("eval_batch_size", 100, "Test images per evaluation batch (>= 1).")
flags.DEFINE_integer("checkpoint_every", 2000, "Steps between checkpoints (>= 1).")
flags.DEFINE_integer("log_every", 100, "Steps between progress and TensorBoard updates (>= 1).")

FLAGS = flags.FLAGS


class FlagError(ValueError):
    """Flags (or TF_CONFIG) that cannot make a run: one sentence per problem, each naming
    its flag and what to do instead."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        lines = [f"{len(self.problems)} problems with the flags:"]
        return "\n".join(lines + [f"  {problem}" for problem in self.problems])


class RunError(RuntimeError):
    """A run that cannot start or go on (its out_dir in use or holding another run, no
    intact checkpoint, non-finite training); the message says why and what to do."""


# --------------------------------------------------------------------------- the flags
# Integer flags: the least value each takes, and what to give instead of a smaller one.
# Flags whose default is None may also be left unset.
COUNT_FLAGS = {
    "num_samples": (1, "e.g. --num_samples=64"),
    "num_outer": (1, "e.g. --num_outer=8, a divisor of --num_samples"),
    "batch_size": (1, "e.g. --batch_size=20"),
    "epochs": (1, f"or leave it unset for the paper's {PAPER_EPOCHS} epochs"),
    "max_steps": (1, "or leave it unset to train every epoch"),
    "train_size": (1, "or leave it unset to train on every training image"),
    "latent_size": (1, "e.g. --latent_size=50"),
    "hidden_units": (1, "e.g. --hidden_units=200"),
    "seed": (0, f"give an integer in [0, {MAX_SEED}]"),
    "num_cpu_devices": (0, "0 leaves the CPU as one device"),
    "eval_every_epochs": (0, "0 evaluates at the ends of the stages only"),
    "eval_size": (1, "or leave it unset to evaluate on every test image"),
    "eval_num_samples": (1, "e.g. --eval_num_samples=5000"),
    "eval_chunk_size": (1, "e.g. --eval_chunk_size=500"),
    "eval_batch_size": (1, "e.g. --eval_batch_size=100"),
    "checkpoint_every": (1, "e.g. --checkpoint_every=2000"),
    "log_every": (1, "e.g. --log_every=100"),
}


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in the TF_CONFIG cluster of --strategy=multi_worker."""

    task_type: str  # "chief" or "worker"
    task_index: int
    num_workers: int  # every task of the cluster, the chief included
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """The chief writes the run's files: the "chief" task, else worker 0."""
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and not self.has_chief
        )


TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)


def parse_tf_config(text: str | None) -> Cluster:
    """The cluster that TF_CONFIG describes; ValueError (naming TF_CONFIG) if it cannot
    run --strategy=multi_worker."""
    fix = f"set it on every machine, e.g. {TF_CONFIG_EXAMPLE} (see examples/mnist.py)"
    if not text:
        raise ValueError(f"--strategy=multi_worker needs the TF_CONFIG environment variable: {fix}")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {fix}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {text!r}: {fix}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f'TF_CONFIG has no "cluster" object: {fix}')
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise ValueError(
            f"TF_CONFIG's cluster has {', '.join(map(repr, unsupported))} tasks, which "
            "--strategy=multi_worker does not use: list only 'worker' (and optionally one "
            "'chief') addresses."
        )
    for kind, addresses in cluster.items():
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)
        ):
            raise ValueError(
                f'TF_CONFIG\'s cluster["{kind}"] must be a non-empty list of "host:port" '
                f"addresses, got {addresses!r}: {fix}"
            )
    if len(cluster.get("chief", [])) > 1:
        raise ValueError("TF_CONFIG's cluster has more than one 'chief': give at most one.")
    if not isinstance(task, dict):
        raise ValueError(f'TF_CONFIG has no "task" object naming this machine\'s task: {fix}')
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster:
        raise ValueError(
            f"TF_CONFIG's task type {kind!r} is not one of its cluster's "
            f"({', '.join(map(repr, cluster))})."
        )
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ValueError(
            f"TF_CONFIG's task index {index!r} is not that of one of its "
            f"{len(cluster[kind])} {kind} addresses (0 to {len(cluster[kind]) - 1})."
        )
    return Cluster(
        task_type=kind,
        task_index=index,
        num_workers=sum(len(a) for a in cluster.values()),
        has_chief="chief" in cluster,
    )


def objective_kwargs(*, warn: bool = True) -> dict:
    """The keyword arguments of `mco.make_objective` that the objective flags give.

    A flag given on the command line to an objective that does not take it is
    reported (if `warn`) and ignored.
    """
    accepted = inspect.signature(mco.registry.OBJECTIVES[FLAGS.objective].__init__).parameters
    kwargs, ignored = {}, []
    for flag, argument in OBJECTIVE_FLAGS.items():
        if argument in accepted:
            if FLAGS[flag].value is not None:
                kwargs[argument] = FLAGS[flag].value
        elif FLAGS[flag].present:
            ignored.append(f"--{flag}")
    if ignored and warn:
        logging.warning("--objective=%s ignores %s.", FLAGS.objective, ", ".join(ignored))
    return kwargs


def _flags_named(message: str) -> str:
    """A library message with its argument names spelled as the flags that give them."""
    names = {argument: flag for flag, argument in OBJECTIVE_FLAGS.items()}
    names["num_samples"] = "num_samples"
    for argument, flag in names.items():
        message = message.replace(f"`{argument}`", f"--{flag}")
    return message


def _num_outer_problem(kwargs: dict) -> str | None:
    if "num_outer" in kwargs:
        m, k = kwargs["num_outer"], FLAGS.num_samples
        if m >= 1 and k % m:
            return (
                f"--num_outer={m} must divide --num_samples={k} for {FLAGS.objective}: the "
                "budget is M outer times K / M inner samples."
            )
    return None


def make_objective() -> mco.MCObjective:
    """The objective the flags ask for: `mco.make_objective(--objective, --num_samples, ...)`.

    The other objective flags (`OBJECTIVE_FLAGS`) become keyword arguments of the
    objectives whose constructor takes them; one given on the command line to an
    objective that does not take it is reported and ignored.
    """
    kwargs = objective_kwargs()
    problem = _num_outer_problem(kwargs)
    if problem:
        raise ValueError(problem)
    return mco.make_objective(FLAGS.objective, FLAGS.num_samples, **kwargs)


def _objective_problems() -> list[str]:
    """What `make_objective` would refuse, found without creating a TensorFlow variable.

    A learnable beta is a `tf.Variable`, and TensorFlow must not start before
    `configure_devices` and `make_strategy` have run: the objective is built here with
    beta fixed, and the open interval a learnable beta needs is checked apart.
    """
    if FLAGS.num_samples < 1 or FLAGS.num_outer < 1:
        return []  # reported as counts
    if any(v is not None and not math.isfinite(v) for v in (FLAGS.beta, FLAGS.alpha)):
        return []  # reported by _float_problems
    kwargs = objective_kwargs(warn=False)
    problem = _num_outer_problem(kwargs)
    if problem:
        return [problem]
    learnable = kwargs.get("learnable_beta", False)
    try:
        fixed = {**kwargs, "learnable_beta": False} if learnable else kwargs
        mco.make_objective(FLAGS.objective, FLAGS.num_samples, **fixed)
    except (ValueError, TypeError) as error:
        return [f"--objective={FLAGS.objective}: {_flags_named(str(error))}"]
    if learnable and not 0.0 < kwargs["beta"] < 1.0:
        return [
            f"--beta={kwargs['beta']:g}: a learnable beta (--learnable_beta) starts strictly "
            "inside (0, 1), where its sigmoid parameterization can reach it; e.g. --beta=0.05."
        ]
    return []


def _float_problems() -> list[str]:
    problems = []
    rate = FLAGS.learning_rate
    if not math.isfinite(rate) or rate <= 0:
        problems.append(
            f"--learning_rate={rate:g}: must be a finite number > 0, e.g. --learning_rate=1e-3."
        )
    for name in ("beta", "alpha"):
        value = FLAGS[name].value
        if value is not None and not math.isfinite(value):
            problems.append(f"--{name}={value:g}: must be a finite number.")
    return problems


def _count_problems() -> list[str]:
    problems = []
    for name, (minimum, hint) in COUNT_FLAGS.items():
        value = FLAGS[name].value
        if value is not None and value < minimum:
            problems.append(f"--{name}={value}: must be at least {minimum}; {hint}.")
    if FLAGS.seed > MAX_SEED:
        problems.append(f"--seed={FLAGS.seed}: must be at most {MAX_SEED} (an int32 seed).")
    return problems


def size_problems(num_train: int, num_test: int, source: str) -> list[str]:
    """--train_size, --batch_size and --eval_size against the data's image counts."""
    problems = []
    train_size, batch_size, eval_size = FLAGS.train_size, FLAGS.batch_size, FLAGS.eval_size
    if train_size is not None and train_size > num_train:
        problems.append(
            f"--train_size={train_size} exceeds the {num_train} training images of {source}: "
            f"give at most {num_train}, or leave it unset for all of them."
        )
    images = num_train if train_size is None or train_size < 1 else min(train_size, num_train)
    if batch_size > images >= 1:
        where = f"--train_size={train_size}" if train_size is not None else source
        problems.append(
            f"--batch_size={batch_size} exceeds the {images} training images ({where}): lower "
            "--batch_size or train on more images."
        )
    if eval_size is not None and eval_size > num_test:
        problems.append(
            f"--eval_size={eval_size} exceeds the {num_test} test images of {source}: give at "
            f"most {num_test}, or leave it unset for all of them."
        )
    return problems


def _strategy_problems() -> tuple[list[str], Cluster | None]:
    problems, cluster = [], None
    batch_size = FLAGS.batch_size
    if FLAGS.strategy == "multi_worker":
        try:
            cluster = parse_tf_config(os.environ.get("TF_CONFIG"))
        except ValueError as error:
            problems.append(str(error))
        if FLAGS.num_cpu_devices:
            problems.append(
                f"--num_cpu_devices={FLAGS.num_cpu_devices} splits one machine for "
                "--strategy=mirrored; --strategy=multi_worker trains on one device per "
                "worker: leave it unset."
            )
        if cluster is not None and batch_size >= 1 and batch_size % cluster.num_workers:
            problems.append(
                f"--batch_size={batch_size} must be a multiple of the {cluster.num_workers} "
                "workers of TF_CONFIG: each trains on an equal share of every batch."
            )
    elif FLAGS.strategy == "default" and FLAGS.num_cpu_devices > 0:
        problems.append(
            f"--num_cpu_devices={FLAGS.num_cpu_devices} splits the CPU for "
            "--strategy=mirrored, and --strategy=default would train on one of its parts: "
            "add --strategy=mirrored, or leave --num_cpu_devices unset."
        )
    elif FLAGS.strategy == "mirrored" and batch_size >= 1 and FLAGS.num_cpu_devices >= 0:
        gpus = len(tf.config.list_physical_devices("GPU"))
        replicas = gpus or max(FLAGS.num_cpu_devices, 1)
        if batch_size % replicas:
            devices = f"{gpus} GPUs" if gpus else f"--num_cpu_devices={FLAGS.num_cpu_devices}"
            problems.append(
                f"--batch_size={batch_size} must be a multiple of the {replicas} replicas "
                f"({devices}) of --strategy=mirrored: each trains on an equal share of every "
                "batch."
            )
    return problems, cluster


def default_out_dir(task: str, architecture: str) -> pathlib.Path:
    if architecture != "one_layer":
        return pathlib.Path(f"runs/{task}_{architecture}_{FLAGS.objective}")
    return pathlib.Path(f"runs/{task}_{FLAGS.objective}")


def out_dir_path(task: str, architecture: str) -> pathlib.Path:
    """--out_dir (a leading ~ expanded: the shell leaves --out_dir=~/... alone)."""
    if FLAGS.out_dir:
        return pathlib.Path(FLAGS.out_dir).expanduser()
    return default_out_dir(task, architecture)


def _out_dir_problems(task: str, architecture: str) -> list[str]:
    if FLAGS.out_dir is not None and not FLAGS.out_dir.strip():
        return [
            "--out_dir is empty: give a folder, or leave it unset for "
            f"{default_out_dir(task, architecture)}."
        ]
    path = out_dir_path(task, architecture)
    shown = f"--out_dir={FLAGS.out_dir}" if FLAGS.out_dir else f"the default --out_dir={path}"
    if path.exists() and not path.is_dir():
        return [f"{shown} is a file, not a folder: choose another --out_dir."]
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [f"{shown}: {existing} is a file, so the folder cannot be made there."]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{shown}: no permission to write in {existing}; choose another --out_dir."]
    return []


def flag_problems(
    task: str, architecture: str, extra: Callable[[], list[str]] | None = None
) -> tuple[list[str], Cluster | None]:
    """Every problem of the flags (and of TF_CONFIG), and the multi-worker cluster.

    Pure Python, and quick: nothing is loaded, written or traced. `extra` adds the
    script's own checks (`mnist.py`'s architecture). The sizes of the data are checked
    against the TFDS dataset here and against the data actually loaded later
    (`size_problems`), since the bundled fallback is smaller.
    """
    problems = _count_problems() + _float_problems()
    problems += _objective_problems()
    problems += size_problems(*DATASET_SIZES[FLAGS.dataset], FLAGS.dataset)
    strategy_problems, cluster = _strategy_problems()
    problems += strategy_problems
    problems += _out_dir_problems(task, architecture)
    if extra is not None:
        problems += extra()
    return problems, cluster


# -------------------------------------------------------------------------------- data
def binarize(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Dynamic binarization: pixel ~ Bernoulli(intensity), from a stateless seed."""
    return tf.cast(tf.random.stateless_uniform(tf.shape(images), seed) < images, tf.float32)


def train_dataset(
    images: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    num_steps: int,
    dynamic_binarization: bool,
    to_batch: Callable[[tf.Tensor], dict],
) -> tf.data.Dataset:
    """Global batches for steps start_step..num_steps-1, each a function of (seed, step) alone.

    Element t is `to_batch(x)` plus per-image seeds, x the binarized images of step t:
    the t % steps_per_epoch-th batch of epoch t // steps_per_epoch's permutation.
    """
    num_images = len(images)
    steps_per_epoch = num_images // batch_size
    # Grey levels are multiples of 1/255: keep the 8-bit values (4x less memory).
    pixels = tf.constant(np.round(images * 255.0).astype(np.uint8))
    base = tf.constant([seed, 0x5EED], tf.int32)

    def epoch_batches(epoch):
        order_seed = tf.random.experimental.stateless_fold_in(base, epoch)
        order = tf.argsort(tf.random.stateless_uniform([num_images], order_seed))
        indices = tf.reshape(order[: steps_per_epoch * batch_size], [steps_per_epoch, -1])
        steps = epoch * steps_per_epoch + tf.range(steps_per_epoch, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((steps, indices))

    def make_batch(step, indices):
        step_seed = tf.random.experimental.stateless_fold_in(base, -1 - step)
        binarize_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(step_seed, 2))
        x = tf.cast(tf.gather(pixels, indices), tf.float32) / 255.0
        if dynamic_binarization:
            x = binarize(x, binarize_seed)
        batch = to_batch(x)
        batch["seed"] = tf.random.stateless_uniform(
            [batch_size, 2], noise_seed, minval=None, maxval=None, dtype=tf.int32
        )
        return batch

    first_epoch = start_step // steps_per_epoch
    last_epoch = -(-num_steps // steps_per_epoch)
    return (
        tf.data.Dataset.range(first_epoch, last_epoch)
        .flat_map(epoch_batches)
        .skip(start_step - first_epoch * steps_per_epoch)
        .take(max(num_steps - start_step, 0))
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


# ---------------------------------------------------------------------------- schedule
@dataclasses.dataclass(frozen=True)
class Schedule:
    """Steps of the run: Burda et al.'s learning-rate stages, cut to the budget flags."""

    steps_per_epoch: int
    num_steps: int
    stage_ends: tuple[int, ...]  # the step at which each stage ends

    @classmethod
    def from_flags(cls, num_images: int) -> Schedule:
        steps_per_epoch = num_images // FLAGS.batch_size
        if steps_per_epoch < 1:  # refused by size_problems first
            raise ValueError(
                f"--batch_size={FLAGS.batch_size} exceeds the {num_images} training images."
            )
        epochs = PAPER_EPOCHS if FLAGS.epochs is None else FLAGS.epochs
        num_steps = epochs * steps_per_epoch
        if FLAGS.max_steps is not None:
            num_steps = min(num_steps, FLAGS.max_steps)
        ends = np.cumsum([3**i for i in range(NUM_STAGES)]) * steps_per_epoch
        return cls(steps_per_epoch, num_steps, tuple(int(e) for e in ends))

    def learning_rate(self) -> keras.optimizers.schedules.LearningRateSchedule:
        values = [FLAGS.learning_rate * 10.0 ** (-i / 7) for i in range(NUM_STAGES)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(list(self.stage_ends[:-1]), values)

    def evaluation_steps(self) -> list[int]:
        """Evaluate at stage ends, every --eval_every_epochs, and at the last step."""
        steps = {e for e in self.stage_ends if e < self.num_steps} | {self.num_steps}
        if FLAGS.eval_every_epochs:
            every = FLAGS.eval_every_epochs * self.steps_per_epoch
            steps |= set(range(every, self.num_steps, every))
        return sorted(steps)


# -------------------------------------------------------------------------- evaluation
def posterior_means(q: tfd.Distribution, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """E_q[z] of every latent leaf, [B, D_leaf] (events flattened), by leaf name.

    A single q gives {"z": q.mean()}. For a joint q the means of its root parts are
    exact; a part conditioned on other leaves, such as q(z2|z1), gets the average of its
    conditional means over MEAN_SAMPLES draws of the parts above it,
    E_q(z1|x)[E_q(z2|z1)[z2]], which varies across data points only as much as z2
    does (a plain average of draws would add Var(z2) / MEAN_SAMPLES to every unit's
    activity). A Bernoulli leaf's mean is its probability of 1.
    """
    if not isinstance(q, tfd.JointDistribution):
        return {"z": q.mean()}
    distributions, _ = q.sample_distributions(sample_shape=MEAN_SAMPLES, seed=seed)
    if isinstance(distributions, dict):
        named = sorted(distributions.items())
    elif hasattr(distributions, "_asdict"):  # JointDistributionCoroutine's named tuples
        named = list(distributions._asdict().items())
    else:
        named = [(f"z{i}", d) for i, d in enumerate(distributions)]
    means = {}
    for name, distribution in named:
        mean = tf.cast(distribution.mean(), tf.float32)
        if distribution.batch_shape.rank == 2:  # [S, B]: built from the upstream draws
            mean = tf.reduce_mean(mean, axis=0)
        means[name] = tf.reshape(mean, [tf.shape(mean)[0], -1])
    return means


def evaluate(
    model: mco.ImportanceWeightedAutoencoder,
    test_batches: list[dict],
    *,
    num_samples: int,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Test-set IWAE-64, log p^(x) (K = num_samples), -KL(Q||P), ESS / 64, active units.

    Works for any q the model's encoder returns, structured or discrete: the IWAE-64
    bound and its ESS come from 64 draws of `mco.sampling.sample` (the draws and the
    value of `mco.IWAE(64)`, which would refuse a discrete q), and the active units
    are counted per latent leaf (`posterior_means`). `progress(i)` is called after the
    i-th batch.
    """
    eval_seed = tf.constant([FLAGS.seed, 0xE7A1], tf.int32)

    @tf.function
    def evaluate_batch(batch, seed):
        x, context = batch["x"], batch.get("context")
        q = model.posterior(x, context)
        log_joint = model.log_joint(x, context)
        bound_seed, marginal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        z = mco.sampling.sample(q, 64, bound_seed)
        log_weights = log_joint(z) - q.log_prob(z)
        log_px = mco.log_marginal_estimate(
            q, log_joint, marginal_seed, num_samples=num_samples, chunk_size=chunk_size
        )
        means_seed = tf.random.experimental.stateless_fold_in(seed, 2)
        return (
            mco.log_mean_exp(log_weights),
            mco.effective_sample_size(log_weights) / 64.0,
            log_px,
            posterior_means(q, means_seed),
        )

    start = time.perf_counter()
    outputs = []
    for i, batch in enumerate(test_batches):
        seed = tf.random.experimental.stateless_fold_in(eval_seed, i)
        outputs.append(evaluate_batch(batch, seed))
        if progress is not None:
            progress(i + 1)
    bound, ess, log_px = (np.concatenate([o[j].numpy() for o in outputs]) for j in range(3))
    active = {
        name: int(mco.active_units(np.concatenate([o[3][name].numpy() for o in outputs])))
        for name in outputs[0][3]
    }
    return {
        "iwae64": float(np.mean(bound)),
        "log_px": float(np.mean(log_px)),
        "log_px_num_samples": num_samples,
        "neg_kl": float(np.mean(bound) - np.mean(log_px)),
        "ess_fraction": float(np.mean(ess)),
        "active_units": sum(active.values()),
        "active_units_per_latent": active,
        "num_test_images": len(bound),
        "seconds": round(time.perf_counter() - start, 3),
    }


def test_batches(images: np.ndarray, binarized: bool, to_batch: Callable) -> list[dict]:
    """The test set in evaluation batches, binarized once with a seed fixed for all runs."""
    if FLAGS.eval_size is not None:
        images = images[: FLAGS.eval_size]
    x = tf.constant(images, tf.float32)
    if not binarized:
        # The same binarized test set for every run and seed, so runs compare directly.
        x = binarize(x, tf.constant([0, 0x7E57], tf.int32))
    size = FLAGS.eval_batch_size
    return [to_batch(x[i : i + size]) for i in range(0, len(images), size)]


# ------------------------------------------------------------------------------ output
write_json_atomically = rundir.write_json_atomically


class Console:
    """Progress on stdout: Keras progress bars on a terminal, else a plain line per log.

    A worker other than the chief prints nothing but its errors.
    """

    def __init__(self, num_steps: int, *, enabled: bool = True):
        self.enabled = enabled
        self.interactive = enabled and sys.stdout.isatty()
        self.num_steps = num_steps
        self._bar = None
        self._on_bar_line = False
        if self.interactive:
            self._bar = keras.utils.Progbar(
                num_steps, stateful_metrics=["loss", "bound", "ess", "steps/s"]
            )

    def print(self, text: str) -> None:
        if self.enabled:
            self._end_bar_line()
            print(text, flush=True)

    def _end_bar_line(self) -> None:
        if self._on_bar_line:
            print()
            self._on_bar_line = False

    def warn(self, text: str) -> None:
        if self.enabled:
            self._end_bar_line()
            sys.stdout.flush()
            print(f"WARNING: {text}", file=sys.stderr, flush=True)

    def training(self, step: int, values: dict[str, float], rate: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step, [*values.items(), ("steps/s", rate)])
            self._on_bar_line = step < self.num_steps  # the bar ends its last line
            return
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(f"step {step}/{self.num_steps}  {shown}  ({rate:.3g} steps/s)", flush=True)

    def evaluation(self, step: int, num_batches: int) -> Callable[[int], None] | None:
        """The progress callback of the evaluation at `step`: a bar on a terminal."""
        if not self.interactive:
            return None
        self.print(f"evaluating step {step} ({num_batches} test batches)")
        bar = keras.utils.Progbar(num_batches, unit_name="batch")

        def update(done: int) -> None:
            bar.update(done)
            self._on_bar_line = done < num_batches  # the bar ends its last line

        return update


def configure_devices() -> None:
    """Splits the CPU into --num_cpu_devices logical devices (before TensorFlow starts)."""
    if FLAGS.num_cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.num_cpu_devices
        )


def make_strategy() -> tf.distribute.Strategy | None:
    if FLAGS.strategy == "default":
        if os.environ.get("TF_CONFIG"):
            logging.warning(
                "TF_CONFIG is set but --strategy=default: this process trains alone "
                "(--strategy=multi_worker trains on the cluster it describes)."
            )
        return None
    if FLAGS.strategy == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        strategy = tf.distribute.MirroredStrategy(gpus or devices)
    if FLAGS.batch_size % strategy.num_replicas_in_sync:
        raise FlagError(
            [
                f"--batch_size={FLAGS.batch_size} must be a multiple of the "
                f"{strategy.num_replicas_in_sync} replicas of --strategy={FLAGS.strategy}."
            ]
        )
    return strategy


def _gather(strategy: tf.distribute.Strategy | None, value: int) -> list[int]:
    """`value` of every worker, in replica order (just [value] without several workers)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return [value]

    def replica_values():
        context = tf.distribute.get_replica_context()
        return context.all_gather(tf.constant([value], tf.int64), axis=0)

    gathered = tf.function(lambda: strategy.run(replica_values))()
    return [int(v) for v in strategy.experimental_local_results(gathered)[0].numpy()]


# ------------------------------------------------------------------------- checkpoints
def _checkpoint_step(prefix: str | pathlib.Path) -> int:
    """N of a checkpoint prefix .../ckpt-N (-1 if it has no number)."""
    tail = pathlib.Path(prefix).name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def checkpoint_problem(prefix: str) -> str | None:
    """Why the checkpoint `prefix` cannot be restored (None if it is intact).

    Every tensor is read in full, so a truncated or corrupted data file (TensorFlow
    checks each tensor's CRC) or index is found, as are non-finite values.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            value = reader.get_tensor(name)
            if dtype.is_floating and not np.all(np.isfinite(value)):
                return f"{name} holds non-finite values"
    except Exception as error:  # the reader raises OpError, IndexError, ValueError...
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        return f"{type(error).__name__}: {message.strip().splitlines()[0][:300]}"
    return None


def _quarantine(prefix: str) -> pathlib.Path:
    """Moves the files of checkpoint `prefix` into checkpoints/corrupt/; returns that folder."""
    path = pathlib.Path(prefix)
    corrupt = path.parent / CORRUPT_DIR
    corrupt.mkdir(exist_ok=True)
    for file in path.parent.glob(f"{path.name}.*"):
        destination = corrupt / file.name
        suffix = 1
        while destination.exists():  # keep what an earlier corruption left there
            destination = corrupt / f"{file.name}.{suffix}"
            suffix += 1
        os.replace(file, destination)
    return corrupt


def select_checkpoint(directory: pathlib.Path, console: Console) -> str | None:
    """The prefix of the newest intact checkpoint in `directory` (None if it has none).

    Candidates are the checkpoints of the state file and every `ckpt-N.index` present,
    newest (highest N) first. Those that fail `checkpoint_problem` are moved to
    checkpoints/corrupt/ with a warning; if any was, or if the state file did not list
    the intact ones, it is rewritten to list exactly them, so that the checkpoint
    manager rotates them out as usual.

    Raises:
      RunError: if the folder holds checkpoints but none is intact.
    """
    if not directory.is_dir():
        return None
    try:
        state = tf.train.get_checkpoint_state(str(directory))
    except ValueError:  # a state file without a latest checkpoint
        state = None
    listed = list(state.all_model_checkpoint_paths) if state is not None else []
    timestamps = list(state.all_model_checkpoint_timestamps) if state is not None else []
    times = dict(zip(listed, timestamps, strict=False))
    candidates = {
        _checkpoint_step(p): str(p) for p in listed if pathlib.Path(f"{p}.index").exists()
    }
    for index in directory.glob("ckpt-*.index"):
        candidates.setdefault(_checkpoint_step(index.with_suffix("")), str(index.with_suffix("")))
    intact, dropped = [], []
    for step in sorted(candidates, reverse=True):
        prefix = candidates[step]
        problem = checkpoint_problem(prefix)
        if problem is None:
            intact.append(prefix)
        else:
            corrupt = _quarantine(prefix)
            dropped.append(prefix)
            console.warn(
                f"checkpoint {pathlib.Path(prefix).name} is damaged ({problem}); moved it "
                f"to {corrupt} and fell back to an older one."
            )
    if not intact:
        if dropped:
            raise RunError(
                f"no intact checkpoint is left in {directory} (the damaged ones are in "
                f"{directory / CORRUPT_DIR}): delete {directory} to start the run over, or "
                "choose another --out_dir."
            )
        return None
    intact.reverse()  # oldest first, as the state file lists them
    if dropped or [str(p) for p in listed] != intact:
        now = time.time()
        oldest = min(times.values(), default=now) - 1
        preserved = state.last_preserved_timestamp if state is not None else oldest
        # The one public writer of the state file; TensorFlow marks it deprecated for
        # code that could use a CheckpointManager, which cannot drop a checkpoint.
        tf_logger, level = tf.get_logger(), tf.get_logger().level
        tf_logger.setLevel("ERROR")
        try:
            tf.compat.v1.train.update_checkpoint_state(
                str(directory),
                pathlib.Path(intact[-1]).name,
                [pathlib.Path(p).name for p in intact],
                all_model_checkpoint_timestamps=[times.get(p, now) for p in intact],
                last_preserved_timestamp=preserved,
            )
        finally:
            tf_logger.setLevel(level)
    return intact[-1]


def _all_finite(variables: list[tf.Variable]) -> bool:
    return all(
        np.all(np.isfinite(v.numpy())) for v in variables if tf.as_dtype(v.dtype).is_floating
    )


# ------------------------------------------------------------------------- run config
def _current_config(task: str, architecture: str) -> dict:
    return {
        "task": task,
        "architecture": architecture,
        "flags": {name: FLAGS[name].value for name in _run_flags()},
    }


def _stored_config(out_dir: pathlib.Path) -> dict | None:
    """config.json, or for a run started before it existed, what metrics.json recorded."""
    try:
        config = rundir.load_config(out_dir)
    except ValueError as error:
        raise RunError(
            f"--out_dir={out_dir}: {error}; delete it (the run's flags are also in "
            "metrics.json) or choose another --out_dir."
        ) from None
    if config is not None:
        return config
    metrics_path = out_dir / "metrics.json"
    if metrics_path.exists():
        with contextlib.suppress(ValueError):
            metrics = json.loads(metrics_path.read_text())
            if isinstance(metrics.get("config"), dict):
                return {
                    "task": metrics.get("task"),
                    "architecture": metrics.get("architecture", "one_layer"),
                    "flags": metrics["config"],
                    "data": metrics.get("dataset"),
                }
    return None


def _parameters(objective: str) -> list[str]:
    return list(inspect.signature(mco.registry.OBJECTIVES[objective].__init__).parameters)


def _has_checkpoints(out_dir: pathlib.Path) -> bool:
    return any((out_dir / "checkpoints").glob("ckpt-*.index"))


def check_resume(
    out_dir: pathlib.Path, task: str, architecture: str, data_source: str | None = None
) -> dict | None:
    """Refuses to resume the run in `out_dir` with flags that define another run.

    Compared: the task, and every run flag outside `RESUMABLE_FLAGS` (an objective flag
    only if the objective takes it), and, once the data are loaded (`data_source`),
    where they came from. Returns the stored configuration (None if there is none).

    Raises:
      RunError: naming each flag that differs, its stored and its current value.
    """
    stored = _stored_config(out_dir)
    if stored is None or not _has_checkpoints(out_dir):
        return stored  # nothing to resume: this run starts afresh
    current = _current_config(task, architecture)
    # An objective flag counts if both objectives take it (a differing objective is
    # reported as such; the flags that only one of them takes are moot).
    accepted = set(_parameters(FLAGS.objective))
    if stored["flags"].get("objective") in mco.registry.OBJECTIVES:
        accepted &= set(_parameters(stored["flags"]["objective"]))
    compared = [
        name
        for name in sorted(current["flags"])
        if name not in RESUMABLE_FLAGS
        and (name not in OBJECTIVE_FLAGS or OBJECTIVE_FLAGS[name] in accepted)
    ]
    lines = [
        f"--{name}: {old!r} in the run, {new!r} now"
        for name, old, new in rundir.config_differences(stored["flags"], current["flags"], compared)
    ]
    if stored.get("task") not in (None, task):
        lines.insert(0, f"the task: {stored['task']!r} in the run, {task!r} now")
    if stored.get("architecture") not in (None, architecture) and "architecture" not in compared:
        lines.append(f"--architecture: {stored['architecture']!r} in the run, {architecture!r} now")
    if data_source is not None and stored.get("data") not in (None, data_source):
        lines.append(
            f"the data: {stored['data']!r} in the run, {data_source!r} now (check "
            "TFDS_DATA_DIR and --download)"
        )
    if lines:
        allowed = ", ".join(f"--{name}" for name in sorted(RESUMABLE_FLAGS))
        raise RunError(
            f"--out_dir={out_dir} holds a run that this command would change, so it does not "
            "resume it:\n  "
            + "\n  ".join(lines)
            + "\nRerun with the run's values (see its config.json), or choose another "
            f"--out_dir for a new run. A resumed run may change only {allowed}."
        )
    return stored


# ------------------------------------------------------------------------------- a run
def run(
    *,
    build_model: Callable[[mco.MCObjective, np.ndarray], mco.ImportanceWeightedAutoencoder],
    to_batch: Callable[[tf.Tensor], dict],
    task: str,
    architecture: str = "one_layer",
    extra_problems: Callable[[], list[str]] | None = None,
) -> dict:
    """Trains and evaluates; returns the metrics written to <out_dir>/metrics.json.

    Args:
      build_model: (objective, training images) -> an unbuilt model.
      to_batch: binarized images [B, 784] -> the model's batch dict ({"x": ...}, plus
        "context" for conditional models).
      task: a name for the console and the metrics ("mnist", "structured_mnist").
      architecture: the model's name, recorded in the metrics ("one_layer", ...).
      extra_problems: the script's own checks of its flags (each problem a sentence
        naming its flag), run with the others at startup.

    Raises:
      FlagError: at startup, before any data are loaded or any graph is traced (but
        for the sizes of bundled fallback data, checked once they are loaded).
      RunError: the out_dir is in use or holds a run these flags would change, no
        intact checkpoint is left, or training stopped on a non-finite step.
    """
    logging.set_verbosity(logging.WARNING)
    problems, cluster = flag_problems(task, architecture, extra_problems)
    if problems:
        raise FlagError(problems)
    is_chief = cluster is None or cluster.is_chief
    out_dir = out_dir_path(task, architecture)
    # Before anything else of TensorFlow: devices are fixed when its runtime starts,
    # and MultiWorkerMirroredStrategy sets up its collectives then.
    configure_devices()
    strategy = make_strategy()
    try:
        make_objective()  # checked above without building a variable; this is the backstop
    except (ValueError, TypeError) as error:
        raise FlagError([f"--objective={FLAGS.objective}: {_flags_named(str(error))}"]) from None
    if is_chief and out_dir.is_dir():
        check_resume(out_dir, task, architecture)  # quick, before the data are loaded
    data = mnist_data.load_mnist(FLAGS.dataset, download=FLAGS.download)
    problems = size_problems(len(data.train), len(data.test), data.source)
    if problems:
        raise FlagError(problems)
    with contextlib.ExitStack() as cleanup:
        lock = None
        if is_chief:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                lock = rundir.OutDirLock(out_dir).acquire()
            except rundir.OutDirInUse as error:
                raise RunError(
                    f"--out_dir={out_dir} {error}: wait for that run to end, or choose "
                    "another --out_dir."
                ) from None
            except OSError as error:
                raise RunError(f"--out_dir={out_dir} cannot be used: {error}") from None
            cleanup.callback(lock.release)
            write_dir = out_dir
        else:
            # Workers other than the chief must save too (the save may involve collective
            # ops), into a folder of their own that nobody reads.
            write_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{task}_worker{cluster.task_index}_"))
            cleanup.callback(shutil.rmtree, write_dir, ignore_errors=True)
        return _train(
            build_model=build_model,
            to_batch=to_batch,
            task=task,
            architecture=architecture,
            strategy=strategy,
            cluster=cluster,
            out_dir=out_dir,
            write_dir=write_dir,
            data=data,
            lock=lock,
        )


def _train(
    *,
    build_model,
    to_batch,
    task: str,
    architecture: str,
    strategy: tf.distribute.Strategy | None,
    cluster: Cluster | None,
    out_dir: pathlib.Path,
    write_dir: pathlib.Path,
    data: mnist_data.MnistData,
    lock: rundir.OutDirLock | None,
) -> dict:
    """The body of `run`, with the out_dir locked (on the chief)."""
    is_chief = lock is not None
    train_images = data.train if FLAGS.train_size is None else data.train[: FLAGS.train_size]
    schedule = Schedule.from_flags(len(train_images))
    console = Console(schedule.num_steps, enabled=is_chief)
    if is_chief:
        if lock.stale_owner:
            console.print(f"Note: {out_dir}: {lock.describe_stale()}.")
        removed = rundir.remove_orphans(out_dir)
        if removed:
            console.warn(
                f"Removed {len(removed)} temporary file(s) left by an interrupted save: "
                + ", ".join(str(p.relative_to(out_dir)) for p in removed)
            )
        # Again under the lock, and with the data's source now known.
        check_resume(out_dir, task, architecture, data.source)
    # Initial weights from the seed too: an interrupted and an uninterrupted run agree.
    keras.utils.set_random_seed(FLAGS.seed)

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        objective = make_objective()  # again, for a learnable beta mirrored in the scope
        description = repr(objective)
        model = build_model(objective, train_images)
        optimizer = keras.optimizers.Adam(
            schedule.learning_rate(), beta_1=0.9, beta_2=0.999, epsilon=1e-4
        )
        model.optimizer = optimizer
        # Create every variable now, so that a checkpoint restores into them.
        model(to_batch(tf.constant(train_images[:2], tf.float32)))
        optimizer.build(model.model_variables + model.inference_variables)
    # Every model variable by position too: Keras layers do not list their non-trainable
    # variables as checkpoint dependencies of the model.
    checkpoint = tf.train.Checkpoint(
        model=model, model_variables=list(model.variables), optimizer=optimizer
    )
    checked_variables = (
        model.model_variables + model.inference_variables + list(optimizer.variables)
    )
    checkpoints = out_dir / "checkpoints"
    restore = select_checkpoint(checkpoints, console) if is_chief else None
    # Every worker restores the checkpoint the chief chose (from the shared out_dir).
    restore_step = max(_gather(strategy, _checkpoint_step(restore) if restore else -1))
    if restore is None and restore_step >= 0:
        restore = str(checkpoints / f"ckpt-{restore_step}")
    if restore is not None:
        try:
            checkpoint.restore(restore).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as error:
            raise RunError(
                f"cannot restore {restore} into the model these flags build ({error}). "
                + (
                    "With --strategy=multi_worker, out_dir must be on a filesystem every "
                    "worker reads."
                    if not is_chief
                    else "Choose another --out_dir for a new run."
                )
            ) from None
    start_step = int(optimizer.iterations.numpy())
    steps = _gather(strategy, start_step)
    if len(set(steps)) > 1:
        raise RunError(
            f"the workers restored different steps ({steps}): out_dir must be on a "
            "filesystem every worker reads."
        )
    manager = tf.train.CheckpointManager(checkpoint, write_dir / "checkpoints", max_to_keep=2)
    if is_chief and (not restore or not (out_dir / rundir.CONFIG_NAME).exists()):
        rundir.save_config(out_dir, {**_current_config(task, architecture), "data": data.source})

    metrics_path = out_dir / "metrics.json"
    previous = json.loads(metrics_path.read_text()) if is_chief and metrics_path.exists() else {}
    metrics = {
        "task": task,
        "architecture": architecture,
        "dataset": data.source,
        "objective": FLAGS.objective,
        "objective_description": description,
        "config": {name: FLAGS[name].value for name in _run_flags()},
        "evaluations": [e for e in previous.get("evaluations", []) if e["step"] <= start_step],
        "train": previous.get("train", {}),
    }
    if start_step:
        console.print(f"Resuming from step {start_step} ({restore}).")
    workers = f", {cluster.num_workers} workers" if cluster is not None else ""
    console.print(
        f"{task} ({architecture}): {description} on {data.source} "
        f"({len(train_images)} training images), {schedule.num_steps} steps of batch "
        f"{FLAGS.batch_size}{workers}, out_dir {out_dir}"
    )

    dataset = train_dataset(
        train_images,
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        start_step=start_step,
        num_steps=schedule.num_steps,
        dynamic_binarization=not data.binarized,
        to_batch=to_batch,
    )
    if strategy is not None:
        # Every worker builds every global batch and keeps its share of each (the
        # replicas' slices in order), so the split does not depend on file sharding.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        dataset = strategy.experimental_distribute_dataset(dataset.with_options(options))
    train_step = mco.make_train_step(
        model, optimizer, jit_compile=FLAGS.jit_compile, strategy=strategy
    )
    tests = test_batches(data.test, data.binarized, to_batch) if is_chief else []
    writer = (
        tf.summary.create_file_writer(str(out_dir / "tensorboard"))
        if is_chief
        else tf.summary.create_noop_writer()
    )
    eval_steps = [s for s in schedule.evaluation_steps() if s > start_step]
    num_pixels = int(to_batch(tf.constant(train_images[:1], tf.float32))["x"].shape[-1])
    diverged_bound = -DIVERGED_BITS_PER_PIXEL * math.log(2.0) * num_pixels

    def save(step: int) -> None:
        if not _all_finite(checked_variables):  # a defence: skipped steps keep them finite
            raise RunError(
                f"training stopped at step {step}: some variables are not finite, so no "
                f"checkpoint was written. {_lower_rate_advice()}"
            )
        manager.save(checkpoint_number=step)

    step, values, last_saved = start_step, {}, start_step
    tick, tick_step, wall_start = time.perf_counter(), start_step, time.perf_counter()
    previous_seconds = metrics["train"].get("wall_seconds", 0.0)
    eval_seconds = 0.0
    for batch in dataset:
        outputs = train_step(batch)
        step += 1
        finite = bool(outputs["finite"]) if "finite" in outputs else True
        values = {k: float(v) for k, v in outputs.items() if k != "finite"}
        if not finite or not all(math.isfinite(v) for v in values.values()):
            skipped = "finite" in outputs
            raise RunError(_non_finite_message(step, values, finite, skipped, last_saved))
        if values.get("bound", 0.0) < diverged_bound:
            raise RunError(_diverged_message(step, values["bound"], num_pixels, last_saved))
        if step % FLAGS.log_every == 0 or step == schedule.num_steps:
            now = time.perf_counter()
            rate = (step - tick_step) / (now - tick)
            tick, tick_step = now, step
            console.training(step, values, rate)
            with writer.as_default(step=step):
                for key, value in values.items():
                    tf.summary.scalar(f"train/{key}", value)
                tf.summary.scalar("train/steps_per_second", rate)
        if step in eval_steps and is_chief:
            eval_start = time.perf_counter()
            # Not under XLA: its CPU code for the chunked while loop ran 7x slower here.
            result = evaluate(
                model,
                tests,
                num_samples=FLAGS.eval_num_samples,
                chunk_size=FLAGS.eval_chunk_size,
                progress=console.evaluation(step, len(tests)),
            )
            result = {"step": step, "epoch": round(step / schedule.steps_per_epoch, 4), **result}
            metrics["evaluations"].append(result)
            per_latent = result["active_units_per_latent"]
            leaves = ""
            if len(per_latent) > 1:
                leaves = " (" + ", ".join(f"{k} {v}" for k, v in per_latent.items()) + ")"
            console.print(
                f"step {step}: test IWAE-64 {result['iwae64']:.2f}, log p^(x) "
                f"{result['log_px']:.2f}, -KL {result['neg_kl']:.2f}, ESS/K "
                f"{result['ess_fraction']:.3f}, active units {result['active_units']}{leaves}"
            )
            with writer.as_default(step=step):
                for key in ("iwae64", "log_px", "neg_kl", "ess_fraction", "active_units"):
                    tf.summary.scalar(f"test/{key}", result[key])
                if len(per_latent) > 1:
                    for name, count in per_latent.items():
                        tf.summary.scalar(f"test/active_units/{name}", count)
            writer.flush()
            eval_seconds += time.perf_counter() - eval_start
            tick = time.perf_counter()  # the progress bar's steps/s leaves evaluation out
            training_seconds = tick - wall_start - eval_seconds
            metrics["train"] = {
                "steps": step,
                "final_loss": float(values["loss"]),
                "steps_per_second": round((step - start_step) / training_seconds, 3),
                "wall_seconds": round(previous_seconds + tick - wall_start, 3),
            }
            write_json_atomically(metrics_path, metrics)
        if step % FLAGS.checkpoint_every == 0 or step in eval_steps:
            # Saved after the evaluation: a run killed during one resumes from an earlier
            # step, drops the unfinished step's metrics and evaluates it again.
            save(step)
            last_saved = step
    writer.flush()
    if step == start_step:
        console.print(f"Nothing to do: the run already reached step {step}.")
    return metrics


def _lower_rate_advice() -> str:
    rate, default = FLAGS.learning_rate, FLAGS["learning_rate"].default
    return (
        f"Try a lower --learning_rate (this run: {rate:g}; the default: {default:g}), e.g. "
        f"--learning_rate={rate / 10:g}, in a new --out_dir: the run is deterministic, so "
        "rerunning this command would stop at the same step."
    )


def _non_finite_message(
    step: int, values: dict[str, float], finite: bool, skipped: bool, last_saved: int
) -> str:
    shown = ", ".join(f"{k} {v:g}" for k, v in values.items())
    if skipped and not finite:
        what = f"the loss or its gradients were not finite, and the update was skipped ({shown})"
    else:
        what = f"a training value is not finite ({shown})"
    saved = f"step {last_saved}" if last_saved else "none yet"
    return (
        f"training stopped at step {step}: {what}. Nothing was saved after it (the last "
        f"checkpoint: {saved}). {_lower_rate_advice()}"
    )


def _diverged_message(step: int, bound: float, num_pixels: int, last_saved: int) -> str:
    bits = -bound / math.log(2.0) / num_pixels
    saved = f"step {last_saved}" if last_saved else "none yet"
    return (
        f"training diverged at step {step}: its bound is {bound:.3g} nats per image, "
        f"{bits:.3g} bits per pixel where fair coin flips cost 1 (the limit is "
        f"{DIVERGED_BITS_PER_PIXEL}). Nothing was saved after it (the last checkpoint: "
        f"{saved}). {_lower_rate_advice()}"
    )


def _run_flags() -> list[str]:
    """The flags of this module and of the running script, for the metrics' config."""
    names = []
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        # A script's flags are filed under its path (examples/mnist.py), a module's by name.
        if module.removesuffix(".py").endswith(("experiment", "mnist", "__main__")):
            names += [f.name for f in module_flags]
    return sorted(set(names))


# ---------------------------------------------------------------------------- the main
def main(argv: list[str], **run_kwargs) -> dict | None:
    """An example's `main`: `run(**run_kwargs)`, its refusals as one message and a status.

    Exits with `EXIT_FLAGS` (2) for flags or TF_CONFIG that cannot make a run, and
    `EXIT_FAILURE` (1) for a run refused (out_dir in use, a resume that would change the
    run, no intact checkpoint) or stopped (non-finite or diverging training, a peer
    worker gone under --strategy=multi_worker); the message goes to stderr as
    "<script>: error: ...".
    """
    program = os.path.basename(argv[0]) if argv else "experiment"
    try:
        if len(argv) > 1:
            raise FlagError(
                [
                    f"unexpected argument {arg!r}: give flags as --name=value (--help lists them)."
                    for arg in argv[1:]
                ]
            )
        return run(**run_kwargs)
    except FlagError as error:
        _exit(program, error, EXIT_FLAGS)
    except RunError as error:
        _exit(program, error, EXIT_FAILURE)
    except (tf.errors.UnavailableError, tf.errors.CancelledError) as error:
        if FLAGS.strategy != "multi_worker":
            raise
        first = (error.message or str(error)).strip().splitlines()[0][:300]
        message = (
            "a worker of the TF_CONFIG cluster stopped or cannot be reached, so this one "
            f"stops too (see the other workers' output): {first}"
        )
        _exit(program, message, EXIT_FAILURE)
    except KeyboardInterrupt:
        message = "interrupted; rerun the same command to resume from the last checkpoint."
        _exit(program, message, EXIT_INTERRUPTED)
    return None


def _exit(program: str, error: Exception | str, status: int) -> None:
    sys.stdout.flush()
    if sys.stdout.isatty():
        print()  # off a progress bar's line
    print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(status)
