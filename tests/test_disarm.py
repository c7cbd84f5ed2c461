"""DisARM (Dong, Mnih & Tucker 2020) on Bernoulli q: exact, reproducible, unbiased, refused
where it does not apply.

* Exact: on a one-layer and a two-layer (sigmoid belief net) Bernoulli model with
  closed-form densities, the loss, bounds and gradients equal the NumPy derivation of
  tests/reference_disarm.py for the replayed antithetic noise (float64, 1e-9 relative),
  eagerly, in a tf.function and under XLA.
* Reproducible: `mco.sampling.antithetic_sample` draws exactly `mco.sampling.sample`'s
  samples, the same pairs in every mode, and per-example seeds give each data point
  its own pairs.
* Statistical (probabilistic, fixed seeds): the mean of many estimates equals the exact
  gradient of E[L_K] computed by enumerating every binary configuration (z scores
  printed, |z| < 4.5), and its variance is below VIMCO's at equal numbers of log-joint
  evaluations (ratio printed).
* Refused: a leaf that is not a Bernoulli, named, before `log_joint` is called.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests import reference_disarm as ref
from tests.conftest import EAGER_AND_FUNCTION, MODES, in_mode, modes

tfd = tfp.distributions

B, D, P, K = 3, 4, 2, 5
D1, D2 = 3, 2
SEED = tf.constant([5, 8], tf.int32)


def _params(shapes, seed=0, dtype=tf.float64):
    rng = np.random.default_rng(seed)
    return {
        name: tf.Variable(rng.normal(size=shape).astype(dtype.as_numpy_dtype), name=name)
        for name, shape in shapes.items()
    }


def _one_layer(v, x):
    q = tfd.Independent(tfd.Bernoulli(logits=v["a"]), 1)  # int32 samples
    prior = tfd.Independent(tfd.Bernoulli(logits=v["r"]), 1)

    def log_joint(z):
        mean = tf.linalg.matmul(tf.cast(z, x.dtype), v["W"])
        return prior.log_prob(z) + tfd.Independent(tfd.Normal(mean, 1.0), 1).log_prob(x)

    return q, log_joint


def _two_layer(v, x):
    q = tfd.JointDistributionNamed(
        {
            "z1": tfd.Independent(tfd.Bernoulli(logits=v["a1"]), 1),
            "z2": lambda z1: tfd.Independent(
                tfd.Bernoulli(logits=tf.linalg.matmul(tf.cast(z1, x.dtype), v["V"]) + v["c"]), 1
            ),
        }
    )
    prior_z2 = tfd.Independent(tfd.Bernoulli(logits=v["r"]), 1)

    def log_joint(z):
        z1, z2 = z["z1"], z["z2"]
        beta = tf.linalg.matmul(tf.cast(z2, x.dtype), v["U"]) + v["e"]
        mean = tf.linalg.matmul(tf.cast(z1, x.dtype), v["W"])
        return (
            prior_z2.log_prob(z2)
            + tfd.Independent(tfd.Bernoulli(logits=beta), 1).log_prob(z1)
            + tfd.Independent(tfd.Normal(mean, 1.0), 1).log_prob(x)
        )

    return q, log_joint


ONE = {"a": (B, D), "r": (D,), "W": (D, P)}
TWO = {
    "a1": (B, D1),
    "V": (D1, D2),
    "c": (D2,),
    "r": (D2,),
    "U": (D2, D1),
    "e": (D1,),
    "W": (D1, P),
}


def _run(objective, build, v, x, names):
    variables = [v[n] for n in names]

    def run(seed):
        with tf.GradientTape() as tape:
            result = objective(*build(v, x), seed=seed)
        grads = tape.gradient(
            result.loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return result.loss, result.bound, result.log_weights, grads

    return run


def test_disarm_on_one_bernoulli_layer_equals_the_numpy_derivation(mode):
    """Loss, bounds and the gradients of p's and q's parameters equal
    reference_disarm.one_layer for the replayed noise (float64, 1e-9 relative)."""
    v = _params(ONE)
    x = tf.constant(np.random.default_rng(1).normal(size=(B, P)))
    names = list(ONE)
    loss, bound, log_weights, grads = in_mode(_run(mco.DisARM(K), _one_layer, v, x, names), mode)(
        SEED
    )
    q, _ = _one_layer(v, x)
    draws = mco.sampling.antithetic_sample(q, K, SEED)
    eps = draws.noise[0].numpy()
    assert eps.shape == (K, B, D) and log_weights.shape == (2 * K, B)
    want = {n: np.zeros(s) for n, s in ONE.items()}
    values = np.empty(B)
    for n in range(B):
        values[n], g = ref.one_layer(
            eps[:, n], v["a"].numpy()[n], v["r"].numpy(), v["W"].numpy(), x.numpy()[n]
        )
        want["a"][n] = -g["a"] / B
        want["r"] -= g["r"] / B
        want["W"] -= g["W"] / B
    np.testing.assert_allclose(bound.numpy(), values, rtol=1e-9)
    np.testing.assert_allclose(loss.numpy(), -values.mean(), rtol=1e-9)
    for name, got in zip(names, grads, strict=True):
        np.testing.assert_allclose(got.numpy(), want[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_disarm_on_a_two_layer_sigmoid_belief_q_equals_the_numpy_derivation(mode):
    """q(z1|x) q(z2|z1) of Bernoulli layers: each layer's antithetic term (its partner
    redraws the layers below from their own noise) and q's density term equal
    reference_disarm.two_layer (float64, 1e-9 relative)."""
    v = _params(TWO, seed=2)
    x = tf.constant(np.random.default_rng(3).normal(size=(B, P)))
    names = list(TWO)
    loss, bound, _, grads = in_mode(_run(mco.DisARM(K), _two_layer, v, x, names), mode)(SEED)
    q, _ = _two_layer(v, x)
    draws = mco.sampling.antithetic_sample(q, K, SEED)
    eps1, eps2 = (e.numpy() for e in draws.noise)
    assert len(draws.draws) == 4 and eps2.shape == (K, B, D2)
    numpy = {n: t.numpy() for n, t in v.items()}
    want = {n: np.zeros(s) for n, s in TWO.items()}
    values = np.empty(B)
    for n in range(B):
        args = [numpy["a1"][n]] + [numpy[m] for m in ("V", "c", "r", "U", "e", "W")]
        values[n], g = ref.two_layer(eps1[:, n], eps2[:, n], *args, x.numpy()[n])
        for name in TWO:
            if name == "a1":
                want[name][n] = -g[name] / B
            else:
                want[name] -= g[name] / B
    np.testing.assert_allclose(bound.numpy(), values, rtol=1e-9)
    np.testing.assert_allclose(loss.numpy(), -values.mean(), rtol=1e-9)
    for name, got in zip(names, grads, strict=True):
        np.testing.assert_allclose(got.numpy(), want[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_antithetic_samples_are_those_of_sampling_sample_and_the_same_in_every_mode():
    """The K samples are `mco.sampling.sample(q, K, seed)`'s, bit for bit; samples,
    partners and noise are the same eagerly, in a tf.function and under XLA, also
    with per-example seeds."""
    v = _params(TWO, seed=4, dtype=tf.float32)
    x = tf.zeros([B, P])
    q, _ = _two_layer(v, x)
    for seed in (SEED, tf.constant([[1, 2], [3, 4], [5, 6]])):
        expected = mco.sampling.sample(q, K, seed)

        def draw(s):
            d = mco.sampling.antithetic_sample(_two_layer(v, x)[0], K, s)
            return d.samples, d.draws, d.noise

        results = {
            mode: tf.nest.map_structure(np.asarray, in_mode(draw, mode)(seed)) for mode in MODES
        }
        for name in ("z1", "z2"):
            np.testing.assert_array_equal(results["eager"][0][name], expected[name].numpy())
        for mode in MODES[1:]:
            samples_and_partners = results[mode][:2]
            tf.nest.map_structure(
                np.testing.assert_array_equal, samples_and_partners, results["eager"][:2]
            )
            # The noise itself agrees to the last bits of `log` (float64).
            for got, want in zip(results[mode][2], results["eager"][2], strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-12)
        # A flipped layer differs from the sample exactly where |eps| > |logit|.
        flipped = results["eager"][1][2]["z1"] != results["eager"][0]["z1"]  # pattern (-1, 1)
        eps = results["eager"][2][0]
        logits = v["a1"].numpy().astype(np.float64)
        np.testing.assert_array_equal(flipped, np.abs(eps) > np.abs(logits))


def test_per_example_seeds_give_each_data_point_its_own_pairs():
    """Data point b's noise and partners depend on its own seed alone: the draws of a
    batch equal those of each data point drawn by itself."""
    v = _params(ONE, seed=5)
    seeds = tf.constant([[7, 1], [7, 2], [9, 3]])
    q, _ = _one_layer(v, tf.zeros([B, P], tf.float64))
    whole = mco.sampling.antithetic_sample(q, K, seeds)
    for n in range(B):
        alone = tfd.Independent(tfd.Bernoulli(logits=v["a"][n : n + 1]), 1)
        one = mco.sampling.antithetic_sample(alone, K, seeds[n : n + 1])
        np.testing.assert_array_equal(one.noise[0].numpy()[:, 0], whole.noise[0].numpy()[:, n])
        np.testing.assert_array_equal(one.draws[1].numpy()[:, 0], whole.draws[1].numpy()[:, n])


def _spy():
    calls = []

    def log_joint(z):
        calls.append(z)
        return tf.zeros(tf.shape(tf.nest.flatten(z)[0])[:2])

    return log_joint, calls


@modes(*EAGER_AND_FUNCTION, reason="the refusal is raised while tracing; XLA traces the same")
@pytest.mark.parametrize(
    ("q", "leaf"),
    [
        (lambda: tfd.Independent(tfd.Normal(tf.zeros([2, 3]), 1.0), 1, name="gauss"), "gauss"),
        (lambda: tfd.Categorical(logits=tf.zeros([2, 3]), name="cat"), "cat"),
        (
            lambda: tfd.JointDistributionNamed(
                {
                    "b": tfd.Independent(tfd.Bernoulli(logits=tf.zeros([2, 3])), 1),
                    "n": lambda b: tfd.Independent(tfd.Normal(tf.cast(b, tf.float32), 1.0), 1),
                }
            ),
            "n",
        ),
    ],
    ids=["normal", "categorical", "joint-with-a-normal-leaf"],
)
def test_disarm_refuses_a_leaf_that_is_not_bernoulli_naming_it_before_log_joint(q, leaf, mode):
    """A ValueError names the leaf and the fix (VIMCO or RWS); log_joint is never called."""
    log_joint, calls = _spy()
    with pytest.raises(ValueError, match=rf"Leaf '{leaf}' of `q`.*not a Bernoulli.*VIMCO.*RWS"):
        in_mode(lambda: mco.DisARM(2)(q(), log_joint, seed=SEED).loss, mode)()
    assert not calls


def test_disarm_declares_the_latents_it_takes_and_its_samples():
    """`leaf_families` says which q DisARM takes; num_samples is K, the bound's samples."""
    objective = mco.make_objective("disarm", 4)
    assert isinstance(objective, mco.DisARM) and objective.num_samples == 4
    assert mco.DisARM.leaf_families == (tfd.Bernoulli,)
    assert objective.gradient_path is mco.GradientPath.SCORE
    assert mco.DisARM.from_config(objective.get_config()).num_samples == 4


