"""Hand-derived per-sample gradients of every estimator on the toy Gaussian, in NumPy.

Independent of the library: written from the estimators' definitions in the papers,
Burda et al. 2016 ("Importance Weighted Autoencoders": IWAE), Rainforth et al. 2018
("Tighter Variational Bounds are Not Necessarily Better": MIWAE, CIWAE, PIWAE) and
Tucker et al. 2019 ("Doubly Reparameterized Gradient Estimators for Monte Carlo
Objectives": RWS, STL, DReG, JVI-DReG), with Nowozin 2018 for JVI, Mnih & Rezende 2016
for VIMCO and Daudel et al. 2023 for VR-IWAE, and with explicit loops where the library
uses closed forms (JVI's leave-one-out terms).

Model: z ~ N(mu, I), x | z ~ N(z, I); q(z|x) = N(A x + b, sigma^2 I),
z_k = A x + b + sigma eps_k. For one data point x and fixed eps:

  log w_k        = log N(z_k; mu, I) + log N(x; z_k, I) - log N(z_k; A x + b, sigma^2 I)
  d log p / d mu = z_k - mu                                     (model gradient)
  total_k        = d log w_k / d b = mu + x - 2 z_k             (log q(z(b)) is free of b)
  path_k         = (d log w_k / d z_k)|_q fixed = mu + x - 2 z_k + eps_k / sigma
  score_k        = d log q(z_k|x) / d b at fixed z_k = eps_k / sigma
and every b-direction v maps to A as the outer product v x^T (dz/dA_ij = delta x_j).

Each function returns ascent directions per data point: (value, d/dmu, d/dA, d/db).
"""

from __future__ import annotations

import numpy as np


def _log_normal(z, loc, var):
    d = z.shape[-1]
    return -0.5 * np.sum((z - loc) ** 2, axis=-1) / var - 0.5 * d * np.log(2 * np.pi * var)


def _softmax(lw):
    e = np.exp(lw - lw.max())
    return e / e.sum()


def _lme(lw):
    m = lw.max()
    return m + np.log(np.mean(np.exp(lw - m)))


class Point:
    """All per-sample quantities of one data point."""

    def __init__(self, mu, A, b, x, eps, sigma):
        self.x = x
        self.z = A @ x + b + sigma * eps  # [K, D]
        self.log_w = (
            _log_normal(self.z, mu, 1.0)
            + _log_normal(x, self.z, 1.0)
            - _log_normal(self.z, A @ x + b, sigma**2)
        )
        self.dmu = self.z - mu
        self.total = mu + x - 2 * self.z
        self.path = self.total + eps / sigma
        self.score = eps / sigma

    def out(self, value, theta, phi_b):
        """(value, d/dmu, d/dA, d/db): a b-direction v maps to A as the outer product v x^T."""
        return value, theta, np.outer(phi_b, self.x), phi_b


def _iwae_terms(p, idx):
    """Value and (theta, total-phi, dreg-phi) directions of the IWAE bound of samples idx."""
    lw = p.log_w[idx]
    w = _softmax(lw)
    theta = w @ p.dmu[idx]
    total = w @ p.total[idx]
    dreg = (w**2) @ p.path[idx]
    return _lme(lw), theta, total, dreg


def iwae(p):
    value, theta, total, _ = _iwae_terms(p, np.arange(len(p.log_w)))
    return p.out(value, theta, total)


def _miwae_terms(p, num_outer, num_inner):
    value, theta, phi = 0.0, 0.0, 0.0
    for m in range(num_outer):
        v, t, f, _ = _iwae_terms(p, np.arange(m * num_inner, (m + 1) * num_inner))
        value, theta, phi = value + v / num_outer, theta + t / num_outer, phi + f / num_outer
    return value, theta, phi


def miwae(p, num_outer, num_inner):
    return p.out(*_miwae_terms(p, num_outer, num_inner))


