"""Probabilistic tests: unbiasedness of the DReG estimators (VR-IWAE's too), STL's
bias, and VIMCO's mean and variance against IWAE and REINFORCE.

Each test draws R independent gradient estimates in ONE batched computation: the toy
Gaussian's parameters carry a replicate axis of R identical copies and the data point
is repeated, so replicate r's gradient is R times the gradient w.r.t. copy r. Paired
tests use the same seed (hence the same z) for both estimators and look at the per-
replicate differences. Fixed seeds make every outcome deterministic; the tolerances
are stated as t statistics and the measured values are printed.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from tests import toy
from tests.conftest import GRAPH_MODES, MODES, in_mode, modes

R, D, K = 20_000, 2, 8
# Unbiasedness: every coordinate's paired t statistic below 4.5 (6 coordinates; under
# the null P(max |t| > 4.5) is about 4e-5). Bias: some coordinate's |t| above 10.
T_UNBIASED, T_BIASED = 4.5, 10.0
# A probabilistic test's outcome is a function of its seed, and the same seed gives the
# same numbers in every mode (tests/test_properties.py, test_same_seed_same_numbers_in_
# every_mode): the default run draws each test's estimates eagerly, the slow run in
# tf.function and under XLA too.
STATISTICAL_MODES = modes(
    *MODES,
    slow=GRAPH_MODES,
    reason="a graph mode draws the eager estimates again (the same seed gives the same "
    "numbers in every mode)",
)


def _replicated_point(offset: float = 0.4, seed: int = 0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=D)
    x = mu + np.sqrt(2.0) * rng.normal(size=D)
    A = 0.5 * np.eye(D) + offset * rng.normal(size=(D, D))
    b = mu / 2 + offset * rng.normal(size=D)
    tile = lambda t: np.broadcast_to(t, (R, *t.shape)).copy()  # noqa: E731
    return tile(mu), tile(A), tile(b), tile(x)


def _phi_gradients(objective, mode, seed=(5, 6)):
    """[R, D*D + D]: each replicate's inference gradient (A then b), as descent directions."""
    mu, A, b, x = _replicated_point()

    def run(seed):
        _, _, d_A, d_b = toy.loss_and_grads(objective, mu, A, b, tf.constant(x), seed)
        return tf.concat([tf.reshape(d_A, [R, -1]), d_b], axis=1) * R

    return in_mode(run, mode)(tf.constant(seed, tf.int32)).numpy()


def _paired_t(g1, g2):
    diff = g1 - g2
    return diff.mean(axis=0) / (diff.std(axis=0, ddof=1) / np.sqrt(len(diff)))


# JVI estimates log p(x), which does not depend on q: its mean inference gradient is
# nearly 0, so only IWAE's and RWS's are checked to be clearly non-zero (the power check).
@pytest.mark.parametrize(
    ("dreg", "baseline", "mean_is_nonzero"),
    [
        (mco.DReG(K, alpha=0.0), mco.IWAE(K), True),
        (mco.DReG(K, alpha=1.0), mco.RWS(K), True),
        (mco.JVI(K, dreg=True), mco.JVI(K), False),
    ],
    ids=["iwae-dreg-vs-iwae", "rws-dreg-vs-rws", "jvi-dreg-vs-jvi"],
)
@STATISTICAL_MODES
def test_dreg_has_the_mean_of_its_baseline(dreg, baseline, mean_is_nonzero, mode):
    """Probabilistic: paired over R replicates, mean(DReG - baseline) is 0 (|t| < 4.5)."""
    g_dreg, g_base = _phi_gradients(dreg, mode), _phi_gradients(baseline, mode)
    t = _paired_t(g_dreg, g_base)
    print(f"mean diff {(g_dreg - g_base).mean(0)}, mean baseline {g_base.mean(0)}, t {t}")
    assert np.all(np.abs(t) < T_UNBIASED), t
    # Power: DReG's variance is far below the baseline's, and the baseline's mean is
    # clearly non-zero at this point where that is expected.
    assert np.all(g_dreg.var(0) < g_base.var(0))
    if mean_is_nonzero:
        assert np.max(np.abs(g_base.mean(0)) / (g_base.std(0) / np.sqrt(R))) > T_BIASED


