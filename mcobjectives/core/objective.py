"""The objective contract: `MCObjective`, what it returns, and the types it is written in.

An objective is a subclass of `MCObjective` that declares its `gradient_path` and
implements `_value` and `_coefficients` from the stopped log weights [S, B]; the base
class draws the samples and computes the log weights (`core.forward`) and turns the
coefficients into one value-preserving surrogate loss (`core.surrogate`). The guide
"Adding an objective" (docs/guides/adding-an-objective.md) walks through the contract on
VIMCO; "How the one surrogate works" (docs/guides/surrogate.md) explains the surrogate.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import weights
from mcobjectives.core import checks, gdreg, surrogate
from mcobjectives.core.forward import PathRatio, forward
from mcobjectives.core.surrogate import Coefficients, GradientPath

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


def result_of(value: tf.Tensor, total: tf.Tensor, stopped: tf.Tensor) -> ObjectiveResult:
    """The `ObjectiveResult` of per-data-point values [B], a surrogate [B] and the stopped
    log weights [K, B]: the loss carries the surrogate's gradient and the value's number.

    total - stop_gradient(total) is exactly 0 (the surrogate is finite), so the loss is
    exactly -mean(value), +inf where a value is -inf.
    """
    return ObjectiveResult(
        loss=-tf.reduce_mean(value + (total - tf.stop_gradient(total))),
        bound=tf.stop_gradient(value),
        log_weights=stopped,
        ess=weights.effective_sample_size(stopped),
    )


class MCObjective(tf.Module, metaclass=abc.ABCMeta):
    """A Monte Carlo objective: a bound on log p(x) and its gradient estimators.

    Subclasses declare `gradient_path` and implement `_value` and `_coefficients`;
    see the guide "Adding an objective".

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
      min_num_samples: the smallest valid `num_samples` (1; 2 for leave-one-out
        objectives).
    """

    min_num_samples: ClassVar[int] = 1
    # "gdreg" on the objectives that offer it (IWAE, DReG): see core/gdreg.py.
    prior_gradient: str = "standard"

    def __init__(self, num_samples: int, name: str | None = None, validate_args: bool = False):
        super().__init__(name=name)
        self._num_samples = checks.check_count(
            "num_samples", num_samples, minimum=self.min_num_samples, maximum=checks.MAX_DIMENSION
        )
        if not isinstance(validate_args, bool):
            raise TypeError(f"`validate_args` must be a bool, got {validate_args!r}.")
        self._given_name = name
        self._validate_args = validate_args

    @property
    def gradient_path(self) -> GradientPath | None:
        """How this objective's gradient reaches q's parameters, read per objective.

        Every objective has one `GradientPath`. A subclass whose every instance takes the
        same path declares it as a class attribute (`gradient_path = GradientPath.TOTAL`,
        which takes the place of this property); one whose path depends on a constructor
        argument overrides this read-only property (JVI and VRIWAE: `SPLIT` with
        `dreg=True`, else `TOTAL`). Always read it from the objective, not the class.
        None here: a subclass that declares neither raises at its first call.
        """
        return None

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
                f"{type(self).__name__} must declare how its gradient reaches q: set "
                "`gradient_path` (a class attribute, or a property where it depends on the "
                "constructor's arguments) to mcobjectives.GradientPath.TOTAL, SPLIT "
                f"or SCORE (got {path!r}). See the guide 'Adding an objective'."
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
        checks.check_distribution(
            q, objective=name, needs_reparameterization=path is not GradientPath.SCORE
        )
        checks.check_log_joint(log_joint)
        checks.check_seed(seed)
        log_joint = checks.bind_log_joint(log_joint, q)
        use_gdreg = self.prior_gradient == "gdreg"
        if use_gdreg:
            gdreg.check_log_joint(log_joint, name)

        path_ratio = PathRatio() if path is GradientPath.SPLIT else None
        draw = forward(
            q,
            log_joint,
            self.num_samples,
            seed,
            caller=name,
            validate_args=self._validate_args,
            total=path is GradientPath.TOTAL,
            path_ratio=path_ratio,
            check_batch=True,
        )
        stopped = draw.stopped
        value = surrogate.checked_value(self._value(stopped), stopped, name)
        coefficients = surrogate.checked_coefficients(
            self._coefficients(stopped), path, stopped, name
        )
        # A data point whose value is infinite (every weight zero, or one zero weight for
        # the objectives averaging log w: the loss is then +inf) sends no gradient: 0, not
        # the coefficients' 0/0.
        coefficients = surrogate.without_infinite_values(coefficients, value)
        total = surrogate.assemble(coefficients, path, draw, path_ratio)
        if use_gdreg:
            total += gdreg.correction(q, log_joint, draw.z, coefficients.model, stopped)
        return result_of(value, total, stopped)