def ciwae(p, beta):
    k = len(p.log_w)
    v_iwae, t_iwae, f_iwae, _ = _iwae_terms(p, np.arange(k))
    value = beta * p.log_w.mean() + (1 - beta) * v_iwae
    theta = beta * p.dmu.mean(axis=0) + (1 - beta) * t_iwae
    phi = beta * p.total.mean(axis=0) + (1 - beta) * f_iwae
    return p.out(value, theta, phi)


def piwae(p, num_outer, num_inner):
    value, theta, _, _ = _iwae_terms(p, np.arange(num_outer * num_inner))
    _, _, phi = _miwae_terms(p, num_outer, num_inner)
    return p.out(value, theta, phi)


def rws(p):
    value, theta, _, _ = _iwae_terms(p, np.arange(len(p.log_w)))
    return p.out(value, theta, _softmax(p.log_w) @ p.score)


def stl(p):
    value, theta, _, _ = _iwae_terms(p, np.arange(len(p.log_w)))
    return p.out(value, theta, _softmax(p.log_w) @ p.path)


def dreg(p, alpha):
    value, theta, _, _ = _iwae_terms(p, np.arange(len(p.log_w)))
    w = _softmax(p.log_w)
    return p.out(value, theta, (alpha * w + (1 - 2 * alpha) * w**2) @ p.path)


def jvi(p, use_dreg):
    k = len(p.log_w)
    value, theta, total, dreg_phi = _iwae_terms(p, np.arange(k))
    value, theta, phi = k * value, k * theta, k * (dreg_phi if use_dreg else total)
    for i in range(k):
        v, t, f, d = _iwae_terms(p, np.array([j for j in range(k) if j != i]))
        value -= (k - 1) / k * v
        theta -= (k - 1) / k * t
        phi -= (k - 1) / k * (d if use_dreg else f)
    return p.out(value, theta, phi)


def vimco(p):
    """IWAE's value and model gradient; the inference gradient is a score term only,
    sum_k [(L_K - L_K^(-k)) - w~_k] score_k, with L_K^(-k) built by an explicit loop:
    w_k is replaced by the geometric mean of the other weights."""
    k = len(p.log_w)
    value, theta, _, _ = _iwae_terms(p, np.arange(k))
    w = _softmax(p.log_w)
    phi = 0.0
    for i in range(k):
        others = np.array([p.log_w[j] for j in range(k) if j != i])
        log_geometric_mean = others.sum() / (k - 1)
        # log (1/K) (sum_{j != i} w_j + w^_{-i}): K terms again.
        leave_one_out = _lme(np.append(others, log_geometric_mean))
        phi = phi + ((value - leave_one_out) - w[i]) * p.score[i]
    return p.out(value, theta, phi)


def vriwae(p, alpha, use_dreg):
    """L = log mean(w^(1 - alpha)) / (1 - alpha), v~ = softmax((1 - alpha) log w):
    d L / d log w_k = v~_k. Inference gradient: the total derivative sum_k v~_k total_k,
    or with DReG sum_k (alpha v~_k + (1 - alpha) v~_k^2) path_k."""
    v = _softmax((1 - alpha) * p.log_w)
    value = _lme((1 - alpha) * p.log_w) / (1 - alpha)
    theta = v @ p.dmu
    if use_dreg:
        phi = (alpha * v + (1 - alpha) * v**2) @ p.path
    else:
        phi = v @ p.total
    return p.out(value, theta, phi)


def batch_loss_and_grads(estimator, mu, A, b, x, eps, sigma, **kwargs):
    """The library's loss convention: minus the batch mean of value and ascent directions.

    eps: [S, B, D]. Returns (loss, dloss/dmu, dloss/dA, dloss/db, values [B]).
    """
    outs = [estimator(Point(mu, A, b, x[n], eps[:, n], sigma), **kwargs) for n in range(len(x))]
    values = np.array([o[0] for o in outs])
    mean = [-np.mean([o[i] for o in outs], axis=0) for i in (1, 2, 3)]
    return -values.mean(), mean[0], mean[1], mean[2], values
