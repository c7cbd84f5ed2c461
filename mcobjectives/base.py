"""`MCObjective`: one draw of samples, three gradient paths, one surrogate loss.

Every estimator of the library is computed from ONE draw z_1..z_S ~ q(z|x) per data
point and three per-sample quantities, each carrying one kind of gradient:

* `log p(x, z_k)` with z_k held fixed: the gradient w.r.t. the model parameters;
* the path derivative of log w_k: d log w_k / d z_k * d z_k / d phi, with q's
  parameters held fixed inside log q (the "doubly reparameterized" direction);
* `log q(z_k | x)` with z_k held fixed: the score-function term w.r.t. q's parameters.

An objective supplies the value it reports and a stop-gradient coefficient per sample
for each quantity (a `Coefficients`), read straight off the table of objectives in
the README. The surrogate

    S = sum_k model_k * log p(x, z_k) + path_k * (path term)_k + score_k * log q(z_k|x)

is then a single function of both networks whose gradient w.r.t. the model
parameters is the model estimator and w.r.t. the inference parameters the inference
estimator. A parameter shared by p and q receives the sum of both terms, which is the
unified surrogate of Tucker et al. (2019), appendix 8.3 (eqs. 11-16). The loss keeps
the value of the bound: `loss = -mean_b(value + S - stop_gradient(S))`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _checks, sampling, weights

tfd = tfp.distributions

__all__ = ["Coefficients", "Gradients", "LogJoint", "MCObjective", "ObjectiveResult"]

LogJoint = Callable[[tf.Tensor], tf.Tensor]
"""A callable taking z of shape [S, B, *event] and returning log p(x, z) of shape [S, B]."""

# How an objective's gradient reaches q's parameters; see MCObjective._gradient.
_TOTAL, _SPLIT, _SCORE = "total", "split", "score"


class Coefficients(NamedTuple):
    """Per-sample coefficients, shape [S, B], of the three gradient paths of log w.

    Attributes:
      model: weight of log p(x, z_k) with z_k fixed (model-parameter gradient).
      path: weight of the path derivative of log w_k through z_k, or None for none.
      score: weight of log q(z_k|x) with z_k fixed (score term), or None for none.
    """

    model: tf.Tensor
    path: tf.Tensor | None
    score: tf.Tensor | None

    @classmethod
    def total(cls, coefficient: tf.Tensor) -> Coefficients:
        """The coefficients of `coefficient * log w_k` differentiated in full."""
        return cls(coefficient, coefficient, -coefficient)


class Gradients(NamedTuple):
    """Gradients for the model (p) and inference (q) variables, in the order given."""

    model: list
    inference: list


class ObjectiveResult(NamedTuple):
    """What an `MCObjective` returns for one batch.

    Attributes:
      loss: scalar surrogate loss. Its value is -mean over the batch of `bound`; its
        gradient w.r.t. the model variables is the objective's model estimator and
        w.r.t. the inference variables its inference estimator (both averaged over
        the batch, as descent directions).
      bound: [B], the objective's value per data point (for PIWAE, RWS, STL and DReG:
        the IWAE bound of all samples; for JVI: the jackknife estimate).
      log_weights: [S, B], log w = log p(x, z) - log q(z|x) for every sample, laid out
        [num_outer * num_inner] (outer-major) for MIWAE and PIWAE.
      ess: [B], the effective sample size (sum w)^2 / sum w^2 of all S weights.
    """

    loss: tf.Tensor
    bound: tf.Tensor
    log_weights: tf.Tensor
    ess: tf.Tensor

    @property
    def model_loss(self) -> tf.Tensor:
        """The surrogate to differentiate w.r.t. the model variables (`loss`)."""
        return self.loss

    @property
    def inference_loss(self) -> tf.Tensor:
        """The surrogate to differentiate w.r.t. the inference variables (`loss`)."""
        return self.loss

    def gradients(
        self,
        tape: tf.GradientTape,
        model_variables: Sequence[tf.Variable],
        inference_variables: Sequence[tf.Variable],
        unconnected_gradients: tf.UnconnectedGradients = tf.UnconnectedGradients.NONE,
    ) -> Gradients:
        """Gradients of the loss w.r.t. both variable lists, in one backward pass.

        Every estimator of this library is a single surrogate, so one call to
        `tape.gradient` serves both networks. A variable shared by p and q may be
        listed in either list (or both, in which case both entries hold the same full
        update: apply it once): its gradient is the unified estimator of Tucker et al.
        (2019) appendix 8.3.

        Args:
          tape: the tape that recorded the objective's call.
          model_variables: variables of p(x, z) (decoder, prior).
          inference_variables: variables of q(z|x) (encoder).
          unconnected_gradients: passed to `tape.gradient`.

        Returns:
          `Gradients(model, inference)`, lists aligned with the variable lists.
        """
        model_variables = list(model_variables)
        inference_variables = list(inference_variables)
        grads = tape.gradient(
            self.loss,
            model_variables + inference_variables,
            unconnected_gradients=unconnected_gradients,
        )
        n = len(model_variables)
        return Gradients(model=grads[:n], inference=grads[n:])


class MCObjective(tf.Module, metaclass=abc.ABCMeta):
    """A Monte Carlo objective: a bound on log p(x) and its gradient estimators.

    Subclasses set `_gradient` and implement `_value` and `_coefficients`:

    * `_gradient = "total"`: the coefficients are `Coefficients.total(c)`; z keeps its
      gradient and the surrogate is sum_k c_k log w_k, differentiated in full (one
      backward pass, the cheapest).
    * `"split"`: log p and log q are evaluated at stop_gradient(z) and the path term
      is formed from d log w / dz (computed once, with an inner tape): the model
      and inference coefficients may differ (STL, DReG, PIWAE, JVI-DReG).
    * `"score"`: as "split" without a path term: q need not be reparameterized (RWS).

    Call an objective as `objective(q, log_joint, seed=seed)`, where q is the
    inference distribution with batch shape [B] and `log_joint(z)` maps samples
    [S, B, *event] to log p(x, z) of shape [S, B]. Samples are drawn with
    `mcobjectives.sampling.sample(q, S, seed)`, so a seed replays them exactly.

    `log_joint` must treat samples independently: log p(x_b, z_sb) may not depend on
    other samples (no batch statistics across samples, such as batch normalization in
    training mode), since path derivatives are taken of the sum over samples.
    """

    _gradient: ClassVar[str] = _TOTAL

    def __init__(self, num_samples: int, name: str | None = None):
        super().__init__(name=name)
        self._num_samples = num_samples

    @property
    def num_samples(self) -> int:
        """S, the number of samples drawn per data point."""
        return self._num_samples

    @abc.abstractmethod
    def _value(self, log_weights: tf.Tensor) -> tf.Tensor:
        """The reported value per data point, [B], from stopped log weights [S, B]."""

    @abc.abstractmethod
    def _coefficients(self, log_weights: tf.Tensor) -> Coefficients:
        """Per-sample coefficients [S, B] of the three gradient paths."""

    def __call__(self, q: tfd.Distribution, log_joint: LogJoint, seed) -> ObjectiveResult:
        """Evaluates the objective on one batch.

        Args:
          q: q(z|x), a TFP distribution with batch shape [B] and a float event of any
            shape. It must be fully reparameterized unless the objective is RWS.
          log_joint: z [S, B, *event] -> log p(x, z) [S, B], in q's dtype.
          seed: a stateless seed, an int or a shape-[2] integer tensor; or a [B, 2]
            integer tensor of per-example seeds, so that each data point's samples
            do not depend on the rest of the batch (see `mcobjectives.sampling`).
            Required.

        Returns:
          An `ObjectiveResult`.
        """
        _checks.check_distribution(
            q, objective=type(self).__name__, needs_reparameterization=self._gradient != _SCORE
        )
        _checks.check_log_joint(log_joint)
        _checks.check_seed(seed)
        event_rank = q.event_shape.rank
        if event_rank is None:
            raise ValueError(f"`q` ({q.name}) must have a statically known event rank.")

        z = sampling.sample(q, self.num_samples, seed)
        if self._gradient == _TOTAL:
            log_p = self._log_joint(log_joint, z, q)
            log_w = log_p - q.log_prob(z)
        else:
            fixed_z = tf.stop_gradient(z)
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(fixed_z)
                log_p = self._log_joint(log_joint, fixed_z, q)
                log_q = q.log_prob(fixed_z)
                log_w = log_p - log_q

        stopped = tf.stop_gradient(log_w)
        value = self._value(stopped)
        coefficients = Coefficients(
            *(None if c is None else tf.stop_gradient(c) for c in self._coefficients(stopped))
        )

        if self._gradient == _TOTAL:
            surrogate = tf.reduce_sum(coefficients.model * log_w, axis=0)
        else:
            surrogate = tf.reduce_sum(coefficients.model * log_p, axis=0)
            if coefficients.score is not None:
                surrogate += tf.reduce_sum(coefficients.score * log_q, axis=0)
            if coefficients.path is not None:
                dlogw_dz = inner.gradient(
                    log_w, fixed_z, unconnected_gradients=tf.UnconnectedGradients.ZERO
                )
                event_axes = list(range(2, 2 + event_rank))
                # Value 0; gradient: d log w / dz (q held fixed) * dz / dphi.
                path = tf.reduce_sum(tf.stop_gradient(dlogw_dz) * (z - fixed_z), axis=event_axes)
                surrogate += tf.reduce_sum(coefficients.path * path, axis=0)

        loss = -tf.reduce_mean(value + surrogate - tf.stop_gradient(surrogate))
        return ObjectiveResult(
            loss=loss,
            bound=tf.stop_gradient(value),
            log_weights=stopped,
            ess=weights.effective_sample_size(stopped),
        )

    def _log_joint(self, log_joint: LogJoint, z: tf.Tensor, q: tfd.Distribution) -> tf.Tensor:
        return _checks.check_log_joint_output(log_joint(z), q, self.num_samples)
