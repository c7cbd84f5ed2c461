"""GDReG: the doubly reparameterized gradient of a learned prior's parameters.

Bauer and Mnih [1] apply the DReG identity to the score of any reparameterizable
distribution. For a prior p_theta(z) with (implicit) reparameterization z = T_theta(eps)
and dz/dtheta|_p = d T_theta(eps) / d theta at eps = T_theta^{-1}(z),

    E_q[f(z) grad_theta log p_theta(z)]
        = E_q[(grad_z f + f grad_z log(q(z) / p_theta(z))) . dz/dtheta|_p].        (1)

Proof: the density moves with the flow, grad_theta p_theta = -div_z(p_theta v) with
v = dz/dtheta|_p, so integrating by parts,
int (q f / p) grad_theta p dz = int p grad_z(q f / p) . v dz = E_q[grad_z log(q f / p) f . v].

IWAE (and DReG, whose model gradient is IWAE's [2]) gives the prior's parameters
sum_k w~_k grad_theta log p_theta(z_k), z_k held fixed. Apply (1) per sample with
f = w~_k as a function of z_k (the other samples fixed). With
log w_k = log p(x|z_k) + log p_theta(z_k) - log q(z_k) and
d w~_k / d log w_k = w~_k (1 - w~_k),

    grad_z f + f grad_z log(q / p_theta)
        = w~_k (1 - w~_k) grad_z [log p(x|z_k) + log p_theta(z_k) - log q(z_k)]
          + w~_k grad_z [log q(z_k) - log p_theta(z_k)]
        = w~_k (1 - w~_k) grad_z log p(x|z_k) + w~_k^2 grad_z log(q / p_theta)(z_k),

so the GDReG prior gradient is

    sum_k [w~_k (1 - w~_k) grad_z log p(x|z_k)
           + w~_k^2 grad_z log(q(z_k) / p_theta(z_k))] . dz_k/dtheta|_p.          (2)

All z-gradients are taken with every parameter held fixed. For K = 1 (w~ = 1) it is
grad_z log(q / p_theta) . dz/dtheta|_p, the GDReG form of the ELBO's prior gradient.

The surrogate. dz/dtheta|_p is the gradient of z_theta = T_theta(stop(T_theta^{-1}(z)))
(value z; the gradient reaches only the prior's parameters). `correction` returns

    sum_k stop(g_k) . (z_theta,k - stop(z_theta,k))
      - sum_k c_k (log p_theta(stop z_k) - stop(log p_theta(stop z_k))),

g_k the bracket of (2) and c_k the model coefficient (w~_k): value exactly 0, no
gradient for q's or the decoder's parameters; for the prior's it adds (2) and removes
the standard term sum_k c_k grad_theta log p_theta(z_k). It evaluates log p(x, z) and
log q once more, at the stopped samples, to take their z-gradients: the option costs a
second forward and backward pass of the model.

References:
  [1] Bauer, Mnih. Generalized Doubly Reparameterized Gradient Estimators. ICML 2021.
  [2] Tucker, Lawson, Gu, Maddison. Doubly Reparameterized Gradient Estimators for
      Monte Carlo Objectives. ICLR 2019.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.core import checks
from mcobjectives.weights import leave_one_out_logsumexp

tfd = tfp.distributions

__all__ = [
    "PRIOR_GRADIENTS",
    "check_log_joint",
    "check_prior_gradient",
    "correction",
    "without_default",
]

PRIOR_GRADIENTS = ("standard", "gdreg")

_SUPPORTED = (
    "tfd.Normal, tfd.Independent of a supported distribution, a tfd.Sample of a scalar "
    "Normal, or a "
    "tfd.TransformedDistribution of one (MultivariateNormalDiag, MultivariateNormalTriL, "
    "... are), and JointDistributions of these"
)


def check_prior_gradient(prior_gradient) -> str:
    """`prior_gradient`, checked to be "standard" or "gdreg"."""
    if not isinstance(prior_gradient, str) or prior_gradient not in PRIOR_GRADIENTS:
        raise ValueError(
            f"`prior_gradient` must be one of {list(PRIOR_GRADIENTS)}, got {prior_gradient!r}."
        )
    return prior_gradient


def without_default(config: dict) -> dict:
    """An objective's config without `prior_gradient` where it is the default "standard"."""
    if config.get("prior_gradient") == "standard":
        del config["prior_gradient"]
    return config


