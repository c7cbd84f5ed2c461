"""A run's checkpoints, and whether a rerun may resume the run stored in its out_dir.

* `select_checkpoint` finds the newest intact checkpoint: one that cannot be read in
  full, or holds non-finite values, is moved to `checkpoints/corrupt/` with a warning.
* `check_resume` compares the configuration stored in `<out_dir>/config.json` with the
  current one: a rerun may change only `config.RESUMABLE_FLAGS` (how long to train, how
  and how often to evaluate, log and checkpoint, and on what devices); otherwise it is
  refused, naming the flags that differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

import mcobjectives as mco

import rundir
from config import OBJECTIVE_FLAGS, RESUMABLE_FLAGS, Config, RunError, objective_parameters

CORRUPT_DIR = "corrupt"  # under checkpoints/: where unreadable checkpoints are moved


# ------------------------------------------------------------------------- checkpoints
def checkpoint_step(prefix: str | pathlib.Path) -> int:
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


def select_checkpoint(directory: pathlib.Path, warn: Callable[[str], None]) -> str | None:
    """The prefix of the newest intact checkpoint in `directory` (None if it has none).

    Candidates are the checkpoints of the state file and every `ckpt-N.index` present,
    newest (highest N) first. Those that fail `checkpoint_problem` are moved to
    checkpoints/corrupt/ with a warning (through `warn`); if any was, or if the state
    file did not list the intact ones, it is rewritten to list exactly them, so that the
    checkpoint manager rotates them out as usual.

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
    candidates = {checkpoint_step(p): str(p) for p in listed if pathlib.Path(f"{p}.index").exists()}
    for index in directory.glob("ckpt-*.index"):
        candidates.setdefault(checkpoint_step(index.with_suffix("")), str(index.with_suffix("")))
    intact, dropped = [], []
    for step in sorted(candidates, reverse=True):
        prefix = candidates[step]
        problem = checkpoint_problem(prefix)
        if problem is None:
            intact.append(prefix)
        else:
            corrupt = _quarantine(prefix)
            dropped.append(prefix)
            warn(
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


def all_finite(variables: list[tf.Variable]) -> bool:
    """Whether every floating-point variable holds finite values only."""
    return all(
        np.all(np.isfinite(v.numpy())) for v in variables if tf.as_dtype(v.dtype).is_floating
    )


# ---------------------------------------------------------------------------- resuming
def run_config(config: Config) -> dict[str, Any]:
    """What config.json stores of the run (with the data's source added once loaded)."""
    return {
        "task": config.task,
        "architecture": config.model_architecture,
        "flags": config.flag_values(),
    }


def stored_config(out_dir: pathlib.Path) -> dict | None:
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


def _has_checkpoints(out_dir: pathlib.Path) -> bool:
    return any((out_dir / "checkpoints").glob("ckpt-*.index"))


def check_resume(
    out_dir: pathlib.Path, config: Config, data_source: str | None = None
) -> dict | None:
    """Refuses to resume the run in `out_dir` with a configuration that defines another run.

    Compared: the task, and every flag outside `RESUMABLE_FLAGS` (an objective flag
    only if the objective takes it), and, once the data are loaded (`data_source`),
    where they came from. Returns the stored configuration (None if there is none).

    Raises:
      RunError: naming each flag that differs, its stored and its current value.
    """
    stored = stored_config(out_dir)
    if stored is None or not _has_checkpoints(out_dir):
        return stored  # nothing to resume: this run starts afresh
    task, architecture = config.task, config.model_architecture
    current = run_config(config)
    # An objective flag counts if both objectives take it (a differing objective is
    # reported as such; the flags that only one of them takes are moot).
    accepted = set(objective_parameters(config.objective))
    if stored["flags"].get("objective") in mco.objectives.OBJECTIVES:
        accepted &= set(objective_parameters(stored["flags"]["objective"]))
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
