"""Samples from the Keras model's p(x, z), reconstructions, and the sleep phase of wake-sleep.

`ImportanceWeightedAutoencoder.sample(num, seed)` draws z ~ p(z) (or p(z|c)) and then
x ~ p(x|z), returning a `ModelSample` (z in the prior's structure, x, and the decoder's
mean, e.g. its pixel probabilities, which show a model far better than binary draws).
`reconstruct(x, seed)` draws z ~ q(z|x) and returns the decoder's mean at it.

Every draw is made by `mcobjectives.sampling` (z from child seed 0 of `seed`, x from
child seed 1), so for the families it recognises (Normal, Bernoulli, Categorical,
Independent, Sample, MultivariateNormal*, and joint distributions of them: the sigmoid
belief net's p(z2) p(z1|z2), Burda et al.'s two-layer Gaussian prior) the same seed
gives the same draws eagerly, in a `tf.function` and under XLA.

A joint prior is run part by part in its model's order. A part whose batch shape is []
(an unconditional root, p(z2)) is drawn `num` times; a part of batch shape [num] (a
conditional built from the samples upstream, p(z1|z2), or any part of a prior of a
context of `num` rows) is drawn once per row.

The sleep phase of reweighted wake-sleep ([1] sec. 3; [2]) trains q on the model's own
samples: (x_n, z_n) ~ p(x, z), n = 1..N (N the batch size; the batch's context, if any,
conditions the prior; where the batch size is known only at run time, as on `fit`'s
last, smaller batch, an unconditional model draws N = K, the objective's number of
samples, which leaves the gradient unbiased), and the loss -1/N sum_n log q(z_n | x_n),
whose gradient in q's parameters phi is a Monte Carlo estimate of -E_{p(x, z)}[d/dphi log q(z|x)] =
d/dphi E_{p(x)}[KL(p(z|x) || q(z|x))]. The samples are held fixed (no gradient reaches
the decoder or the prior through them). `sleep_loss` builds it; `mco.RWS(...,
inference_update="sleep" | "wake_sleep")` asks the model to add it.

References:
  [1] Bornschein, Bengio. Reweighted Wake-Sleep. ICLR 2015 (arXiv:1406.2751).
  [2] Le, Kosiorek, Siddharth, Teh, Wood. Revisiting Reweighted Wake-Sleep for Models
      with Stochastic Control Flow. UAI 2019 (arXiv:1805.10469).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _compat, sampling
from mcobjectives.core import checks
from mcobjectives.keras import batches
from mcobjectives.keras.log_joint import call_network, check_prior_context
from mcobjectives.sampling.seeds import child_seeds

tfd = tfp.distributions

__all__ = ["Generation", "ModelSample", "Reconstruction", "reconstruct", "sample", "sleep_loss"]

# The sleep phase's samples come from a child of the step's seed of their own, away from
# the children 0, 1, ... that a joint q's parts draw from.
SLEEP_STREAM = 1 << 20


class ModelSample(NamedTuple):
    """Draws (z, x) ~ p(z) p(x|z), `num` of each.

    Attributes:
      z: the latents in the prior's structure (a tensor, dict or list), leaves
        [num, *event_i].
      x: the observations drawn from p(x|z), [num, *x_event], in the decoder's dtype.
      mean: the decoder's mean E[x|z], [num, *x_event] (pixel probabilities for a
        Bernoulli decoder).
    """

    z: Any
    x: tf.Tensor
    mean: tf.Tensor


class Reconstruction(NamedTuple):
    """z ~ q(z|x) (one per data point, leaves [B, *event_i]) and the decoder's mean at it."""

    z: Any
    mean: tf.Tensor


def _check_seed(seed) -> tf.Tensor:
    if isinstance(seed, tf.Tensor) and seed.shape.rank == 2:
        raise ValueError("`seed` must be one stateless seed (an int or a shape-[2] tensor).")
    return sampling.stateless_seed(seed)


def _num_rows(context, num: int | None) -> int:
    """The number of draws: `num`, which must agree with the context's rows."""
    if num is not None:
        num = checks.check_count("num", num, maximum=checks.MAX_DIMENSION)
    if context is None:
        if num is None:
            raise ValueError("`num` (the number of samples, a positive int) is required.")
        return num
    rows = tf.TensorShape(tf.convert_to_tensor(context).shape)[0]
    if num is not None and rows is not None and rows != num:
        raise ValueError(
            f"`context` has {rows} rows but `num` is {num}: one draw is made per row of "
            "the context; pass num=None or num equal to its rows."
        )
    return num if num is not None else rows


def _draw(part: tfd.Distribution, num: int, seed: tf.Tensor):
    """`num` draws of a part of batch shape [] (drawn num times) or [num] (once per row)."""
    rank = part.batch_shape.rank
    if rank == 0:
        return sampling.sample(part, num, seed)
    if rank == 1:
        return tf.nest.map_structure(lambda t: t[0], sampling.sample(part, 1, seed))
    raise ValueError(
        f"A part of the prior ('{part.name}') has batch shape {part.batch_shape}: to draw "
        "from p(z) the model needs batch shape [] (unconditional) or [num] (conditional "
        "on upstream samples or on a context of num rows)."
    )


