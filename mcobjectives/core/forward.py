"""The one forward pass: draw z ~ q, log q(z|x), log p(x, z), the log weights, the checks.

Every objective (`MCObjective.__call__`) and the estimate of log p(x)
(`mcobjectives.log_marginal_estimate`, chunk by chunk) compute their log weights here, so
that both see the same samples, the same checks of what `log_joint` returns and the same
treatment of NaN and +inf. The two differ only in how z's gradient is to reach q's
parameters, which the caller chooses:

* `total=True`: log q and log p are evaluated at the live samples z, so that
  `log w = log p - log q` differentiates in full (TOTAL objectives; the estimate of
  log p(x), which is never differentiated, takes this cheapest form).
* `total=False`: log q is evaluated at `stop_gradient(z)` on an inner tape (`Forward.tape`,
  watching the continuous leaves `Forward.fixed`) so that its gradient w.r.t. z can be
  taken on its own; log p is evaluated at z whose gradient is multiplied per sample by
  `path_ratio.value` (set once the coefficients are known), or at `stop_gradient(z)`
  where no `path_ratio` is given (SCORE objectives).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from mcobjectives import sampling
from mcobjectives.core import checks, validation

__all__ = ["Forward", "PathRatio", "forward", "scale_gradient"]


class PathRatio:
    """The per-sample factor [S, B] on z's gradient through log p, set after the forward pass.

    The factor (path over model coefficient) is known only once the objective's
    coefficients have been computed from the log weights, after log p was evaluated; the
    gradient function of `scale_gradient` reads it when the gradient is taken.
    """

    value: tf.Tensor | None = None


def scale_gradient(leaf: tf.Tensor, ratio: PathRatio) -> tf.Tensor:
    """`leaf`, whose gradient is multiplied by `ratio.value` [S, B] per sample."""

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


class Forward(NamedTuple):
    """What one forward pass computed.

    Attributes:
      z: the samples, q's structure, leaves [S, B, *event], with their gradient.
      log_q: log q(z|x), [S, B].
      log_p: log p(x, z), [S, B].
      log_weights: log w = log p - log q, [S, B], carrying its gradient (and, with
        `validate_args`, the run-time checks of the samples, log q and log p).
      stopped: log w without gradient, +inf reported as NaN: what an objective's value
        and coefficients, and the estimate of log p(x), are computed from.
      tape: with `total=False`, the inner tape on which log q was computed; else None.
      fixed: with `total=False`, the continuous leaves of `stop_gradient(z)` the inner
        tape watched (log q's gradient w.r.t. them is the path term's); else None.
    """

    z: Any
    log_q: tf.Tensor
    log_p: tf.Tensor
    log_weights: tf.Tensor
    stopped: tf.Tensor
    tape: tf.GradientTape | None
    fixed: list | None


def forward(
    q,
    log_joint,
    num_samples: int,
    seed,
    *,
    caller: str,
    validate_args: bool = False,
    total: bool = True,
    path_ratio: PathRatio | None = None,
    check_batch: bool = False,
) -> Forward:
    """Draws `num_samples` samples of q and computes their log weights.

    Args:
      q: q(z|x), checked by the caller (`checks.check_distribution`).
      log_joint: z -> log p(x, z), checked and bound to q by the caller.
      num_samples: S.
      seed: a stateless seed (or per-example seeds), as `sampling.sample` takes it.
      caller: the objective's (or function's) name, for the messages.
      validate_args: check the samples, log q and log p for NaN and +inf at run time.
      total: evaluate log q and log p at the live samples (see the module docstring).
      path_ratio: with `total=False`, the factor on z's gradient through log p; None
        evaluates log p at `stop_gradient(z)`.
      check_batch: assert at run time that a batch of dynamic size is not empty.

    Returns:
      A `Forward`.
    """
    z = sampling.sample(q, num_samples, seed)
    if check_batch:
        # A batch of dynamic size 0 (a static 0 is refused before) would give a NaN loss.
        z = checks.with_assertion(checks.batch_size_assertion(q, caller, z), z)
    tape = fixed = None
    if total:
        log_q = checks.log_prob(q, z)
        model_z = z
    else:
        fixed_z = tf.nest.map_structure(tf.stop_gradient, z)
        fixed = [leaf for leaf in tf.nest.flatten(fixed_z) if leaf.dtype.is_floating]
        # Only log q is differentiated w.r.t. z on an inner tape: q's density is cheap.
        # log p, the model's cost, is differentiated once, by the caller's tape.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(fixed)
            log_q = checks.log_prob(q, fixed_z)
        if path_ratio is None:
            model_z = fixed_z
        else:
            model_z = tf.nest.map_structure(lambda leaf: scale_gradient(leaf, path_ratio), z)
    log_p = checks.call_log_joint(log_joint, model_z, log_q)
    log_p = checks.check_log_joint_output(log_p, log_q, num_samples)
    log_w = log_p - log_q
    if validate_args:
        log_w = checks.with_assertion(
            validation.finite_log_weights_assertion(z, log_q, log_p, caller), log_w
        )
    # +inf (log p = +inf, or log q = -inf at q's own sample) has no meaning as a weight:
    # it is reported, and propagates, as NaN.
    stopped = validation.nan_for_positive_infinity(tf.stop_gradient(log_w))
    return Forward(z, log_q, log_p, log_w, stopped, tape, fixed)
