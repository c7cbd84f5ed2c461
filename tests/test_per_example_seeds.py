"""Tests of per-example seeds in mcobjectives.sampling: `sample(q, n, seeds)` with seeds [B, 2].

The module promises that data point b's draws come from its own seed alone, so they do
not depend on which other data points share the batch: sampling a batch, or its halves
with their seeds, gives the same z for every data point, in every execution mode. The
draws are `loc + scale * eps` (or a bijector of it) with eps depending only on the seed,
so draws are compared exactly (up to XLA's fused multiply-adds, see `_assert_same_draws`);
bounds and log weights, which sum over the event, to 1e-12. Statistical tests use fixed
seeds, state their tolerance in standard errors and print what they measured.
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import sampling
from tests.conftest import GRAPH_MODES, MODES, in_mode, modes, skip_unless_gaussian_q

tfd = tfp.distributions

B, D, N = 6, 3, 7
SPLIT = 2  # the batch is cut into [:SPLIT] and [SPLIT:]
_RNG = np.random.default_rng(20240611)
LOC = _RNG.normal(size=(B, D))
SCALE = _RNG.uniform(0.5, 2.0, size=(B, D))
SCALE_TRIL = np.tril(_RNG.normal(size=(B, D, D)), -1) + np.eye(D) * _RNG.uniform(
    0.5, 2.0, size=(B, 1, D)
)
# Seeds spanning the whole int32 range, negative components included.
SEEDS = _RNG.integers(-(2**31), 2**31 - 1, size=(B, 2)).astype(np.int32)

# Each family is built from the rows `rows` of the parameters, batch shape [len(rows)].
FAMILIES = {
    "independent_normal": lambda rows, dtype: tfd.Independent(
        tfd.Normal(tf.constant(LOC[rows], dtype), tf.constant(SCALE[rows], dtype)),
        reinterpreted_batch_ndims=1,
    ),
    "mvn_diag": lambda rows, dtype: tfd.MultivariateNormalDiag(
        tf.constant(LOC[rows], dtype), tf.constant(SCALE[rows], dtype)
    ),
    "mvn_tril": lambda rows, dtype: tfd.MultivariateNormalTriL(
        tf.constant(LOC[rows], dtype), tf.constant(SCALE_TRIL[rows], dtype)
    ),
    "sample_normal": lambda rows, dtype: tfd.Sample(
        tfd.Normal(tf.constant(LOC[rows, 0], dtype), tf.constant(SCALE[rows, 0], dtype)), [D]
    ),
}
DTYPES = (tf.float32, tf.float64)


def _run(fn, mode, *args):
    return tf.nest.map_structure(lambda t: t.numpy(), in_mode(fn, mode)(*args))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_recognised(family):
    """Per-example seeds need a family that the module reparameterizes itself."""
    assert sampling.supports_stable_sampling(FAMILIES[family](slice(None), tf.float64))


def _assert_same_draws(actual, expected, mode, err_msg=""):
    """Exactly equal, except that XLA may contract loc + scale * eps into a fused multiply-add
    for one q and not for another: under XLA draws then agree to an ulp (measured: 1 ulp)."""
    if mode == "xla":
        np.testing.assert_allclose(actual, expected, rtol=1e-15, atol=0, err_msg=err_msg)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=err_msg)


def _split_draws(make, dtype, seeds):
    """Draws of the full batch and of its two halves, each half with its own seeds."""
    return (
        sampling.sample(make(slice(None), dtype), N, seeds),
        sampling.sample(make(slice(0, SPLIT), dtype), N, seeds[:SPLIT]),
        sampling.sample(make(slice(SPLIT, None), dtype), N, seeds[SPLIT:]),
    )


def _check_split(family, dtype, full, first, second):
    msg = f"{family} {dtype.name}"
    assert full.shape == (N, B, D), msg
    assert full.dtype == dtype.as_numpy_dtype, msg
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1), full, err_msg=msg)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_invariant_to_splitting_the_batch(family, mode):
    """Draws of the full batch == the halves' draws (with their seeds) concatenated, exactly.

    float64 in every mode (one graph per family and mode; float32 below).
    """
    out = _run(lambda s: _split_draws(FAMILIES[family], tf.float64, s), mode, SEEDS)
    _check_split(family, tf.float64, *out)


@pytest.mark.parametrize("family", FAMILIES)
@modes(
    "eager",
    reason="the split comes from the per-example seeds whatever the dtype: float64 runs in "
    "every mode above, and tests/test_sampling.py compares float32 draws across modes",
)
def test_sample_invariant_to_splitting_the_batch_float32(family, mode):
    _check_split(
        family,
        tf.float32,
        *_run(lambda: _split_draws(FAMILIES[family], tf.float32, SEEDS), mode),
    )


def _single_example_draws(make, b, seeds):
    """Example b's draws from a q of batch [1] under seeds[b:b+1] and under seeds[b], and
    from the unbatched q of example b under seeds[b]."""
    q_b = make(slice(b, b + 1), tf.float64)
    return (
        sampling.sample(q_b, N, seeds[b : b + 1]),
        sampling.sample(q_b, N, seeds[b]),
        sampling.sample(make(b, tf.float64), N, seeds[b]),
    )


def _check_single(family, b, full, per_example, one_seed, unbatched, mode):
    msg = f"{family}, example {b}"
    assert per_example.shape == one_seed.shape == (N, 1, D), msg
    assert unbatched.shape == (N, D), msg
    _assert_same_draws(per_example[:, 0], full[:, b], mode, msg)
    _assert_same_draws(one_seed[:, 0], full[:, b], mode, msg)
    _assert_same_draws(unbatched, full[:, b], mode, msg)


@pytest.mark.parametrize("family", FAMILIES)
@modes("eager", reason="a trace per example and family: the graph modes check one, below")
def test_each_example_is_its_own_seed(family, mode):
    """Example b's draws equal a one-example q's draws under seeds[b] (every b).

    The per-example noise of example b is the standard normal stream of seeds[b] laid out
    [n, *event]; a q of batch [1] draws the same stream whether given seeds[b:b+1]
    (per-example, [1, 2]) or seeds[b] (one seed, [2]), and so does the unbatched q of
    that example. All of them therefore agree exactly.
    """
    make = FAMILIES[family]
    full = _run(lambda s: sampling.sample(make(slice(None), tf.float64), N, s), mode, SEEDS)
    for b in range(B):
        singles = _run(lambda s, b=b: _single_example_draws(make, b, s), mode, SEEDS)
        _check_single(family, b, full, *singles, mode)


@modes(*GRAPH_MODES, reason="eagerly: every example of every family, above")
def test_each_example_is_its_own_seed_in_graphs(mode):
    """The same in a graph, for the last example of an MVN-TriL batch."""
    make, b = FAMILIES["mvn_tril"], B - 1

    def fn(seeds):
        full = sampling.sample(make(slice(None), tf.float64), N, seeds)
        return full, *_single_example_draws(make, b, seeds)

    _check_single("mvn_tril", b, *_run(fn, mode, SEEDS), mode)


def test_sample_same_in_every_mode():
    """Per-example draws agree across eager, tf.function and XLA (float64, 1e-12 + 1e-10 rel)."""
    q_fn = FAMILIES["mvn_tril"]
    draws = {
        mode: _run(lambda s: sampling.sample(q_fn(slice(None), tf.float64), N, s), mode, SEEDS)
        for mode in MODES
    }
    for mode in GRAPH_MODES:
        np.testing.assert_allclose(draws[mode], draws["eager"], rtol=1e-10, atol=1e-12)


def test_equal_seeds_give_equal_draws_and_different_seeds_differ():
    """Two examples with the same seed and parameters draw the same z; other seeds differ."""
    q = tfd.Independent(tfd.Normal(tf.zeros([3, D], tf.float64), 1.0), reinterpreted_batch_ndims=1)
    seeds = tf.constant([[5, 9], [5, 9], [5, 10]], tf.int32)
    z = sampling.sample(q, N, seeds).numpy()
    np.testing.assert_array_equal(z[:, 0], z[:, 1])
    assert np.all(z[:, 0] != z[:, 2])


def test_per_example_marginal_moments_and_independence(mode):
    """n = 20000 draws per example of N(0, 1) (B = 4, D = 2): moments and cross-correlations.

    Tolerances (5 standard errors): |mean| < 5 / sqrt(n), |std - 1| < 5 / sqrt(2 n), and
    for every pair of distinct (example, coordinate) columns |corr| < 5 / sqrt(n).
    The seeds include pairs differing in one component only.
    """
    n, batch, dim = 20_000, 4, 2
    seeds = tf.constant([[0, 0], [0, 1], [1, 0], [-7, 2**31 - 1]], tf.int32)
    q = tfd.Independent(
        tfd.Normal(tf.zeros([batch, dim], tf.float64), 1.0), reinterpreted_batch_ndims=1
    )
    z = _run(lambda s: sampling.sample(q, n, s), mode, seeds)
    assert z.shape == (n, batch, dim)
    columns = z.reshape(n, batch * dim)
    mean_error = np.max(np.abs(columns.mean(axis=0)))
    std_error = np.max(np.abs(columns.std(axis=0, ddof=1) - 1.0))
    corr = np.corrcoef(columns, rowvar=False)
    max_corr = np.max(np.abs(corr[~np.eye(batch * dim, dtype=bool)]))
    print(
        f"max |mean| {mean_error:.4f} (tol {5 / math.sqrt(n):.4f}), "
        f"max |std - 1| {std_error:.4f} (tol {5 / math.sqrt(2 * n):.4f}), "
        f"max |corr| {max_corr:.4f} (tol {5 / math.sqrt(n):.4f})"
    )
    assert mean_error < 5 / math.sqrt(n)
    assert std_error < 5 / math.sqrt(2 * n)
    assert max_corr < 5 / math.sqrt(n)


# --- objectives ------------------------------------------------------------------------


def _toy(rows):
    """q and log p(x, z) of the toy Gaussian (z ~ N(mu, I), x | z ~ N(z, I)) for `rows`."""
    x = tf.constant(LOC[rows] * 2.0)
    mu = tf.constant([0.3, -0.2, 0.1], tf.float64)
    q = tfd.Independent(
        tfd.Normal(0.5 * (x + mu) + 0.2, tf.constant(SCALE[rows] * 0.5)),
        reinterpreted_batch_ndims=1,
    )
    log_joint = mco.make_log_joint(
        tfd.MultivariateNormalDiag(mu, tf.ones_like(mu)),
        lambda z: tfd.MultivariateNormalDiag(z, tf.ones_like(z)),
        x,
    )
    return q, log_joint


def _every_objective() -> dict:
    """id -> constructor: every registered objective (`mco.objective_names()`) with 8
    samples (in 2 bounds for those taking `num_outer`), and its variant with each bool
    argument that defaults to False set to True (JVI-DReG, ...)."""
    objectives = {}
    for name in mco.objective_names():
        parameters = inspect.signature(mco.objectives.OBJECTIVES[name].__init__).parameters
        kwargs = {"num_outer": 2} if "num_outer" in parameters else {}
        objectives[name] = functools.partial(mco.make_objective, name, 8, **kwargs)
        for arg, parameter in parameters.items():
            if parameter.default is False:
                objectives[f"{name}_{arg}"] = functools.partial(
                    mco.make_objective, name, 8, **kwargs, **{arg: True}
                )
    return objectives


OBJECTIVES = _every_objective()


def _objective_split(obj, seeds):
    full = obj(*_toy(slice(None)), seed=seeds)
    first = obj(*_toy(slice(0, SPLIT)), seed=seeds[:SPLIT])
    second = obj(*_toy(slice(SPLIT, None)), seed=seeds[SPLIT:])
    q, log_joint = _toy(slice(None))
    z = sampling.sample(q, obj.num_samples, seeds)
    return full, first, second, log_joint(z) - q.log_prob(z)


def _check_objective_split(name, full, first, second, replayed):
    assert full.bound.shape == (B,), name
    assert full.log_weights.shape == (replayed.shape[0], B), name
    np.testing.assert_allclose(
        np.concatenate([first.bound, second.bound]),
        full.bound,
        rtol=1e-12,
        atol=1e-12,
        err_msg=name,
    )
    np.testing.assert_allclose(
        np.concatenate([first.log_weights, second.log_weights], axis=1),
        full.log_weights,
        rtol=1e-12,
        atol=1e-12,
        err_msg=name,
    )
    np.testing.assert_allclose(full.log_weights, replayed, rtol=1e-12, atol=1e-12, err_msg=name)


def test_dreg_bound_invariant_to_splitting_the_batch(mode):
    """DReG(8) with per-example seeds: its bound and log weights per data point do not
    depend on the batch (full batch == halves), and its draws are sample()'s."""
    obj = mco.DReG(8)
    _check_objective_split("dreg", *_run(lambda s: _objective_split(obj, s), mode, SEEDS))


