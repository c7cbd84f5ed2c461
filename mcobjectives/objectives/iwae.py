"""The importance weighted bounds: IWAE, MIWAE (and VAE), CIWAE and PIWAE.

References:
  [1] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
  [2] Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh. Tighter Variational Bounds
      are Not Necessarily Better. ICML 2018.
"""

from __future__ import annotations

import math

import tensorflow as tf

from mcobjectives.core import checks, gdreg, validation
from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import log_mean_exp, normalized_weights

__all__ = ["CIWAE", "IWAE", "MIWAE", "PIWAE", "VAE"]


def _grouped(log_weights: tf.Tensor, num_outer: int, num_inner: int) -> tf.Tensor:
    """[M * L, B] -> [M, L, B], sample s = m * L + l."""
    return tf.reshape(log_weights, [num_outer, num_inner, -1])


def _miwae_coefficients(log_weights: tf.Tensor, num_outer: int, num_inner: int) -> tf.Tensor:
    """d MIWAE / d log w_ml = w~_ml / M, the weights normalized within each group."""
    grouped = normalized_weights(_grouped(log_weights, num_outer, num_inner), axis=1)
    return tf.reshape(grouped / num_outer, tf.shape(log_weights))


class IWAE(MCObjective):
    """The importance weighted bound of [1], with its standard gradient estimator.

    value:     L_K = log (1/K) sum_k w_k,  w_k = p(x, z_k) / q(z_k|x)
    gradient:  the total derivative of L_K for both networks, i.e.
               sum_k w~_k d log w_k, w~ the self-normalized weights.

    prior_gradient="gdreg" gives a learned prior's parameters theta the generalized
    doubly reparameterized estimator of [3] in place of sum_k w~_k d log p_theta(z_k):

      sum_k [w~_k (1 - w~_k) grad_z log p(x|z_k) + w~_k^2 grad_z log(q/p_theta)(z_k)]
            . dz_k/dtheta|_p,

    dz/dtheta|_p the prior's reparameterization at the sample (derived in
    mcobjectives/core/gdreg.py). Same mean; the value and every other gradient
    are unchanged. It needs a log joint from `make_log_joint` with a reparameterizable
    prior, and evaluates the model a second time.

    Args:
      num_samples: K >= 1.
      prior_gradient: "standard" (default) or "gdreg".

    [3] Bauer, Mnih. Generalized Doubly Reparameterized Gradient Estimators. ICML 2021.
    """

    gradient_path = GradientPath.TOTAL

    def __init__(
        self,
        num_samples: int,
        name: str | None = None,
        validate_args: bool = False,
        prior_gradient: str = "standard",
    ):
        super().__init__(num_samples, name=name, validate_args=validate_args)
        self.prior_gradient = gdreg.check_prior_gradient(prior_gradient)

    def get_config(self):
        """The constructor's arguments; `prior_gradient` only where it is not "standard".

        The default is left out so that IWAE keeps the config and repr (`IWAE(num_samples=K)`)
        that stored results and checkpoints record.
        """
        return gdreg.without_default(super().get_config())

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        return Coefficients.total(normalized_weights(log_weights))


class MIWAE(MCObjective):
    """The multiply importance weighted bound ([2] eq. 3): M IWAE bounds of K samples.

    value:     (1/M) sum_m log (1/K) sum_k w_mk
    gradient:  its total derivative, sum_mk (w~^(m)_k / M) d log w_mk, w~^(m) the
               weights normalized within group m.

    The bound is -inf where every weight of one group is zero (log w = -inf).

    Args:
      num_outer: M >= 1, the number of averaged bounds.
      num_inner: K >= 1, the samples inside each bound.
    """

    gradient_path = GradientPath.TOTAL

    def __init__(
        self, num_outer: int, num_inner: int, name: str | None = None, validate_args: bool = False
    ):
        self.num_outer = checks.check_count("num_outer", num_outer)
        self.num_inner = checks.check_count("num_inner", num_inner)
        super().__init__(self.num_outer * self.num_inner, name=name, validate_args=validate_args)

    def _value(self, log_weights):
        grouped = _grouped(log_weights, self.num_outer, self.num_inner)
        return tf.reduce_mean(log_mean_exp(grouped, axis=1), axis=0)

    def _coefficients(self, log_weights):
        return Coefficients.total(_miwae_coefficients(log_weights, self.num_outer, self.num_inner))


class VAE(MIWAE):
    """The evidence lower bound estimated with M samples: `MIWAE(num_outer=M, num_inner=1)`.

    value:     (1/M) sum_m log w_m
    gradient:  (1/M) sum_m d log w_m.

    A single zero weight (log w_m = -inf) makes the bound -inf.

    Args:
      num_samples: M >= 1.
    """

    def __init__(self, num_samples: int = 1, name: str | None = None, validate_args: bool = False):
        super().__init__(
            num_outer=checks.check_count("num_samples", num_samples),
            num_inner=1,
            name=name,
            validate_args=validate_args,
        )

    def get_config(self):
        return self._with_common_config({"num_samples": self.num_samples})


