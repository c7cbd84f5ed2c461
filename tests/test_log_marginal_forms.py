"""The form of `log_marginal_estimate` and `model.log_marginal`: a reference loop's values.

`log_marginal_estimate` runs its full chunks in one `tf.while_loop` and the remainder
chunk after it, starting the running log-sum-exp at -inf. These tests hold it to the
documented semantics, in every mode: the value of a plain Python loop over the chunks,
chunk i drawing with the i-th seed of `stateless_split(stateless_seed(seed), n)` (to
float rounding; the first chunk's fold bit for bit); chunks that divide K, a remainder,
K below the chunk size, K = 1, a structured q with a discrete leaf. They check the
memory bound in the traced graph (no draw of more than one chunk, the chunk's
computation traced at most twice whatever K) and that `model.log_marginal` keeps one
traced function per configuration, compiled with XLA as `jit_compile` says.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import sampling
from mcobjectives.networks import BernoulliDecoder, GaussianEncoder
from tests import toy
from tests.conftest import GRAPH_MODES, in_mode, modes

tfd = tfp.distributions

B, D = 3, 2
SEED = tf.constant([5, 11], tf.int32)
MU = np.array([0.4, -0.3])
X = np.random.default_rng(1).normal(size=(B, D))


def _toy():
    """(q, log_joint) of the toy Gaussian in float64, q offset from the posterior."""
    mu, x = tf.constant(MU), tf.constant(X)
    q = toy.make_q(tf.constant(0.5 * np.eye(D)), 0.5 * mu + 0.3, x)
    return q, toy.make_log_joint(mu, x)


def _mixture():
    """A joint q with an int32 Categorical leaf c and a float64 Normal leaf n | c."""
    log_pi = tf.constant(np.log([0.3, 0.7]))
    mu = tf.constant([-1.0, 1.5], tf.float64)
    x = tf.constant([0.2, -0.7, 2.0], tf.float64)
    q = tfd.JointDistributionNamed(
        {
            "c": tfd.Categorical(logits=tf.zeros([3, 2], tf.float64)),
            "n": lambda c: tfd.Normal(tf.gather(mu, c) + 0.1, tf.constant(0.8, tf.float64)),
        }
    )
    std = tfd.Normal(tf.constant(0.0, tf.float64), 1.0)

    def log_joint(z):
        c, n = z["c"], z["n"]
        return tf.gather(log_pi, c) + std.log_prob(n - tf.gather(mu, c)) + std.log_prob(x - n)

    return q, log_joint


PROBLEMS = {"toy": _toy, "mixture": _mixture}


def _reference(problem, seed, num_samples, chunk_size):
    """The documented semantics, eagerly: a Python loop over the chunks, chunk i drawing
    with the i-th seed of the split; the log-mean-exp of all the log weights in NumPy."""
    q, log_joint = PROBLEMS[problem]()
    chunk = min(chunk_size, num_samples)
    full, remainder = divmod(num_samples, chunk)
    lengths = [chunk] * full + ([remainder] if remainder else [])
    seeds = tf.random.experimental.stateless_split(sampling.stateless_seed(seed), len(lengths))
    log_w = []
    for i, n in enumerate(lengths):
        z = sampling.sample(q, n, seeds[i])
        log_q = sum(tf.nest.flatten(q.log_prob_parts(z))) if problem == "mixture" else q.log_prob(z)
        log_w.append((log_joint(z) - log_q).numpy())
    log_w = np.concatenate(log_w, axis=0)
    assert log_w.shape == (num_samples, B)
    top = log_w.max(axis=0)
    return top + np.log(np.mean(np.exp(log_w - top), axis=0))


def _estimate(problem, mode, num_samples, chunk_size):
    def fn():
        q, log_joint = PROBLEMS[problem]()
        return mco.log_marginal_estimate(q, log_joint, SEED, num_samples, chunk_size)

    return in_mode(fn, mode)()


# (K, chunk size): chunks that divide K, a remainder, K below the chunk, K = 1 (alone and
# in chunks of 1), and chunks of 1 sample.
CASES = [(60, 20), (50, 20), (7, 20), (1, 20), (1, 1), (13, 1)]


@pytest.mark.parametrize(("num_samples", "chunk_size"), CASES, ids=lambda v: str(v))
def test_equals_a_loop_over_the_documented_chunks(num_samples, chunk_size, mode):
    """The value of the reference loop over the chunks and their seeds, to 1e-10."""
    out = _estimate("toy", mode, num_samples, chunk_size).numpy()
    expected = _reference("toy", SEED, num_samples, chunk_size)
    print(f"K {num_samples} chunk {chunk_size}: max |diff| {np.max(np.abs(out - expected)):.2g}")
    assert out.shape == (B,) and out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=0.0, atol=1e-10)


def test_structured_q_with_a_discrete_leaf_equals_the_loop(mode):
    """An int32 Categorical leaf and a float64 Normal leaf, K = 25 in chunks of 10."""
    out = _estimate("mixture", mode, 25, 10).numpy()
    expected = _reference("mixture", SEED, 25, 10)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=0.0, atol=1e-10)


def test_one_chunk_is_its_log_sum_exp_bit_for_bit():
    """The running total starts at -inf: with one chunk the estimate is exactly the
    chunk's logsumexp minus log K (eagerly, the same kernels)."""
    q, log_joint = _toy()
    seed = tf.random.experimental.stateless_split(sampling.stateless_seed(SEED), 1)[0]
    z = sampling.sample(q, 40, seed)
    chunk = tf.reduce_logsumexp(log_joint(z) - q.log_prob(z), axis=0)
    expected = (chunk - tf.constant(math.log(40), tf.float64)).numpy()
    np.testing.assert_array_equal(mco.log_marginal_estimate(q, log_joint, SEED, 40, 40), expected)


