"""The SPLIT path's one backward pass through the model.

A SPLIT objective differentiates log p(x, z) once: the gradient reaching each z_k is
rescaled by path_k / model_k. A model coefficient too small to carry its path
coefficient (a sample with model_k = 0 but path_k > 0, as PIWAE's far-off groups or a
custom objective give) is raised to 2^-60 to carry it. Both are compared with the hand
derivation of tests/reference.py on the toy Gaussian, with log weights spread over
hundreds of nats so that many coefficients underflow.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from mcobjectives.core import surrogate
from mcobjectives.weights import log_mean_exp, normalized_weights
from tests import reference, toy
from tests.conftest import in_mode
from tests.test_exact_gradients import _parameters

RTOL, ATOL = 1e-6, 1e-10
WIDE_SIGMA = 12.0  # q far broader than the posterior: log weights spread over ~100s of nats


class _HalfModelSTL(mco.MCObjective):
    """STL's path coefficients with the model coefficients of odd samples set to 0."""

    gradient_path = mco.GradientPath.SPLIT

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        normalized = normalized_weights(log_weights)
        even = tf.cast(tf.range(self.num_samples) % 2 == 0, log_weights.dtype)[:, None]
        return mco.Coefficients(model=normalized * even, path=normalized, score=None)


def _half_model_stl(p):
    w = reference._softmax(p.log_w)
    even = (np.arange(len(w)) % 2 == 0).astype(float)
    return p.out(reference._lme(p.log_w), (w * even) @ p.dmu, w @ p.path)


def _check(objective, estimator, kwargs, sigma, mode):
    mu, A, b, x = _parameters()
    seed = tf.constant([3, 5], tf.int32)

    def run(seed):
        return toy.loss_and_grads(objective, mu, A, b, tf.constant(x), seed, sigma=sigma)

    result, d_mu, d_A, d_b = in_mode(run, mode)(seed)
    q = toy.make_q(tf.constant(A), tf.constant(b), tf.constant(x), sigma=sigma)
    z = mco.sampling.sample(q, objective.num_samples, seed).numpy()
    eps = (z - (x @ A.T + b)) / sigma
    loss, r_mu, r_A, r_b, _ = reference.batch_loss_and_grads(
        estimator, mu, A, b, x, eps, sigma, **kwargs
    )
    np.testing.assert_allclose(result.loss.numpy(), loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_mu.numpy(), r_mu, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_A.numpy(), r_A, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_b.numpy(), r_b, rtol=RTOL, atol=ATOL)
    return result


def _raised_carriers(objective, sigma) -> int:
    """How many samples' model coefficients are raised to carry their path coefficient."""
    mu, A, b, x = _parameters()
    seed = tf.constant([3, 5], tf.int32)
    q = toy.make_q(tf.constant(A), tf.constant(b), tf.constant(x), sigma=sigma)
    z = mco.sampling.sample(q, objective.num_samples, seed)
    log_w = toy.make_log_joint(tf.constant(mu), tf.constant(x))(z) - q.log_prob(z)
    c = objective._coefficients(log_w)
    carrier, _ = surrogate.carrier_and_ratio(c.model, c.path)
    return int(tf.reduce_sum(tf.cast(carrier != c.model, tf.int32)))


RAISED_CASES = [
    ("half-model-stl-6", _HalfModelSTL(6), _half_model_stl, {}),
    ("piwae-2x1", mco.PIWAE(2, 1), reference.piwae, {"num_outer": 2, "num_inner": 1}),
    ("piwae-4x2", mco.PIWAE(4, 2), reference.piwae, {"num_outer": 4, "num_inner": 2}),
]


@pytest.mark.parametrize(
    ("objective", "estimator", "kwargs"),
    [case[1:] for case in RAISED_CASES],
    ids=[case[0] for case in RAISED_CASES],
)
def test_a_model_coefficient_of_zero_still_carries_its_path_coefficient(
    objective, estimator, kwargs, mode
):
    """Samples with model_k ~ 0 and path_k > 0: exact, their carrier raised to 2^-60."""
    assert _raised_carriers(objective, WIDE_SIGMA) > 0, "the case must raise a carrier"
    _check(objective, estimator, kwargs, WIDE_SIGMA, mode)


ONE_PASS_CASES = [
    ("stl-9", mco.STL(9), reference.stl, {}),
    ("dreg-9-0", mco.DReG(9), reference.dreg, {"alpha": 0.0}),
    ("dreg-9-0.3", mco.DReG(9, alpha=0.3), reference.dreg, {"alpha": 0.3}),
    ("jvi-dreg-6", mco.JVI(6, dreg=True), reference.jvi, {"use_dreg": True}),
    (
        "vriwae-dreg-7-0.3",
        mco.VRIWAE(7, alpha=0.3, dreg=True),
        reference.vriwae,
        {"alpha": 0.3, "use_dreg": True},
    ),
]


@pytest.mark.parametrize(
    ("objective", "estimator", "kwargs"),
    [case[1:] for case in ONE_PASS_CASES],
    ids=[case[0] for case in ONE_PASS_CASES],
)
def test_dreg_family_is_exact_when_weights_underflow(objective, estimator, kwargs, mode):
    """Log weights hundreds of nats apart: coefficients underflow, the result is exact."""
    _check(objective, estimator, kwargs, WIDE_SIGMA, mode)


@pytest.mark.parametrize(
    "objective",
    [mco.DReG(8), mco.STL(8), mco.PIWAE(2, 4), _HalfModelSTL(8)],
    ids=["dreg", "stl", "piwae", "half-model-stl"],
)
def test_the_model_is_evaluated_once_per_step(objective):
    """Counted eagerly: log p is called once; its gradient is one backward pass."""
    mu, A, b, x = _parameters()
    q = toy.make_q(tf.constant(A), tf.constant(b), tf.constant(x))
    inner = toy.make_log_joint(tf.constant(mu), tf.constant(x))
    count = []

    def log_joint(z):
        count.append(1)
        return inner(z)

    objective(q, log_joint, seed=[1, 2])
    assert len(count) == 1


def test_the_carrier_is_the_model_coefficient_unless_too_small_to_carry_the_path():
    """carrier * ratio = path exactly; a carrier differs from model only where raised."""
    model = tf.constant([[0.5], [2.0**-90], [0.0], [-(2.0**-70)], [0.0], [0.25]], tf.float32)
    path = tf.constant([[0.25], [2.0**-100], [0.125], [0.5], [0.0], [-0.5]], tf.float32)
    carrier, ratio = surrogate.carrier_and_ratio(model, path)
    np.testing.assert_array_equal(
        carrier.numpy().ravel(), [0.5, 2.0**-60, 2.0**-60, -(2.0**-60), 0.0, 0.25]
    )
    np.testing.assert_array_equal((carrier * ratio).numpy(), path.numpy())
    assert np.all(np.isfinite(ratio.numpy()))
