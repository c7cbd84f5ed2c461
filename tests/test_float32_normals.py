"""The library's float32 normals: every 24-bit value against float64 ndtri.

`sampling.noise.normal32_of_bits` turns 24 random bits into a float32 normal by AS 241's
PPND7 (Wichura 1988), the quantile of the uniform (m + 1/2) 2^-24. Checked exhaustively,
over all 2^24 values the bits can take, on TensorFlow's kernels and under XLA; then that
every float32 draw of the library (training and the estimate of log p(x)) is it.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives.sampling import noise

tfd = tfp.distributions

_ALL_BITS = np.arange(2**24, dtype=np.uint32) << 8  # every value of the top 24 bits


@pytest.fixture(scope="module")
def float64_quantiles():
    """ndtri((m + 1/2) 2^-24) in float64 for every m, and float32's ulp there."""
    m = np.arange(2**24, dtype=np.float64)
    truth = tf.math.ndtri(tf.constant((m + 0.5) * 2.0**-24)).numpy()
    return truth, np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf", "xla"])
def test_every_float32_normal_is_within_6_ulps_of_the_float64_quantile(
    float64_quantiles, jit_compile
):
    truth, ulp = float64_quantiles
    draw = tf.function(noise.normal32_of_bits, jit_compile=jit_compile, autograph=False)
    z = draw(tf.constant(_ALL_BITS)).numpy()
    assert z.dtype == np.float32
    ulps = np.abs(z.astype(np.float64) - truth) / ulp
    print(f"max {ulps.max():.2f} ulps, mean {ulps.mean():.3f}, max relative "
          f"{np.max(np.abs(z - truth) / np.abs(truth)):.2e}")  # fmt: skip
    assert ulps.max() < 6


def test_float32_normals_agree_across_modes_and_are_odd():
    bits = tf.constant(_ALL_BITS)
    kernels = noise.normal32_of_bits(bits).numpy()
    xla = tf.function(noise.normal32_of_bits, jit_compile=True)(bits).numpy()
    scale = np.spacing(np.abs(kernels)).astype(np.float64)
    assert np.max(np.abs(kernels.astype(np.float64) - xla) / scale) <= 8
    half = 2**23  # m and 2^24 - 1 - m are mirror images: exactly opposite normals
    np.testing.assert_array_equal(kernels[:half], -kernels[::-1][:half])


def test_float32_draws_are_the_float32_quantile_of_their_bits_and_float64_draws_ndtri():
    """standard_normal in float32 is normal32_of_bits of the seed's bits, within 6 ulps of
    float64 ndtri of the same 24-bit uniform; in float64 it is ndtri of the 52-bit one."""
    shape, seed = [4000], (7, 8)
    bits = mco.sampling.bits.uint32_bits(shape, mco.sampling.stateless_seed(seed)).numpy()
    draws32 = mco.sampling.standard_normal(shape, seed, tf.float32).numpy()
    np.testing.assert_array_equal(draws32, noise.normal32_of_bits(tf.constant(bits)).numpy())
    u = ((bits >> 8).astype(np.float64) + 0.5) * 2.0**-24
    truth = tf.math.ndtri(tf.constant(u)).numpy()
    ulps = np.abs(draws32 - truth) / np.spacing(np.abs(truth).astype(np.float32))
    print(f"float32 draws: max {ulps.max():.2f} ulps from float64 ndtri of their uniforms")
    assert ulps.max() < 6
    draws64 = mco.sampling.standard_normal(shape, seed, tf.float64).numpy()
    u64 = mco.sampling.bits.uniform(shape, mco.sampling.stateless_seed(seed), tf.float64)
    np.testing.assert_array_equal(draws64, tf.math.ndtri(u64).numpy())


def test_training_and_the_log_marginal_estimate_draw_the_same_float32_normals():
    """With K = 1, log p(x, z) = log q(z) + z makes each estimate the drawn normal itself
    (up to the rounding of adding and removing log q): the estimate's draws are those of
    `sampling.sample`, the objectives' sampler, with the same seed."""
    q = tfd.Normal(tf.zeros(2000), tf.ones(2000))

    def log_joint(z):
        return q.log_prob(z) + z

    def replayed(z):
        return log_joint(z)[0] - q.log_prob(z)[0]

    seed = (3, 9)
    chunk_seed = tf.random.experimental.stateless_split(mco.sampling.stateless_seed(seed), 1)[0]
    estimate = mco.log_marginal_estimate(q, log_joint, seed, num_samples=1, chunk_size=1)
    z = mco.sampling.sample(q, 1, chunk_seed)
    np.testing.assert_array_equal(estimate, replayed(z))
    bits = mco.sampling.bits.uint32_bits([1, 2000], chunk_seed)
    np.testing.assert_array_equal(z, noise.normal32_of_bits(bits))
