"""Building log p(x, z) from a prior and a likelihood."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.base import LogJoint

tfd = tfp.distributions

__all__ = ["make_log_joint"]


def make_log_joint(
    prior: tfd.Distribution,
    likelihood: Callable[[tf.Tensor], tfd.Distribution],
    observations: tf.Tensor,
) -> LogJoint:
    """Returns z -> log p(z) + log p(x | z), the `log_joint` an objective takes.

    Args:
      prior: p(z), a distribution over z's event; batch shape [] or [B] (a
        conditional prior p(z | c) has batch shape [B]). For structured latents, a
        `JointDistribution` whose samples have q's structure (e.g. a
        JointDistributionNamed over {"z1", "z2"} for a q over the same names).
      likelihood: z [S, B, *event] (or q's structure of such leaves) -> p(x | z), a
        distribution whose `log_prob(x)` has shape [S, B] (e.g. the decoder's output
        wrapped in tfd.Independent).
      observations: x, shape [B, *x_event].

    Example:
      log_joint = make_log_joint(
          tfd.MultivariateNormalDiag(tf.zeros(50)),
          lambda z: tfd.Independent(tfd.Bernoulli(logits=decoder(z)), 1),
          x)
    """
    if not isinstance(prior, tfd.Distribution):
        raise TypeError(
            f"`prior` must be a tfp.distributions.Distribution, got {type(prior).__name__}."
        )
    if not callable(likelihood):
        raise TypeError(
            "`likelihood` must be a callable z -> distribution over x, got "
            f"{type(likelihood).__name__}."
        )

    def log_joint(z) -> tf.Tensor:
        return prior.log_prob(z) + likelihood(z).log_prob(observations)

    return log_joint
