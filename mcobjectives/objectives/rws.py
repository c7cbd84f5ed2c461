"""Reweighted wake-sleep: the wake, sleep or wake-sleep update of the inference network.

References:
  [1] Bornschein, Bengio. Reweighted Wake-Sleep. ICLR 2015.
  [2] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives. ICLR 2019, eq. 8 and appendix 8.3 eq. 13.
"""

from __future__ import annotations

from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import log_mean_exp, normalized_weights

__all__ = ["INFERENCE_UPDATES", "RWS"]

# The weight of the sleep phase's gradient in q's update, per `inference_update`.
INFERENCE_UPDATES = {"wake": 0.0, "sleep": 1.0, "wake_sleep": 0.5}


class RWS(MCObjective):
    """Reweighted wake-sleep with the wake, sleep or wake-sleep update for q ([1]; [2] eq. 8; [3]).

    value:            L_K = log (1/K) sum_k w_k (reported)
    model gradient:   sum_k w~_k d log p(x, z_k), as IWAE
    inference grad.:  sum_k w~_k d log q(z_k|x) with z_k held fixed: an estimate of
                      -d KL(p(z|x) || q(z|x)), so q is trained toward the posterior.

    The inference update uses only the score of q, so q need not be reparameterized:
    discrete latents work in their default integer dtypes (tfd.Bernoulli,
    tfd.Categorical, ...), alone or in a JointDistribution with continuous leaves. Its
    gradient is not that of any bound.

    The sleep phase ([1] sec. 3, [3]) trains q on samples of the model instead:
    (x_n, z_n) ~ p(x, z), n = 1..N, and the inference gradient
    1/N sum_n d log q(z_n|x_n), an estimate of -E_{p(x)}[d KL(p(z|x) || q(z|x))]:

      inference_update="wake"        wake gradient only (the default)
      inference_update="sleep"       sleep gradient only
      inference_update="wake_sleep"  (wake + sleep) / 2, as [1]

    The model gradient is the wake one in every case. An objective sees only q and
    log p(x, z), not a model to sample: the sleep term is added by
    `ImportanceWeightedAutoencoder` (its `fit`, `compute_gradients` and
    `make_train_step`), which draws N = batch-size samples of p from its own seed
    (`mcobjectives.keras.generation.sleep_loss`). Called directly on (q, log_joint),
    "sleep" gives q no gradient and "wake_sleep" half the wake one; `sleep_weight`
    (0, 1 or 1/2) is the weight a caller gives its own sleep loss.

    Args:
      num_samples: K >= 1.
      inference_update: "wake" (default), "sleep" or "wake_sleep".
    """

    gradient_path = GradientPath.SCORE

    def __init__(
        self,
        num_samples: int,
        inference_update: str = "wake",
        name: str | None = None,
        validate_args: bool = False,
    ):
        super().__init__(num_samples, name=name, validate_args=validate_args)
        if not isinstance(inference_update, str) or inference_update not in INFERENCE_UPDATES:
            raise ValueError(
                f"`inference_update` must be one of {sorted(INFERENCE_UPDATES)}, got "
                f"{inference_update!r}."
            )
        self.inference_update = inference_update

    def get_config(self):
        """The constructor's arguments; `inference_update` only where it is not "wake".

        The default is left out so that a wake-only RWS keeps the config (and the repr,
        `RWS(num_samples=K)`) it had before the option existed, which stored results and
        checkpoints record.
        """
        config = super().get_config()
        if config["inference_update"] == "wake":
            del config["inference_update"]
        return config

    @property
    def sleep_weight(self) -> float:
        """The weight of the sleep phase in q's gradient: 0 (wake), 1 (sleep), 1/2 (both)."""
        return INFERENCE_UPDATES[self.inference_update]

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        normalized = normalized_weights(log_weights)
        wake = 1.0 - self.sleep_weight
        score = None if wake == 0.0 else (normalized if wake == 1.0 else wake * normalized)
        return Coefficients(model=normalized, path=None, score=score)
