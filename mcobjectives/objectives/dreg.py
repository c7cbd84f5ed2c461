"""Path-derivative estimators of the inference gradient: STL and DReG(alpha).

References:
  [1] Roeder, Wu, Duvenaud. Sticking the Landing. NeurIPS 2017.
  [2] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives. ICLR 2019, eqs. 7, 9, 10 and appendix 8.3 eqs. 12-16.
"""

from __future__ import annotations

import tensorflow as tf

from mcobjectives.core import checks, gdreg
from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import leave_one_out_logsumexp, log_mean_exp, normalized_weights

__all__ = ["STL", "DReG"]


class STL(MCObjective):
    """Sticking the landing [1] for the IWAE bound: drops the score term.

    value:            L_K (reported)
    model gradient:   sum_k w~_k d log p(x, z_k), as IWAE
    inference grad.:  sum_k w~_k * (d log w_k / d z_k)(d z_k / d phi), q held fixed
                      inside log q. Biased for K > 1 ([2] section 3); exactly zero
                      when q is the true posterior.

    Args:
      num_samples: K >= 1.
    """

    gradient_path = GradientPath.SPLIT

    def __init__(self, num_samples: int, name: str | None = None, validate_args: bool = False):
        super().__init__(num_samples, name=name, validate_args=validate_args)

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        normalized = normalized_weights(log_weights)
        return Coefficients(model=normalized, path=normalized, score=None)


class DReG(MCObjective):
    """Doubly reparameterized gradient estimators DReG(alpha) ([2] eq. 10).

    value:            L_K (reported)
    model gradient:   sum_k w~_k d log p(x, z_k), as IWAE
    inference grad.:  sum_k (alpha w~_k + (1 - 2 alpha) w~_k^2) * path derivative of
                      log w_k.

    alpha = 0 is IWAE-DReG (eq. 7): unbiased for the IWAE inference gradient.
    alpha = 1 is RWS-DReG (eq. 9): unbiased for the RWS wake update.
    In between, an unbiased estimate of (1 - alpha) IWAE + alpha RWS; alpha = 0.5 is
    half of STL's inference gradient.

    prior_gradient="gdreg": the model gradient is IWAE's, so a learned prior's
    parameters get IWAE's GDReG estimator ([3]; see `IWAE`), for every alpha.

    Args:
      num_samples: K >= 1.
      alpha: in [0, 1]; default 0.0 (IWAE-DReG).
      prior_gradient: "standard" (default) or "gdreg".

    [3] Bauer, Mnih. Generalized Doubly Reparameterized Gradient Estimators. ICML 2021.
    """

    gradient_path = GradientPath.SPLIT

    def __init__(
        self,
        num_samples: int,
        alpha: float = 0.0,
        name: str | None = None,
        validate_args: bool = False,
        prior_gradient: str = "standard",
    ):
        super().__init__(num_samples, name=name, validate_args=validate_args)
        self.alpha = checks.check_unit_interval("alpha", alpha)
        self.prior_gradient = gdreg.check_prior_gradient(prior_gradient)

    def get_config(self):
        """The constructor's arguments; `prior_gradient` only where it is not "standard"."""
        return gdreg.without_default(super().get_config())

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        normalized = normalized_weights(log_weights)
        # alpha w~ + (1 - 2 alpha) w~^2 = w~ (alpha (1 - w~) + (1 - alpha) w~), with
        # 1 - w~_k summed from the other weights: w~ - w~^2 would cancel for a dominant
        # weight (w~_k -> 1), leaving RWS-DReG's coefficient as rounding noise.
        if self.num_samples == 1:
            others = tf.zeros_like(normalized)
        else:
            others = tf.exp(
                leave_one_out_logsumexp(log_weights, axis=0)
                - tf.reduce_logsumexp(log_weights, axis=0)
            )
        path = normalized * (self.alpha * others + (1.0 - self.alpha) * normalized)
        return Coefficients(model=normalized, path=path, score=None)
