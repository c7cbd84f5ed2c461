"""Argument checks shared by the objectives: each raises before any graph is traced."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _compat

tfd = tfp.distributions

__all__ = [
    "MAX_DIMENSION",
    "batch_size_assertion",
    "bind_log_joint",
    "call_log_joint",
    "check_count",
    "check_distribution",
    "check_float_dtypes",
    "check_is_distribution",
    "check_log_joint",
    "check_log_joint_output",
    "check_seed",
    "check_unit_interval",
    "flat_shapes",
    "is_joint",
    "leaf_names",
    "leaf_paths",
    "log_prob",
    "per_leaf",
    "with_assertion",
]

# The largest number of samples along one axis: shapes are int32 tensors.
MAX_DIMENSION = 2**31 - 1


def check_count(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """Returns `value` as an int, or raises if it is not an integer in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be a Python int >= {minimum}, got {value!r} of type "
            f"{type(value).__name__}; pass a plain integer such as {name}={max(minimum, 8)}."
        )
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        bound = (
            "2**31 - 1, the largest size of a tensor axis" if maximum == MAX_DIMENSION else maximum
        )
        raise ValueError(f"`{name}` must be at most {bound}; got {value}.")
    return int(value)


def check_unit_interval(name: str, value, *, open_interval: bool = False) -> float:
    """Returns `value` as a float, or raises if it is not a real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a Python float in [0, 1], got {value!r} of type "
            f"{type(value).__name__}."
        )
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must lie in [0, 1], got {value}.")
    if open_interval and value in (0.0, 1.0):
        raise ValueError(
            f"`{name}` must lie strictly inside (0, 1) here, got {value}: a learnable "
            "value is kept in (0, 1) by a sigmoid, which cannot start at an endpoint."
        )
    return value


def is_joint(q) -> bool:
    """Whether `q` is a TFP JointDistribution (structured samples)."""
    return isinstance(q, tfd.JointDistribution)


def leaf_names(q) -> list[str]:
    """A name for each leaf of q's samples, in `tf.nest.flatten` order."""
    if not is_joint(q):
        return [q.name]
    flat = _compat.flat_resolve_names(q)  # TFP's names, in the model's order
    # tf.nest orders dict leaves by sorted key, JointDistributionNamed by its model.
    order = tf.nest.flatten(_compat.model_unflatten(q, list(range(len(flat)))))
    return [flat[i] for i in order]


def leaf_paths(structure, count: int) -> list[str]:
    """A name per leaf ("z1", "0", "layer/z2"), in `tf.nest.flatten` order."""

    def walk(item, prefix):
        if isinstance(item, Mapping):
            for key in sorted(item):  # tf.nest's order
                yield from walk(item[key], [*prefix, str(key)])
        elif isinstance(item, tuple) and hasattr(item, "_fields"):
            for key, value in zip(item._fields, item, strict=True):
                yield from walk(value, [*prefix, key])
        elif isinstance(item, (list, tuple)):
            for index, value in enumerate(item):
                yield from walk(value, [*prefix, str(index)])
        else:
            yield "/".join(prefix)

    paths = list(walk(structure, []))
    return paths if len(paths) == count else [str(i) for i in range(count)]


def flat_shapes(structure) -> list:
    """The TensorShapes of a (nested) shape structure, in `tf.nest.flatten` order."""
    if isinstance(structure, tf.TensorShape):
        return [structure]
    if isinstance(structure, dict):
        return [s for key in sorted(structure) for s in flat_shapes(structure[key])]
    if isinstance(structure, (list, tuple)):
        return [s for item in structure for s in flat_shapes(item)]
    return [structure]


def per_leaf(values: list, num_leaves: int) -> list:
    """One value per leaf: an AutoBatched joint reports one batch shape (and one
    reparameterization type) for all its leaves."""
    return values * num_leaves if len(values) == 1 else values


_EMPTY_BATCH = (
    "{what} has batch size 0: {objective} averages over the data points of the batch, "
    "and the mean of none is NaN. Skip empty batches (e.g. batch a data set with "
    "drop_remainder=True, or filter out batches of size 0)."
)


def _what(q) -> str:
    return f"`q` ({q.name})" if not is_joint(q) else "`q`"


