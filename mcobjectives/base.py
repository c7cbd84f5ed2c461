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

Structured latents. q may be any TFP distribution with batch shape [B], including a
`JointDistribution` (Sequential, Named, Coroutine, and their AutoBatched forms with
`batch_ndims=1`). z then has q's own structure (a list, a dict, ...), each leaf
[S, B, *event_i], and `log_joint` takes that structure. The path term sums over
every leaf. For a hierarchical q(z1|x) q(z2|z1), the path derivative holds q's
*parameters* fixed, not the per-layer means and scales: z1 stays live inside
q(z2|z1), so d log w / d z1 includes d log q(z2|z1) / d z1. That is what makes DReG
unbiased: Tucker et al. (2019)'s identity E_q[f(z) d log q(z; phi)/d phi] =
E_eps[d f/d z * d z/d phi] holds for the joint reparameterization z = T(eps; phi) of
all layers at once, with log q the joint density evaluated at fixed phi (see also
Bauer & Mnih, 2021, on the hierarchical case). Stopping the means and scales of
q(z2|z1) instead would drop part of the score term and bias the estimator.

Adding an objective
-------------------
An objective is a subclass with three parts; nothing else in the library changes
except one export line in `mcobjectives/__init__.py` and one line in
`mcobjectives.registry.OBJECTIVES`. Worked on VIMCO (Mnih & Rezende, 2016), whose
inference gradient is a score-function estimator with a leave-one-out baseline:

1. Declare how its gradient reaches q's parameters, as a class attribute
   `gradient_path` (a `GradientPath`); forgetting it raises at the first call.

   * `GradientPath.TOTAL`: `_coefficients` returns `Coefficients.total(c)`; the
     surrogate is sum_k c_k log w_k differentiated in full (z keeps its gradient).
     One backward pass: the cheapest, for objectives whose model and inference
     gradients are the total derivative of one expression (IWAE, MIWAE, CIWAE).
   * `GradientPath.SPLIT`: model, path and score coefficients may all differ (STL,
     DReG, PIWAE, JVI-DReG), in one backward pass through the model as well: log p
     is evaluated at z whose gradient is rescaled by path_k / model_k per sample, so
     the caller's tape gives model_k d log p / d theta and path_k d log p / dz_k
     together; log q, cheap, is evaluated at stop_gradient(z) and differentiated
     w.r.t. z on an inner tape. A model coefficient below 2^-60 in magnitude whose
     path coefficient is not 0 is raised to +-2^-60 to carry it (see
     `_carrier_and_ratio`): the model gradient moves by less than float resolution.
   * `GradientPath.SCORE`: as SPLIT without a path term, so q need not be
     reparameterized and may have discrete leaves (RWS, VIMCO). Returning a path
     coefficient raises.

   VIMCO: `gradient_path = GradientPath.SCORE`, `min_num_samples = 2`.

2. Store every constructor argument as an attribute of the same name (or a property)
   and call `super().__init__(num_samples, name=name)`; the base class validates
   `num_samples` (an int >= `min_num_samples`) and derives `repr(objective)` and
   `get_config()` (the keyword arguments that rebuild it) from the signature.

       def __init__(self, num_samples: int, name: str | None = None):
           super().__init__(num_samples, name=name)

3. Implement `_value(log_weights)` -> [B] and `_coefficients(log_weights)` ->
   `Coefficients` of [S, B] tensors, both from the stopped log weights [S, B]. The
   coefficients are read off the estimator's formula: the surrogate's gradient is
   sum_k model_k d log p(x, z_k) + path_k (path derivative)_k + score_k d log q(z_k).
   VIMCO's value is L_K; its model gradient is IWAE's (model_k = w~_k); its
   inference gradient sum_k [(L_K - L_K^(-k)) - w~_k] d log q(z_k|x) is a score term
   only, so score_k = (L_K - L_K^(-k)) - w~_k and path = None:

       from mcobjectives.weights import (
           leave_one_out_logsumexp, log_mean_exp, normalized_weights)

       def _value(self, log_weights):
           return log_mean_exp(log_weights)

       def _coefficients(self, log_weights):
           k = self.num_samples
           normalized = normalized_weights(log_weights)
           # log of the geometric mean of the other weights, [K, B]
           others = tf.reduce_sum(log_weights, axis=0) - log_weights
           replaced = tf.reduce_logsumexp(
               tf.stack([leave_one_out_logsumexp(log_weights), others / (k - 1)]),
               axis=0)                                  # log(sum_{j!=k} w_j + w^_-k)
           learning_signal = (tf.reduce_logsumexp(log_weights, axis=0) - replaced)
           return Coefficients(model=normalized, path=None,
                               score=learning_signal - normalized)

   (`mcobjectives/vimco.py` computes the same with float32-safe shifts.) Every
   coefficient must have the log weights' shape [S, B] and dtype; `_value` returns
   [B]. Both are checked at the first call.