def test_float32_model_gives_float32(mode):
    """A float32 q and model: a float32 estimate, the reference's to float32 rounding."""

    def problem():
        q, log_joint = _toy()
        loc, scale = (tf.cast(t, tf.float32) for t in (q.distribution.loc, q.distribution.scale))
        q32 = tfd.Independent(tfd.Normal(loc, scale), 1)
        return q32, lambda z: tf.cast(log_joint(tf.cast(z, tf.float64)), tf.float32)

    def fn():
        return mco.log_marginal_estimate(*problem(), SEED, 30, 8)

    out = in_mode(fn, mode)().numpy()
    q32, log_joint = problem()
    seeds = tf.random.experimental.stateless_split(SEED, 4)
    log_w = np.concatenate(
        [
            (log_joint(z) - q32.log_prob(z)).numpy()
            for z in (sampling.sample(q32, n, seeds[i]) for i, n in enumerate([8, 8, 8, 6]))
        ]
    ).astype(np.float64)
    top = log_w.max(axis=0)
    expected = top + np.log(np.mean(np.exp(log_w - top), axis=0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5)


# Memory: only chunks are ever drawn ----------------------------------------------------------


def _traced(mode, num_samples, chunk_size, monkeypatch):
    """(value, sample sizes drawn, z shapes given to log_joint, op types of the graph)."""
    drawn, shapes = [], []
    real_sample = sampling.sample

    def spy_sample(q, n, seed):
        drawn.append(n)
        return real_sample(q, n, seed)

    monkeypatch.setattr(sampling, "sample", spy_sample)

    def fn():
        q, log_joint = _toy()

        def recording(z):
            shapes.append(tuple(z.shape.as_list()))
            return log_joint(z)

        return mco.log_marginal_estimate(q, recording, SEED, num_samples, chunk_size)

    fn = in_mode(fn, mode)
    ops = {op.type for op in fn.get_concrete_function().graph.get_operations()}
    return fn().numpy(), drawn, shapes, ops


@modes(*GRAPH_MODES, reason="the trace of a graph; eagerly the loop is Python's")
@pytest.mark.parametrize(("num_samples", "chunk_size"), [(5000, 7), (5000, 500)])
def test_the_graph_holds_one_chunk_whatever_k(num_samples, chunk_size, mode, monkeypatch):
    """K = 5000 in 715 chunks of 7 (and a remainder of 5) or 10 chunks of 500: a While
    loop; log_joint traced once per chunk shape (at most twice), on [chunk, B, D] draws;
    no draw of more than a chunk (the dtype probe draws 1)."""
    value, drawn, shapes, ops = _traced(mode, num_samples, chunk_size, monkeypatch)
    remainder = num_samples % chunk_size
    expected = {(chunk_size, B, D)} | ({(remainder, B, D)} if remainder else set())
    print(f"drawn {sorted(set(drawn))}, log_joint traced on {shapes}")
    assert ops & {"While", "StatelessWhile"}
    assert sorted(shapes) == sorted(expected)  # each chunk shape traced once
    assert max(drawn) == chunk_size and set(drawn) <= {1, chunk_size, remainder}
    assert np.all(np.isfinite(value))


def test_eagerly_each_chunk_is_drawn_alone(monkeypatch):
    """Eagerly the loop runs in Python: 5 chunks of 6 and a remainder of 3, one at a time."""
    drawn, shapes = [], []
    real_sample = sampling.sample
    monkeypatch.setattr(
        sampling, "sample", lambda q, n, seed: drawn.append(n) or real_sample(q, n, seed)
    )
    q, log_joint = _toy()
    mco.log_marginal_estimate(q, lambda z: shapes.append(z.shape[0]) or log_joint(z), SEED, 33, 6)
    assert shapes == [6] * 5 + [3]
    assert max(drawn) == 6


# model.log_marginal ----------------------------------------------------------------------------

PIXELS, LATENT = 20, 4


class _CountingEncoder(GaussianEncoder):
    """A GaussianEncoder that counts its calls (each trace of the estimate calls it once)."""

    calls = 0

    def call(self, x, context=None):
        type(self).calls += 1
        return super().call(x, context)


def _small_model():
    keras.utils.set_random_seed(3)
    model = mco.ImportanceWeightedAutoencoder(
        _CountingEncoder(LATENT, (16,)),
        BernoulliDecoder(PIXELS, (16,)),
        tfd.MultivariateNormalDiag(tf.zeros(LATENT)),
        mco.IWAE(2),
        seed=1,
    )
    model(_pixels(2))
    return model


@functools.cache
def _shared_model():
    """One model for the tests that do not count traces: they share its traced functions."""
    return _small_model()


def _pixels(batch, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random([batch, PIXELS]) < 0.3).astype(np.float32)


def _eager_estimate(model, x, seed, num_samples, chunk_size):
    x = tf.constant(x)
    return mco.log_marginal_estimate(
        model.posterior(x), model.log_joint(x), seed, num_samples, chunk_size
    ).numpy()


@pytest.mark.parametrize("jit_compile", [False, True, "auto"])
def test_model_log_marginal_is_the_estimate(jit_compile):
    """model.log_marginal = log_marginal_estimate of its q and log joint, run eagerly: to
    1e-5 without XLA (the same kernels in a graph) and 1e-4 (float32 rounding) with it."""
    model, x = _shared_model(), _pixels(5)
    out = model.log_marginal(x, 7, 50, 15, jit_compile=jit_compile).numpy()
    expected = _eager_estimate(model, x, 7, 50, 15)
    print(f"jit_compile {jit_compile}: max |diff| {np.max(np.abs(out - expected)):.2g}")
    assert out.shape == (5,) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4 if jit_compile is True else 1e-5)


