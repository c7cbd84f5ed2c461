"""`mcobjectives.diagnostics` against closed forms on the toy Gaussian.

For the VAE bound with M samples (IWAE with K = 1 when M = 1) on the toy Gaussian, the
gradient estimate is affine in the noise, so its law is known exactly. With
z_m = A x + b + sigma eps_m and a batch of B points (the loss is the batch mean):

  d/db  = mean_n (mu + x_n - 2 (A x_n + b)) - 2 sigma mean_{n,m} eps_nm / M
  d/dmu = mean_n (A x_n + b - mu) + sigma mean_{n,m} eps_nm / M

so each coordinate is Gaussian with known mean and variance 4 sigma^2 / (B M) (b) and
sigma^2 / (B M) (mu), and the DSNR and RMSE have closed forms too (see the tests).
Tests with "probabilistic" in their docstring compare Monte Carlo estimates with fixed
seeds to a tolerance of several standard errors and print what they measured.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from mcobjectives import diagnostics
from tests import toy

D, B = 20, 3
SIGMA = toy.SIGMA


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=D)
    A = np.eye(D) / 2 + 0.3 * rng.normal(size=(D, D))
    b = mu / 2 + 0.3 * rng.normal(size=D)
    x = rng.normal(size=(B, D)) + mu
    return mu, A, b, x


def _estimator(objective, seed=0):
    mu, A, b, x = _problem(seed)
    variables = {"mu": tf.Variable(mu), "A": tf.Variable(A), "b": tf.Variable(b)}
    xt = tf.constant(x)

    def loss_fn(s):
        q = toy.make_q(variables["A"], variables["b"], xt)
        return objective(q, toy.make_log_joint(variables["mu"], xt), seed=s)

    return diagnostics.make_gradient_estimator(loss_fn, variables)


def _closed_form(num_samples, seed=0):
    """Exact mean and per-coordinate variance of the VAE(M) estimate (ascent)."""
    mu, A, b, x = _problem(seed)
    loc = x @ A.T + b  # [B, D]
    mean_b = np.mean(mu + x - 2 * loc, axis=0)
    scale = 1.0 / (B * num_samples)
    return {
        "mu": (np.mean(loc - mu, axis=0), SIGMA**2 * scale),
        "b": (mean_b, 4 * SIGMA**2 * scale),
        "A": (np.mean([np.outer(mu + xn - 2 * ln, xn) for xn, ln in zip(x, loc, strict=True)], 0),),
    }


@pytest.mark.parametrize("num_samples", [1, 4])
def test_mean_variance_snr_match_closed_form(num_samples):
    """Probabilistic: VAE(M) mean within 4.5 SE, variance and SNR within 4.5 of their SEs."""
    R = 4000
    result = diagnostics.gradient_statistics(
        _estimator(mco.VAE(num_samples)), R, seed=3, chunk_size=1000
    )
    assert result.num_estimates == R
    exact = _closed_form(num_samples)
    for name in ("mu", "b"):
        mean, var = exact[name]
        z_mean = (result.mean[name] - mean) / math.sqrt(var / R)
        rel_var = result.variance[name] / var - 1
        snr = np.abs(mean) / math.sqrt(var)
        # The SNR's standard error (delta method): sqrt((1 + snr^2 / 2) / R).
        z_snr = (result.snr[name] - snr) / np.sqrt((1 + snr**2 / 2) / R)
        print(
            f"M={num_samples} {name}: max |z| of mean {np.abs(z_mean).max():.2f}, "
            f"variance rel. err. max {np.abs(rel_var).max():.3f}, SNR max |z| "
            f"{np.abs(z_snr).max():.2f}"
        )
        assert np.abs(z_mean).max() < 4.5
        assert np.abs(rel_var).max() < 4.5 * math.sqrt(2 / (R - 1))
        assert np.abs(z_snr).max() < 4.5
    # A's gradient is the outer product of b's with x: its mean follows exactly.
    assert np.abs(result.mean["A"] - exact["A"][0]).max() < 4.5 * math.sqrt(
        exact["b"][1] * np.max(np.abs(_problem()[3])) ** 2 / R
    )


def _expected_abs_normal(a, c):
    """E|a + c N(0, 1)|."""
    return c * math.sqrt(2 / math.pi) * math.exp(-(a**2) / (2 * c**2)) + a * math.erf(
        a / (c * math.sqrt(2))
    )


def _expected_inverse_chi(nu):
    """E[1 / chi_nu]."""
    return math.exp(math.lgamma((nu - 1) / 2) - math.lgamma(nu / 2)) / math.sqrt(2)


def test_dsnr_and_rmse_match_closed_form():
    """Probabilistic: b's DSNR along its true mean and RMSE to it, within 3% (R = 4000).

    Delta_b = m + c eps with c = 2 sigma / sqrt(B): along u = m / |m| the parallel part
    is |(|m| + c eps_1)| and the perpendicular norm c chi_(D-1), independent, so
    DSNR = E|(|m| + c N)| E[1 / chi_(D-1)] / c, and RMSE = c sqrt(D).
    """
    R = 4000
    mean_b, var_b = _closed_form(1)["b"]
    c = math.sqrt(var_b)
    norm = float(np.linalg.norm(mean_b))
    exact_dsnr = _expected_abs_normal(norm, c) * _expected_inverse_chi(D - 1) / c
    exact_rmse = c * math.sqrt(D)
    estimator = _estimator(mco.IWAE(1))
    zeros = {"mu": np.ones(D), "A": np.ones((D, D))}
    result = diagnostics.gradient_statistics(
        estimator,
        R,
        seed=5,
        chunk_size=1000,
        dsnr_direction={**zeros, "b": mean_b},
        true_gradient={**zeros, "b": mean_b},
        keep_estimates=True,
    )
    own = diagnostics.gradient_statistics(
        estimator, R, seed=5, chunk_size=1000, dsnr_direction="mean"
    )
    print(
        f"DSNR {result.dsnr['b']:.4f} (own mean {own.dsnr['b']:.4f}) vs exact "
        f"{exact_dsnr:.4f}; RMSE {result.rmse['b']:.4f} vs {exact_rmse:.4f}"
    )
    assert result.dsnr["b"] == pytest.approx(exact_dsnr, rel=0.03)
    assert own.dsnr["b"] == pytest.approx(exact_dsnr, rel=0.03)
    assert result.rmse["b"] == pytest.approx(exact_rmse, rel=0.03)
    # The quartiles are those of the per-estimate ratios and errors, from the kept estimates.
    delta = result.estimates["b"].astype(np.float64)
    unit = mean_b / norm
    parallel = delta @ unit
    ratios = np.abs(parallel) / np.linalg.norm(delta - parallel[:, None] * unit, axis=1)
    errors = np.linalg.norm(delta - mean_b, axis=1)
    np.testing.assert_allclose(result.dsnr["b"], ratios.mean(), rtol=1e-9)
    np.testing.assert_allclose(result.dsnr_quartiles["b"], np.quantile(ratios, [0.25, 0.75]))
    np.testing.assert_allclose(result.rmse_quartiles["b"], np.quantile(errors, [0.25, 0.75]))


def test_paired_bias_of_unbiased_and_shifted_estimators():
    """Probabilistic: DReG(K=1) vs IWAE(1) is unbiased (|t| < 4.5); a shift gives its bias.

    At K = 1 both estimate the same gradient, differing by the score term eps / sigma,
    so on paired seeds the difference has mean 0 and the t statistics are ~ N(0, 1).
    """
    R = 3000
    iwae = _estimator(mco.IWAE(1))
    dreg = _estimator(mco.DReG(1))
    result = diagnostics.gradient_statistics(dreg, R, seed=7, chunk_size=1000, reference=iwae)
    t = result.bias_t_statistic["b"]
    print(f"DReG vs IWAE at K=1: max |t| {np.abs(t).max():.2f}, mean t^2 {np.mean(t**2):.2f}")
    assert np.abs(t).max() < 4.5
    # The mean of 20 squared t statistics is ~ chi2_20 / 20: 99.9% of it lies in [0.35, 2.27].
    assert 0.35 < np.mean(t**2) < 2.27
    # The model gradients coincide draw by draw: zero bias, t defined as 0.
    np.testing.assert_array_equal(result.bias_t_statistic["mu"], 0.0)
    np.testing.assert_array_equal(result.squared_bias["mu"], 0.0)
    # The reference's statistics are exactly those of its own run on the same seeds.
    alone = diagnostics.gradient_statistics(iwae, R, seed=7, chunk_size=1000)
    np.testing.assert_allclose(result.reference_mean["b"], alone.mean["b"], rtol=1e-12)
    np.testing.assert_allclose(result.reference_variance["b"], alone.variance["b"], rtol=1e-9)

    def shifted(seed):
        return {k: v + 0.25 for k, v in iwae(seed).items()}

    biased = diagnostics.gradient_statistics(shifted, 50, seed=7, reference=iwae)
    np.testing.assert_allclose(biased.squared_bias["b"], 0.0625, rtol=1e-9)
    assert np.all(np.isinf(biased.bias_t_statistic["b"]) | (biased.bias_t_statistic["b"] > 1e6))


def test_chunking_and_replay_are_exact():
    """Estimate r uses the r-th split seed whatever the chunk size, as a direct call does."""
    estimator = _estimator(mco.DReG(5))
    kept = diagnostics.gradient_estimates(estimator, 40, seed=9, chunk_size=7)
    again = diagnostics.gradient_estimates(estimator, 40, seed=9, chunk_size=64)
    seeds = tf.random.experimental.stateless_split(mco.sampling.stateless_seed(9), 40)
    for r in (0, 13, 39):
        direct = estimator(tf.cast(seeds[r], tf.int32))
        for name in ("mu", "A", "b"):
            np.testing.assert_allclose(kept[name][r], direct[name].numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(kept[name][r], again[name][r], rtol=1e-10, atol=1e-12)
    assert kept["A"].shape == (40, D, D)
    stored = diagnostics.gradient_statistics(
        estimator, 40, seed=9, chunk_size=16, dsnr_direction="mean"
    )
    replayed = diagnostics.gradient_statistics(
        estimator, 40, seed=9, chunk_size=16, dsnr_direction="mean", max_stored_elements=0
    )
    for name in ("mu", "A", "b"):
        assert stored.dsnr[name] == pytest.approx(replayed.dsnr[name], rel=1e-12)
        np.testing.assert_allclose(stored.mean[name], np.mean(kept[name], axis=0), rtol=1e-10)
        np.testing.assert_allclose(
            stored.variance[name], np.var(kept[name], axis=0, ddof=1), rtol=1e-8
        )


def test_xla_matches_tf_function():
    """Chunks compiled with XLA give the same statistics (the noise is XLA-stable)."""
    estimator = _estimator(mco.IWAE(10))
    plain = diagnostics.gradient_statistics(estimator, 64, seed=1, chunk_size=32)
    xla = diagnostics.gradient_statistics(estimator, 64, seed=1, chunk_size=32, jit_compile=True)
    for name in ("mu", "A", "b"):
        np.testing.assert_allclose(xla.mean[name], plain.mean[name], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(xla.variance[name], plain.variance[name], rtol=1e-6)


def test_random_direction_dsnr():
    """Probabilistic: the closed form matches 2e5 Gaussian vectors in 20 dimensions (1%)."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(200_000, 20))
    u = np.zeros(20)
    u[0] = 1.0
    measured = np.mean(np.abs(g[:, 0]) / np.linalg.norm(g[:, 1:], axis=1))
    print(f"random-direction DSNR: {measured:.4f} vs {diagnostics.random_direction_dsnr(20):.4f}")
    assert diagnostics.random_direction_dsnr(20) == pytest.approx(measured, rel=0.01)


