"""Reweighted wake-sleep: the wake update of the inference network.

References:
  [1] Bornschein, Bengio. Reweighted Wake-Sleep. ICLR 2015.
  [2] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives. ICLR 2019, eq. 8 and appendix 8.3 eq. 13.
"""

from __future__ import annotations

from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import log_mean_exp, normalized_weights

__all__ = ["RWS"]


class RWS(MCObjective):
    """Reweighted wake-sleep with the wake update for q ([1]; [2] eq. 8).

    value:            L_K = log (1/K) sum_k w_k (reported)
    model gradient:   sum_k w~_k d log p(x, z_k), as IWAE
    inference grad.:  sum_k w~_k d log q(z_k|x) with z_k held fixed: an estimate of
                      -d KL(p(z|x) || q(z|x)), so q is trained toward the posterior.

    The inference update uses only the score of q, so q need not be reparameterized:
    discrete latents work in their default integer dtypes (tfd.Bernoulli,
    tfd.Categorical, ...), alone or in a JointDistribution with continuous leaves. Its
    gradient is not that of any bound.

    Args:
      num_samples: K >= 1.
    """

    gradient_path = GradientPath.SCORE

    def __init__(self, num_samples: int, name: str | None = None, validate_args: bool = False):
        super().__init__(num_samples, name=name, validate_args=validate_args)

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        normalized = normalized_weights(log_weights)
        return Coefficients(model=normalized, path=None, score=normalized)
