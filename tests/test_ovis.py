"""OVIS (Lievin et al. 2020, OVIS~ with gamma): exact values and gradients, VIMCO as its
special case, the gamma decomposition, bad gamma refused, and unbiasedness.

* Toy Gaussian (tests/toy.py) and int32 Bernoulli q (tests/test_vimco_discrete.py's
  model): loss, bound and every gradient equal tests/reference_ovis.py's NumPy
  derivation for the replayed draws, float64, 1e-6, in eager / tf.function / XLA.
* With c_k = L_K^(-k) (VIMCO's geometric-mean leave-one-out bound) through the
  `_learning_signals` hook, OVIS is mco.VIMCO on the same draws (1e-12).
* OVIS(gamma) = OVIS(0) + gamma (RWS's wake coefficients + log(1 - 1/K)) exactly.
* Probabilistic: OVIS(gamma=0)'s inference gradient has IWAE's reparameterized mean.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from tests import reference, reference_ovis, toy
from tests.conftest import in_mode
from tests.test_vimco_discrete import (
    SEED,
    _bernoulli_q,
    _loss_and_grads,
    _model,
    _sigmoid,
    _softplus,
)

D, B = 3, 2


def _parameters(seed=0):
    return toy.off_optimum_parameters(D, B, seed)


@pytest.mark.parametrize(("num_samples", "gamma"), [(2, 1.0), (7, 1.0), (7, 0.3), (7, 0.0)])
def test_ovis_on_the_toy_gaussian_matches_the_numpy_derivation(num_samples, gamma, mode):
    """Loss, bound, d/dmu, d/dA, d/db equal reference_ovis for the replayed draws (1e-6)."""
    mu, A, b, x = _parameters()
    seed = tf.constant([7, 11], tf.int32)
    objective = mco.OVIS(num_samples, gamma=gamma)

    def run(seed):
        return toy.loss_and_grads(objective, mu, A, b, tf.constant(x), seed)

    result, d_mu, d_A, d_b = in_mode(run, mode)(seed)
    eps = toy.replayed_noise(A, b, x, num_samples, seed)
    loss, r_mu, r_A, r_b, values = reference.batch_loss_and_grads(
        reference_ovis.ovis, mu, A, b, x, eps, toy.SIGMA, gamma=gamma
    )
    for got, want in [(result.loss, loss), (result.bound, values), (d_mu, r_mu), (d_A, r_A)]:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(d_b.numpy(), r_b, rtol=1e-6, atol=1e-9)
    assert np.any(d_b.numpy() != 0)


def test_ovis_on_int32_bernoulli_q_matches_the_numpy_derivation(mode):
    """Replayed int32 draws: loss, d/d prior_logits, d/d W, d/d q_logits equal NumPy
    (float64, 1e-6), with d log q / d logits = z - sigmoid(logits)."""
    v = _model(tf.float64)
    k, gamma = 5, 1.0
    loss, bound, grads = in_mode(_loss_and_grads(mco.OVIS(k), "bernoulli", v), mode)(SEED)
    z = mco.sampling.sample(_bernoulli_q(v), k, SEED).numpy()
    assert z.dtype == np.int32
    prior, W, logits, x = (v[n].numpy() for n in ("prior_logits", "W", "q_logits", "x"))
    batch = len(x)
    ref = {"loss": 0.0, "prior": 0.0, "W": 0.0, "logits": np.zeros_like(logits)}
    values = np.empty(batch)
    for n in range(batch):
        zn = z[:, n].astype(np.float64)
        log_q = zn @ logits[n] - _softplus(logits[n]).sum()
        residual = x[n] - zn @ W
        log_p = zn @ prior - _softplus(prior).sum() - 0.5 * np.sum(residual**2, axis=1)
        lw = log_p - 0.5 * W.shape[1] * np.log(2 * np.pi) - log_q
        w = np.exp(lw - np.logaddexp.reduce(lw))
        values[n] = np.logaddexp.reduce(lw) - np.log(k)
        ref["loss"] -= values[n] / batch
        ref["prior"] -= w @ (zn - _sigmoid(prior)) / batch
        ref["W"] -= np.einsum("k,kd,kp->dp", w, zn, residual) / batch
        signal = reference_ovis.signals(lw, gamma)
        ref["logits"][n] = -signal @ (zn - _sigmoid(logits[n])) / batch
    np.testing.assert_allclose(loss.numpy(), ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(bound.numpy(), values, rtol=1e-6)
    for got, key in zip([grads[0], grads[1], grads[3]], ["prior", "W", "logits"], strict=True):
        np.testing.assert_allclose(got.numpy(), ref[key], rtol=1e-6, atol=1e-12)


class _OVISWithVIMCOControl(mco.OVIS):
    """OVIS with c_k = L_K^(-k) = log (1/K)(sum_{j != k} w_j + w^_-k), w^_-k the geometric
    mean of the other weights (Mnih and Rezende 2016), written here naively."""

    def _learning_signals(self, shifted, normalized):
        k = self.num_samples
        rows = []
        for i in range(k):
            others = tf.concat([shifted[:i], shifted[i + 1 :]], axis=0)
            geometric = tf.reduce_mean(others, axis=0, keepdims=True)
            rows.append(tf.reduce_logsumexp(tf.concat([others, geometric], 0), 0) - math.log(k))
        control = tf.stack(rows)
        prefactor = tf.reduce_logsumexp(shifted, axis=0) - math.log(k) - normalized  # d_k
        return prefactor - control


@pytest.mark.parametrize("num_samples", [2, 6])
def test_ovis_with_the_vimco_control_variate_equals_vimco(num_samples):
    """Same draws, float64: loss, bound and every gradient of OVIS with c_k = L_K^(-k)
    equal mco.VIMCO's to 1e-12."""
    mu, A, b, x = _parameters(1)
    seed = tf.constant([3, 4], tf.int32)
    got = toy.loss_and_grads(_OVISWithVIMCOControl(num_samples), mu, A, b, tf.constant(x), seed)
    want = toy.loss_and_grads(mco.VIMCO(num_samples), mu, A, b, tf.constant(x), seed)
    for g, w in zip(
        [got[0].loss, got[0].bound, *got[1:]],
        [want[0].loss, want[0].bound, *want[1:]],
        strict=True,
    ):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-12)


