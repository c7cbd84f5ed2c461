"""Every check of a `Config` (and of TF_CONFIG) before a run starts.

`flag_problems` runs before any data are loaded or any graph is traced: pure Python,
and quick. Each problem is a sentence naming its flag and what to give instead; the
run reports all of them at once and exits with status 2 (`config.FlagError`). The
sizes are checked against the TFDS dataset here, and against the data actually loaded
later (`size_problems`), since the bundled fallback is smaller.

Memory and work (`memory_problems`). A training step holds K x B samples (--num_samples
times --batch_size) of the model's per-sample tensors at once, an evaluation one chunk
of min(--eval_chunk_size, --eval_num_samples) samples for each of --eval_batch_size test
images; either is refused at startup, naming its flags, the bytes it would need and the
limit, when its sample tensors (each sample's latents, the hidden layers evaluated per
sample and the decoder's logits, one per pixel, which dominate) would exceed the
library's sample-memory limit, `mcobjectives.limits.sample_memory_limit()` (a tenth of
the machine's memory by default; the environment variable
MCOBJECTIVES_SAMPLE_MEMORY_LIMIT overrides it, e.g. "64GiB" or "inf"). The same limit
refuses the samples z inside the library when they are drawn: these checks come
first, before any data are loaded, and count the larger tensors. An evaluation also draws at most
`MAX_EVAL_DRAWS` samples in all (--eval_num_samples times the test images): past that,
it would run for hours at every evaluation of the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable

import tensorflow as tf

import mcobjectives as mco
from mcobjectives import limits
from mcobjectives.experimental import mnist

from config import (
    MAX_SEED,
    OBJECTIVES,
    PAPER_EPOCHS,
    Config,
    flags_named,
    num_outer_problem,
    objective_kwargs,
)

# Integer settings: the least value each takes, and what to give instead of a smaller
# one. Those whose default is None may also be left unset.
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
    "eval_num_samples": (
        mnist.BOUND_SAMPLES,
        f"the samples of the IWAE-{mnist.BOUND_SAMPLES} bound that -KL = IWAE-"
        f"{mnist.BOUND_SAMPLES} - log p^(x) compares log p^(x) with (with fewer, log p^(x) "
        "is the looser bound and -KL comes out positive); e.g. --eval_num_samples=5000",
    ),
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


# The settings with a fixed set of values (absl's enum flags check them on the command
# line; a Config built in code is checked here).
CHOICES = {
    "dataset": mnist.DATASETS,
    "objective": tuple(OBJECTIVES),
    "strategy": ("default", "mirrored", "multi_worker"),
    "architecture": (None, *mnist.ARCHITECTURES),
}


def _choice_problems(config: Config) -> list[str]:
    problems = []
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            shown = ", ".join(str(c) for c in choices if c is not None)
            problems.append(f"--{name}={value}: must be one of {shown}.")
    return problems


def _objective_problems(config: Config) -> list[str]:
    """What `config.make_objective` would refuse, found without creating a TensorFlow
    variable.

    A learnable beta is a `tf.Variable`, and TensorFlow must not start before the
    devices and the strategy are set up: the objective is built here with beta fixed,
    and the open interval a learnable beta needs is checked apart.
    """
    if config.num_samples < 1 or config.num_outer < 1:
        return []  # reported as counts
    if any(v is not None and not math.isfinite(v) for v in (config.beta, config.alpha)):
        return []  # reported by _float_problems
    kwargs = objective_kwargs(config, warn=False)
    problem = num_outer_problem(config, kwargs)
    if problem:
        return [problem]
    learnable = kwargs.get("learnable_beta", False)
    try:
        fixed = {**kwargs, "learnable_beta": False} if learnable else kwargs
        mco.make_objective(config.objective, config.num_samples, **fixed)
    except (ValueError, TypeError) as error:
        return [f"--objective={config.objective}: {flags_named(str(error))}"]
    if learnable and not 0.0 < kwargs["beta"] < 1.0:
        return [
            f"--beta={kwargs['beta']:g}: a learnable beta (--learnable_beta) starts strictly "
            "inside (0, 1), where its sigmoid parameterization can reach it; e.g. --beta=0.05."
        ]
    return []


def _float_problems(config: Config) -> list[str]:
    problems = []
    rate = config.learning_rate
    if not math.isfinite(rate) or rate <= 0:
        problems.append(
            f"--learning_rate={rate:g}: must be a finite number > 0, e.g. --learning_rate=1e-3."
        )
    for name in ("beta", "alpha"):
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            problems.append(f"--{name}={value:g}: must be a finite number.")
    return problems


def _count_problems(config: Config) -> list[str]:
    problems = []
    for name, (minimum, hint) in COUNT_FLAGS.items():
        value = getattr(config, name)
        if value is not None and value < minimum:
            problems.append(f"--{name}={value}: must be at least {minimum}; {hint}.")
    if config.seed > MAX_SEED:
        problems.append(f"--seed={config.seed}: must be at most {MAX_SEED} (an int32 seed).")
    return problems


def size_problems(config: Config, num_train: int, num_test: int, source: str) -> list[str]:
    """train_size, batch_size and eval_size against the data's image counts."""
    problems = []
    train_size, batch_size, eval_size = config.train_size, config.batch_size, config.eval_size
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


