"""DisARM: antithetic gradients of the IWAE bound for Bernoulli latents.

References:
  [1] Dong, Mnih, Tucker. DisARM: An Antithetic Gradient Estimator for Binary Latent
      Variables. NeurIPS 2020 (arXiv:2006.10680): the estimator (eq. 7 and its
      multi-dimensional form) and its local form for the multi-sample bound.
  [2] Yin, Zhou. ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks.
      ICLR 2019: the antithetic augmentation DisARM integrates out.
  [3] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

from typing import ClassVar

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import weights
from mcobjectives.core import checks, surrogate, validation
from mcobjectives.core.objective import (
    Coefficients,
    GradientPath,
    MCObjective,
    ObjectiveResult,
    result_of,
)
from mcobjectives.sampling.antithetic import antithetic_sample

tfd = tfp.distributions

__all__ = ["DisARM"]


def _concat(structures):
    return tf.nest.map_structure(lambda *leaves: tf.concat(leaves, axis=0), *structures)


class DisARM(MCObjective):
    """DisARM [1] for the K-sample importance weighted bound [3] of a Bernoulli q.

    For a q of L Bernoulli layers, each layer's logistic noise eps_l (b = 1[eps < alpha])
    is used with both signs: the 2^L sign patterns p give 2^L sets of K samples z_k^p
    (layer l drawn from s_l eps_l given the layers above it), each set K iid draws of q.
    Pattern p's partner in layer l, p^(l) (s_l negated), has the same layers above l,
    layer l's antithetic values b~ = 1[-eps < alpha], and the layers below redrawn from
    their own noise. With w_k^p = p(x, z_k^p) / q(z_k^p|x) and L^p = log (1/K) sum_k w_k^p:

    value:            (1/2^L) sum_p L^p, an unbiased estimate of E[L_K] (reported)
    model gradient:   (1/2^L) sum_p sum_k w~_k^p d log p(x, z_k^p), IWAE's of each set
    inference grad.:  (1/2^L) sum_p [ sum_k (1/K - w~_k^p) d log q(z_k^p|x)  (z fixed)
                        + sum_{l,k} g_lk^p . d alpha_lk^p ],
                      g_lk^p = 1/2 (L^p - L^p_(l,k)) (b_lk^p - b~_lk^p) sigmoid(|alpha_lk^p|),
                      L^p_(l,k) = log (1/K) (sum_{j != k} w_j^p + w_k^(p^(l))),
                      alpha_lk^p layer l's logits given z_k^p's layers above l.

    (b - b~) is (-1)^{b~} 1[b != b~], so g_lk^p is [1]'s estimator 1/2 (f(b) - f(b~))
    (-1)^{b~} 1[b != b~] sigmoid(|alpha|) with f the bound as a function of sample k's
    layer l, the other samples held: [1]'s local DisARM for the multi-sample bound,
    replacing b_k by b~_k inside L_K. Given z_k^p's layers above l, z_k^p and z_k^(p^(l))
    are exact draws of q whose layer-l noises are antithetic and whose layers below share
    noise independent of it, so their difference has the conditional mean [1] integrates
    out: each pattern's term is unbiased for d E[L_K] / d alpha_l, and so is their mean.
    For one layer the mean over the two patterns is the symmetrized local DisARM of [1]'s
    reference code (both halves of each pair serve as the samples); it costs no extra
    evaluation and its variance is at most the one-sided estimator's. The first term is
    the bound's own dependence on q's parameters with the samples fixed (its mean is not
    0 for K > 1); the 1/K is a control variate of mean 0 (E[d log q(z)] = 0) that makes
    it vanish for K = 1, where DisARM is [1]'s estimator of the ELBO gradient.

    The logits term enters the surrogate as sum stop(g) alpha, so its gradient flows
    through q's logits tensors into the encoder; the loss is value-preserving,
    -mean_b(value + S - stop(S)), as every objective's.

    `num_samples` is K, the samples inside each bound (the number of antithetic pairs for
    one layer). log p(x, z) is evaluated at 2^L K points, in one call of `log_joint`: 2K
    for one layer, 4K for the two-layer sigmoid belief net. The result's `log_weights`
    are all 2^L K, laid out [2^L * K] pattern-major (pattern 0 first, whose samples are
    `mcobjectives.sampling.sample(q, K, seed)`'s), and `ess` is theirs. At equal
    evaluations, compare DisARM(K) with VIMCO(2^L K).

    Which q: `leaf_families` (below). Every leaf must be a tfd.Bernoulli or a
    tfd.Independent of one (int32 by default; logits, or probs read as their logits),
    alone or as the parts of a JointDistribution (a hierarchy of Bernoulli layers such
    as `networks.SigmoidBeliefEncoder`'s). Any other leaf is refused with a ValueError
    naming it, before `log_joint` is called; use VIMCO or RWS there.

    Zero weights (log w = -inf) give the estimator's limit as the weight tends to 0. A
    data point where one pattern's weights are all zero has the value -inf (loss +inf)
    and sends no gradient. Where exactly one weight of a pattern is nonzero and its
    partner's weight is zero, L^p_(l,k) is log 0 and that learning signal is infinite (as
    VIMCO's baseline is there): the loss is NaN, a step the Keras model skips. A layer
    whose units all agree with their antithetic values (b = b~) gets 0.

    Args:
      num_samples: K >= 1, the samples of each bound.
    """

    gradient_path = GradientPath.SCORE
    leaf_families: ClassVar[tuple[type, ...]] = (tfd.Bernoulli,)
    """The latent families this objective takes: each leaf of q must be one of these
    (or a tfd.Independent of one). Objectives without the attribute take any q their
    `gradient_path` allows."""

    def __init__(self, num_samples: int, name: str | None = None, validate_args: bool = False):
        super().__init__(num_samples, name=name, validate_args=validate_args)

    def _value(self, log_weights):
        """The mean over the sign patterns of their bounds, from [2^L * K, B]."""
        grouped = tf.reshape(log_weights, [-1, self.num_samples, tf.shape(log_weights)[-1]])
        return tf.reduce_mean(weights.log_mean_exp(grouped, axis=1), axis=0)

    def _coefficients(self, log_weights):
        grouped = tf.reshape(log_weights, [-1, self.num_samples, tf.shape(log_weights)[-1]])
        patterns = tf.cast(tf.shape(grouped)[0], log_weights.dtype)
        normalized = tf.reshape(weights.normalized_weights(grouped, axis=1), tf.shape(log_weights))
        # 1/K - w~_k: the 1/K is a control variate of mean 0 (E[d log q(z_k)] = 0).
        return Coefficients(
            model=normalized / patterns,
            path=None,
            score=(1.0 / self.num_samples - normalized) / patterns,
        )

    def learning_signals(self, log_weights: tf.Tensor, partner_log_weights: tf.Tensor):
        """L_K - L_K^(k), [K, B]: the bound of the samples' stopped log weights [K, B]
        less the bound with sample k's weight replaced by its partner's [K, B]."""
        shift = tf.maximum(
            weights.max_log_weight(log_weights), weights.max_log_weight(partner_log_weights)
        )
        shift = tf.where(tf.math.is_finite(shift), shift, tf.zeros_like(shift))
        shifted = log_weights - shift
        partners = partner_log_weights - shift
        log_total = tf.reduce_logsumexp(shifted, axis=0)
        if self.num_samples == 1:  # no other sample: L_1^(1) = log w(partner)
            others = tf.fill(tf.shape(shifted), tf.constant(-float("inf"), shifted.dtype))
        else:  # log sum_{j != k} w_j
            others = weights.leave_one_out_logsumexp(shifted, axis=0)
        replaced = tf.reduce_logsumexp(tf.stack([others, partners]), axis=0)
        return log_total - replaced

    def __call__(self, q: tfd.Distribution, log_joint, seed) -> ObjectiveResult:
        """Evaluates DisARM on one batch; arguments as `MCObjective.__call__`, q Bernoulli."""
        name = type(self).__name__
        checks.check_distribution(q, objective=name, needs_reparameterization=False)
        checks.check_log_joint(log_joint)
        checks.check_seed(seed)
        log_joint = checks.bind_log_joint(log_joint, q)
        k = self.num_samples
        draws = antithetic_sample(q, k, seed)
        num_patterns, num_layers = len(draws.signs), len(draws.noise)
        z = _concat(draws.draws)  # [2^L * K, B, ...], pattern-major
        z = checks.with_assertion(checks.batch_size_assertion(q, name, z), z)
        log_q = checks.log_prob(q, z)
        log_p = checks.call_log_joint(log_joint, z, log_q)
        log_p = checks.check_log_joint_output(log_p, log_q, num_patterns * k)
        log_w = log_p - log_q
        if self._validate_args:
            log_w = checks.with_assertion(
                validation.finite_log_weights_assertion(z, log_q, log_p, name), log_w
            )
        stopped = validation.nan_for_positive_infinity(tf.stop_gradient(log_w))

        value = surrogate.checked_value(self._value(stopped), stopped, name)
        coefficients = surrogate.checked_coefficients(
            self._coefficients(stopped), GradientPath.SCORE, stopped, name
        )
        coefficients = surrogate.without_infinite_values(coefficients, value)
        total = surrogate.weighted_sum(coefficients.model, log_p)
        total += surrogate.weighted_sum(coefficients.score, log_q)

        finite = tf.math.is_finite(value)
        for p in range(num_patterns):
            own = stopped[p * k : (p + 1) * k]
            for layer in range(num_layers):
                other = draws.partner(p, layer)
                signal = self.learning_signals(own, stopped[other * k : (other + 1) * k])
                signal = tf.where(finite, signal, tf.zeros_like(signal)) / num_patterns
                total += self._logits_term(
                    signal, draws.logits[p][layer], draws.bits[p][layer], draws.bits[other][layer]
                )
        return result_of(value, total, stopped)

    @staticmethod
    def _logits_term(signal, logits, bits, antithetic_bits) -> tf.Tensor:
        """sum_k stop(g_k) . logits_k per data point, [B], g_k = 1/2 signal_k (b_k - b~_k)
        sigmoid(|logits_k|)."""
        flips = bits - antithetic_bits  # (-1)^{b~} 1[b != b~]
        signal = tf.cast(signal, logits.dtype)
        trailing = tf.ones_like(tf.shape(flips)[2:])
        signal = tf.reshape(signal, tf.concat([tf.shape(signal), trailing], axis=0))
        # 0 where b = b~, also beside an infinite signal (see "Zero weights").
        g = tf.stop_gradient(
            0.5 * tf.math.multiply_no_nan(signal, flips) * tf.sigmoid(tf.abs(logits))
        )
        term = g * tf.broadcast_to(logits, tf.shape(g))
        return tf.reduce_sum(term, axis=[0, *range(2, term.shape.rank)])
