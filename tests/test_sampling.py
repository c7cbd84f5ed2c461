"""Tests of mcobjectives.sampling: reproducible reparameterized draws in every mode.

Seeds are stateless shape-[2] tensors unless a test is about Python int seeds. Draws
are compared across modes against eager execution: float64 to 1e-12 absolute plus
1e-10 relative (XLA's float64 ndtri differs from TensorFlow's kernel by ~1e-12
relative and up to ~1e-10 in the far tails, as the module documents), float32 to
1e-6. Statistical tests use fixed seeds, state their tolerance (in standard errors)
and print what they measured.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import sampling
from mcobjectives.sampling import bits as sampling_bits
from mcobjectives.sampling import seeds as sampling_seeds
from tests.conftest import GRAPH_MODES, MODES, in_mode, mode_params, modes

tfd = tfp.distributions
tfb = tfp.bijectors

DTYPES = (tf.float32, tf.float64)
# The tests named "same in every mode" compare a graph's draws with the eager draws; the
# eager draws themselves are the subject of the other tests.
COMPARED_WITH_EAGER = modes(*GRAPH_MODES, reason="eager is the reference they are compared to")
SEED = tf.constant([1234, 5678], tf.int32)
OTHER_SEED = tf.constant([1234, 5679], tf.int32)
NUM_NORMALS = 200_000


def _run(fn, mode, *args):
    """`fn(*args)` in `mode`, converted to NumPy."""
    return tf.nest.map_structure(lambda t: t.numpy(), in_mode(fn, mode)(*args))


def _assert_same_draws(actual, expected, dtype):
    """Draws agree across modes: float64 to 1e-12 + 1e-10 relative, float32 to 1e-6."""
    if dtype == tf.float64:
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def _normal_cdf(x):
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * (1.0 + erf(np.asarray(x, np.float64) / math.sqrt(2.0)).astype(np.float64))


# --- standard_normal -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@COMPARED_WITH_EAGER
def test_standard_normal_same_in_every_mode(dtype, mode):
    """200k seeded draws in each mode have the requested shape and dtype and equal eager's."""
    shape = [400, 500]
    eager = sampling.standard_normal(shape, SEED, dtype).numpy()
    draws = _run(lambda: sampling.standard_normal(shape, SEED, dtype), mode)
    print(f"max |{mode} - eager| = {np.max(np.abs(draws - eager)):.3g}")
    for z in (eager, draws):
        assert z.shape == tuple(shape)
        assert z.dtype == dtype.as_numpy_dtype
    _assert_same_draws(draws, eager, dtype)


