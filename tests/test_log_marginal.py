"""Tests of mcobjectives.log_marginal_estimate on the toy Gaussian (float64).

z ~ N(mu, I), x | z ~ N(z, I), so p(x) = N(x; mu, 2 I) and the posterior is
N((x + mu) / 2, I / 2); q = N((x + mu) / 2 + 0.2, (2/3) I) is offset from it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import sampling
from tests import toy
from tests.conftest import MODES, in_mode

B, D = 4, 3
SEED = tf.constant([42, 7], tf.int32)
MU = np.array([0.3, -0.2, 0.1])
X = np.random.default_rng(0).normal(size=(B, D))
OFFSET = 0.2
# KL(q || posterior) per data point: D/2 (sigma_q^2 / sigma_p^2 + offset^2 / sigma_p^2 - 1
# + log(sigma_p^2 / sigma_q^2)), with sigma_q^2 = 2/3 and sigma_p^2 = 1/2.
KL = 0.5 * D * ((2 / 3) / 0.5 + OFFSET**2 / 0.5 - 1.0 + math.log(0.5 / (2 / 3)))


def _problem():
    """(q, log_joint) of the toy Gaussian, built from fixed float64 tensors."""
    mu, x = tf.constant(MU), tf.constant(X)
    q = toy.make_q(tf.constant(0.5 * np.eye(D)), 0.5 * mu + OFFSET, x)
    return q, toy.make_log_joint(mu, x)


def _exact_log_marginal():
    """log N(x; mu, 2 I) per data point."""
    return np.sum(-0.5 * np.log(2 * np.pi * 2.0) - (X - MU) ** 2 / 4.0, axis=1)


@functools.cache
def _estimate(mode, num_samples, chunk_size):
    """The library's estimate in `mode` (cached: tests share compiled graphs and values)."""

    def fn():
        q, log_joint = _problem()
        return mco.log_marginal_estimate(q, log_joint, SEED, num_samples, chunk_size)

    return in_mode(fn, mode)().numpy()


def _chunk_lengths(num_samples, chunk_size):
    chunk = min(chunk_size, num_samples)
    full, remainder = divmod(num_samples, chunk)
    return [chunk] * full + ([remainder] if remainder else [])


def _log_mean_exp(log_w):
    m = np.max(log_w, axis=0)
    return m + np.log(np.mean(np.exp(log_w - m), axis=0))


@functools.cache
def _direct(num_samples, chunk_size):
    """The unchunked estimate from the same draws, replayed chunk by chunk (eagerly)."""
    q, log_joint = _problem()
    lengths = _chunk_lengths(num_samples, chunk_size)
    seeds = tf.random.experimental.stateless_split(tfp.random.sanitize_seed(SEED), len(lengths))
    log_w = []
    for i, n in enumerate(lengths):
        z = sampling.sample(q, n, seeds[i])
        log_w.append((log_joint(z) - q.log_prob(z)).numpy())
    log_w = np.concatenate(log_w, axis=0)
    assert log_w.shape == (num_samples, B)
    return _log_mean_exp(log_w)


@functools.cache
def _direct_vectorized(num_samples, chunk_size):
    """As _direct, with the full chunks drawn under tf.map_fn in a tf.function (fast)."""
    q, log_joint = _problem()
    lengths = _chunk_lengths(num_samples, chunk_size)
    seeds = tf.random.experimental.stateless_split(tfp.random.sanitize_seed(SEED), len(lengths))
    full = num_samples // chunk_size

    def log_weights(n, seed):
        z = sampling.sample(q, n, seed)
        return log_joint(z) - q.log_prob(z)

    @tf.function
    def full_chunks(chunk_seeds):
        return tf.map_fn(
            lambda s: log_weights(chunk_size, s),
            chunk_seeds,
            fn_output_signature=tf.TensorSpec([chunk_size, B], tf.float64),
        )

    log_w = [full_chunks(seeds[:full]).numpy().reshape(full * chunk_size, B)]
    if len(lengths) > full:
        log_w.append(log_weights(lengths[-1], seeds[full]).numpy())
    return _log_mean_exp(np.concatenate(log_w, axis=0))


# (a) chunked == direct --------------------------------------------------------------------


# Under XLA only the remainder case is run: each XLA while loop takes seconds to compile.
CHUNK_MODES = [
    (chunk_size, mode)
    for chunk_size in (100, 300, 1000, 5000)
    for mode in MODES
    if mode != "xla" or chunk_size == 300
]


