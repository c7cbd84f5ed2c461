"""GDReG for a learned prior's parameters (Bauer and Mnih, ICML 2021): IWAE and DReG.

Checked against tests/reference_gdreg.py (NumPy, derived by hand) on the one-layer toy
with a learned prior N(mu, s^2 I) and on a two-layer linear-Gaussian model with a learned
p(z2) p(z1|z2), in every mode; then its mean against the standard estimator's (paired t)
with the variance ratio printed; then its configuration and the settings it refuses.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests import reference_gdreg
from tests.conftest import in_mode

tfd = tfp.distributions

SIGMA = 0.8  # q's scale in the one-layer toy
TOL = 1e-6


def _normal_prior(mu, s, kind):
    if kind == "mvn_diag":  # a TransformedDistribution: the bijector path
        return tfd.MultivariateNormalDiag(mu, s * tf.ones_like(mu))
    return tfd.Independent(tfd.Normal(mu, s), reinterpreted_batch_ndims=1)


def _one_layer(objective, mu, s, A, b, x, seed, kind="normal"):
    """(loss, [dmu, ds], [dA, db]) of the one-layer toy with a learned prior."""
    with tf.GradientTape() as tape:
        tape.watch([mu, s, A, b])
        q = tfd.Independent(tfd.Normal(tf.linalg.matvec(A, x) + b, SIGMA), 1)
        log_joint = mco.make_log_joint(
            _normal_prior(mu, s, kind),
            lambda z: tfd.Independent(tfd.Normal(z, tf.ones_like(z)), 1),
            x,
        )
        result = objective(q, log_joint, seed=seed)
    grads = result.gradients(tape, [mu, s], [A, b])
    return result.loss, grads.model, grads.inference


def _one_layer_data(seed=0, batch=4, dim=3):
    rng = np.random.default_rng(seed)
    return dict(
        mu=tf.constant(rng.normal(size=dim)),
        s=tf.constant(1.3, tf.float64),
        A=tf.constant(np.eye(dim) * 0.5 + 0.1 * rng.normal(size=(dim, dim))),
        b=tf.constant(0.2 * rng.normal(size=dim)),
        x=tf.constant(rng.normal(size=(batch, dim)) * 1.5),
    )


OBJECTIVES = {
    "iwae": lambda g: mco.IWAE(5, prior_gradient=g),
    "dreg": lambda g: mco.DReG(5, prior_gradient=g),
    "rws_dreg": lambda g: mco.DReG(5, alpha=1.0, prior_gradient=g),
}


def _both_estimators(name: str, mode: str, run) -> dict:
    """{"standard": ..., "gdreg": ...}: run(objective) in `mode` for each prior estimator."""
    results = {}
    for estimator in ("standard", "gdreg"):
        objective = OBJECTIVES[name](estimator)
        results[estimator] = in_mode(lambda objective=objective: run(objective), mode)()
    return results


# The bijector path (MultivariateNormalDiag) is the same for every objective: IWAE only.
@pytest.mark.parametrize(
    ("name", "kind"),
    [("iwae", "normal"), ("dreg", "normal"), ("rws_dreg", "normal"), ("iwae", "mvn_diag")],
)
def test_gdreg_prior_gradient_of_a_learned_normal_prior_is_the_numpy_derivation(name, kind, mode):
    d = _one_layer_data()
    seed = tf.constant([3, 7], tf.int32)
    results = _both_estimators(
        name, mode, lambda objective: _one_layer(objective, seed=seed, kind=kind, **d)
    )
    q = tfd.Independent(tfd.Normal(tf.linalg.matvec(d["A"], d["x"]) + d["b"], SIGMA), 1)
    z = mco.sampling.sample(q, 5, seed).numpy()
    m = (tf.linalg.matvec(d["A"], d["x"]) + d["b"]).numpy()
    batch = d["x"].shape[0]
    for estimator in ("standard", "gdreg"):
        per_point = [
            reference_gdreg.one_layer(
                z[:, i], d["x"].numpy()[i], d["mu"].numpy(), 1.3, m[i], SIGMA
            )[estimator]
            for i in range(batch)
        ]
        expected = [-np.mean([p[j] for p in per_point], axis=0) for j in range(2)]
        model = results[estimator][1]
        np.testing.assert_allclose(model[0].numpy(), expected[0], atol=TOL, rtol=TOL)
        np.testing.assert_allclose(model[1].numpy(), expected[1], atol=TOL, rtol=TOL)
    # The value and q's gradient are the standard estimator's.
    standard, gdreg = results["standard"], results["gdreg"]
    np.testing.assert_allclose(gdreg[0].numpy(), standard[0].numpy(), rtol=1e-12)
    for got, want in zip(gdreg[2], standard[2], strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-12, rtol=1e-10)


def _two_layer_data(seed=1, batch=3, d1=3, d2=2):
    rng = np.random.default_rng(seed)
    c = lambda *shape: tf.constant(rng.normal(size=shape))  # noqa: E731
    return dict(
        mu2=c(d2),
        W=c(d2, d1) * 0.7,
        c=c(d1) * 0.3,
        s1=tf.constant(0.9, tf.float64),
        A1=tf.constant(np.eye(d1) * 0.5) + 0.1 * c(d1, d1),
        b1=0.1 * c(d1),
        A2=0.4 * c(d1, d2),
        b2=0.1 * c(d2),
        x=1.5 * c(batch, d1),
    )


SIGMA1, SIGMA2 = 0.7, 0.6


def _rows(z, matrix):
    """z @ matrix for z of any rank (TFP also calls the lambdas on single draws)."""
    return tf.einsum("...j,ji->...i", z, matrix)


def _two_layer_q(d):
    m1 = tf.linalg.matvec(d["A1"], d["x"]) + d["b1"]
    return tfd.JointDistributionNamed(
        dict(
            z1=tfd.Independent(tfd.Normal(m1, SIGMA1), 1),
            z2=lambda z1: tfd.Independent(tfd.Normal(_rows(z1, d["A2"]) + d["b2"], SIGMA2), 1),
        )
    ), m1


def _two_layer(objective, d, seed):
    theta = [d["mu2"], d["W"], d["c"], d["s1"]]
    phi = [d["A1"], d["b1"], d["A2"], d["b2"]]
    with tf.GradientTape() as tape:
        tape.watch(theta + phi)
        q, _ = _two_layer_q(d)
        prior = tfd.JointDistributionNamed(
            dict(
                z2=tfd.Independent(tfd.Normal(d["mu2"], tf.constant(1.0, tf.float64)), 1),
                z1=lambda z2: tfd.Independent(tfd.Normal(_rows(z2, d["W"]) + d["c"], d["s1"]), 1),
            )
        )
        log_joint = mco.make_log_joint(
            prior,
            lambda z: tfd.Independent(tfd.Normal(z["z1"], tf.ones_like(z["z1"])), 1),
            d["x"],
        )
        result = objective(q, log_joint, seed=seed)
    grads = result.gradients(tape, theta, phi)
    return result.loss, grads.model, grads.inference


@pytest.mark.parametrize("name", ["iwae", "dreg"])
def test_gdreg_prior_gradient_of_a_learned_hierarchical_prior_is_the_numpy_derivation(name, mode):
    d = _two_layer_data()
    seed = tf.constant([5, 11], tf.int32)
    results = _both_estimators(name, mode, lambda objective: _two_layer(objective, d, seed))
    q, m1 = _two_layer_q(d)
    z = mco.sampling.sample(q, 5, seed)
    z1, z2, m1 = z["z1"].numpy(), z["z2"].numpy(), m1.numpy()
    n = {k: v.numpy() for k, v in d.items()}
    for estimator in ("standard", "gdreg"):
        per_point = [
            reference_gdreg.two_layer(
                z1[:, i], z2[:, i], n["x"][i], n["mu2"], n["W"], n["c"], 0.9,
                m1[i], SIGMA1, n["A2"], n["b2"], SIGMA2,
            )[estimator]
            for i in range(n["x"].shape[0])
        ]  # fmt: skip
        for j, got in enumerate(results[estimator][1]):
            expected = -np.mean([p[j] for p in per_point], axis=0)
            np.testing.assert_allclose(got.numpy(), expected, atol=TOL, rtol=TOL)
    for got, want in zip(results["gdreg"][2], results["standard"][2], strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------- statistics
def _per_point_prior_gradients(num_samples, estimator, n=2000, seed=0):
    """[n, D + 1]: each data point's own prior (mu_b, s_b), so one call gives n estimates."""
    dim = 2
    rng = np.random.default_rng(seed)
    mu = tf.constant(rng.normal(size=(n, dim)) * 0.1)
    s = tf.constant(np.full((n, 1), 1.2))
    x = tf.constant(np.tile([[1.0, -0.5]], (n, 1)))
    A = tf.constant(np.eye(dim) * 0.5)
    b = tf.constant(np.zeros(dim))
    objective = mco.IWAE(num_samples, prior_gradient=estimator)
    _, (dmu, ds), _ = _one_layer(objective, mu, s, A, b, x, tf.constant([seed, 1]))
    return -n * np.concatenate([dmu.numpy(), ds.numpy()], axis=1)


