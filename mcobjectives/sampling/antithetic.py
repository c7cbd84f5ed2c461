"""Antithetic Bernoulli draws from the package's own bits, for DisARM.

A Bernoulli unit of logit a is drawn as b = 1[eps < a], eps = log u - log(1 - u) standard
logistic noise of a uniform u (`noise.logistic`, as `reparameterization.sample` draws
it). Its antithetic partner uses 1 - u, whose logistic noise is -eps:
b~ = 1[-eps < a]. Both are exact Bernoulli(sigmoid(a)) draws; they differ only where
|eps| > |a| (with probability 2 sigmoid(-|a|)). The noise is SplitMix64's, so the same
seed gives the same pairs eagerly, in a `tf.function` and under XLA, and per-example
seeds [B, 2] give each data point its own pairs.

`antithetic_sample(q, K, seed)` draws, for a q of L Bernoulli layers, K samples for each
of the 2^L sign patterns (s_1, ..., s_L): layer l is drawn from the noise s_l eps_l given
the pattern's layers above it. The pattern of all +1 is exactly the K samples
`mcobjectives.sampling.sample(q, K, seed)` draws (the same noise, bit for bit). Negating
s_l gives the pattern's partner in layer l: the same layers above l, layer l's
antithetic values, and the layers below l drawn again from their own (unchanged) noise.
For a single Bernoulli q the two patterns are the antithetic pair itself.

References:
  [1] Dong, Mnih, Tucker. DisARM: An Antithetic Gradient Estimator for Binary Latent
      Variables. NeurIPS 2020 (arXiv:2006.10680).
  [2] Yin, Zhou. ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks.
      ICLR 2019.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _compat, limits
from mcobjectives.core import checks
from mcobjectives.sampling.noise import logistic, noise
from mcobjectives.sampling.seeds import (
    assert_one_seed_per_example,
    child_seeds,
    seed_for,
    stateless_seed,
)

tfd = tfp.distributions

__all__ = ["AntitheticDraws", "antithetic_logistic", "antithetic_sample", "bernoulli_of"]

_FIX = (
    "DisARM's antithetic pairs exist for Bernoulli latents only (tfd.Bernoulli, or "
    "tfd.Independent of one); train this q with a score-function objective such as "
    "mcobjectives.VIMCO or mcobjectives.RWS instead."
)


class AntitheticDraws(NamedTuple):
    """What `antithetic_sample` drew, for a q of L Bernoulli layers (in q's model order).

    The draws are indexed by sign pattern: pattern p = (s_1, ..., s_L), s_l in {+1, -1},
    draws layer l from the noise s_l eps_l, in the order of `itertools.product((1, -1),
    repeat=L)`; pattern 0 (all +1) is `mcobjectives.sampling.sample(q, K, seed)`. The
    partner of pattern p in layer l, p with s_l negated, has p's layers above l and
    layer l's antithetic values.

    Attributes:
      signs: the 2^L patterns, tuples of +-1.
      draws: one structure per pattern, q's structure, leaves [K, B, *event] in q's dtype.
      logits: per pattern, per layer, the layer's logits given the pattern's layers above
        it ([B, *event] for a root layer, [K, B, *event] for a conditional one), with
        their gradient.
      bits: per pattern, per layer, the layer's values, float in the logits' dtype.
      noise: per layer, the logistic noise eps_l [K, B, *event] (float64).
    """

    signs: tuple
    draws: tuple
    logits: tuple
    bits: tuple
    noise: tuple

    @property
    def samples(self):
        """The K samples of pattern 0: exactly `mcobjectives.sampling.sample(q, K, seed)`."""
        return self.draws[0]

    def partner(self, pattern: int, layer: int) -> int:
        """The index of `pattern` with the sign of `layer` negated."""
        signs = list(self.signs[pattern])
        signs[layer] = -signs[layer]
        return self.signs.index(tuple(signs))


def antithetic_logistic(
    shape: Sequence[int] | tf.TensorShape | tf.Tensor,
    seed: int | Sequence[int] | np.ndarray | tf.Tensor,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Standard logistic noise eps of `shape`, float64, identical with and without XLA.

    eps and -eps are an antithetic pair (the logistic noise of u and 1 - u). `dtype`
    (float32 or float64) sets the uniforms' resolution, as for the logits of a
    Bernoulli of that dtype: 24 or 52 random bits per number.
    """
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.float64):
        raise TypeError(f"`dtype` must be float32 or float64, got {dtype.name}.")
    shape = tf.convert_to_tensor(shape, tf.int32)
    return noise(shape, stateless_seed(seed), dtype, 0, logistic)


def bernoulli_of(d: tfd.Distribution) -> tfd.Bernoulli | None:
    """The tfd.Bernoulli of `d` (a Bernoulli or an Independent of one), or None."""
    if type(d) is tfd.Independent:
        d = d.distribution
    return d if type(d) is tfd.Bernoulli else None


