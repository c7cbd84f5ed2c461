"""Probabilistic tests: unbiasedness of the DReG estimators, and STL's bias.

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
from tests.conftest import in_mode

R, D, K = 20_000, 2, 8
# Unbiasedness: every coordinate's paired t statistic below 4.5 (6 coordinates; under
# the null P(max |t| > 4.5) is about 4e-5). Bias: some coordinate's |t| above 10.
T_UNBIASED, T_BIASED = 4.5, 10.0


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


def test_dreg_alpha_is_the_convex_combination(mode):
    """Probabilistic: DReG(0.3) has the mean of 0.7 IWAE + 0.3 RWS (|t| < 4.5)."""
    mixed = 0.7 * _phi_gradients(mco.IWAE(K), mode) + 0.3 * _phi_gradients(mco.RWS(K), mode)
    t = _paired_t(_phi_gradients(mco.DReG(K, alpha=0.3), mode), mixed)
    print(f"t {t}")
    assert np.all(np.abs(t) < T_UNBIASED), t


def test_stl_is_biased_for_k_above_one(mode):
    """Probabilistic: STL's mean differs from IWAE's for K > 1 (some |t| > 10)."""
    g_stl, g_iwae = _phi_gradients(mco.STL(K), mode), _phi_gradients(mco.IWAE(K), mode)
    t = _paired_t(g_stl, g_iwae)
    print(f"STL - IWAE mean {(g_stl - g_iwae).mean(0)}, t {t}")
    assert np.max(np.abs(t)) > T_BIASED, t


def test_stl_is_unbiased_for_one_sample(mode):
    """Probabilistic: with K = 1 STL is the ELBO's path gradient, unbiased (|t| < 4.5)."""
    t = _paired_t(_phi_gradients(mco.STL(1), mode), _phi_gradients(mco.IWAE(1), mode))
    print(f"t {t}")
    assert np.all(np.abs(t) < T_UNBIASED), t
