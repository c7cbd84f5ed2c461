"""Zero importance weights are exact: every objective at log p(x, z) = -inf for some samples.

A sample outside the support of a bounded factor of the model (here a Uniform factor
on z's first coordinate, which is -inf outside its support and a constant inside) has
the weight 0. Where the bound is finite, the loss, the bound and the gradients must be
the limit in which those samples contribute nothing: tests/reference.py's NumPy
derivation evaluated with w = 0 for them (NumPy's exp(-inf) = 0, so every sum over
samples drops them, with no 0 * -inf formed: the hand limit). Where the bound is -inf
(every weight zero; one zero weight for the objectives averaging log w), the loss is
+inf and that data point sends no gradient.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests import reference, toy
from tests.conftest import GRAPH_MODES, MODES, in_mode, mode_params, skip_unless_gaussian_q
from tests.test_exact_gradients import CASES, ONE_PER_KIND, _parameters

# Every case runs eagerly; in a graph by default one TOTAL, one SPLIT and one SCORE case
# (tests/test_properties.py shows every objective giving the eager numbers in a graph),
# the other kinds with -m slow.
GRAPH_BY_DEFAULT = {"iwae-5", "piwae-3x4", "vimco-7"}
assert GRAPH_BY_DEFAULT <= ONE_PER_KIND

tfd = tfp.distributions

B, D = 3, 2
RTOL, ATOL = 1e-6, 1e-10
SEED = tf.constant([7, 11], tf.int32)
LOW = -50.0  # the Uniform factor's lower end, far below every sample
INF = math.inf


def _grouping(objective) -> int:
    """L, the size of the groups whose weights the objective normalizes together."""
    return getattr(objective, "num_inner", objective.num_samples)


def _zero_weight_mask(objective, z0: np.ndarray) -> np.ndarray:
    """[S, B]: the samples to cut, those with the largest first coordinate z0 [S, B].

    ceil(K/3) of each data point's K samples, at most L - 2 for objectives normalizing
    groups of L: every group keeps at least two weights, so no group is empty and the
    leave-one-out objectives keep two.
    """
    k, b = z0.shape
    cut = math.ceil(k / 3)
    if _grouping(objective) < k:
        cut = min(cut, _grouping(objective) - 2)
    mask = np.zeros((k, b), bool)
    order = np.argsort(-z0, axis=0)[:cut]
    for n in range(b):
        mask[order[:, n], n] = True
    return mask


def _highs(z0: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B]: a Uniform upper end between the kept samples and the cut ones."""
    kept = np.where(mask, -np.inf, z0).max(axis=0)
    cut = np.where(mask, z0, np.inf).min(axis=0)
    return np.where(np.isfinite(cut), (kept + cut) / 2, kept + 1.0)


def _bounded_log_joint(mu, x, high):
    """The toy model times a Uniform(LOW, high_b) factor on z's first coordinate."""
    base = toy.make_log_joint(mu, x)
    support = tfd.Uniform(tf.constant(LOW, tf.float64), tf.constant(high, tf.float64))

    def log_joint(z):
        return base(z) + support.log_prob(z[..., 0])

    return log_joint


def _replayed(objective, A, b, x):
    q = toy.make_q(tf.constant(A), tf.constant(b), tf.constant(x))
    z = mco.sampling.sample(q, objective.num_samples, SEED).numpy()
    return z, (z - (x @ A.T + b)) / toy.SIGMA


def _reference(estimator, mu, A, b, x, eps, mask, high, **kwargs):
    """tests/reference.py's estimator with w = 0 (log w = -inf) for the cut samples.

    Returns per data point (value, d/dmu, d/dA, d/db) as ascent directions.
    """
    outs = []
    for n in range(len(x)):
        point = reference.Point(mu, A, b, x[n], eps[:, n], toy.SIGMA)
        point.log_w = np.where(mask[:, n], -np.inf, point.log_w - np.log(high[n] - LOW))
        outs.append(estimator(point, **kwargs))
    return outs


