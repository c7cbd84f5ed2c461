"""The training of an example run: `run(config, build_model=..., to_batch=...)`.

A run is a pure function of its `Config`: every random number (the order of the data,
the dynamic binarization, the samples of the objective) is drawn from a stateless seed
derived from `config.seed` and the global step (`mnist.train_dataset`). A checkpoint
therefore needs to hold only the model, the optimizer and its step counter: a run
killed at any point and started again with the same configuration continues from its
last checkpoint and ends with the same parameters as a run that was never interrupted.

Startup. Every setting is checked before any data are loaded or any graph is traced
(`checks.flag_problems`); all problems are reported at once (`FlagError`). Then, on the
chief:

* `<out_dir>/.lock` is taken for the lifetime of the run (`rundir.OutDirLock`): a
  second run in the same out_dir is refused, naming the process that holds it.
* `<out_dir>/config.json` stores the run's configuration when it first starts; a rerun
  resumes the run only if it agrees on everything that defines the run
  (`checkpoints.check_resume`).
* Temporary files of an interrupted save are removed, and the newest intact checkpoint
  is restored (`checkpoints.select_checkpoint`).

A damaged `<out_dir>/metrics.json` is renamed aside with a warning
(`rundir.load_metrics`) and its evaluations are rebuilt from the TensorBoard summaries;
a write into out_dir that fails (a full disk) stops the run with a `RunError` naming
out_dir, and what a failed checkpoint save left is removed, so the previous checkpoint
stays the latest.

Training stops (`RunError`) at the first step whose loss or gradients are not finite
(the step returned by `mco.make_train_step` skips its update) or whose bound diverges,
naming the step and suggesting a lower learning rate; no checkpoint is ever written
from non-finite variables.

Distribution. strategy="mirrored" splits each global batch over the local devices;
"multi_worker" over the workers of a `tf.distribute.MultiWorkerMirroredStrategy`
described by the TF_CONFIG environment variable (see `mnist.py`). Either way the run
trains the same model as on one device, up to the order of floating-point sums. Only
the chief writes to out_dir; the other workers save their (required) checkpoints to a
temporary folder deleted at exit, and restore the checkpoint the chief restores, so
out_dir must be on a filesystem all workers share to resume a multi-worker run.
"""

from __future__ import annotations

import contextlib
import errno
import math
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import mcobjectives as mco
from mcobjectives.experimental import mnist

import checkpoints
import checks
import distribute
import pictures
import rundir
from checks import Cluster, flag_problems, size_problems
from config import Config, FlagError, RunError, flags_named, make_objective
from console import Console
from schedule import Schedule

# Training has diverged once its bound is this many bits per pixel worse than a model
# of fair coin flips (1 bit per binary pixel): no run that is learning gets there (the
# decoders start at the mean image, below 1 bit per pixel), while a learning rate far
# too high does within steps, with bounds that stay finite (-1e10 nats per image).
DIVERGED_BITS_PER_PIXEL = 100

# (config, objective, training images) -> an unbuilt model.
ModelBuilder = Callable[[Config, mco.MCObjective, np.ndarray], mco.ImportanceWeightedAutoencoder]
# Binarized images [B, 784] -> the model's batch dict ({"x": ...}, plus "context" for
# conditional models).
BatchMaker = Callable[[tf.Tensor], dict]


def run(
    config: Config,
    *,
    build_model: ModelBuilder,
    to_batch: BatchMaker,
    extra_problems: Callable[[Config], list[str]] | None = None,
    data: mnist.MnistData | None = None,
) -> dict:
    """Trains and evaluates; returns the metrics written to <out_dir>/metrics.json.

    Args:
      config: the run's settings.
      build_model: (config, objective, training images) -> an unbuilt model.
      to_batch: binarized images [B, 784] -> the model's batch dict.
      extra_problems: the script's own checks of the configuration (each problem a
        sentence naming its flag), run with the others at startup.
      data: the images to use; by default `mnist.load_mnist(config.dataset)`.

    Raises:
      FlagError: at startup, before any data are loaded or any graph is traced (but
        for the sizes of bundled fallback data, checked once they are loaded).
      RunError: the out_dir is in use or holds a run this configuration would change,
        no intact checkpoint is left, or training stopped on a non-finite step.
    """
    logging.set_verbosity(logging.WARNING)
    problems, cluster = flag_problems(config, extra_problems)
    if problems:
        raise FlagError(problems)
    is_chief = cluster is None or cluster.is_chief
    out_dir = config.out_path()
    # Before anything else of TensorFlow: devices are fixed when its runtime starts,
    # and MultiWorkerMirroredStrategy sets up its collectives then.
    distribute.configure_devices(config.num_cpu_devices)
    strategy = distribute.make_strategy(config.strategy, config.batch_size)
    try:
        make_objective(config)  # checked without building a variable; this is the backstop
    except (ValueError, TypeError) as error:
        raise FlagError([f"--objective={config.objective}: {flags_named(str(error))}"]) from None
    if is_chief and out_dir.is_dir():
        checkpoints.check_resume(out_dir, config)  # quick, before the data are loaded
    if data is None:
        data = mnist.load_mnist(config.dataset, download=config.download)
    problems = size_problems(config, len(data.train), len(data.test), data.source)
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
            prefix = f"{config.task}_worker{cluster.task_index}_"
            write_dir = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
            cleanup.callback(shutil.rmtree, write_dir, ignore_errors=True)
        return _train(
            config,
            build_model=build_model,
            to_batch=to_batch,
            strategy=strategy,
            cluster=cluster,
            write_dir=write_dir,
            data=data,
            lock=lock,
        )