# ----------------------------------------------------------------------- statistics
N = 20_000  # independent estimates: a batch of N copies of one data point
A_TINY = np.array([0.4, -1.1])
R_TINY = np.array([-0.3, 0.5])
W_TINY = np.array([[1.0, -0.5], [0.3, 0.8]])
X_TINY = np.array([0.7, -0.2])


def _tiny_log_weight(z):
    """log p(x, z) - log q(z) of the tiny one-layer model, z [..., 2] in {0, 1}."""
    log_p = np.sum(z * R_TINY - ref.softplus(R_TINY), -1)
    log_p += -0.5 * np.sum((X_TINY - z @ W_TINY) ** 2, -1) - LOG_2PI_P
    return log_p - np.sum(z * A_TINY - ref.softplus(A_TINY), -1)


LOG_2PI_P = 0.5 * 2 * np.log(2 * np.pi)


def _exact_gradient(num):
    """d E[L_K] / d a, enumerating the 2^(K D) configurations of K samples of q."""
    units = list(itertools.product([0.0, 1.0], repeat=2))
    grad = np.zeros(2)
    for config in itertools.product(units, repeat=num):
        z = np.array(config)  # [K, 2]
        prob = np.prod(ref.sigmoid(A_TINY) ** z * ref.sigmoid(-A_TINY) ** (1 - z))
        lw = _tiny_log_weight(z)
        w = np.exp(lw - lw.max())
        w /= w.sum()
        scores = z - ref.sigmoid(A_TINY)
        grad += prob * (ref.log_mean_exp(lw) * scores.sum(0) - w @ scores)
    return grad


