"""VIMCO: the IWAE bound with a leave-one-out score-function estimator for q.

References:
  [1] Mnih, Rezende. Variational Inference for Monte Carlo Objectives. ICML 2016
      (arXiv:1602.06725): the local learning signals and the geometric-mean
      leave-one-out baseline.
"""

from __future__ import annotations

import tensorflow as tf

from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import (
    leave_one_out_logsumexp,
    log_mean_exp,
    max_log_weight,
    normalized_weights,
)

__all__ = ["VIMCO"]


class VIMCO(MCObjective):
    """Variational inference for Monte Carlo objectives [1]: IWAE's bound, scored.

    value:            L_K = log (1/K) sum_k w_k (reported)
    model gradient:   sum_k w~_k d log p(x, z_k), as IWAE
    inference grad.:  sum_k [(L_K - L_K^(-k)) - w~_k] d log q(z_k|x), z_k held fixed,
                      where L_K^(-k) = log (1/K) (sum_{j != k} w_j + w^_{-k}) puts the
                      geometric mean of the other weights,
                      log w^_{-k} = (1/(K-1)) sum_{j != k} log w_j,
                      in place of w_k ([1], geometric-mean variant).

    Without the baseline, the score-function gradient of L_K is sum_k (L_K - w~_k)
    d log q(z_k|x): every sample is credited with the whole bound. L_K^(-k) does not
    depend on z_k, so subtracting it keeps the estimator unbiased for d L_K / d phi,
    and it removes the part of L_K that sample k did not cause.

    The inference gradient uses only the score of q, so q need not be reparameterized:
    discrete leaves work in any dtype (e.g. tfd.Bernoulli's default int32), alone or
    in a JointDistribution with continuous ones. The learning signals are computed
    from log weights shifted by their per-point maximum, with leave-one-out sums that
    never subtract a term (all shifted terms are <= 0), so they keep float32 precision
    for |log w| ~ 1e4 and for one dominant weight.

    Zero weights (log w_j = -inf) give the estimator's limit as w_j -> 0: the geometric
    mean of any set of weights holding w_j is 0, and sample j keeps its score term
    (L_K - L_K^(-j)) d log q(z_j|x), which the unbiasedness of the estimator needs (the
    probability q puts where the weight is zero moves the bound). Where exactly one
    weight of a data point is nonzero, that sample's baseline is log 0: its learning
    signal, and so the inference gradient, is infinite, and the loss is NaN (a step the
    Keras model skips), although the bound is finite.

    Args:
      num_samples: K >= 2 (the baseline of sample k needs another sample).
    """

    gradient_path = GradientPath.SCORE
    min_num_samples = 2

    def __init__(self, num_samples: int, name: str | None = None, validate_args: bool = False):
        super().__init__(num_samples, name=name, validate_args=validate_args)

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        k = self.num_samples
        # Every quantity below is invariant to a common shift of the log weights.
        shifted = log_weights - max_log_weight(log_weights)
        normalized = normalized_weights(shifted)
        # sum_{j != k} log w_j as the sums before and after k: no term is subtracted.
        others = tf.cumsum(shifted, axis=0, exclusive=True) + tf.cumsum(
            shifted, axis=0, exclusive=True, reverse=True
        )
        log_geometric_mean = others / (k - 1)
        # L_K - L_K^(-k) = log S - log(S - w_k + w^_{-k}), S = sum_j w_j (the 1/K cancel).
        log_total = tf.reduce_logsumexp(shifted, axis=0)
        replaced = tf.reduce_logsumexp(
            tf.stack([leave_one_out_logsumexp(shifted, axis=0), log_geometric_mean]), axis=0
        )
        # = -log1p((w^_{-k} - w_k) / S): accurate to the size of w~_k for a weight that
        # does not dominate (1 + the argument > 1/2), where the difference of two logs of
        # size ~1 would leave an absolute error ~1e-7 in float32, as large as w~_k for
        # large K. A dominant weight keeps the difference of logs (log1p near -1 would
        # lose its precision instead).
        small = -tf.math.log1p(tf.exp(log_geometric_mean - log_total) - normalized)
        learning_signal = tf.where(normalized < 0.5, small, log_total - replaced)
        return Coefficients(model=normalized, path=None, score=learning_signal - normalized)