def _train(
    config: Config,
    *,
    build_model: ModelBuilder,
    to_batch: BatchMaker,
    strategy: tf.distribute.Strategy | None,
    cluster: Cluster | None,
    write_dir: pathlib.Path,
    data: mnist.MnistData,
    lock: rundir.OutDirLock | None,
) -> dict:
    """The body of `run`, with the out_dir locked (on the chief)."""
    is_chief, out_dir = lock is not None, config.out_path()
    train_images = data.train if config.train_size is None else data.train[: config.train_size]
    schedule = Schedule.from_config(config, len(train_images))
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
        checkpoints.check_resume(out_dir, config, data.source)
    # Initial weights from the seed too: an interrupted and an uninterrupted run agree.
    keras.utils.set_random_seed(config.seed)

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        objective = make_objective(config)  # again, for a learnable beta mirrored in the scope
        description = repr(objective)
        model = build_model(config, objective, train_images)
        optimizer = mnist.adam(schedule.learning_rate())
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
    checkpoint_dir = out_dir / "checkpoints"
    restore = checkpoints.select_checkpoint(checkpoint_dir, console.warn) if is_chief else None
    # Every worker restores the checkpoint the chief chose (from the shared out_dir).
    chosen = checkpoints.checkpoint_step(restore) if restore else -1
    restore_step = max(distribute.gather(strategy, chosen))
    if restore is None and restore_step >= 0:
        restore = str(checkpoint_dir / f"ckpt-{restore_step}")
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
    steps = distribute.gather(strategy, start_step)
    if len(set(steps)) > 1:
        raise RunError(
            f"the workers restored different steps ({steps}): out_dir must be on a "
            "filesystem every worker reads."
        )
    manager = tf.train.CheckpointManager(checkpoint, write_dir / "checkpoints", max_to_keep=2)
    if is_chief and (not restore or not (out_dir / rundir.CONFIG_NAME).exists()):
        try:
            rundir.save_config(out_dir, {**checkpoints.run_config(config), "data": data.source})
        except OSError as error:
            raise _write_error(out_dir, rundir.CONFIG_NAME, error, start_step) from None

    metrics_path = out_dir / rundir.METRICS_NAME
    previous, damaged = rundir.load_metrics(out_dir, console.warn) if is_chief else ({}, False)
    if damaged:  # its evaluations are also in the TensorBoard summaries
        previous = {"evaluations": _summarized_evaluations(out_dir, start_step, schedule)}
    metrics = {
        "task": config.task,
        "architecture": config.model_architecture,
        "dataset": data.source,
        "objective": config.objective,
        "objective_description": description,
        "config": config.flag_values(),
        "evaluations": [e for e in previous.get("evaluations", []) if e["step"] <= start_step],
        "train": previous.get("train", {}),
    }
    if start_step:
        console.print(f"Resuming from step {start_step} ({restore}).")
    workers = f", {cluster.num_workers} workers" if cluster is not None else ""
    console.print(
        f"{config.task} ({config.model_architecture}): {description} on {data.source} "
        f"({len(train_images)} training images), {schedule.num_steps} steps of batch "
        f"{config.batch_size}{workers}, out_dir {out_dir}"
    )

    dataset = mnist.train_dataset(
        train_images,
        batch_size=config.batch_size,
        seed=config.seed,
        start_step=start_step,
        num_steps=schedule.num_steps,
        dynamic_binarization=not data.binarized,
        to_batch=to_batch,
    )
    dataset = distribute.distribute_dataset(strategy, dataset)
    train_step = mco.make_train_step(
        model, optimizer, jit_compile=config.jit_compile, strategy=strategy
    )
    tests = []
    if is_chief:
        test_images = data.test if config.eval_size is None else data.test[: config.eval_size]
        tests = mnist.test_batches(
            test_images,
            binarized=data.binarized,
            batch_size=config.eval_batch_size,
            to_batch=to_batch,
        )
        digits = pictures.fixed_digits(data.test, to_batch)  # the same digits every time
    # Not under XLA: its CPU code for the chunked while loop ran 7x slower here.
    evaluator = mnist.make_evaluator(
        model,
        seed=config.seed,
        num_samples=config.eval_num_samples,
        chunk_size=config.eval_chunk_size,
    )
    writer = (
        tf.summary.create_file_writer(str(out_dir / "tensorboard"))
        if is_chief
        else tf.summary.create_noop_writer()
    )
    eval_steps = [s for s in schedule.evaluation_steps() if s > start_step]
    num_pixels = int(to_batch(tf.constant(train_images[:1], tf.float32))["x"].shape[-1])
    diverged_bound = -DIVERGED_BITS_PER_PIXEL * math.log(2.0) * num_pixels

    def save(step: int) -> None:
        if not checkpoints.all_finite(checked_variables):  # skipped steps keep them finite
            raise RunError(
                f"training stopped at step {step}: some variables are not finite, so no "
                f"checkpoint was written. {_lower_rate_advice(config)}"
            )
        try:
            manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:  # a full disk, a lost mount...
            _remove_partial_checkpoint(write_dir / "checkpoints", step)
            size = sum(np.asarray(v.numpy()).nbytes for v in checked_variables)
            what = f"checkpoint ckpt-{step}"
            raise _write_error(out_dir, what, error, last_saved, size) from None

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
            raise RunError(_non_finite_message(config, step, values, finite, skipped, last_saved))
        if values.get("bound", 0.0) < diverged_bound:
            raise RunError(_diverged_message(config, step, values["bound"], num_pixels, last_saved))
        if step % config.log_every == 0 or step == schedule.num_steps:
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
            result = evaluator(tests, console.evaluation(step, len(tests)))
            result = {"step": step, "epoch": round(step / schedule.steps_per_epoch, 4), **result}
            metrics["evaluations"].append(result)
            console.evaluated(result)
            _summarize_evaluation(writer, step, result)
            try:
                pictures.write_pictures(model, digits, out_dir, step, config.seed)
            except OSError as error:
                raise _write_error(out_dir, f"pictures of step {step}", error, last_saved) from None
            eval_seconds += time.perf_counter() - eval_start
            tick = time.perf_counter()  # the progress bar's steps/s leaves evaluation out
            training_seconds = tick - wall_start - eval_seconds
            metrics["train"] = {
                "steps": step,
                "final_loss": float(values["loss"]),
                "steps_per_second": round((step - start_step) / training_seconds, 3),
                "wall_seconds": round(previous_seconds + tick - wall_start, 3),
            }
            try:
                rundir.write_json_atomically(metrics_path, metrics)
            except OSError as error:
                raise _write_error(out_dir, rundir.METRICS_NAME, error, last_saved) from None
        if step % config.checkpoint_every == 0 or step in eval_steps:
            # Saved after the evaluation: a run killed during one resumes from an earlier
            # step, drops the unfinished step's metrics and evaluates it again.
            save(step)
            last_saved = step
    writer.flush()
    if step == start_step:
        console.print(f"Nothing to do: the run already reached step {step}.")
    return metrics


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(getattr(error, "message", None) or error).lower()
    return "no space left" in text or "quota exceeded" in text