def _estimates(objective, seed=11):
    """N independent estimates of d L_K / d a (ascent), [N, 2], from one call."""
    a = tf.Variable(np.tile(A_TINY, (N, 1)))
    v = {"a": a, "r": tf.constant(R_TINY), "W": tf.constant(W_TINY)}
    x = tf.constant(np.tile(X_TINY, (N, 1)))
    with tf.GradientTape() as tape:
        loss = objective(*_one_layer(v, x), seed=seed).loss
    return -N * tape.gradient(loss, a).numpy()


@pytest.mark.parametrize("num_samples", [1, 2])
def test_disarm_is_unbiased_for_the_exact_gradient_of_the_bound(num_samples):
    """Probabilistic (seed 11): the mean of N = 20000 estimates of d E[L_K] / d a lies
    within 4.5 standard errors of the exact gradient by enumeration, for K = 1 (the
    ELBO) and K = 2."""
    exact = _exact_gradient(num_samples)
    g = _estimates(mco.DisARM(num_samples))
    z = (g.mean(0) - exact) / (g.std(0, ddof=1) / np.sqrt(N))
    print(f"K={num_samples}: exact {exact}, mean {g.mean(0)}, z {z}")
    assert np.all(np.abs(z) < 4.5), z


@pytest.mark.parametrize("num_samples", [1, 2, 4])
def test_disarm_has_lower_variance_than_vimco_at_equal_log_joint_evaluations(num_samples):
    """Probabilistic (seed 11): DisARM(K) evaluates log p at 2K points; its estimates of
    d L_K / d a vary less than VIMCO(2K)'s (of L_2K), summed over the units (ratio
    printed; asserted below 1). VIMCO needs K >= 2, so K = 1 is against VIMCO(2)."""
    disarm = _estimates(mco.DisARM(num_samples)).var(0, ddof=1).sum()
    vimco = _estimates(mco.VIMCO(2 * num_samples)).var(0, ddof=1).sum()
    ratio = disarm / vimco
    print(f"K={num_samples}: var DisARM {disarm:.4g}, VIMCO(2K) {vimco:.4g}, ratio {ratio:.3g}")
    assert disarm < vimco