def draw_prior(prior: tfd.Distribution, num: int, seed: tf.Tensor):
    """`num` draws of p(z), z in the prior's structure, leaves [num, *event_i]."""
    if not checks.is_joint(prior):
        return _draw(prior, num, seed)
    values = _compat.run_model(
        prior, lambda index, part: _draw(part, num, child_seeds(seed, index))
    )
    return _compat.model_unflatten(prior, values)


def _decode(model, z, context, training: bool) -> tfd.Distribution:
    likelihood = call_network(model.decoder, (z,) if context is None else (z, context), training)
    if not isinstance(likelihood, tfd.Distribution):
        raise TypeError(
            f"The decoder must return p(x|z), a TFP distribution; got {type(likelihood).__name__}."
        )
    return likelihood


def sample(model, num: int | None, seed, context=None, training: bool = False) -> ModelSample:
    """`num` draws (z, x) of the model's p(z) p(x|z) (or p(z|c) p(x|z, c), one per row of c).

    z comes from child seed 0 of `seed`, x from child seed 1 (see the module).
    """
    seed = _check_seed(seed)
    num = _num_rows(context, num)
    check_prior_context(model.prior, context)
    prior = model.prior_distribution(context, training)
    z = draw_prior(prior, num, child_seeds(seed, 0))
    likelihood = _decode(model, z, context, training)
    x = tf.nest.map_structure(lambda t: t[0], sampling.sample(likelihood, 1, child_seeds(seed, 1)))
    return ModelSample(z=z, x=x, mean=likelihood.mean())


def reconstruct(model, x, seed, context=None, training: bool = False) -> Reconstruction:
    """z ~ q(z|x) (one draw per data point, from `seed`) and the decoder's mean at z."""
    seed = _check_seed(seed)
    q = model.posterior(x, context, training)
    z = tf.nest.map_structure(lambda t: t[0], sampling.sample(q, 1, seed))
    return Reconstruction(z=z, mean=_decode(model, z, context, training).mean())


def sleep_seed(model, seed) -> tf.Tensor:
    """The seed of a step's sleep samples: a child of the step's seed (one [2] seed).

    Per-example seeds ([B, 2]) and a missing seed give the model's step seed instead:
    the model's samples belong to no data point.
    """
    if seed is None or sampling.is_per_example_seed(seed):
        seed = model.step_seed()
    return child_seeds(sampling.stateless_seed(seed), SLEEP_STREAM)


def sleep_loss(model, data, seed, training: bool = True) -> tf.Tensor:
    """-1/N sum_n log q(z_n | x_n) on N = batch-size model samples (x_n, z_n) ~ p, held fixed.

    Its gradient in q's parameters is the sleep phase's ([1], [2]); see the module.
    """
    batch = batches.unpack(data)
    x_data = tf.convert_to_tensor(batch.x)
    context = batch.context
    rows = x_data.shape[0]
    if rows is None and context is not None:
        rows = tf.convert_to_tensor(context).shape[0]
    if rows is None and context is None:
        # A batch size known at run time only (fit's last, smaller batch, traced with
        # reduce_retracing): a static count of model samples still gives an unbiased
        # sleep gradient; the objective's K is the one at hand.
        rows = model.objective.num_samples
    if rows is None:
        raise ValueError(
            "The sleep phase of a conditional model draws one model sample per row of the "
            "context and needs the batch size statically: batch the data with "
            "drop_remainder=True."
        )
    drawn = sample(model, rows, sleep_seed(model, seed), context, training)
    z = tf.nest.map_structure(tf.stop_gradient, drawn.z)
    x = tf.stop_gradient(tf.cast(drawn.x, x_data.dtype))
    q = model.posterior(x, context, training)
    return -tf.reduce_mean(q.log_prob(z))


class Generation:
    """`sample` and `reconstruct` of `ImportanceWeightedAutoencoder` (a mixin before Model)."""

    def sample(
        self, num: int | None, seed: int | tf.Tensor, context: tf.Tensor | None = None
    ) -> ModelSample:
        """Draws `num` samples (z, x) of p(z) p(x|z): a `ModelSample` (z, x, mean).

        With a conditional prior (a layer of the context), pass `context` [num, ...]: one
        draw per row (`num` may then be None). Reproducible: the same seed gives the same
        draws eagerly, in a `tf.function` and under XLA for the families that
        `mcobjectives.sampling` recognises (`mcobjectives.keras.generation`).

        Example:

            drawn = model.sample(64, seed=0)
            images = drawn.mean.numpy().reshape(-1, 28, 28)  # pixel probabilities

        Args:
          num: the number of draws, a positive Python int.
          seed: a stateless seed (an int or a shape-[2] integer tensor).
          context: for a conditional model, the context of each draw.

        Raises:
          TypeError, ValueError: for a bad `num`, `seed` or `context`, before any draw.
        """
        return sample(self, num, seed, context)

    def reconstruct(
        self, x: tf.Tensor, seed: int | tf.Tensor, context: tf.Tensor | None = None
    ) -> Reconstruction:
        """z ~ q(z|x), one per data point, and the decoder's mean at it: a `Reconstruction`.

        Example:

            pictures = model.reconstruct(test_images[:16], seed=0).mean

        Args:
          x: a batch of data [B, ...].
          seed: a stateless seed (an int or a shape-[2] integer tensor).
          context: the batch's context, for a conditional model.
        """
        return reconstruct(self, x, seed, context)