def _unsupported(dist) -> str | None:
    """Why `dist`'s samples cannot be standardized here, or None where they can."""
    if dist.reparameterization_type != tfd.FULLY_REPARAMETERIZED:
        return f"{type(dist).__name__} is not reparameterizable"
    if isinstance(dist, tfd.Independent):
        return _unsupported(dist.distribution)
    if isinstance(dist, tfd.TransformedDistribution):
        return _unsupported(dist.distribution)
    if isinstance(dist, tfd.Sample):  # as in MultivariateNormalDiag: scalar draws repeated
        base = dist.distribution
        if base.event_shape.rank != 0 or not isinstance(base, tfd.Normal):
            return "a tfd.Sample of a distribution other than a scalar tfd.Normal"
        return _unsupported(base)
    if isinstance(dist, tfd.Normal):
        return None
    return f"{type(dist).__name__} has no standardization here"


def _refuse(prior, why: str, objective: str):
    raise ValueError(
        f"{objective}(prior_gradient='gdreg') needs a reparameterizable prior, but the "
        f"prior {prior!r}: {why}. Supported: {_SUPPORTED}. Use prior_gradient='standard' "
        "for this prior."
    )


def check_log_joint(log_joint, objective: str) -> None:
    """Refuses, before anything is traced, a log joint GDReG cannot take apart.

    It must expose its prior (`prior` and `prior_value`, as `make_log_joint`'s does),
    and the prior must be reparameterizable by a path this module knows.
    """
    prior = getattr(log_joint, "prior", None)
    if not isinstance(prior, tfd.Distribution) or not callable(
        getattr(log_joint, "prior_value", None)
    ):
        raise ValueError(
            f"{objective}(prior_gradient='gdreg') needs a log joint that exposes its "
            f"prior, but got {log_joint!r}: build it with mcobjectives.make_log_joint("
            "prior, likelihood, x), or use prior_gradient='standard'."
        )
    if isinstance(prior, tfd.JointDistribution):
        # The parts of a joint prior exist only given their parents; each is checked
        # when the samples are standardized.
        types = tf.nest.flatten(prior.reparameterization_type)
        if any(t != tfd.FULLY_REPARAMETERIZED for t in types):
            _refuse(prior, f"has parts that are not reparameterizable ({types})", objective)
        return
    why = _unsupported(prior)
    if why is not None:
        _refuse(prior, why, objective)


def _reparameterized(dist, value):
    """T_theta(stop(T_theta^{-1}(value))): value, with gradient dz/dtheta|_p."""
    why = _unsupported(dist)
    if why is not None:
        _refuse(dist, why, "GDReG")
    if isinstance(dist, tfd.Sample):
        # The base's batch dimensions sit before the sampled ones: its loc and scale take
        # one trailing axis per sampled dimension to line up with `value`.
        base, expand = dist.distribution, tf.size(dist.sample_shape)
        loc, scale = (
            tf.reshape(t, tf.concat([tf.shape(t), tf.ones([expand], tf.int32)], 0))
            for t in (base.loc + tf.zeros_like(base.scale), base.scale + tf.zeros_like(base.loc))
        )
        eps = tf.stop_gradient((value - loc) / scale)
        return loc + scale * eps
    if isinstance(dist, tfd.Independent):
        return _reparameterized(dist.distribution, value)
    if isinstance(dist, tfd.TransformedDistribution):
        # stop_gradient also gives a new tensor, so the bijector's cache cannot hand
        # back `value` (without its gradient) from the inverse just taken.
        base = tf.stop_gradient(dist.bijector.inverse(value))
        return dist.bijector.forward(_reparameterized(dist.distribution, base))
    loc, scale = dist.loc, dist.scale
    eps = tf.stop_gradient((value - loc) / scale)
    return loc + scale * eps