def _refusal(name: str, d: tfd.Distribution) -> ValueError:
    kinds = [type(d).__name__]
    while isinstance(d, (tfd.Independent, tfd.Sample, tfd.TransformedDistribution)):
        d = d.distribution
        kinds.append(type(d).__name__)
    what = " of ".join(f"{'an' if k[0] in 'AEIOU' else 'a'} {k}" for k in kinds)
    return ValueError(f"Leaf '{name}' of `q` is {what}, not a Bernoulli. {_FIX}")


def _draw(logits: tf.Tensor, eps: tf.Tensor, dtype: tf.DType, sign: int) -> tf.Tensor:
    # Compared in float64, as `sampling.sample` compares its logistic noise.
    return tf.cast((eps if sign > 0 else -eps) < tf.cast(logits, tf.float64), dtype)


def antithetic_sample(
    q: tfd.Distribution, num_samples: int, seed: int | Sequence[int] | np.ndarray | tf.Tensor
) -> AntitheticDraws:
    """K samples of a Bernoulli q and, per Bernoulli layer, their antithetic partners.

    Args:
      q: a tfd.Bernoulli, a tfd.Independent of one, or a JointDistribution whose every
        part is one of those (a root part of batch [B], a conditional part of batch
        [K, B] built from upstream samples), batch shape [B].
      num_samples: K, a Python int >= 1.
      seed: as `mcobjectives.sampling.sample` takes it (per-example seeds [B, 2] too).

    Raises:
      ValueError: naming the leaf (its name in q) and the fix, for a leaf that is not
        a Bernoulli, as the draw reaches it (before any log density is computed); and
        naming `num_samples` where the K samples and their partners would exceed the
        sample-memory limit.
    """
    checks.check_is_distribution(q)
    num_samples = checks.check_count("num_samples", num_samples, maximum=checks.MAX_DIMENSION)
    joint = checks.is_joint(q)
    if not joint and bernoulli_of(q) is None:
        raise _refusal(q.name, q)
    num_layers = len(tf.nest.flatten(q.dtype))
    # The draws of every sign pattern are held at once.
    limits.check_sample_memory(q, num_samples * 2**num_layers)
    seed = seed_for(q, seed)
    if not joint:
        d = bernoulli_of(q)
        logits = d.logits_parameter()
        shape = tf.concat([[num_samples], tf.shape(logits)], axis=0)
        eps = noise(shape, seed, logits.dtype, 1, logistic)
        full = tf.TensorShape([num_samples]).concatenate(q.batch_shape).concatenate(q.event_shape)
        draws = tuple(tf.ensure_shape(_draw(logits, eps, q.dtype, f), full) for f in (1, -1))
        bits = tuple((tf.cast(b, logits.dtype),) for b in draws)
        return AntitheticDraws(((1,), (-1,)), draws, ((logits,), (logits,)), bits, (eps,))
    return _joint(q, num_samples, seed, num_layers)


def _joint(q, num_samples: int, seed: tf.Tensor, num_layers: int) -> AntitheticDraws:
    names = _compat.flat_resolve_names(q)
    event_ranks = [shape.rank for shape in _compat.model_flatten(q, q.event_shape)]
    eps: list = []

    def run(signs):
        """Runs q's model, layer l drawn from the noise signs[l] eps_l."""
        logits_of, bits = [], []

        def draw_layer(index, part):
            d = bernoulli_of(part)
            if d is None:
                raise _refusal(names[index], part)
            logits = d.logits_parameter()
            if index == len(eps):  # the first pass draws each layer's noise
                eps.append(_layer_noise(part, logits, num_samples, seed, index, event_ranks))
            value = _draw(logits, eps[index], part.dtype, signs[index])
            logits_of.append(logits)
            bits.append(tf.cast(value, logits.dtype))
            return value

        values = _compat.run_model(q, draw_layer)
        return _compat.model_unflatten(q, values), tuple(logits_of), tuple(bits)

    signs = tuple(itertools.product((1, -1), repeat=num_layers))
    runs = [run(pattern) for pattern in signs]
    return AntitheticDraws(
        signs,
        tuple(r[0] for r in runs),
        tuple(r[1] for r in runs),
        tuple(r[2] for r in runs),
        tuple(eps),
    )


def _layer_noise(part, logits, num_samples: int, seed, index: int, event_ranks) -> tf.Tensor:
    """Part `index`'s logistic noise, from the seed `sampling.sample` gives that part."""
    event_rank = event_ranks[index]
    if event_rank is None:
        event_rank = part.event_shape.rank
    rank = part.batch_shape.rank
    leading = None if rank is None else rank + part.event_shape.rank - event_rank
    if leading not in (1, 2):
        raise ValueError(
            f"Part '{part.name}' of a joint q has batch shape {part.batch_shape} and event "
            f"shape {part.event_shape}; expected batch shape [B] (or [S, B] when built "
            "from upstream samples): wrap its latent dimensions in tfd.Independent."
        )
    part_seed = assert_one_seed_per_example(child_seeds(seed, index), part, leading - 1)
    sample_shape = [num_samples] if leading == 1 else []
    shape = tf.concat([tf.constant(sample_shape, tf.int32), tf.shape(logits)], axis=0)
    return noise(shape, part_seed, logits.dtype, 1, logistic)