@pytest.mark.parametrize("objective", OBJECTIVES)
@modes(
    "eager",
    reason="every objective draws with sampling.sample, whose per-example draws every mode "
    "checks above; DReG's bound runs in every mode above",
)
def test_objective_bound_invariant_to_splitting_the_batch(objective, mode):
    """The same for every registered objective."""
    obj = OBJECTIVES[objective]()
    skip_unless_gaussian_q(obj)
    _check_objective_split(objective, *_run(lambda: _objective_split(obj, SEEDS), mode))


def test_objective_gradient_with_per_example_seeds():
    """The loss is differentiable through per-example draws: d loss / d loc of the full batch
    equals the halves' gradients, each rescaled from its half-batch mean to the full mean."""
    obj = mco.DReG(8)
    loc = tf.constant(LOC)

    def grad(rows, seeds):
        with tf.GradientTape() as tape:
            tape.watch(loc)
            q = tfd.Independent(tfd.Normal(tf.gather(loc, rows), 0.7), reinterpreted_batch_ndims=1)
            log_joint = mco.make_log_joint(
                tfd.MultivariateNormalDiag(tf.zeros(D, tf.float64), tf.ones(D, tf.float64)),
                lambda z: tfd.MultivariateNormalDiag(z, tf.ones_like(z)),
                tf.constant(SCALE[rows]),
            )
            loss = obj(q, log_joint, seed=seeds).loss
        return tf.convert_to_tensor(tape.gradient(loss, loc)).numpy()

    full = grad(list(range(B)), SEEDS)
    halves = (
        grad(list(range(SPLIT)), SEEDS[:SPLIT]) * SPLIT
        + grad(list(range(SPLIT, B)), SEEDS[SPLIT:]) * (B - SPLIT)
    ) / B
    assert np.all(np.abs(full) > 0)
    np.testing.assert_allclose(halves, full, rtol=1e-10, atol=1e-12)