def check_is_distribution(q) -> None:
    """Checks that `q` is a TFP distribution (an instance, not a class)."""
    if isinstance(q, tfd.Distribution):
        return
    if isinstance(q, type):
        got = f"the class {q.__name__} itself (a type), not a distribution built from it"
    else:
        got = type(q).__name__
    raise TypeError(
        f"`q` must be a tfp.distributions.Distribution, got {got}; build q(z|x) from the "
        "encoder's outputs, e.g. tfd.Independent(tfd.Normal(loc, scale), "
        "reinterpreted_batch_ndims=1), or a tfd.JointDistribution* for structured latents."
    )


def check_float_dtypes(q) -> None:
    """Refuses a q whose continuous leaves are not float32 or float64 (float16, bfloat16)."""
    for n, d in zip(leaf_names(q), tf.nest.flatten(q.dtype), strict=True):
        if d.is_floating and d not in (tf.float32, tf.float64):
            leaf = f"Leaf '{n}' of `q`" if is_joint(q) else f"`q` ({q.name})"
            raise TypeError(
                f"{leaf} has dtype {d.name}; mcobjectives samples and scores q in float32 "
                "or float64. Under mixed precision the networks compute in float16 (or "
                "bfloat16) but must emit float32 distributions (e.g. the encoder's last layer with "
                "dtype='float32', or tf.cast its outputs to tf.float32 before building q): "
                "samples and log-probs stay float32."
            )


def batch_size_assertion(q, objective: str, z):
    """A run-time check that q's batch is not empty, where its size is not static.

    `check_distribution` refuses a batch of static size 0; a batch whose size is known
    only at run time (a `tf.function` traced for a dynamic batch) gets this assertion on
    the samples z (leaves [S, B, ...]), or None when there is nothing to check. (Under
    XLA TensorFlow drops assertions.)
    """
    shapes = flat_shapes(q.batch_shape)
    if any(s.rank == 1 and s[0] is not None for s in shapes):
        return None
    size = tf.shape(tf.nest.flatten(z)[0])[1]
    return tf.debugging.assert_positive(
        size, message=_EMPTY_BATCH.format(what=_what(q), objective=objective)
    )


def with_assertion(assertion, structure):
    """`structure` (a nest of tensors) made to depend on `assertion` (if not None)."""
    if assertion is None:
        return structure
    with tf.control_dependencies([assertion]):
        return tf.nest.map_structure(tf.identity, structure)


def check_distribution(
    q, *, objective: str, needs_reparameterization: bool, allow_empty: bool = False
) -> None:
    """Checks the inference distribution q(z|x) handed to an objective.

    q is a single distribution or a JointDistribution; every leaf must have batch
    shape [B] (the same B, not a static 0 unless `allow_empty`), the continuous leaves
    one float dtype, float32 or float64, and, when the objective differentiates
    through z, every leaf must be continuous and fully reparameterized.
    """
    check_is_distribution(q)
    if isinstance(q, tfd.TransformedDistribution) and tf.nest.is_nested(q.dtype):
        raise ValueError(
            f"`q` ({q.name}) is a TransformedDistribution of a joint distribution, which "
            "mcobjectives does not sample part by part: put each bijector inside its part "
            "of the JointDistribution instead (e.g. tfd.TransformedDistribution(part, "
            "tfb.Softplus()) as that part)."
        )
    names = leaf_names(q)
    dtypes = tf.nest.flatten(q.dtype)
    what = _what(q)
    floats = {d.name for d in dtypes if d.is_floating}
    if len(floats) > 1:
        listing = ", ".join(f"'{n}': {d.name}" for n, d in zip(names, dtypes, strict=True))
        raise TypeError(
            f"The continuous leaves of {what} mix float dtypes ({listing}): build every part "
            "of q in one dtype."
        )
    for n, d in zip(names, dtypes, strict=True):
        if not (d.is_floating or d.is_integer or d == tf.bool):
            raise TypeError(f"Leaf '{n}' of {what} has dtype {d.name}: expected float or int.")
    check_float_dtypes(q)

    batch_shapes = per_leaf(flat_shapes(q.batch_shape), len(names))
    batch_rank = {s.rank for s in batch_shapes}
    if batch_rank != {1}:
        hint = ""
        rank = max((r for r in batch_rank if r is not None), default=None)
        if not is_joint(q) and rank is not None and rank > 1:
            hint = (
                " If the trailing batch dimensions are latent dimensions, wrap it: "
                f"tfd.Independent(q, reinterpreted_batch_ndims={rank - 1})."
            )
        if is_joint(q):
            listing = ", ".join(f"'{n}': {s}" for n, s in zip(names, batch_shapes, strict=True))
            hint = (
                f" Per-leaf batch shapes: {listing}; wrap each part's latent dimensions in "
                "tfd.Independent (or use an AutoBatched joint with batch_ndims=1)."
            )
        raise ValueError(
            f"{what} must have batch shape [B], one distribution per data point, got "
            f"batch shape {q.batch_shape}.{hint}"
        )
    sizes = {s[0] for s in batch_shapes if s[0] is not None}
    if len(sizes) > 1:
        listing = ", ".join(f"'{n}': {s}" for n, s in zip(names, batch_shapes, strict=True))
        raise ValueError(
            f"The leaves of {what} disagree on the batch size ({listing}): every part of q "
            "must have batch shape [B], the same data points."
        )
    if sizes == {0} and not allow_empty:
        raise ValueError(_EMPTY_BATCH.format(what=what, objective=objective))

    if needs_reparameterization:
        types = per_leaf(tf.nest.flatten(q.reparameterization_type), len(names))
        for n, d, t in zip(names, dtypes, types, strict=True):
            if not d.is_floating or t != tfd.FULLY_REPARAMETERIZED:
                if d.is_floating:
                    kind = f"not fully reparameterized (reparameterization_type={t})"
                else:
                    kind = f"discrete ({d.name})"
                raise ValueError(
                    f"{objective} differentiates through the samples z ~ q, but leaf '{n}' "
                    f"of {what} is {kind}. Use a reparameterized family such as Normal, "
                    "MultivariateNormalTriL or a TransformedDistribution of one, or an "
                    "objective whose inference update needs only log q (RWS, VIMCO)."
                )


