"""OVIS's estimator on the toy Gaussian and on any log weights, in NumPy.

Independent of the library: written from Lievin, Dittadi, Christensen and Winther 2020
("Optimal Variance Control of the Score Function Gradient Estimator for Importance
Weighted Bounds", arXiv:2008.01998) with explicit loops over k where the library uses a
closed form. For one data point with log weights log w_1..K:

  L_K      = log (1/K) sum_k w_k,          v_k = w_k / sum_j w_j
  d_k      = L_K - v_k                                          (eq. 9, the prefactor)
  log Z_-k = log (1/(K-1)) sum_{j != k} w_j                      (by a loop over j != k)
  c_k      = log Z_-k - gamma v_k + (1 - gamma) log(1 - 1/K)     (eq. 17)
  inference gradient: sum_k (d_k - c_k) score_k, model gradient: sum_k v_k d log p(x, z_k).
"""

from __future__ import annotations

import numpy as np

from tests.reference import Point  # noqa: F401  (the toy Gaussian's per-sample terms)


def _lme(lw):
    m = np.max(lw)
    return m + np.log(np.mean(np.exp(lw - m)))


def signals(lw, gamma):
    """d_k - c_k for one data point's log weights [K]."""
    k = len(lw)
    value = _lme(lw)
    v = np.exp(lw - np.logaddexp.reduce(lw))
    out = np.empty(k)
    for i in range(k):
        log_z_rest = _lme(np.array([lw[j] for j in range(k) if j != i]))
        control = log_z_rest - gamma * v[i] + (1 - gamma) * np.log(1 - 1 / k)
        out[i] = (value - v[i]) - control
    return out


def ovis(p, gamma):
    """(value, d/dmu, d/dA, d/db) ascent directions of one toy-Gaussian data point."""
    v = np.exp(p.log_w - np.logaddexp.reduce(p.log_w))
    return p.out(_lme(p.log_w), v @ p.dmu, signals(p.log_w, gamma) @ p.score)
