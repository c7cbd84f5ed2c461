"""The TVO (Masrani, Le, Wood 2019, arXiv:1907.00031) derived by hand in NumPy, for the tests.

Independent of the library (no mcobjectives import): written from the paper's
definitions with explicit loops over the terms and samples.

For one data point, f_k = log w_k, per-sample gradient vectors of log p(x, z_k) and
log q(z_k|x) with z_k held fixed (score form), or of log w_k in total (z_k
reparameterized), over one flat parameter vector:

* the self-normalized expectation at beta: w~ = softmax(beta f), E^ = sum_k w~_k f_k;
* score form, [1] eqs. 12-13: d E = E_pi[d f] + c Cov_pi(f, d log pi~), written with the
  mean of d log pi~ subtracted explicitly, d log pi~ = (1 - beta) d log q + beta d log p;
* reparameterized form: d E^ = sum_k (d w~_k) f_k + w~_k d f_k with
  d w~_k = beta w~_k (d f_k - sum_j w~_j d f_j) (the softmax's derivative);
* the exact TVO of the toy Gaussian (z ~ N(mu, I), x|z ~ N(z, I), q = N(m, s^2 I)):
  p(x, z) = N(x; mu, 2 I) N(z; c, I/2), c = (mu + x)/2, so pi_beta is Gaussian with
  precision (1 - beta)/s^2 + 2 beta and mean ((1 - beta) m / s^2 + 2 beta c) / precision,
  and E_pi[f] is a sum of Gaussian cross-entropies; its gradient by central differences.
"""

from __future__ import annotations

import numpy as np


def terms(betas, riemann):
    """[(width, beta)] of the left or right Riemann sum over the partition `betas`."""
    out = []
    for j in range(len(betas) - 1):
        width = betas[j + 1] - betas[j]
        out.append((width, betas[j] if riemann == "left" else betas[j + 1]))
    return out


def _weights(f, beta):
    """softmax(beta f), a zero weight (f = -inf) getting 0 (for beta = 0: 1/S each)."""
    if beta == 0.0:
        return np.full(len(f), 1.0 / len(f))
    finite = np.isfinite(f)
    w = np.zeros(len(f))
    top = f[finite].max()
    w[finite] = np.exp(beta * (f[finite] - top))
    return w / w.sum()


def _expectation(f, w):
    """sum_k w_k f_k with 0 * -inf = 0 (the limit w^beta log w -> 0)."""
    return sum(w[k] * f[k] for k in range(len(f)) if w[k] > 0)


def value(f, betas, riemann):
    """The TVO estimate of one data point: -inf where the beta = 0 term meets a zero weight."""
    total = 0.0
    for width, beta in terms(betas, riemann):
        if beta == 0.0:
            total += width * np.mean(f)
        else:
            total += width * _expectation(f, _weights(f, beta))
    return total


def score_gradient(f, dlogp, dlogq, betas, riemann, correction=True):
    """The covariance-form gradient (ascent) of one data point, a vector like dlogp[0]."""
    s = len(f)
    c = s / (s - 1) if correction else 1.0
    grad = np.zeros(dlogp.shape[1:])
    for width, beta in terms(betas, riemann):
        w = _weights(f, beta)
        kept = [k for k in range(s) if w[k] > 0]
        mean_f = _expectation(f, w)
        g = [(1 - beta) * dlogq[k] + beta * dlogp[k] for k in range(s)]
        mean_g = sum(w[k] * g[k] for k in kept)
        mean_df = sum(w[k] * (dlogp[k] - dlogq[k]) for k in kept)
        cov = sum(w[k] * (f[k] - mean_f) * (g[k] - mean_g) for k in kept)
        grad = grad + width * (mean_df + c * cov)
    return grad


def total_gradient(f, df, betas, riemann):
    """The exact derivative (ascent) of the TVO estimate, df the total d log w_k."""
    s = len(f)
    grad = np.zeros(df.shape[1:])
    for width, beta in terms(betas, riemann):
        w = _weights(f, beta)
        kept = [k for k in range(s) if w[k] > 0]
        mean_df = sum(w[k] * df[k] for k in kept)
        dw = {k: beta * w[k] * (df[k] - mean_df) for k in kept}
        grad = grad + width * sum(dw[k] * f[k] + w[k] * df[k] for k in kept)
    return grad


