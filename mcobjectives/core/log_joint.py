"""Building log p(x, z) from a prior and a likelihood."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.core import checks, structures
from mcobjectives.core.objective import LogJoint

tfd = tfp.distributions

__all__ = ["make_log_joint"]

_LIKELIHOOD_EXAMPLE = "lambda z: tfd.Independent(tfd.Bernoulli(logits=decoder(z)), 1)"


class _PriorLikelihoodLogJoint:
    """z -> log p(z) + log p(x | z), which knows its prior, likelihood and observations.

    Called with z (leaves [S, B, *event]) it returns [S, B]. Handed to an objective (or
    `log_marginal_estimate`), it is first bound to q (`_bind_to`, called by
    `checks.bind_log_joint` before anything is traced): x's batch, the prior's batch
    and event shapes are checked against q's, and a joint prior's parts are paired with
    q's by name (`structures.pair_prior`). When it is called, the likelihood's
    distribution is checked against x and z, and each term's shape against [S, B]. All
    of these read static shapes, in Python, while tracing; only a batch size known at
    run time alone is checked by an assertion (which XLA drops).
    """

    def __init__(self, prior, likelihood, observations, pair=None):
        self._prior = prior
        self._likelihood = likelihood
        self._observations = observations
        self._pair = pair  # z in q's structure -> the value the prior scores; None: z

    @property
    def prior(self) -> tfd.Distribution:
        """p(z)."""
        return self._prior

    @property
    def likelihood(self) -> Callable[[tf.Tensor], tfd.Distribution]:
        """z -> p(x | z)."""
        return self._likelihood

    @property
    def observations(self):
        """x, [B, *x_event]."""
        return self._observations

    def prior_value(self, z):
        """z (q's structure) as the value the prior scores: a joint prior's parts paired."""
        return z if self._pair is None else self._pair(z)

    def _bind_to(self, q) -> _PriorLikelihoodLogJoint:
        """This log joint for samples of q: checks its pieces against q and pairs the prior."""
        structures.check_observations(self._observations, q, "observations")
        structures.check_prior_batch(self._prior, q, "prior")
        pair = structures.pair_prior(q, self._prior, "prior")
        return type(self)(self._prior, self._likelihood, self._observations, pair)

    def __call__(self, z) -> tf.Tensor:
        x = self._observations
        leading = structures.static_shape(tf.nest.flatten(z)[0])[:2]  # [S, B]
        assertions = structures.observations_assertion(x, z, "observations")
        log_prior = self._prior.log_prob(z if self._pair is None else self._pair(z))
        structures.check_log_prob_shape(log_prior, leading, "prior", "log_prob(z)")
        likelihood = self._likelihood(z)
        structures.check_likelihood(
            likelihood,
            x,
            "likelihood",
            leading,
            "[S, B]: one distribution over x per sample z and data point",
            _LIKELIHOOD_EXAMPLE,
        )
        log_likelihood = likelihood.log_prob(x)
        structures.check_log_prob_shape(log_likelihood, leading, "likelihood", "log_prob(x)")
        return checks.with_assertion(
            tf.group(assertions) if any(c is not None for c in assertions) else None,
            log_prior + log_likelihood,
        )

    def __repr__(self) -> str:
        return (
            f"make_log_joint(prior={self._prior!r}, likelihood={self._likelihood!r}, "
            f"observations of shape {structures.static_shape(self._observations)})"
        )


def make_log_joint(
    prior: tfd.Distribution,
    likelihood: Callable[[tf.Tensor], tfd.Distribution],
    observations: tf.Tensor,
) -> LogJoint:
    """Returns z -> log p(z) + log p(x | z), the `log_joint` an objective takes.

    The result is a callable z (leaves [S, B, *event]) -> [S, B], with the pieces as
    read-only attributes `prior`, `likelihood` and `observations`. An objective (and
    `log_marginal_estimate`) checks them against q before anything is traced: x's batch
    size must be q's B (x is never broadcast over q's batch), the prior's batch shape []
    or [B] and its event shape, leaf by leaf, q's. A joint prior and a joint q whose
    parts all have names (JointDistributionNamed keys, the argument names of a
    JointDistributionSequential's lambdas, or name= on each part) are paired by name, so
    the prior may be written in generative order (p(z2) p(z1|z2) for a q(z1|x) q(z2|z1));
    made-up names (TFP's "x", "x1", "var0", ...) are no names: then the structures must
    be the same. Where the parts cannot be paired, the error shows both structures.
    When called, the likelihood must return a distribution of batch shape [S, B] and
    x's event shape x.shape[1:].

    Args:
      prior: p(z), a distribution over z's event; batch shape [] or [B] (a
        conditional prior p(z | c) has batch shape [B]). For structured latents, a
        `JointDistribution` over q's latent parts (e.g. a JointDistributionNamed over
        {"z1", "z2"} for a q over the same names), paired with q's by name.
      likelihood: z [S, B, *event] (or q's structure of such leaves) -> p(x | z), a
        distribution of batch shape [S, B] and event shape x.shape[1:], so that its
        `log_prob(x)` has shape [S, B] (e.g. the decoder's output wrapped in
        tfd.Independent).
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
    if observations is None:
        raise TypeError("`observations` must be x, a tensor of shape [B, *x_event]; got None.")
    return _PriorLikelihoodLogJoint(prior, likelihood, observations)