# Two layers: q(z1|x) q(z2|z1) with z1 of 2 units and z2 of 1.
A1_TINY = np.array([0.3, -0.8])
V_TINY = np.array([[1.2], [-0.7]])
C_TINY = np.array([0.2])
R2_TINY = np.array([0.4])
U_TINY = np.array([[0.9, -1.1]])
E_TINY = np.array([-0.2, 0.3])


def _tiny_two_layer_exact(num):
    """d E[L_K] / d a1 and d / d c, enumerating the 2^(3K) configurations of K samples."""
    units = list(itertools.product([0.0, 1.0], repeat=3))  # (z1_1, z1_2, z2)
    grad_a1, grad_c = np.zeros(2), np.zeros(1)
    for config in itertools.product(units, repeat=num):
        z = np.array(config)
        z1, z2 = z[:, :2], z[:, 2:]
        alpha2 = z1 @ V_TINY + C_TINY
        log_q = np.sum(z1 * A1_TINY - ref.softplus(A1_TINY), 1)
        log_q += np.sum(z2 * alpha2 - ref.softplus(alpha2), 1)
        beta = z2 @ U_TINY + E_TINY
        log_p = np.sum(z2 * R2_TINY - ref.softplus(R2_TINY), 1)
        log_p += np.sum(z1 * beta - ref.softplus(beta), 1)
        log_p += -0.5 * np.sum((X_TINY - z1 @ W_TINY) ** 2, 1) - LOG_2PI_P
        lw = log_p - log_q
        w = np.exp(lw - lw.max())
        w /= w.sum()
        value, prob = ref.log_mean_exp(lw), np.exp(log_q.sum())
        for grad, score in (
            (grad_a1, z1 - ref.sigmoid(A1_TINY)),
            (grad_c, z2 - ref.sigmoid(alpha2)),
        ):
            grad += prob * (value * score.sum(0) - w @ score)
    return np.concatenate([grad_a1, grad_c])