def _write_error(
    out_dir: pathlib.Path, what: str, error: BaseException, last_saved: int, size: int = 0
) -> RunError:
    """The RunError of a write into out_dir that failed: a full disk is named as such."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    detail = f"{type(error).__name__}: {message.strip().splitlines()[0][:300]}"
    kept = (
        f"The latest checkpoint is still step {last_saved}, intact"
        if last_saved
        else "No checkpoint was written yet"
    )
    needs = f" (a checkpoint of this run takes about {checks.format_bytes(size)})" if size else ""
    if _is_disk_full(error):
        return RunError(
            f"the disk of --out_dir={out_dir} is full: writing {what} failed ({detail}). "
            f"{kept}. Free some space there{needs}, or choose an --out_dir on another disk "
            "for a new run, and rerun the same command to resume."
        )
    return RunError(
        f"writing {what} in --out_dir={out_dir} failed ({detail}). {kept}. Check that the "
        "folder is writable and its disk has space, and rerun the same command to resume."
    )


def _remove_partial_checkpoint(directory: pathlib.Path, step: int) -> None:
    """Removes what a failed save of ckpt-`step` wrote, so the previous one stays the latest."""
    for path in [*directory.glob(f"ckpt-{step}.*"), *directory.glob(f"ckpt-{step}_temp*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


# The scalars of an evaluation under test/ in TensorBoard (`_summarize_evaluation`).
_SUMMARIZED = ("iwae64", "log_px", "neg_kl", "ess_fraction", "active_units")


def _summarized_evaluations(out_dir: pathlib.Path, up_to: int, schedule: Schedule) -> list[dict]:
    """The evaluations of steps <= `up_to` as the TensorBoard summaries hold them: what a
    damaged metrics.json is rebuilt from. Each is marked "rebuilt_from": "tensorboard",
    and lacks what the summaries do not hold (its seconds, test images and K)."""
    scalars: dict[int, dict[str, float]] = {}
    for path in sorted((out_dir / "tensorboard").glob("events.out.tfevents.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    if value.tag.startswith("test/"):
                        tag = value.tag.removeprefix("test/")
                        scalars.setdefault(event.step, {})[tag] = float(
                            tf.make_ndarray(value.tensor)
                        )
        except tf.errors.OpError:  # a truncated events file: keep what was read
            continue
    evaluations = []
    for step in sorted(s for s in scalars if s <= up_to):
        tags = scalars[step]
        if not all(tag in tags for tag in _SUMMARIZED):
            continue
        per_latent = {
            tag.removeprefix("active_units/"): int(value)
            for tag, value in tags.items()
            if tag.startswith("active_units/")
        }
        evaluations.append(
            {
                "step": step,
                "epoch": round(step / schedule.steps_per_epoch, 4),
                **{tag: tags[tag] for tag in _SUMMARIZED[:-1]},
                "active_units": int(tags["active_units"]),
                "active_units_per_latent": per_latent or {"z": int(tags["active_units"])},
                "rebuilt_from": "tensorboard",
            }
        )
    return evaluations


def _summarize_evaluation(writer, step: int, result: dict) -> None:
    """An evaluation's results as TensorBoard scalars under test/."""
    per_latent = result["active_units_per_latent"]
    with writer.as_default(step=step):
        for key in ("iwae64", "log_px", "neg_kl", "ess_fraction", "active_units"):
            tf.summary.scalar(f"test/{key}", result[key])
        if len(per_latent) > 1:
            for name, count in per_latent.items():
                tf.summary.scalar(f"test/active_units/{name}", count)
    writer.flush()