def _zero_weight_cases():
    for case_id, objective, estimator, kwargs in CASES:
        if _grouping(objective) < 3 or case_id.startswith(("vae", "ciwae")):
            continue  # every group needs two kept weights; VAE and CIWAE are -inf (below)
        slow = () if case_id in GRAPH_BY_DEFAULT else GRAPH_MODES
        for mode in mode_params(MODES, slow=slow):
            yield pytest.param(
                objective,
                estimator,
                kwargs,
                *mode.values,
                id=f"{mode.id}-{case_id}",
                marks=mode.marks,
            )


@pytest.mark.parametrize(("objective", "estimator", "kwargs", "mode"), _zero_weight_cases())
def test_zero_weights_give_the_hand_derived_limit(objective, estimator, kwargs, mode):
    """With a third of each group's weights exactly 0, loss, bound and gradients are finite
    and equal the NumPy derivation in which those samples contribute nothing."""
    mu, A, b, x = _parameters()
    z, eps = _replayed(objective, A, b, x)
    mask = _zero_weight_mask(objective, z[..., 0])
    high = _highs(z[..., 0], mask)

    def run(seed):
        params = [tf.constant(t) for t in (mu, A, b)]
        with tf.GradientTape() as tape:
            tape.watch(params)
            q = toy.make_q(params[1], params[2], tf.constant(x))
            result = objective(q, _bounded_log_joint(params[0], tf.constant(x), high), seed=seed)
        return result, tape.gradient(result.loss, params)

    result, grads = in_mode(run, mode)(SEED)
    assert np.array_equal(np.isinf(result.log_weights.numpy()), mask)  # the cut samples
    outs = _reference(estimator, mu, A, b, x, eps, mask, high, **kwargs)
    values = np.array([o[0] for o in outs])
    np.testing.assert_allclose(result.bound.numpy(), values, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.loss.numpy(), -values.mean(), rtol=RTOL, atol=ATOL)
    for grad, i in zip(grads, (1, 2, 3), strict=True):
        expected = -np.mean([o[i] for o in outs], axis=0)
        np.testing.assert_allclose(grad.numpy(), expected, rtol=RTOL, atol=ATOL)


def _objectives_with_two_weights():
    """(name, objective): every registered objective with K = 6 (MIWAE, PIWAE: 2 x 3)."""
    for name in mco.objective_names():
        grouped = {"num_outer": 2} if name in ("miwae", "piwae") else {}
        yield pytest.param(name, mco.make_objective(name, 6, **grouped), id=name)


# Per-example seeds: each data point draws the same samples in any batch.
POINT_SEEDS = tf.constant([[1, 2], [3, 4], [5, 6]], tf.int32)


def _run(objective, x, log_joint_of, seeds=POINT_SEEDS):
    mu, A, b, _ = _parameters()
    params = [tf.constant(t) for t in (mu, A, b)]
    with tf.GradientTape() as tape:
        tape.watch(params)
        q = toy.make_q(params[1], params[2], tf.constant(x))
        result = objective(q, log_joint_of(params[0], tf.constant(x)), seed=seeds)
    return result, [g.numpy() for g in tape.gradient(result.loss, params)]


def _cut(point: int, samples=None):
    """The toy log joint with log p = -inf at data point `point`, for `samples` (or all)."""

    def log_joint_of(mu, x):
        base = toy.make_log_joint(mu, x)

        def log_joint(z):
            lp = base(z)
            hit = np.zeros(lp.shape, bool)
            hit[slice(None) if samples is None else samples, point] = True
            return tf.where(tf.constant(hit), tf.constant(-INF, lp.dtype), lp)

        return log_joint

    return log_joint_of


