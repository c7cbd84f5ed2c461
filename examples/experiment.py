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
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import pathlib
import time
from collections.abc import Callable

import keras
import numpy as np
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
    "num_samples", 64, "Samples per data point: K, or the budget M * K for miwae and piwae."
)
flags.DEFINE_integer(
    "num_outer", 8, "M, the number of outer averages, for miwae and piwae (K / M inner)."
)
flags.DEFINE_float("beta", 0.05, "CIWAE's weight of the ELBO term.")
flags.DEFINE_bool("learnable_beta", False, "CIWAE: learn beta (initialised at --beta).")
flags.DEFINE_float(
    "alpha",
    None,
    "DReG's alpha (default 0: IWAE-DReG; 1 is RWS-DReG); VR-IWAE's Renyi alpha (default 0.5).",
)
flags.DEFINE_bool(
    "jvi_dreg", False, "JVI (and VR-IWAE): use the doubly reparameterized estimator (`dreg`)."
)
flags.DEFINE_integer("batch_size", 20, "The global batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "The learning rate of stage 0.")
flags.DEFINE_integer("epochs", None, f"Epochs to train (default: the paper's {PAPER_EPOCHS}).")
flags.DEFINE_integer("max_steps", None, "Stop after this many steps (a budget for short runs).")
flags.DEFINE_integer("train_size", None, "Use only the first N training images (quick runs).")
flags.DEFINE_integer("latent_size", 50, "The dimension of z.")
flags.DEFINE_integer("hidden_units", 200, "Units of each of the two hidden layers.")
flags.DEFINE_bool("jit_compile", False, "Compile the gradient computation with XLA.")
flags.DEFINE_integer("seed", 0, "The seed of every random number of the run.")
flags.DEFINE_string(
    "out_dir", None, "Where metrics, checkpoints and summaries go (runs/<task>_<objective>)."
)
flags.DEFINE_enum("strategy", "default", ["default", "mirrored"], "Distribution strategy.")
flags.DEFINE_integer(
    "num_cpu_devices", 0, "Split the CPU into this many logical devices (0: leave it alone)."
)
flags.DEFINE_integer("eval_every_epochs", 0, "Also evaluate every N epochs (0: stage ends only).")
flags.DEFINE_integer("eval_size", None, "Evaluate on the first N test images (default: all).")
flags.DEFINE_integer("eval_num_samples", 5000, "K of the log p^(x) estimate.")
flags.DEFINE_integer("eval_chunk_size", 500, "Samples per chunk of the log p^(x) estimate.")
flags.DEFINE_integer("eval_batch_size", 100, "Test images per evaluation batch.")
flags.DEFINE_integer("checkpoint_every", 2000, "Steps between checkpoints.")
flags.DEFINE_integer("log_every", 100, "Steps between progress and TensorBoard updates.")

FLAGS = flags.FLAGS


# --------------------------------------------------------------------------- objectives
def make_objective() -> mco.MCObjective:
    """The objective the flags ask for: `mco.make_objective(--objective, --num_samples, ...)`.

    The other objective flags (`OBJECTIVE_FLAGS`) become keyword arguments of the
    objectives whose constructor takes them; one given on the command line to an
    objective that does not take it is reported and ignored.
    """
    name, k = FLAGS.objective, FLAGS.num_samples
    accepted = inspect.signature(mco.registry.OBJECTIVES[name].__init__).parameters
    kwargs, ignored = {}, []
    for flag, argument in OBJECTIVE_FLAGS.items():
        if argument in accepted:
            if FLAGS[flag].value is not None:
                kwargs[argument] = FLAGS[flag].value
        elif FLAGS[flag].present:
            ignored.append(f"--{flag}")
    if ignored:
        logging.warning("--objective=%s ignores %s.", name, ", ".join(ignored))
    if "num_outer" in kwargs:
        m = kwargs["num_outer"]
        if m < 1 or k % m:
            raise ValueError(
                f"--num_outer={m} must divide --num_samples={k} for {name}: the budget is "
                "M outer times K / M inner samples."
            )
    return mco.make_objective(name, k, **kwargs)


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
        .take(num_steps - start_step)
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
        if steps_per_epoch < 1:
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
) -> dict:
    """Test-set IWAE-64, log p^(x) (K = num_samples), -KL(Q||P), ESS / 64, active units.

    Works for any q the model's encoder returns, structured or discrete: the IWAE-64
    bound and its ESS come from 64 draws of `mco.sampling.sample` (the draws and the
    value of `mco.IWAE(64)`, which would refuse a discrete q), and the active units
    are counted per latent leaf (`posterior_means`).
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
    outputs = [
        evaluate_batch(batch, tf.random.experimental.stateless_fold_in(eval_seed, i))
        for i, batch in enumerate(test_batches)
    ]
    bound, ess, log_px = (np.concatenate([o[j].numpy() for o in outputs]) for j in range(3))
    active = {
        name: int(mco.active_units(np.concatenate([o[3][name].numpy() for o in outputs])))
        for name in outputs[0][3]
    }
    return {
        "iwae64": float(np.mean(bound)),
        "log_px": float(np.mean(log_px)),
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
def write_json_atomically(path: pathlib.Path, payload: dict) -> None:
    """Writes `payload` to `path` via a temporary file and a rename: never half written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def configure_devices() -> None:
    """Splits the CPU into --num_cpu_devices logical devices (before TensorFlow starts)."""
    if FLAGS.num_cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.num_cpu_devices
        )


