"""The thermodynamic variational objective (TVO): a Riemann sum of the instantaneous ELBO.

References:
  [1] Masrani, Le, Wood. The Thermodynamic Variational Objective. NeurIPS 2019
      (arXiv:1907.00031): the left (lower) and right (upper) Riemann sums of the
      thermodynamic identity log p(x) = int_0^1 E_{pi_beta}[log w] d beta, pi~_beta
      (eq. 7), the covariance gradient (eqs. 12-13) with self-normalized expectations
      (sec. 4), and the log-uniform partition from beta_1 (K = 5, beta_1 = 10^-1.09 in
      its VAE experiments, the defaults here).
  [2] The authors' code, github.com/vmasrani/tvo (read, not copied): the
      S / (S - 1) factor on the covariance.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from mcobjectives.core import checks
from mcobjectives.core.objective import Coefficients, GradientPath, MCObjective
from mcobjectives.weights import max_log_weight, normalized_weights

__all__ = ["TVO"]

# [1]'s VAE setting: K = 5 intervals, beta_1 = 10^-1.09, log-uniform between beta_1 and 1.
DEFAULT_NUM_PARTITIONS = 5
DEFAULT_BETA_1 = 10.0**-1.09
RIEMANN_SUMS = ("left", "right")


def log_uniform_partition(num_partitions: int, beta_1: float) -> tuple[float, ...]:
    """(0, beta_1, ..., 1): 0 and `num_partitions` points log-uniform from beta_1 to 1.

    beta_j = beta_1^((K - j) / (K - 1)) for j = 1..K ([1]); K = 1 is (0, 1).
    """
    if num_partitions == 1:
        return (0.0, 1.0)
    k = num_partitions
    inner = [beta_1 ** ((k - j) / (k - 1)) for j in range(1, k)]
    return (0.0, *inner, 1.0)


def _check_partition(partition) -> tuple[float, ...]:
    fix = "pass the points 0 = beta_0 < beta_1 < ... < beta_J = 1, e.g. partition=(0.0, 0.1, 1.0)"
    if isinstance(partition, (str, bytes)) or not isinstance(partition, Sequence):
        try:  # a NumPy array or a tensor of numbers
            partition = list(partition)
        except TypeError:
            raise TypeError(
                f"`partition` must be a sequence of floats, got {type(partition).__name__}; {fix}."
            ) from None
    points = []
    for point in partition:
        if hasattr(point, "item") and not isinstance(point, numbers.Real):
            point = point.item()
        if isinstance(point, bool) or not isinstance(point, numbers.Real):
            raise TypeError(f"`partition` must hold real numbers, got {point!r}; {fix}.")
        points.append(float(point))
    if len(points) < 2:
        raise ValueError(f"`partition` needs at least the two points 0 and 1, got {points}; {fix}.")
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in points):
        raise ValueError(
            f"`partition` must lie in [0, 1] (beta_1..beta_J in (0, 1]), got {points}."
        )
    if points[0] != 0.0:
        raise ValueError(
            f"`partition` must start at beta_0 = 0 (q, the ELBO end of the path), got "
            f"{points[0]}: prepend 0.0."
        )
    if points[-1] != 1.0:
        raise ValueError(
            f"`partition` must end at beta_J = 1 (the posterior end of the path), got "
            f"{points[-1]}: append 1.0."
        )
    if any(b <= a for a, b in itertools.pairwise(points)):
        raise ValueError(f"`partition` must be strictly increasing, got {points}; {fix}.")
    return tuple(points)


class TVO(MCObjective):
    """The thermodynamic variational objective [1], estimated from one set of S samples.

    With f_k = log w_k, pi_beta(z) proportional to q(z|x)^(1-beta) p(x, z)^beta and the
    partition 0 = beta_0 < beta_1 < ... < beta_J = 1:

    value (left, default):  TVO_L = sum_{j<J} (beta_{j+1} - beta_j) E^_{beta_j}[f]
                            (with exact expectations, <= log p(x): E_{pi_beta}[f]
                            increases in beta, its derivative is Var_{pi_beta}(f));
    value (right):          TVO_U = sum_{j<J} (beta_{j+1} - beta_j) E^_{beta_{j+1}}[f]
                            (with exact expectations, >= log p(x)),
    E^_beta[f] = sum_k w~^beta_k f_k, w~^beta = softmax(beta f) over the SAME S samples.
    `partition=(0, 1)` left is the ELBO (VAE(S)'s value), right the IWAE-weighted
    mean sum_k w~_k log w_k.

    Gradient, score form (default; GradientPath.SCORE: discrete latents work). With
    log pi~_beta = log q + beta f, for any parameter d E_pi[f] = E_pi[d f] +
    Cov_pi(f, d log pi~_beta) ([1] eqs. 12-13). Estimated with w~ = w~^beta, the same
    samples held fixed and fbar = sum_k w~_k f_k, the covariance is
    c sum_k w~_k (f_k - fbar) d log pi~_beta(z_k) (the mean of d log pi~ drops out since
    sum_k w~_k (f_k - fbar) = 0), and d f_k = d log p_k - d log q_k, d log pi~_k =
    (1 - beta) d log q_k + beta d log p_k. Collecting the terms of each term beta:
        model coefficient:  w~_k + c beta w~_k (f_k - fbar)
        score coefficient:  -w~_k + c (1 - beta) w~_k (f_k - fbar)
    summed over the terms with their widths beta_{j+1} - beta_j.

    The correction c = S / (S - 1) ([2]). At beta = 0 (w~ = 1/S) the plain covariance
    (1/S) sum_k (f_k - fbar) s_k has mean ((S - 1)/S) Cov_q(f, s); with c it is
    (1/S) sum_k (f_k - fbar_{-k}) s_k, fbar_{-k} the mean of the other samples' f: a
    leave-one-out baseline, so the ELBO term's gradient (-1/S sum_k s_k has mean 0)
    is exactly unbiased. The weighted analogue 1 / (1 - sum_k w~_k^2) equals S/(S-1) at
    beta = 0 but grows without bound as one weight dominates (while the sum it
    multiplies does not shrink as fast in the noise); a constant factor keeps the
    estimator's scale fixed, and it is the authors' choice.

    Gradient, reparameterized form (`reparameterized=True`; GradientPath.TOTAL, a
    reparameterizable q): the exact total derivative of the self-normalized estimator.
    d w~_k = beta w~_k (d f_k - sum_j w~_j d f_j), so
        d E^_beta[f] = sum_k [w~_k + beta w~_k (f_k - fbar)] d log w_k,
    d log w_k the total derivative through z_k(eps; phi), i.e. Coefficients.total of
    the summed coefficient (no correction: it is the derivative of the value).

    What is unbiased, and for what. The exact TVO is T = sum_j (beta_{j+1} - beta_j)
    E_{pi_{beta_j}}[f]; the estimator's value T^ replaces each expectation by a
    self-normalized one, so E[T^] != T for beta > 0 (bias O(1/S)); T^ -> T as S -> inf.
    * Reparameterized form: the exact derivative of T^ for fixed eps, so it is unbiased
      for d E[T^] (the finite-S objective it ascends), and consistent for d T.
    * Score form: the beta = 0 term (with c) is unbiased for d ELBO; a term with
      beta > 0 is a ratio estimate, unbiased neither for d E_pi[f] nor for d E[T^], and
      consistent for d E_pi[f] (bias O(1/S)). tests/test_tvo.py measures each claim on
      the toy Gaussian, whose pi_beta is Gaussian.
    The sums bound log p(x) for the exact expectations; the estimates only up to their
    O(1/S) bias (on the toy Gaussian, default partition: E[T^] < T for both sums at
    S = 4 and 16).

    Zero weights (f_k = -inf): for beta > 0 such a sample has w~^beta_k = 0 and
    contributes nothing (w^beta log w -> 0). The beta_0 = 0 term of the left sum
    averages log w, so one zero weight makes the left TVO -inf (loss +inf, no gradient
    from that data point, as VAE); the right sum stays finite and is -inf only where
    every weight is zero.

    Args:
      num_samples: S >= 2 (the covariance of the score form needs two samples; the
        reparameterized form takes the same, so that one TVO(S) names one estimate).
      num_partitions: K >= 1 intervals of the log-uniform partition, default 5 ([1]);
        K = 1 is (0, 1). Not with `partition`.
      beta_1: the first nonzero point of the log-uniform partition, in (0, 1), default
        10^-1.09 ~ 0.0813 ([1]); leave unset for K = 1. Not with `partition`.
      partition: the points (0, beta_1, ..., 1) themselves, strictly increasing, from 0
        to 1 (instead of num_partitions and beta_1).
      riemann: "left" (the lower bound, default) or "right" (the upper bound).
      reparameterized: the reparameterized gradient instead of the score form.
    """

    min_num_samples = 2

    def __init__(
        self,
        num_samples: int,
        num_partitions: int | None = None,
        beta_1: float | None = None,
        partition: Sequence[float] | None = None,
        riemann: str = "left",
        reparameterized: bool = False,
        name: str | None = None,
        validate_args: bool = False,
    ):
        super().__init__(num_samples, name=name, validate_args=validate_args)
        if partition is not None:
            if num_partitions is not None or beta_1 is not None:
                raise ValueError(
                    "Give TVO either `partition` (its points) or `num_partitions` and "
                    "`beta_1` (a log-uniform partition), not both."
                )
            partition = _check_partition(partition)
            betas = partition
        else:
            if num_partitions is not None:
                num_partitions = checks.check_count("num_partitions", num_partitions)
            k = DEFAULT_NUM_PARTITIONS if num_partitions is None else num_partitions
            if beta_1 is not None:
                beta_1 = checks.check_unit_interval("beta_1", beta_1)
                if k == 1:
                    raise ValueError(
                        f"`beta_1` ({beta_1}) is unused with num_partitions=1, whose "
                        "partition is (0, 1): leave beta_1 unset, or use num_partitions >= 2."
                    )
                if beta_1 in (0.0, 1.0):
                    raise ValueError(
                        f"`beta_1` must lie strictly inside (0, 1), got {beta_1}: the "
                        "log-uniform points run from beta_1 to 1 (0 is beta_0, always there)."
                    )
            betas = log_uniform_partition(k, DEFAULT_BETA_1 if beta_1 is None else beta_1)
        if riemann not in RIEMANN_SUMS:
            raise ValueError(
                f"`riemann` must be 'left' (the lower bound) or 'right' (the upper bound), "
                f"got {riemann!r}."
            )
        if not isinstance(reparameterized, bool):
            raise TypeError(f"`reparameterized` must be a bool, got {reparameterized!r}.")
        self.num_partitions = num_partitions
        self.beta_1 = beta_1
        self.partition = partition
        self.riemann = riemann
        self.reparameterized = reparameterized
        self._betas = betas

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, those left unset (None) left out.

        `partition` (a user's points) is a tuple of floats; the log-uniform partition is
        recorded by `num_partitions` and `beta_1` where they were given.
        """
        return {key: value for key, value in super().get_config().items() if value is not None}

    @property
    def gradient_path(self) -> GradientPath:
        """`GradientPath.TOTAL` with `reparameterized=True`, else `GradientPath.SCORE`."""
        return GradientPath.TOTAL if self.reparameterized else GradientPath.SCORE

    @property
    def betas(self) -> tuple[float, ...]:
        """The partition 0 = beta_0 < ... < beta_J = 1 in use."""
        return self._betas

    def terms(self) -> list[tuple[float, float]]:
        """(width beta_{j+1} - beta_j, the beta its expectation is taken at), per term."""
        b = self._betas
        at = b[:-1] if self.riemann == "left" else b[1:]
        return [(hi - lo, beta) for lo, hi, beta in zip(b[:-1], b[1:], at, strict=True)]

    def _expectations(self, log_weights):
        """Per term: (width, beta, w~^beta [S, B], f - fbar [S, B] (0 where w~ = 0), fbar [B])."""
        # f - fbar and w~ are invariant to a common shift: the shifted log weights keep
        # float32's precision for |log w| ~ 1e4.
        shift = max_log_weight(log_weights)
        shifted = log_weights - shift
        all_zero = tf.reduce_all(log_weights == -math.inf, axis=0)
        s = self.num_samples
        out = []
        for width, beta in self.terms():
            if beta == 0.0:  # q itself: w~ = 1/S, and the mean is -inf with a zero weight
                normalized = tf.fill(tf.shape(shifted), tf.constant(1.0 / s, shifted.dtype))
                mean = tf.reduce_mean(shifted, axis=0)
            else:
                normalized = normalized_weights(beta * shifted)
                # 0 * -inf = 0: a zero weight's w^beta log w tends to 0 for beta > 0.
                mean = tf.reduce_sum(tf.math.multiply_no_nan(shifted, normalized), axis=0)
            mean = tf.where(all_zero, tf.constant(-math.inf, log_weights.dtype), mean)
            centred = tf.math.multiply_no_nan(
                shifted - mean, tf.cast(normalized > 0, shifted.dtype)
            )
            out.append((width, beta, normalized, centred, mean + shift))
        return out

    def _value(self, log_weights):
        return tf.add_n([width * mean for width, _, _, _, mean in self._expectations(log_weights)])

    def _coefficients(self, log_weights):
        s = self.num_samples
        correction = 1.0 if self.reparameterized else s / (s - 1)
        model = tf.zeros_like(log_weights)
        score = tf.zeros_like(log_weights)
        for width, beta, normalized, centred, _ in self._expectations(log_weights):
            covariance = correction * normalized * centred  # c w~_k (f_k - fbar)
            model += width * (normalized + beta * covariance)
            score += width * (-normalized + (1.0 - beta) * covariance)
        if self.reparameterized:
            return Coefficients.total(model)
        return Coefficients(model=model, path=None, score=score)