def _compare(num_samples):
    standard = _per_point_prior_gradients(num_samples, "standard")
    gdreg = _per_point_prior_gradients(num_samples, "gdreg")
    difference = gdreg - standard
    t = difference.mean(0) / (difference.std(0, ddof=1) / np.sqrt(len(difference)))
    ratio = gdreg.var(0, ddof=1) / standard.var(0, ddof=1)
    print(f"K={num_samples}: paired t {np.round(t, 2)}, variance ratio GDReG/standard "
          f"(mu_1, mu_2, s) {np.round(ratio, 3)}")  # fmt: skip
    return t, ratio


def test_gdreg_prior_gradient_has_the_standard_mean_at_k_5():
    """Probabilistic (fixed seed): |paired t| < 4 per parameter over 2000 estimates."""
    t, _ = _compare(5)
    assert np.all(np.abs(t) < 4.0), t


@pytest.mark.slow
@pytest.mark.parametrize("num_samples", [1, 2, 10, 50])
def test_gdreg_prior_gradient_has_the_standard_mean_for_several_k(num_samples):
    """Probabilistic (fixed seed): |paired t| < 4; prints the variance ratios."""
    t, _ = _compare(num_samples)
    assert np.all(np.abs(t) < 4.0), t


# ------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("objective", "text"),
    [
        (mco.IWAE(5), "IWAE(num_samples=5)"),
        (mco.IWAE(5, prior_gradient="gdreg"), "IWAE(num_samples=5, prior_gradient='gdreg')"),
        (mco.DReG(3), "DReG(num_samples=3, alpha=0.0)"),
        (
            mco.DReG(3, alpha=1.0, prior_gradient="gdreg"),
            "DReG(num_samples=3, alpha=1.0, prior_gradient='gdreg')",
        ),
    ],
)
def test_prior_gradient_is_in_the_config_only_where_it_is_not_the_default(objective, text):
    assert repr(objective) == text
    rebuilt = type(objective).from_config(objective.get_config())
    assert repr(rebuilt) == text
    assert rebuilt.prior_gradient == objective.prior_gradient