@pytest.mark.parametrize(("name", "objective"), _objectives_with_two_weights())
def test_a_data_point_without_any_weight_has_bound_minus_inf_loss_plus_inf_and_no_gradient(
    name, objective
):
    """Every weight of data point 1 zero: its bound is -inf, its ESS 0 and the loss +inf;
    the gradient is the other points' alone: 2/3 of that of the batch without point 1
    (per-example seeds draw the same samples for points 0 and 2 in both batches)."""
    skip_unless_gaussian_q(objective)
    _, _, _, x = _parameters()
    result, grads = _run(objective, x, _cut(1))
    assert result.bound.numpy()[1] == -INF
    assert result.ess.numpy()[1] == 0.0
    assert result.loss.numpy() == INF
    kept, kept_grads = _run(
        objective, x[[0, 2]], toy.make_log_joint, tf.gather(POINT_SEEDS, [0, 2])
    )
    np.testing.assert_allclose(result.bound.numpy()[[0, 2]], kept.bound.numpy(), rtol=1e-12)
    for grad, expected in zip(grads, kept_grads, strict=True):
        np.testing.assert_allclose(grad, 2 / 3 * expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(("name", "objective"), _objectives_with_two_weights())
def test_one_zero_weight_is_finite_except_for_the_objectives_averaging_log_w(name, objective):
    """Sample 0 of data point 2 has weight 0: the loss and bound stay finite, the bound of
    the IWAE family being log((1/K) sum of the other weights), unless the objective
    averages log w over samples (VAE, CIWAE with beta > 0, TVO's left sum, whose beta = 0
    term is the ELBO: -inf, loss +inf)."""
    skip_unless_gaussian_q(objective)
    _, _, _, x = _parameters()
    result, grads = _run(objective, x, _cut(2, [0]))
    log_w = result.log_weights.numpy()
    assert log_w[0, 2] == -INF and np.isfinite(log_w[1:]).all() and np.isfinite(log_w[:, :2]).all()
    if name in ("vae", "ciwae", "tvo"):
        assert result.bound.numpy()[2] == -INF and result.loss.numpy() == INF
    else:  # MIWAE(2, 3): the group of sample 0 keeps two weights
        assert np.isfinite(result.bound.numpy()).all() and np.isfinite(result.loss.numpy())
        assert all(np.isfinite(g).all() for g in grads)
    if name in ("iwae", "piwae", "rws", "stl", "dreg", "vimco"):
        expected = np.logaddexp.reduce(log_w[1:, 2]) - np.log(6)  # the mean over all K = 6
        np.testing.assert_allclose(result.bound.numpy()[2], expected, rtol=1e-12)


def test_two_samples_one_zero_weight_iwae_is_finite_jvi_plus_inf_vimco_not_finite():
    """K = 2, one zero weight: IWAE's bound is log(w/2); JVI's estimate is +inf, its limit
    (2 L_2 - (1/2)(log w + log 0)), so its loss is -inf; VIMCO's learning signal is
    infinite (the other sample's geometric-mean baseline is log 0): loss NaN. Both are
    non-finite steps, which the Keras model skips (documented on the classes)."""
    _, _, _, x = _parameters()
    iwae, _ = _run(mco.IWAE(2), x, _cut(0, [1]))
    log_w = iwae.log_weights.numpy()[0, 0]
    np.testing.assert_allclose(iwae.bound.numpy()[0], log_w - np.log(2), rtol=1e-12)
    assert np.isfinite(iwae.loss.numpy())
    jvi, _ = _run(mco.JVI(2), x, _cut(0, [1]))
    assert jvi.bound.numpy()[0] == INF and jvi.loss.numpy() == -INF
    vimco, grads = _run(mco.VIMCO(2), x, _cut(0, [1]))
    assert np.isfinite(vimco.bound.numpy()).all() and np.isnan(vimco.loss.numpy())
    assert not all(np.isfinite(g).all() for g in grads)


def test_a_piwae_group_of_zero_weights_gives_no_inference_gradient():
    """PIWAE(2, 3) with group 0 of data point 0 all zero: the bound is the IWAE bound of
    the other three weights (over K = 6), the model gradient IWAE's, and the inference
    gradient the other group's MIWAE term alone (divided by M = 2), by hand."""
    mu, A, b, x = _parameters()
    objective = mco.PIWAE(2, 3)
    result, (d_mu, d_A, d_b) = _run(objective, x, _cut(0, [0, 1, 2]))
    q = toy.make_q(tf.constant(A), tf.constant(b), tf.constant(x))
    z = mco.sampling.sample(q, 6, POINT_SEEDS).numpy()
    eps = (z - (x @ A.T + b)) / toy.SIGMA
    outs = []
    for n in range(B):
        point = reference.Point(mu, A, b, x[n], eps[:, n], toy.SIGMA)
        if n == 0:
            point.log_w[:3] = -np.inf
            groups = [np.arange(3, 6)]
        else:
            groups = [np.arange(0, 3), np.arange(3, 6)]
        value, theta, _, _ = reference._iwae_terms(point, np.arange(6))
        phi = sum(reference._iwae_terms(point, g)[2] for g in groups) / 2
        outs.append(point.out(value, theta, phi))
    np.testing.assert_allclose(result.bound.numpy(), [o[0] for o in outs], rtol=RTOL)
    for grad, i in zip((d_mu, d_A, d_b), (1, 2, 3), strict=True):
        expected = -np.mean([o[i] for o in outs], axis=0)
        np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "objective",
    [mco.IWAE(6), mco.DReG(6, alpha=0.3), mco.STL(6), mco.RWS(6), mco.VIMCO(6), mco.JVI(6)],
    ids=lambda o: type(o).__name__,
)
def test_a_zero_weight_is_the_limit_of_a_vanishing_weight(objective):
    """log p = -inf for two samples gives the numbers of log p - 1e6 for them (a weight
    that underflows to 0, computed with finite arithmetic only), to 1e-12."""
    _, _, _, x = _parameters()

    def shifted(point, samples):
        def log_joint_of(mu, x):
            base = toy.make_log_joint(mu, x)

            def log_joint(z):
                lp = base(z)
                hit = np.zeros(lp.shape)
                hit[samples, point] = 1e6
                return lp - tf.constant(hit, lp.dtype)

            return log_joint

        return log_joint_of

    zero, zero_grads = _run(objective, x, _cut(1, [0, 3]))
    tiny, tiny_grads = _run(objective, x, shifted(1, [0, 3]))
    np.testing.assert_allclose(zero.loss.numpy(), tiny.loss.numpy(), rtol=1e-12)
    np.testing.assert_allclose(zero.bound.numpy(), tiny.bound.numpy(), rtol=1e-12)
    for a, b in zip(zero_grads, tiny_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def _bounded_prior_case(prior, q_scale=1.5):
    """IWAE(16) on a one-dimensional model with `prior` and a N(z, 1) likelihood."""
    x = tf.constant([[0.3], [-0.4]], tf.float64)
    loc = tf.Variable(tf.constant([[0.2], [-0.1]], tf.float64))
    q = tfd.Independent(tfd.Normal(loc, tf.constant(q_scale, tf.float64)), 1)
    log_joint = mco.make_log_joint(
        tfd.Independent(prior, 1), lambda z: tfd.Independent(tfd.Normal(z, 1.0), 1), x
    )
    with tf.GradientTape() as tape:
        result = mco.IWAE(16)(q, log_joint, seed=3)
    grad = tape.gradient(result.loss, loc)
    z = mco.sampling.sample(q, 16, 3)
    log_w = (
        prior.log_prob(z[..., 0]).numpy()
        + tfd.Normal(z, 1.0).log_prob(x)[..., 0].numpy()
        - q.log_prob(z).numpy()
    )
    return result, grad, log_w


@pytest.mark.parametrize(
    "prior",
    [
        tfd.Uniform(tf.constant([-1.0], tf.float64), tf.constant([1.0], tf.float64)),
        tfd.TruncatedNormal(
            tf.constant([0.0], tf.float64), tf.constant([1.0], tf.float64), -0.5, 2.0
        ),
        tfd.MixtureSameFamily(
            tfd.Categorical(probs=tf.constant([[0.3, 0.7]], tf.float64)),
            tfd.Uniform(
                tf.constant([[-1.0, 0.0]], tf.float64), tf.constant([[0.5, 1.2]], tf.float64)
            ),
        ),
    ],
    ids=["uniform", "truncated-normal", "mixture-of-uniforms"],
)
def test_a_prior_of_bounded_support_gives_a_finite_loss_and_the_bound_of_its_weights(prior):
    """Samples outside a bounded prior's support have weight 0 (checked to happen): the
    loss is finite and the bound is log((1/K) sum of the nonzero weights), by NumPy."""
    result, grad, log_w = _bounded_prior_case(prior)
    assert np.isinf(log_w).any() and np.isfinite(log_w).any(axis=0).all()
    expected = np.logaddexp.reduce(log_w, axis=0) - np.log(16)
    np.testing.assert_allclose(result.bound.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(result.loss.numpy(), -expected.mean(), rtol=1e-12)
    assert np.isfinite(grad.numpy()).all()


def test_a_decoder_probability_of_exactly_zero_is_a_zero_weight():
    """Bernoulli pixels with probability exactly 0 where x = 1: those samples' weights are
    0; IWAE's loss is finite and its gradient w.r.t. q's parameters finite."""
    x = tf.constant([[1.0, 0.0], [1.0, 1.0]], tf.float64)
    loc = tf.Variable(tf.zeros([2, 1], tf.float64))
    q = tfd.Independent(tfd.Normal(loc, tf.constant(1.0, tf.float64)), 1)

    def likelihood(z):  # p(x_1 = 1) = 0 where z < 0
        p = tf.where(z[..., :1] < 0, tf.zeros_like(z[..., :1]), tf.sigmoid(z[..., :1]))
        return tfd.Independent(tfd.Bernoulli(probs=tf.concat([p, p], -1), dtype=tf.float64), 1)

    prior = tfd.Independent(tfd.Normal(tf.zeros([1], tf.float64), 1.0), 1)
    with tf.GradientTape() as tape:
        result = mco.IWAE(8)(q, mco.make_log_joint(prior, likelihood, x), seed=5)
    assert np.isinf(result.log_weights.numpy()).any()
    finite = np.where(np.isinf(result.log_weights.numpy()), -np.inf, result.log_weights.numpy())
    expected = np.logaddexp.reduce(finite, axis=0) - np.log(8)
    np.testing.assert_allclose(result.bound.numpy(), expected, rtol=1e-12)
    assert np.isfinite(result.loss.numpy())
    assert np.isfinite(tape.gradient(result.loss, loc).numpy()).all()


# Eagerly by default; in a graph (the estimate's while loop) with -m slow.
@pytest.mark.parametrize("mode", mode_params(MODES, slow=GRAPH_MODES))
def test_log_marginal_estimate_leaves_zero_weights_out_and_is_minus_inf_without_any(mode):
    """log p^(x) with a Uniform(-1, 1) prior: log((1/K) sum of the nonzero weights) over
    the replayed chunks; a data point none of whose samples is in the support: -inf."""
    x = tf.constant([[0.2], [5.0]], tf.float64)
    loc = tf.constant([[0.0], [30.0]], tf.float64)  # point 1: every sample outside [-1, 1]
    q = tfd.Independent(tfd.Normal(loc, tf.constant(1.0, tf.float64)), 1)
    prior = tfd.Independent(
        tfd.Uniform(tf.constant([-1.0], tf.float64), tf.constant([1.0], tf.float64)), 1
    )
    log_joint = mco.make_log_joint(prior, lambda z: tfd.Independent(tfd.Normal(z, 1.0), 1), x)
    estimate = in_mode(
        lambda: mco.log_marginal_estimate(q, log_joint, 4, num_samples=50, chunk_size=20), mode
    )().numpy()
    seeds = tf.random.experimental.stateless_split(mco.sampling.stateless_seed(4), 3)
    log_w = np.concatenate(
        [
            (lambda z: (log_joint(z) - q.log_prob(z)).numpy())(mco.sampling.sample(q, n, s))
            for n, s in zip((20, 20, 10), seeds, strict=True)
        ]
    )
    assert np.isinf(log_w[:, 0]).any() and np.isfinite(log_w[:, 0]).any()
    np.testing.assert_allclose(
        estimate[0], np.logaddexp.reduce(log_w[:, 0]) - np.log(50), rtol=1e-12
    )
    assert estimate[1] == -INF


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's 0/0 in the empty column
def test_weight_functions_of_zero_weights():
    """normalized_weights, effective_sample_size, log_mean_exp and leave_one_out_logsumexp
    with zero weights: the limits, by hand; every weight zero gives 0, 0, -inf, -inf."""
    lw = np.array([[0.0, -INF, -INF], [1.0, -INF, 2.0], [-INF, -INF, 2.0]])  # [S=3, B=3]
    w = np.exp(lw)
    normalized = mco.weights.normalized_weights(tf.constant(lw)).numpy()
    np.testing.assert_allclose(normalized[:, [0, 2]], (w / w.sum(0))[:, [0, 2]], rtol=1e-12)
    np.testing.assert_array_equal(normalized[:, 1], 0.0)
    ess = mco.weights.effective_sample_size(tf.constant(lw)).numpy()
    np.testing.assert_allclose(ess[[0, 2]], (w.sum(0) ** 2 / (w**2).sum(0))[[0, 2]], rtol=1e-12)
    assert ess[1] == 0.0
    lme = mco.weights.log_mean_exp(tf.constant(lw)).numpy()
    np.testing.assert_allclose(lme[[0, 2]], np.log(w.mean(0))[[0, 2]], rtol=1e-12)
    assert lme[1] == -INF
    loo = mco.weights.leave_one_out_logsumexp(tf.constant(lw)).numpy()
    with np.errstate(divide="ignore"):
        brute = np.log(
            np.array(
                [[w[[j for j in range(3) if j != i], n].sum() for n in range(3)] for i in range(3)]
            )
        )
    np.testing.assert_allclose(loo, brute, rtol=1e-12)


@pytest.mark.parametrize("objective", [mco.IWAE(16), mco.DReG(16), mco.VIMCO(16)], ids=repr)
def test_the_keras_model_trains_a_uniform_prior_model_without_skipping_steps(objective):
    """A uniform prior on [-2, 2]^2 (samples outside it have weight 0): 15 fit steps, no
    step skipped as non-finite, a finite loss. Before zero weights were exact, every
    such step had a NaN loss and fit stopped with a FloatingPointError."""
    keras.utils.set_random_seed(0)
    images = (np.random.default_rng(0).random((60, 12)) > 0.5).astype("float32")
    model = mco.ImportanceWeightedAutoencoder(
        encoder=mco.networks.GaussianEncoder(latent_size=2, hidden_units=(8,)),
        decoder=mco.networks.BernoulliDecoder(event_size=12, hidden_units=(8,)),
        prior=tfd.Independent(tfd.Uniform(-2.0 * tf.ones(2), 2.0 * tf.ones(2)), 1),
        objective=objective,
        seed=1,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images, batch_size=4, epochs=1, verbose=0)
    assert int(model.nonfinite_steps.numpy()) == 0
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    "objective",
    [mco.DReG(6), mco.STL(6), mco.PIWAE(2, 3), mco.VRIWAE(6, dreg=True)],
    ids=lambda o: type(o).__name__,
)
def test_a_model_whose_backward_pass_is_nan_at_a_zero_weight_sends_z_no_nan(objective):
    """log p = log(1[z_0 < 0] * exp(z_0 - z_0)) + log N: its own backward pass at the
    cut samples is 0/0 = NaN on z. The objective sends those samples' z no gradient, so
    the gradients equal those of the same model written with tf.where (finite). (The
    SPLIT objectives: a TOTAL one, IWAE, differentiates log w in full, through the
    model's own backward pass.)"""
    _, _, _, x = _parameters()

    def product(mu, x):
        base = toy.make_log_joint(mu, x)

        def log_joint(z):
            inside = tf.cast(z[..., 0] < 0.0, z.dtype)
            return base(z) + tf.math.log(inside * tf.exp(z[..., 0] - z[..., 0]))

        return log_joint

    def masked(mu, x):
        base = toy.make_log_joint(mu, x)

        def log_joint(z):
            return tf.where(z[..., 0] < 0.0, base(z), tf.constant(-INF, tf.float64))

        return log_joint

    nan_model, nan_grads = _run(objective, x, product)
    clean, clean_grads = _run(objective, x, masked)
    assert np.isinf(clean.log_weights.numpy()).any()
    np.testing.assert_array_equal(nan_model.bound.numpy(), clean.bound.numpy())
    for a, b in zip(nan_grads, clean_grads, strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
