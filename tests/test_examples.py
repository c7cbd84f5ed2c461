"""The examples, each run from its command line with tiny flags, as a user would run them:
a smoke run of each script, the offline fallback, a run killed and resumed, and
MirroredStrategy against one device. (The training function itself, the architectures
and the flags' mapping to the objectives are tested in process:
tests/test_training_in_process.py and the last test here.)

Every run is a subprocess `python examples/<script> ...` from the repository root. The
runs several tests read (see `RUNS`) start together in the background when the module's
first test needs them, so that the machine's cores share out the work; each test then
waits for the runs it reads. A failing run prints its command and the tail of its output.

Runs reading MNIST from TensorFlow Datasets are skipped when TFDS_DATA_DIR (the folder
of prepared TFDS data; CI sets it) is unset or lacks the dataset; the others use the
bundled subset (an empty TFDS_DATA_DIR and --nodownload).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mcobjectives as mco
from tests.conftest import latest_checkpoint_tensors

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT = 600  # seconds for one run, counted from its start
POLL_SECONDS = 0.05

# Tiny runs: 40 steps of batch 20 on 1000 images, evaluated on 100 test images.
MAX_STEPS = 40
TINY = (
    f"--max_steps={MAX_STEPS}",
    "--log_every=10",
    "--checkpoint_every=20",
    "--eval_size=100",
    "--eval_num_samples=200",
    "--train_size=1000",
)
# The runs that are interrupted and resumed, and compared across distribution strategies:
# 300 images make 15-step epochs (and a stage end, so an evaluation, at step 15). A run
# killed once its ckpt-20.index exists resumes from step 20, in the middle of epoch 1, or
# from step 15 if the kill came before the checkpoint state file named ckpt-20; either
# way it crosses into epoch 2.
RESUME_FLAGS = (
    "--objective=ciwae",
    "--learnable_beta",
    "--beta=0.3",
    f"--max_steps={MAX_STEPS}",
    "--log_every=10",
    "--checkpoint_every=10",
    "--eval_size=100",
    "--eval_num_samples=200",
    "--train_size=300",
    "--nodownload",
)
KILL_AFTER = 20  # the checkpoint after which the interrupted run is killed


def _tfds_dir() -> pathlib.Path | None:
    data_dir = os.environ.get("TFDS_DATA_DIR")
    return pathlib.Path(data_dir) if data_dir else None


def _tfds_missing(dataset: str) -> str | None:
    """Why `dataset` cannot be read from TFDS_DATA_DIR, or None if it can."""
    data_dir = _tfds_dir()
    if data_dir is None:
        return "TFDS_DATA_DIR is not set"
    if not (data_dir / dataset).is_dir():
        return f"{dataset} is not in TFDS_DATA_DIR={data_dir}"
    return None


@dataclasses.dataclass(frozen=True)
class Spec:
    """An example run and what its metrics.json should say."""

    script: str
    flags: tuple[str, ...]
    tfds: str | None = None  # the TFDS dataset it reads; None: the bundled subset, offline
    task: str = "mnist"
    log_range: tuple[float, float] = (-550.0, -50.0)  # of iwae64 and log_px

    @property
    def dataset(self) -> str:
        return self.tfds or "mnist-bundled-subset"

    @property
    def objective(self) -> str:
        return [f.split("=", 1)[1] for f in self.flags if f.startswith("--objective=")][-1]

    def skip_reason(self) -> str | None:
        if not (EXAMPLES / self.script).exists():
            return f"examples/{self.script} does not exist yet"
        if self.objective not in mco.objective_names():
            return f"{self.objective} is not registered in mcobjectives.objectives yet"
        return _tfds_missing(self.tfds) if self.tfds else None


RUNS = {
    "dreg": Spec("mnist.py", ("--objective=dreg", "--dataset=mnist", *TINY), tfds="mnist"),
    "piwae": Spec(
        "mnist.py",
        (
            "--objective=piwae",
            "--num_outer=4",
            "--num_samples=16",
            "--jit_compile",
            "--dataset=binarized_mnist",
            *TINY,
        ),
        tfds="binarized_mnist",
    ),
    "structured": Spec(
        "structured_mnist.py",
        ("--objective=iwae", "--dataset=mnist", *TINY),
        tfds="mnist",
        task="structured_mnist",
        log_range=(-300.0, -10.0),  # log p(x|c) of the bottom half only
    ),
    # Read by the offline-fallback, the kill-and-resume and the distribution tests.
    "bundled": Spec("mnist.py", RESUME_FLAGS),
    "mirrored": Spec("mnist.py", (*RESUME_FLAGS, "--strategy=mirrored", "--num_cpu_devices=2")),
    "bad_flags": Spec(
        "mnist.py",
        ("--objective=miwae", "--num_samples=10", "--num_outer=4", "--nodownload", *TINY),
    ),
}


class Run:
    """One example run from its command line, in the background, its output in files."""

    def __init__(
        self, spec: Spec, out_dir: pathlib.Path, offline_tfds: pathlib.Path, label: str = ""
    ):
        self.spec = spec
        self.out_dir = out_dir
        self.command = [sys.executable, f"examples/{spec.script}", *spec.flags]
        self.command.append(f"--out_dir={out_dir}")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if spec.tfds is None:
            self.env["TFDS_DATA_DIR"] = str(offline_tfds)
        self.label = label or out_dir.name
        self._logs = {s: out_dir.parent / f"{self.label}.{s}" for s in ("stdout", "stderr")}
        self.process: subprocess.Popen | None = None
        self._started = 0.0
        self._t0 = 0.0  # the start, in wall-clock (file-time) seconds
        self._reported = False

    def start(self) -> Run:
        print(f"\nRunning: {' '.join(self.command)}")
        with (
            self._logs["stdout"].open("w") as stdout,
            self._logs["stderr"].open("w") as stderr,
        ):
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=stdout, stderr=stderr
            )
        self._started, self._t0 = time.monotonic(), time.time()
        return self

    def output(self, stream: str) -> str:
        path = self._logs[stream]
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        parts = [f"$ {' '.join(self.command)}  (exit {self.process.returncode})"]
        for stream in ("stdout", "stderr"):
            text = self.output(stream).replace("\r", "\n").splitlines()[-lines:]
            parts += [f"----- {stream} (last {lines} lines) -----", *text]
        return "\n".join(parts)

    def timed_out(self) -> bool:
        return time.monotonic() - self._started > TIMEOUT

    def wait(self) -> int:
        remaining = TIMEOUT - (time.monotonic() - self._started)
        try:
            returncode = self.process.wait(timeout=max(remaining, 1.0))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"timed out after {TIMEOUT} s\n{self.tail()}")
        if not self._reported:
            self._reported = True
            seconds = max(path.stat().st_mtime for path in self._logs.values()) - self._t0
            print(f"\n{self.label}: exit {returncode}, its last output {seconds:.0f} s in")
        return returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def check(self) -> dict:
        """Waits for a successful exit; returns metrics.json."""
        returncode = self.wait()
        if returncode < 0:
            how = f"was killed by {signal.Signals(-returncode).name} (not by this test)"
            pytest.fail(f"the run {how}:\n{self.tail()}")
        if returncode != 0:
            pytest.fail(f"the run failed:\n{self.tail()}")
        return json.loads((self.out_dir / "metrics.json").read_text())

    def last_checkpoint(self) -> dict:
        """The tensors of the run's latest checkpoint, by name (bookkeeping left out)."""
        return latest_checkpoint_tensors(self.out_dir / "checkpoints")


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The `RUNS` the selected tests of this module read, started at once, by name."""
    selected = set()
    for item in request.session.items:
        if item.module is request.module:
            selected.update(item.fixturenames)
            if hasattr(item, "callspec"):
                selected.update(str(v) for v in item.callspec.params.values())
    root = tmp_path_factory.mktemp("examples")
    offline_tfds = root / "empty_tfds_data_dir"
    offline_tfds.mkdir()
    started = {
        name: Run(spec, root / name, offline_tfds).start()
        for name, spec in RUNS.items()
        if name in selected and spec.skip_reason() is None
    }
    yield started
    for run in started.values():  # what a failed test left running
        run.kill()


@pytest.fixture(scope="module")
def bundled(runs) -> Run:
    return runs["bundled"]


@pytest.fixture(scope="module")
def mirrored(runs) -> Run:
    return runs["mirrored"]


@pytest.fixture(scope="module")
def bad_flags(runs) -> Run:
    return runs["bad_flags"]


def check_metrics(metrics: dict, spec: Spec, run: Run) -> None:
    """The sanity checks of a finished run's metrics.json and outputs."""
    context = json.dumps(metrics, indent=1)
    assert metrics["task"] == spec.task, context
    assert metrics["architecture"] == "one_layer", context
    assert metrics["dataset"] == spec.dataset, context
    objective = next(f for f in spec.flags if f.startswith("--objective="))
    assert metrics["objective"] == objective.split("=")[1], context
    assert metrics["train"]["steps"] == MAX_STEPS, context
    assert math.isfinite(metrics["train"]["final_loss"]), context
    assert metrics["evaluations"], context
    for evaluation in metrics["evaluations"]:
        for key in ("iwae64", "log_px", "neg_kl", "ess_fraction"):
            assert math.isfinite(evaluation[key]), (key, context)
    last = metrics["evaluations"][-1]
    assert last["step"] == MAX_STEPS, context
    low, high = spec.log_range
    assert low < last["iwae64"] < high, context
    assert low < last["log_px"] < high, context
    # log p^ with K = 200 samples is the tighter bound; allow Monte Carlo noise.
    assert last["log_px"] > last["iwae64"] - 1.0, context
    assert last["neg_kl"] <= 1.0, context
    assert last["neg_kl"] == pytest.approx(last["iwae64"] - last["log_px"], abs=1e-3)
    assert 0.0 < last["ess_fraction"] <= 1.0, context
    assert 0 <= last["active_units"] <= 50, context
    assert last["active_units_per_latent"] == {"z": last["active_units"]}, context
    assert last["num_test_images"] == 100, context
    assert (run.out_dir / "checkpoints" / f"ckpt-{MAX_STEPS}.index").exists()
    assert list((run.out_dir / "tensorboard").glob("events.out.tfevents.*"))
    # A PNG of model samples and reconstructions per evaluation (examples/pictures.py).
    for evaluation in metrics["evaluations"]:
        assert (run.out_dir / "pictures" / f"step-{evaluation['step']:07d}.png").exists()
    assert not list((run.out_dir / "pictures").glob("*.tmp"))