def test_snr_of_a_given_mean_and_variance():
    """|mean| / sqrt(variance); 0/0 = 0, x/0 = inf, NaN stays; of samples, within 4.5 SEs.

    Probabilistic: 10^5 draws of N(0.5, 2^2) have SNR 0.25 up to the delta-method standard
    error sqrt((1 + SNR^2 / 2) / R).
    """
    np.testing.assert_array_equal(
        diagnostics.snr([3.0, -4.0, 0.0, 1.0, 1.0], [4.0, 4.0, 0.0, 0.0, np.nan]),
        [1.5, 2.0, 0.0, np.inf, np.nan],
    )
    R = 100_000
    draws = np.random.default_rng(1).normal(0.5, 2.0, size=R)
    measured = diagnostics.snr(draws.mean(), draws.var(ddof=1))
    print(f"SNR of N(0.5, 4) samples: {measured:.4f} vs 0.25")
    assert abs(measured - 0.25) < 4.5 * math.sqrt((1 + 0.25**2 / 2) / R)
    with pytest.raises(ValueError, match="must be >= 0"):
        diagnostics.snr([1.0], [-1.0])
    with pytest.raises(ValueError, match="differ in shape"):
        diagnostics.snr([1.0, 2.0], [1.0])


def test_directional_snr_of_given_estimates():
    """Exact ratios on hand-made estimates; Gaussian estimates along a known direction.

    Probabilistic: Delta = m u + c eps in 10 dimensions gives
    DSNR = E|m + c N| E[1 / chi_9] / c (as in test_dsnr_and_rmse_match_closed_form);
    5 * 10^4 estimates match it within 2 %.
    """
    # Along u = e1 the ratios are 3/4, 1/1 and 0/2: DSNR = 7/12.
    estimates = np.array([[3.0, 4.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mean, quartiles = diagnostics.directional_snr(estimates, [2.0, 0.0, 0.0])
    assert mean == pytest.approx(7 / 12, rel=1e-12)
    np.testing.assert_allclose(quartiles, np.quantile([0.75, 1.0, 0.0], [0.25, 0.75]))
    dim, m, c = 10, 0.8, 0.5
    u = np.random.default_rng(2).normal(size=dim)
    u /= np.linalg.norm(u)
    draws = m * u + c * np.random.default_rng(3).normal(size=(50_000, dim))
    measured, _ = diagnostics.directional_snr(draws, 3.0 * u)
    exact = _expected_abs_normal(m, c) * _expected_inverse_chi(dim - 1) / c
    print(f"DSNR along u: {measured:.4f} vs exact {exact:.4f}")
    assert measured == pytest.approx(exact, rel=0.02)
    assert math.isnan(diagnostics.directional_snr(np.ones((4, 1)), [1.0])[0])
    with pytest.raises(ValueError, match="has norm 0"):
        diagnostics.directional_snr(estimates, np.zeros(3))
    with pytest.raises(ValueError, match="must be"):
        diagnostics.directional_snr(estimates, np.ones(2))


def test_snr_noise_floor():
    """Probabilistic: the mean plug-in SNR of 10^5 sets of R = 10 zero-mean normal estimates
    is the floor within 1 % (about 4 standard errors); sqrt(2 / (pi R)) is 9 % lower there."""
    draws = np.random.default_rng(4).normal(size=(100_000, 10))
    plug_in = np.abs(draws.mean(axis=1)) / draws.std(axis=1, ddof=1)
    floor = diagnostics.snr_noise_floor(10)
    print(f"plug-in SNR of noise, R = 10: {plug_in.mean():.4f} vs floor {floor:.4f}")
    assert plug_in.mean() == pytest.approx(floor, rel=0.01)
    assert floor > 1.08 * math.sqrt(2 / (math.pi * 10))
    assert diagnostics.snr_noise_floor(10_000) == pytest.approx(
        math.sqrt(2 / (math.pi * 10_000)) * (1 + 3 / 40_000), rel=1e-7
    )
    assert diagnostics.snr_noise_floor(2) == math.inf
    with pytest.raises(ValueError, match="`num_estimates` must be an int >= 2"):
        diagnostics.snr_noise_floor(1)


def test_t_statistic_summary():
    """Hand-computed: zeros left out; inf kept; NaN refused; an empty set gives NaNs."""
    summary = diagnostics.t_statistic_summary(np.array([[0.0, 1.0], [-2.0, 3.5], [-0.5, 0.0]]))
    assert summary == {
        "count": 4,
        "zeros": 2,
        "mean_t_squared": (1 + 4 + 12.25 + 0.25) / 4,
        "max_abs_t": 3.5,
        "fraction_abs_t_above_3": 0.25,
        "expected_max_abs_t": math.sqrt(2 * math.log(8)),
    }
    infinite = diagnostics.t_statistic_summary([np.inf, -1.0])
    assert infinite["max_abs_t"] == infinite["mean_t_squared"] == math.inf
    assert infinite["fraction_abs_t_above_3"] == 0.5
    empty = diagnostics.t_statistic_summary([0.0, 0.0])
    assert empty["count"] == 0 and empty["zeros"] == 2 and math.isnan(empty["max_abs_t"])
    with pytest.raises(ValueError, match="NaN"):
        diagnostics.t_statistic_summary([1.0, np.nan])


def test_log_log_slope():
    """The slope of a power law is its exponent."""
    k = np.array([1, 3, 10, 30, 100, 300, 1000])
    assert diagnostics.log_log_slope(k, 3.0 * k**-0.5) == pytest.approx(-0.5, abs=1e-12)
    with pytest.raises(ValueError, match="positive and finite"):
        diagnostics.log_log_slope([1, 2], [1.0, 0.0])
    with pytest.raises(ValueError, match="length >= 2"):
        diagnostics.log_log_slope([1], [1.0])


def _constant(seed):
    return {"g": tf.ones([3], tf.float64) + 0.0 * tf.cast(seed[0], tf.float64)}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(estimator=None), TypeError, "`estimator` must be a callable"),
        (dict(num_estimates=1), ValueError, "`num_estimates` must be an int >= 2"),
        (dict(num_estimates=10.0), TypeError, "`num_estimates` must be a Python int"),
        (dict(chunk_size=0), ValueError, "`chunk_size` must be an int >= 1"),
        (dict(seed=None), TypeError, "`seed` is required"),
        (dict(reference=3), TypeError, "`reference` must be a callable"),
        (dict(dsnr_direction="own"), ValueError, "`dsnr_direction` must be None"),
        (dict(dsnr_direction={"g": np.ones(2)}), ValueError, "`dsnr_direction` leaf 0"),
        (dict(dsnr_direction={"g": np.zeros(3)}), ValueError, "has norm 0"),
        (dict(true_gradient=[np.ones(3), np.ones(3)]), ValueError, "has 2 leaves"),
        (dict(keep_estimates=1), TypeError, "`keep_estimates` must be a bool"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    """Bad arguments raise errors that name the argument."""
    call = dict(estimator=_constant, num_estimates=4, seed=0) | kwargs
    estimator = call.pop("estimator")
    with pytest.raises(error, match=match):
        diagnostics.gradient_statistics(estimator, **call)


def test_make_gradient_estimator_checks_variables():
    """Only variables can be differentiated; an empty list is refused."""
    with pytest.raises(TypeError, match=r"tf\.Variable"):
        diagnostics.make_gradient_estimator(lambda s: 0.0, [tf.constant(1.0)])
    with pytest.raises(ValueError, match="empty"):
        diagnostics.make_gradient_estimator(lambda s: 0.0, [])


def test_keras_variables_and_one_trace_per_estimator():
    """Keras 3 variables are differentiated; a second call reuses the first one's trace.

    Probabilistic: loss = sum(Dense(x) * eps) has kernel gradient -x_i eps_j, of mean 0 and
    variance x_i^2; checked within 5 standard errors (R = 2000).
    """
    import keras

    layer = keras.layers.Dense(2, use_bias=False)
    x = tf.constant([[0.5, -2.0, 1.0]])
    layer(x)
    eps_shape = [1, 2]

    def loss_fn(seed):
        return tf.reduce_sum(layer(x) * mco.sampling.standard_normal(eps_shape, seed))

    estimator = diagnostics.make_gradient_estimator(loss_fn, layer.trainable_variables)
    R = 2000
    first = diagnostics.gradient_statistics(estimator, R, seed=2, chunk_size=500)
    expected_var = np.repeat(x.numpy().reshape(3, 1) ** 2, 2, axis=1)
    np.testing.assert_allclose(first.variance[0], expected_var, rtol=5 * math.sqrt(2 / R))
    assert np.all(np.abs(first.mean[0]) < 5 * np.sqrt(expected_var / R))
    layer.kernel.assign(layer.kernel + 1.0)  # other parameter values, same estimator
    diagnostics.gradient_statistics(estimator, R, seed=3, chunk_size=500)
    (sampler,) = estimator._mcobjectives_samplers.values()
    assert sampler._draw.experimental_get_tracing_count() == 1


def test_dsnr_is_nan_for_a_zero_mean_or_scalar_leaf():
    """A leaf whose own mean is 0, or of one number, has DSNR NaN; the others are kept."""

    def estimator(seed):
        noise = mco.sampling.standard_normal([3], seed, tf.float64)
        return {"zero": tf.zeros([3], tf.float64), "scalar": noise[0], "vector": 1.0 + noise}

    result = diagnostics.gradient_statistics(estimator, 64, seed=0, dsnr_direction="mean")
    assert math.isnan(result.dsnr["zero"]) and math.isnan(result.dsnr["scalar"])
    assert all(math.isnan(q) for q in result.dsnr_quartiles["zero"])
    assert 0 < result.dsnr["vector"] < math.inf
