"""First-order jackknife variational inference, and its doubly reparameterized variant.

References:
  [1] Nowozin. Debiasing Evidence Approximations: On Importance-Weighted Autoencoders
      and Jackknife Variational Inference. ICLR 2018.
  [2] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives. ICLR 2019, section 4.2.
"""

from __future__ import annotations

import math

import tensorflow as tf

from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import (
    leave_one_out_logsumexp,
    log_mean_exp,
    max_log_weight,
    normalized_weights,
)

__all__ = ["JVI"]


class JVI(MCObjective):
    """The first-order jackknife estimate of log p(x) [1], not a bound.

    value:            J_K = K L_K - ((K - 1) / K) sum_i L_{K-1}^(-i), where
                      L_{K-1}^(-i) = log (1/(K-1)) sum_{j != i} w_j leaves weight i out
    gradient:         its total derivative: sum_k c_k d log w_k with
                      c_k = K w~_k - ((K - 1) / K) sum_{i != k} w~_k^(-i),
                      w~^(-i) the weights normalized without weight i.
    With `dreg=True` (JVI-DReG, [2] section 4.2) the inference gradient applies
    IWAE-DReG to every IWAE term instead:
                      sum_k (K w~_k^2 - ((K - 1) / K) sum_{i != k} (w~_k^(-i))^2)
                      * path derivative of log w_k,
    and the model gradient stays the total derivative of J_K.

    J_K is not a bound. As a training objective it can grow without limit: its
    jackknife correction grows with the spread of the largest log weights, so watch
    the ESS and a held-out log p^(x) when training with it.

    Leave-one-out sums are computed stably in O(K) memory. Zero weights (log w = -inf)
    drop out of every sum. Where exactly one weight of a data point is nonzero, every
    leave-one-out bound but one is log 0 and J_K = +inf (its limit): the loss is then
    -inf, a non-finite step that the Keras model skips.

    Args:
      num_samples: K >= 2.
      dreg: use the doubly reparameterized inference gradient.
    """

    min_num_samples = 2

    def __init__(
        self,
        num_samples: int,
        dreg: bool = False,
        name: str | None = None,
        validate_args: bool = False,
    ):
        super().__init__(num_samples, name=name, validate_args=validate_args)
        if not isinstance(dreg, bool):
            raise TypeError(f"`dreg` must be a bool, got {dreg!r}.")
        self.dreg = dreg

    @property
    def gradient_path(self) -> GradientPath:
        """`GradientPath.SPLIT` with `dreg=True` (JVI-DReG), else `GradientPath.TOTAL`."""
        return GradientPath.SPLIT if self.dreg else GradientPath.TOTAL

    def _leave_one_out(self, log_weights):
        """log sum_{j != i} w_j, [K, B]."""
        return leave_one_out_logsumexp(log_weights, axis=0)

    @staticmethod
    def _shifted(log_weights):
        """(log w - m, m), m the per-point maximum: J_K and its coefficients are
        computed from log weights near 0, since terms of size |log w| ~ 1e4 that cancel
        would cost float32 about 1e-3 relative accuracy."""
        shift = max_log_weight(log_weights)
        return log_weights - shift, shift

    def _value(self, log_weights):
        k = self.num_samples
        log_weights, shift = self._shifted(log_weights)
        leave_one_out = self._leave_one_out(log_weights) - math.log(k - 1)
        # K L_K - ((K-1)/K) sum_i L^(-i) with every L shifted by m: the shifts add to m.
        jackknife = k * log_mean_exp(log_weights) - (k - 1) / k * tf.reduce_sum(
            leave_one_out, axis=0
        )
        # Every weight zero: -inf (the limit of J_K as all weights shrink together),
        # where the difference above is -inf - (-inf).
        all_zero = tf.reduce_all(log_weights == -math.inf, axis=0)
        return tf.where(all_zero, tf.constant(-math.inf, jackknife.dtype), jackknife + shift)

    def _coefficients(self, log_weights):
        k = self.num_samples
        log_weights, _ = self._shifted(log_weights)
        leave_one_out = self._leave_one_out(log_weights)
        normalized = normalized_weights(log_weights)
        # sum_{i != k} w~_k^(-i) = exp(log w_k + log sum_{i != k} exp(-LOO_i)).
        held_out = tf.exp(log_weights + leave_one_out_logsumexp(-leave_one_out, axis=0))
        total = k * normalized - (k - 1) / k * held_out
        if not self.dreg:
            return Coefficients.total(total)
        held_out_sq = tf.exp(
            2.0 * log_weights + leave_one_out_logsumexp(-2.0 * leave_one_out, axis=0)
        )
        path = k * normalized**2 - (k - 1) / k * held_out_sq
        return Coefficients(model=total, path=path, score=None)