# ------------------------------------------------------------------ memory and work
# An evaluation draws at most this many samples in all (--eval_num_samples times the test
# images): 43 times the paper's 5000 x 10000, and the count of draws TensorFlow's int32
# loop counters hold. Past it an evaluation would run for hours, at every stage end.
MAX_EVAL_DRAWS = 2**31 - 1
BYTES_PER_FLOAT = 4  # float32
# A training step holds each per-sample float about this many times: its forward value,
# its gradient, and the temporaries of the log densities around them. Not part of the
# check (the library's limit is of the samples' own bytes, and leaves room for these
# copies); the parameters of the model are held 4 times (weights, gradients, Adam's two
# moments).
PARAMETER_COPIES = 4


def format_bytes(size: float) -> str:
    """`size` bytes in the largest unit of at least 1: "3.2 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.3g} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


def _limit_source(limit: float) -> str:
    """Where the sample-memory limit comes from, for the messages."""
    if os.environ.get(limits.ENVIRONMENT_VARIABLE, "").strip():
        return f"{limits.ENVIRONMENT_VARIABLE}={os.environ[limits.ENVIRONMENT_VARIABLE]}"
    memory = limits.physical_memory()
    if limit == limits.default_sample_memory_limit() and memory is not None:
        return f"{limits.DEFAULT_FRACTION:.0%} of this machine's {format_bytes(memory)}"
    return "set with mcobjectives.limits.set_sample_memory_limit"


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"{n:.3g}"


def _pixels(config: Config) -> int:
    """The pixels of x: the bottom half of the image for structured_mnist."""
    return mnist.NUM_PIXELS // 2 if config.task == "structured_mnist" else mnist.NUM_PIXELS


def sample_floats(config: Config) -> int:
    """The float32 values one sample z of one data point makes, once.

    Its latents, the hidden layers evaluated per sample (the decoder's, and for the
    two-layer models those of q(z2|z1) and p(z1|z2)) and the decoder's logits, one per
    pixel, which dominate (and structured_mnist's context, which its decoder reads with
    each sample). The encoder of x runs once per data point, not per sample.
    """
    architecture = config.model_architecture if config.task == "mnist" else "one_layer"
    if architecture == "two_layer":  # z1: 100, z2: 50; 100-100, 100-100, 200-200 units
        return 150 + 800 + _pixels(config)
    if architecture == "sbn":  # z1, z2: 200 each; the logits of q(z2|z1) and p(z1|z2)
        return 400 + 400 + _pixels(config)
    # structured_mnist's decoder reads concat(z, c) per sample: the top half, again.
    context = _pixels(config) if config.task == "structured_mnist" else 0
    return config.latent_size + context + 2 * config.hidden_units + _pixels(config)


def parameter_floats(config: Config) -> int:
    """The parameters of the --latent_size / --hidden_units model (0 for the others,
    whose sizes are fixed and small): its weights and biases."""
    if config.task == "mnist" and config.model_architecture != "one_layer":
        return 0
    h, z, x = config.hidden_units, config.latent_size, _pixels(config)
    context = x if config.task == "structured_mnist" else 0
    encoder = (x + context) * h + h * h + h * 2 * z + 2 * h + 2 * z
    decoder = (z + context) * h + h * h + h * x + 2 * h + x
    prior = (context * h + h * h + h * 2 * z + 2 * h + 2 * z) if context else 0
    return encoder + decoder + prior


def training_bytes(config: Config) -> int:
    """The bytes of a training step's sample tensors: K x B samples of `sample_floats`."""
    return config.num_samples * config.batch_size * sample_floats(config) * BYTES_PER_FLOAT


