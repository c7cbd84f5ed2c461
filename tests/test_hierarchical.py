"""Every objective's exact gradient for a hierarchical q, against a derivation by hand.

Two stochastic layers (tests/reference_hierarchical.py): p(z2) p(z1|z2) p(x|z1) and
q(z1|x) q(z2|z1), linear-Gaussian, written as a JointDistributionSequential and as a
JointDistributionNamed. For fixed noise, the library's loss, bound and gradients for
W, c (model) and A1, b1, A2, b2 (inference) must equal the NumPy derivation to 1e-6
relative in float64: eagerly for every case (Sequential; Named for one case per kind of
surrogate), and in tf.function and under XLA for one case per kind of surrogate (every
case and structure in the slow run). The path derivative there
keeps z1 live inside q(z2|z1): stopping q(z2|z1)'s mean instead fails these tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests import reference, reference_hierarchical
from tests.conftest import GRAPH_MODES, MODES, in_mode, mode_params
from tests.test_exact_gradients import CASES, ONE_PER_KIND

tfd = tfp.distributions

B, D, D2 = 3, 3, 2
S1, S2 = 0.8, 0.6
RTOL, ATOL = 1e-6, 1e-10


def _parameters(seed: int = 0):
    """W, c, A1, b1, A2, b2 and x, off the optimum so that the weights are uneven."""
    rng = np.random.default_rng(seed)
    W = 0.5 * rng.normal(size=(D, D2))
    c = 0.3 * rng.normal(size=D)
    A1 = 0.5 * np.eye(D) + 0.2 * rng.normal(size=(D, D))
    b1 = 0.3 * rng.normal(size=D)
    A2 = 0.4 * rng.normal(size=(D2, D))
    b2 = 0.3 * rng.normal(size=D2)
    x = 1.5 * rng.normal(size=(B, D))
    return (W, c, A1, b1, A2, b2), x


def _gaussian(loc, scale):
    return tfd.Independent(tfd.Normal(loc, tf.constant(scale, tf.float64)), 1)


def make_q(A1, b1, A2, b2, x, structure: str):
    """q(z1|x) q(z2|z1) as a JointDistributionSequential ([z1, z2]) or Named."""
    q_z1 = _gaussian(tf.linalg.matvec(A1, x) + b1, S1)

    def q_z2(z1):
        return _gaussian(tf.linalg.matvec(A2, z1) + b2, S2)

    if structure == "sequential":
        return tfd.JointDistributionSequential([q_z1, q_z2])
    return tfd.JointDistributionNamed({"z1": q_z1, "z2": q_z2})


def _leaves(z, structure: str):
    return (z[0], z[1]) if structure == "sequential" else (z["z1"], z["z2"])


def make_log_joint(W, c, x, structure: str):
    """log p(z2) + log p(z1|z2) + log p(x|z1), from z in q's structure."""

    def log_joint(z):
        z1, z2 = _leaves(z, structure)
        return (
            _gaussian(tf.zeros_like(z2), 1.0).log_prob(z2)
            + _gaussian(tf.linalg.matvec(W, z2) + c, 1.0).log_prob(z1)
            + _gaussian(z1, 1.0).log_prob(x)
        )

    return log_joint