def _param(name: str):
    """A smoke-test parameter, skipped when its script or its TFDS data are missing."""
    reason = RUNS[name].skip_reason()
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


# Example processes run, killed and run again make this the longest check: the default
# run checks the same claim in process (tests/test_training_in_process.py,
# test_resume_continues_the_step_count_to_the_uninterrupted_weights).
@pytest.mark.slow
def test_kill_and_resume(bundled, tmp_path):
    """A run killed after a checkpoint and started again ends exactly as an uninterrupted one."""
    offline_tfds = pathlib.Path(bundled.env["TFDS_DATA_DIR"])
    interrupted = Run(bundled.spec, tmp_path / "run", offline_tfds, label="interrupted")
    interrupted.start()
    marker = interrupted.out_dir / "checkpoints" / f"ckpt-{KILL_AFTER}.index"
    while not marker.exists():
        if interrupted.process.poll() is not None:
            pytest.fail(
                f"the run ended before {marker.name} appeared, so nothing was interrupted:\n"
                f"{interrupted.tail()}"
            )
        if interrupted.timed_out():
            interrupted.kill()
            pytest.fail(f"no {marker.name} after {TIMEOUT} s\n{interrupted.tail()}")
        time.sleep(POLL_SECONDS)
    interrupted.process.send_signal(signal.SIGKILL)
    returncode = interrupted.process.wait()
    assert returncode == -signal.SIGKILL, (
        f"the run was not killed (exit {returncode}): it had already finished\n{interrupted.tail()}"
    )

    resumed = Run(bundled.spec, interrupted.out_dir, offline_tfds, label="resumed").start()
    resumed_metrics = resumed.check()
    match = re.search(r"Resuming from step (\d+)", resumed.output("stdout"))
    assert match, resumed.tail()
    resumed_from = int(match.group(1))
    print(f"killed after {marker.name}, resumed from step {resumed_from}")
    assert 0 < resumed_from < MAX_STEPS, resumed.tail()

    reference_metrics = bundled.check()
    resumed_tensors, reference_tensors = resumed.last_checkpoint(), bundled.last_checkpoint()
    names = sorted(reference_tensors)
    assert sorted(resumed_tensors) == names
    assert any("beta_logit" in name for name in names), names
    iterations = [name for name in names if "iterations" in name]
    assert iterations, names
    for name in iterations:
        assert int(resumed_tensors[name]) == MAX_STEPS, name
    for name in names:
        if isinstance(reference_tensors[name], bytes):
            assert resumed_tensors[name] == reference_tensors[name], name
        else:
            np.testing.assert_array_equal(resumed_tensors[name], reference_tensors[name], name)

    def without_seconds(metrics):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["evaluations"]]

    # The evaluation at step 15 comes from before the kill, the one at step 40 after it.
    assert [e["step"] for e in reference_metrics["evaluations"]] == [15, MAX_STEPS]
    assert without_seconds(resumed_metrics) == without_seconds(reference_metrics)
    assert resumed_metrics["train"]["final_loss"] == reference_metrics["train"]["final_loss"]