@pytest.mark.parametrize(
    ("chunk_size", "mode"),
    [pytest.param(c, m, id=f"{c}-{m}") for c, m in CHUNK_MODES],
)
def test_chunked_equals_direct(chunk_size, mode):
    """Chunks that divide K, leave a remainder, or exceed K: the unchunked value of the draws."""
    out = _estimate(mode, 1000, chunk_size)
    expected = _direct(1000, chunk_size)
    print(f"chunk_size {chunk_size}: max |chunked - direct| {np.max(np.abs(out - expected)):.3g}")
    assert out.shape == (B,)
    np.testing.assert_allclose(out, expected, rtol=0.0, atol=1e-10)


@pytest.mark.parametrize(
    ("chunk_size", "mode"),
    [pytest.param(c, m, id=f"{c}-{m}") for c, m in CHUNK_MODES if c in (100, 300)],
)
def test_chunking_changes_only_the_draws(chunk_size, mode):
    """Against one chunk of K = 1000: the change is that of the direct values (log K cancels)."""
    out = _estimate(mode, 1000, chunk_size) - _estimate(mode, 1000, 1000)
    expected = _direct(1000, chunk_size) - _direct(1000, 1000)
    print(f"chunk_size {chunk_size}: max |error| {np.max(np.abs(out - expected)):.3g}")
    np.testing.assert_allclose(out, expected, rtol=0.0, atol=1e-10)


# (b) accuracy ---------------------------------------------------------------------------------


def test_close_to_exact_log_marginal(mode):
    """With K = 5000 the estimate is within 0.05 of log N(x; mu, 2 I) for every data point."""
    out = _estimate(mode, 5000, 500)
    error = out - _exact_log_marginal()
    print(f"estimate - log p(x): {error}")
    # Tolerance 0.05: the chi-square divergence of q from the posterior is
    # r = 1.0836**D - 1 = 0.272 (per-dimension closed form), so the estimate has standard
    # deviation ~sqrt(r / K) = 0.0074 and bias ~-r / (2K) = -3e-5: 0.05 is ~7 sd.
    np.testing.assert_array_less(np.abs(error), 0.05)


def test_above_single_sample_bound(mode):
    """The estimate exceeds the IWAE(K=1) bound averaged over 2000 draws (the ELBO)."""

    def fn():
        q, log_joint = _problem()
        # VAE(M) = MIWAE(M, 1): the mean of M independent IWAE(K=1) bounds.
        elbo = mco.VAE(2000)(q, log_joint, seed=tf.constant([1, 1])).bound
        return mco.log_marginal_estimate(q, log_joint, SEED, 5000, 500), elbo

    estimate, elbo = (t.numpy() for t in in_mode(fn, mode)())
    gap = estimate - elbo
    print(f"estimate - mean IWAE(1) bound: {gap} (KL(q || posterior) = {KL:.4f})")
    # The expected gap is KL = 0.188; the noise of both terms is ~0.013 (sd), so every
    # data point's gap must be positive and, on average, within 0.05 of KL.
    assert np.all(gap > 0.0)
    assert abs(np.mean(gap) - KL) < 0.05


# (c) modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_same_in_every_mode(mode):
    """Each mode gives the eager numbers (chunk_size 300 of K = 1000)."""
    eager = _estimate("eager", 1000, 300)
    out = _estimate(mode, 1000, 300)
    print(f"max |{mode} - eager| {np.max(np.abs(out - eager)):.3g}")
    np.testing.assert_allclose(out, eager, rtol=0.0, atol=1e-10)


# (d) bounded memory -----------------------------------------------------------------------------
# Eager execution runs the loop in Python at ~0.1 s per chunk (a minute for 715 chunks),
# so K = 5000 in chunks of 7 is run as a graph only; eager looping is covered by (a).

NUM_SAMPLES, SMALL_CHUNK = 5000, 7