@STATISTICAL_MODES
def test_dreg_alpha_is_the_convex_combination(mode):
    """Probabilistic: DReG(0.3) has the mean of 0.7 IWAE + 0.3 RWS (|t| < 4.5)."""
    mixed = 0.7 * _phi_gradients(mco.IWAE(K), mode) + 0.3 * _phi_gradients(mco.RWS(K), mode)
    t = _paired_t(_phi_gradients(mco.DReG(K, alpha=0.3), mode), mixed)
    print(f"t {t}")
    assert np.all(np.abs(t) < T_UNBIASED), t


@STATISTICAL_MODES
def test_stl_is_biased_for_k_above_one(mode):
    """Probabilistic: STL's mean differs from IWAE's for K > 1 (some |t| > 10)."""
    g_stl, g_iwae = _phi_gradients(mco.STL(K), mode), _phi_gradients(mco.IWAE(K), mode)
    t = _paired_t(g_stl, g_iwae)
    print(f"STL - IWAE mean {(g_stl - g_iwae).mean(0)}, t {t}")
    assert np.max(np.abs(t)) > T_BIASED, t


@STATISTICAL_MODES
def test_stl_is_unbiased_for_one_sample(mode):
    """Probabilistic: with K = 1 STL is the ELBO's path gradient, unbiased (|t| < 4.5)."""
    t = _paired_t(_phi_gradients(mco.STL(1), mode), _phi_gradients(mco.IWAE(1), mode))
    print(f"t {t}")
    assert np.all(np.abs(t) < T_UNBIASED), t


# --------------------------------------------------------------------------------------
# VIMCO and VR-IWAE
# --------------------------------------------------------------------------------------


class _Reinforce(mco.MCObjective):
    """IWAE's score-function estimator without a baseline, written on the public contract.

    value L_K, model gradient as IWAE, inference gradient sum_k (L_K - w~_k) d log q(z_k|x)
    with z_k held fixed: VIMCO without its leave-one-out baseline.
    """

    gradient_path = mco.GradientPath.SCORE

    def __init__(self, num_samples: int, name: str | None = None):
        super().__init__(num_samples, name=name)

    def _value(self, log_weights):
        return mco.weights.log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        normalized = mco.weights.normalized_weights(log_weights)
        return mco.Coefficients(
            model=normalized, path=None, score=mco.weights.log_mean_exp(log_weights) - normalized
        )


class _VRIWAEWrongDReG(mco.VRIWAE):
    """VR-IWAE with IWAE-DReG's path coefficient v~_k^2, missing alpha (v~_k - v~_k^2)."""

    def _coefficients(self, log_weights):
        normalized = super()._coefficients(log_weights).model
        return mco.Coefficients(model=normalized, path=normalized**2, score=None)


def _t_of_mean(g):
    return g.mean(axis=0) / (g.std(axis=0, ddof=1) / np.sqrt(len(g)))


@STATISTICAL_MODES
def test_vimco_has_the_mean_of_iwae(mode):
    """Probabilistic: paired over R replicates, mean(VIMCO - IWAE) is 0 (|t| < 4.5).

    On the reparameterizable toy q both estimate d L_K / d phi: IWAE through z, VIMCO
    from the score of q alone, whose baseline L_K^(-k) does not depend on z_k.
    """
    g_vimco, g_iwae = _phi_gradients(mco.VIMCO(K), mode), _phi_gradients(mco.IWAE(K), mode)
    t = _paired_t(g_vimco, g_iwae)
    print(f"mean VIMCO {g_vimco.mean(0)}, mean IWAE {g_iwae.mean(0)}, paired t {t}")
    assert np.all(np.abs(t) < T_UNBIASED), t
    # Power: the common mean is clearly non-zero at this point.
    assert np.max(np.abs(_t_of_mean(g_iwae))) > T_BIASED