def evaluation_bytes(config: Config, num_test: int) -> int:
    """The bytes of one chunk of the log p^(x) estimate's sample tensors: min(chunk, K)
    samples of `sample_floats` for each image of an evaluation batch."""
    chunk = min(config.eval_chunk_size, config.eval_num_samples)
    images = min(config.eval_batch_size, config.eval_size or num_test, num_test)
    return chunk * images * sample_floats(config) * BYTES_PER_FLOAT


def parameter_bytes(config: Config) -> int:
    """The parameters' bytes with their gradients and Adam's moments."""
    return parameter_floats(config) * PARAMETER_COPIES * BYTES_PER_FLOAT


def memory_problems(config: Config, num_test: int | None = None) -> list[str]:
    """The model's parameters, a training step's or a log p^(x) chunk's sample tensors
    that would exceed `mcobjectives.limits.sample_memory_limit()`, and an evaluation of
    more than `MAX_EVAL_DRAWS` draws: each named by its flags, with the bytes it needs,
    the limit and the fix. Pure Python: nothing is allocated. `num_test`: the test
    images (default: those of the TFDS dataset, the most an evaluation can take)."""
    if num_test is None:
        num_test = mnist.DATASET_SIZES[config.dataset][1]
    counts = ("num_samples", "batch_size", "latent_size", "hidden_units")
    counts += ("eval_num_samples", "eval_chunk_size", "eval_batch_size")
    if any(getattr(config, name) < 1 for name in counts) or (config.eval_size or 1) < 1:
        return []  # reported by _count_problems
    problems = []
    images = min(config.eval_size or num_test, num_test)
    draws = config.eval_num_samples * images
    if draws > MAX_EVAL_DRAWS:
        most = max(MAX_EVAL_DRAWS // images, 1)
        problems.append(
            f"--eval_num_samples={config.eval_num_samples} on {images} test images is "
            f"{_count(draws)} draws per evaluation, more than the {_count(MAX_EVAL_DRAWS)} an "
            "evaluation may take (hours at each stage end): give at most "
            f"--eval_num_samples={most}, or fewer images with --eval_size (the paper: "
            "--eval_num_samples=5000 on 10000)."
        )
    try:
        limit = limits.sample_memory_limit()
    except (ValueError, TypeError) as error:  # names MCOBJECTIVES_SAMPLE_MEMORY_LIMIT
        return [*problems, str(error)]
    if limit == math.inf:
        return problems
    per_sample = sample_floats(config) * BYTES_PER_FLOAT
    fits = limit // (per_sample * config.batch_size)
    parts = "its latents, hidden layers and logits"
    step_samples = _count(config.num_samples * config.batch_size)
    chunk = min(config.eval_chunk_size, config.eval_num_samples)
    eval_images = min(config.eval_batch_size, images)
    checked = [
        (  # the parameters first: the samples' problems follow from theirs
            parameter_bytes(config),
            f"--latent_size={config.latent_size} with --hidden_units={config.hidden_units}",
            f"the model's {_count(parameter_floats(config))} parameters with their "
            "gradients and Adam's two moments",
            "lower --hidden_units or --latent_size (the defaults: 200 and 50)",
        ),
        (
            training_bytes(config),
            f"--num_samples={config.num_samples} with --batch_size={config.batch_size}",
            f"the sample tensors of a training step ({step_samples} samples of "
            f"{format_bytes(per_sample)}: {parts})",
            (
                f"lower --num_samples (at most {fits} at this --batch_size) or --batch_size"
                if fits >= 1
                else f"lower --batch_size (at most {limit // per_sample} samples fit a step)"
            ),
        ),
        (
            evaluation_bytes(config, num_test),
            f"--eval_chunk_size={config.eval_chunk_size} with --eval_num_samples="
            f"{config.eval_num_samples} and --eval_batch_size={config.eval_batch_size}",
            f"the sample tensors of one chunk of log p^(x) ({chunk} samples of "
            f"{format_bytes(per_sample)} for each of {eval_images} test images)",
            f"give at most --eval_chunk_size={max(limit // (per_sample * eval_images), 1)} "
            "(the same estimate, in more chunks), or a lower --eval_batch_size",
        ),
    ]
    for need, flags, what, fix in checked:
        if need > limit:
            problems.append(
                f"{flags}: {what} would need {format_bytes(need)}, more than the "
                f"sample-memory limit of {format_bytes(limit)} "
                f"(mcobjectives.limits.sample_memory_limit(): {_limit_source(limit)}): "
                f"{fix}; or, if the machine has the memory, raise the limit with the "
                f"environment variable {limits.ENVIRONMENT_VARIABLE}, e.g. "
                f"{limits.ENVIRONMENT_VARIABLE}=64GiB."
            )
            if flags.startswith("--latent_size"):
                break
    return problems


def _strategy_problems(config: Config) -> tuple[list[str], Cluster | None]:
    problems, cluster = [], None
    batch_size, devices = config.batch_size, config.num_cpu_devices
    if config.strategy == "multi_worker":
        try:
            cluster = parse_tf_config(os.environ.get("TF_CONFIG"))
        except ValueError as error:
            problems.append(str(error))
        if devices:
            problems.append(
                f"--num_cpu_devices={devices} splits one machine for "
                "--strategy=mirrored; --strategy=multi_worker trains on one device per "
                "worker: leave it unset."
            )
        if cluster is not None and batch_size >= 1 and batch_size % cluster.num_workers:
            problems.append(
                f"--batch_size={batch_size} must be a multiple of the {cluster.num_workers} "
                "workers of TF_CONFIG: each trains on an equal share of every batch."
            )
    elif config.strategy == "default" and devices > 0:
        problems.append(
            f"--num_cpu_devices={devices} splits the CPU for "
            "--strategy=mirrored, and --strategy=default would train on one of its parts: "
            "add --strategy=mirrored, or leave --num_cpu_devices unset."
        )
    elif config.strategy == "mirrored" and batch_size >= 1 and devices >= 0:
        gpus = len(tf.config.list_physical_devices("GPU"))
        replicas = gpus or max(devices, 1)
        if batch_size % replicas:
            shown = f"{gpus} GPUs" if gpus else f"--num_cpu_devices={devices}"
            problems.append(
                f"--batch_size={batch_size} must be a multiple of the {replicas} replicas "
                f"({shown}) of --strategy=mirrored: each trains on an equal share of every "
                "batch."
            )
    return problems, cluster


def _out_dir_problems(config: Config) -> list[str]:
    if config.out_dir is not None and not config.out_dir.strip():
        return [
            f"--out_dir is empty: give a folder, or leave it unset for {config.default_out_dir()}."
        ]
    path = config.out_path()
    shown = f"--out_dir={config.out_dir}" if config.out_dir else f"the default --out_dir={path}"
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
    config: Config, extra: Callable[[Config], list[str]] | None = None
) -> tuple[list[str], Cluster | None]:
    """Every problem of the configuration (and of TF_CONFIG), and the multi-worker cluster.

    Pure Python, and quick: nothing is loaded, written or traced. `extra(config)` adds
    the script's own checks (`mnist.py`'s architecture).
    """
    problems = _choice_problems(config)
    if problems:
        return problems, None  # the other checks read these settings
    problems = _count_problems(config) + _float_problems(config)
    memory = memory_problems(config)
    problems += memory
    if not any(p.startswith("--num_samples=") for p in memory):  # an objective of 10^20...
        problems += _objective_problems(config)
    problems += size_problems(config, *mnist.DATASET_SIZES[config.dataset], config.dataset)
    strategy_problems, cluster = _strategy_problems(config)
    problems += strategy_problems
    problems += _out_dir_problems(config)
    if extra is not None:
        problems += extra(config)
    return problems, cluster
