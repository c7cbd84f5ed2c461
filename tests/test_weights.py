"""Tests of mcobjectives.weights against brute-force NumPy, in eager, tf.function and XLA."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mcobjectives import weights
from tests.conftest import in_mode

DTYPES = (tf.float32, tf.float64)
# float64 results match NumPy float64 to 1e-12; float32 results to 1e-5 (sums of up to
# 100 float32 terms, ~K * 6e-8 relative, on values of magnitude ~10).
TOL = {tf.float32: 1e-5, tf.float64: 1e-12}


def _run(fn, mode, *args):
    """`fn(*args)` in `mode`, converted to NumPy."""
    return in_mode(fn, mode)(*args).numpy()


def _logsumexp(x, axis=0):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _brute_leave_one_out(x):
    """out[i] = logsumexp of x with entry i removed, along axis 0, by an explicit loop."""
    x = np.asarray(x, np.float64)
    return np.stack([_logsumexp(np.delete(x, i, axis=0)) for i in range(x.shape[0])])


def _random(shape, seed, scale=3.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


# --- leave_one_out_logsumexp ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("k", [2, 3, 10, 100])
def test_leave_one_out_matches_brute_force(k, dtype, mode):
    """Random [K, B] inputs: every entry is the log-sum-exp of the other K - 1 entries."""
    x = _random((k, 5), seed=k).astype(dtype.as_numpy_dtype)
    out = _run(lambda t: weights.leave_one_out_logsumexp(t), mode, tf.constant(x))
    expected = _brute_leave_one_out(x)
    print(f"max |error| {np.max(np.abs(out - expected)):.3g}")
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype], atol=TOL[dtype])


# One entry dominating by ~1000 makes exp(other - max) underflow to 0, so the naive
# log(exp(total) - exp(x_i)) is log(0) = -inf at the maximum and loses everything else;
# ties put two maxima in one vector.
EXTREMES = {
    "max-first-by-1000": [0.0, -1000.0, -1001.0],
    "shifted-by-1000": [5.0, -995.0, -996.0],
    "max-last-by-1000": [-1000.0, -1001.0, 0.0],
    "one-huge": [1000.0, 0.0, 0.0],
    "tie-two-maxima": [3.0, 3.0, 0.0],
    "tie-dominant": [-2.0, 700.0, 700.0],
}


@pytest.mark.parametrize("case", EXTREMES)
def test_leave_one_out_extreme_inputs(case, mode):
    """Dominant entries and ties are exact to 1e-12 relative in float64."""
    x = np.array(EXTREMES[case])
    out = _run(lambda t: weights.leave_one_out_logsumexp(t), mode, tf.constant(x))
    expected = _brute_leave_one_out(x)
    print(f"{case}: {out} vs {expected}")
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("axis", [1, -1])
def test_leave_one_out_along_other_axis(axis, mode):
    """A non-zero `axis` leaves entries out along that axis only."""
    x = _random((4, 6, 3), seed=7)
    out = _run(lambda t: weights.leave_one_out_logsumexp(t, axis=axis), mode, tf.constant(x))
    expected = np.moveaxis(_brute_leave_one_out(np.moveaxis(x, axis, 0)), 0, axis)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shape", "axis"), [([1, 4], 0), ([4, 1], 1), ([4, 1], -1), ([1], 0)])
def test_leave_one_out_single_entry_raises(shape, axis, mode):
    """K = 1 along the axis has nothing to leave one out of: ValueError."""
    fn = in_mode(lambda: weights.leave_one_out_logsumexp(tf.zeros(shape), axis=axis), mode)
    with pytest.raises(ValueError, match="at least two entries"):
        fn()


# --- log_mean_exp -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("axis", [0, 1])
def test_log_mean_exp_matches_numpy(axis, dtype, mode):
    """log_mean_exp is log(mean(exp(x))) along the axis."""
    x = _random((7, 5), seed=3, scale=2.0).astype(dtype.as_numpy_dtype)
    out = _run(lambda t: weights.log_mean_exp(t, axis=axis), mode, tf.constant(x))
    expected = np.log(np.mean(np.exp(x.astype(np.float64)), axis=axis))
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype], atol=TOL[dtype])


def test_log_mean_exp_stable_for_large_inputs(mode):
    """Inputs whose exp overflows give log_mean_exp(x) + 800, not inf."""
    x = _random((7, 5), seed=4)
    out = _run(lambda t: weights.log_mean_exp(t), mode, tf.constant(x + 800.0))
    expected = np.log(np.mean(np.exp(x), axis=0)) + 800.0
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=0.0)


# --- normalized_weights -------------------------------------------------------------------


def _columns_on_different_scales():
    """[K=6, B=4] log weights: columns centred at 0, +1000 and -1000, and one spread by 50."""
    x = _random((6, 4), seed=5, scale=1.0)
    x[:, 1] += 1000.0
    x[:, 2] -= 1000.0
    x[:, 3] *= 50.0
    return x


def _softmax(x):
    e = np.exp(x - np.max(x, axis=0))
    return e / np.sum(e, axis=0)


@pytest.mark.parametrize("axis", [0, 1])
def test_normalized_weights_per_column(axis, mode):
    """Each column sums to 1 and equals the softmax of that column alone."""
    x = _columns_on_different_scales()
    layout = x if axis == 0 else x.T
    out = _run(lambda t: weights.normalized_weights(t, axis=axis), mode, tf.constant(layout))
    out = out if axis == 0 else out.T
    print(f"column sums {out.sum(axis=0)}")
    np.testing.assert_allclose(out.sum(axis=0), np.ones(4), rtol=0.0, atol=1e-12)
    # Normalizing across the batch would leave the -1000 column at exactly zero.
    assert np.all(out.max(axis=0) > 0.1)
    np.testing.assert_allclose(out, _softmax(x), rtol=1e-12, atol=1e-300)


# --- effective_sample_size ----------------------------------------------------------------


def _ess_numpy(x):
    """(sum w)^2 / sum w^2 along axis 0, with w scaled by exp(-max) for stability."""
    w = np.exp(x - np.max(x, axis=0))
    return np.sum(w, axis=0) ** 2 / np.sum(w**2, axis=0)


@pytest.mark.parametrize("k", [1, 5, 100])
def test_ess_of_equal_weights_is_k(k, mode):
    """K equal weights (at any common level) have ESS K."""
    x = np.array([[0.0, -700.0, 700.0]]).repeat(k, axis=0)
    out = _run(lambda t: weights.effective_sample_size(t), mode, tf.constant(x))
    np.testing.assert_allclose(out, np.full(3, float(k)), rtol=1e-12)


def test_ess_of_one_dominant_weight_is_one(mode):
    """One weight dominating the rest by 1000 gives ESS 1."""
    x = np.array([[0.0, 5.0], [-1000.0, -995.0], [-1001.0, 1005.0]])
    out = _run(lambda t: weights.effective_sample_size(t), mode, tf.constant(x))
    np.testing.assert_allclose(out, [1.0, 1.0], rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("k", [2, 10, 100])
def test_ess_of_random_weights(k, dtype, mode):
    """Random weights: ESS is in [1, K] and equals (sum w)^2 / sum w^2 from NumPy."""
    x = _random((k, 4), seed=k).astype(dtype.as_numpy_dtype)
    out = _run(lambda t: weights.effective_sample_size(t), mode, tf.constant(x))
    expected = _ess_numpy(x.astype(np.float64))
    print(f"ESS {out} (K = {k}), relative error {np.max(np.abs(out / expected - 1)):.3g}")
    assert np.all(out >= 1.0 - TOL[dtype]) and np.all(out <= k * (1.0 + TOL[dtype]))
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=lambda d: d.name)
def test_ess_accurate_for_large_log_weights(dtype, mode):
    """Columns shifted by 0, +1000, -1000 and +300 match NumPy's ESS of the same inputs."""
    base = _random((20, 1), seed=6)
    x = (base + np.array([0.0, 1000.0, -1000.0, 300.0])).astype(dtype.as_numpy_dtype)
    out = _run(lambda t: weights.effective_sample_size(t), mode, tf.constant(x))
    expected = _ess_numpy(x.astype(np.float64))
    print(f"ESS {out}, relative error {np.max(np.abs(out / expected - 1)):.3g}")
    # Tolerance as for unshifted weights: subtracting the maximum first gives ~1e-7
    # relative error in float32 here.
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype])