def _lower_rate_advice(config: Config) -> str:
    rate, default = config.learning_rate, config.default_learning_rate
    return (
        f"Try a lower --learning_rate (this run: {rate:g}; the default: {default:g}), e.g. "
        f"--learning_rate={rate / 10:g}, in a new --out_dir: the run is deterministic, so "
        "rerunning this command would stop at the same step."
    )


def _non_finite_message(
    config: Config,
    step: int,
    values: dict[str, float],
    finite: bool,
    skipped: bool,
    last_saved: int,
) -> str:
    shown = ", ".join(f"{k} {v:g}" for k, v in values.items())
    if skipped and not finite:
        what = f"the loss or its gradients were not finite, and the update was skipped ({shown})"
    else:
        what = f"a training value is not finite ({shown})"
    saved = f"step {last_saved}" if last_saved else "none yet"
    return (
        f"training stopped at step {step}: {what}. Nothing was saved after it (the last "
        f"checkpoint: {saved}). {_lower_rate_advice(config)}"
    )


def _diverged_message(
    config: Config, step: int, bound: float, num_pixels: int, last_saved: int
) -> str:
    bits = -bound / math.log(2.0) / num_pixels
    saved = f"step {last_saved}" if last_saved else "none yet"
    return (
        f"training diverged at step {step}: its bound is {bound:.3g} nats per image, "
        f"{bits:.3g} bits per pixel where fair coin flips cost 1 (the limit is "
        f"{DIVERGED_BITS_PER_PIXEL}). Nothing was saved after it (the last checkpoint: "
        f"{saved}). {_lower_rate_advice(config)}"
    )