Test it as `tests/test_exact_gradients.py` does: replay the noise with
`mcobjectives.sampling.sample(q, S, seed)` and compare loss and gradients with a
derivation by hand in `tests/reference.py`.
"""

from __future__ import annotations

import abc
import enum
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _checks, _validation, sampling, weights

tfd = tfp.distributions

__all__ = [
    "Coefficients",
    "GradientPath",
    "Gradients",
    "LogJoint",
    "MCObjective",
    "ObjectiveResult",
]

LogJoint = Callable[[Any], tf.Tensor]
"""A callable taking z (leaves [S, B, *event], q's structure) and returning log p(x, z), [S, B]."""


class GradientPath(enum.Enum):
    """How an objective's gradient reaches q's parameters (see "Adding an objective").

    TOTAL: the surrogate is sum_k c_k log w_k differentiated in full; the objective's
      coefficients must be `Coefficients.total(c)`.
    SPLIT: separate model, path and score coefficients; the path term needs a
      reparameterized q.
    SCORE: model and score coefficients only; q need not be reparameterized.
    """

    TOTAL = "total"
    SPLIT = "split"
    SCORE = "score"


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
        return _TotalCoefficients(coefficient, coefficient, -coefficient)


class _TotalCoefficients(Coefficients):
    """Coefficients made by `Coefficients.total`: what a TOTAL objective must return."""

    __slots__ = ()

    def _replace(self, **changes) -> Coefficients:
        # An edited copy is no longer the total of one coefficient.
        return Coefficients(*self)._replace(**changes)


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
      bound: [B], the objective's value per data point (for PIWAE, RWS, STL, DReG and
        VIMCO: the IWAE bound of all samples; for JVI: the jackknife estimate).
      log_weights: [S, B], log w = log p(x, z) - log q(z|x) for every sample, laid out
        [num_outer * num_inner] (outer-major) for MIWAE and PIWAE. -inf is a zero
        weight (log p = -inf); a +inf is reported as NaN (see "Zero weights" below).
      ess: [B], the effective sample size (sum w)^2 / sum w^2 of all S weights (0 where
        every weight is zero).

    Zero weights. A sample with log p(x, z) = -inf contributes nothing: the loss, bound
    and gradients are their limits as its weight tends to 0. Where `bound` is -inf (every
    weight zero; one zero weight for VAE and CIWAE with beta > 0, a group of zeros for
    MIWAE) the loss is +inf and that data point sends no gradient. NaN or +inf from q or
    `log_joint` make the log weight, the bound and the loss NaN, unless the objective
    was built with `validate_args=True`, which raises naming the piece.
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

    Subclasses declare `gradient_path` and implement `_value` and `_coefficients`;
    see "Adding an objective" in this module's docstring.

    Call an objective as `objective(q, log_joint, seed=seed)`, where q is the
    inference distribution with batch shape [B] (a single distribution or a TFP
    `JointDistribution`) and `log_joint(z)` maps samples (leaves [S, B, *event]) to
    log p(x, z) of shape [S, B]. Samples are drawn with
    `mcobjectives.sampling.sample(q, S, seed)`, so a seed replays them exactly.

    `log_joint` must treat samples independently: log p(x_b, z_sb) may not depend on
    other samples (no batch statistics across samples, such as batch normalization in
    training mode), since path derivatives are taken of the sum over samples.

    Every objective also takes `validate_args` (default False): check each call's
    samples, log q and log p(x, z) for NaN and +inf, raising a
    `tf.errors.InvalidArgumentError` that names the piece and the data points.

    Attributes:
      gradient_path: a `GradientPath`, declared by every subclass.
      min_num_samples: the smallest valid `num_samples` (1; 2 for leave-one-out
        objectives).
    """

    gradient_path: ClassVar[GradientPath | None] = None
    min_num_samples: ClassVar[int] = 1

    def __init__(self, num_samples: int, name: str | None = None, validate_args: bool = False):
        super().__init__(name=name)
        self._num_samples = _checks.check_count(
            "num_samples", num_samples, minimum=self.min_num_samples, maximum=_checks.MAX_DIMENSION
        )
        if not isinstance(validate_args, bool):
            raise TypeError(f"`validate_args` must be a bool, got {validate_args!r}.")
        self._given_name = name
        self._validate_args = validate_args

    @property
    def validate_args(self) -> bool:
        """Whether each call checks q's samples and log p(x, z) for NaN and +inf."""
        return self._validate_args

    @property
    def num_samples(self) -> int:
        """S, the number of samples drawn per data point."""
        return self._num_samples

    # ------------------------------------------------------------ configuration
    def get_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this objective: `type(o)(**o.get_config())`.

        Read from the constructor's signature: every argument must be stored as an
        attribute (or property) of the same name, or the subclass overrides this.
        """
        config = {}
        for arg, parameter in inspect.signature(type(self).__init__).parameters.items():
            if arg in ("self", "name", "validate_args") or parameter.kind in (
                parameter.VAR_POSITIONAL,
                parameter.VAR_KEYWORD,
            ):
                continue
            if not hasattr(self, arg):
                raise NotImplementedError(
                    f"{type(self).__name__} does not store its constructor argument `{arg}` "
                    f"as an attribute: set self.{arg} in __init__ or override get_config."
                )
            config[arg] = getattr(self, arg)
        return self._with_common_config(config)

    def _with_common_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """`config` with the base class's arguments where they differ from their defaults."""
        if self._given_name is not None:
            config["name"] = self._given_name
        if self._validate_args:
            config["validate_args"] = True
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MCObjective:
        """The objective `get_config` describes."""
        return cls(**config)

    def __repr__(self) -> str:
        try:
            config = self.get_config()
        except NotImplementedError:  # an argument kept under another name: say what is known
            config = {"num_samples": self.num_samples}
        arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({arguments})"

    # -------------------------------------------------------------- subclasses
    @abc.abstractmethod
    def _value(self, log_weights: tf.Tensor) -> tf.Tensor:
        """The reported value per data point, [B], from stopped log weights [S, B]."""

    @abc.abstractmethod
    def _coefficients(self, log_weights: tf.Tensor) -> Coefficients:
        """Per-sample coefficients [S, B] of the three gradient paths."""

    def _declared_path(self) -> GradientPath:
        path = self.gradient_path
        if not isinstance(path, GradientPath):
            raise TypeError(
                f"{type(self).__name__} must declare how its gradient reaches q: set the "
                "class attribute `gradient_path` to mcobjectives.GradientPath.TOTAL, SPLIT "
                f"or SCORE (got {path!r}). See 'Adding an objective' in mcobjectives.base."
            )
        return path

    # -------------------------------------------------------------------- call
    def __call__(self, q: tfd.Distribution, log_joint: LogJoint, seed) -> ObjectiveResult:
        """Evaluates the objective on one batch.

        Args:
          q: q(z|x), a TFP distribution with batch shape [B]: a single distribution or
            a `JointDistribution` whose every part has batch shape [B]. Its leaves must
            be fully reparameterized unless the objective's `gradient_path` is SCORE
            (RWS, VIMCO), which also takes discrete leaves in any dtype.
          log_joint: z (q's structure, leaves [S, B, *event_i]) -> log p(x, z) [S, B],
            in the dtype of log q.
          seed: a stateless seed, an int or a shape-[2] integer tensor; or a [B, 2]
            integer tensor of per-example seeds, so that each data point's samples
            do not depend on the rest of the batch (see `mcobjectives.sampling`;
            `sampling.stateless_seed` says which seeds are accepted). Required.

        Raises:
          tf.errors.InvalidArgumentError: with `validate_args=True`, where q's samples
            or log q are NaN or infinite, or log p(x, z) is NaN or +inf, naming the piece
            and the data points (eagerly and in a `tf.function`; XLA drops assertions).
          TypeError, ValueError: for a bad argument, naming it, before anything is
            traced (before `log_joint` is called) where the check needs no output;
            an empty batch and per-example seeds whose number differs from the batch
            size are checked by run-time assertions where the batch size is dynamic
            (`tf.errors.InvalidArgumentError`; XLA drops these assertions).

        Returns:
          An `ObjectiveResult`.
        """
        path = self._declared_path()
        name = type(self).__name__
        _checks.check_distribution(
            q, objective=name, needs_reparameterization=path is not GradientPath.SCORE
        )
        _checks.check_log_joint(log_joint)
        _checks.check_seed(seed)
        log_joint = _checks.bind_log_joint(log_joint, q)

        z = sampling.sample(q, self.num_samples, seed)
        # A batch of dynamic size 0 (a static 0 was refused above) would give a NaN loss.
        z = _checks.with_assertion(_checks.batch_size_assertion(q, name, z), z)
        if path is GradientPath.TOTAL:
            log_q = _checks.log_prob(q, z)
            log_p = self._log_joint(log_joint, z, log_q)
            log_w = log_p - log_q
        else:
            fixed_z = tf.nest.map_structure(tf.stop_gradient, z)
            continuous = [leaf for leaf in tf.nest.flatten(fixed_z) if leaf.dtype.is_floating]
            # Only log q is differentiated w.r.t. z on an inner tape: q's density is cheap.
            # log p, the model's cost, is differentiated once, by the caller's tape.
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(continuous)
                log_q = _checks.log_prob(q, fixed_z)
            path_ratio = _Deferred()
            if path is GradientPath.SPLIT:
                model_z = tf.nest.map_structure(lambda leaf: _scale_gradient(leaf, path_ratio), z)
            else:
                model_z = fixed_z
            log_p = self._log_joint(log_joint, model_z, log_q)
            log_w = log_p - log_q

        if self._validate_args:
            log_w = _checks.with_assertion(
                _validation.finite_log_weights_assertion(z, log_q, log_p, name), log_w
            )
        # +inf (log p = +inf, or log q = -inf at q's own sample) has no meaning as a
        # weight: it is reported, and propagates, as NaN.
        stopped = _validation.nan_for_positive_infinity(tf.stop_gradient(log_w))
        value = self._checked_value(self._value(stopped), stopped)
        coefficients = self._checked_coefficients(self._coefficients(stopped), path, stopped)
        # A data point whose value is infinite (every weight zero, or one zero weight for
        # the objectives averaging log w: the loss is then +inf) sends no gradient: 0, not
        # the coefficients' 0/0.
        coefficients = _without_infinite_values(coefficients, value)

        # Every product below is of a coefficient and a log density that may be -inf (a
        # zero weight, whose coefficient is then 0): multiply_no_nan gives 0 * -inf = 0,
        # and its gradient, coefficient * upstream, is unchanged.
        if path is GradientPath.TOTAL:
            surrogate = _weighted_sum(coefficients.model, log_w)
        else:
            carrier = coefficients.model
            if coefficients.path is not None:
                carrier, path_ratio.value = _carrier_and_ratio(
                    coefficients.model, coefficients.path
                )
            elif path is GradientPath.SPLIT:  # z's gradient from log p is not used
                path_ratio.value = tf.zeros_like(stopped)
            surrogate = _weighted_sum(carrier, log_p)
            if coefficients.score is not None:
                surrogate += _weighted_sum(coefficients.score, log_q)
            if coefficients.path is not None:
                live = [leaf for leaf in tf.nest.flatten(z) if leaf.dtype.is_floating]
                dlogq_dz = inner.gradient(
                    log_q, continuous, unconnected_gradients=tf.UnconnectedGradients.ZERO
                )
                # Value 0; gradient -path_k d log q(z_k; phi fixed) / dz_k * dz_k / dphi.
                term = 0.0
                for grad, leaf, fixed in zip(dlogq_dz, live, continuous, strict=True):
                    event_axes = list(range(2, leaf.shape.rank))
                    term += tf.reduce_sum(tf.stop_gradient(grad) * (leaf - fixed), axis=event_axes)
                surrogate -= tf.reduce_sum(coefficients.path * term, axis=0)

        # surrogate - stop_gradient(surrogate) is exactly 0 (the surrogate is finite), so
        # the loss is exactly -mean(value), +inf where a value is -inf.
        loss = -tf.reduce_mean(value + (surrogate - tf.stop_gradient(surrogate)))
        return ObjectiveResult(
            loss=loss,
            bound=tf.stop_gradient(value),
            log_weights=stopped,
            ess=weights.effective_sample_size(stopped),
        )

    def _log_joint(self, log_joint: LogJoint, z, log_q: tf.Tensor) -> tf.Tensor:
        log_p = _checks.call_log_joint(log_joint, z, log_q)
        return _checks.check_log_joint_output(log_p, log_q, self.num_samples)

    def _checked_value(self, value, log_weights: tf.Tensor) -> tf.Tensor:
        """Checks what `_value` returned: one value per data point, [B], in log w's dtype."""
        name = type(self).__name__
        value = tf.convert_to_tensor(value, dtype_hint=log_weights.dtype)
        expected = log_weights.shape[1:]
        if value.dtype != log_weights.dtype or not _same_known_dims(value.shape, expected):
            raise ValueError(
                f"{name}._value returned {value.dtype.name} {value.shape}; expected "
                f"{log_weights.dtype.name} {expected}, one value per data point (reduce over "
                "the sample axis 0 only)."
            )
        return _ensure_same_shape(value, log_weights[0], f"{name}._value's result")

    def _checked_coefficients(
        self, coefficients, path: GradientPath, log_weights: tf.Tensor
    ) -> Coefficients:
        """Checks what `_coefficients` returned against `gradient_path`; stops its gradient."""
        name = type(self).__name__
        if not isinstance(coefficients, Coefficients):
            raise TypeError(
                f"{name}._coefficients must return mcobjectives.Coefficients, got "
                f"{type(coefficients).__name__}."
            )
        if coefficients.model is None:
            raise ValueError(f"{name}._coefficients returned no model coefficient.")
        if path is GradientPath.TOTAL and not (
            isinstance(coefficients, _TotalCoefficients) and coefficients.path is coefficients.model
        ):
            raise ValueError(
                f"{name} declares gradient_path = GradientPath.TOTAL but its coefficients "
                "are not Coefficients.total(c): a TOTAL surrogate differentiates "
                "sum_k c_k log w_k in full and cannot give the model, path and score "
                "terms different weights. Return Coefficients.total(c), or declare "
                "GradientPath.SPLIT (or SCORE)."
            )
        if path is GradientPath.SCORE and coefficients.path is not None:
            raise ValueError(
                f"{name} declares gradient_path = GradientPath.SCORE but returned a path "
                "coefficient: the SCORE path never differentiates through z. Return "
                "path=None, or declare GradientPath.SPLIT (which needs a reparameterized q)."
            )
        expected = log_weights.shape
        checked = []
        for field, c in zip(Coefficients._fields, coefficients, strict=True):
            if c is not None:
                c = tf.convert_to_tensor(c, dtype_hint=log_weights.dtype)
                if c.dtype != log_weights.dtype or not _same_known_dims(c.shape, expected):
                    raise ValueError(
                        f"{name}._coefficients returned a `{field}` coefficient of "
                        f"{c.dtype.name} {c.shape}; expected {log_weights.dtype.name} "
                        f"{expected}, one per sample and data point (broadcast a shared "
                        "coefficient to the log weights' shape yourself)."
                    )
                c = tf.stop_gradient(
                    _ensure_same_shape(c, log_weights, f"{name}._coefficients' `{field}`")
                )
            checked.append(c)
        return Coefficients(*checked)