# ------------------------------------------------------------ the toy Gaussian, exactly
def _cross_entropy(mean, var, loc, scale2):
    """E_{N(mean, var I)}[log N(z; loc, scale2 I)], summed over coordinates."""
    return np.sum(-0.5 * np.log(2 * np.pi * scale2) - ((mean - loc) ** 2 + var) / (2 * scale2))


def exact_expectation(mu, m, x, sigma, beta):
    """E_{pi_beta}[log p(x, z) - log q(z|x)] exactly (one data point, vectors [D])."""
    d = len(mu)
    c = (mu + x) / 2
    log_px = np.sum(-0.5 * np.log(2 * np.pi * 2.0) - (x - mu) ** 2 / 4.0)
    precision = (1 - beta) / sigma**2 + 2 * beta
    mean = ((1 - beta) * m / sigma**2 + 2 * beta * c) / precision
    var = 1.0 / precision
    assert mean.shape == (d,)
    return log_px + _cross_entropy(mean, var, c, 0.5) - _cross_entropy(mean, var, m, sigma**2)


def exact_tvo(mu, m, x, sigma, betas, riemann):
    return sum(
        width * exact_expectation(mu, m, x, sigma, beta) for width, beta in terms(betas, riemann)
    )


def exact_tvo_gradient(mu, m, x, sigma, betas, riemann, h=1e-5):
    """(d/dmu, d/dm) of the exact TVO by central differences (error ~h^2)."""
    d = len(mu)
    out = []
    for which in (0, 1):
        grad = np.zeros(d)
        for i in range(d):
            e = np.zeros(d)
            e[i] = h
            args_hi = [mu + e, m] if which == 0 else [mu, m + e]
            args_lo = [mu - e, m] if which == 0 else [mu, m - e]
            grad[i] = (
                exact_tvo(*args_hi, x, sigma, betas, riemann)
                - exact_tvo(*args_lo, x, sigma, betas, riemann)
            ) / (2 * h)
        out.append(grad)
    return out


# ------------------------------------------------ the toy Gaussian's per-sample terms
def toy_tvo(p, betas, riemann, reparameterized=False):
    """(value, d/dmu, d/dA, d/db) ascent directions of one toy-Gaussian data point.

    p: a tests.reference.Point. The flat parameter vector is (mu, b): with z held fixed
    d log p / d(mu, b) = (z - mu, 0) and d log q / d(mu, b) = (0, eps / sigma); in total
    d log w / d(mu, b) = (z - mu, mu + x - 2 z).
    """
    s, d = p.dmu.shape
    f = p.log_w
    if reparameterized:
        grad = total_gradient(f, np.concatenate([p.dmu, p.total], axis=1), betas, riemann)
    else:
        dlogp = np.concatenate([p.dmu, np.zeros((s, d))], axis=1)
        dlogq = np.concatenate([np.zeros((s, d)), p.score], axis=1)
        grad = score_gradient(f, dlogp, dlogq, betas, riemann)
    return p.out(value(f, betas, riemann), grad[:d], grad[d:])


def score_function_estimate(f, score, betas, riemann, baseline=0.0):
    """The plain score-function estimator of d E[T^] / d b, vectorized over replicates.

    f [R, S] log weights, score [R, S, D] = d log q(z_k) / d b at fixed z. With z fixed
    T^ depends on b through f = log p - log q (d f_k = -score_k), and the density of the
    S draws contributes (T^ - baseline) sum_k score_k: an unbiased estimate of
    d E[T^] / d b for any constant baseline (E[sum_k score_k] = 0), which lowers its
    variance when near E[T^].
    """
    total = np.zeros(score.shape[::2])
    estimate = np.zeros(f.shape[0])
    for width, beta in terms(betas, riemann):
        w = np.exp(beta * (f - f.max(axis=1, keepdims=True)))
        w /= w.sum(axis=1, keepdims=True)
        mean = np.sum(w * f, axis=1)
        estimate += width * mean
        # d (sum_k w_k f_k) at fixed z: sum_k [w_k + beta w_k (f_k - mean)] d f_k.
        coefficient = w + beta * w * (f - mean[:, None])
        total += width * np.einsum("rs,rsd->rd", coefficient, -score)
    return total + (estimate - baseline)[:, None] * score.sum(axis=1)