def test_ovis_gamma_is_ovis_zero_plus_gamma_times_the_rws_wake_coefficients():
    """score(gamma) = score(0) + gamma (w~_k + log(1 - 1/K)), on weights with a dominant
    one and a zero one: the gamma > 0 part is RWS's direction plus a mean-zero term."""
    rng = np.random.default_rng(0)
    lw = rng.normal(size=(6, 4)) * 3.0
    lw[0, 1] += 30.0
    lw[2, 3] = -np.inf
    lw = tf.constant(lw)
    base = mco.OVIS(6, gamma=0.0)._coefficients(lw).score.numpy()
    rws = mco.RWS(6)._coefficients(lw).score.numpy()
    for gamma in (0.25, 1.0):
        got = mco.OVIS(6, gamma=gamma)._coefficients(lw).score.numpy()
        np.testing.assert_allclose(got, base + gamma * (rws + math.log(1 - 1 / 6)), atol=1e-12)


@pytest.mark.parametrize(
    ("gamma", "error"),
    [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), ("1", TypeError)],
)
def test_ovis_refuses_a_gamma_outside_zero_one(gamma, error):
    with pytest.raises(error, match="gamma"):
        mco.OVIS(4, gamma=gamma)
    with pytest.raises(error, match="gamma"):
        mco.make_objective("ovis", 4, gamma=gamma)


def test_ovis_with_one_sample_is_refused():
    with pytest.raises(ValueError, match="num_samples"):
        mco.OVIS(1)


def _per_replicate_db(objective, replicates, seed):
    """[R, D] inference gradients d/db (ascent) of R copies of one data point."""
    mu, A, b, x = _parameters(2)
    xs = tf.constant(np.repeat(x[:1], replicates, axis=0))
    bs = tf.constant(np.repeat(b[None], replicates, axis=0))
    _, _, _, d_b = toy.loss_and_grads(objective, mu, A, bs, xs, seed)
    return -replicates * d_b.numpy()


def test_ovis_gamma_zero_inference_gradient_is_unbiased_for_the_iwae_gradient():
    """Probabilistic (fixed seed): R = 20000 replicates, K = 8, D = 3; the paired
    difference OVIS(0) - IWAE (reparameterized, same draws) of d L_K / d b has
    |t| < 4.5 per coordinate. OVIS(1)'s bias is printed (it is gamma times RWS's mean)."""
    seed = tf.constant([21, 5], tf.int32)
    iwae = _per_replicate_db(mco.IWAE(8), 20000, seed)
    ovis0 = _per_replicate_db(mco.OVIS(8, gamma=0.0), 20000, seed)
    ovis1 = _per_replicate_db(mco.OVIS(8, gamma=1.0), 20000, seed)
    diff = ovis0 - iwae
    t = diff.mean(0) / (diff.std(0, ddof=1) / math.sqrt(len(diff)))
    diff1 = ovis1 - iwae
    t1 = diff1.mean(0) / (diff1.std(0, ddof=1) / math.sqrt(len(diff1)))
    print(f"IWAE mean {iwae.mean(0)}, OVIS(0) mean {ovis0.mean(0)}, t {t}")
    print(f"OVIS(1) mean {ovis1.mean(0)}, t vs IWAE {t1}")
    assert np.all(np.abs(t) < 4.5), t
