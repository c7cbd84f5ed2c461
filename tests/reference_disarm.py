"""DisARM by hand in NumPy, independent of the library's math (only the noise is replayed).

Two Bernoulli models with closed-form densities, float64, one data point at a time with
explicit loops over the samples:

* one layer:  q(z|x) = prod_d Bernoulli(z_d; sigmoid(a_d)); p(z) = Bernoulli(sigmoid(r));
              p(x|z) = N(x; z W, I).
* two layers: q(z1|x) q(z2|z1) = Bernoulli(sigmoid(a1)) Bernoulli(sigmoid(z1 V + c));
              p(z2) = Bernoulli(sigmoid(r)); p(z1|z2) = Bernoulli(sigmoid(z2 U + e));
              p(x|z1) = N(x; z1 W, I).

From the logistic noise eps_l of each layer, every sign pattern p = (s_1, ..., s_L)
draws K samples (layer l from s_l eps_l: b = 1[s_l eps_l < logits]); pattern p's
partner in layer l negates s_l. Each function returns the mean over the patterns of
their bounds L^p and the ascent directions of every parameter (for one data point):

  d/d theta:  mean_p sum_k w~_k^p d log p(x, z_k^p)
  d/d phi:    mean_p [ sum_k (1/K - w~_k^p) d log q(z_k^p)
                       + sum_{l,k} g_lk^p d alpha_lk^p ],
              g_lk^p = 1/2 (L^p - L^p_(l,k)) (-1)^{b~} 1[b != b~] sigmoid(|alpha_lk^p|),
              L^p_(l,k) = log (1/K) (sum_{j != k} w_j^p + w_k^(partner)),
              b~ the partner's values of layer l.
"""

from __future__ import annotations

import numpy as np

LOG_2PI = np.log(2.0 * np.pi)


def softplus(x):
    return np.logaddexp(0.0, x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def log_bernoulli(z, logits):
    return float(np.sum(z * logits - softplus(logits)))


def log_normal(x, mean):
    return float(-0.5 * np.sum((x - mean) ** 2) - 0.5 * len(x) * LOG_2PI)


def log_mean_exp(values):
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    return float(top + np.log(np.mean(np.exp(values - top))))


def signal_of(log_weights, k, partner_log_weight):
    """L_K - L_K^(l,k): sample k's weight replaced by its partner's."""
    replaced = [partner_log_weight if j == k else lw for j, lw in enumerate(log_weights)]
    return log_mean_exp(log_weights) - log_mean_exp(replaced)


def antithetic_factor(b, b_tilde, logits):
    """(-1)^{b~} 1[b != b~] sigmoid(|logits|), unit by unit."""
    sign = np.where(b != b_tilde, np.where(b_tilde == 1, -1.0, 1.0), 0.0)
    return sign * sigmoid(np.abs(logits))


def one_layer(eps, a, r, W, x):
    """eps [K, D], a [D], r [D], W [D, P], x [P] -> (value, {"a", "r", "W"} ascent)."""
    num = eps.shape[0]

    def log_weight(z):
        return log_bernoulli(z, r) + log_normal(x, z @ W) - log_bernoulli(z, a)

    draws = {s: (s * eps < a).astype(np.float64) for s in (1, -1)}
    lws = {s: np.array([log_weight(draws[s][k]) for k in range(num)]) for s in (1, -1)}
    grads = {"a": np.zeros_like(a), "r": np.zeros_like(r), "W": np.zeros_like(W)}
    value = 0.0
    for s in (1, -1):
        b, b_tilde, lw = draws[s], draws[-s], lws[s]
        value += log_mean_exp(lw) / 2
        w = np.exp(lw - lw.max())
        w /= w.sum()
        for k in range(num):
            grads["r"] += w[k] * (b[k] - sigmoid(r)) / 2
            grads["W"] += w[k] * np.outer(b[k], x - b[k] @ W) / 2
            grads["a"] += (1.0 / num - w[k]) * (b[k] - sigmoid(a)) / 2
            g = 0.5 * signal_of(lw, k, lws[-s][k]) * antithetic_factor(b[k], b_tilde[k], a)
            grads["a"] += g / 2
    return value, grads


def two_layer(eps1, eps2, a1, V, c, r, U, e, W, x):
    """eps1 [K, D1], eps2 [K, D2]; parameters as in the module docstring, for one x [P].

    Returns (value, ascent directions {"a1", "V", "c", "r", "U", "e", "W"}).
    """
    num = eps1.shape[0]

    def layer2_logits(z1):
        return z1 @ V + c

    def log_q(z1, z2):
        return log_bernoulli(z1, a1) + log_bernoulli(z2, layer2_logits(z1))

    def log_p(z1, z2):
        return log_bernoulli(z2, r) + log_bernoulli(z1, z2 @ U + e) + log_normal(x, z1 @ W)

    def draw(z1_noise, z2_noise):
        z1 = (z1_noise < a1).astype(np.float64)
        return z1, (z2_noise < layer2_logits(z1)).astype(np.float64)

    patterns = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    draws = {p: [draw(p[0] * eps1[k], p[1] * eps2[k]) for k in range(num)] for p in patterns}
    lws = {p: np.array([log_p(*z) - log_q(*z) for z in draws[p]]) for p in patterns}
    names = ("a1", "V", "c", "r", "U", "e", "W")
    params = dict(zip(names, (a1, V, c, r, U, e, W), strict=True))
    grads = {n: np.zeros_like(v) for n, v in params.items()}
    value = 0.0
    share = 1.0 / len(patterns)
    for p in patterns:
        lw = lws[p]
        value += share * log_mean_exp(lw)
        w = np.exp(lw - lw.max())
        w /= w.sum()
        partner1, partner2 = (-p[0], p[1]), (p[0], -p[1])
        for k in range(num):
            z1, z2 = draws[p][k]
            alpha2 = layer2_logits(z1)
            beta = z2 @ U + e
            # The model's gradient, IWAE's.
            grads["r"] += share * w[k] * (z2 - sigmoid(r))
            grads["U"] += share * w[k] * np.outer(z2, z1 - sigmoid(beta))
            grads["e"] += share * w[k] * (z1 - sigmoid(beta))
            grads["W"] += share * w[k] * np.outer(z1, x - z1 @ W)
            # q's density inside w_k, the samples fixed, with the 1/K control variate.
            c_k = share * (1.0 / num - w[k])
            grads["a1"] += c_k * (z1 - sigmoid(a1))
            grads["V"] += c_k * np.outer(z1, z2 - sigmoid(alpha2))
            grads["c"] += c_k * (z2 - sigmoid(alpha2))
            # The antithetic terms, layer by layer.
            g1 = 0.5 * signal_of(lw, k, lws[partner1][k])
            g1 = g1 * antithetic_factor(z1, draws[partner1][k][0], a1)
            grads["a1"] += share * g1
            g2 = 0.5 * signal_of(lw, k, lws[partner2][k])
            g2 = g2 * antithetic_factor(z2, draws[partner2][k][1], alpha2)
            grads["V"] += share * np.outer(z1, g2)
            grads["c"] += share * g2
    return value, grads