def _two_layer_estimates(objective, seed=12):
    """N independent estimates of d L_K / d (a1, c) (ascent), [N, 3], from one call."""
    a1 = tf.Variable(np.tile(A1_TINY, (N, 1)))
    c = tf.Variable(np.tile(C_TINY, (N, 1)))
    v = {"a1": a1, "V": tf.constant(V_TINY), "c": c, "r": tf.constant(R2_TINY)}
    v |= {"U": tf.constant(U_TINY), "e": tf.constant(E_TINY), "W": tf.constant(W_TINY)}
    x = tf.constant(np.tile(X_TINY, (N, 1)))
    with tf.GradientTape() as tape:
        loss = objective(*_two_layer(v, x), seed=seed).loss
    return np.concatenate([-N * t.numpy() for t in tape.gradient(loss, [a1, c])], axis=1)


@pytest.mark.parametrize("num_samples", [1, 2])
def test_disarm_on_two_bernoulli_layers_is_unbiased_for_the_exact_gradient(num_samples):
    """Probabilistic (seed 12): for q(z1|x) q(z2|z1), the mean of N = 20000 estimates of
    d E[L_K] / d a1 (layer 1's logits) and d / d c (layer 2's bias) lies within 4.5
    standard errors of the exact gradient by enumeration."""
    g = _two_layer_estimates(mco.DisARM(num_samples))
    exact = _tiny_two_layer_exact(num_samples)
    z = (g.mean(0) - exact) / (g.std(0, ddof=1) / np.sqrt(N))
    print(f"K={num_samples}: exact {exact}, mean {g.mean(0)}, z {z}")
    assert np.all(np.abs(z) < 4.5), z


@pytest.mark.parametrize("num_samples", [1, 2])
def test_disarm_on_two_layers_has_lower_variance_than_vimco_at_equal_evaluations(num_samples):
    """Probabilistic (seed 12): with two layers DisARM(K) evaluates log p at 4K points;
    its estimates of d L_K / d (a1, c) vary less than VIMCO(4K)'s, summed (ratio printed;
    asserted below 1/2)."""
    disarm = _two_layer_estimates(mco.DisARM(num_samples)).var(0, ddof=1).sum()
    vimco = _two_layer_estimates(mco.VIMCO(4 * num_samples)).var(0, ddof=1).sum()
    ratio = disarm / vimco
    print(f"K={num_samples}: var DisARM {disarm:.4g}, VIMCO(4K) {vimco:.4g}, ratio {ratio:.3g}")
    assert ratio < 0.5
