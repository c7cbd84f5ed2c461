"""benchmarks/throughput.py: a tiny run from its command line, and its hand-written IWAE step.

The run times two objectives (one of them DReG), the hand-written floor and TFP's DReG step at
batch 4 and K = 8, for two steps in one round, evaluates log p^(x) of two images with ten
samples and skips the peak-memory subprocesses; it checks that results.json holds every part
with positive, finite numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from tests.benchmark_cli import background_run, load_script

TINY = (
    "--batch_sizes=4",
    "--num_samples=8",
    "--objectives=iwae,dreg",
    "--jit=off",
    "--steps=2",
    "--rounds=1",
    "--warmup_steps=1",
    "--nodiagnostics",
    "--check_seeds=3",
    "--check_batch_size=2",
    "--matmul_size=64",
    "--eval_images=2",
    "--eval_num_samples=10",
    "--eval_chunk_size=5",
    "--eval_batch_size=2",
    "--nomemory",
)


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny run, started in the background: the in-process tests run meanwhile."""
    with background_run("throughput", TINY, tmp_path_factory.mktemp("throughput")) as started:
        yield started


@pytest.fixture(scope="module", autouse=True)
def _start_run(run):
    """Starts the run before the module's first test."""


@pytest.fixture(scope="module")
def results(run) -> dict:
    process, out_dir = run
    returncode = process.wait(timeout=300)
    assert returncode == 0, (out_dir / "stderr.txt").read_text()[-3000:]
    assert "targets:" in (out_dir / "stdout.txt").read_text()
    return json.loads((out_dir / "results.json").read_text())


def test_handwritten_iwae_matches_library_on_the_same_noise():
    harness, steps = load_script("_harness"), load_script("throughput_steps")
    x = tf.constant(np.random.default_rng(0).random((3, 784)) < 0.5, tf.float32)
    encoder, decoder = harness.burda_networks(x, seed=1)
    seed = tf.constant([3, 4], tf.int32)
    handwritten = steps.handwritten_iwae_loss(
        encoder, decoder, 16, noise=mco.sampling.standard_normal
    )(x, seed)
    log_joint = mco.make_log_joint(harness.prior(), decoder, x)
    library = mco.IWAE(16)(encoder(x), log_joint, seed=seed).loss
    np.testing.assert_allclose(handwritten.numpy(), library.numpy(), rtol=1e-5)


def test_every_registered_objective_is_timed_by_default():
    """The benchmark's objectives are every name of `mco.objective_names()` and the variants,
    each built by `mco.make_objective`, its gradient kind its declared gradient path."""
    benchmark = load_script("throughput")
    assert set(mco.objective_names()) <= set(benchmark.OBJECTIVES)
    assert {"ciwae_learnable", "dreg_rws", "jvi_dreg"} <= set(benchmark.OBJECTIVES)
    expected = {
        "miwae": "MIWAE(num_outer=8, num_inner=8)",
        "ciwae": "CIWAE(num_samples=64, beta=0.05, learnable_beta=False)",
        "ciwae_learnable": "CIWAE(num_samples=64, beta=0.05, learnable_beta=True)",
        "dreg": "DReG(num_samples=64, alpha=0.0)",
        "dreg_rws": "DReG(num_samples=64, alpha=1.0)",
        "jvi_dreg": "JVI(num_samples=64, dreg=True)",
    }
    for name in benchmark.OBJECTIVES:
        objective = benchmark.make_library_objective(name, 64, 8)
        assert objective.num_samples == 64
        assert objective.gradient_path.value in ("total", "split", "score")
        if name in expected:
            assert repr(objective) == expected[name]
        elif name in mco.objective_names():
            assert type(objective) is mco.registry.OBJECTIVES[name]


def test_step_gflop_counts_the_split_backward_pass():
    steps = load_script("throughput_steps")
    total = steps.step_gflop("total", 100, 64)
    split = steps.step_gflop("split", 100, 64)
    # Decoder forward at B K = 6400 rows: 2 * 6400 * (50*200 + 200*200 + 200*784) FLOPs.
    forward = 2 * 6400 * (50 * 200 + 200 * 200 + 200 * 784) / 1e9
    assert 3 * forward < total < 3 * forward + 0.2
    assert 4 * forward - 0.2 < split < 4 * forward + 0.2


def test_results_have_every_part(results):
    for key in (
        "config",
        "data",
        "machine",
        "throughput",
        "targets",
        "matmul_ceiling",
        "handwritten_check",
        "tfp_check",
        "log_marginal",
    ):
        assert key in results, key
    assert results["machine"]["cpu_count"] >= 1
    assert results["machine"]["tensorflow"] == tf.__version__
    assert results["config"]["num_samples"] == 8
    assert results["retraced_during_timing"] == []


def test_every_configuration_is_timed_with_ratios(results):
    rows = {r["key"]: r for r in results["throughput"]}
    assert set(rows) == {f"{n}/b4/tf" for n in ("handwritten", "tfp_dreg", "iwae", "dreg")}
    for row in rows.values():
        assert _positive_finite(row["steps_per_second"]["median"])
        assert _positive_finite(row["gflop_per_step"])
        assert _positive_finite(row["gflop_per_second"])
        assert _positive_finite(row["vs_handwritten"])
        assert _positive_finite(row["vs_iwae"])
    assert rows["handwritten/b4/tf"]["vs_handwritten"] == 1.0
    assert rows["dreg/b4/tf"]["objective"] == "DReG(num_samples=8, alpha=0.0)"
    assert rows["iwae/b4/tf"]["objective"] == "IWAE(num_samples=8)"
    assert rows["handwritten/b4/tf"]["objective"] is None
    assert rows["dreg/b4/tf"]["gradient_kind"] == "split"
    assert rows["iwae/b4/tf"]["gradient_kind"] == "total"
    assert set(rows["dreg/b4/tf"]["targets_met"]) == {"vs_handwritten", "vs_iwae", "vs_tfp"}
    assert _positive_finite(rows["dreg/b4/tf"]["vs_tfp"])
    # DReG runs a second backward pass through the decoder: more FLOPs than IWAE.
    assert rows["dreg/b4/tf"]["gflop_per_step"] > rows["iwae/b4/tf"]["gflop_per_step"]
    for ceiling in results["matmul_ceiling"].values():
        assert _positive_finite(ceiling["gflop_per_second"]["median"])


def test_checks_and_evaluation_are_finite(results):
    check = results["handwritten_check"]
    assert check["abs_loss_difference"] < 1e-3 * abs(check["library_loss"])
    assert check["max_abs_gradient_difference_over_max_abs_gradient"] < 1e-3
    tfp_check = results["tfp_check"]
    assert tfp_check["num_seeds"] == 3
    for part in ("loss", "encoder_gradient", "decoder_gradient"):
        assert math.isfinite(tfp_check[part]["mean_t_squared"])
        assert tfp_check[part]["count"] >= 1
    evaluation = results["log_marginal"]
    assert evaluation["images"] == 2 and evaluation["all_finite"]
    assert _positive_finite(evaluation["images_per_second"])
    assert evaluation["mean_log_px"] < 0