@functools.cache
def _small_chunks(mode):
    """(value, op types of the graph, z shapes seen by log_joint) for K = 5000 in 7s."""
    traced = []

    def fn():
        q, log_joint = _problem()

        def recording_log_joint(z):
            traced.append(tuple(z.shape.as_list()))
            return log_joint(z)

        return mco.log_marginal_estimate(q, recording_log_joint, SEED, NUM_SAMPLES, SMALL_CHUNK)

    fn = in_mode(fn, mode)
    op_types = {op.type for op in fn.get_concrete_function().graph.get_operations()}
    return fn().numpy(), op_types, set(traced)


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_while_loop_bounds_memory(mode):
    """K = 5000 in chunks of 7: a graph while loop over [7, B, D] draws and a remainder."""
    _, op_types, traced = _small_chunks(mode)
    print(f"traced z shapes {traced}")
    assert op_types & {"While", "StatelessWhile"}
    # Only one chunk of draws (and the remainder, 5000 % 7 = 2) is ever materialized.
    assert traced == {(SMALL_CHUNK, B, D), (NUM_SAMPLES % SMALL_CHUNK, B, D)}


@pytest.mark.parametrize(
    "mode",
    ["function", "xla"],
)
def test_small_chunks_equal_direct(mode):
    """K = 5000 in 715 chunks of 7 equals the unchunked value of the same draws."""
    out = _small_chunks(mode)[0]
    expected = _direct_vectorized(NUM_SAMPLES, SMALL_CHUNK)
    print(f"max |chunked - direct| {np.max(np.abs(out - expected)):.3g}")
    np.testing.assert_allclose(out, expected, rtol=0.0, atol=1e-10)


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_small_chunks_change_only_the_draws(mode):
    """K = 5000 in chunks of 7 versus one chunk: the change is that of the direct values."""
    out = _small_chunks(mode)[0] - _estimate(mode, NUM_SAMPLES, NUM_SAMPLES)
    expected = _direct_vectorized(NUM_SAMPLES, SMALL_CHUNK) - _direct(NUM_SAMPLES, NUM_SAMPLES)
    print(f"max |error| {np.max(np.abs(out - expected)):.3g}")
    np.testing.assert_allclose(out, expected, rtol=0.0, atol=1e-10)


def test_vectorized_reference_matches_eager_reference():
    """The map_fn replay used for K = 5000 equals the eager chunk-by-chunk replay."""
    np.testing.assert_allclose(_direct_vectorized(103, 7), _direct(103, 7), atol=1e-12)


# Other properties ---------------------------------------------------------------------------


def test_no_gradient_flows(mode):
    """The estimate is cut from q's and the model's parameters."""

    def fn(mu, b):
        with tf.GradientTape() as tape:
            tape.watch([mu, b])
            x = tf.constant(X)
            q = toy.make_q(tf.constant(0.5 * np.eye(D)), b, x)
            value = mco.log_marginal_estimate(q, toy.make_log_joint(mu, x), SEED, 50, 20)
        grads = tape.gradient(value, [mu, b], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return value, grads

    value, grads = in_mode(fn, mode)(tf.constant(MU), tf.constant(0.5 * MU + OFFSET))
    assert np.all(np.isfinite(value.numpy()))
    for grad in grads:
        np.testing.assert_array_equal(grad.numpy(), 0.0)


def test_int_seed_replays(mode):
    """The same Python int seed gives the same estimate on every call."""

    def fn():
        q, log_joint = _problem()
        return mco.log_marginal_estimate(q, log_joint, 7, 20, 10)

    fn = in_mode(fn, mode)
    first, second = fn().numpy(), fn().numpy()
    np.testing.assert_array_equal(first, second)


# Structured and discrete q ----------------------------------------------------------------
# A mixture: c ~ Categorical(PI), n | c ~ N(MU_c, 1), x | n ~ N(n, 1). Then
# p(x) = sum_c PI_c N(x; MU_c, 2), p(c | x) ∝ PI_c N(x; MU_c, 2) and
# p(n | c, x) = N((MU_c + x) / 2, 1/2): with q that exact posterior (an int32 leaf c and a
# float64 leaf n), every weight is p(x).

PI = np.array([0.2, 0.5, 0.3])
MU = np.array([-2.0, 0.0, 1.5])
XS = np.array([-1.0, 0.3, 2.2, 4.0])


def _mixture_log_px():
    log_terms = np.log(PI) - 0.5 * np.log(2 * np.pi * 2.0) - (XS[:, None] - MU) ** 2 / 4.0
    return np.log(np.sum(np.exp(log_terms), axis=1))


def _mixture_problem(dtype):
    x = tf.constant(XS)
    mu, log_pi = tf.constant(MU), tf.constant(np.log(PI))
    std = tfp.distributions.Normal(tf.constant(0.0, tf.float64), 1.0)
    posterior_logits = log_pi + tfp.distributions.Normal(mu, math.sqrt(2.0)).log_prob(x[:, None])
    q = tfp.distributions.JointDistributionNamed(
        {
            "c": tfp.distributions.Categorical(logits=posterior_logits, dtype=dtype),
            "n": lambda c: tfp.distributions.Normal(
                (tf.gather(mu, c) + x) / 2.0, tf.constant(math.sqrt(0.5), tf.float64)
            ),
        }
    )

    def log_joint(z):
        c, n = z["c"], z["n"]
        return tf.gather(log_pi, c) + std.log_prob(n - tf.gather(mu, c)) + std.log_prob(x - n)

    return q, log_joint


@pytest.mark.parametrize(
    ("dtype", "mode"),
    [*((tf.int32, mode) for mode in MODES), (tf.int64, "eager")],
    ids=lambda v: getattr(v, "name", v),
)
def test_structured_q_with_a_discrete_leaf_gives_exact_log_marginal(dtype, mode):
    """q = p(c | x) p(n | c, x) (int c, float64 n): log p^(x) = log p(x) to 1e-10, with a
    while loop over chunks and a remainder (K = 25 in chunks of 10)."""

    def fn():
        q, log_joint = _mixture_problem(dtype)
        return mco.log_marginal_estimate(q, log_joint, SEED, 25, 10)

    out = in_mode(fn, mode)().numpy()
    print(f"estimate - log p(x) = {out - _mixture_log_px()}")
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _mixture_log_px(), rtol=0.0, atol=1e-10)


