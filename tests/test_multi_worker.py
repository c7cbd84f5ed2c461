"""`examples/mnist.py --strategy=multi_worker`: two worker processes on this machine.

Two workers (TF_CONFIG on 127.0.0.1, free ports) train a tiny run under
`tf.distribute.MultiWorkerMirroredStrategy`, and a single process trains the same run
with --strategy=default; both on the bundled MNIST subset, offline. Then all three
run again with a larger --max_steps: each resumes from its checkpoint (both workers
from the chief's, in the out_dir they share), and they are compared again.

Why the parameters agree. Every global batch carries one seed per image
(`mcobjectives.experimental.mnist.train_dataset`), and the model draws an image's
binarization and its samples z from that seed alone, whatever replica gets the image;
under a strategy the model folds the replica id only into the step seed it uses for
batches *without* per-example seeds, which these batches never are. Each worker builds every global
batch and keeps its half (the DATA auto-shard policy), computes the gradient of its
half's mean loss divided by the number of replicas, and the all-reduce sums the two:
the gradient of the global batch's mean loss. The single process computes that same
gradient in one go, so the two runs differ only in the order of floating-point sums,
which five Adam steps carry into the weights as differences of up to a few 1e-5 of
each tensor's scale (the runs train under XLA, the examples' default, whose fused
reductions sum in another order than the single process's; the largest relative
differences are in biases that started at zero and moved by five Adam steps alone).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import latest_checkpoint_tensors

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds for the three runs
STEPS = 5  # per phase: trained, then resumed
FLAGS = (
    "--nodownload",
    "--objective=ciwae",
    "--learnable_beta",
    "--beta=0.3",
    "--num_samples=8",
    "--train_size=200",
    "--batch_size=20",
    "--eval_size=20",
    "--eval_num_samples=64",
    "--log_every=1",
    "--checkpoint_every=5",
)
# Tolerances relative to each tensor's largest magnitude: the weights', and the Adam
# moments' (statistics of the gradients, the second one of their squares).
RTOL = {"weights": 1e-4, "optimizer": 1e-4}

pytestmark = pytest.mark.slow


def _free_ports(count: int) -> list[int]:
    """Ports free now (bound then released together, so they differ from each other)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start(args, out_dir: pathlib.Path, log: pathlib.Path, env: dict) -> subprocess.Popen:
    command = [sys.executable, "examples/mnist.py", *args, f"--out_dir={out_dir}"]
    with log.open("w") as output:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)


def _tail(log: pathlib.Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return f"----- {log.name} -----\n" + "\n".join(text.splitlines()[-lines:])


def _checkpoint(out_dir: pathlib.Path) -> dict:
    return latest_checkpoint_tensors(out_dir / "checkpoints")


def _train_all(tmp_path: pathlib.Path, steps: int, phase: str) -> dict[str, str]:
    """Two workers and one single process train to `steps` (resuming if they can);
    returns each one's output by name."""
    offline = tmp_path / "empty_tfds"
    offline.mkdir(exist_ok=True)
    env = {**os.environ, "TFDS_DATA_DIR": str(offline), "PYTHONUNBUFFERED": "1"}
    env.pop("TF_CONFIG", None)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    flags = (*FLAGS, f"--max_steps={steps}")
    worker_tmp = tmp_path / "worker_tmp"  # where the non-chief worker saves
    worker_tmp.mkdir(exist_ok=True)
    runs = {}
    for index in range(2):
        task = {"type": "worker", "index": index}
        worker_env = {
            **env,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": task}),
            "TMPDIR": str(worker_tmp),
        }
        log = tmp_path / f"{phase}_worker{index}.log"
        process = _start(
            (*flags, "--strategy=multi_worker"), tmp_path / "multi_worker", log, worker_env
        )
        runs[f"worker{index}"] = (process, log)
    log = tmp_path / f"{phase}_single.log"
    runs["single"] = (_start((*flags, "--strategy=default"), tmp_path / "single", log, env), log)

    deadline = time.monotonic() + TIMEOUT
    try:
        for name, (process, log) in runs.items():
            try:
                returncode = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish in {TIMEOUT} s\n" + _tail(log))
            assert returncode == 0, f"{name} failed (exit {returncode})\n" + "\n".join(
                _tail(log) for _, log in runs.values()
            )
    finally:
        for process, _ in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    # Only the chief wrote to out_dir; the other worker's temporary folder is gone.
    assert not list(worker_tmp.glob("mnist_worker*"))
    return {name: log.read_text() for name, (_, log) in runs.items()}


def _compare(tmp_path: pathlib.Path, steps: int) -> None:
    """The two workers' checkpoint against the single process's, and their metrics."""
    shared, single = tmp_path / "multi_worker", tmp_path / "single"
    multi, reference = _checkpoint(shared), _checkpoint(single)
    assert sorted(multi) == sorted(reference)
    assert any("beta_logit" in name for name in reference), sorted(reference)
    worst = {"weights": 0.0, "optimizer": 0.0}
    for name, expected in reference.items():
        actual = multi[name]
        floating = np.issubdtype(np.asarray(expected).dtype, np.floating)
        if isinstance(expected, bytes) or not floating:
            np.testing.assert_array_equal(actual, expected, err_msg=name)
            continue
        # Relative to the tensor's scale: an entry near zero (an Adam moment of a unit
        # that barely moved) carries the absolute rounding of sums over its neighbours.
        scale = float(np.max(np.abs(expected), initial=0.0))
        difference = float(np.max(np.abs(actual - expected), initial=0.0))
        kind = "optimizer" if name.startswith("optimizer/") else "weights"
        assert difference <= RTOL[kind] * scale, (name, difference, scale)
        worst[kind] = max(worst[kind], difference / scale if scale else 0.0)
    print(
        f"step {steps}, multi-worker vs single process, max |difference| / tensor scale: "
        f"weights {worst['weights']:.3g}, optimizer moments {worst['optimizer']:.3g}"
    )
    metrics = json.loads((shared / "metrics.json").read_text())
    single_metrics = json.loads((single / "metrics.json").read_text())
    assert metrics["config"]["strategy"] == "multi_worker"
    assert metrics["train"]["steps"] == steps
    assert metrics["train"]["final_loss"] == pytest.approx(
        single_metrics["train"]["final_loss"], rel=1e-5
    )


def test_two_workers_train_the_single_process_model(tmp_path):
    """Two workers end with the parameters of one process on the same global batches,
    and, both resuming from their checkpoints, again after more steps."""
    outputs = _train_all(tmp_path, STEPS, "first")
    assert "2 workers" in outputs["worker0"], outputs["worker0"]
    assert f"step {STEPS}/{STEPS}" not in outputs["worker1"]  # the chief alone reports
    checkpoints = tmp_path / "multi_worker" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "checkpoint",
        f"ckpt-{STEPS}.data-00000-of-00001",
        f"ckpt-{STEPS}.index",
    ]
    _compare(tmp_path, STEPS)

    # Every worker restores the chief's checkpoint from the shared out_dir.
    outputs = _train_all(tmp_path, 2 * STEPS, "resumed")
    assert f"Resuming from step {STEPS}" in outputs["worker0"], outputs["worker0"]
    assert f"Resuming from step {STEPS}" in outputs["single"], outputs["single"]
    _compare(tmp_path, 2 * STEPS)
