"""The sleep phase of reweighted wake-sleep on the toy Gaussian, derived by hand in NumPy.

Independent of the library. Bornschein & Bengio (2015, sec. 3) train q on samples of
the model, (x_n, z_n) ~ p(x, z), n = 1..N, by the loss

  L_sleep = -1/N sum_n log q(z_n | x_n),  q(z|x) = N(A x + b, sigma^2 I).

With r_n = z_n - A x_n - b, log q(z_n|x_n) = -|r_n|^2 / (2 sigma^2) + const, so

  dL_sleep/db = -1/N sum_n r_n / sigma^2
  dL_sleep/dA = -1/N sum_n r_n x_n^T / sigma^2.
"""

from __future__ import annotations

import numpy as np


def sleep_loss_gradients(A, b, sigma, x, z):
    """(L_sleep, dL/dA, dL/db) for samples x, z of shape [N, D]."""
    A, b, x, z = (np.asarray(t, np.float64) for t in (A, b, x, z))
    n, d = z.shape
    r = z - x @ A.T - b
    var = sigma**2
    loss = np.mean(0.5 * np.sum(r**2, axis=-1) / var + 0.5 * d * np.log(2 * np.pi * var))
    grad_b = -r.sum(axis=0) / (n * var)
    grad_A = -(r.T @ x) / (n * var)
    return loss, grad_A, grad_b


def toy_posterior(mu):
    """p(z|x) of z ~ N(mu, I), x|z ~ N(z, I): N((x + mu) / 2, I / 2), i.e. A* = I/2, b* = mu/2."""
    mu = np.asarray(mu, np.float64)
    return 0.5 * np.eye(mu.size), 0.5 * mu
