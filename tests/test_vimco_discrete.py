"""VIMCO (and RWS) on discrete q, and VIMCO's learning signals in float32.

* VIMCO and RWS run on a q of int32 Bernoulli latents (tfd.Bernoulli's default dtype)
  and on a JointDistributionNamed mixing a Bernoulli leaf with a Normal leaf that
  depends on it; eager, tf.function and XLA give the same loss (float32, 1e-5) and
  gradients (1e-4).
* On a small Bernoulli model, the library's gradients equal a NumPy derivation for the
  replayed samples (`mco.sampling.sample(q, K, seed)` returns exactly the draws the
  objective used), with the score d log q(z|x) / d logits = z - sigmoid(logits), to
  1e-10 relative in float64 in every mode.
* VIMCO's coefficients of float32 log weights near -1e4 (with a dominant weight and
  an outlier) equal the same coefficients computed in 60-digit decimal arithmetic to
  2e-5 of their own size (the documented `_coefficients` hook of `mcobjectives.MCObjective`).
"""

from __future__ import annotations

from decimal import Decimal, getcontext

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests.conftest import MODES, in_mode

tfd = tfp.distributions

B, D, P, K = 3, 4, 2, 5
SEED = tf.constant([5, 8], tf.int32)


def _model(dtype):
    """Parameters of p(z) p(x|z), q(z|x) and data x: prior logits [D], W [D, P], M [D, P],
    q's logits [B, D] and loc [B, P], x [B, P]."""
    rng = np.random.default_rng(0)
    return {
        name: tf.Variable(value.astype(dtype.as_numpy_dtype), name=name)
        for name, value in {
            "prior_logits": rng.normal(size=D),
            "W": rng.normal(size=(D, P)),
            "M": 0.5 * rng.normal(size=(D, P)),
            "q_logits": rng.normal(size=(B, D)),
            "q_loc": rng.normal(size=(B, P)),
        }.items()
    } | {"x": tf.constant(rng.normal(size=(B, P)), dtype)}


def _bernoulli_q(v):
    return tfd.Independent(tfd.Bernoulli(logits=v["q_logits"]), 1)  # int32 samples


def _bernoulli_log_joint(v):
    """log p(x, z) = log Bernoulli(z; prior_logits) + log N(x; z W, I)."""
    prior = tfd.Independent(tfd.Bernoulli(logits=v["prior_logits"]), 1)

    def log_joint(z):
        mean = tf.linalg.matmul(tf.cast(z, v["W"].dtype), v["W"])  # [K, B, P]
        return prior.log_prob(z) + tfd.Independent(tfd.Normal(mean, 1.0), 1).log_prob(v["x"])

    return log_joint


def _joint_q(v):
    """q(b, n | x) = Bernoulli(b; q_logits) N(n; q_loc + b M, I): n depends on the int32 b."""
    return tfd.JointDistributionNamed(
        {
            "b": tfd.Independent(tfd.Bernoulli(logits=v["q_logits"]), 1),
            "n": lambda b: tfd.Independent(
                tfd.Normal(v["q_loc"] + tf.linalg.matmul(tf.cast(b, v["M"].dtype), v["M"]), 1.0),
                1,
            ),
        }
    )


def _joint_log_joint(v):
    """log p(x, b, n) = log Bernoulli(b) + log N(n; 0, I) + log N(x; b W + n, I)."""
    prior_b = tfd.Independent(tfd.Bernoulli(logits=v["prior_logits"]), 1)

    def log_joint(z):
        b, n = z["b"], z["n"]
        mean = tf.linalg.matmul(tf.cast(b, v["W"].dtype), v["W"]) + n
        return (
            prior_b.log_prob(b)
            + tfd.Independent(tfd.Normal(tf.zeros_like(n), 1.0), 1).log_prob(n)
            + tfd.Independent(tfd.Normal(mean, 1.0), 1).log_prob(v["x"])
        )

    return log_joint