def _tail_bits(dtype):
    """Bit patterns reaching deep into both tails: words 0, 2^j, 2^32 - 1 - 2^j and 2^32 - 1.

    float64 draws take their high bits from the first word and low bits from the second,
    so pairing every pattern with every pattern reaches u ~ 2^-53 and 1 - 2^-53.
    """
    words = [0, *(2**j for j in range(32)), *(2**32 - 1 - 2**j for j in range(32)), 2**32 - 1]
    words = np.array(words, np.uint32)
    if dtype == tf.float32:
        return words
    return np.stack(np.meshgrid(words, words, indexing="ij"), axis=-1).reshape(-1, 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@COMPARED_WITH_EAGER
def test_standard_normal_tails_same_in_every_mode(dtype, mode, monkeypatch):
    """Draws deep in both tails agree with the eager draws in each mode."""
    bits = _tail_bits(dtype)
    # A captured eager tensor, not a constant: XLA would otherwise fold ndtri at compile time.
    captured = tf.convert_to_tensor(bits)
    monkeypatch.setattr(sampling_bits, "uint32_bits", lambda shape, seed: tf.identity(captured))
    num = bits.shape[0]
    eager = sampling.standard_normal([num], SEED, dtype).numpy()
    draws = _run(lambda: sampling.standard_normal([num], SEED, dtype), mode)
    worst = np.argmax(np.abs(draws - eager))
    print(f"max |{mode} - eager| = {abs(draws[worst] - eager[worst]):.3g} at z = {eager[worst]}")
    # The patterns reach z ~ -8.2 in float64 and ~ -5.4 in float32.
    assert np.all(np.isfinite(eager))
    assert np.min(eager) < (-8.0 if dtype == tf.float64 else -5.0)
    if dtype == tf.float64:
        # The module documents ~1e-10 relative in the far tails; 1.1e-10 is measured at
        # z = -5.78 (u ~ 4e-9), so the tolerance is 2e-10 relative.
        np.testing.assert_allclose(draws, eager, rtol=2e-10, atol=1e-12)
    else:
        _assert_same_draws(draws, eager, dtype)


@COMPARED_WITH_EAGER
def test_standard_normal_split_seeds_same_in_every_mode(mode):
    """Seeds from stateless_split (negative components included) give the eager draws."""
    seeds = tf.random.experimental.stateless_split(SEED, 8)
    assert np.any(seeds.numpy() < 0)
    eager = np.stack([sampling.standard_normal([50], s, tf.float64).numpy() for s in seeds])
    draws = _run(
        lambda: tf.stack([sampling.standard_normal([50], seeds[i], tf.float64) for i in range(8)]),
        mode,
    )
    print(f"max |{mode} - eager| per seed: {np.max(np.abs(draws - eager), axis=1)}")
    _assert_same_draws(draws, eager, tf.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_standard_normal_different_seeds_differ(dtype, mode):
    """Different seeds give different (uncorrelated) draws."""
    n = 10_000
    a, b = _run(
        lambda: (
            sampling.standard_normal([n], SEED, dtype),
            sampling.standard_normal([n], OTHER_SEED, dtype),
        ),
        mode,
    )
    corr = np.corrcoef(a, b)[0, 1]
    print(f"equal entries: {np.sum(a == b)}, correlation: {corr:.4f}")
    assert np.sum(a == b) == 0
    # Independent streams: correlation within 5 standard errors (1/sqrt(n)) of 0.
    assert abs(corr) < 5.0 / math.sqrt(n)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_standard_normal_moments(dtype, mode):
    """Mean and variance of 200k draws are those of N(0, 1)."""
    draws = _run(lambda: sampling.standard_normal([NUM_NORMALS], SEED, dtype), mode)
    draws = draws.astype(np.float64)
    mean, var = draws.mean(), draws.var(ddof=1)
    # Tolerance: 5 standard errors, 1/sqrt(n) for the mean and sqrt(2/n) for the variance.
    se_mean, se_var = 1.0 / math.sqrt(NUM_NORMALS), math.sqrt(2.0 / NUM_NORMALS)
    print(f"mean {mean:.5f} ({mean / se_mean:.2f} se), var {var:.5f} ({(var - 1) / se_var:.2f} se)")
    assert abs(mean) < 5.0 * se_mean
    assert abs(var - 1.0) < 5.0 * se_var


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_standard_normal_kolmogorov_smirnov(dtype, mode):
    """The KS statistic of 200k draws against the normal CDF is below 0.01."""
    draws = np.sort(_run(lambda: sampling.standard_normal([NUM_NORMALS], SEED, dtype), mode))
    cdf = _normal_cdf(draws)
    n = len(draws)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    # Tolerance 0.01: the 0.1% critical value for n = 200k is 1.95 / sqrt(n) ~ 0.0044.
    print(f"KS statistic {ks:.5f}")
    assert ks < 0.01


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_standard_normal_extreme_bits_are_finite(dtype, mode, monkeypatch):
    """All-zero and all-one random bits map to finite draws deep in the two tails."""
    ones = 0xFFFFFFFF
    # Two draws from all-zero bits, then two from all-one bits (float64 uses 2 words each).
    bits = np.array([0, 0, ones, ones], np.uint32)
    bits = np.repeat(bits[:, None], 2, axis=1) if dtype == tf.float64 else bits
    captured = tf.convert_to_tensor(bits)
    monkeypatch.setattr(sampling_bits, "uint32_bits", lambda shape, seed: tf.identity(captured))
    draws = _run(lambda: sampling.standard_normal([4], SEED, dtype), mode)
    print(f"all-zero bits -> {draws[0]}, all-one bits -> {draws[2]}")
    assert np.all(np.isfinite(draws))
    np.testing.assert_array_less(draws[:2], -5.0)
    np.testing.assert_array_less(5.0, draws[2:])


def test_standard_normal_rejects_other_dtypes():
    """Only float32 and float64 are supported."""
    with pytest.raises(TypeError, match="float32 or float64"):
        sampling.standard_normal([3], SEED, tf.float16)


def test_standard_normal_int_seed_replays(mode):
    """The same Python int seed gives the same draws on every call."""
    fn = in_mode(lambda: sampling.standard_normal([5], 7, tf.float64), mode)
    first, second = fn().numpy(), fn().numpy()
    print(first, second)
    np.testing.assert_array_equal(first, second)


@COMPARED_WITH_EAGER
def test_standard_normal_int_seed_same_in_every_mode(mode):
    """A Python int seed gives the eager draws in every mode."""
    eager = sampling.standard_normal([1000], 7, tf.float64).numpy()
    draws = _run(lambda: sampling.standard_normal([1000], 7, tf.float64), mode)
    _assert_same_draws(draws, eager, tf.float64)


# --- sample(q, n, seed): recognised families --------------------------------------------

B, D = 3, 2
LOC_B = np.array([0.5, -1.0, 2.0])
SCALE_B = np.array([0.5, 1.0, 2.0])
LOC_BD = np.array([[0.5, -1.0], [2.0, 0.0], [-0.3, 1.5]])
SCALE_BD = np.array([[0.5, 1.0], [2.0, 0.7], [1.3, 0.4]])
SCALE_TRIL = np.array(
    [[[1.0, 0.0], [0.5, 0.8]], [[2.0, 0.0], [-1.0, 0.5]], [[0.3, 0.0], [0.4, 1.5]]]
)
# Log-normal parameters small enough for the moments of 50k draws to be well behaved.
LOG_LOC_B, LOG_SCALE_B = np.array([0.2, -0.5, 0.0]), np.array([0.3, 0.2, 0.4])
LOG_LOC_BD, LOG_SCALE_BD = 0.3 * LOC_BD, 0.2 * SCALE_BD


def _eps(z, loc, scale):
    return (z - loc) / scale


def _grads_location_scale(z, c, p):
    eps = _eps(z, p["loc"], p["scale"])
    return {"loc": c.sum(0), "scale": (c * eps).sum(0)}


def _grads_sample(z, c, p):
    eps = _eps(z, p["loc"][:, None], p["scale"][:, None])
    return {"loc": c.sum((0, 2)), "scale": (c * eps).sum((0, 2))}


def _grads_mvn_diag(z, c, p):
    eps = _eps(z, p["loc"], p["scale_diag"])
    return {"loc": c.sum(0), "scale_diag": (c * eps).sum(0)}


def _grads_mvn_tril(z, c, p):
    centred = (z - p["loc"])[..., None]
    eps = np.linalg.solve(np.broadcast_to(p["scale_tril"], (*centred.shape[:-2], D, D)), centred)
    # z = loc + L eps: d z_i / d L_ij = eps_j on and below the diagonal; the upper triangle
    # of scale_tril is ignored by the distribution.
    return {"loc": c.sum(0), "scale_tril": np.tril(np.einsum("nbi,nbj->bij", c, eps[..., 0]))}


def _grads_exp(z, c, p):
    eps = _eps(np.log(z), p["loc"], p["scale"])
    return {"loc": (c * z).sum(0), "scale": (c * z * eps).sum(0)}


def _moments_mvn(q, p):
    return q.mean().numpy(), q.covariance().numpy()


def _moments_scalar(q, p):
    return q.mean().numpy()[..., None], q.variance().numpy()[..., None, None]


def _moments_independent(q, p):
    return q.mean().numpy(), np.vectorize(np.diag, signature="(d)->(d,d)")(q.variance().numpy())


def _moments_exp_independent(q, p):
    # Independent log-normals: mean exp(m + s^2/2), variance (exp(s^2) - 1) exp(2m + s^2).
    m, s2 = p["loc"], p["scale"] ** 2
    variance = (np.exp(s2) - 1.0) * np.exp(2.0 * m + s2)
    return np.exp(m + s2 / 2.0), np.vectorize(np.diag, signature="(d)->(d,d)")(variance)


# name -> (builder, parameters, event shape, expected gradients, analytic moments)
FAMILIES = {
    "normal": (
        lambda p: tfd.Normal(p["loc"], p["scale"]),
        {"loc": LOC_B, "scale": SCALE_B},
        [],
        _grads_location_scale,
        _moments_scalar,
    ),
    "independent": (
        lambda p: tfd.Independent(tfd.Normal(p["loc"], p["scale"]), reinterpreted_batch_ndims=1),
        {"loc": LOC_BD, "scale": SCALE_BD},
        [D],
        _grads_location_scale,
        _moments_independent,
    ),
    "sample": (
        lambda p: tfd.Sample(tfd.Normal(p["loc"], p["scale"]), [D]),
        {"loc": LOC_B, "scale": SCALE_B},
        [D],
        _grads_sample,
        _moments_independent,
    ),
    "mvn_tril": (
        lambda p: tfd.MultivariateNormalTriL(p["loc"], p["scale_tril"]),
        {"loc": LOC_BD, "scale_tril": SCALE_TRIL},
        [D],
        _grads_mvn_tril,
        _moments_mvn,
    ),
    "mvn_diag": (
        lambda p: tfd.MultivariateNormalDiag(p["loc"], p["scale_diag"]),
        {"loc": LOC_BD, "scale_diag": SCALE_BD},
        [D],
        _grads_mvn_diag,
        _moments_mvn,
    ),
    "exp_independent": (
        lambda p: tfd.TransformedDistribution(
            tfd.Independent(tfd.Normal(p["loc"], p["scale"]), reinterpreted_batch_ndims=1),
            tfb.Exp(),
        ),
        {"loc": LOG_LOC_BD, "scale": LOG_SCALE_BD},
        [D],
        _grads_exp,
        _moments_exp_independent,
    ),
    "lognormal": (
        lambda p: tfd.LogNormal(p["loc"], p["scale"]),
        {"loc": LOG_LOC_B, "scale": LOG_SCALE_B},
        [],
        _grads_exp,
        _moments_scalar,
    ),
}


def _params(family, dtype):
    return {k: tf.constant(v, dtype) for k, v in FAMILIES[family][1].items()}


def _build(family, params):
    return FAMILIES[family][0](params)


def _draw(family, dtype, mode, n):
    params = _params(family, dtype)
    return _run(lambda: sampling.sample(_build(family, params), n, SEED), mode)


@pytest.mark.parametrize("family", FAMILIES)
def test_recognised_families_support_stable_sampling(family):
    """Every listed family is sampled by the library's own reparameterization."""
    assert sampling.supports_stable_sampling(_build(family, _params(family, tf.float64)))


@pytest.mark.parametrize("family", FAMILIES)
@COMPARED_WITH_EAGER
def test_sample_same_in_every_mode(family, mode):
    """float32 and float64 draws have shape [n, B, *event] and equal the eager draws."""
    n = 1000
    params = [_params(family, dtype) for dtype in DTYPES]
    draws = _run(lambda: [sampling.sample(_build(family, p), n, SEED) for p in params], mode)
    for dtype, z in zip(DTYPES, draws, strict=True):
        eager = _draw(family, dtype, "eager", n)
        print(f"{dtype.name}: max |{mode} - eager| = {np.max(np.abs(z - eager)):.3g}")
        for draw in (eager, z):
            assert draw.shape == (n, B, *FAMILIES[family][2])
            assert draw.dtype == dtype.as_numpy_dtype
        _assert_same_draws(z, eager, dtype)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_moments(family, mode):
    """The mean and covariance of 50k float64 draws match the distribution's."""
    n = 50_000
    z = _draw(family, tf.float64, mode, n)
    z = z.reshape(n, B, -1)
    q = _build(family, _params(family, tf.float64))
    mean, cov = FAMILIES[family][4](q, FAMILIES[family][1])
    # Standard errors estimated from the draws: of the mean, std / sqrt(n); of each
    # covariance entry, the std of the products of deviations from the true mean / sqrt(n).
    centred = z - mean
    products = centred[..., :, None] * centred[..., None, :]
    z_mean = (z.mean(0) - mean) / (z.std(0, ddof=1) / math.sqrt(n))
    z_cov = (products.mean(0) - cov) / (products.std(0, ddof=1) / math.sqrt(n))
    print(
        f"max |mean error| {np.max(np.abs(z_mean)):.2f} se, "
        f"max |covariance error| {np.max(np.abs(z_cov)):.2f} se"
    )
    # Tolerance: every entry within 5 standard errors.
    assert np.max(np.abs(z_mean)) < 5.0
    assert np.max(np.abs(z_cov)) < 5.0


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_gradient_is_reparameterization(family, mode):
    """d sum(c * z) / d params matches the reparameterization formula z = T(params, eps)."""
    n = 100
    names = list(FAMILIES[family][1])
    c = np.random.default_rng(0).normal(size=(n, B, *FAMILIES[family][2]))

    def fn(*tensors):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            z = sampling.sample(_build(family, dict(zip(names, tensors, strict=True))), n, SEED)
            f = tf.reduce_sum(tf.constant(c) * z)
        return z, tape.gradient(f, list(tensors))

    z, grads = _run(fn, mode, *_params(family, tf.float64).values())
    expected = FAMILIES[family][3](z, c, FAMILIES[family][1])
    for name, grad in zip(names, grads, strict=True):
        assert grad is not None, name
        print(f"{name}: max |grad - formula| = {np.max(np.abs(grad - expected[name])):.3g}")
        np.testing.assert_allclose(grad, expected[name], rtol=1e-9, atol=1e-9, err_msg=name)


def test_sample_layout_matches_tfd_sample():
    """tfd.Sample draws are laid out [n, batch, sample_shape], as q.sample lays them out."""
    loc = tf.constant(LOC_B)
    scale = tf.constant([1e-3, 1e-3, 1e-3], tf.float64)
    z = sampling.sample(tfd.Sample(tfd.Normal(loc, scale), [D]), 5, SEED).numpy()
    # With a tiny scale each draw sits at its batch member's loc, whatever its sample index.
    np.testing.assert_allclose(z, np.broadcast_to(LOC_B[:, None], (5, B, D)), atol=0.01)


# --- sample(q, n, seed): discrete families ------------------------------------------------
# Bernoulli, Categorical and OneHotCategorical are drawn by the library's own samplers
# (logistic and Gumbel noise from its uniforms), not by q.sample: their frequencies,
# modes and per-example seeds are tested in tests/test_structured.py.

DISCRETE = {
    "bernoulli": lambda: tfd.Bernoulli(logits=tf.constant(LOC_B)),
    "independent_bernoulli": lambda: tfd.Independent(
        tfd.Bernoulli(probs=tf.constant(np.full([B, D], 0.4))), reinterpreted_batch_ndims=1
    ),
    "categorical": lambda: tfd.Categorical(logits=tf.constant(LOC_BD)),
    "one_hot_categorical": lambda: tfd.OneHotCategorical(probs=tf.constant([[0.3, 0.7]] * B)),
}


@pytest.mark.parametrize("family", DISCRETE)
def test_discrete_family_is_drawn_by_the_library_not_by_q_sample(family):
    """Discrete families are recognised, and their draws are not those of q.sample."""
    q = DISCRETE[family]()
    assert sampling.supports_stable_sampling(q)
    ours = sampling.sample(q, 200, SEED).numpy()
    theirs = q.sample(200, seed=tfp.random.sanitize_seed(SEED)).numpy()
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype == np.int32
    assert not np.array_equal(ours, theirs)


# --- sample(q, n, seed): fallback ---------------------------------------------------------

FALLBACKS = {
    "gamma": lambda: tfd.Independent(
        tfd.Gamma(tf.constant(np.full([B, D], 2.0)), 1.5), reinterpreted_batch_ndims=1
    ),
    "beta": lambda: tfd.Independent(
        tfd.Beta(tf.constant(np.full([B, D], 2.0)), 3.0), reinterpreted_batch_ndims=1
    ),
    "student_t": lambda: tfd.Independent(
        tfd.StudentT(3.0, tf.constant(LOC_BD), 1.0), reinterpreted_batch_ndims=1
    ),
    # The base has batch shape [] and the transformed distribution [B] (from the bijector).
    "transformed_batch_mismatch": lambda: tfd.TransformedDistribution(
        tfd.Normal(tf.constant(0.0, tf.float64), 1.0), tfb.Shift(tf.constant(LOC_B))
    ),
}


@pytest.mark.parametrize("family", FALLBACKS)
def test_unrecognised_family_is_not_stable(family):
    """Families the module does not reparameterize itself are reported as such."""
    assert not sampling.supports_stable_sampling(FALLBACKS[family]())


# Gamma, Beta and Student-t samplers take seconds to compile under XLA: there they run in
# the slow run only; the default run's XLA case of the fallback is the transformed
# distribution.
FALLBACK_MODES = [
    pytest.param(family, *param.values, id=f"{family}-{param.id}", marks=param.marks)
    for family in FALLBACKS
    for param in mode_params(MODES, slow=() if family == "transformed_batch_mismatch" else ("xla",))
]


@pytest.mark.parametrize(("family", "mode"), FALLBACK_MODES)
def test_unrecognised_family_falls_back_to_q_sample(family, mode):
    """sample(q, n, seed) is q.sample(n, seed=sanitize_seed(seed)) for other families."""

    def fn():
        q = FALLBACKS[family]()
        return (
            sampling.sample(q, 6, SEED),
            q.sample(6, seed=tfp.random.sanitize_seed(SEED)),
        )

    ours, theirs = _run(fn, mode)
    assert ours.shape == (6, B) + (() if family == "transformed_batch_mismatch" else (D,))
    np.testing.assert_array_equal(ours, theirs)


# --- replaying an objective's draws --------------------------------------------------------

# IWAE differentiates through z; PIWAE takes the split path (stop_gradient(z), inner tape).
OBJECTIVES = {"iwae": lambda: mco.IWAE(5), "piwae": lambda: mco.PIWAE(5, 1)}


def _toy_problem():
    """The toy Gaussian: z ~ N(mu, I), x | z ~ N(z, I); q offset from the posterior."""
    x = tf.constant(np.random.default_rng(1).normal(size=(B, 3)))
    mu = tf.constant([0.3, -0.2, 0.1], tf.float64)
    q = tfd.Independent(tfd.Normal(0.5 * (x + mu) + 0.2, 0.8), reinterpreted_batch_ndims=1)
    log_joint = mco.make_log_joint(
        tfd.MultivariateNormalDiag(mu, tf.ones_like(mu)),
        lambda z: tfd.MultivariateNormalDiag(z, tf.ones_like(z)),
        x,
    )
    return q, log_joint


def _replay(objective, seed):
    q, log_joint = _toy_problem()
    result = objective(q, log_joint, seed=seed)
    z = sampling.sample(q, objective.num_samples, seed)
    return result.log_weights, log_joint(z) - q.log_prob(z)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_uses_sample_draws(objective, mode):
    """An objective called with seed s uses exactly the draws sample(q, S, s)."""
    ours, replayed = _run(lambda: _replay(OBJECTIVES[objective](), SEED), mode)
    assert ours.shape == (5, B)
    np.testing.assert_allclose(ours, replayed, rtol=1e-12, atol=1e-12)


def test_objective_int_seed_replays(mode):
    """An objective called twice with the same Python int seed uses the same draws."""

    def fn():
        q, log_joint = _toy_problem()
        return mco.IWAE(5)(q, log_joint, seed=7).log_weights

    fn = in_mode(fn, mode)
    first, second = fn().numpy(), fn().numpy()
    np.testing.assert_allclose(first, second, rtol=1e-12, atol=1e-12)


# --- seeds: which seeds are accepted, and which stream each gives --------------------------

_M64 = 2**64 - 1
_GAMMA = 0x9E3779B97F4A7C15


def _mix64_reference(z: int) -> int:
    """SplitMix64's finalizer in Python integers (Steele, Lea, Flood 2014)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _stream_reference(seed, counters) -> list[int]:
    """The high 32 bits of SplitMix64 outputs `counters` for an int32 seed [2], in Python."""
    key = _mix64_reference(((int(seed[0]) & 0xFFFFFFFF) << 32) | (int(seed[1]) & 0xFFFFFFFF))
    return [_mix64_reference((key + c * _GAMMA) & _M64) >> 32 for c in counters]


@pytest.mark.parametrize("seed", [[1234, 5678], [-7, 2**31 - 1], [-(2**31), 0]], ids=str)
def test_bits_are_splitmix64_of_the_seed(seed):
    """The draws' bits are SplitMix64 outputs 1, 2, ... keyed by the seed's two int32s,
    checked against a pure-Python SplitMix64: the stream is pinned, not only self-consistent."""
    bits = sampling_bits.uint32_bits([2, 3], tf.constant(seed, tf.int32)).numpy()
    assert bits.reshape(-1).tolist() == _stream_reference(seed, range(1, 7))


def test_counters_of_draws_of_2_31_numbers_or_more_do_not_wrap():
    """K * B * D >= 2**31: the number of elements is counted in int64, and counters past
    2**31 and 2**32 give SplitMix64's outputs there (a draw that large is not run here:
    it would take 8 GiB per float32 tensor)."""
    assert int(sampling_bits._num_elements([2**16, 2**16])) == 2**32
    assert int(sampling_bits._num_elements([3, 2**15, 2**16])) == 3 * 2**31
    seed = [1234, 5678]
    key = sampling_bits.seed_keys(tf.constant(seed, tf.int32))
    counters = [1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 1, 3 * 2**31, 2**40]
    bits = sampling_bits._stream_bits(key, tf.constant(counters, tf.int64)).numpy()
    assert bits.tolist() == _stream_reference(seed, counters)
    assert len(set(bits.tolist())) == len(counters)


def test_a_draw_of_more_than_2_31_numbers_traces_with_its_static_shape():
    """standard_normal of 2**31 + 2**16 numbers builds its graph (traced in "function" mode
    only: running it, eagerly or not, would take 8 GiB)."""
    shape = [2**16, 2**15 + 1]
    draw = in_mode(lambda: sampling.standard_normal(shape, SEED), "function")
    traced = draw.get_concrete_function()
    assert traced.structured_outputs.shape.as_list() == shape


# Seeds inside the int32 range, in other integer dtypes: each is its int32 seed.
_INT32_RANGE_SEEDS = {
    "int64": np.array([-(2**31), 2**31 - 1], np.int64),
    "int64-tensor": tf.constant([-7, 99], tf.int64),
    "int16": np.array([-3, 4], np.int16),
    "uint8": np.array([200, 4], np.uint8),
    "uint32-tensor": tf.constant([2**31 - 1, 0], tf.uint32),
    "list": [-(2**31), 5],
    "variable": tf.Variable([12, -13], dtype=tf.int64),
}


@pytest.mark.parametrize("seed", _INT32_RANGE_SEEDS.values(), ids=_INT32_RANGE_SEEDS)
def test_seeds_inside_the_int32_range_are_their_int32_seed(seed):
    expected = np.asarray(tf.convert_to_tensor(seed)).astype(np.int32)
    np.testing.assert_array_equal(sampling.stateless_seed(seed).numpy(), expected)
    np.testing.assert_array_equal(
        sampling.standard_normal([6], seed).numpy(),
        sampling.standard_normal([6], tf.constant(expected)).numpy(),
    )


# Seeds outside the int32 range, and the int32-range seeds their low bits would be.
_WIDE_SEEDS = [
    [2**40, 3],
    [2**41, 3],
    [2**40 + 2**32, 3],
    [3, 2**40],
    [-(2**40), 3],
    [2**31, 3],
    [2**32 - 1, 0],
    [2**63 - 1, -(2**63)],
    [-(2**63), 2**63 - 1],
]
_THEIR_LOW_BITS = [[0, 3], [3, 0], [-(2**31), 3], [-1, 0], [-1, 0]]


def test_seeds_outside_the_int32_range_give_streams_of_their_own():
    """[2**40, 3] is not truncated to [0, 3]: every seed here gives its own int32 seed."""
    seeds = [tuple(sampling.stateless_seed(s).numpy().tolist()) for s in _WIDE_SEEDS]
    print(seeds)
    assert len(set(seeds)) == len(_WIDE_SEEDS)
    assert not set(seeds) & {tuple(s) for s in _THEIR_LOW_BITS}
    for low_bits in _THEIR_LOW_BITS:  # an int32-range seed is itself
        assert sampling.stateless_seed(low_bits).numpy().tolist() == low_bits
    # A thousand seeds differing only above bit 31 give a thousand different seeds.
    many = tf.constant([[i * 2**32 + 7, 11] for i in range(1, 1001)], tf.int64)
    assert len({tuple(s) for s in sampling_seeds._int32_seeds(many).numpy().tolist()}) == 1000
    np.testing.assert_raises(
        AssertionError,
        np.testing.assert_array_equal,
        sampling.standard_normal([8], [2**40, 3]).numpy(),
        sampling.standard_normal([8], [0, 3]).numpy(),
    )


def test_scalar_tensor_seeds_beyond_2_62_give_streams_of_their_own():
    """An int64 scalar tensor maps as the int would; beyond [0, 2**62) (an int may not go
    there) it is not truncated either."""
    for value in (0, 5, 2**40, 2**62 - 1):
        np.testing.assert_array_equal(
            sampling.stateless_seed(tf.constant(value, tf.int64)).numpy(),
            sampling.stateless_seed(value).numpy(),
        )
    wide = [tf.constant(v, tf.int64) for v in (2**62, 2**62 + 2**31, -(2**62) - 1, 2**63 - 1)]
    seeds = {tuple(sampling.stateless_seed(s).numpy().tolist()) for s in wide}
    assert len(seeds) == len(wide)


@COMPARED_WITH_EAGER
def test_wide_seeds_same_in_every_mode(mode):
    """The hash of a seed outside the int32 range is integer arithmetic: the same seed and
    random bits eagerly, in tf.function and under XLA, also from a symbolic int64 tensor."""
    wide = tf.constant(_WIDE_SEEDS, tf.int64)
    eager = sampling_seeds._int32_seeds(wide).numpy()
    fn = in_mode(lambda s: sampling_seeds._int32_seeds(s), mode)
    np.testing.assert_array_equal(fn(wide).numpy(), eager)
    bits = in_mode(lambda s: sampling_bits.uint32_bits([5], sampling.stateless_seed(s)), mode)
    np.testing.assert_array_equal(
        bits(wide[0]).numpy(), sampling_bits.uint32_bits([5], tf.constant(eager[0])).numpy()
    )


def test_per_example_seeds_outside_the_int32_range_are_read_row_by_row():
    """Each row of int64 per-example seeds is the seed `stateless_seed` makes of it alone,
    so data point b draws what a batch of b alone with that seed would."""
    rows = np.array([[2**40, 3], [0, 3], [-5, 2**35], [-5, 8]], np.int64)
    q = tfd.Independent(tfd.Normal(tf.zeros([4, 2], tf.float64), 1.0), 1)
    draws = sampling.sample(q, 3, rows).numpy()
    for b, row in enumerate(rows):
        alone = tfd.Independent(tfd.Normal(tf.zeros([1, 2], tf.float64), 1.0), 1)
        seed = sampling.stateless_seed(row)
        np.testing.assert_array_equal(
            draws[:, b], sampling.sample(alone, 3, seed[None]).numpy()[:, 0]
        )
    assert not np.array_equal(draws[:, 0], draws[:, 1])  # [2**40, 3] is not [0, 3]
