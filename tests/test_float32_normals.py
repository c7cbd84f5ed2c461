"""The float32 normals of the log p(x) estimate: every 24-bit value against float64 ndtri.

`sampling.noise.normal32_of_bits` turns the same 24 random bits as the float64 path into
a float32 normal by AS 241's PPND7 (Wichura 1988). Checked exhaustively, over all 2^24
values the bits can take, on TensorFlow's kernels and under XLA.
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


def test_float32_normals_scope_changes_only_float32_draws_and_by_ulps():
    shape, seed = [4000], (7, 8)
    before32 = mco.sampling.standard_normal(shape, seed, tf.float32).numpy()
    before64 = mco.sampling.standard_normal(shape, seed, tf.float64).numpy()
    with noise.float32_normals():
        inside32 = mco.sampling.standard_normal(shape, seed, tf.float32).numpy()
        inside64 = mco.sampling.standard_normal(shape, seed, tf.float64).numpy()
    after32 = mco.sampling.standard_normal(shape, seed, tf.float32).numpy()
    np.testing.assert_array_equal(inside64, before64)
    np.testing.assert_array_equal(after32, before32)  # the scope ends with its block
    assert not np.array_equal(inside32, before32)  # the float32 quantile was used
    np.testing.assert_allclose(inside32, before32, rtol=1e-6, atol=1e-6)


def test_log_marginal_estimate_draws_its_float32_normals_by_the_float32_quantile():
    """With K = 1, log p(x, z) = log q(z) + z makes each estimate the drawn normal itself
    (up to the rounding of adding and removing log q): it is the float32 quantile's draw,
    not the float64 path's, which `sampling.sample` outside the estimate gives."""
    q = tfd.Normal(tf.zeros(2000), tf.ones(2000))

    def log_joint(z):
        return q.log_prob(z) + z

    def replayed(z):
        return log_joint(z)[0] - q.log_prob(z)[0]

    seed = (3, 9)
    chunk_seed = tf.random.experimental.stateless_split(mco.sampling.stateless_seed(seed), 1)[0]
    estimate = mco.log_marginal_estimate(q, log_joint, seed, num_samples=1, chunk_size=1)
    with noise.float32_normals():
        new = replayed(mco.sampling.sample(q, 1, chunk_seed))
    old = replayed(mco.sampling.sample(q, 1, chunk_seed))
    np.testing.assert_array_equal(estimate, new)
    assert not np.array_equal(estimate, old)