def log_prob(q, z) -> tf.Tensor:
    """log q(z), [S, B]. For a joint q, the sum of its parts' log densities, which must
    share one dtype (a Bernoulli leaf with float32 logits beside a float64 Normal leaf
    would otherwise fail deep inside TFP)."""
    if not is_joint(q):
        return q.log_prob(z)
    parts = tf.nest.flatten(q.log_prob_parts(z))
    if len({part.dtype for part in parts}) > 1:
        listing = ", ".join(
            f"'{n}': {part.dtype.name}" for n, part in zip(leaf_names(q), parts, strict=True)
        )
        raise TypeError(
            f"The parts of `q` give log densities in different dtypes ({listing}): build "
            "every part of q (including a discrete part's logits) in one float dtype."
        )
    return functools.reduce(tf.add, parts)


def bind_log_joint(log_joint, q):
    """`log_joint` made ready for samples of `q`, before anything is traced.

    A log joint that knows its pieces (one made by `mcobjectives.make_log_joint`, or the
    Keras model's) checks them against q here and may return a version of itself that
    pairs its prior's parts with q's; any other callable is returned as it is.
    """
    bind = getattr(type(log_joint), "_bind_to", None)
    return log_joint if bind is None else bind(log_joint, q)


def check_log_joint(log_joint) -> None:
    """Checks that `log_joint` is a callable z -> log p(x, z)."""
    if not callable(log_joint):
        raise TypeError(
            f"`log_joint` must be a callable z -> log p(x, z), got "
            f"{type(log_joint).__name__}; see mcobjectives.make_log_joint."
        )


def check_seed(seed) -> None:
    """Checks that a stateless seed was given (`mcobjectives.sampling` checks the rest)."""
    if seed is None:
        raise TypeError(
            "`seed` is required: pass an int or a shape-[2] integer tensor (a stateless "
            "seed); split a fresh one per step, e.g. with "
            "tf.random.experimental.stateless_split."
        )


# The float dtypes a model may compute in, tried in this order when it fails on q's samples.
_FLOAT_DTYPES = (tf.float32, tf.float64, tf.float16, tf.bfloat16)


