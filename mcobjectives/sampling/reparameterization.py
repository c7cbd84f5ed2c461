"""The per-distribution samplers and the part-by-part draw of a joint distribution.

Each recognised family pushes the package's own noise through its reparameterization
(see the package docstring for the families); any other distribution is drawn by its
own `sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _compat, limits
from mcobjectives.core import checks
from mcobjectives.sampling.noise import gumbel, logistic, noise, normal_of
from mcobjectives.sampling.seeds import assert_one_seed_per_example, child_seeds, seed_for

tfd = tfp.distributions

__all__ = ["sample", "supports_stable_sampling"]


def _defines(cls: type, method: str, owner: type) -> bool:
    """Whether `cls` inherits `method` from `owner` (i.e. does not override it).

    TFP's public wrapper classes are thin wrappers of private ones (`_compat`); a
    subclass that overrides their sampling is not recognised (it is drawn by its own
    `sample`).
    """
    for klass in cls.__mro__:
        if method in klass.__dict__:
            return klass is owner
    return False


def _static_shape(shape: tf.TensorShape):
    return shape.as_list() if shape.is_fully_defined() else None


def supports_stable_sampling(q: tfd.Distribution) -> bool:
    """Whether `sample(q, ...)` reparameterizes `q` itself (XLA-stable draws)."""
    return _sampler(q) is not None


def _sampler(d):
    """Returns a function (sample_shape, seed) -> draws, or None if `d` is not recognised."""
    if type(d) is tfd.Normal:

        def normal(sample_shape, seed, example_axis):
            shape = tf.concat([sample_shape, d.batch_shape_tensor()], axis=0)
            eps = noise(shape, seed, d.dtype, example_axis, normal_of(d.dtype))
            return d.loc + d.scale * eps

        return normal

    if type(d) is tfd.Bernoulli:

        def bernoulli(sample_shape, seed, example_axis):
            logits = d.logits_parameter()
            shape = tf.concat([sample_shape, tf.shape(logits)], axis=0)
            # A logistic variable u -> log u - log(1 - u) is below l with probability
            # sigmoid(l); compared in float64 so that every mode draws the same bits.
            draws = noise(shape, seed, logits.dtype, example_axis, logistic)
            return tf.cast(draws < tf.cast(logits, tf.float64), d.dtype)

        return bernoulli

    if type(d) in (tfd.Categorical, tfd.OneHotCategorical):

        def categorical(sample_shape, seed, example_axis):
            logits = d.logits_parameter()
            shape = tf.concat([sample_shape, tf.shape(logits)], axis=0)
            # Gumbel-max: argmax(logits + Gumbel noise) is a draw of the categorical.
            draws = noise(shape, seed, logits.dtype, example_axis, gumbel)
            index = tf.argmax(tf.cast(logits, tf.float64) + draws, axis=-1, output_type=tf.int32)
            if type(d) is tfd.OneHotCategorical:
                return tf.one_hot(index, tf.shape(logits)[-1], dtype=d.dtype)
            return tf.cast(index, d.dtype)

        return categorical

    if isinstance(d, tfd.Independent) and _defines(type(d), "_sample_n", _compat.INDEPENDENT):
        return _sampler(d.distribution)

    if isinstance(d, tfd.Sample) and _defines(type(d), "_sample_n", _compat.SAMPLE):
        return _sample_sampler(d)

    if isinstance(d, tfd.TransformedDistribution) and _defines(
        type(d), "_call_sample_n", _compat.TRANSFORMED_DISTRIBUTION
    ):
        base = d.distribution
        inner = _sampler(base)
        same_batch = _static_shape(base.batch_shape) is not None and _static_shape(
            base.batch_shape
        ) == _static_shape(d.batch_shape)
        if inner is None or not same_batch:
            return None

        def transformed(sample_shape, seed, example_axis):
            return d.bijector.forward(inner(sample_shape, seed, example_axis))

        return transformed

    return None


def _sample_sampler(d: tfd.Sample):
    """The sampler of a `tfd.Sample` of a recognised family with static shapes, or None."""
    inner = _sampler(d.distribution)
    extra = tf.get_static_value(d.sample_shape)
    batch_rank = d.distribution.batch_shape.rank
    event_rank = d.distribution.event_shape.rank
    if inner is None or extra is None or batch_rank is None or event_rank is None:
        return None
    extra = [int(n) for n in np.reshape(extra, [-1])]

    def sample_of(sample_shape, seed, example_axis):
        k = len(extra)
        draws = inner(tf.concat([sample_shape, extra], axis=0), seed, example_axis + k)
        lead = int(sample_shape.shape[0])
        # [lead..., extra..., batch..., event...] -> [lead..., batch..., extra..., event...]
        perm = (
            list(range(lead))
            + list(range(lead + k, lead + k + batch_rank))
            + list(range(lead, lead + k))
            + list(range(lead + k + batch_rank, lead + k + batch_rank + event_rank))
        )
        return tf.transpose(draws, perm)

    return sample_of


def sample(
    q: tfd.Distribution, num_samples: int, seed: int | Sequence[int] | np.ndarray | tf.Tensor
) -> Any:
    """Draws `num_samples` reparameterized samples of `q`, shape [num_samples, *batch, *event].

    The objectives draw their samples with this function, so calling it with the same
    `q`, `num_samples` and `seed` replays exactly the z an objective used.

    A `JointDistribution` q is sampled part by part in its model's order, each part
    with a seed of its own derived from `seed`, and each conditional part from the
    parts drawn before it: the result has q's structure (a list, a dict, ...), each
    leaf [num_samples, B, *event_i]. The parts of a joint q must have batch shape [B]
    and broadcast over a leading sample axis (a part built from upstream samples has
    batch shape [num_samples, B]).

    Args:
      q: a distribution; see `mcobjectives.sampling` for the families sampled stably.
        Its continuous leaves must be float32 or float64.
      num_samples: how many draws, a Python int in [1, 2**31), whose samples must fit
        the sample-memory limit (`mcobjectives.limits`; checked from q's static shapes,
        a size known only at run time counting as 1).
      seed: a stateless seed (an int or a shape-[2] integer tensor), or a `[B, 2]`
        integer tensor of per-example seeds for a q of batch shape `[B]` (checked at run
        time where B is not static); see `stateless_seed` for what a seed may be.

    Raises:
      ValueError: naming `num_samples`, if the samples would exceed the sample-memory
        limit (`mcobjectives.limits.check_sample_memory`), before anything is allocated.
    """
    checks.check_is_distribution(q)
    num_samples = checks.check_count("num_samples", num_samples, maximum=checks.MAX_DIMENSION)
    checks.check_float_dtypes(q)
    # From q's static shapes only: refused before any tensor is made (no draw changes).
    limits.check_sample_memory(q, num_samples)
    seed = seed_for(q, seed)
    if checks.is_joint(q):
        return _sample_joint(q, num_samples, seed)
    sampler = _sampler(q)
    if sampler is None and seed.shape.rank == 2:
        raise ValueError(
            f"Per-example seeds ([B, 2]) need a q that mcobjectives.sampling draws itself "
            f"(Normal, Bernoulli, Categorical, OneHotCategorical, Independent, Sample, "
            f"MultivariateNormal*, ...); got {_describe(q)}. Pass one shape-[2] seed instead."
        )
    if sampler is None:
        return q.sample(num_samples, seed=seed)
    draws = sampler(tf.constant([num_samples], tf.int32), seed, 1)
    shape = tf.TensorShape([num_samples]).concatenate(q.batch_shape).concatenate(q.event_shape)
    return tf.ensure_shape(draws, shape)


def _sample_joint(q, num_samples: int, seed: tf.Tensor):
    """Runs q's model, drawing each part with `_sample_part`; returns q's structure."""
    # Each leaf's event rank, in the model's order: an AutoBatched q reinterprets its
    # parts' trailing batch dimensions as event dimensions, so a part's own batch rank
    # does not tell whether it still needs a sample axis.
    event_ranks = [shape.rank for shape in _compat.model_flatten(q, q.event_shape)]
    values = _compat.run_model(
        q,
        lambda index, part: _sample_part(
            part, num_samples, child_seeds(seed, index), event_ranks[index]
        ),
    )
    return _compat.model_unflatten(q, values)


def _sample_part(part: tfd.Distribution, num_samples: int, seed: tf.Tensor, event_rank):
    """Draws one part of a joint q: [S, B, *event] from a part of batch [B] or [S, B].

    `event_rank` is the rank of the leaf's event in q (for an AutoBatched q, the part's
    trailing batch dimensions count as event dimensions).
    """
    if event_rank is None:
        event_rank = part.event_shape.rank
    rank = part.batch_shape.rank
    leading = None if rank is None else rank + part.event_shape.rank - event_rank
    if leading == 1:  # a root part, [B, *event]: draw S samples
        sample_shape = [num_samples]
    elif leading == 2:  # built from upstream samples, [S, B, *event]: one draw each
        sample_shape = []
    else:
        raise ValueError(
            f"Part '{part.name}' of a joint q has batch shape {part.batch_shape} and event "
            f"shape {part.event_shape} for a leaf of event rank {event_rank}; expected "
            "batch shape [B] (or [S, B] when built from upstream samples [S, B, ...]): wrap "
            "its latent dimensions in tfd.Independent."
        )
    if isinstance(part, tfd.JointDistribution):
        raise ValueError(f"Part '{part.name}' of a joint q is itself a joint distribution.")
    seed = assert_one_seed_per_example(seed, part, leading - 1)
    sampler = _sampler(part)
    if sampler is not None:
        return sampler(tf.constant(sample_shape, tf.int32), seed, 1)
    if seed.shape.rank == 2:
        raise ValueError(
            f"Per-example seeds ([B, 2]) need every part of a joint q to be one that "
            f"mcobjectives.sampling draws itself (Normal, Bernoulli, Categorical, "
            f"OneHotCategorical, Independent, Sample, MultivariateNormal*, ...); part "
            f"'{part.name}' is {_describe(part)}. Pass one shape-[2] seed instead."
        )
    return part.sample(sample_shape, seed=seed)


def _describe(d: tfd.Distribution) -> str:
    """ "a Gamma" or "an Independent of a Gamma": the family that is not recognised."""
    wrappers = []
    while isinstance(d, (tfd.Independent, tfd.Sample, tfd.TransformedDistribution)):
        wrappers.append(type(d).__name__)
        d = d.distribution
    names = [*wrappers, type(d).__name__]
    return " of ".join(f"{'an' if name[0] in 'AEIOU' else 'a'} {name}" for name in names)