def test_discrete_q_log_marginal_estimate_has_the_dtype_of_log_q():
    """An int32 Bernoulli q with float64 logits gives a float64 estimate (not q.dtype)."""
    logits = tf.constant(np.zeros([2, 3]))
    q = tfp.distributions.Independent(tfp.distributions.Bernoulli(logits=logits), 1)
    out = mco.log_marginal_estimate(q, q.log_prob, SEED, 30, 7)
    assert q.dtype == tf.int32
    assert out.dtype == tf.float64
    # log_joint = log q: every weight is 1.
    np.testing.assert_allclose(out.numpy(), 0.0, atol=1e-12)


# active_units of structured latents ----------------------------------------------------------


def _means_with_variances(variances, n=400, seed=0):
    """[n, len(variances)] columns of exactly the given (population) variances."""
    z = np.random.default_rng(seed).normal(size=(n, len(variances)))
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    return z * np.sqrt(variances) + 1.0


def test_active_units_of_a_structure_counts_each_leaf(mode):
    """A dict and a list of [N, D_i] means give the same structure of int32 counts."""
    z1 = tf.constant(_means_with_variances([1e-4, 0.5, 2.0]))
    z2 = tf.constant(_means_with_variances([0.02, 5e-3], seed=1), tf.float32)

    def fn(z1, z2):
        return (
            mco.active_units({"z1": z1, "z2": z2}),
            mco.active_units([z1, z2], threshold=1e-3),
            mco.active_units(z1),
        )

    as_dict, as_list, single = in_mode(fn, mode)(z1, z2)
    assert set(as_dict) == {"z1", "z2"}
    assert {k: int(v) for k, v in as_dict.items()} == {"z1": 2, "z2": 1}
    assert isinstance(as_list, list)
    assert [int(v) for v in as_list] == [2, 2]
    assert single.shape == [] and int(single) == 2
    assert all(v.dtype == tf.int32 for v in [*as_dict.values(), *as_list, single])


def test_active_units_of_numpy_leaves_and_of_a_nested_list():
    """NumPy leaves are a structure; a nested list of numbers is one [N, D] array."""
    means = _means_with_variances([1e-4, 0.5])
    assert [int(c) for c in mco.active_units((means, means[:, :1]))] == [1, 0]
    assert int(mco.active_units(means.tolist())) == 1


def test_active_units_names_the_leaf_of_the_wrong_rank():
    """A leaf that is not [N, D] raises ValueError naming the leaf."""
    means = np.zeros([5, 2])
    with pytest.raises(ValueError, match=r"(?s)(?=.*'z2')(?=.*\[N, D\])"):
        mco.active_units({"z1": means, "z2": np.zeros([5])})
    with pytest.raises(ValueError, match=r"(?s)(?=.*'1')(?=.*\[N, D\])"):
        mco.active_units([means, np.zeros([5, 2, 1])])
    with pytest.raises(ValueError, match="threshold"):
        mco.active_units({"z1": means}, threshold=0.0)