# ----------------------------------------------------------------------- bad settings
def test_an_unknown_prior_gradient_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"prior_gradient.*'standard', 'gdreg'"):
        mco.IWAE(5, prior_gradient="dreg")


def _never_called(z):
    raise AssertionError("the likelihood was called: the check came after tracing began")


@pytest.mark.parametrize(
    ("prior", "why"),
    [
        (tfd.Independent(tfd.Bernoulli(logits=tf.zeros(3)), 1), "not reparameterizable"),
        (tfd.Independent(tfd.Gamma(tf.ones(3), 1.0), 1), "Gamma has no standardization"),
    ],
)
def test_gdreg_refuses_a_prior_it_cannot_reparameterize_before_tracing(prior, why):
    q = tfd.Independent(tfd.Normal(tf.zeros([2, 3]), 1.0), 1)
    log_joint = mco.make_log_joint(prior, _never_called, tf.zeros([2, 3]))
    with pytest.raises(ValueError, match=f"prior_gradient='gdreg'.*{why}.*'standard'"):
        mco.IWAE(4, prior_gradient="gdreg")(q, log_joint, seed=1)


def test_gdreg_refuses_a_joint_prior_with_a_part_that_is_not_reparameterizable():
    q = tfd.JointDistributionNamed(dict(a=tfd.Independent(tfd.Normal(tf.zeros([2, 3]), 1.0), 1)))
    prior = tfd.JointDistributionNamed(dict(a=tfd.Independent(tfd.Bernoulli(tf.zeros(3)), 1)))
    log_joint = mco.make_log_joint(prior, _never_called, tf.zeros([2, 3]))
    with pytest.raises(ValueError, match="not reparameterizable"):
        mco.DReG(4, prior_gradient="gdreg")(q, log_joint, seed=1)