@pytest.mark.parametrize("name", [_param("dreg"), _param("piwae"), _param("structured")])
def test_smoke(name, runs):
    """Each example trains, evaluates, checkpoints and writes sane metrics."""
    run = runs[name]
    check_metrics(run.check(), run.spec, run)


def test_offline_fallback(bundled):
    """Without TFDS data or downloads, mnist.py says so loudly and uses the bundled subset."""
    metrics = bundled.check()
    output = bundled.output("stdout") + bundled.output("stderr")
    assert "BUNDLED SUBSET" in output, bundled.tail()
    assert "not comparable" in output.lower(), bundled.tail()
    check_metrics(metrics, bundled.spec, bundled)
    assert metrics["dataset"] == "mnist-bundled-subset"


# Slow: tests/test_keras_model.py checks in the default run that fit under
# MirroredStrategy gives one device's weights; this is the same through the CLI.
@pytest.mark.slow
def test_mirrored_strategy(bundled, mirrored):
    """Two CPU replicas under MirroredStrategy train the same model as a single device."""
    single, multi = bundled.check(), mirrored.check()
    check_metrics(multi, mirrored.spec, mirrored)
    assert multi["config"]["strategy"] == "mirrored"
    single_tensors, multi_tensors = bundled.last_checkpoint(), mirrored.last_checkpoint()
    assert sorted(multi_tensors) == sorted(single_tensors)
    max_diff = 0.0
    for name, expected in single_tensors.items():
        actual = multi_tensors[name]
        if isinstance(expected, bytes):
            assert actual == expected, name
        elif np.issubdtype(np.asarray(expected).dtype, np.floating):
            np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5, err_msg=name)
            max_diff = max(max_diff, float(np.max(np.abs(actual - expected), initial=0.0)))
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=name)
    loss_single, loss_multi = single["train"]["final_loss"], multi["train"]["final_loss"]
    print(
        f"mirrored vs single device: max |parameter difference| {max_diff:.3g}, "
        f"final loss {loss_multi!r} vs {loss_single!r}"
    )
    assert loss_multi == pytest.approx(loss_single, rel=1e-5)