def _model_dtype(log_joint, z, q_dtype: tf.DType) -> tf.DType | None:
    """The float dtype other than q's in which `log_joint` accepts z, or None.

    Called only after `log_joint(z)` failed: z's continuous leaves are cast to each other
    float dtype in turn, and the first dtype for which the call succeeds is the one the
    model computes in. This reads what the model does, not the wording of TensorFlow's
    error, which differs between eager kernels, graph construction and TFP.
    """
    for dtype in _FLOAT_DTYPES:
        if dtype == q_dtype:
            continue
        cast = tf.nest.map_structure(
            lambda leaf, d=dtype: tf.cast(leaf, d) if leaf.dtype.is_floating else leaf, z
        )
        try:
            log_joint(cast)
        except Exception:  # any failure: the model does not compute in this dtype either
            continue
        return dtype
    return None


def call_log_joint(log_joint, z, log_q: tf.Tensor):
    """`log_joint(z)`; a model computing in another float dtype than q (which fails
    inside TensorFlow, on z) is reported as such, with both dtypes and the fix.

    Only where the call fails, and succeeds on z cast to another float dtype, is the error
    rewritten (chained to the original); any other error of `log_joint` is raised as it is.
    """
    try:
        return log_joint(z)
    except (TypeError, ValueError, tf.errors.InvalidArgumentError) as error:
        if not any(leaf.dtype.is_floating for leaf in tf.nest.flatten(z)):
            raise
        other = _model_dtype(log_joint, z, log_q.dtype)
        if other is None:
            raise
        if other in (tf.float16, tf.bfloat16):
            raise TypeError(
                f"`log_joint` failed on samples z of q's dtype {log_q.dtype.name}: the model "
                f"seems to compute in {other.name} (TensorFlow said: {error}). Under a mixed "
                "precision policy the networks compute in half precision but must emit "
                "float32 distributions: cast the decoder's (and prior's) outputs, e.g. the "
                "logits, to tf.float32 before building the distribution."
            ) from error
        raise TypeError(
            f"`log_joint` failed on samples z of q's dtype {log_q.dtype.name}: the model "
            f"seems to compute in {other.name} (TensorFlow said: {error}). q and "
            "the model must be built in the same dtype: build q(z|x) in the model's dtype "
            f"(e.g. tf.cast the encoder's outputs to tf.{other.name}) or the model in q's, "
            f"so that log p(x, z) comes out in {log_q.dtype.name} like log q(z|x)."
        ) from error


def check_log_joint_output(log_p, log_q: tf.Tensor, num_samples: int) -> tf.Tensor:
    """Checks log p(x, z) returned for `num_samples` draws: shape [S, B], log q's dtype.

    Where the batch size is known only at run time, a run-time assertion checks it, so
    that an output of batch size 1 does not broadcast silently.
    """
    if isinstance(log_p, tfd.Distribution):
        raise TypeError(
            f"`log_joint` returned a distribution ({type(log_p).__name__}), not log p(x, z): "
            "return its log_prob, e.g. lambda z: likelihood(z).log_prob(x) + prior.log_prob(z), "
            "a tensor of shape [num_samples, batch]."
        )
    if not isinstance(log_p, (tf.Tensor, tf.Variable)) and not hasattr(log_p, "dtype"):
        raise TypeError(
            f"`log_joint` must return a tensor of shape [num_samples, batch], got "
            f"{type(log_p).__name__}."
        )
    log_p = tf.convert_to_tensor(log_p)
    if log_p.dtype != log_q.dtype:
        raise TypeError(
            f"`log_joint` returned {log_p.dtype.name} but log q(z|x) is {log_q.dtype.name}: "
            "build the model and q in the same dtype."
        )
    expected = tf.TensorShape([num_samples]).concatenate(log_q.shape[1:])

    def message(shape) -> str:
        return (
            f"`log_joint` returned shape {shape}, expected [num_samples, batch] = {expected}: "
            "log p(x, z) must sum over the event dimensions of x and of every latent leaf "
            "(e.g. wrap per-dimension distributions in tfd.Independent) and keep the sample "
            "and batch axes."
        )

    if not log_p.shape.is_compatible_with(expected):
        raise ValueError(message(log_p.shape))
    log_p = tf.ensure_shape(log_p, expected)
    if expected.is_fully_defined():
        return log_p
    check = tf.debugging.assert_equal(
        tf.shape(log_p), tf.shape(log_q), message=message("[S, B'] (below, then log q's [S, B])")
    )
    return with_assertion(check, log_p)