class CIWAE(MCObjective):
    """The combination bound of [2] (eqs. 13-14): beta * ELBO + (1 - beta) * IWAE.

    value:     beta (1/K) sum_k log w_k + (1 - beta) log (1/K) sum_k w_k, the same w_k
               in both terms
    gradient:  its total derivative, sum_k (beta / K + (1 - beta) w~_k) d log w_k.

    CIWAE(K, beta=0) is IWAE(K) and CIWAE(K, beta=1) is VAE(K). For beta > 0 a single
    zero weight (log w_k = -inf) makes the ELBO term, and so the bound, -inf.

    Learnable beta (`learnable_beta=True`), the variant of the reproduction report of
    [2]: beta = sigmoid(beta_logit) with `beta_logit` a trainable variable of this
    module (listed in `trainable_variables`; add it to either variable list), so beta
    stays in (0, 1). It is trained on the same loss as the networks, i.e. the CIWAE
    bound is maximised over beta as well. Note what that optimises: d value / d beta
    = (1/K) sum_k log w_k - log (1/K) sum_k w_k <= 0 for every draw (Jensen), so
    gradient ascent moves beta monotonically toward 0 (the IWAE end), at a speed set
    by the learning rate and the IWAE-ELBO gap: a learnable beta acts as a learned
    annealing schedule from the VAE-like start to IWAE, not as a search for an
    interior optimum.

    Args:
      num_samples: K >= 1.
      beta: the weight of the ELBO term, a float in [0, 1] (in (0, 1) if learnable).
      learnable_beta: whether beta is a trainable variable initialised at `beta`.
    """

    gradient_path = GradientPath.TOTAL

    def __init__(
        self,
        num_samples: int,
        beta: float = 0.5,
        learnable_beta: bool = False,
        name: str | None = None,
        validate_args: bool = False,
    ):
        super().__init__(num_samples, name=name, validate_args=validate_args)
        if not isinstance(learnable_beta, bool):
            raise TypeError(f"`learnable_beta` must be a bool, got {learnable_beta!r}.")
        beta = checks.check_unit_interval("beta", beta, open_interval=learnable_beta)
        self.learnable_beta = learnable_beta
        self._initial_beta = beta
        if learnable_beta:
            logit = math.log(beta) - math.log1p(-beta)
            if not 0.0 < float(tf.sigmoid(tf.constant(logit, tf.float32))) < 1.0:
                raise ValueError(
                    f"`beta` = {beta} is too close to 0 or 1 for a learnable beta: "
                    "sigmoid(logit(beta)) rounds to an endpoint in float32."
                )
            self.beta_logit = tf.Variable(logit, dtype=tf.float32, name="beta_logit")
        else:
            self._fixed_beta = beta

    @property
    def beta(self) -> tf.Tensor | float:
        """The current beta: a float, or sigmoid(beta_logit) when learnable."""
        if self.learnable_beta:
            return tf.sigmoid(self.beta_logit)
        return self._fixed_beta

    def _beta(self, dtype) -> tf.Tensor:
        if self.learnable_beta:
            beta = tf.cast(self.beta, dtype)
            if self.validate_args:  # a NaN logit (a diverged or damaged run) is named
                check = validation.finite_value_assertion(beta, "CIWAE's learnable beta")
                beta = checks.with_assertion(check, beta)
            return beta
        # Straight from the Python float: tf.cast(0.3, tf.float64) would round through float32.
        return tf.constant(self._fixed_beta, dtype)

    def get_config(self):
        """The constructor's arguments, `beta` the value it was given (the initial one).

        A learnable beta's trained value is the variable `beta_logit`: it is saved and
        restored with the weights (the Keras model's own variables), not with the config,
        so a config stays the same as training runs.
        """
        config = super().get_config()
        config["beta"] = self._initial_beta
        return config

    def _value(self, log_weights):
        beta = self._beta(log_weights.dtype)
        elbo = tf.reduce_mean(log_weights, axis=0)
        # A term of weight exactly 0 is left out: beta = 0 is IWAE, whose bound is finite
        # beside an ELBO of -inf (a zero weight), and beta = 1 is the ELBO.
        return _weighted(beta, elbo) + _weighted(1.0 - beta, log_mean_exp(log_weights))

    def _coefficients(self, log_weights):
        beta = tf.stop_gradient(self._beta(log_weights.dtype))
        return Coefficients.total(
            beta / self.num_samples + (1.0 - beta) * normalized_weights(log_weights)
        )


def _weighted(weight: tf.Tensor, bound: tf.Tensor) -> tf.Tensor:
    """weight * bound, 0 where the weight is 0 (also for a bound of -inf)."""
    return tf.math.multiply_no_nan(bound, weight * tf.ones_like(bound))


class PIWAE(MCObjective):
    """The partially importance weighted estimator of [2] (eq. 15), K = M L samples.

    value:            L_K, the IWAE bound of all K = M L weights
    model gradient:   IWAE's over all K weights, sum_k w~_k d log p(x, z_k)
    inference grad.:  MIWAE(M, L)'s over the same weights laid out [M, L],
                      sum_ml (w~^(m)_l / M) d log w_ml.

    A parameter shared by p and q receives the sum of both terms. A group whose
    weights are all zero (log w = -inf) gives no inference gradient: its MIWAE term
    log (1/L) sum_l w_ml is log 0, whose derivative is undefined, while the bound and
    the model gradient come from the other groups' weights.

    Args:
      num_outer: M >= 1.
      num_inner: L >= 1.
    """

    gradient_path = GradientPath.SPLIT

    def __init__(
        self, num_outer: int, num_inner: int, name: str | None = None, validate_args: bool = False
    ):
        self.num_outer = checks.check_count("num_outer", num_outer)
        self.num_inner = checks.check_count("num_inner", num_inner)
        super().__init__(self.num_outer * self.num_inner, name=name, validate_args=validate_args)

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        inference = _miwae_coefficients(log_weights, self.num_outer, self.num_inner)
        return Coefficients(model=normalized_weights(log_weights), path=inference, score=-inference)