def loss_and_grads(objective, params, x, seed, structure: str):
    params = [tf.convert_to_tensor(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        W, c, A1, b1, A2, b2 = params
        result = objective(
            make_q(A1, b1, A2, b2, x, structure), make_log_joint(W, c, x, structure), seed=seed
        )
    grads = result.gradients(tape, params[:2], params[2:])
    return result, grads.model + grads.inference


def _replayed_noise(objective, params, x, seed, structure: str):
    """eps1 [S, B, D], eps2 [S, B, D2] of the draw the objective made (sampling.sample)."""
    _, _, A1, b1, A2, b2 = params
    q = make_q(*(tf.constant(p) for p in (A1, b1, A2, b2)), tf.constant(x), structure)
    z1, z2 = (
        t.numpy() for t in _leaves(mco.sampling.sample(q, objective.num_samples, seed), structure)
    )
    eps1 = (z1 - (x @ A1.T + b1)) / S1
    eps2 = (z2 - (z1 @ A2.T + b2)) / S2
    return eps1, eps2


# Every objective runs eagerly for JointDistributionSequential; in tf.function and under
# XLA the default run keeps one case per kind of surrogate (ONE_PER_KIND: TOTAL, SPLIT
# with each coefficient form, SCORE), as the one-layer tests do. JointDistributionNamed
# runs the same code as Sequential (only the container differs): by default it runs the
# ONE_PER_KIND cases eagerly. Every other run is slow.


def _params():
    for case_id, objective, estimator, kwargs in CASES:
        for structure in ("sequential", "named"):
            if case_id in ONE_PER_KIND:
                slow = {"sequential": (), "named": GRAPH_MODES}[structure]
            else:
                slow = {"sequential": GRAPH_MODES, "named": MODES}[structure]
            for mode in mode_params(MODES, slow=slow):
                yield pytest.param(
                    objective,
                    estimator,
                    kwargs,
                    structure,
                    *mode.values,
                    id=f"{case_id}-{structure}-{mode.id}",
                    marks=mode.marks,
                )


@pytest.mark.parametrize(("objective", "estimator", "kwargs", "structure", "mode"), _params())
def test_hierarchical_loss_and_gradients_match_hand_derivation(
    objective, estimator, kwargs, structure, mode
):
    """Loss, bound and every parameter's gradient equal the two-layer NumPy derivation."""
    params, x = _parameters()
    seed = tf.constant([5, 9], tf.int32)

    def run(seed):
        return loss_and_grads(objective, params, tf.constant(x), seed, structure)

    result, grads = in_mode(run, mode)(seed)
    eps1, eps2 = _replayed_noise(objective, params, x, seed, structure)
    loss, expected, values = reference_hierarchical.batch_loss_and_grads(
        estimator, params, x, eps1, eps2, S1, S2, **kwargs
    )
    np.testing.assert_allclose(result.loss.numpy(), loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.bound.numpy(), values, rtol=RTOL, atol=ATOL)
    for name, got, want in zip(("W", "c", "A1", "b1", "A2", "b2"), grads, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_freezing_z1_inside_q_of_z2_would_change_the_path_derivative():
    """The test above can fail: DReG with q(z2|z1)'s mean stopped differs from the reference.

    Stopping the conditional's parameters (what a per-layer "stop mu and sigma"
    implementation does) drops d log q(z2|z1) / d z1 from the path derivative.
    """
    params, x = _parameters(1)
    seed = tf.constant([2, 3], tf.int32)
    objective = mco.DReG(6)
    _, grads = loss_and_grads(objective, params, tf.constant(x), seed, "sequential")

    W, c, A1, b1, A2, b2 = (tf.constant(p) for p in params)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch([A1, b1])
        q_z1 = _gaussian(tf.linalg.matvec(A1, xt) + b1, S1)
        frozen = tfd.JointDistributionSequential(
            [q_z1, lambda z1: _gaussian(tf.stop_gradient(tf.linalg.matvec(A2, z1)) + b2, S2)]
        )
        result = objective(frozen, make_log_joint(W, c, xt, "sequential"), seed=seed)
    frozen_b1 = tape.gradient(result.loss, b1)
    eps1, eps2 = _replayed_noise(objective, params, x, seed, "sequential")
    _, expected, _ = reference_hierarchical.batch_loss_and_grads(
        reference.dreg, params, x, eps1, eps2, S1, S2, alpha=0.0
    )
    np.testing.assert_allclose(grads[3].numpy(), expected[3], rtol=RTOL, atol=ATOL)
    gap = np.max(np.abs(frozen_b1.numpy() - expected[3]))
    print(f"max |d/db1| gap with z1 frozen inside q(z2|z1): {gap:.3g}")
    assert gap > 1e-3
