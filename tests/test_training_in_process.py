"""The examples' training function, `examples/train.py`'s `run(config, ...)`, called in this
process with a tiny `Config`: no command line, no subprocess.

Every run trains on the bundled MNIST subset (loaded once, offline) with the model
builders of `examples/mnist.py`, under XLA (the default of `Config.jit_compile`). The
command line itself (flag parsing, exit statuses, a run killed and resumed, distribution
strategies) is tested from the shell by tests/test_examples.py, tests/test_cli_inputs.py
and tests/test_multi_worker.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from mcobjectives.experimental import mnist
from tests.conftest import latest_checkpoint_tensors

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import train  # noqa: E402  (examples/train.py)
from config import Config, FlagError, RunError  # noqa: E402  (examples/config.py)

# examples/mnist.py, the script, for its model builders and its architecture checks.
mnist_script = importlib.import_module("mnist")
assert pathlib.Path(mnist_script.__file__).parent == EXAMPLES, mnist_script.__file__

# 200 images of batch 20: 10-step epochs, the first stage ending at step 10.
TINY = Config(
    objective="iwae",
    num_samples=8,
    train_size=200,
    batch_size=20,
    max_steps=30,
    eval_every_epochs=1,
    eval_size=50,
    eval_batch_size=25,
    eval_num_samples=64,
    eval_chunk_size=32,
    log_every=1,
    checkpoint_every=10,
    download=False,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> mnist.MnistData:
    """The bundled subset: TFDS is pointed at an empty folder, without downloads."""
    empty = tmp_path_factory.mktemp("no_tfds")
    data = mnist.load_mnist("mnist", data_dir=str(empty), download=False, log=lambda _: None)
    assert data.source == mnist.BUNDLED_SOURCE
    return data


def _run(config: Config, data: mnist.MnistData) -> dict:
    return train.run(
        config,
        build_model=mnist_script.build_model,
        to_batch=mnist_script.to_batch,
        extra_problems=mnist_script.architecture_problems,
        data=data,
    )


def _checkpoint(out_dir: pathlib.Path) -> dict[str, np.ndarray]:
    return latest_checkpoint_tensors(out_dir / "checkpoints")


def _scalars(out_dir: pathlib.Path, tag: str) -> dict[int, float]:
    """The TensorBoard scalars of `tag`, by step."""
    values = {}
    for path in sorted((out_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def _without_seconds(metrics: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["evaluations"]]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """TINY trained in one go to step 30: its out_dir and the metrics `run` returned."""
    out_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    metrics = _run(dataclasses.replace(TINY, out_dir=str(out_dir)), data)
    return out_dir, metrics


def test_training_lowers_the_loss_and_writes_finite_metrics(uninterrupted):
    """The run trains (its loss falls, its test bound rises), evaluates at every epoch,
    and writes metrics.json, config.json, TensorBoard summaries and checkpoints."""
    out_dir, metrics = uninterrupted
    assert json.loads((out_dir / "metrics.json").read_text()) == metrics
    assert metrics["dataset"] == mnist.BUNDLED_SOURCE
    assert metrics["objective_description"] == "IWAE(num_samples=8)"
    assert metrics["config"]["jit_compile"] is True and metrics["config"]["max_steps"] == 30
    assert metrics["train"]["steps"] == 30 and math.isfinite(metrics["train"]["final_loss"])
    evaluations = metrics["evaluations"]
    assert [e["step"] for e in evaluations] == [10, 20, 30]
    for evaluation in evaluations:
        for key in ("iwae64", "log_px", "neg_kl", "ess_fraction"):
            assert math.isfinite(evaluation[key]), (key, evaluation)
        assert -400.0 < evaluation["iwae64"] < -50.0, evaluation
        assert 0.0 < evaluation["ess_fraction"] <= 1.0, evaluation
        assert 0 <= evaluation["active_units"] <= 50, evaluation
        assert evaluation["num_test_images"] == 50, evaluation
    assert evaluations[-1]["iwae64"] > evaluations[0]["iwae64"] + 1.0, evaluations

    losses = _scalars(out_dir, "train/loss")
    assert sorted(losses) == list(range(1, 31))
    first = np.mean([losses[step] for step in range(1, 6)])
    last = np.mean([losses[step] for step in range(26, 31)])
    print(f"training loss, steps 1-5: {first:.1f}, steps 26-30: {last:.1f}")
    assert last < first - 10.0
    assert losses[30] == pytest.approx(metrics["train"]["final_loss"], rel=1e-6)
    assert sorted(_scalars(out_dir, "test/iwae64")) == [10, 20, 30]

    stored = json.loads((out_dir / "config.json").read_text())
    assert stored["flags"]["seed"] == 0 and stored["data"] == mnist.BUNDLED_SOURCE
    assert "architecture" not in stored["flags"]  # a Config without --architecture
    assert sorted(p.name for p in (out_dir / "checkpoints").glob("*.index")) == [
        "ckpt-20.index",
        "ckpt-30.index",
    ]


def test_resume_continues_the_step_count_to_the_uninterrupted_weights(
    uninterrupted, data, tmp_path, capsys
):
    """Stopped at step 20 and run again to 30, a run resumes from its checkpoint and ends
    with exactly the weights and the evaluations of the uninterrupted run."""
    reference_dir, reference = uninterrupted
    config = dataclasses.replace(TINY, out_dir=str(tmp_path / "run"))
    first = _run(dataclasses.replace(config, max_steps=20), data)
    assert first["train"]["steps"] == 20
    capsys.readouterr()
    resumed = _run(config, data)
    assert "Resuming from step 20" in capsys.readouterr().out
    assert resumed["train"]["steps"] == 30
    assert _without_seconds(resumed) == _without_seconds(reference)
    assert resumed["train"]["final_loss"] == reference["train"]["final_loss"]
    tensors, expected = _checkpoint(tmp_path / "run"), _checkpoint(reference_dir)
    assert sorted(tensors) == sorted(expected)
    iterations = [name for name in expected if "iterations" in name]
    assert iterations and all(int(tensors[name]) == 30 for name in iterations)
    for name, value in expected.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)

    capsys.readouterr()
    again = _run(config, data)  # nothing left to do
    assert "Nothing to do: the run already reached step 30." in capsys.readouterr().out
    assert _without_seconds(again) == _without_seconds(reference)

    with pytest.raises(RunError, match="--seed: 0 in the run, 7 now"):
        _run(dataclasses.replace(config, seed=7), data)


@pytest.mark.parametrize(
    ("rate", "what"),
    [
        (1e3, "training diverged at step 2: its bound is"),
        (1e30, "training stopped at step 2: the loss or its gradients were not finite"),
    ],
)
def test_diverging_training_stops(rate, what, data, tmp_path):
    """The run stops at the first bad step, naming it and suggesting a lower learning
    rate; nothing is saved from it (learning rate 1e3: finite but huge bounds; 1e30:
    non-finite loss and gradients, so the step skips its update)."""
    out_dir = tmp_path / "run"
    config = dataclasses.replace(
        TINY, learning_rate=rate, max_steps=30, checkpoint_every=5, out_dir=str(out_dir)
    )
    with pytest.raises(RunError) as error:
        _run(config, data)
    message = str(error.value)
    assert what in message
    assert f"Try a lower --learning_rate (this run: {rate:g}; the default: 0.001)" in message
    assert "in a new --out_dir" in message
    assert not list((out_dir / "checkpoints").glob("ckpt-*"))
    assert not (out_dir / "metrics.json").exists()


def test_problems_are_reported_together_before_anything_is_written(data, tmp_path):
    """A Config built in code is checked as the command line is: every problem at once,
    each naming its flag, before the data or the out_dir are touched."""
    out_dir = tmp_path / "run"
    config = dataclasses.replace(
        TINY,
        objective="piwae",
        num_samples=10,
        num_outer=4,
        batch_size=0,
        dataset="fashion_mnist",
        out_dir=str(out_dir),
    )
    with pytest.raises(FlagError) as error:
        _run(config, data)
    assert error.value.problems == [
        "--dataset=fashion_mnist: must be one of mnist, binarized_mnist."
    ]
    with pytest.raises(FlagError) as error:
        _run(dataclasses.replace(config, dataset="mnist"), data)
    text = str(error.value)
    assert text.startswith("2 problems with the flags:"), text
    assert "--batch_size=0: must be at least 1" in text
    assert "--num_outer=4 must divide --num_samples=10 for piwae" in text
    with pytest.raises(FlagError, match="--train_size=6000 exceeds the 5000 training images"):
        _run(dataclasses.replace(TINY, train_size=6000, out_dir=str(out_dir)), data)
    assert not out_dir.exists()


# -------------------------------------------------------------------- the architectures
LATENT_UNITS = {"two_layer": {"z1": 100, "z2": 50}, "sbn": {"z1": 200, "z2": 200}}


@pytest.mark.parametrize(
    ("architecture", "objective"),
    [("two_layer", "dreg"), ("sbn", "rws"), pytest.param("sbn", "vimco", marks=pytest.mark.slow)],
)
def test_architectures_train_under_xla(architecture, objective, data, tmp_path):
    """The two-layer model (DReG) and the sigmoid belief net (RWS, VIMCO: discrete
    latents) train under XLA, evaluate, and record their architecture and the active
    units of each latent layer."""
    config = Config(
        objective=objective,
        architecture=architecture,
        max_steps=3,
        train_size=100,
        eval_size=20,
        eval_num_samples=64,
        log_every=1,
        download=False,
        out_dir=str(tmp_path / "run"),
    )
    metrics = _run(config, data)
    context = json.dumps(metrics, indent=1)
    assert metrics["architecture"] == architecture, context
    assert metrics["config"]["architecture"] == architecture, context
    assert metrics["config"]["jit_compile"] is True, context
    assert metrics["train"]["steps"] == 3 and math.isfinite(metrics["train"]["final_loss"])
    [last] = metrics["evaluations"]
    assert last["step"] == 3, context
    for key in ("iwae64", "log_px", "neg_kl", "ess_fraction"):
        assert math.isfinite(last[key]), (key, context)
    assert -800.0 < last["iwae64"] < -50.0, context
    assert last["neg_kl"] == pytest.approx(last["iwae64"] - last["log_px"], abs=1e-3)
    per_latent, units = last["active_units_per_latent"], LATENT_UNITS[architecture]
    assert sorted(per_latent) == sorted(units), context
    for leaf, count in per_latent.items():
        assert 0 <= count <= units[leaf], (leaf, context)
    assert last["active_units"] == sum(per_latent.values()), context
    assert last["num_test_images"] == 20, context
    print(f"{architecture}, {objective}: {json.dumps(last)}")


def test_sbn_with_a_reparameterized_objective_is_refused(data, tmp_path):
    """architecture sbn with objective iwae stops at the checks, naming both flags and
    the objectives that can train the SBN."""
    out_dir = tmp_path / "run"
    config = Config(objective="iwae", architecture="sbn", out_dir=str(out_dir))
    with pytest.raises(FlagError) as error:
        _run(config, data)
    [message] = error.value.problems
    assert "--architecture=sbn" in message and "--objective=iwae cannot train" in message
    assert "--objective=rws" in message and "--objective=vimco" in message
    assert not out_dir.exists()