def make_strategy() -> tf.distribute.Strategy | None:
    if FLAGS.strategy == "default":
        return None
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    strategy = tf.distribute.MirroredStrategy(gpus or devices)
    if FLAGS.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"--batch_size={FLAGS.batch_size} must be a multiple of the "
            f"{strategy.num_replicas_in_sync} replicas."
        )
    return strategy


# ------------------------------------------------------------------------------- a run
def run(
    *,
    build_model: Callable[[mco.MCObjective, np.ndarray], mco.ImportanceWeightedAutoencoder],
    to_batch: Callable[[tf.Tensor], dict],
    task: str,
    architecture: str = "one_layer",
    check_objective: Callable[[mco.MCObjective], None] | None = None,
) -> dict:
    """Trains and evaluates; returns the metrics written to <out_dir>/metrics.json.

    Args:
      build_model: (objective, training images) -> an unbuilt model.
      to_batch: binarized images [B, 784] -> the model's batch dict ({"x": ...}, plus
        "context" for conditional models).
      task: a name for the console and the metrics ("mnist", "structured_mnist").
      architecture: the model's name, recorded in the metrics ("one_layer", ...).
      check_objective: raises if the model cannot be trained with the objective the
        flags ask for; called at startup, before any data are loaded.
    """
    logging.set_verbosity(logging.WARNING)
    configure_devices()
    objective = make_objective()  # checks the objective's flags before any data are loaded
    if check_objective is not None:
        check_objective(objective)
    default_dir = f"runs/{task}_{FLAGS.objective}"
    if architecture != "one_layer":
        default_dir = f"runs/{task}_{architecture}_{FLAGS.objective}"
    out_dir = pathlib.Path(FLAGS.out_dir or default_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = mnist_data.load_mnist(FLAGS.dataset, download=FLAGS.download)
    strategy = make_strategy()
    # Initial weights from the seed too: an interrupted and an uninterrupted run agree.
    keras.utils.set_random_seed(FLAGS.seed)

    train_images = data.train if FLAGS.train_size is None else data.train[: FLAGS.train_size]
    schedule = Schedule.from_flags(len(train_images))
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        objective = make_objective()
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
    manager = tf.train.CheckpointManager(checkpoint, out_dir / "checkpoints", max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    start_step = int(optimizer.iterations.numpy())

    metrics_path = out_dir / "metrics.json"
    previous = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
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
        print(f"Resuming from step {start_step} ({manager.latest_checkpoint}).")
    print(
        f"{task} ({architecture}): {description} on {data.source} "
        f"({len(train_images)} training images), {schedule.num_steps} steps of batch "
        f"{FLAGS.batch_size}, out_dir {out_dir}"
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
        dataset = strategy.experimental_distribute_dataset(dataset)
    train_step = mco.make_train_step(
        model, optimizer, jit_compile=FLAGS.jit_compile, strategy=strategy
    )
    tests = test_batches(data.test, data.binarized, to_batch)
    writer = tf.summary.create_file_writer(str(out_dir / "tensorboard"))
    eval_steps = [s for s in schedule.evaluation_steps() if s > start_step]
    progress = keras.utils.Progbar(
        schedule.num_steps, stateful_metrics=["loss", "bound", "ess", "steps/s"]
    )

    step, values = start_step, {}
    tick, tick_step, wall_start = time.perf_counter(), start_step, time.perf_counter()
    previous_seconds = metrics["train"].get("wall_seconds", 0.0)
    eval_seconds = 0.0
    for batch in dataset:
        values = train_step(batch)
        step += 1
        if step % FLAGS.log_every == 0 or step == schedule.num_steps:
            values = {k: float(v) for k, v in values.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"Non-finite training values at step {step}: {values}")
            now = time.perf_counter()
            rate = (step - tick_step) / (now - tick)
            tick, tick_step = now, step
            progress.update(step, [*values.items(), ("steps/s", rate)])
            with writer.as_default(step=step):
                for key, value in values.items():
                    tf.summary.scalar(f"train/{key}", value)
                tf.summary.scalar("train/steps_per_second", rate)
        if step in eval_steps:
            eval_start = time.perf_counter()
            # Not under XLA: its CPU code for the chunked while loop ran 7x slower here.
            result = evaluate(
                model, tests, num_samples=FLAGS.eval_num_samples, chunk_size=FLAGS.eval_chunk_size
            )
            result = {"step": step, "epoch": round(step / schedule.steps_per_epoch, 4), **result}
            metrics["evaluations"].append(result)
            per_latent = result["active_units_per_latent"]
            leaves = ""
            if len(per_latent) > 1:
                leaves = " (" + ", ".join(f"{k} {v}" for k, v in per_latent.items()) + ")"
            print(
                f"\nstep {step}: test IWAE-64 {result['iwae64']:.2f}, log p^(x) "
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
            manager.save(checkpoint_number=step)
    writer.flush()
    if step == start_step:
        print(f"Nothing to do: the run already reached step {step}.")
    return metrics


def _run_flags() -> list[str]:
    """The flags of this module and of the running script, for the metrics' config."""
    names = []
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        # A script's flags are filed under its path (examples/mnist.py), a module's by name.
        if module.removesuffix(".py").endswith(("experiment", "mnist", "__main__")):
            names += [f.name for f in module_flags]
    return sorted(set(names))
