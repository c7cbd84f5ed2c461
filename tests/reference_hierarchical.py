"""Hand-derived per-sample quantities of a two-layer linear-Gaussian model, in NumPy.

A drop-in for reference.Point: every estimator of tests/reference.py works on this Point
unchanged, so each objective's exact gradient can be checked for a hierarchical q.

Model (identity covariances in p), one data point x in R^D, D1 = D:
  p: z2 ~ N(0, I), z1 | z2 ~ N(W z2 + c, I), x | z1 ~ N(z1, I)
  q: z1 | x ~ N(A1 x + b1, s1^2 I), z2 | z1 ~ N(A2 z1 + b2, s2^2 I), s1, s2 fixed
  z1 = A1 x + b1 + s1 e1,  z2 = A2 z1 + b2 + s2 e2  (z2 moves with A1, b1 through z1)
  theta = (W, c), phi = (A1, b1, A2, b2), each flattened row-major in that order.

Per sample k, with r = z1 - W z2 - c:
  log w   = log N(z2; 0, I) + log N(z1; W z2 + c, I) + log N(x; z1, I)
            - log N(z1; A1 x + b1, s1^2 I) - log N(z2; A2 z1 + b2, s2^2 I)
  dmu     = (d/dW, d/dc) log p = (r z2^T, r)
  g1      = d log p / d z1 = x - z1 - r,   g2 = d log p / d z2 = W^T r - z2

Every quantity below is a pair (u1, u2) of "b-directions", a gradient w.r.t. (b1, b2);
the A-gradients follow from dz1/dA1_ij = delta_i x_j and dz2/dA2_ij = delta_i z1_j:
  d/dA1 = u1 x^T,  d/db1 = u1,  d/dA2 = u2 z1^T,  d/db2 = u2.
A move of z1 also moves z2 by A2, so a z-gradient (h1, h2) gives u1 = h1 + A2^T h2, u2 = h2.

  total: log q(z(e; phi); phi) = log N(s1 e1; 0, s1^2 I) + log N(s2 e2; 0, s2^2 I) is free
         of phi, so only log p contributes: (h1, h2) = (g1, g2),
         u1 = g1 + A2^T g2,  u2 = g2.
  path:  d log w / d z with A1, b1, A2, b2 fixed; z1 stays live inside log q(z2 | z1):
         h1 = g1 + e1 / s1 - A2^T e2 / s2,  h2 = g2 + e2 / s2,
         u1 = h1 + A2^T h2 = g1 + A2^T g2 + e1 / s1,  u2 = g2 + e2 / s2.
  score: d log q(z1, z2 | x) / d phi at fixed (z1, z2):
         u1 = (z1 - A1 x - b1) / s1^2 = e1 / s1,  u2 = (z2 - A2 z1 - b2) / s2^2 = e2 / s2.
So path = total + score, as for one layer (d log q(z(phi); phi)/d phi = 0).
"""

from __future__ import annotations

import numpy as np


def _log_normal(z, loc, var):
    d = z.shape[-1]
    return -0.5 * np.sum((z - loc) ** 2, axis=-1) / var - 0.5 * d * np.log(2 * np.pi * var)


def log_p(W, c, x, z1, z2):
    """log p(x, z1, z2), batched over the leading axis of z1, z2."""
    return _log_normal(z2, 0.0, 1.0) + _log_normal(z1, z2 @ W.T + c, 1.0) + _log_normal(x, z1, 1.0)


def log_q(A1, b1, A2, b2, x, z1, z2, s1, s2):
    """log q(z1, z2 | x), batched over the leading axis of z1, z2."""
    return _log_normal(z1, A1 @ x + b1, s1**2) + _log_normal(z2, z1 @ A2.T + b2, s2**2)


def sample(A1, b1, A2, b2, x, eps1, eps2, s1, s2):
    """The reparameterized (z1, z2) of noise eps1 [K, D1], eps2 [K, D2]."""
    z1 = A1 @ x + b1 + s1 * eps1
    return z1, z1 @ A2.T + b2 + s2 * eps2


class Point:
    """All per-sample quantities of one data point (same attributes as reference.Point)."""

    def __init__(self, W, c, A1, b1, A2, b2, x, eps1, eps2, s1, s2):
        self.x, self.shapes = x, (W.shape, A1.shape, A2.shape)
        z1, z2 = sample(A1, b1, A2, b2, x, eps1, eps2, s1, s2)
        self.z1 = z1
        self.log_w = log_p(W, c, x, z1, z2) - log_q(A1, b1, A2, b2, x, z1, z2, s1, s2)

        r = z1 - z2 @ W.T - c
        self.dmu = np.concatenate([(r[:, :, None] * z2[:, None, :]).reshape(len(r), -1), r], 1)
        g1, g2 = x - z1 - r, r @ W - z2

        # Path: gradient of log w in z (q's parameters fixed), then chained through z2(z1).
        h1 = g1 + eps1 / s1 - (eps2 / s2) @ A2
        h2 = g2 + eps2 / s2
        self.total = self._phi(g1 + g2 @ A2, g2)
        self.path = self._phi(h1 + h2 @ A2, h2)
        self.score = self._phi(eps1 / s1, eps2 / s2)

    def _phi(self, u1, u2):
        """Flattened phi-gradients [K, P_phi] of the b-directions u1 [K, D1], u2 [K, D2]."""
        k = len(u1)
        dA1 = (u1[:, :, None] * self.x[None, None, :]).reshape(k, -1)
        dA2 = (u2[:, :, None] * self.z1[:, None, :]).reshape(k, -1)
        return np.concatenate([dA1, u1, dA2, u2], axis=1)

    def out(self, value, theta, phi):
        """(value, dW, dc, dA1, db1, dA2, db2) from flattened theta and phi directions."""
        w_shape, a1_shape, a2_shape = self.shapes
        theta, phi = np.asarray(theta), np.asarray(phi)
        dW, dc = np.split(theta, [np.prod(w_shape)])
        cuts = np.cumsum([np.prod(a1_shape), a1_shape[0], np.prod(a2_shape)])
        dA1, db1, dA2, db2 = np.split(phi, cuts)
        return (
            value,
            dW.reshape(w_shape),
            dc,
            dA1.reshape(a1_shape),
            db1,
            dA2.reshape(a2_shape),
            db2,
        )


def batch_loss_and_grads(estimator, params, x, eps1, eps2, s1, s2, **kwargs):
    """The library's loss convention: minus the batch mean of value and ascent directions.

    params: (W, c, A1, b1, A2, b2); eps1: [S, B, D1], eps2: [S, B, D2].
    Returns (loss, [dloss/dW, dloss/dc, dloss/dA1, dloss/db1, dloss/dA2, dloss/db2], values [B]).
    """
    outs = [
        estimator(Point(*params, x[n], eps1[:, n], eps2[:, n], s1, s2), **kwargs)
        for n in range(len(x))
    ]
    values = np.array([o[0] for o in outs])
    grads = [-np.mean([o[i] for o in outs], axis=0) for i in range(1, 7)]
    return -values.mean(), grads, values