def _reparameterized_prior(prior, value):
    """z_theta for a prior or a joint prior; a joint one conditions each part on z_theta."""
    if not isinstance(prior, tfd.JointDistribution):
        return _reparameterized(prior, value)
    leaves = tf.nest.flatten(value)
    current = value
    # Pass j reparameterizes each part given its parents from pass j - 1: after as
    # many passes as parts the gradient has crossed every chain of parents.
    for _ in range(len(leaves)):
        # Every part's value is given, so nothing is drawn: the fixed seed only keeps
        # TFP from making a stateful one (which XLA would not reproduce).
        distributions, _ = prior.sample_distributions(seed=(0, 0), value=current)
        current = tf.nest.pack_sequence_as(
            value,
            [
                _reparameterized(d, v)
                for d, v in zip(tf.nest.flatten(distributions), leaves, strict=True)
            ],
        )
    return current


def correction(q, log_joint, z, model: tf.Tensor, stopped: tf.Tensor) -> tf.Tensor:
    """The surrogate's GDReG term [B] (see the module docstring): value 0.

    Args:
      q: q(z|x).
      log_joint: the bound log joint, checked by `check_log_joint`.
      z: the samples (q's structure, leaves [S, B, *event]).
      model: the model coefficients c_k = w~_k [S, B], 0 where the value is infinite.
      stopped: the stopped log weights [S, B].
    """
    if model.shape[0] == 1:
        others = tf.zeros_like(model)
    else:  # 1 - w~_k from the other weights: no cancellation for a dominant weight
        others = tf.exp(
            leave_one_out_logsumexp(stopped, axis=0) - tf.reduce_logsumexp(stopped, axis=0)
        )
    # A data point with no nonzero weight has c_k = 0 and 1 - w~_k = NaN (-inf - -inf):
    # it sends no gradient, as in the standard estimator.
    likelihood_coefficient = tf.stop_gradient(tf.where(model != 0, model * others, 0.0))
    ratio_coefficient = tf.stop_gradient(model * model)
    fixed = tf.nest.map_structure(tf.stop_gradient, z)
    leaves = tf.nest.flatten(fixed)
    prior = log_joint.prior
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(leaves)
        log_q = checks.log_prob(q, fixed)
        log_prior = prior.log_prob(log_joint.prior_value(fixed))
        log_likelihood = log_joint(fixed) - log_prior
        bracket = tf.reduce_sum(
            tf.math.multiply_no_nan(log_likelihood, likelihood_coefficient)
            + tf.math.multiply_no_nan(log_q - log_prior, ratio_coefficient)
        )
    g = tape.gradient(bracket, leaves, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # A sample outside the model's support has coefficient 0 but may have a non-finite
    # z-gradient: it contributes nothing, not 0 * inf.
    g = [tf.stop_gradient(tf.where(tf.math.is_finite(t), t, tf.zeros_like(t))) for t in g]
    g = log_joint.prior_value(tf.nest.pack_sequence_as(fixed, g))
    value = log_joint.prior_value(fixed)
    z_theta = _reparameterized_prior(prior, value)
    term = 0.0
    for grad, leaf in zip(tf.nest.flatten(g), tf.nest.flatten(z_theta), strict=True):
        event_axes = list(range(2, leaf.shape.rank))
        moved = leaf - tf.stop_gradient(leaf)
        term += tf.reduce_sum(moved * grad, axis=event_axes)
    standard = prior.log_prob(value)
    standard = standard - tf.stop_gradient(standard)
    return tf.reduce_sum(term - tf.math.multiply_no_nan(standard, tf.stop_gradient(model)), axis=0)
