"""Pieces of the evaluation compiled by XLA on their own (`core.compiled.compiled_pieces`).

Inside `mcobjectives.core.compiled.compiled_pieces`, a graph traced outside XLA runs the
sampler's noise (`sampling.noise.noise`) and a `PixelBernoulli`'s sum over pixels each
in one jit-compiled function, so that `model.log_marginal` without XLA runs its matmuls on
TensorFlow's kernels and its elementwise work fused. These tests check: the pixel sum
equals TensorFlow's sum of the same formula (and TFP's Bernoulli) to float rounding; the
noise's normals equal those outside the block and those of a fully compiled graph to
float64 rounding (the uniforms are integer arithmetic; only ndtri's last bits may differ);
eagerly nothing changes; the setting ends with the block (also after an error); and
model.log_marginal agrees across its jit modes and with the library's estimate outside
the block.

Tolerances. A sum of 784 float32 pixel values of magnitude <= 30 (|l| <= 30): the two
orders of summation differ by at most 784 * 30 * eps, about 3e-3; we take 1e-2 (measured
about 1e-3). float64 normals: 1e-12 absolute (ndtri's last bits; measured 0 against TensorFlow's
kernels, 3e-15 against a fully compiled graph).
The estimates (log p^(x) about -550 on random pixels): 1e-5 relative (measured about
2e-7).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import sampling
from mcobjectives.core.compiled import compiled_pieces
from mcobjectives.experimental import mnist
from mcobjectives.networks.bernoulli import PixelBernoulli

tfd = tfp.distributions
_RNG = np.random.default_rng(20261207)
LOGITS = (30 * np.tanh(_RNG.normal(size=[6, 784]))).astype(np.float32)
PIXELS = (_RNG.random([6, 784]) < 0.5).astype(np.float32)


def _pixels(logits):
    return PixelBernoulli(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)


def _log_prob(x, logits):
    return _pixels(logits).log_prob(x)


def _in_block(x, logits):
    with compiled_pieces():
        return _log_prob(x, logits)


def _assert_close(fused, atol, **references):
    """Prints max |fused - reference| for each reference, then asserts each within atol."""
    gaps = {name: np.max(np.abs(fused - value)) for name, value in references.items()}
    print(", ".join(f"max |fused - {name}| {gap}" for name, gap in gaps.items()))
    for name, value in references.items():
        np.testing.assert_allclose(fused, value, rtol=0, atol=atol, err_msg=name)


def test_compiled_pieces_equal_the_plain_sum_and_tfp_to_float_rounding():
    plain = tf.function(_log_prob, autograph=False)(PIXELS, LOGITS).numpy()
    fused = tf.function(_in_block, autograph=False)(PIXELS, LOGITS).numpy()
    tfp_value = tfd.Independent(tfd.Bernoulli(logits=LOGITS), 1).log_prob(PIXELS).numpy()
    _assert_close(fused, 1e-2, plain=plain, tfp=tfp_value)


def _ops_of(fn):
    graph = tf.function(fn, autograph=False).get_concrete_function(PIXELS, LOGITS).graph
    return {op.type for op in graph.get_operations()}


def test_compiled_pieces_trace_one_xla_function_and_only_inside_the_block():
    ops_of = _ops_of
    assert "Softplus" not in ops_of(_in_block)
    inside, outside = ops_of(_in_block), ops_of(_log_prob)
    assert {"StatefulPartitionedCall", "PartitionedCall"} & inside  # the compiled sum
    assert "Exp" in outside and "Exp" not in inside  # its softplus lives in that function


def test_compiled_pieces_leave_eager_values_unchanged():
    np.testing.assert_array_equal(_in_block(PIXELS, LOGITS), _log_prob(PIXELS, LOGITS))


def test_compiled_pieces_end_with_their_block_even_after_an_error():
    with pytest.raises(RuntimeError):
        with compiled_pieces():
            with compiled_pieces():
                pass
            assert "Exp" not in _ops_of(_log_prob)  # the inner block restores the outer one
            raise RuntimeError("inside")
    assert "Exp" in _ops_of(_log_prob)


def test_log_marginal_of_the_keras_model_agrees_in_every_jit_mode_and_with_the_plain_estimate():
    x = tf.constant(PIXELS[:3])
    model = mnist.one_layer(mco.IWAE(4), num_pixels=784, latent_size=8)
    model(x)
    seed = tf.constant([3, 4], tf.int32)
    estimates = {
        jit: model.log_marginal(x, seed, 60, 25, jit_compile=jit).numpy() for jit in (False, True)
    }
    plain = mco.log_marginal_estimate(model.posterior(x), model.log_joint(x), seed, 60, 25)
    print({k: v.tolist() for k, v in estimates.items()}, plain.numpy().tolist())
    for value in estimates.values():
        np.testing.assert_allclose(value, plain.numpy(), rtol=1e-5)


def _normals(seed):
    return sampling.standard_normal([7, 3, 5], seed, tf.float64)


def _normals_in_block(seed):
    with compiled_pieces():
        return _normals(seed)


def test_compiled_pieces_give_the_noise_of_a_compiled_graph_from_the_same_bits():
    seed = tf.constant([11, 12], tf.int32)
    plain = tf.function(_normals, autograph=False)(seed).numpy()
    xla = tf.function(_normals, jit_compile=True, autograph=False)(seed).numpy()
    fused = tf.function(_normals_in_block, autograph=False)(seed).numpy()
    _assert_close(fused, 1e-12, plain=plain, xla=xla)
    np.testing.assert_array_equal(_normals_in_block(seed), _normals(seed))  # eagerly: unchanged


def test_compiled_pieces_sample_a_gaussian_q_as_outside_the_block():
    q = tfd.Normal(tf.constant(np.linspace(-1, 1, 6), tf.float64), tf.constant(0.5, tf.float64))

    def draws():
        return sampling.sample(q, 9, tf.constant([5, 6], tf.int32))

    def draws_in_block():
        with compiled_pieces():
            return draws()

    fused = tf.function(draws_in_block, autograph=False)().numpy()
    np.testing.assert_allclose(fused, draws().numpy(), rtol=0, atol=1e-12)
