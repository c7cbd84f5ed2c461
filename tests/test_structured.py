"""Structured latents: q a TFP JointDistribution, z a list, dict or StructTuple of leaves.

* `mco.sampling.sample(q, S, seed)` on every kind of joint q (Sequential, Named,
  Coroutine and the AutoBatched forms with batch_ndims=1) returns q's structure with
  leaves [S, B, *event], the same numbers eagerly, in tf.function and under XLA (float64,
  1e-12 absolute plus 1e-10 relative, the tolerance of tests/test_sampling.py), and
  every registered objective replays exactly those draws.
* Per-example [B, 2] seeds make a data point's draws independent of the rest of the
  batch, for continuous and discrete leaves.
* The library's own Bernoulli, Categorical and OneHotCategorical samplers: right
  frequencies (z-tests and chi-square tests with fixed seeds; tolerances stated at each
  test, measured values printed), identical draws in every mode, TFP's default dtypes.
* `log_marginal_estimate` on a two-layer Gaussian with log p(x) in closed form: exact
  for the exact posterior q, below log p(x) and converging to it for another q.
* `make_log_joint` with a JointDistributionNamed prior, and `diagnostics` with a joint q.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import diagnostics, sampling
from tests.conftest import GRAPH_MODES, MODES, in_mode, mode_params, modes, takes_gaussian_q

tfd = tfp.distributions

B, D, S = 3, 2, 5
SEED = tf.constant([11, 23], tf.int32)
X = np.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.2]])
PER_EXAMPLE_SEEDS = np.array([[1, 2], [-3, 4], [5, -6]], np.int32)
# The tests named "the same numbers in every mode" compare a graph's draws with the eager
# draws, which the other tests check.
COMPARED_WITH_EAGER = modes(*GRAPH_MODES, reason="eager is the reference they are compared to")


def _run(fn, mode, *args):
    """`fn(*args)` in `mode`, every tensor of the output converted to NumPy."""
    return tf.nest.map_structure(lambda t: t.numpy(), in_mode(fn, mode)(*args))


def _assert_same_draws(actual, expected):
    """float64 draws agree to 1e-12 absolute plus 1e-10 relative, leaf by leaf."""
    tf.nest.assert_same_structure(actual, expected)
    for a, e in zip(tf.nest.flatten(actual), tf.nest.flatten(expected), strict=True):
        if np.issubdtype(e.dtype, np.floating):
            np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)
        else:
            np.testing.assert_array_equal(a, e)


# --------------------------------------------------------------------------------------
# Every kind of joint q
# --------------------------------------------------------------------------------------


def _loc(x):
    return 0.5 * x + 0.1


def _scale(value):
    return tf.convert_to_tensor(value, tf.float64)


def _diag(loc, scale, name):
    return tfd.Independent(tfd.Normal(loc, _scale(scale)), 1, name=name)


def _coroutine(x):
    root = tfd.JointDistributionCoroutine.Root

    def model():
        z1 = yield root(_diag(_loc(x), 0.8, "z1"))
        z2 = yield _diag(0.6 * z1 - 0.2, 0.5, "z2")
        yield tfd.Normal(tf.reduce_sum(z2, -1), _scale(0.7), name="z3")

    return tfd.JointDistributionCoroutine(model)


def _coroutine_autobatched(x):
    def model():
        z1 = yield tfd.Normal(_loc(x), _scale(0.8), name="z1")
        z2 = yield tfd.Normal(0.6 * z1 - 0.2, _scale(0.5), name="z2")
        yield tfd.Normal(tf.reduce_sum(z2, -1), _scale(0.7), name="z3")

    return tfd.JointDistributionCoroutineAutoBatched(model, batch_ndims=1)


# Three leaves, z1 [B, D] -> z2 [B, D] -> z3 [B] (scalar event), built from x [b, D].
JOINTS = {
    "sequential": lambda x: tfd.JointDistributionSequential(
        [
            _diag(_loc(x), 0.8, "z1"),
            lambda z1: _diag(0.6 * z1 - 0.2, 0.5, "z2"),
            lambda z2: tfd.Normal(tf.reduce_sum(z2, -1), _scale(0.7), name="z3"),
        ]
    ),
    "named": lambda x: tfd.JointDistributionNamed(
        {
            # Out of model order on purpose: leaves are matched by name.
            "z3": lambda z2: tfd.Normal(tf.reduce_sum(z2, -1), _scale(0.7)),
            "z1": _diag(_loc(x), 0.8, "z1"),
            "z2": lambda z1: _diag(0.6 * z1 - 0.2, 0.5, "z2"),
        }
    ),
    "coroutine": _coroutine,
    "coroutine_autobatched": _coroutine_autobatched,
    # AutoBatched: the parts' trailing batch dimension D is an event dimension of q.
    "sequential_autobatched": lambda x: tfd.JointDistributionSequentialAutoBatched(
        [
            tfd.Normal(_loc(x), _scale(0.8)),
            lambda z1: tfd.Normal(0.6 * z1 - 0.2, _scale(0.5)),
            lambda z2: tfd.Normal(tf.reduce_sum(z2, -1), _scale(0.7)),
        ],
        batch_ndims=1,
    ),
}


def _leaves(z):
    """(z1, z2, z3) of any of the structures above."""
    if isinstance(z, dict):
        return z["z1"], z["z2"], z["z3"]
    return tuple(z)


def _log_joint(x):
    """log N(z1; 0, I) + log N(z2; z1, I) + log N(z3; 0, 1) + log N(x; z1 + z3, I)."""

    def log_joint(z):
        z1, z2, z3 = _leaves(z)
        std = tfd.Normal(_scale(0.0), _scale(1.0))
        return (
            tf.reduce_sum(std.log_prob(z1), -1)
            + tf.reduce_sum(std.log_prob(z2 - z1), -1)
            + std.log_prob(z3)
            + tf.reduce_sum(std.log_prob(x - z1 - z3[..., None]), -1)
        )

    return log_joint


def _objectives():
    """Every registered objective, with S samples (M = 1 group of S for MIWAE, PIWAE)."""
    grouped = ("miwae", "piwae")
    return {
        name: mco.make_objective(name, S, **({"num_outer": 1} if name in grouped else {}))
        for name in mco.objective_names()
    }


@pytest.mark.parametrize("structure", JOINTS)
@COMPARED_WITH_EAGER
def test_sample_returns_q_structure_with_leaves_s_b_event_and_the_same_numbers_in_every_mode(
    structure, mode
):
    """sample(q, S, seed) has q's container, leaves [S, B, D], [S, B, D], [S, B] that q
    scores, and equals the eager draw to 1e-12 (float64), with one seed and with [B, 2]."""

    def draw():
        q = JOINTS[structure](tf.constant(X))
        return sampling.sample(q, S, SEED), sampling.sample(q, S, PER_EXAMPLE_SEEDS)

    q = JOINTS[structure](tf.constant(X))
    eager = draw()
    draws = _run(draw, mode)
    for z in eager:
        assert type(z) is type(q.sample(seed=SEED))
        assert [leaf.shape for leaf in _leaves(z)] == [(S, B, D), (S, B, D), (S, B)]
        assert all(leaf.dtype == tf.float64 for leaf in tf.nest.flatten(z))
        assert q.log_prob(z).shape == (S, B)
    eager = tf.nest.map_structure(lambda t: t.numpy(), eager)
    pairs = zip(tf.nest.flatten(draws), tf.nest.flatten(eager), strict=True)
    worst = max(np.max(np.abs(a - e)) for a, e in pairs)
    print(f"max |{mode} - eager| = {worst:.3g}")
    _assert_same_draws(draws, eager)
    # The per-example draws are other numbers than the single-seed draws.
    assert not np.allclose(_leaves(draws[0])[0], _leaves(draws[1])[0])


def test_the_draws_depend_on_the_seed_and_each_part_has_its_own_noise():
    """Another seed gives other draws; z1 and z2 are not built from the same noise."""
    q = JOINTS["sequential"](tf.constant(X))
    z1, z2, _ = (t.numpy() for t in sampling.sample(q, 2000, SEED))
    other = sampling.sample(q, 2000, tf.constant([11, 24], tf.int32))[0].numpy()
    eps1 = (z1 - _loc(X)) / 0.8
    eps2 = (z2 - (0.6 * z1 - 0.2)) / 0.5
    corr = np.corrcoef(eps1.ravel(), eps2.ravel())[0, 1]
    print(f"corr(eps1, eps2) = {corr:.4f}")
    assert not np.any(z1 == other)
    # Independent noise: correlation within 5 standard errors (1 / sqrt(n)) of 0.
    assert abs(corr) < 5.0 / math.sqrt(eps1.size)


# Every objective draws with the same call, sampling.sample(q, S, seed), whatever its
# gradient path; tracing eleven objectives takes 5-7 s, so by default tf.function and XLA
# replay one objective of each GradientPath (IWAE: TOTAL, DReG: SPLIT, VIMCO: SCORE) for
# one structure each, and every objective for every structure in the slow run.
ONE_PER_PATH = ("iwae", "dreg", "vimco")
REPLAY_CASES = [
    *((structure, "eager", "all") for structure in JOINTS),
    ("named", "function", ONE_PER_PATH),
    ("coroutine_autobatched", "xla", ONE_PER_PATH),
]
REPLAY_CASES += [
    pytest.param(structure, *param.values, "all", marks=param.marks)
    for structure in JOINTS
    for param in mode_params(GRAPH_MODES, slow=GRAPH_MODES)
]


@pytest.mark.parametrize(
    ("structure", "mode", "names"),
    REPLAY_CASES,
    ids=lambda v: "one-per-path" if v == ONE_PER_PATH else None,
)
def test_every_objective_replays_the_draws_of_sample(structure, mode, names):
    """For each registered objective, result.log_weights == log p - log q of sample(q, S, seed)."""
    objectives = {name: o for name, o in _objectives().items() if names == "all" or name in names}
    # The joints have Normal leaves: DisARM (Bernoulli only) is left to tests/test_disarm.py.
    objectives = {name: o for name, o in objectives.items() if takes_gaussian_q(o)}
    assert set(ONE_PER_PATH) <= set(objectives)

    def run():
        x = tf.constant(X)
        q, log_joint = JOINTS[structure](x), _log_joint(x)
        z = sampling.sample(q, S, SEED)
        replayed = log_joint(z) - q.log_prob(z)
        return {name: o(q, log_joint, seed=SEED).log_weights for name, o in objectives.items()}, (
            replayed
        )

    log_weights, replayed = _run(run, mode)
    assert replayed.shape == (S, B)
    assert np.all(np.isfinite(replayed))
    for name, ours in log_weights.items():
        print(f"{name}: max |log w - replay| = {np.max(np.abs(ours - replayed)):.3g}")
        np.testing.assert_allclose(ours, replayed, rtol=1e-12, atol=1e-12, err_msg=name)


# --------------------------------------------------------------------------------------
# Per-example seeds on a joint q
# --------------------------------------------------------------------------------------


def _discrete_joint(x):
    """b ~ Bernoulli (int32), c ~ Categorical (int32), n | b, c ~ Normal: one per data point."""
    logits = tf.stack([x[:, 0], -x[:, 1], x[:, 0] * x[:, 1]], axis=-1)  # [b, 3]
    return tfd.JointDistributionNamed(
        {
            "b": tfd.Independent(tfd.Bernoulli(logits=x), 1),
            "c": tfd.Categorical(logits=logits),
            "n": lambda b, c: _diag(
                tf.cast(b, tf.float64) + tf.cast(c, tf.float64)[..., None], 0.5, "n"
            ),
        }
    )


PER_EXAMPLE_JOINTS = {**JOINTS, "discrete": _discrete_joint}


@pytest.mark.parametrize("structure", PER_EXAMPLE_JOINTS)
@modes(
    "eager",
    reason="the per-example draws are the same numbers in every mode (the sample test above, "
    "and test_discrete_draws_are_identical_in_every_mode_with_tfps_default_dtype)",
)
def test_with_per_example_seeds_a_data_points_draws_do_not_depend_on_the_rest_of_the_batch(
    structure, mode
):
    """Points (2, 0) in a batch of 2, and the batch of 3 reordered, draw what they drew in the
    batch of 3, leaf by leaf (float64 to 1e-12; integer leaves exactly)."""
    make_q = PER_EXAMPLE_JOINTS[structure]

    def draw(rows):
        q = make_q(tf.constant(X[rows]))
        return sampling.sample(q, S, tf.constant(PER_EXAMPLE_SEEDS[rows]))

    full = _run(lambda: draw([0, 1, 2]), mode)
    for rows in ([2, 0], [1, 2, 0]):
        part = _run(lambda rows=rows: draw(rows), mode)
        expected = tf.nest.map_structure(lambda leaf, rows=rows: leaf[:, rows], full)
        _assert_same_draws(part, expected)


# --------------------------------------------------------------------------------------
# Discrete samplers
# --------------------------------------------------------------------------------------

NUM_DRAWS = 20_000
BERNOULLI_PROBS = np.array([[0.02, 0.3, 0.5], [0.7, 0.95, 0.5]])  # [B=2, D=3]
CATEGORICAL_PROBS = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.05, 0.05, 0.2]])  # [B=2, K=4]

ALL = slice(None)
# name -> rows -> q over those data points, in float64 and float32 parameterizations.
DISCRETE = {
    "bernoulli_logits": lambda rows=ALL: tfd.Independent(
        tfd.Bernoulli(logits=tf.constant(np.log(BERNOULLI_PROBS / (1 - BERNOULLI_PROBS))[rows])),
        1,
    ),
    "bernoulli_probs": lambda rows=ALL: tfd.Independent(
        tfd.Bernoulli(probs=tf.constant(BERNOULLI_PROBS[rows], tf.float32)), 1
    ),
    "categorical_logits": lambda rows=ALL: tfd.Categorical(
        logits=tf.constant(np.log(CATEGORICAL_PROBS)[rows], tf.float32)
    ),
    "categorical_probs": lambda rows=ALL: tfd.Categorical(
        probs=tf.constant(CATEGORICAL_PROBS[rows])
    ),
    "one_hot_categorical": lambda rows=ALL: tfd.OneHotCategorical(
        logits=tf.constant(np.log(CATEGORICAL_PROBS)[rows])
    ),
}
# (shape of one draw, TFP's default dtype)
DISCRETE_LAYOUT = {
    "bernoulli_logits": ((2, 3), tf.int32),
    "bernoulli_probs": ((2, 3), tf.int32),
    "categorical_logits": ((2,), tf.int32),
    "categorical_probs": ((2,), tf.int32),
    "one_hot_categorical": ((2, 4), tf.int32),
}


@pytest.mark.parametrize("family", DISCRETE)
def test_discrete_families_are_drawn_by_the_librarys_own_sampler(family):
    """Bernoulli, Categorical and OneHotCategorical are sampled stably (not by q.sample)."""
    assert sampling.supports_stable_sampling(DISCRETE[family]())


@pytest.mark.parametrize("family", DISCRETE)
@COMPARED_WITH_EAGER
def test_discrete_draws_are_identical_in_every_mode_with_tfps_default_dtype(family, mode):
    """Draws (one seed and [B, 2] seeds) equal the eager draws exactly; dtype int32."""
    seeds = PER_EXAMPLE_SEEDS[:2]

    def draw():
        q = DISCRETE[family]()
        return sampling.sample(q, 500, SEED), sampling.sample(q, 500, seeds)

    eager, (single, per_example) = _run(draw, "eager"), _run(draw, mode)
    shape, dtype = DISCRETE_LAYOUT[family]
    assert DISCRETE[family]().dtype == dtype
    for z in (*eager, single, per_example):
        assert z.shape == (500, *shape)
        assert z.dtype == dtype.as_numpy_dtype
    np.testing.assert_array_equal(single, eager[0])
    np.testing.assert_array_equal(per_example, eager[1])


def _frequencies(family, mode):
    z = _run(lambda: sampling.sample(DISCRETE[family](), NUM_DRAWS, SEED), mode)
    if family.startswith("bernoulli"):
        return z.mean(axis=0)  # [2, 3]
    if family.startswith("categorical"):
        z = np.eye(4)[z]
    assert np.all(z.sum(axis=-1) == 1)  # one-hot
    return z.mean(axis=0)  # [2, 4]


@pytest.mark.parametrize("family", [f for f in DISCRETE if f.startswith("bernoulli")])
def test_bernoulli_frequencies_match_the_probabilities(family, mode):
    """Probabilistic: each of 6 success frequencies of 20k draws is within 5 binomial SEs."""
    freq = _frequencies(family, mode)
    se = np.sqrt(BERNOULLI_PROBS * (1 - BERNOULLI_PROBS) / NUM_DRAWS)
    z = (freq - BERNOULLI_PROBS) / se
    print(f"frequencies {freq.round(4).tolist()}, z-scores {z.round(2).tolist()}")
    assert np.max(np.abs(z)) < 5.0


@pytest.mark.parametrize("family", [f for f in DISCRETE if not f.startswith("bernoulli")])
def test_categorical_frequencies_match_the_probabilities(family, mode):
    """Probabilistic: a chi-square test per data point (3 degrees of freedom) of 20k draws
    is below 25 (p = 1.6e-5 under the null)."""
    freq = _frequencies(family, mode)
    chi2 = NUM_DRAWS * np.sum((freq - CATEGORICAL_PROBS) ** 2 / CATEGORICAL_PROBS, axis=-1)
    print(f"frequencies {freq.round(4).tolist()}, chi-square {chi2.round(2).tolist()}")
    assert np.all(chi2 < 25.0)


def test_bernoulli_with_certain_outcomes_draws_them():
    """probs 0 and 1 (logits -inf and +inf) always draw 0 and 1; a float dtype is kept."""
    q = tfd.Bernoulli(probs=tf.constant([0.0, 1.0], tf.float64), dtype=tf.float32)
    z = sampling.sample(q, 1000, SEED).numpy()
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z, np.broadcast_to([0.0, 1.0], (1000, 2)))


@pytest.mark.parametrize("family", DISCRETE)
def test_discrete_per_example_seeds_do_not_depend_on_the_rest_of_the_batch(family):
    """Each data point alone, or the two swapped, draws what it drew in the batch of 2."""
    both = sampling.sample(DISCRETE[family](), 200, PER_EXAMPLE_SEEDS[:2]).numpy()
    for rows in ([1], [0], [1, 0]):
        alone = sampling.sample(DISCRETE[family](rows), 200, PER_EXAMPLE_SEEDS[rows]).numpy()
        np.testing.assert_array_equal(alone, both[:, rows])


# --------------------------------------------------------------------------------------
# log_marginal_estimate on a two-layer Gaussian with log p(x) in closed form
# --------------------------------------------------------------------------------------
# z2 ~ N(0, I), z1 | z2 ~ N(z2, I), x | z1 ~ N(z1, I), each of dimension D: then
# z1 ~ N(0, 2 I) and x ~ N(0, 3 I). The posterior factorises as p(z1 | x) p(z2 | z1)
# (x is independent of z2 given z1), with p(z1 | x) = N(2x/3, 2/3 I) and
# p(z2 | z1) = N(z1/2, 1/2 I).

HX = np.array([[-1.0, 0.4], [0.5, 2.0], [2.5, -0.3]])  # [B, D]


def _log_px(x):
    return np.sum(-0.5 * np.log(2 * np.pi * 3.0) - x**2 / 6.0, axis=-1)


def _hierarchical_log_joint(x):
    def log_joint(z):
        return (
            _diag(tf.zeros_like(z["z2"]), 1.0, "p_z2").log_prob(z["z2"])
            + _diag(z["z2"], 1.0, "p_z1").log_prob(z["z1"])
            + _diag(z["z1"], 1.0, "p_x").log_prob(x)
        )

    return log_joint


# (mean of z1: a x + b, std of z1, mean of z2: c z1 + d, std of z2)
EXACT_Q = (2.0 / 3.0, 0.0, math.sqrt(2.0 / 3.0), 0.5, 0.0, math.sqrt(0.5))
OFF_Q = (0.5, 0.3, 1.0, 0.3, 0.2, 0.9)


def _hierarchical_q(x, params):
    a, b, s1, c, d, s2 = params
    return tfd.JointDistributionNamed(
        {
            "z1": _diag(a * x + b, s1, "q_z1"),
            "z2": lambda z1: _diag(c * z1 + d, s2, "q_z2"),
        }
    )


def _kl_from_posterior(x, params):
    """KL(q(z1, z2 | x) || p(z1, z2 | x)) per data point, in closed form."""
    a, b, s1, c, d, s2 = params

    def kl_normal(m, s, m0, v0):  # KL(N(m, s^2) || N(m0, v0)), per dimension
        return 0.5 * (np.log(v0 / s**2) + (s**2 + (m - m0) ** 2) / v0 - 1.0)

    m1 = a * x + b
    first = kl_normal(m1, s1, 2.0 * x / 3.0, 2.0 / 3.0)
    # E over z1 ~ q of KL(N(c z1 + d, s2^2) || N(z1 / 2, 1/2)): the mean difference
    # (c - 1/2) z1 + d has second moment ((c - 1/2) m1 + d)^2 + (c - 1/2)^2 s1^2.
    second_moment = ((c - 0.5) * m1 + d) ** 2 + (c - 0.5) ** 2 * s1**2
    second = 0.5 * (np.log(0.5 / s2**2) + (s2**2 + second_moment) / 0.5 - 1.0)
    return np.sum(first + second, axis=-1)


def test_hierarchical_closed_form_kl_is_zero_for_the_exact_posterior():
    """The closed forms used below agree: KL(exact q || posterior) = 0, KL(off q) > 0."""
    np.testing.assert_allclose(_kl_from_posterior(HX, EXACT_Q), 0.0, atol=1e-12)
    assert np.all(_kl_from_posterior(HX, OFF_Q) > 0.1)


@modes(
    *MODES,
    slow=("xla",),
    reason="log_marginal_estimate's chunk loop runs under XLA in tests/test_log_marginal.py, "
    "and a joint q under XLA in the replay test above",
)
def test_log_marginal_estimate_of_the_exact_posterior_is_log_px_to_1e_10(mode):
    """q = p(z1|x) p(z2|z1): every weight is p(x), so log p^(x) = log N(x; 0, 3I) to 1e-10."""

    def fn():
        x = tf.constant(HX)
        q = _hierarchical_q(x, EXACT_Q)
        return mco.log_marginal_estimate(q, _hierarchical_log_joint(x), SEED, 50, 20)

    # K = 50 in chunks of 20: a while loop over two chunks and a remainder of 10.
    estimate = _run(fn, mode)
    print(f"estimate - log p(x) = {estimate - _log_px(HX)}")
    assert estimate.shape == (B,)
    np.testing.assert_allclose(estimate, _log_px(HX), rtol=0.0, atol=1e-10)


NUM_REPLICAS = 4000


def _replicated_estimates(num_samples):
    """log p^(x) - log p(x) of NUM_REPLICAS independent estimates per data point, [R, B]."""
    x = np.tile(HX, (NUM_REPLICAS, 1))  # replica r of point i is row r * B + i
    xt = tf.constant(x)
    q = _hierarchical_q(xt, OFF_Q)
    estimate = mco.log_marginal_estimate(
        q, _hierarchical_log_joint(xt), SEED, num_samples, min(num_samples, 500)
    )
    return (estimate.numpy() - _log_px(x)).reshape(NUM_REPLICAS, B)


def test_log_marginal_estimate_of_an_inexact_q_is_below_log_px_and_approaches_it():
    """Probabilistic (4000 replicas per data point; tolerances in standard errors SE of the
    mean over replicas). The mean of log p^(x) - log p(x) is -KL(q || posterior) for
    K = 1 (KL in closed form; within 5 SE), below 0 by more than 5 SE for K = 10, not
    above 0 by 5 SE for K = 100 and 300, and shrinks: |gap| < 0.01 at K = 300."""
    kl = _kl_from_posterior(HX, OFF_Q)
    gaps, ses = {}, {}
    for k in (1, 10, 100, 300):
        errors = _replicated_estimates(k)
        gaps[k] = errors.mean(axis=0)
        ses[k] = errors.std(axis=0, ddof=1) / math.sqrt(NUM_REPLICAS)
        print(f"K = {k}: mean log p^ - log p = {gaps[k].round(4)} (SE {ses[k].round(4)})")
    print(f"-KL = {-kl.round(4)}")
    np.testing.assert_array_less(np.abs(gaps[1] + kl), 5.0 * ses[1])
    np.testing.assert_array_less(gaps[10], -5.0 * ses[10])
    for k in (100, 300):
        np.testing.assert_array_less(gaps[k], 5.0 * ses[k])
    np.testing.assert_array_less(gaps[1], gaps[10])
    np.testing.assert_array_less(gaps[10], gaps[100])
    np.testing.assert_array_less(np.abs(gaps[300]), 0.01)


# --------------------------------------------------------------------------------------
# make_log_joint with a structured prior
# --------------------------------------------------------------------------------------


def _structured_model_log_joint(x):
    """make_log_joint(JointDistributionNamed prior over {z1, z2}, likelihood of z, x)."""
    prior = tfd.JointDistributionNamed(
        {
            "z2": _diag(tf.zeros([D], tf.float64), 1.0, "z2"),
            "z1": lambda z2: _diag(z2, 1.0, "z1"),
        }
    )
    return mco.make_log_joint(prior, lambda z: _diag(z["z1"], 1.0, "x"), x)


@modes(
    *MODES,
    slow=GRAPH_MODES,
    reason="a trace of eleven objectives takes 5-7 s; the replay test above runs one "
    "objective of each gradient path in tf.function and under XLA by default",
)
def test_make_log_joint_with_a_joint_prior_works_with_every_objective(mode):
    """With the exact posterior q every objective's log weights are log p(x) (1e-10): the
    joint prior scores the structured z; for another q, log p matches the hand-written one."""
    # Normal latents: DisARM (Bernoulli only) is left to tests/test_disarm.py.
    objectives = {name: o for name, o in _objectives().items() if takes_gaussian_q(o)}

    def fn():
        x = tf.constant(HX)
        log_joint = _structured_model_log_joint(x)
        exact = {
            name: o(_hierarchical_q(x, EXACT_Q), log_joint, seed=SEED).log_weights
            for name, o in objectives.items()
        }
        z = sampling.sample(_hierarchical_q(x, OFF_Q), S, SEED)
        return exact, log_joint(z), _hierarchical_log_joint(x)(z)

    exact, log_p, by_hand = _run(fn, mode)
    np.testing.assert_allclose(log_p, by_hand, rtol=1e-12, atol=1e-12)
    for name, log_weights in exact.items():
        np.testing.assert_allclose(
            log_weights, np.broadcast_to(_log_px(HX), (S, B)), atol=1e-10, err_msg=name
        )


def test_make_log_joint_with_a_joint_prior_gives_gradients():
    """DReG's and VIMCO's losses with the joint prior have finite gradients for q and p."""
    x = tf.constant(HX)
    shift = tf.Variable(tf.constant(0.1, tf.float64))  # of the prior's z2 mean
    params = tf.Variable(tf.constant(OFF_Q, tf.float64))
    for objective in (mco.DReG(S), mco.VIMCO(S)):
        with tf.GradientTape() as tape:
            prior = tfd.JointDistributionNamed(
                {
                    "z2": _diag(tf.fill([D], shift), 1.0, "z2"),
                    "z1": lambda z2: _diag(z2, 1.0, "z1"),
                }
            )
            log_joint = mco.make_log_joint(prior, lambda z: _diag(z["z1"], 1.0, "x"), x)
            q = _hierarchical_q(x, tf.unstack(params))
            result = objective(q, log_joint, seed=SEED)
        grads = result.gradients(tape, [shift], [params])
        for grad in grads.model + grads.inference:
            assert grad is not None
            assert np.all(np.isfinite(grad.numpy()))


# --------------------------------------------------------------------------------------
# diagnostics with a joint q
# --------------------------------------------------------------------------------------


def _structured_estimator(objective, structure="named"):
    """The gradient estimator of `objective` w.r.t. q's parameters, for a joint q."""
    variables = {"params": tf.Variable(tf.constant(OFF_Q, tf.float64))}
    x = tf.constant(HX)
    log_joint = _hierarchical_log_joint(x)

    def loss_fn(seed):
        if structure == "named":
            q = _hierarchical_q(x, tf.unstack(variables["params"]))
            return objective(q, log_joint, seed=seed)
        a, b, s1, c, d, s2 = tf.unstack(variables["params"])

        def model():
            z1 = yield tfd.Normal(a * x + b, s1, name="z1")
            yield tfd.Normal(c * z1 + d, s2, name="z2")

        q = tfd.JointDistributionCoroutineAutoBatched(model, batch_ndims=1)
        return objective(q, lambda z: log_joint({"z1": z.z1, "z2": z.z2}), seed=seed)

    return diagnostics.make_gradient_estimator(loss_fn, variables)