def test_gdreg_refuses_a_plain_callable_log_joint_that_hides_its_prior():
    q = tfd.Independent(tfd.Normal(tf.zeros([2, 3]), 1.0), 1)
    with pytest.raises(ValueError, match=r"exposes its prior.*make_log_joint"):
        mco.IWAE(4, prior_gradient="gdreg")(q, _never_called, seed=1)


def _prior_gradient_of(prior_of, mu, s, A, b, x, seed, log_likelihood=None):
    """(loss [B] sum, d mu) of IWAE(5, gdreg) with the prior `prior_of(mu, s)`."""
    with tf.GradientTape() as tape:
        tape.watch([mu, s])
        q = tfd.Independent(tfd.Normal(tf.linalg.matvec(A, x) + b, SIGMA), 1)
        likelihood = log_likelihood or (
            lambda z: tfd.Independent(tfd.Normal(z, tf.ones_like(z)), 1)
        )
        log_joint = mco.make_log_joint(prior_of(mu, s), likelihood, x)
        result = mco.IWAE(5, prior_gradient="gdreg")(q, log_joint, seed=seed)
    return result, tape.gradient(result.loss, [mu, s])


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_gdreg_takes_a_multivariate_normal_prior_with_a_batch_shape(mode):
    """A conditional prior written as MultivariateNormalDiag(loc [B, D]) is the same
    density as Independent(Normal(loc [B, D])): the same GDReG prior gradient."""
    d = _one_layer_data()
    loc = tf.constant(np.random.default_rng(4).normal(size=(4, 3)))
    seed = tf.constant([5, 2], tf.int32)

    def run(prior_of):
        def fn():
            return _prior_gradient_of(prior_of, loc, d["s"], d["A"], d["b"], d["x"], seed)[1]

        return [g.numpy() for g in in_mode(fn, mode)()]

    mvn = run(lambda m, s: tfd.MultivariateNormalDiag(m, s * tf.ones_like(m)))
    independent = run(lambda m, s: tfd.Independent(tfd.Normal(m, s), 1))
    for a, b in zip(mvn, independent, strict=True):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=1e-12)
    assert np.abs(mvn[0]).max() > 0


def _uniform_likelihood(half_widths):
    """x | z ~ Uniform(z - h, z + h) per coordinate: -inf where |x - z| > h, otherwise a
    constant in z (so only the prior and q move the weights)."""
    return lambda z: tfd.Independent(tfd.Uniform(z - half_widths, z + half_widths), 1)


def test_gdreg_with_a_data_point_of_no_nonzero_weight_sends_no_nan_gradient():
    """Every sample of data point 0 falls outside the likelihood's support (weight 0): its
    loss is +inf and it sends nothing, so the prior's GDReG gradient is finite and that of
    the other three data points alone (the loss is the batch mean: 3/4 of theirs)."""
    d = _one_layer_data()
    seeds = tf.constant([[1, 9], [2, 8], [3, 7], [4, 6]], tf.int32)  # per data point
    half = tf.constant([[1e-9], [1e6], [1e6], [1e6]], tf.float64)
    result, grads = _prior_gradient_of(
        lambda m, s: tfd.Independent(tfd.Normal(m, s), 1), d["mu"], d["s"], d["A"], d["b"],
        d["x"], seeds, log_likelihood=_uniform_likelihood(half),
    )  # fmt: skip
    assert np.isinf(result.bound.numpy()[0]) and np.isfinite(result.bound.numpy()[1:]).all()
    rest = {k: v[1:] if k == "x" else v for k, v in d.items()}
    _, rest_grads = _prior_gradient_of(
        lambda m, s: tfd.Independent(tfd.Normal(m, s), 1), rest["mu"], rest["s"], rest["A"],
        rest["b"], rest["x"], seeds[1:], log_likelihood=_uniform_likelihood(half[1:]),
    )  # fmt: skip
    for g, r in zip(grads, rest_grads, strict=True):
        assert np.isfinite(g.numpy()).all()
        np.testing.assert_allclose(g.numpy(), 0.75 * r.numpy(), rtol=1e-9, atol=1e-12)
