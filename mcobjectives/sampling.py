"""Reproducible reparameterized sampling: the same seed gives the same draws in every mode.

TensorFlow's stateless normal sampler produces one stream when run by TensorFlow's
kernels (eagerly or in `tf.function`) and another under XLA (`jit_compile=True`), and
on CPU its XLA lowering is about 200x slower per number than the kernel. This module
therefore makes its own random bits, with the counter-based SplitMix64 generator [1]
written in uint64 integer arithmetic, which every mode computes exactly and XLA fuses
into one cheap loop. It turns them into standard normal noise (via the inverse normal
CDF, evaluated in float64) and pushes the noise through the distribution's own
reparameterization. Draws then agree across eager, `tf.function` and XLA execution up
to the last bits of `ndtri` (about 1e-12 relative in float64, 1e-10 in the far tails;
float32 draws are rounded from float64).

`sample(q, n, seed)` recognises these families and their compositions:

* `tfd.Normal`: `loc + scale * eps`;
* `tfd.Independent` and `tfd.Sample` of a recognised family;
* `tfd.TransformedDistribution` (including every `tfd.MultivariateNormal*` built on
  a linear operator, `tfd.LogNormal`, ...) of a recognised base whose batch shape
  equals its own: `bijector.forward(base_sample)`;
* `tfd.Bernoulli` (logistic noise below the logits), `tfd.Categorical` and
  `tfd.OneHotCategorical` (Gumbel-max), in the distribution's own dtype (int32 by
  default): exact draws, not relaxations, so no gradient flows through them;
* a `tfd.JointDistribution` (Sequential, Named, Coroutine, and the AutoBatched forms
  with `batch_ndims=1`), part by part, each part as above.

Any other distribution is sampled by its own `q.sample(n, seed=seed)`: still
deterministic given the seed, but its XLA stream differs from its non-XLA stream.

Per-example seeds. `sample` also takes a `[B, 2]` tensor of seeds, one per data point
of a q with batch shape `[B]`: data point b's draws then come from its own seed alone,
so they do not depend on which other data points share the batch. A global batch split
across replicas (`tf.distribute`), or a data set cut into batches of another size,
then draws exactly the same z for every data point. Recognised families only.

References:
  [1] Steele, Lea, Flood. Fast Splittable Pseudorandom Number Generators. OOPSLA 2014.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.distributions import independent, transformed_distribution
from tensorflow_probability.python.distributions import sample as sample_lib

from mcobjectives import _checks, limits

tfd = tfp.distributions

__all__ = [
    "is_per_example_seed",
    "sample",
    "standard_normal",
    "stateless_seed",
    "supports_stable_sampling",
]

# TFP's distribution classes are thin wrappers of these; a subclass that overrides
# their sampling is not recognised (it is sampled by its own `sample`).
_INDEPENDENT = independent._Independent
_SAMPLE = sample_lib._Sample
_TRANSFORMED = transformed_distribution._TransformedDistribution


def stateless_seed(seed) -> tf.Tensor:
    """A shape-[2] int32 stateless seed from an int or an integer tensor of shape [] or [2].

    What a seed may be, and which stream it gives:

    * A Python (or NumPy) int in [0, 2**62) maps to the fixed seed
      [seed >> 31, seed & (2**31 - 1)] (TFP's `sanitize_seed` would treat it as a
      stateful seed and draw anew on every call). A negative int, or one of 2**62 or
      more, is refused. An integer scalar tensor (or 0-d array), whose value may be
      unknown until run time, maps by the same formula: as the int would, and outside
      [0, 2**62) to the [2] seed it gives, read as below.
    * A [2] seed (a list, a NumPy array or a tensor, of any integer dtype) whose two
      components lie in the int32 range [-2**31, 2**31) is that int32 seed: int64 seeds
      of int32 values, as `tf.random.experimental.stateless_fold_in` returns, give the
      same stream as their int32 cast.
    * A [2] seed with a component outside the int32 range (an int64 seed of
      `stateless_split`, or [2**40, 3]) is not truncated to its low 32 bits: its two
      whole 64-bit components are hashed into an int32 seed, so distinct seeds give
      distinct streams (up to a 2**-64 chance of collision), in every mode, also for a
      symbolic int64 tensor. A Python or NumPy component outside the int64 range
      [-2**63, 2**63) is refused; a uint64 tensor is read as the int64 of its bits.

    Floats, bools, strings, ragged lists and seeds of any other shape are refused with
    a TypeError or ValueError naming `seed`, never rounded or truncated.
    """
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        seed = int(seed)
        if not 0 <= seed < 2**62:
            raise ValueError(
                f"`seed` must be an int in [0, 2**62) (or a shape-[2] integer tensor), got {seed}."
            )
        return tf.constant([seed >> 31, seed & 0x7FFFFFFF], tf.int32)
    seed = _seed_tensor(seed)
    if seed.shape.rank == 0:
        seed = tf.cast(seed, tf.int64)
        seed = tf.stack(
            [tf.bitwise.right_shift(seed, 31), tf.bitwise.bitwise_and(seed, 0x7FFFFFFF)]
        )
    elif seed.shape.rank != 1 or not seed.shape.is_compatible_with([2]):
        raise ValueError(
            f"`seed` must be an int or a stateless seed of shape [2] (or, where per-example "
            f"seeds are taken, [B, 2]); got shape {seed.shape}. Split one seed per step, "
            "e.g. with tf.random.experimental.stateless_split."
        )
    return _int32_seeds(seed)


_SEED_KINDS = (
    "`seed` must be an int, or an integer tensor of shape [2] (one stateless seed) or "
    "[B, 2] (per-example seeds)"
)


def _seed_tensor(seed) -> tf.Tensor:
    """`seed` as an integer tensor of known rank, or a TypeError/ValueError naming it."""
    _checks.check_seed(seed)
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{_SEED_KINDS}; got a bool.")
    if isinstance(seed, (str, bytes, dict)):
        raise TypeError(f"{_SEED_KINDS}; got {type(seed).__name__} {seed!r}.")
    if isinstance(seed, (tf.Tensor, tf.Variable)):
        tensor = tf.convert_to_tensor(seed)
    else:
        tensor = tf.convert_to_tensor(_seed_array(seed))
    if not tensor.dtype.is_integer:
        raise TypeError(f"{_SEED_KINDS}; got dtype {tensor.dtype.name}.")
    if tensor.shape.rank is None:
        raise ValueError(
            f"{_SEED_KINDS}; got a tensor of unknown rank: give it a static rank, e.g. "
            "tf.ensure_shape(seed, [2]) or an input_signature of shape [2]."
        )
    return tensor


def _seed_array(seed) -> np.ndarray:
    """A Python or NumPy seed as an integer array, checked before TensorFlow sees it."""
    try:
        array = np.asarray(seed)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{_SEED_KINDS}; got {type(seed).__name__} {seed!r}, which is not a rectangular "
            "array of integers."
        ) from error
    if array.dtype == object:
        leaves = array.reshape([-1]).tolist()
        if array.ndim and all(isinstance(v, int) and not isinstance(v, bool) for v in leaves):
            raise ValueError(
                f"{_SEED_KINDS}; got {seed!r}, whose components must lie in the int64 range "
                "[-2**63, 2**63)."
            )
        raise TypeError(f"{_SEED_KINDS}; got {type(seed).__name__} {seed!r}.")
    if array.size == 0:
        raise ValueError(f"{_SEED_KINDS}; got an empty seed of shape {array.shape}.")
    if array.dtype == np.bool_:
        raise TypeError(f"{_SEED_KINDS}; got a bool array.")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{_SEED_KINDS}; got {type(seed).__name__} of dtype {array.dtype}.")
    if array.dtype == np.uint64 and np.any(array >= np.uint64(2**63)):
        raise ValueError(
            f"{_SEED_KINDS}; got {seed!r}, whose components must lie in the int64 range "
            "[-2**63, 2**63)."
        )
    return array


def _int32_of_low_bits(x: tf.Tensor) -> tf.Tensor:
    """The low 32 bits of each integer as an int32 (the bits SplitMix64 reads of a seed)."""
    low = tf.math.floormod(tf.cast(x, tf.int64), 2**32)
    return tf.cast(low - tf.cast(low >= 2**31, tf.int64) * 2**32, tf.int32)


# Salts the hash of seeds outside the int32 range (the SHA-512 initial value H2).
_WIDE_SEED_SALT = 0x3C6EF372FE94F82B


def _int32_seeds(seeds: tf.Tensor) -> tf.Tensor:
    """Integer seeds [..., 2] as int32 seeds [..., 2] (see `stateless_seed`).

    A seed whose components both lie in the int32 range is itself. Any other seed is
    a hash of its two whole components: each int64 component is its low 32 bits and
    the 32 bits above them that differ from the low half's sign extension (zero
    exactly when it fits an int32), and the 64 bits of excess are mixed into the key of
    the low halves through SplitMix64's bijective finalizer.
    """
    if seeds.dtype == tf.int32:
        return seeds
    if seeds.dtype in (tf.int8, tf.int16, tf.uint8, tf.uint16):
        return tf.cast(seeds, tf.int32)
    wide = tf.cast(seeds, tf.int64)
    low = _int32_of_low_bits(wide)
    sign = tf.bitwise.right_shift(tf.cast(low, tf.int64), 31)  # 0 or -1
    excess = tf.bitwise.bitwise_and(
        tf.bitwise.bitwise_xor(tf.bitwise.right_shift(wide, 32), sign), 0xFFFFFFFF
    )
    outside = tf.reduce_any(tf.not_equal(excess, 0), axis=-1, keepdims=True)
    excess = tf.cast(excess, tf.uint64)
    packed = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(excess[..., 0], _uint64(32)), excess[..., 1]
    )
    key = _mix64(
        tf.bitwise.bitwise_xor(
            _keys(low), _mix64(tf.bitwise.bitwise_xor(packed, _uint64(_WIDE_SEED_SALT)))
        )
    )
    return tf.where(outside, _int32_pair(key), low)


def _int32_pair(key: tf.Tensor) -> tf.Tensor:
    """A uint64 key [...] as an int32 seed [..., 2]: its high and low 32 bits."""
    high = tf.bitwise.right_shift(key, _uint64(32))
    low = tf.bitwise.bitwise_and(key, _uint64(0xFFFFFFFF))
    return tf.stack([_int32_of_low_bits(high), _int32_of_low_bits(low)], axis=-1)


def is_per_example_seed(seed) -> bool:
    """Whether `seed` is a `[B, 2]` tensor of per-example seeds (rather than one seed)."""
    if seed is None or isinstance(seed, (int, bool, np.integer, np.bool_, str, bytes)):
        return False
    try:
        return _seed_tensor(seed).shape.rank == 2
    except (TypeError, ValueError):
        return False  # not a valid seed at all: `stateless_seed` says why


# SplitMix64 [1]: output i of the stream with key k is mix(k + (i + 1) * gamma), where
# gamma is the odd constant 2^64 / golden ratio and mix is the finalizer below (the
# published constants). The key is itself mix(seed), the seed's two 32-bit halves.
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))


def _uint64(value: int) -> tf.Tensor:
    return tf.constant(value, tf.uint64)


def _mix64(z: tf.Tensor) -> tf.Tensor:
    for shift, multiplier in _MIX:
        z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, _uint64(shift)))
        z = z * _uint64(multiplier)
    return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, _uint64(31)))


def _keys(seed) -> tf.Tensor:
    """SplitMix64 keys of seeds [..., 2]: each component read as its 32 bits."""
    halves = tf.cast(tf.math.floormod(tf.cast(tf.cast(seed, tf.int32), tf.int64), 2**32), tf.uint64)
    return _mix64(
        tf.bitwise.bitwise_or(tf.bitwise.left_shift(halves[..., 0], _uint64(32)), halves[..., 1])
    )


def _uint32_bits(shape, seed) -> tf.Tensor:
    """Random uint32s: the high halves of a SplitMix64 stream keyed by `seed`.

    `seed` is one seed [2], giving bits of `shape`, or seeds [B, 2], giving [B, *shape]
    whose slice b is exactly the bits of `shape` for seed b. Only integer arithmetic,
    so TensorFlow's kernels and XLA give the same bits, and `tf.vectorized_map` can
    vectorize it over a batch of seeds.
    """
    key = _keys(seed)
    shape = tf.convert_to_tensor(shape, tf.int32)
    counter = tf.reshape(tf.range(1, _num_elements(shape) + 1, dtype=tf.int64), shape)
    if key.shape.rank == 1:  # per-example keys [B] broadcast over each example's counters
        key = tf.reshape(key, tf.concat([tf.shape(key), tf.ones_like(shape)], axis=0))
    return _stream_bits(key, counter)


def _num_elements(shape) -> tf.Tensor:
    """The number of elements of `shape`, an int64: a draw of 2**31 numbers or more (K *
    B * D) counts on, where an int32 count would wrap around and repeat the stream."""
    return tf.reduce_prod(tf.cast(shape, tf.int64))


def _stream_bits(key: tf.Tensor, counter: tf.Tensor) -> tf.Tensor:
    """Output `counter` (int64, >= 1) of the SplitMix64 stream with `key`: its high 32 bits.

    The counter is read as a uint64, so every counter below 2**63 gives its own output.
    """
    bits = _mix64(key + tf.cast(counter, tf.uint64) * _uint64(_GOLDEN_GAMMA))
    return tf.cast(tf.bitwise.right_shift(bits, _uint64(32)), tf.uint32)


def _uniform(shape, seed, dtype) -> tf.Tensor:
    """float64 uniforms on (0, 1) with 24 (float32) or 52 (float64) random bits each.

    Shape `shape` for one seed, [B, *shape] for per-example seeds [B, 2].
    """
    shape = tf.convert_to_tensor(shape, dtype=tf.int32)
    if dtype == tf.float64:
        bits = _uint32_bits(tf.concat([shape, [2]], axis=0), seed)
        # 52 bits, so that the largest value plus one half stays exactly below 2^52.
        high = tf.cast(tf.bitwise.right_shift(bits[..., 0], tf.constant(6, tf.uint32)), tf.float64)
        low = tf.cast(tf.bitwise.right_shift(bits[..., 1], tf.constant(6, tf.uint32)), tf.float64)
        return (high * 2.0**26 + low + 0.5) * 2.0**-52
    bits = _uint32_bits(shape, seed)
    mantissa = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float64)
    return (mantissa + 0.5) * 2.0**-24


def _check_float(dtype) -> tf.DType:
    try:
        dtype = tf.as_dtype(dtype)
    except TypeError as error:
        raise TypeError(f"`dtype` must be tf.float32 or tf.float64, got {dtype!r}.") from error
    if dtype not in (tf.float32, tf.float64):
        raise TypeError(f"`dtype` must be float32 or float64, got {dtype.name}.")
    return dtype


def _check_shape(shape):
    """`shape` for `standard_normal`: a list of sizes (ints >= 0 or integer scalar
    tensors), a 1-D integer array or tensor, or a fully defined TensorShape."""
    if isinstance(shape, tf.TensorShape):
        if not shape.is_fully_defined():
            raise ValueError(f"`shape` must be fully defined, got {shape}.")
        return shape.as_list()
    if isinstance(shape, np.ndarray) and shape.ndim == 1 and shape.dtype.kind in "iu":
        shape = shape.tolist()
    if isinstance(shape, (tf.Tensor, tf.Variable)):
        if not shape.dtype.is_integer or shape.shape.rank != 1:
            raise TypeError(
                f"`shape` must be a list of ints or a 1-D integer tensor, got a "
                f"{shape.dtype.name} tensor of shape {shape.shape}."
            )
        value = tf.get_static_value(shape)
        if value is not None and np.any(value < 0):
            raise ValueError(f"`shape` must have sizes >= 0, got {value.tolist()}.")
        return shape
    if not isinstance(shape, (list, tuple)):
        raise TypeError(
            f"`shape` must be a list of ints or a 1-D integer tensor, got "
            f"{type(shape).__name__} {shape!r}."
        )
    for size in shape:
        if isinstance(size, (tf.Tensor, tf.Variable)) and size.dtype.is_integer:
            if size.shape.rank != 0:
                raise TypeError(
                    f"`shape` must be a list of sizes, got a size of shape {size.shape}."
                )
            continue
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
            raise TypeError(
                f"`shape` must be a list of ints, got {shape!r} (a {type(size).__name__} size)."
            )
        if not 0 <= size <= _checks.MAX_DIMENSION:
            raise ValueError(f"`shape` must have sizes in [0, 2**31), got {list(shape)}.")
    return list(shape)


def standard_normal(shape, seed, dtype=tf.float32) -> tf.Tensor:
    """Standard normal noise of `shape` that is identical with and without XLA.

    Args:
      shape: the output shape (a list or a 1-D int tensor).
      seed: a stateless seed: an int or a shape-[2] integer tensor.
      dtype: `tf.float32` or `tf.float64`. float32 draws use 24 random bits per
        number, float64 draws 52.

    Returns:
      A tensor of `shape` and `dtype`, `ndtri(u)` with `u` uniform on (0, 1).
    """
    dtype = _check_float(dtype)
    shape = _check_shape(shape)
    return _normal_of(dtype)(_uniform(shape, stateless_seed(seed), dtype))


def _noise(shape, seed, dtype, example_axis: int, transform) -> tf.Tensor:
    """transform(uniforms) of `shape`; with seeds [B, 2], slice i along `example_axis`
    comes from seed i alone (exactly the draws of that seed for the other axes)."""
    if seed.shape.rank == 1:
        return transform(_uniform(shape, seed, dtype))
    rest = tf.concat([shape[:example_axis], shape[example_axis + 1 :]], axis=0)
    noise = transform(_uniform(rest, seed, dtype))  # [B, *rest]
    rank = noise.shape.rank
    perm = [*range(1, example_axis + 1), 0, *range(example_axis + 1, rank)]
    return tf.transpose(noise, perm)


def _normal_of(dtype):
    # ndtri is evaluated in float64 even for float32 draws: XLA's float32 ndtri is less
    # accurate than TensorFlow's kernel, and the two would disagree in the tails.
    return lambda uniform: tf.cast(tf.math.ndtri(uniform), dtype)


def _logistic(uniform):
    return tf.math.log(uniform) - tf.math.log1p(-uniform)


def _gumbel(uniform):
    return -tf.math.log(-tf.math.log(uniform))


def _child_seeds(seed: tf.Tensor, index: int) -> tf.Tensor:
    """The seed of part `index` of a joint draw, from one seed [2] or seeds [B, 2].

    SplitMix64 of the parent key at a counter of its own, split into two int32s, so
    every mode derives the same child seeds.
    """
    # A salt keeps child keys away from the parent's own noise stream.
    key = tf.bitwise.bitwise_xor(_keys(seed), _uint64(0x6A09E667F3BCC909))
    return _int32_pair(_mix64(key + _uint64((index + 1) * _GOLDEN_GAMMA % 2**64)))


def _defines(cls: type, method: str, owner: type) -> bool:
    """Whether `cls` inherits `method` from `owner` (i.e. does not override it)."""
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
            eps = _noise(shape, seed, d.dtype, example_axis, _normal_of(d.dtype))
            return d.loc + d.scale * eps

        return normal

    if type(d) is tfd.Bernoulli:

        def bernoulli(sample_shape, seed, example_axis):
            logits = d.logits_parameter()
            shape = tf.concat([sample_shape, tf.shape(logits)], axis=0)
            # A logistic variable u -> log u - log(1 - u) is below l with probability
            # sigmoid(l); compared in float64 so that every mode draws the same bits.
            logistic = _noise(shape, seed, logits.dtype, example_axis, _logistic)
            return tf.cast(logistic < tf.cast(logits, tf.float64), d.dtype)

        return bernoulli

    if type(d) in (tfd.Categorical, tfd.OneHotCategorical):

        def categorical(sample_shape, seed, example_axis):
            logits = d.logits_parameter()
            shape = tf.concat([sample_shape, tf.shape(logits)], axis=0)
            # Gumbel-max: argmax(logits + Gumbel noise) is a draw of the categorical.
            gumbel = _noise(shape, seed, logits.dtype, example_axis, _gumbel)
            index = tf.argmax(tf.cast(logits, tf.float64) + gumbel, axis=-1, output_type=tf.int32)
            if type(d) is tfd.OneHotCategorical:
                return tf.one_hot(index, tf.shape(logits)[-1], dtype=d.dtype)
            return tf.cast(index, d.dtype)

        return categorical

    if isinstance(d, tfd.Independent) and _defines(type(d), "_sample_n", _INDEPENDENT):
        return _sampler(d.distribution)

    if isinstance(d, tfd.Sample) and _defines(type(d), "_sample_n", _SAMPLE):
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

    if isinstance(d, tfd.TransformedDistribution) and _defines(
        type(d), "_call_sample_n", _TRANSFORMED
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


def sample(q: tfd.Distribution, num_samples: int, seed):
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
      q: a distribution; see the module docstring for the families sampled stably.
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
    _checks.check_is_distribution(q)
    num_samples = _checks.check_count("num_samples", num_samples, maximum=_checks.MAX_DIMENSION)
    _checks.check_float_dtypes(q)
    # From q's static shapes only: refused before any tensor is made (no draw changes).
    limits.check_sample_memory(q, num_samples)
    seed = _seed_for(q, seed)
    if _checks.is_joint(q):
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
    event_ranks = [shape.rank for shape in q._model_flatten(q.event_shape)]
    model = q._model_coroutine()  # yields each part given the values sent back
    values = []
    try:
        part = next(model)
        while True:
            if isinstance(part, tfd.JointDistributionCoroutine.Root):
                part = part.distribution
            index = len(values)
            values.append(
                _sample_part(part, num_samples, _child_seeds(seed, index), event_ranks[index])
            )
            part = model.send(values[-1])
    except StopIteration:
        pass
    return q._model_unflatten(values)


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
    seed = _assert_one_seed_per_example(seed, part, leading - 1)
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


def _seed_for(q: tfd.Distribution, seed) -> tf.Tensor:
    """One int32 seed [2] or per-example int32 seeds [B, 2] for sampling q."""
    if isinstance(seed, (int, np.integer)):
        return stateless_seed(seed)
    tensor = _seed_tensor(seed)
    if tensor.shape.rank == 2:
        return _per_example_seeds(tensor, q)
    return stateless_seed(tensor)


def _per_example_seeds(seed: tf.Tensor, q: tfd.Distribution) -> tf.Tensor:
    """Checks [B, 2] per-example seeds against q's batch shape [B] (every part's, for a
    joint q), statically or, where B is not static, at run time; returns them as int32."""
    batch_shapes = _checks._flat_shapes(q.batch_shape)
    if any(s.rank != 1 for s in batch_shapes) or not seed.shape[1:].is_compatible_with([2]):
        raise ValueError(
            f"Per-example seeds (a `seed` of shape [B, 2]) need a q of batch shape [B]; got "
            f"seed shape {seed.shape} and q batch shape {q.batch_shape}."
        )
    if not all(seed.shape[:1].is_compatible_with(s) for s in batch_shapes):
        raise ValueError(
            f"Per-example seeds (a `seed` of shape [B, 2]) of shape {seed.shape} do not match "
            f"q's batch shape {q.batch_shape}: give one seed per data point, shape [B, 2]."
        )
    if not _checks.is_joint(q):  # a joint q's parts are checked as they are drawn
        seed = _assert_one_seed_per_example(seed, q, 0)
    return _int32_seeds(seed)


def _assert_one_seed_per_example(seed: tf.Tensor, d: tfd.Distribution, axis: int):
    """Per-example seeds [B', 2], checked at run time against the size of `d`'s batch
    axis `axis` where either is not static: a mismatch would broadcast silently (B' = 1)
    or fail inside TensorFlow."""
    if seed.shape.rank != 2:
        return seed
    static = d.batch_shape[axis] if d.batch_shape.rank is not None else None
    if seed.shape[0] is not None and static is not None:
        return seed
    size = d.batch_shape_tensor()[axis]
    check = tf.debugging.assert_equal(
        tf.shape(seed, out_type=size.dtype)[0],
        size,
        message=(
            "Per-example seeds (a `seed` of shape [B, 2]) do not match q's batch size: give "
            "one seed per data point, shape [B, 2] (below: the number of seeds, then B)."
        ),
    )
    return _checks.with_assertion(check, seed)
