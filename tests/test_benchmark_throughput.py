"""benchmarks/throughput.py: a tiny run from its command line, its steps, and its peers.

The run times IWAE and DReG, the hand-written floor and TFP's DReG step at batch 4 and K = 8,
the IWAE scaling at K = 2 and 8 (ours and the hand-written step), the JAX and PyTorch peers
(each in its own process, when installed; else each is skipped with a note), the matmul
ceilings and log_marginal_estimate, one step and one round each, and measures the peak
memory of our IWAE step and the peers'. It checks that results.json holds every part with
positive, finite numbers. The peers' losses are checked against the hand-written TensorFlow
step on the same weights and noise, and a peer whose framework cannot be imported is checked
to say so and exit cleanly.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from tests.benchmark_cli import BENCHMARKS, background_run, load_script

TINY = (
    "--batch_sizes=4",
    "--num_samples=8",
    "--ks=2,8",
    "--objectives=iwae,dreg",
    "--jit=off",
    "--rounds=1",
    "--warmup_steps=1",
    "--round_gflop=0.001",
    "--check_seeds=3",
    "--check_batch_size=2",
    "--eval_num_samples=10",
    "--eval_chunk_size=5",
    "--eval_batch_size=2",
    "--memory_names=iwae",
)


def _importable(*modules: str) -> bool:
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        return False
    return True


INSTALLED = {"jax": _importable("jax", "optax"), "torch": _importable("torch")}


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
    returncode = process.wait(timeout=900)  # torch.compile takes minutes on 2 busy cores
    assert returncode == 0, (out_dir / "stderr.txt").read_text()[-3000:]
    assert "targets:" in (out_dir / "stdout.txt").read_text()
    return json.loads((out_dir / "results.json").read_text())


@pytest.fixture
def hidden_peers(tmp_path) -> dict:
    """An environment in which `import jax` and `import torch` fail, as when not installed."""
    for name in ("jax", "torch"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('No module named {name}')")
    return {"PYTHONPATH": str(tmp_path)}


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


def test_every_registered_objective_for_a_gaussian_q_is_timed_by_default():
    """The benchmark's objectives are every name of `mco.objective_names()` whose class
    takes the model's Gaussian q (not DisARM, whose `leaf_families` is Bernoulli) and the
    variants, each built by `mco.make_objective`, its gradient kind its declared path."""
    benchmark = load_script("throughput")
    registry = mco.objectives.OBJECTIVES
    gaussian = {n for n in mco.objective_names() if not hasattr(registry[n], "leaf_families")}
    assert "disarm" not in gaussian and {"iwae", "tvo", "ovis"} <= gaussian
    assert gaussian == set(benchmark.OBJECTIVES) & set(mco.objective_names())
    variants = {"ciwae_learnable", "dreg_rws", "dreg_alpha", "jvi_dreg", "vriwae_dreg"}
    assert variants <= set(benchmark.OBJECTIVES)
    expected = {
        "miwae": "MIWAE(num_outer=8, num_inner=8)",
        "ciwae": "CIWAE(num_samples=64, beta=0.05, learnable_beta=False)",
        "dreg": "DReG(num_samples=64, alpha=0.0)",
        "dreg_rws": "DReG(num_samples=64, alpha=1.0)",
        "dreg_alpha": "DReG(num_samples=64, alpha=0.5)",
        "jvi_dreg": "JVI(num_samples=64, dreg=True)",
    }
    for name in benchmark.OBJECTIVES:
        objective = benchmark.make_library_objective(name, 64, 8)
        assert objective.num_samples == 64
        assert objective.gradient_path.value in ("total", "split", "score")
        if name in expected:
            assert repr(objective) == expected[name]
        elif name in mco.objective_names():
            assert type(objective) is mco.objectives.OBJECTIVES[name]


def test_step_gflop_counts_the_split_backward_pass():
    steps = load_script("throughput_steps")
    total = steps.step_gflop("total", 100, 64)
    split = steps.step_gflop("split", 100, 64)
    # Decoder forward at B K = 6400 rows: 2 * 6400 * (50*200 + 200*200 + 200*784) FLOPs.
    forward = 2 * 6400 * (50 * 200 + 200 * 200 + 200 * 784) / 1e9
    assert 3 * forward < total < 3 * forward + 0.2
    assert 4 * forward - 0.2 < split < 4 * forward + 0.2
    assert steps.matmul_gflop(6400) == pytest.approx(2 * 6400 * 200 * 784 / 1e9)


def test_a_missing_peer_framework_is_skipped_with_a_note(hidden_peers):
    """Each peer script, when its framework cannot be imported, says why and exits with 0;
    the parent's `Peer` then has no configurations and keeps the note."""
    peers = load_script("_peers")
    for name, script in peers.SCRIPTS.items():
        command = [sys.executable, str(BENCHMARKS / "peers" / script)]
        env = os.environ | hidden_peers
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        message = json.loads(out.stdout.strip().splitlines()[-1][len(peers.PREFIX) :])
        assert message["skipped"].startswith(f"{name} skipped: No module named {name}")
        assert "[peers]" in message["skipped"]
        peer = peers.Peer(name, [], env=hidden_peers)
        assert peer.wait_ready(120) is None
        assert "skipped" in peer.note and peer.finish() == {}