def _weighted_sum(coefficient: tf.Tensor, log_density: tf.Tensor) -> tf.Tensor:
    """sum_k coefficient_k * log_density_k, [B], a term of coefficient 0 being 0."""
    return tf.reduce_sum(tf.math.multiply_no_nan(log_density, coefficient), axis=0)


def _without_infinite_values(coefficients: Coefficients, value: tf.Tensor) -> Coefficients:
    """The coefficients, 0 for every sample of a data point whose value is +-inf."""
    infinite = tf.math.is_inf(value)
    return Coefficients(
        *(None if c is None else tf.where(infinite, tf.zeros_like(c), c) for c in coefficients)
    )


def _same_known_dims(shape: tf.TensorShape, expected: tf.TensorShape) -> bool:
    """Whether `shape` has `expected`'s rank and sizes, where `expected` knows them.

    A dimension `expected` does not know (a batch of dynamic size) must be unknown in
    `shape` too: a coefficient of static size 1 there would broadcast silently.
    """
    if shape.rank != expected.rank:
        return False
    return all(
        (e is None and d is None) or (e is not None and d in (None, e))
        for d, e in zip(shape.as_list(), expected.as_list(), strict=True)
    )


def _ensure_same_shape(tensor: tf.Tensor, like: tf.Tensor, what: str) -> tf.Tensor:
    """`tensor`, checked to have `like`'s shape also where that is known only at run time.

    A slice such as `c[:, :1]` of a dynamic batch has an unknown static size, so it
    passes the static check and would broadcast silently; the run-time check stops it.
    """
    tensor = tf.ensure_shape(tensor, like.shape)
    if like.shape.is_fully_defined():
        return tensor
    check = tf.debugging.assert_equal(
        tf.shape(tensor),
        tf.shape(like),
        message=f"{what} does not have the shape of the log weights ([S, B], or [B] per "
        "data point)",
    )
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


