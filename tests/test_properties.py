"""Properties of the objectives from the papers, eagerly, in tf.function and under XLA.

A property checked for several objectives (or variants) is checked for each of them
eagerly and for the first of them in every mode; the others' tf.function and XLA runs
are in the slow run, since test_same_seed_same_numbers_in_every_mode shows every
registered objective giving the eager numbers in every mode.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests import reference, toy
from tests.conftest import GRAPH_MODES, MODES, in_mode, mode_params, skip_unless_gaussian_q

tfd = tfp.distributions
D = 3


def _every_objective(num_samples: int) -> dict[str, mco.MCObjective]:
    """id -> objective: every registered objective (`mco.objective_names()`) built by
    `mco.make_objective` with `num_samples` samples (in 2 bounds for those taking
    `num_outer`), then its variant with each bool argument that defaults to False set to
    True (JVI-DReG, a learnable CIWAE, ...)."""
    objectives = {}
    for name in mco.objective_names():
        parameters = inspect.signature(mco.objectives.OBJECTIVES[name].__init__).parameters
        kwargs = {"num_outer": 2} if "num_outer" in parameters else {}
        objectives[name] = mco.make_objective(name, num_samples, **kwargs)
        for arg, parameter in parameters.items():
            if parameter.default is False:
                objectives[f"{name}-{arg}"] = mco.make_objective(
                    name, num_samples, **kwargs, **{arg: True}
                )
    return objectives


def _each_eagerly_the_first_in_every_mode(argnames: str, cases: dict):
    """parametrize(argnames + ", mode") over `cases` (id -> value, or tuple of values):
    each case eagerly, the first also in tf.function and under XLA, the rest's graph
    modes slow (see the module docstring)."""
    params = []
    for i, (case_id, values) in enumerate(cases.items()):
        values = values if isinstance(values, tuple) else (values,)
        for mode in mode_params(MODES, slow=() if i == 0 else GRAPH_MODES):
            params.append(
                pytest.param(*values, *mode.values, id=f"{case_id}-{mode.id}", marks=mode.marks)
            )
    return pytest.mark.parametrize(f"{argnames}, mode", params)


def _path_only(objective: mco.MCObjective) -> bool:
    """Whether the objective's inference gradient is a path term alone (no score term)."""
    coefficients = objective._coefficients(tf.zeros([objective.num_samples, 1], tf.float64))
    return coefficients.path is not None and coefficients.score is None


# Every path-only estimator of the registry, and DReG at two more alphas (IWAE-DReG first).
PATH_ONLY = {
    "dreg": mco.make_objective("dreg", 6),
    **{k: o for k, o in _every_objective(6).items() if _path_only(o)},
    "dreg-0.3": mco.make_objective("dreg", 6, alpha=0.3),
    "dreg-1": mco.make_objective("dreg", 6, alpha=1.0),
}


def _point(rng, batch, offset):
    mu = rng.normal(size=D)
    x = mu + np.sqrt(2.0) * rng.normal(size=(batch, D))
    A = 0.5 * np.eye(D) + offset * rng.normal(size=(D, D))
    b = mu / 2 + offset * rng.normal(size=D)
    return mu, A, b, x


def _run(objective, mode, mu, A, b, x, seed=(1, 2), sigma=toy.SIGMA):
    def run(seed):
        return toy.loss_and_grads(objective, mu, A, b, tf.constant(x), seed, sigma)

    return in_mode(run, mode)(tf.constant(seed, tf.int32))


def test_iwae_bound_increases_with_k_towards_log_px(mode):
    """Probabilistic: mean L_K over 2000 draws rises with K and nears log N(x; mu, 2I)."""
    rng = np.random.default_rng(0)
    mu, A, b, _ = _point(rng, 1, offset=0.3)
    x = np.tile(mu + np.sqrt(2.0) * rng.normal(size=D), (2000, 1))
    log_px = reference._log_normal(x[0], mu, 2.0)
    q = toy.make_q(tf.constant(A), tf.constant(b), tf.constant(x))
    log_joint = toy.make_log_joint(tf.constant(mu), tf.constant(x))
    means, ses = [], []
    for k in (1, 4, 16, 64, 256, 512):
        bound_fn = in_mode(lambda seed, k=k: mco.IWAE(k)(q, log_joint, seed=seed).bound, mode)
        bound = bound_fn(tf.constant((k, 3), tf.int32)).numpy()
        means.append(bound.mean())
        ses.append(bound.std() / math.sqrt(len(bound)))
    print(f"log p(x) {log_px:.4f}; mean L_K {np.round(means, 4)}; s.e. {np.round(ses, 4)}")
    # Each step up to K = 256 rises by more than 3 s.e. of the difference (the last step
    # is smaller than its noise at this replicate count; it enters the closeness check).
    for i in range(len(means) - 2):
        assert means[i + 1] - means[i] > 3 * math.hypot(ses[i], ses[i + 1])
    assert means[-1] <= log_px + 3 * ses[-1]  # a lower bound in expectation
    assert log_px - means[-1] < 0.01  # and close: measured gap 0.007 at K = 512, ~1/K


