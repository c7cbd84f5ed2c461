"""GDReG's prior gradient in NumPy, derived by hand, independent of mcobjectives.

For IWAE's prior parameters theta (Bauer and Mnih, ICML 2021), per data point:

  standard:  sum_k w~_k d log p_theta(z_k) / d theta                      (z_k fixed)
  GDReG:     sum_k g_k . dz_k/dtheta,
             g_k = w~_k (1 - w~_k) grad_z log p(x|z_k) + w~_k^2 grad_z log(q/p_theta)(z_k)

with every density, gradient and dz/dtheta written out for two models:

* `one_layer`: z ~ N(mu, s^2 I) (mu [D], s a scalar), x|z ~ N(z, I),
  q = N(m, sigma^2 I); z = mu + s eps, so dz/dmu = I and dz/ds = eps = (z - mu) / s.
* `two_layer`: z2 ~ N(mu2, I), z1|z2 ~ N(z2 W + c, s1^2 I), x|z1 ~ N(z1, I);
  q(z1|x) = N(m1, sigma1^2 I), q(z2|z1) = N(z1 A2 + b2, sigma2^2 I) (row vectors).
  z2 = mu2 + eps2, z1 = z2 W + c + s1 eps1: dz2/dmu2 = I, dz1/dmu2 = W^T,
  dz1_i/dW_ji = z2_j, dz1/dc = I, dz1/ds1 = eps1.

Samples come in as arrays [S, ...] for one data point.
"""

from __future__ import annotations

import numpy as np


def _weights(log_w):
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def _log_normal(z, loc, var):
    return np.sum(-0.5 * (z - loc) ** 2 / var - 0.5 * np.log(2 * np.pi * var), axis=-1)


def one_layer(z, x, mu, s, m, sigma):
    """{"standard": (dmu, ds), "gdreg": (dmu, ds)} for one data point; z [S, D]."""
    log_w = _log_normal(z, mu, s**2) + _log_normal(z, x, 1.0) - _log_normal(z, m, sigma**2)
    w = _weights(log_w)[:, None]
    eps = (z - mu) / s
    standard_mu = np.sum(w * (z - mu) / s**2, axis=0)
    standard_s = np.sum(w[:, 0] * np.sum((z - mu) ** 2 / s**3 - 1.0 / s, axis=1))
    grad_likelihood = x - z
    grad_log_ratio = -(z - m) / sigma**2 + (z - mu) / s**2
    g = w * (1 - w) * grad_likelihood + w**2 * grad_log_ratio
    return {
        "standard": (standard_mu, standard_s),
        "gdreg": (np.sum(g, axis=0), np.sum(g * eps)),
    }


def two_layer(z1, z2, x, mu2, W, c, s1, m1, sigma1, A2, b2, sigma2):
    """{"standard"/"gdreg": (dmu2, dW, dc, ds1)} for one data point; z1 [S, D1], z2 [S, D2]."""
    r1 = z1 - z2 @ W - c
    r2 = z2 - z1 @ A2 - b2
    log_p = _log_normal(z2, mu2, 1.0) + _log_normal(z1, z2 @ W + c, s1**2)
    log_q = _log_normal(z1, m1, sigma1**2) + _log_normal(z2, z1 @ A2 + b2, sigma2**2)
    log_w = log_p + _log_normal(x, z1, 1.0) - log_q
    w = _weights(log_w)[:, None]
    d1 = z1.shape[1]
    standard = (
        np.sum(w * (z2 - mu2), axis=0),
        np.einsum("k,kj,ki->ji", w[:, 0], z2, r1) / s1**2,
        np.sum(w * r1, axis=0) / s1**2,
        np.sum(w[:, 0] * (np.sum(r1**2, axis=1) / s1**3 - d1 / s1)),
    )
    # z-gradients of log q, log p_theta and log p(x|z1), parameters fixed.
    dq1 = -(z1 - m1) / sigma1**2 + r2 @ A2.T / sigma2**2
    dq2 = -r2 / sigma2**2
    dp1 = -r1 / s1**2
    dp2 = -(z2 - mu2) + r1 @ W.T / s1**2
    dl1 = x - z1
    g1 = w * (1 - w) * dl1 + w**2 * (dq1 - dp1)
    g2 = w**2 * (dq2 - dp2)
    eps1 = r1 / s1
    gdreg = (
        np.sum(g2 + g1 @ W.T, axis=0),
        np.einsum("kj,ki->ji", z2, g1),
        np.sum(g1, axis=0),
        np.sum(g1 * eps1),
    )
    return {"standard": standard, "gdreg": gdreg}
