"""The one value-preserving surrogate: what an objective's coefficients become.

An objective supplies, from the stopped log weights [S, B], its value per data point [B]
and a stop-gradient coefficient per sample for each of three quantities (a
`Coefficients`):

* `log p(x, z_k)` with z_k held fixed: the gradient w.r.t. the model parameters;
* the path derivative of log w_k, d log w_k / d z_k * d z_k / d phi with q's parameters
  held fixed inside log q (the "doubly reparameterized" direction);
* `log q(z_k | x)` with z_k held fixed: the score-function term w.r.t. q's parameters.

The surrogate

    S = sum_k model_k log p(x, z_k) + path_k (path term)_k + score_k log q(z_k | x)

is a single function of both networks whose gradient w.r.t. the model parameters is the
model estimator and w.r.t. the inference parameters the inference estimator; a parameter
shared by p and q receives the sum of both terms, the unified surrogate of Tucker et al.
(2019), appendix 8.3 (eqs. 11-16). The loss keeps the value of the bound:
`loss = -mean_b(value + S - stop_gradient(S))`. `GradientPath` says which of the three
terms an objective uses and so how `assemble` builds S; the guide "How the one surrogate
works" (docs/guides/surrogate.md) and "Adding an objective" explain both.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import tensorflow as tf

from mcobjectives.core.forward import Forward, PathRatio

__all__ = [
    "SMALLEST_CARRIER",
    "Coefficients",
    "GradientPath",
    "TotalCoefficients",
    "assemble",
    "carrier_and_ratio",
    "checked_coefficients",
    "checked_value",
    "weighted_sum",
    "without_infinite_values",
]


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
        return TotalCoefficients(coefficient, coefficient, -coefficient)


class TotalCoefficients(Coefficients):
    """Coefficients made by `Coefficients.total`: what a TOTAL objective must return."""

    __slots__ = ()

    def _replace(self, **changes) -> Coefficients:
        # An edited copy is no longer the total of one coefficient.
        return Coefficients(*self)._replace(**changes)


# ------------------------------------------------------------ checks of what objectives return
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


def checked_value(value, log_weights: tf.Tensor, name: str) -> tf.Tensor:
    """What objective `name`'s `_value` returned, checked: [B], in log w's dtype."""
    value = tf.convert_to_tensor(value, dtype_hint=log_weights.dtype)
    expected = log_weights.shape[1:]
    if value.dtype != log_weights.dtype or not _same_known_dims(value.shape, expected):
        raise ValueError(
            f"{name}._value returned {value.dtype.name} {value.shape}; expected "
            f"{log_weights.dtype.name} {expected}, one value per data point (reduce over "
            "the sample axis 0 only)."
        )
    return _ensure_same_shape(value, log_weights[0], f"{name}._value's result")


def checked_coefficients(
    coefficients, path: GradientPath, log_weights: tf.Tensor, name: str
) -> Coefficients:
    """What objective `name`'s `_coefficients` returned, checked against `path`; stopped."""
    if not isinstance(coefficients, Coefficients):
        raise TypeError(
            f"{name}._coefficients must return mcobjectives.Coefficients, got "
            f"{type(coefficients).__name__}."
        )
    if coefficients.model is None:
        raise ValueError(f"{name}._coefficients returned no model coefficient.")
    if path is GradientPath.TOTAL and not (
        isinstance(coefficients, TotalCoefficients) and coefficients.path is coefficients.model
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


# ------------------------------------------------------------------------ the surrogate
def weighted_sum(coefficient: tf.Tensor, log_density: tf.Tensor) -> tf.Tensor:
    """sum_k coefficient_k * log_density_k, [B], a term of coefficient 0 being 0."""
    return tf.reduce_sum(tf.math.multiply_no_nan(log_density, coefficient), axis=0)


def without_infinite_values(coefficients: Coefficients, value: tf.Tensor) -> Coefficients:
    """The coefficients, 0 for every sample of a data point whose value is +-inf."""
    infinite = tf.math.is_inf(value)
    return Coefficients(
        *(None if c is None else tf.where(infinite, tf.zeros_like(c), c) for c in coefficients)
    )


# The smallest magnitude with which a sample's log p enters the surrogate while it
# carries a path coefficient: 2^-60 keeps model_k * (d log p / dz_k), and every partial
# product of the backward pass through the model, far above float32's subnormal range
# (and CPU kernels that flush subnormals to zero).
SMALLEST_CARRIER = 2.0**-60


def carrier_and_ratio(model: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(the coefficient of log p in the surrogate, the factor on z's gradient), [S, B].

    The carrier is the model coefficient, raised to +-2^-60 where it is smaller and the
    path coefficient is not 0 (PIWAE's samples in a group far below the best, or a model
    coefficient of exactly 0): the model gradient then gains at most 2^-60 |d log p_k /
    d theta| per such sample, below float resolution, while z_k's gradient is
    carrier_k * ratio_k * d log p_k / dz_k = path_k d log p_k / dz_k exactly (the ratio
    there is path_k * 2^60, an exact scaling).
    """
    floor = tf.where(model < 0, -SMALLEST_CARRIER, SMALLEST_CARRIER)
    raised = (tf.abs(model) < SMALLEST_CARRIER) & (path != 0)
    carrier = tf.where(raised, tf.cast(floor, model.dtype), model)
    nonzero = carrier != 0
    ratio = tf.where(nonzero, path / tf.where(nonzero, carrier, tf.ones_like(carrier)), 0.0)
    return carrier, ratio


def assemble(
    coefficients: Coefficients,
    path: GradientPath,
    draw: Forward,
    path_ratio: PathRatio | None,
) -> tf.Tensor:
    """The surrogate S [B] of checked coefficients for the forward pass `draw`.

    For a SPLIT objective this also sets `path_ratio.value`, the factor by which z's
    gradient through log p is scaled, before any gradient is taken.
    """
    # Every product below is of a coefficient and a log density that may be -inf (a
    # zero weight, whose coefficient is then 0): multiply_no_nan gives 0 * -inf = 0,
    # and its gradient, coefficient * upstream, is unchanged.
    if path is GradientPath.TOTAL:
        return weighted_sum(coefficients.model, draw.log_weights)
    carrier = coefficients.model
    if coefficients.path is not None:
        carrier, path_ratio.value = carrier_and_ratio(coefficients.model, coefficients.path)
    elif path_ratio is not None:  # SPLIT: z's gradient from log p is not used
        path_ratio.value = tf.zeros_like(draw.stopped)
    surrogate = weighted_sum(carrier, draw.log_p)
    if coefficients.score is not None:
        surrogate += weighted_sum(coefficients.score, draw.log_q)
    if coefficients.path is not None:
        live = [leaf for leaf in tf.nest.flatten(draw.z) if leaf.dtype.is_floating]
        dlogq_dz = draw.tape.gradient(
            draw.log_q, draw.fixed, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        # Value 0; gradient -path_k d log q(z_k; phi fixed) / dz_k * dz_k / dphi.
        term = 0.0
        for grad, leaf, fixed in zip(dlogq_dz, live, draw.fixed, strict=True):
            event_axes = list(range(2, leaf.shape.rank))
            term += tf.reduce_sum(tf.stop_gradient(grad) * (leaf - fixed), axis=event_axes)
        surrogate -= tf.reduce_sum(coefficients.path * term, axis=0)
    return surrogate
