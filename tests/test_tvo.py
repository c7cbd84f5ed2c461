"""The TVO (Masrani, Le and Wood 2019): exact values and gradients, its limits, what its
gradients are unbiased for, and bad settings refused.

* Toy Gaussian (tests/toy.py) and int32 Bernoulli q (tests/test_vimco_discrete.py's
  model): loss, bound and every gradient equal tests/reference_tvo.py's NumPy derivation
  for the replayed draws (score and reparameterized forms, left and right sums,
  log-uniform and user partitions), float64, 1e-6, in eager / tf.function / XLA.
* The coefficients of log weights with a dominant and a zero weight equal the reference's.
* partition=(0, 1): the left sum is VAE(S) (value and gradients), the right sum the
  IWAE-weighted mean sum_k w~_k log w_k.
* Probabilistic (fixed seeds, tolerances in each docstring): the score form of the ELBO
  term is unbiased for d ELBO; the reparameterized form is unbiased for d E[TVO^], the
  score form with beta > 0 is not; both approach the exact TVO of the toy Gaussian (whose
  pi_beta is Gaussian in closed form) and its gradient as S grows.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from mcobjectives.keras import serialization
from tests import reference, reference_tvo, toy
from tests.conftest import in_mode
from tests.test_vimco_discrete import SEED, _bernoulli_q, _loss_and_grads, _model, _sigmoid

D, B = 3, 2
USER = (0.0, 0.3, 0.7, 1.0)


def _parameters(seed=0, batch=B):
    return toy.off_optimum_parameters(D, batch, seed)


# ------------------------------------------------------------ exact, in every mode
TOY_CASES = {
    "score-left-log-uniform": (5, {}),
    "score-right-user": (5, {"partition": USER, "riemann": "right"}),
    "score-left-two-samples": (2, {"num_partitions": 3, "beta_1": 0.05}),
    "reparameterized-left-user": (4, {"partition": (0.0, 0.2, 1.0), "reparameterized": True}),
    "reparameterized-right-log-uniform": (6, {"riemann": "right", "reparameterized": True}),
}


@pytest.mark.parametrize("case", TOY_CASES)
def test_tvo_on_the_toy_gaussian_matches_the_numpy_derivation(case, mode):
    """Loss, bound, d/dmu, d/dA, d/db equal reference_tvo for the replayed draws (1e-6)."""
    num_samples, kwargs = TOY_CASES[case]
    objective = mco.TVO(num_samples, **kwargs)
    mu, A, b, x = _parameters()
    seed = tf.constant([7, 11], tf.int32)

    def run(seed):
        return toy.loss_and_grads(objective, mu, A, b, tf.constant(x), seed)

    result, d_mu, d_A, d_b = in_mode(run, mode)(seed)
    eps = toy.replayed_noise(A, b, x, num_samples, seed)
    loss, r_mu, r_A, r_b, values = reference.batch_loss_and_grads(
        reference_tvo.toy_tvo,
        mu,
        A,
        b,
        x,
        eps,
        toy.SIGMA,
        betas=objective.betas,
        riemann=objective.riemann,
        reparameterized=objective.reparameterized,
    )
    for got, want in [(result.loss, loss), (result.bound, values), (d_mu, r_mu), (d_A, r_A)]:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(d_b.numpy(), r_b, rtol=1e-6, atol=1e-9)
    assert np.any(d_b.numpy() != 0)


@pytest.mark.parametrize("kwargs", [{}, {"partition": USER, "riemann": "right"}])
def test_tvo_on_int32_bernoulli_q_matches_the_numpy_derivation(kwargs, mode):
    """Replayed int32 draws: loss, bound, d/d prior_logits, d/d W, d/d q_logits equal the
    covariance-form reference (float64, 1e-6), d log q / d logits = z - sigmoid(logits)."""
    v = _model(tf.float64)
    k = 5
    objective = mco.TVO(k, **kwargs)
    loss, bound, grads = in_mode(_loss_and_grads(objective, "bernoulli", v), mode)(SEED)
    z = mco.sampling.sample(_bernoulli_q(v), k, SEED).numpy()
    assert z.dtype == np.int32
    prior, W, logits, x = (v[n].numpy() for n in ("prior_logits", "W", "q_logits", "x"))
    batch, d = logits.shape
    ref = {"loss": 0.0, "prior": 0.0, "W": 0.0, "logits": np.zeros_like(logits)}
    values = np.empty(batch)
    for n in range(batch):
        zn = z[:, n].astype(np.float64)
        log_q = zn @ logits[n] - np.logaddexp(0.0, logits[n]).sum()
        residual = x[n] - zn @ W
        log_p = zn @ prior - np.logaddexp(0.0, prior).sum() - 0.5 * np.sum(residual**2, axis=1)
        f = log_p - 0.5 * W.shape[1] * np.log(2 * np.pi) - log_q
        # Flat parameters (prior logits [D], W [D*P], this point's q logits [D]).
        d_prior = zn - _sigmoid(prior)
        d_W = np.einsum("kd,kp->kdp", zn, residual).reshape(k, -1)
        zeros = np.zeros((k, d))
        dlogp = np.concatenate([d_prior, d_W, zeros], axis=1)
        dlogq = np.concatenate([zeros, np.zeros_like(d_W), zn - _sigmoid(logits[n])], axis=1)
        grad = reference_tvo.score_gradient(f, dlogp, dlogq, objective.betas, objective.riemann)
        values[n] = reference_tvo.value(f, objective.betas, objective.riemann)
        ref["loss"] -= values[n] / batch
        ref["prior"] -= grad[:d] / batch
        ref["W"] -= grad[d:-d].reshape(W.shape) / batch
        ref["logits"][n] = -grad[-d:] / batch
    np.testing.assert_allclose(loss.numpy(), ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(bound.numpy(), values, rtol=1e-6)
    for got, key in zip([grads[0], grads[1], grads[3]], ["prior", "W", "logits"], strict=True):
        np.testing.assert_allclose(got.numpy(), ref[key], rtol=1e-6, atol=1e-12)
    assert np.any(grads[3].numpy() != 0)


@pytest.mark.parametrize("riemann", ["left", "right"])
def test_tvo_coefficients_with_a_dominant_and_a_zero_weight_match_the_reference(riemann):
    """The per-sample coefficients are the reference gradient w.r.t. d log p_k and
    d log q_k (identity directions); a zero weight gets 0 (right sum) and makes the left
    sum -inf (its beta = 0 term averages log w), whose data point sends no gradient."""
    rng = np.random.default_rng(0)
    lw = rng.normal(size=(6, 3)) * 3.0
    lw[0, 1] += 30.0
    lw[2, 2] = -np.inf
    objective = mco.TVO(6, partition=USER, riemann=riemann)
    got = objective._coefficients(tf.constant(lw))
    values = objective._value(tf.constant(lw)).numpy()
    eye, zero = np.eye(6), np.zeros((6, 6))
    for n in range(3):
        f = lw[:, n]
        want = reference_tvo.value(f, USER, riemann)
        if riemann == "left" and n == 2:
            assert values[n] == -np.inf
            continue
        np.testing.assert_allclose(values[n], want, rtol=1e-12)
        model = reference_tvo.score_gradient(f, eye, zero, USER, riemann)
        score = reference_tvo.score_gradient(f, zero, eye, USER, riemann)
        np.testing.assert_allclose(got.model.numpy()[:, n], model, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got.score.numpy()[:, n], score, rtol=1e-10, atol=1e-14)
    if riemann == "right":
        assert got.model.numpy()[2, 2] == 0 and got.score.numpy()[2, 2] == 0


# ------------------------------------------------------------------ the (0, 1) limits
def test_tvo_left_with_partition_zero_one_is_the_elbo():
    """Same draws, float64: bound and loss are VAE(S)'s, and so are the gradients of the
    reparameterized form (1e-12); the score form's model gradient is VAE's too."""
    mu, A, b, x = _parameters(1)
    seed = tf.constant([3, 4], tf.int32)
    vae = toy.loss_and_grads(mco.VAE(5), mu, A, b, tf.constant(x), seed)
    for reparameterized in (False, True):
        tvo = mco.TVO(5, partition=(0.0, 1.0), reparameterized=reparameterized)
        got = toy.loss_and_grads(tvo, mu, A, b, tf.constant(x), seed)
        compared = [(got[0].loss, vae[0].loss), (got[0].bound, vae[0].bound), (got[1], vae[1])]
        if reparameterized:
            compared += [(got[2], vae[2]), (got[3], vae[3])]
        for g, w in compared:
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-12)


def test_tvo_right_with_partition_zero_one_is_the_iwae_weighted_mean_of_log_w():
    """bound = sum_k w~_k log w_k with w~ = softmax(log w) of the same draws (1e-12)."""
    mu, A, b, x = _parameters(1)
    tvo = mco.TVO(5, partition=(0.0, 1.0), riemann="right")
    result = toy.loss_and_grads(tvo, mu, A, b, tf.constant(x), tf.constant([3, 4], tf.int32))[0]
    lw = result.log_weights.numpy()
    w = np.exp(lw - np.logaddexp.reduce(lw, axis=0))
    np.testing.assert_allclose(result.bound.numpy(), np.sum(w * lw, axis=0), rtol=1e-12)


def test_the_log_uniform_partition_is_zero_then_k_points_from_beta_1_to_one():
    """K intervals: 0, then beta_1^((K - j)/(K - 1)), j = 1..K; K = 1 is (0, 1)."""
    np.testing.assert_allclose(mco.TVO(2, num_partitions=3, beta_1=0.01).betas, [0, 0.01, 0.1, 1])
    assert mco.TVO(2, num_partitions=1).betas == (0.0, 1.0)
    default = mco.TVO(2).betas
    assert len(default) == 6 and default[0] == 0.0 and default[-1] == 1.0
    np.testing.assert_allclose(default[1], 10**-1.09)
    np.testing.assert_allclose(np.diff(np.log(default[1:])), np.log(default[2] / default[1]))


# ------------------------------------------------------------------- statistics
def _replicates(objective, replicates, seed, parameters=2):
    """(bound [R], d/db ascent [R, D], log w [R, S], score [R, S, D]) of R copies of one
    data point; score = eps / sigma of the replayed draws."""
    mu, A, b, x = _parameters(parameters, batch=1)
    xs = tf.constant(np.repeat(x, replicates, axis=0))
    bs = tf.constant(np.repeat(b[None], replicates, axis=0))
    result, _, _, d_b = toy.loss_and_grads(objective, mu, A, bs, xs, seed)
    q = toy.make_q(tf.constant(A), bs, xs)
    z = mco.sampling.sample(q, objective.num_samples, seed).numpy()
    score = np.swapaxes((z - (xs.numpy() @ A.T + b)) / toy.SIGMA**2, 0, 1)
    return result.bound.numpy(), -replicates * d_b.numpy(), result.log_weights.numpy().T, score


def _t(diff):
    return diff.mean(0) / (diff.std(0, ddof=1) / math.sqrt(len(diff)))


def test_tvo_score_gradient_of_the_elbo_term_is_unbiased():
    """Probabilistic (fixed seed): R = 20000 replicates, S = 4, D = 3. With partition
    (0, 1) (the beta = 0 term alone) the score form's d/db minus VAE's reparameterized
    d/db on the same draws has |t| < 4.5 per coordinate: the S/(S-1) covariance is a
    leave-one-out baseline."""
    seed = tf.constant([21, 5], tf.int32)
    _, vae, _, _ = _replicates(mco.VAE(4), 20000, seed)
    _, tvo, _, _ = _replicates(mco.TVO(4, partition=(0.0, 1.0)), 20000, seed)
    t = _t(tvo - vae)
    print(f"VAE mean {vae.mean(0)}, TVO score (0, 1) mean {tvo.mean(0)}, paired t {t}")
    assert np.all(np.abs(t) < 4.5), t


@pytest.mark.parametrize("riemann", ["left", "right"])
def test_tvo_reparameterized_gradient_is_unbiased_for_the_expected_estimate_and_score_is_not(
    riemann,
):
    """Probabilistic (fixed seed): R = 50000 replicates, S = 4, the default partition.
    Against the plain score-function estimate of d E[TVO^] / d b (reference_tvo, replayed
    draws, the exact TVO as its constant baseline): the reparameterized form has
    |t| < 4.5 per coordinate (the printed standard error is the resolution). The score form, whose
    beta > 0 terms are ratio estimates, differs from the reparameterized form on the same
    draws (a paired difference of far lower variance) with |t| > 8 in some coordinate."""
    seed = tf.constant([9, 2], tf.int32)
    objective = mco.TVO(4, riemann=riemann, reparameterized=True)
    _, rep, f, score = _replicates(objective, 50000, seed)
    _, cov, _, _ = _replicates(mco.TVO(4, riemann=riemann), 50000, seed)
    mu, A, b, x = _parameters(2, batch=1)
    exact = reference_tvo.exact_tvo(mu, A @ x[0] + b, x[0], toy.SIGMA, objective.betas, riemann)
    plain = reference_tvo.score_function_estimate(f, score, objective.betas, riemann, exact)
    t_rep, t_cov = _t(rep - plain), _t(cov - rep)
    se = (rep - plain).std(0, ddof=1) / math.sqrt(len(rep))
    print(f"{riemann}: score-function mean {plain.mean(0)}, reparameterized {rep.mean(0)}")
    print(f"  t(reparameterized - score function) {t_rep}, standard error {se}")
    print(f"  covariance form {cov.mean(0)}")
    print(f"  t(covariance - reparameterized) {t_cov}")
    assert np.all(np.abs(t_rep) < 4.5), t_rep
    assert np.max(np.abs(t_cov)) > 8, t_cov


@pytest.mark.parametrize("riemann", ["left", "right"])
def test_tvo_approaches_the_exact_tvo_of_the_toy_gaussian_as_s_grows(riemann):
    """Probabilistic (fixed seed). pi_beta is Gaussian on the toy model, so the exact TVO
    and its d/db (central differences) are known. At S = 4 the value is biased (t < -20);
    at S = 2048 (R = 200) the value and both gradient forms are within 4.5 standard
    errors + 0.02 of the exact ones."""
    mu, A, b, x = _parameters(2, batch=1)
    m = A @ x[0] + b
    betas = mco.TVO(2).betas
    exact = reference_tvo.exact_tvo(mu, m, x[0], toy.SIGMA, betas, riemann)
    exact_db = reference_tvo.exact_tvo_gradient(mu, m, x[0], toy.SIGMA, betas, riemann)[1]
    small, _, _, _ = _replicates(mco.TVO(4, riemann=riemann), 20000, tf.constant([1, 4]))
    t_small = (small.mean() - exact) / (small.std(ddof=1) / math.sqrt(len(small)))
    print(f"{riemann}: exact {exact:.4f}, d/db {exact_db}")
    print(f"  S=4 value {small.mean():.4f}, t {t_small:.1f}")
    assert t_small < -20
    for reparameterized in (False, True):
        objective = mco.TVO(2048, riemann=riemann, reparameterized=reparameterized)
        value, db, _, _ = _replicates(objective, 200, tf.constant([1, 2048]))
        se_value = value.std(ddof=1) / math.sqrt(len(value))
        se_db = db.std(0, ddof=1) / math.sqrt(len(db))
        print(
            f"  S=2048 reparameterized={reparameterized}: value {value.mean():.4f} +- "
            f"{se_value:.4f}, d/db {db.mean(0)} +- {se_db}"
        )
        assert abs(value.mean() - exact) < 4.5 * se_value + 0.02
        assert np.all(np.abs(db.mean(0) - exact_db) < 4.5 * se_db + 0.02)


# ---------------------------------------------------------------- configuration
def test_tvo_config_round_trips_through_keras_serialization_and_json():
    """A user partition survives serialize -> JSON -> deserialize with the same repr."""
    serialization.register_objectives()
    objective = mco.TVO(4, partition=USER, riemann="right", reparameterized=True)
    config = json.loads(json.dumps(serialization.serialize_objective(objective)))
    rebuilt = serialization.deserialize_objective(config)
    assert repr(rebuilt) == repr(objective) and rebuilt.betas == USER
    assert repr(mco.TVO(3)) == "TVO(num_samples=3, riemann='left', reparameterized=False)"
    assert keras.saving.get_registered_object("mcobjectives>TVO") is mco.TVO


# ------------------------------------------------------------------ bad settings
BAD = {
    "partition-not-increasing": ({"partition": (0.0, 0.5, 0.5, 1.0)}, ValueError, "increasing"),
    "partition-decreasing": ({"partition": (0.0, 0.7, 0.3, 1.0)}, ValueError, "increasing"),
    "partition-above-one": ({"partition": (0.0, 0.5, 1.5)}, ValueError, r"\[0, 1\]"),
    "partition-below-zero": ({"partition": (-0.1, 0.5, 1.0)}, ValueError, r"\[0, 1\]"),
    "partition-nan": ({"partition": (0.0, math.nan, 1.0)}, ValueError, r"\[0, 1\]"),
    "partition-not-from-zero": ({"partition": (0.1, 1.0)}, ValueError, "start at beta_0 = 0"),
    "partition-not-to-one": ({"partition": (0.0, 0.5)}, ValueError, "end at beta_J = 1"),
    "partition-one-point": ({"partition": (1.0,)}, ValueError, "two points"),
    "partition-a-number": ({"partition": 0.5}, TypeError, "sequence"),
    "partition-strings": ({"partition": ("0", "1")}, TypeError, "real numbers"),
    "partition-and-beta-1": ({"partition": USER, "beta_1": 0.1}, ValueError, "not both"),
    "beta-1-zero": ({"beta_1": 0.0}, ValueError, "strictly inside"),
    "beta-1-one": ({"beta_1": 1.0}, ValueError, "strictly inside"),
    "beta-1-above-one": ({"beta_1": 1.5}, ValueError, "beta_1"),
    "beta-1-nan": ({"beta_1": math.nan}, ValueError, "beta_1"),
    "beta-1-string": ({"beta_1": "0.1"}, TypeError, "beta_1"),
    "beta-1-unused": ({"num_partitions": 1, "beta_1": 0.1}, ValueError, "unused"),
    "num-partitions-zero": ({"num_partitions": 0}, ValueError, "num_partitions"),
    "num-partitions-bool": ({"num_partitions": True}, TypeError, "num_partitions"),
    "riemann-middle": ({"riemann": "middle"}, ValueError, "riemann"),
    "riemann-none": ({"riemann": None}, ValueError, "riemann"),
    "reparameterized-int": ({"reparameterized": 1}, TypeError, "reparameterized"),
    "reparameterized-string": ({"reparameterized": "yes"}, TypeError, "reparameterized"),
}


@pytest.mark.parametrize("case", BAD)
def test_tvo_refuses_a_bad_setting_naming_it(case):
    """Through the constructor and make_objective, before anything is traced."""
    kwargs, error, words = BAD[case]
    with pytest.raises(error, match=words):
        mco.TVO(4, **kwargs)
    with pytest.raises(error, match=words):
        mco.make_objective("tvo", 4, **kwargs)


def test_tvo_with_one_sample_is_refused():
    with pytest.raises(ValueError, match="num_samples"):
        mco.TVO(1)


def test_reparameterized_tvo_refuses_a_bernoulli_q_before_calling_log_joint():
    """The score form takes int32 Bernoulli leaves; the reparameterized one names the leaf."""
    v = _model(tf.float64)

    def log_joint(z):
        raise AssertionError("log_joint ran")

    with pytest.raises(ValueError, match=r"TVO differentiates through the samples.*discrete"):
        mco.TVO(4, reparameterized=True)(_bernoulli_q(v), log_joint, seed=SEED)
