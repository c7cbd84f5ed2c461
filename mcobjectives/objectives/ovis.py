"""OVIS: the asymptotically optimal control variate for IWAE's score-function gradient.

References:
  [1] Lievin, Dittadi, Christensen, Winther. Optimal Variance Control of the Score
      Function Gradient Estimator for Importance Weighted Bounds. NeurIPS 2020
      (arXiv:2008.01998): the prefactor d_k and control variate c_k of the score
      estimator (eq. 9-11), the Monte Carlo control variate OVIS_MC (eq. 12) and the
      asymptotic one OVIS~ with its parameter gamma (eq. 17).
  [2] Mnih, Rezende. Variational Inference for Monte Carlo Objectives. ICML 2016
      (arXiv:1602.06725): VIMCO, the special case c_k = L_K^(-k).
"""

from __future__ import annotations

import math

import tensorflow as tf

from mcobjectives.core import checks
from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import (
    leave_one_out_logsumexp,
    log_mean_exp,
    max_log_weight,
    normalized_weights,
)

__all__ = ["OVIS"]


class OVIS(MCObjective):
    """Optimal variance control of the score-function estimator, OVIS~ of [1] (eq. 17).

    value:            L_K = log (1/K) sum_k w_k (reported)
    model gradient:   sum_k w~_k d log p(x, z_k), as IWAE
    inference grad.:  sum_k (d_k - c_k) d log q(z_k|x), z_k held fixed, with
                      d_k = L_K - w~_k (the prefactor, [1] eq. 9) and
                      c_k = log Z_-k - gamma w~_k + (1 - gamma) log(1 - 1/K)  ([1] eq. 17),
                      log Z_-k = log (1/(K-1)) sum_{j != k} w_j.

    Derivation of the closed form used here. With S = sum_j w_j,
    L_K - log Z_-k = log(1 - 1/K) - log(1 - w~_k), so

        d_k - c_k = -log(1 - w~_k) - (1 - gamma) w~_k + gamma log(1 - 1/K),

    a function of the sample's own normalized weight alone, computed without subtracting
    two nearly equal logs: log1p(-w~_k) where w~_k < 1/2, and otherwise
    log(sum_{j != k} w_j) - log S from shifted log weights (all terms <= 0, none
    subtracted), so a dominant weight keeps its precision.

    Bias. log Z_-k does not depend on z_k, so gamma = 0 is exactly unbiased for
    d L_K / d phi. For gamma > 0 the term -gamma w~_k of c_k depends on z_k: the
    estimator equals OVIS(gamma=0) + gamma * (RWS's wake direction sum_k w~_k d log q)
    + gamma log(1 - 1/K) sum_k d log q (the last term has mean zero), so its mean is
    d L_K / d phi + gamma E[sum_k w~_k d log q(z_k|x)] ([1] derive c_k as an asymptotic,
    large-K approximation of the optimal E_{z_k}[d_k], eq. 11, where w~_k -> 1/K).

    VIMCO [2] is the member c_k = L_K^(-k) (the geometric-mean leave-one-out bound).
    `_learning_signals` is the hook that returns d_k - c_k; tests/test_ovis.py builds
    VIMCO from it. The inference gradient uses only the score of q: discrete leaves work
    in any dtype. Zero weights (log w_j = -inf): w~_j = 0 and sample j's signal is
    gamma log(1 - 1/K); where one weight of a data point is the only nonzero one, its
    signal is +inf and the loss NaN (a step the Keras model skips), as for VIMCO.

    Args:
      num_samples: K >= 2 (log Z_-k needs another sample).
      gamma: in [0, 1]; default 1.0, the high-ESS regime ([1] eq. 17, the "OVIS~ gamma=1"
        estimator of [1]'s experiments); gamma = 0 is the ESS ~ 1 regime and unbiased.
    """

    gradient_path = GradientPath.SCORE
    min_num_samples = 2

    def __init__(
        self,
        num_samples: int,
        gamma: float = 1.0,
        name: str | None = None,
        validate_args: bool = False,
    ):
        super().__init__(num_samples, name=name, validate_args=validate_args)
        self.gamma = checks.check_unit_interval("gamma", gamma)

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        # Every quantity below is invariant to a common shift of the log weights.
        shifted = log_weights - max_log_weight(log_weights)
        normalized = normalized_weights(shifted)
        signal = self._learning_signals(shifted, normalized)
        return Coefficients(model=normalized, path=None, score=signal)

    def _learning_signals(self, shifted, normalized):
        """d_k - c_k, [K, B], from log weights shifted by their maximum and w~."""
        log_total = tf.reduce_logsumexp(shifted, axis=0)
        # log(1 - w~_k): log1p where w~_k is small, the leave-one-out sum where it dominates.
        others = leave_one_out_logsumexp(shifted, axis=0) - log_total
        log_rest = tf.where(normalized < 0.5, tf.math.log1p(-normalized), others)
        k = self.num_samples
        constant = tf.constant(self.gamma * math.log1p(-1.0 / k), shifted.dtype)
        return -log_rest - (1.0 - self.gamma) * normalized + constant