def test_targets_without_the_jax_peer_are_not_evaluated():
    report = load_script("throughput_report")
    row = {"name": "iwae", "framework": "mcobjectives", "num_samples": 8, "batch_size": 4}
    row |= {"mode": "tf", "key": "iwae/k8/b4/tf", "milliseconds_per_step": {"median": 2.0}}
    row |= {"vs_jax_iwae": None, "percent_of_ceiling": 50.0, "vs_handwritten": 1.0}
    targets = report.targets([row], 8, [4], {"iwae"})
    assert targets["checks"]["iwae_vs_jax"][0]["met"] is None
    assert targets["checks"]["iwae_percent_of_ceiling"][0]["met"] is False
    assert targets["checks"]["iwae_vs_handwritten"][0]["met"] is True
    assert not targets["all_met"] and targets["not_evaluated"] == ["iwae/k8/b4/tf iwae_vs_jax"]


@pytest.mark.parametrize("peer", ["jax", "torch"])
def test_peer_losses_are_the_handwritten_step_on_the_same_weights_and_noise(peer):
    """The peer's IWAE loss equals the hand-written TF loss on the library layers' weights and
    the same noise; its DReG gradients equal those of the two-surrogate DReG estimator."""
    if not INSTALLED[peer]:
        pytest.skip(f"{peer} is not installed (the [peers] extra)")
    harness, steps = load_script("_harness"), load_script("throughput_steps")
    module = _load_peer(peer)
    x = (np.random.default_rng(0).random((3, 784)) < 0.5).astype(np.float32)
    encoder, decoder = harness.burda_networks(tf.constant(x), seed=1)
    layers = [*encoder.net.hidden, encoder.net.output_layer]
    layers += [*decoder.net.hidden, decoder.net.output_layer]
    weights = [(layer.kernel.numpy(), layer.bias.numpy()) for layer in layers]
    eps = np.random.default_rng(1).standard_normal((16, 3, 50)).astype(np.float32)
    expected = steps.handwritten_iwae_loss(encoder, decoder, 16, noise=lambda *_: eps)(x, 0)
    loss, dreg = (_jax_losses if peer == "jax" else _torch_losses)(module, weights, x, eps)
    np.testing.assert_allclose(loss, expected.numpy(), rtol=1e-5)
    # DReG: the decoder's gradient is IWAE's; the encoder's the path term with w~^2, checked
    # against the estimator's two surrogates (Tucker et al., eq. 6) written out in TF.
    reference = _dreg_reference(weights, x, eps)
    for got, want in zip(dreg, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * np.abs(want).max())