# DReG's and IWAE's estimators on the named q are drawn in the bias test below.
@pytest.mark.parametrize(
    ("objective", "structure"),
    [("dreg", "autobatched"), pytest.param("vimco", "named", marks=pytest.mark.slow)],
)
def test_gradient_statistics_of_an_objective_with_a_joint_q(objective, structure):
    """The vectorized estimates equal the estimator called seed by seed (1e-10)."""
    estimator = _structured_estimator(mco.make_objective(objective, S), structure)
    num = 6
    stats = diagnostics.gradient_statistics(
        estimator, num, seed=3, chunk_size=4, keep_estimates=True
    )
    seeds = tf.random.experimental.stateless_split(sampling.stateless_seed(3), num)
    one_by_one = np.stack([estimator(tf.cast(s, tf.int32))["params"].numpy() for s in seeds])
    print(f"mean {stats.mean['params'].round(4)}, snr {stats.snr['params'].round(2)}")
    assert stats.estimates["params"].shape == (num, 6)
    np.testing.assert_allclose(stats.estimates["params"], one_by_one, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.mean["params"], one_by_one.mean(0), rtol=1e-10, atol=1e-10)
    assert np.all(np.isfinite(stats.snr["params"]))


# Slow: diagnostics' jit_compile on a flat q is checked by tests/test_diagnostics.py.
@pytest.mark.slow
def test_gradient_statistics_of_a_joint_q_under_xla():
    """jit_compile=True gives the estimates of the non-XLA run (1e-10)."""
    estimator = _structured_estimator(mco.DReG(S))
    plain = diagnostics.gradient_estimates(estimator, 4, seed=5)
    xla = diagnostics.gradient_estimates(estimator, 4, seed=5, jit_compile=True)
    np.testing.assert_allclose(xla["params"], plain["params"], rtol=1e-10, atol=1e-10)


def test_gradient_statistics_of_dreg_with_a_joint_q_is_unbiased_for_iwae():
    """Probabilistic: DReG's and IWAE's mean q gradients agree (paired t statistics < 5)
    over 400 estimates on the same draws: DReG is unbiased for a hierarchical q too."""
    dreg = _structured_estimator(mco.DReG(S))
    iwae = _structured_estimator(mco.IWAE(S))
    stats = diagnostics.gradient_statistics(dreg, 400, seed=9, chunk_size=200, reference=iwae)
    t = stats.bias_t_statistic["params"]
    ratio = stats.variance["params"] / stats.reference_variance["params"]
    print(f"paired t {t.round(2)}, variance DReG / IWAE {ratio.round(3)}")
    assert np.all(np.abs(t) < 5.0)