def test_path_only_estimators_include_the_papers():
    """The derived list holds STL, IWAE-DReG, RWS-DReG and JVI-DReG (it is not empty)."""
    assert {"stl", "dreg", "dreg-1", "jvi-dreg"} <= set(PATH_ONLY)


@_each_eagerly_the_first_in_every_mode("objective", PATH_ONLY)
def test_path_estimators_vanish_at_the_exact_posterior(objective, mode):
    """With q = p(z|x) = N((x + mu)/2, I/2) every sample's inference gradient is 0.

    For every objective whose inference gradient is a path term alone: log w is then
    constant in z, so its path derivative is 0 whatever the coefficients."""
    rng = np.random.default_rng(1)
    mu = rng.normal(size=D)
    replicates = 50  # one data point per replicate: the batch mean hides nothing here
    x = mu + np.sqrt(2.0) * rng.normal(size=(replicates, D))
    A, b = np.tile(0.5 * np.eye(D), (replicates, 1, 1)), np.tile(mu / 2, (replicates, 1))
    _, _, d_A, d_b = _run(objective, mode, mu, A, b, x, sigma=math.sqrt(0.5))
    print(f"max |dA| {np.abs(d_A).max():.2e}, max |db| {np.abs(d_b).max():.2e}")
    assert np.abs(d_A.numpy()).max() < 1e-12 and np.abs(d_b.numpy()).max() < 1e-12
    # ... while IWAE's standard estimator is not zero there.
    _, _, _, d_b_iwae = _run(mco.IWAE(6), mode, mu, A, b, x, sigma=math.sqrt(0.5))
    assert np.abs(d_b_iwae.numpy()).max() > 1e-3


def _assert_same(result_a, result_b):
    for a, b in zip(result_a, result_b, strict=True):
        if isinstance(a, mco.ObjectiveResult):
            a, b = a.loss, b.loss
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)


@_each_eagerly_the_first_in_every_mode(
    "ciwae, other",
    {
        "beta0-is-iwae": (mco.CIWAE(5, beta=0.0), mco.IWAE(5)),
        "beta1-is-vae": (mco.CIWAE(5, beta=1.0), mco.VAE(5)),
    },
)
def test_ciwae_endpoints(ciwae, other, mode):
    """CIWAE(0) = IWAE and CIWAE(1) = VAE: same loss and gradients for the same draws."""
    mu, A, b, x = _point(np.random.default_rng(2), 4, offset=0.3)
    _assert_same(_run(ciwae, mode, mu, A, b, x), _run(other, mode, mu, A, b, x))


def test_piwae_combines_iwae_and_miwae(mode):
    """PIWAE(M, L): model gradient of IWAE(M L), inference gradient of MIWAE(M, L)."""
    mu, A, b, x = _point(np.random.default_rng(3), 4, offset=0.3)
    piwae = _run(mco.PIWAE(3, 4), mode, mu, A, b, x)
    iwae = _run(mco.IWAE(12), mode, mu, A, b, x)
    miwae = _run(mco.MIWAE(3, 4), mode, mu, A, b, x)
    _assert_same([piwae[0], piwae[1]], [iwae[0], iwae[1]])  # loss (the IWAE bound), d/dmu
    _assert_same(piwae[2:], miwae[2:])  # d/dA, d/db


@_each_eagerly_the_first_in_every_mode("use_dreg", {"jvi-dreg": True, "jvi": False})
def test_jvi_with_a_dominant_weight_matches_brute_force(use_dreg, mode):
    """JVI's leave-one-out terms stay exact when log weights span hundreds of nats."""
    mu, A, b, x = _point(np.random.default_rng(4), 2, offset=0.3)
    x = x + 40.0  # far from the prior mean: one sample's weight dominates the rest
    objective = mco.JVI(5, dreg=use_dreg)
    result, d_mu, d_A, d_b = _run(objective, mode, mu, A, b, x)
    spread = np.ptp(result.log_weights.numpy(), axis=0)
    print(f"log weight spread per data point {spread}")
    assert spread.min() > 50
    q = toy.make_q(tf.constant(A), tf.constant(b), tf.constant(x))
    z = mco.sampling.sample(q, 5, tf.constant((1, 2), tf.int32)).numpy()
    eps = (z - (x @ A.T + b)) / toy.SIGMA
    loss, r_mu, r_A, r_b, _ = reference.batch_loss_and_grads(
        reference.jvi, mu, A, b, x, eps, toy.SIGMA, use_dreg=use_dreg
    )
    np.testing.assert_allclose(result.loss.numpy(), loss, rtol=1e-9)
    for got, want in ((d_mu, r_mu), (d_A, r_A), (d_b, r_b)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)