# --- errors ----------------------------------------------------------------------------


def _logistic_q():
    return tfd.Independent(
        tfd.Logistic(tf.constant(LOC), tf.constant(SCALE)), reinterpreted_batch_ndims=1
    )


def test_unrecognised_family_with_per_example_seeds_is_value_error():
    """A q the module does not reparameterize itself (Logistic) rejects per-example seeds."""
    q = _logistic_q()
    assert q.reparameterization_type == tfd.FULLY_REPARAMETERIZED
    assert not sampling.supports_stable_sampling(q)
    # One seed still works (sampled by q.sample).
    assert sampling.sample(q, 3, SEEDS[0]).shape == (3, B, D)
    with pytest.raises(ValueError, match=r"Per-example seeds.*Independent"):
        sampling.sample(q, 3, SEEDS)


def test_objective_with_unrecognised_family_and_per_example_seeds_is_value_error():
    _, log_joint = _toy(slice(None))
    with pytest.raises(ValueError, match="Per-example seeds"):
        mco.DReG(4)(_logistic_q(), log_joint, seed=tf.constant(SEEDS))


@pytest.mark.parametrize(
    "shape", [(B + 1, 2), (B - 1, 2), (B, 3), (B, 1)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_seeds_of_wrong_shape_are_value_error(shape):
    q = FAMILIES["independent_normal"](slice(None), tf.float64)
    seeds = np.zeros(shape, np.int32)
    with pytest.raises(ValueError, match="Per-example seeds"):
        sampling.sample(q, 3, seeds)


def test_seeds_of_wrong_shape_in_objective_are_value_error():
    q, log_joint = _toy(slice(None))
    with pytest.raises(ValueError, match="one seed per data point"):
        mco.IWAE(4)(q, log_joint, seed=tf.constant(SEEDS[:-1]))


def test_seeds_with_q_of_batch_rank_two_are_value_error():
    q = tfd.Normal(tf.zeros([B, D], tf.float64), 1.0)  # batch [B, D]
    with pytest.raises(ValueError, match="batch shape"):
        sampling.sample(q, 3, SEEDS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_seeds_are_type_error(dtype):
    q = FAMILIES["independent_normal"](slice(None), tf.float64)
    with pytest.raises(TypeError, match="integer"):
        sampling.sample(q, 3, SEEDS.astype(dtype))


def test_int64_seeds_accepted():
    """int64 per-example seeds are cast to int32: the same draws as the int32 seeds."""
    q = FAMILIES["independent_normal"](slice(None), tf.float64)
    np.testing.assert_array_equal(
        sampling.sample(q, 3, SEEDS.astype(np.int64)).numpy(),
        sampling.sample(q, 3, SEEDS).numpy(),
    )


def test_log_marginal_estimate_rejects_per_example_seeds():
    q, log_joint = _toy(slice(None))
    with pytest.raises(ValueError, match="per-example seeds"):
        mco.log_marginal_estimate(q, log_joint, tf.constant(SEEDS), num_samples=10, chunk_size=5)


def test_is_per_example_seed():
    assert sampling.is_per_example_seed(SEEDS)
    assert sampling.is_per_example_seed(tf.constant(SEEDS))
    assert not sampling.is_per_example_seed(SEEDS[0])
    assert not sampling.is_per_example_seed(7)
    assert not sampling.is_per_example_seed(None)