@STATISTICAL_MODES
def test_vimco_has_lower_variance_than_reinforce(mode):
    """Probabilistic: VIMCO's baseline cuts the score-function variance (ratio < 0.1).

    Both are unbiased score-function estimators of IWAE's inference gradient (paired
    |t| < 4.5 against IWAE); REINFORCE credits every sample with all of L_K. Measured
    variance ratio about 1e-3 per coordinate; with R = 20000 its sampling error is a
    few percent, far from the stated 0.1.
    """
    reinforce = _Reinforce(K)
    assert repr(reinforce) == f"_Reinforce(num_samples={K})"  # the contract's repr
    g_vimco, g_reinforce = _phi_gradients(mco.VIMCO(K), mode), _phi_gradients(reinforce, mode)
    ratio = g_vimco.var(0) / g_reinforce.var(0)
    t = _paired_t(g_reinforce, _phi_gradients(mco.IWAE(K), mode))
    print(f"variance ratio VIMCO / REINFORCE {ratio}, REINFORCE - IWAE paired t {t}")
    assert np.all(np.abs(t) < T_UNBIASED), t
    assert np.all(ratio < 0.1), ratio


@pytest.mark.parametrize("alpha", [0.5, 0.9])
@STATISTICAL_MODES
def test_vriwae_dreg_has_the_mean_of_vriwae(alpha, mode):
    """Probabilistic: VRIWAE(dreg=True) is unbiased for VRIWAE's gradient (|t| < 4.5).

    Power: the same paired test rejects IWAE-DReG's coefficient v~^2 applied to the
    VR-IWAE weights (some |t| > 10), which drops the alpha (v~ - v~^2) part.
    """
    g_base = _phi_gradients(mco.VRIWAE(K, alpha=alpha), mode)
    g_dreg = _phi_gradients(mco.VRIWAE(K, alpha=alpha, dreg=True), mode)
    t = _paired_t(g_dreg, g_base)
    t_wrong = _paired_t(_phi_gradients(_VRIWAEWrongDReG(K, alpha=alpha, dreg=True), mode), g_base)
    ratio = g_dreg.var(0) / g_base.var(0)
    print(f"paired t {t}, wrong coefficient t {t_wrong}, variance ratio {ratio}")
    assert np.all(np.abs(t) < T_UNBIASED), t
    assert np.max(np.abs(_t_of_mean(g_base))) > T_BIASED
    assert np.max(np.abs(t_wrong)) > T_BIASED, t_wrong
    assert np.all(ratio < 1.0), ratio


@pytest.mark.parametrize("dreg", [False, True], ids=["total", "dreg"])
def test_vriwae_alpha_zero_is_iwae(dreg, mode):
    """VRIWAE(alpha=0) is IWAE (dreg=True: IWAE-DReG): same loss, bound and gradients
    for the same seed (deterministic, float64).

    Bitwise equal eagerly (1 - alpha = 1 scales exactly). A traced graph may schedule a
    reduction differently from the other objective's graph (measured: one bound 1 ulp
    apart in tf.function), so there they agree to 1e-15 relative.
    """
    rng = np.random.default_rng(3)
    mu = rng.normal(size=D)
    x = tf.constant(mu + np.sqrt(2.0) * rng.normal(size=(5, D)))
    A = 0.5 * np.eye(D) + 0.4 * rng.normal(size=(D, D))
    b = mu / 2 + 0.4 * rng.normal(size=D)
    seed = tf.constant([9, 2], tf.int32)
    baseline = mco.DReG(K, alpha=0.0) if dreg else mco.IWAE(K)

    def run(objective):
        def fn(seed):
            result, d_mu, d_A, d_b = toy.loss_and_grads(objective, mu, A, b, x, seed)
            return result.loss, result.bound, d_mu, d_A, d_b

        return [t.numpy() for t in in_mode(fn, mode)(seed)]

    for got, want in zip(run(mco.VRIWAE(K, alpha=0.0, dreg=dreg)), run(baseline), strict=True):
        if mode == "eager":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-15, atol=0.0)