def test_bad_flags(bad_flags):
    """--num_outer must divide --num_samples: the run stops with a message saying so."""
    returncode = bad_flags.wait()
    assert returncode != 0, bad_flags.tail()
    stderr = bad_flags.output("stderr")
    assert "--num_outer=4 must divide --num_samples=10" in stderr, bad_flags.tail()
    assert not (bad_flags.out_dir / "metrics.json").exists()


def test_objective_flags_map_to_make_objective(caplog):
    """The --objective choices are mco.objective_names(), and the objective flags become
    the keyword arguments of mco.make_objective for the objectives that take them."""
    cases = {
        "--objective=iwae --alpha=0.5": "IWAE(num_samples=64)",
        "--objective=dreg": "DReG(num_samples=64, alpha=0.0)",
        "--objective=dreg --alpha=1": "DReG(num_samples=64, alpha=1.0)",
        "--objective=piwae --num_samples=16 --num_outer=4": "PIWAE(num_outer=4, num_inner=4)",
        "--objective=ciwae": "CIWAE(num_samples=64, beta=0.05, learnable_beta=False)",
        "--objective=jvi --jvi_dreg --num_samples=8": "JVI(num_samples=8, dreg=True)",
    }
    if "vriwae" in mco.objective_names():
        cases["--objective=vriwae --alpha=0.3 --jvi_dreg"] = (
            "VRIWAE(num_samples=64, alpha=0.3, dreg=True)"
        )
    if "vimco" in mco.objective_names():
        cases["--objective=vimco --num_samples=8"] = "VIMCO(num_samples=8)"
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from absl import flags

    import cli  # examples/cli.py: defines the flags
    import config

    assert config.OBJECTIVES == mco.objective_names(), config.OBJECTIVES
    described = []
    try:
        for argv in cases:
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["mnist.py", *argv.split()])
            run_config = cli.config_from_flags(flags.FLAGS, task="mnist")
            with caplog.at_level(logging.WARNING):
                described.append(repr(config.make_objective(run_config)))
    finally:
        flags.FLAGS.unparse_flags()
    assert described == list(cases.values())
    assert "--objective=iwae ignores --alpha" in caplog.text, caplog.text