# float64 for every objective; float32 by default for one objective of each gradient path
# (IWAE: TOTAL, DReG: SPLIT, VIMCO: SCORE), every objective in the slow run.
SAME_SEED_CASES = [
    pytest.param(
        name,
        dtype,
        id=f"{name}-{dtype.name}",
        marks=[pytest.mark.slow]
        if dtype == tf.float32 and name not in ("iwae", "dreg", "vimco")
        else [],
    )
    for dtype in (tf.float32, tf.float64)
    for name in _every_objective(6)
]


@pytest.mark.parametrize(("name", "dtype"), SAME_SEED_CASES)
def test_same_seed_same_numbers_in_every_mode(name, dtype):
    """Eager, tf.function and XLA give the same loss and gradients for the same seed, for
    every registered objective (and its bool variants)."""
    objective = _every_objective(6)[name]
    skip_unless_gaussian_q(objective)
    mu, A, b, x = (
        np.asarray(t, dtype.as_numpy_dtype) for t in _point(np.random.default_rng(5), 4, 0.3)
    )
    tol = 1e-5 if dtype == tf.float32 else 1e-12
    outs = [_run(objective, mode, mu, A, b, x) for mode in MODES]
    for other in outs[1:]:
        for a, b_ in zip(outs[0][1:], other[1:], strict=True):
            np.testing.assert_allclose(a.numpy(), b_.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(outs[0][0].loss.numpy(), other[0].loss.numpy(), rtol=tol)


class _SharedToy(tf.Module):
    """q(z|x) = N(A x + b + mu, sigma^2 I) shares mu with the prior N(mu, I)."""


@_each_eagerly_the_first_in_every_mode(
    "name", {name: name for name in ("dreg", "iwae", "rws", "stl")}
)
def test_shared_parameter_gets_the_unified_surrogate_gradient(name, mode):
    """A parameter of both p and q gets Tucker et al. appendix 8.3's update (eqs 11-15),
    whether it is listed with the model's variables or with the inference network's."""
    rng = np.random.default_rng(6)
    mu, A, b, x = _point(rng, 3, offset=0.3)
    b = b - mu  # so that q's mean A x + b + mu matches the unshared toy's
    k = 5
    objective = {"iwae": mco.IWAE(k), "dreg": mco.DReG(k), "rws": mco.RWS(k), "stl": mco.STL(k)}[
        name
    ]

    def run(seed):
        mu_t = tf.constant(mu)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(mu_t)
            q = toy.make_q(tf.constant(A), tf.constant(b) + mu_t, tf.constant(x))
            result = objective(q, toy.make_log_joint(mu_t, tf.constant(x)), seed=seed)
        # Listed with the model's variables, or with the inference network's.
        as_model = result.gradients(tape, [mu_t], []).model[0]
        as_inference = result.gradients(tape, [], [mu_t]).inference[0]
        return as_model, as_inference

    seed = tf.constant((8, 9), tf.int32)
    as_model, as_inference = in_mode(run, mode)(seed)
    q = toy.make_q(tf.constant(A), tf.constant(b + mu), tf.constant(x))
    z = mco.sampling.sample(q, k, seed).numpy()
    want = np.zeros(D)
    for n in range(len(x)):
        eps = (z[:, n] - (A @ x[n] + b + mu)) / toy.SIGMA
        p = reference.Point(mu, A, b + mu, x[n], eps, toy.SIGMA)
        w = reference._softmax(p.log_w)
        direct = w @ p.dmu  # w~ d log p~ / d mu (z held fixed)
        # dz/dmu = I: the q-side terms are those of b in the unshared toy.
        q_side = {
            "iwae": w @ p.total,
            "dreg": (w**2) @ p.path,
            "rws": w @ p.score,
            "stl": w @ p.path,
        }[name]
        want -= (direct + q_side) / len(x)
    for got in (as_model, as_inference):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-10)