def _load_peer(peer: str):
    """benchmarks/peers/<peer>_step.py as a module (it imports `_peers`, beside throughput.py)."""
    load_script("_peers")  # puts benchmarks/ on sys.path
    path = BENCHMARKS / "peers" / f"{peer}_step.py"
    spec = importlib.util.spec_from_file_location(f"{peer}_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jax_losses(module, weights, x, eps):
    params = {"encoder": weights[:3], "decoder": weights[3:]}
    loss = float(module.iwae_loss(params, x, eps))
    _, grads = module.dreg_loss_and_gradients(params, x, eps)
    return loss, [np.asarray(g) for layer in grads["encoder"] + grads["decoder"] for g in layer]


def _torch_losses(module, weights, x, eps):
    import torch

    encoder, decoder = module.mlp(module.ENCODER), module.mlp(module.DECODER)
    linears = [m for m in [*encoder, *decoder] if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for linear, (kernel, bias) in zip(linears, weights, strict=True):
            linear.weight.copy_(torch.from_numpy(kernel.T))
            linear.bias.copy_(torch.from_numpy(bias))
    randn, noise = torch.randn, torch.from_numpy(eps)
    torch.randn = lambda *shape, **kwargs: noise  # the losses draw their noise with it
    try:
        loss = float(module.iwae_loss(encoder, decoder, torch.from_numpy(x), 16).detach())
        module.dreg_loss(encoder, decoder, torch.from_numpy(x), 16).backward()
    finally:
        torch.randn = randn
    return loss, [g for m in linears for g in (m.weight.grad.numpy().T, m.bias.grad.numpy())]


def _dreg_reference(weights, x, eps) -> list[np.ndarray]:
    variables = [tf.Variable(w) for layer in weights for w in layer]
    pairs = list(zip(variables[::2], variables[1::2], strict=True))

    def mlp(h, layers):
        for i, (kernel, bias) in enumerate(layers):
            h = tf.matmul(h, kernel) + bias
            h = tf.tanh(h) if i < len(layers) - 1 else h
        return h

    def log_w(z, loc, scale, decoder):
        logits = mlp(z, decoder)
        log_q = tf.reduce_sum(-0.5 * tf.square((z - loc) / scale) - tf.math.log(scale), -1)
        log_p = tf.reduce_sum(x * logits - tf.nn.softplus(logits), -1)
        return log_p + tf.reduce_sum(-0.5 * tf.square(z), -1) - log_q

    with tf.GradientTape() as tape:
        loc, raw = tf.split(mlp(x, pairs[:3]), 2, axis=-1)
        scale = tf.nn.softplus(raw) + 1e-4
        z = loc + scale * eps
        loc, scale = tf.stop_gradient(loc), tf.stop_gradient(scale)
        stopped = [(tf.stop_gradient(k), tf.stop_gradient(b)) for k, b in pairs[3:]]
        encoder_log_w = log_w(z, loc, scale, stopped)
        w = tf.stop_gradient(tf.nn.softmax(encoder_log_w, axis=0))
        decoder_log_w = log_w(tf.stop_gradient(z), loc, scale, pairs[3:])
        surrogate = -tf.reduce_mean(tf.reduce_sum(tf.square(w) * encoder_log_w, 0))
        surrogate -= tf.reduce_mean(tf.reduce_logsumexp(decoder_log_w, 0))
    return [g.numpy() for g in tape.gradient(surrogate, variables)]


def test_results_have_every_part(results):
    for key in (
        "config", "data", "machine", "estimate_seconds", "steps", "targets", "matmul_ceiling",
        "scaling", "log_marginal", "handwritten_check", "tfp_check", "peers", "memory",
    ):  # fmt: skip
        assert key in results, key
    assert results["machine"]["tensorflow"] == tf.__version__
    assert results["config"]["num_samples"] == 8
    assert results["retraced_during_timing"] == []
    assert _positive_finite(results["estimate_seconds"]["total"])


def test_every_configuration_is_timed_with_ratios(results):
    rows = {r["key"]: r for r in results["steps"]}
    ours = {f"{n}/k8/b4/tf" for n in ("handwritten", "tfp_dreg", "iwae", "dreg")}
    assert ours | {"iwae/k2/b4/tf"} <= set(rows)
    for row in rows.values():
        assert _positive_finite(row["milliseconds_per_step"]["median"])
        assert _positive_finite(row["gflop_per_step"])
        assert _positive_finite(row["percent_of_ceiling"])
    for key in ours:
        assert _positive_finite(rows[key]["vs_iwae"]) and _positive_finite(
            rows[key]["vs_handwritten"]
        )
    assert rows["handwritten/k8/b4/tf"]["vs_handwritten"] == 1.0
    assert rows["dreg/k8/b4/tf"]["objective"] == "DReG(num_samples=8, alpha=0.0)"
    assert rows["dreg/k8/b4/tf"]["gradient_kind"] == "split"
    # DReG runs a second backward pass through the decoder: more FLOPs than IWAE.
    assert rows["dreg/k8/b4/tf"]["gflop_per_step"] > rows["iwae/k8/b4/tf"]["gflop_per_step"]
    for by_framework in results["matmul_ceiling"].values():
        assert _positive_finite(by_framework["tensorflow"]["median"])
    scaled = {(c["implementation"], c["num_samples"]) for c in results["scaling"]}
    assert {(impl, k) for impl in ("ours_best", "handwritten_best") for k in (2, 8)} <= scaled
    checks = results["targets"]["checks"]
    assert {c["config"] for c in checks["vs_iwae"]} == {"dreg/k8/b4/tf"}
    assert _positive_finite(checks["iwae_vs_handwritten"][0]["value"])


def test_the_peers_are_timed_or_skipped_with_a_note(results):
    peers, rows = load_script("_peers"), {r["key"]: r for r in results["steps"]}
    for name, installed in INSTALLED.items():
        planned = {peers.step_key(*c) for c in peers.planned_steps(name, [2, 8], 8, [4])}
        note = results["peers"][name]["note"]
        if not installed:
            assert note.startswith(f"{name} skipped") and note in results["peer_notes"]
            assert not planned & set(rows)
            continue
        assert note is None and planned <= set(rows), (note, planned - set(rows))
        for key in planned:
            assert _positive_finite(rows[key]["percent_of_ceiling"])
            assert _positive_finite(rows[key]["vs_jax_iwae"]) or not INSTALLED["jax"]
        assert _positive_finite(results["peers"][name]["peak_rss_mb"])
        assert _positive_finite(results["matmul_ceiling"]["32"][name]["median"])
        memory = results["memory"][f"{name}_iwae/k8/b4/{peers.MODES[name][0]}"]
        assert _positive_finite(memory["peak_rss_mb"])
    check = results["targets"]["checks"]["iwae_vs_jax"][0]
    assert (check["met"] is None) is (not INSTALLED["jax"])


def test_checks_memory_and_evaluation_are_finite(results):
    check = results["handwritten_check"]
    assert check["abs_loss_difference"] < 1e-3 * abs(check["library_loss"])
    assert check["max_abs_gradient_difference_over_max_abs_gradient"] < 1e-3
    tfp_check = results["tfp_check"]
    assert tfp_check["num_seeds"] == 3
    for part in ("loss", "encoder_gradient", "decoder_gradient"):
        assert math.isfinite(tfp_check[part]["mean_t_squared"])
    memory = results["memory"]["iwae/k8/b4/tf"]
    assert _positive_finite(memory["peak_rss_mb"])
    # What the process holds once the heap is trimmed is at most the peaks above it (None
    # where the C library cannot trim its heap).
    if memory["held_mb"] is not None:
        assert math.isfinite(memory["held_anon_mb"] + memory["held_file_mb"])
        assert memory["held_mb"] <= memory["first_call_mb"] + memory["step_mb"] + 1.0
    (evaluation,) = results["log_marginal"]
    assert evaluation["images"] == 2 and evaluation["all_finite"]
    assert evaluation["mean_log_px"] < 0
    assert _positive_finite(evaluation["ratio_to_floor"])
    assert _positive_finite(evaluation["matmul_floor_milliseconds"])