@modes(*GRAPH_MODES, reason="eagerly the call is that of test_model_log_marginal_is_the_estimate")
def test_model_log_marginal_inside_a_function(mode):
    """Called inside the caller's own (XLA or not) function, the eager call's values."""
    model, x = _shared_model(), tf.constant(_pixels(5))
    out = in_mode(lambda x: model.log_marginal(x, 7, 50, 15, jit_compile=False), mode)(x)
    expected = _eager_estimate(model, x, 7, 50, 15)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-4)


def test_model_log_marginal_traces_once_per_configuration():
    """New seeds (ints or tensors) and new batches of one size reuse the trace; a second
    batch size traces once more (a generalized batch size), a third not at all."""
    model = _small_model()
    _CountingEncoder.calls = 0
    for seed in (1, 2, tf.constant([3, 4]), np.array([5, 6])):
        model.log_marginal(_pixels(4, seed=1), seed, 20, 7, jit_compile=False)
    assert _CountingEncoder.calls == 1
    model.log_marginal(_pixels(6), 1, 20, 7, jit_compile=False)
    model.log_marginal(_pixels(9), 1, 20, 7, jit_compile=False)
    assert _CountingEncoder.calls == 2
    model.log_marginal(_pixels(4), 1, 21, 7, jit_compile=False)  # another K: its own trace
    assert _CountingEncoder.calls == 3


def test_auto_compiles_large_calls_with_xla():
    """ "auto" runs a call of fewer than 2**17 draws (K * B) without XLA, which keeps the
    decoder's run-time pixel check, and a call of 2**17 with XLA, which compiles it away."""
    model = _shared_model()
    x = _pixels(4) * 2.0  # pixels of 2: out of [0, 1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixels"):
        model.log_marginal(x[:3], 1, 2**15, 2**13)  # 3 * 2**15 draws
    assert model.log_marginal(x, 1, 2**15, 2**13).shape == (4,)  # 2**17 draws


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"jit_compile": "xla"}, TypeError, "jit_compile"),
        ({"jit_compile": 1}, TypeError, "jit_compile"),
        ({"num_samples": 5.0}, TypeError, "num_samples"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"seed": tf.constant([[1, 2]] * 3)}, ValueError, "per-example"),
    ],
)
def test_model_log_marginal_bad_arguments(kwargs, error, match):
    model = _shared_model()
    call = {"seed": 1, "num_samples": 10, "chunk_size": 5, **kwargs}
    with pytest.raises(error, match=match):
        model.log_marginal(_pixels(3), **call)