PROBLEMS = {
    "bernoulli": (_bernoulli_q, _bernoulli_log_joint),
    "joint": (_joint_q, _joint_log_joint),
}
OBJECTIVES = {"vimco": lambda: mco.VIMCO(K), "rws": lambda: mco.RWS(K)}


def _loss_and_grads(objective, problem, v):
    make_q, make_log_joint = PROBLEMS[problem]
    variables = [v[n] for n in ("prior_logits", "W", "M", "q_logits", "q_loc")]

    def run(seed):
        with tf.GradientTape() as tape:
            result = objective(make_q(v), make_log_joint(v), seed=seed)
        grads = tape.gradient(
            result.loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return result.loss, result.bound, grads

    return run


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("name", OBJECTIVES)
def test_discrete_q_gives_the_same_loss_in_every_mode(name, problem):
    """int32 Bernoulli q, alone and in a joint q with a Normal leaf: eager, tf.function
    and XLA draw the same z and give the same loss (1e-5) and gradients (1e-4, float32)."""
    v = _model(tf.float32)
    run = _loss_and_grads(OBJECTIVES[name](), problem, v)
    assert tf.nest.flatten(PROBLEMS[problem][0](v).dtype)[0] == tf.int32
    results = {mode: tf.nest.map_structure(np.asarray, in_mode(run, mode)(SEED)) for mode in MODES}
    loss, bound, grads = results["eager"]
    print({mode: float(r[0]) for mode, r in results.items()})
    assert np.isfinite(loss) and np.all(np.isfinite(bound))
    # q's logits get a score gradient, and the joint's Normal loc a gradient too.
    assert np.any(grads[3] != 0)
    if problem == "joint":
        assert np.any(grads[4] != 0)
    for mode in MODES[1:]:
        other_loss, other_bound, other_grads = results[mode]
        np.testing.assert_allclose(other_loss, loss, rtol=1e-5)
        np.testing.assert_allclose(other_bound, bound, rtol=1e-5)
        for got, want in zip(other_grads, grads, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _lme(lw):
    return np.logaddexp.reduce(lw) - np.log(len(lw))


def _vimco_score(lw):
    """(L_K - L_K^(-k)) - w~_k for one data point, with an explicit loop over k."""
    k = len(lw)
    value, w = _lme(lw), np.exp(lw - np.logaddexp.reduce(lw))
    score = np.empty(k)
    for i in range(k):
        others = np.array([lw[j] for j in range(k) if j != i])
        score[i] = value - _lme(np.append(others, others.mean())) - w[i]
    return score


def _rws_score(lw):
    return np.exp(lw - np.logaddexp.reduce(lw))


@pytest.mark.parametrize(("name", "score_of"), [("vimco", _vimco_score), ("rws", _rws_score)])
def test_bernoulli_gradients_match_numpy(name, score_of, mode):
    """Replayed int32 samples: loss, d/d prior_logits, d/d W and d/d q_logits equal
    the NumPy derivation (float64, 1e-10 relative).

    log q(z) = sum_d z_d l_d - softplus(l_d), so d log q / d l = z - sigmoid(l);
    the model gradient is sum_k w~_k d log p(x, z_k) with d log p / d prior_logits =
    z - sigmoid(prior_logits) and d log p / d W = z^T (x - z W).
    """
    v = _model(tf.float64)
    loss, bound, grads = in_mode(_loss_and_grads(OBJECTIVES[name](), "bernoulli", v), mode)(SEED)
    z = mco.sampling.sample(_bernoulli_q(v), K, SEED).numpy()
    assert z.dtype == np.int32 and z.shape == (K, B, D)

    prior, W, logits, x = (v[n].numpy() for n in ("prior_logits", "W", "q_logits", "x"))
    ref = {"loss": 0.0, "prior": np.zeros(D), "W": np.zeros((D, P)), "logits": np.zeros((B, D))}
    values = np.empty(B)
    for n in range(B):
        zn = z[:, n].astype(np.float64)  # [K, D]
        log_q = zn @ logits[n] - _softplus(logits[n]).sum()
        residual = x[n] - zn @ W  # [K, P]
        log_p = (
            zn @ prior
            - _softplus(prior).sum()
            - 0.5 * np.sum(residual**2, axis=1)
            - 0.5 * P * np.log(2 * np.pi)
        )
        lw = log_p - log_q
        w = np.exp(lw - np.logaddexp.reduce(lw))
        values[n] = _lme(lw)
        # Ascent directions of data point n; the loss is minus their batch mean.
        ref["loss"] -= values[n] / B
        ref["prior"] -= w @ (zn - _sigmoid(prior)) / B
        ref["W"] -= np.einsum("k,kd,kp->dp", w, zn, residual) / B
        ref["logits"][n] = -score_of(lw) @ (zn - _sigmoid(logits[n])) / B

    np.testing.assert_allclose(loss.numpy(), ref["loss"], rtol=1e-10)
    np.testing.assert_allclose(bound.numpy(), values, rtol=1e-10)
    for got, key in zip([grads[0], grads[1], grads[3]], ["prior", "W", "logits"], strict=True):
        np.testing.assert_allclose(got.numpy(), ref[key], rtol=1e-10, atol=1e-14)
    # M and q_loc are not used by the Bernoulli problem.
    assert not np.any(grads[2].numpy()) and not np.any(grads[4].numpy())


def _exact_vimco(log_weights):
    """(score coefficients, their scale max(|L_K - L_K^(-k)|, w~_k)) in 60-digit decimals."""
    getcontext().prec = 60
    num, batch = log_weights.shape
    score, scale = np.empty((num, batch)), np.empty((num, batch))
    for n in range(batch):
        lw = [Decimal(float(v)) for v in log_weights[:, n]]
        w = [v.exp() for v in lw]
        total = sum(w)
        for i in range(num):
            geometric = ((sum(lw[:i]) + sum(lw[i + 1 :])) / (num - 1)).exp()
            # Summed from the others: total - w_i would cancel even at 60 digits.
            signal = total.ln() - (sum(w[:i]) + sum(w[i + 1 :]) + geometric).ln()
            weight = w[i] / total
            score[i, n] = float(signal - weight)
            scale[i, n] = float(max(abs(signal), weight))
    return score, scale


@pytest.mark.parametrize("num_samples", [2, 16, 200])
def test_vimco_coefficients_keep_float32_precision_near_minus_1e4(num_samples):
    """float32 log weights -1e4 + N(0, 3^2), one column with a dominant weight (+40),
    one with an outlier (-300), one all equal: each score coefficient is within 2e-5 of
    its own size of the exact value (without the shift, |log w| ~ 1e4 costs ~1e-3)."""
    rng = np.random.default_rng(num_samples)
    log_weights = -1e4 + 3.0 * rng.normal(size=(num_samples, 4))
    log_weights[0, 0] += 40.0
    log_weights[1, 1] -= 300.0
    log_weights[:, 2] = -1e4
    log_weights = log_weights.astype(np.float32)
    coefficients = mco.VIMCO(num_samples)._coefficients(tf.constant(log_weights))
    lw64 = log_weights.astype(np.float64)
    exact, scale = _exact_vimco(lw64)
    normalized = np.exp(lw64 - np.logaddexp.reduce(lw64, axis=0))
    np.testing.assert_allclose(coefficients.model.numpy(), normalized, rtol=1e-5, atol=1e-30)
    error = np.abs(coefficients.score.numpy() - exact)
    representable = scale > 1e-30  # below, float32 underflows
    relative = error[representable] / scale[representable]
    print(f"K={num_samples}: max |error| {error.max():.3g}, max error / size {relative.max():.3g}")
    assert coefficients.path is None
    assert np.all(relative < 2e-5), relative.max()
    assert np.all(error[~representable] < 1e-30)