# The smallest magnitude with which a sample's log p enters the surrogate while it
# carries a path coefficient: 2^-60 keeps model_k * (d log p / dz_k), and every partial
# product of the backward pass through the model, far above float32's subnormal range
# (and CPU kernels that flush subnormals to zero).
_SMALLEST_CARRIER = 2.0**-60


class _Deferred:
    """A value set after the forward pass, read by a gradient function."""

    value: tf.Tensor | None = None


def _scale_gradient(leaf: tf.Tensor, ratio: _Deferred) -> tf.Tensor:
    """`leaf`, whose gradient is multiplied by `ratio.value` [S, B] per sample.

    The ratio (path over model coefficient) is known only once log p has been
    evaluated at this leaf; it is read when the gradient is taken.
    """

    @tf.custom_gradient
    def identity(x):
        def gradient(upstream):
            scale = tf.cast(ratio.value, upstream.dtype)
            trailing = tf.ones([x.shape.rank - 2], tf.int32)
            scale = tf.reshape(scale, tf.concat([tf.shape(scale), trailing], 0))
            # A sample of ratio 0 (a zero weight) sends z no gradient, also where the
            # model's own backward pass at log p = -inf gave inf * 0 = NaN upstream.
            return tf.math.multiply_no_nan(upstream, scale)

        return tf.identity(x), gradient

    return identity(leaf)


def _carrier_and_ratio(model: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(the coefficient of log p in the surrogate, the factor on z's gradient), [S, B].

    The carrier is the model coefficient, raised to +-2^-60 where it is smaller and the
    path coefficient is not 0 (PIWAE's samples in a group far below the best, or a model
    coefficient of exactly 0): the model gradient then gains at most 2^-60 |d log p_k /
    d theta| per such sample, below float resolution, while z_k's gradient is
    carrier_k * ratio_k * d log p_k / dz_k = path_k d log p_k / dz_k exactly (the ratio
    there is path_k * 2^60, an exact scaling).
    """
    floor = tf.where(model < 0, -_SMALLEST_CARRIER, _SMALLEST_CARRIER)
    raised = (tf.abs(model) < _SMALLEST_CARRIER) & (path != 0)
    carrier = tf.where(raised, tf.cast(floor, model.dtype), model)
    nonzero = carrier != 0
    ratio = tf.where(nonzero, path / tf.where(nonzero, carrier, tf.ones_like(carrier)), 0.0)
    return carrier, ratio
