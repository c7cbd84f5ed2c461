"""The importance weighted variational Renyi bound (VR-IWAE), and its DReG estimator.

References:
  [1] Li, Turner. Renyi Divergence Variational Inference. NeurIPS 2016.
  [2] Daudel, Benton, Shi, Doucet. Alpha-divergence Variational Inference Meets
      Importance Weighted Auto-Encoders: Methodology and Asymptotics. JMLR 2023
      (the VR-IWAE bound, its reparameterized and doubly reparameterized gradients).
  [3] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives. ICLR 2019, eqs. 5-7.
"""

from __future__ import annotations

from mcobjectives.core import checks
from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import log_mean_exp, normalized_weights

__all__ = ["VRIWAE"]


class VRIWAE(MCObjective):
    """The VR-IWAE bound ([1]; [2]), a lower bound on log p(x) for alpha in [0, 1).

    value:            L^(alpha)_K = (1 / (1 - alpha)) log (1/K) sum_k w_k^(1 - alpha)
    model gradient:   sum_k v~_k d log p(x, z_k), v~ = softmax((1 - alpha) log w)
    inference grad.:  its total derivative, sum_k v~_k d log w_k (z_k reparameterized).
    With `dreg=True` (the doubly reparameterized estimator of [2]):
                      sum_k (alpha v~_k + (1 - alpha) v~_k^2) * path derivative of
                      log w_k, and the model gradient as above.

    alpha = 0 is IWAE (exactly: the same value and gradients, DReG then IWAE-DReG);
    alpha -> 1 tends to the mean of the log weights, the ELBO of `VAE(K)`, which is
    the objective to use there (alpha = 1 itself is refused). For K = 1 every alpha
    gives the ELBO.

    The DReG coefficient. d L / d log w_k = v~_k, and for z_k = z(eps_k; phi) the
    total derivative of log w_k is (path derivative)_k - d log q(z_k|x) / d phi at
    fixed z_k (the score), so the inference gradient is
        sum_k v~_k (path derivative)_k - sum_k v~_k d log q(z_k|x) / d phi.
    The identity of [3] (eq. 5), E_q[f(z) d log q(z) / d phi] =
    E_eps[d f / d z * d z / d phi] with q's parameters held fixed inside f, turns the
    score part, sample by sample (f = v~_k as a function of z_k, the other samples
    fixed), into a path term: d v~_k / d z_k = (d v~_k / d log w_k)(path derivative)_k
    and d v~_k / d log w_k = (1 - alpha) v~_k (1 - v~_k). In expectation the
    inference gradient is therefore
        sum_k (v~_k - (1 - alpha) v~_k (1 - v~_k)) (path derivative)_k
      = sum_k (alpha v~_k + (1 - alpha) v~_k^2) (path derivative)_k,
    which for alpha = 0 is IWAE-DReG's w~_k^2 ([3] eq. 7) and for K = 1 the ELBO's
    path gradient. Both terms are nonnegative for alpha in [0, 1), so the coefficient
    is computed as written, v~_k (alpha + (1 - alpha) v~_k), to full relative
    precision: no 1 - v~_k is ever formed. (DReG(alpha)'s alpha w~ + (1 - 2 alpha) w~^2
    is a difference for alpha > 1/2; `DReG` therefore computes it as
    w~ (alpha (1 - w~) + (1 - alpha) w~), with 1 - w~_k summed from the other weights.)

    Args:
      num_samples: K >= 1.
      alpha: in [0, 1); default 0.5. 0 is IWAE.
      dreg: use the doubly reparameterized inference gradient; default False.
    """

    def __init__(
        self,
        num_samples: int,
        alpha: float = 0.5,
        dreg: bool = False,
        name: str | None = None,
        validate_args: bool = False,
    ):
        super().__init__(num_samples, name=name, validate_args=validate_args)
        alpha = checks.check_unit_interval("alpha", alpha)
        if alpha == 1.0:
            raise ValueError(
                "`alpha` must lie in [0, 1) for VRIWAE, got 1.0: the bound divides by "
                "1 - alpha. Its limit alpha -> 1 is the mean of the log weights, the "
                f"ELBO: use mcobjectives.VAE({self.num_samples}) instead."
            )
        if not isinstance(dreg, bool):
            raise TypeError(f"`dreg` must be a bool, got {dreg!r}.")
        self.alpha = alpha
        self.dreg = dreg

    @property
    def gradient_path(self) -> GradientPath:
        """`GradientPath.SPLIT` with `dreg=True` (a path term), else `GradientPath.TOTAL`."""
        return GradientPath.SPLIT if self.dreg else GradientPath.TOTAL

    def _value(self, log_weights):
        return log_mean_exp((1.0 - self.alpha) * log_weights) / (1.0 - self.alpha)

    def _coefficients(self, log_weights):
        normalized = normalized_weights((1.0 - self.alpha) * log_weights)
        if not self.dreg:
            return Coefficients.total(normalized)
        path = normalized * (self.alpha + (1.0 - self.alpha) * normalized)
        return Coefficients(model=normalized, path=path, score=None)
