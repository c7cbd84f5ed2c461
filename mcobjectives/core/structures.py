"""Where the model's pieces meet: a joint prior paired with a joint q by name, and shapes.

A log joint that knows its pieces (`mcobjectives.make_log_joint`'s, the Keras model's)
is bound to q by `checks.bind_log_joint` before anything is traced. Binding checks the
pieces against q once, in Python, on static shapes, and decides how the prior's parts
meet q's (`pair_prior`): a static rearrangement of z's structure, no op at all, and
none when the order already matches.

Names. A part of a `JointDistribution` has a name when the user gave one: a key of a
`JointDistributionNamed` (or its AutoBatched form), an argument name by which a later
part of a `JointDistributionSequential` refers to it (`lambda z2: ...` names the part
before it "z2"), or an explicit `name=` of the part's distribution (Sequential,
Coroutine). The names TFP makes up for the other parts ("x", "x1", "var0", ...) are no
names. A joint q and a joint prior whose every part has a name are paired by name,
whatever the order and the container (a dict q with a list prior in generative order);
otherwise their structures must match exactly (the same containers, the same number of
parts) and are paired by position, but never where two parts at the same position have
different names. Anything else is refused with both structures in the message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _compat
from mcobjectives.core import checks

tfd = tfp.distributions

__all__ = [
    "BindableLogJoint",
    "Parts",
    "batch_size",
    "check_batch_shape",
    "check_likelihood",
    "check_log_prob_shape",
    "check_observations",
    "check_prior_batch",
    "describe",
    "fmt",
    "observations_assertion",
    "pair_prior",
    "parts",
    "static_shape",
]

# The prefix of the names TFP makes up for unnamed parts, when we ask it to: no user
# name starts with a NUL character.
_MADE_UP = "\x00unnamed"


@dataclasses.dataclass(frozen=True)
class Parts:
    """The leaves of a distribution's samples, in `tf.nest.flatten` order.

    names: each leaf's user-given name, or None (a single distribution, or a part whose
      name TFP made up); event_shapes and batch_shapes: one TensorShape per leaf.
    model_names: the names in the order of the joint's model (`_model_unflatten`'s), or
      None where a name is missing.
    """

    names: list
    event_shapes: list
    batch_shapes: list
    model_names: list | None
    joint: bool

    def fully_named(self) -> bool:
        """Whether this is a joint whose every part has a user-given name."""
        return self.joint and None not in self.names and self.model_names is not None


def _resolved_names(dist) -> list | None:
    """TFP's names for the parts in model order, None for made-up ones (or None if unreadable)."""
    try:
        if isinstance(dist, _compat.JOINT_DISTRIBUTION_NAMED):
            names = list(_compat.flat_resolve_names(dist))  # the keys: always the user's
        elif isinstance(dist, _compat.JOINT_DISTRIBUTION_SEQUENTIAL):
            names = list(_compat.flat_resolve_names(dist, leaf_name=_MADE_UP))
        else:  # Coroutine and its AutoBatched form
            names = list(_compat.flat_resolve_names(dist, dummy_name=_MADE_UP))
    except (TypeError, AttributeError):  # a JointDistribution of another kind
        return None
    return [None if n.startswith(_MADE_UP) else n for n in names]


def parts(dist) -> Parts:
    """The leaves of `dist`'s samples: names, event and batch shapes (see `Parts`)."""
    event = checks.flat_shapes(dist.event_shape)
    batch = checks.per_leaf(checks.flat_shapes(dist.batch_shape), len(event))
    if not checks.is_joint(dist):
        return Parts([None] * len(event), event, batch, None, joint=False)
    model_names = _resolved_names(dist)
    names = [None] * len(event)
    if model_names is not None and len(model_names) == len(event):
        # tf.nest orders dict leaves by sorted key, a JointDistributionNamed by its model.
        order = tf.nest.flatten(_compat.model_unflatten(dist, list(range(len(model_names)))))
        names = [model_names[i] for i in order]
    else:  # parts that are themselves joint: more leaves than parts, no names
        model_names = None
    if model_names is not None and None in model_names:
        model_names = None
    return Parts(names, event, batch, model_names, joint=True)


def _container(dist) -> tuple[str, str]:
    if not checks.is_joint(dist):
        return "", ""
    return ("{", "}") if isinstance(dist.dtype, dict) else ("[", "]")


def describe(dist, p: Parts | None = None) -> str:
    """`dist`'s structure in words: its class and each leaf's name and event shape."""
    p = parts(dist) if p is None else p
    kind = type(dist).__name__
    if not p.joint:
        shapes = ", ".join(fmt(s) for s in p.event_shapes)
        return f"{kind} (a single distribution) with event shape {shapes}"
    entries = []
    for i, (n, s) in enumerate(zip(p.names, p.event_shapes, strict=True)):
        label = repr(n) if n is not None else f"part {i} (no name)"
        entries.append(f"{label}: {fmt(s)}")
    open_, close = _container(dist)
    return f"{kind} {open_}{', '.join(entries)}{close}"


def _refuse(q, prior, piece: str, why: str, fix: str):
    raise ValueError(
        f"`{piece}` and `q` do not have the same latent parts: {why}. q(z|x) is "
        f"{describe(q)}; `{piece}` is {describe(prior)}. {fix}"
    )


_NAME_FIX = (
    "Give every part of both a name (the keys of a JointDistributionNamed, the argument "
    "names of a JointDistributionSequential's lambdas, or name= on each part's "
    "distribution) and the same names in both: they are then paired by name in any "
    "order; without names their structures must be the same, in the same order."
)


def pair_prior(q, prior, piece: str = "prior") -> Callable | None:
    """How z, in q's structure, becomes the value the prior scores; None: z itself.

    Pairs a joint prior's parts with a joint q's by name where both have names (see the
    module docstring), else by position where the structures are the same; refuses
    otherwise with both structures in the message. Then checks that each of the prior's
    leaves has the event shape of the q leaf it scores. Static: the returned function
    only regroups z's leaves.

    Raises:
      ValueError: naming `piece`, with both structures, where they cannot be paired or
        a leaf's event shapes differ.
    """
    qp, pp = parts(q), parts(prior)
    pair = None
    if qp.joint != pp.joint or len(qp.names) != len(pp.names):
        if not qp.joint:
            why = "q is a single distribution and the prior is a joint one"
        elif not pp.joint:
            why = (
                f"q is a joint distribution of {len(qp.names)} parts and the prior is a single one"
            )
        else:
            why = f"q has {len(qp.names)} latent leaves and the prior {len(pp.names)}"
        _refuse(
            q,
            prior,
            piece,
            why,
            "Write the prior over the same latent variables as q (a JointDistribution "
            "with one part per part of q, or a single distribution for a single q).",
        )
    index = list(range(len(qp.names)))  # index[i]: the q leaf that prior leaf i scores
    if qp.joint and qp.fully_named() and pp.fully_named():
        if set(qp.names) != set(pp.names):
            only_q = sorted(set(qp.names) - set(pp.names))
            only_p = sorted(set(pp.names) - set(qp.names))
            _refuse(
                q,
                prior,
                piece,
                f"their names differ (only in q: {only_q}; only in the prior: {only_p})",
                "Name each part of the prior as the part of q over the same latent variable.",
            )
        index = [qp.names.index(n) for n in pp.names]
        same = _same_structure(q.dtype, prior.dtype) and qp.names == pp.names
        if not same:
            order = [qp.names.index(n) for n in pp.model_names]

            def pair(z, order=order, prior=prior):
                leaves = tf.nest.flatten(z)
                return _compat.model_unflatten(prior, [leaves[i] for i in order])

    elif qp.joint:
        if not _same_structure(q.dtype, prior.dtype):
            _refuse(
                q,
                prior,
                piece,
                "their structures differ and not every part has a name to pair them by",
                _NAME_FIX,
            )
        for i, (a, b) in enumerate(zip(qp.names, pp.names, strict=True)):
            if a is not None and b is not None and a != b:
                _refuse(
                    q,
                    prior,
                    piece,
                    f"leaf {i} is named {a!r} in q but {b!r} in the prior, and not every "
                    "part has a name to pair them by",
                    _NAME_FIX,
                )
    for i, j in enumerate(index):
        expected, got = qp.event_shapes[j], pp.event_shapes[i]
        if not got.is_compatible_with(expected):
            leaf = f" leaf {pp.names[i]!r}" if pp.names[i] is not None else ""
            leaf = leaf or (f" leaf {i}" if pp.joint else "")
            raise ValueError(
                f"`{piece}`{leaf} has event shape {fmt(got)} but q's samples{leaf and ' there'} "
                f"have event shape {fmt(expected)}: p(z) must score z's whole event. (A "
                "distribution over single coordinates, event shape [], is made one over "
                "the vector by tfd.Independent(..., reinterpreted_batch_ndims=1).) "
                f"q(z|x) is {describe(q, qp)}; `{piece}` is {describe(prior, pp)}."
            )
    return pair


def _same_structure(a, b) -> bool:
    """The same containers (a mapping with the same keys, or a sequence of the same
    length), leaf for leaf; a list and a tuple (or a StructTuple) count as the same."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            return False
        return all(_same_structure(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
            return False
        return len(a) == len(b) and all(_same_structure(u, v) for u, v in zip(a, b, strict=True))
    return True


def fmt(shape) -> str:
    """A shape as a list, [S, B, 784] ('?' for an unknown dimension)."""
    shape = tf.TensorShape(shape)
    if shape.rank is None:
        return "<unknown rank>"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape.as_list()) + "]"


def batch_size(q) -> int | None:
    """q's static batch size B, or None where it is known only at run time."""
    sizes = {s[0] for s in parts(q).batch_shapes if s.rank == 1 and s[0] is not None}
    return sizes.pop() if len(sizes) == 1 else None


def check_prior_batch(prior, q, piece: str = "prior", allowed: str = "[] or [B]") -> None:
    """A prior scored on z [S, B, ...] has batch shape [] or [B] (B: q's batch size).

    With `allowed="[]"` (a prior layer built once for flat latents [S*B, ...]) only []
    is accepted. A batch of 1 beside B > 1 would broadcast one data point's prior over
    the batch, and one of [S, B] would not be a prior over z: both are refused.
    """
    size = batch_size(q)
    pp = parts(prior)
    for i, shape in enumerate(pp.batch_shapes):
        if shape.rank is None or shape.rank == 0:
            continue
        ok = allowed != "[]" and shape.rank == 1 and (size is None or shape[0] in (None, size))
        if ok:
            continue
        leaf = f" (leaf {pp.names[i]!r})" if pp.names[i] is not None else ""
        if allowed == "[]":
            expected = (
                "[]: a prior layer called as prior() is one p(z) for every sample and data point"
            )
        else:
            expected = (
                f"[] or [B] = [{'B' if size is None else size}] (q's batch): one p(z) for "
                "all data points, or one per data point of q's batch"
            )
        raise ValueError(
            f"`{piece}`{leaf} has batch shape {fmt(shape)}; expected {expected}. Latent "
            "dimensions in the batch shape go into the event with tfd.Independent; the "
            "sample axis is not part of the prior, and a prior of batch size 1 is not "
            "broadcast over q's batch."
        )


def static_shape(x) -> tf.TensorShape:
    """x's static shape (a tensor's, an array's, or a nested list's)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    return tf.TensorShape(shape)


def check_observations(x, q, piece: str = "observations") -> None:
    """x's leading (batch) dimension is q's batch size B where both are static."""
    size = batch_size(q)
    for leaf in tf.nest.flatten(x):
        shape = static_shape(leaf)
        if shape.rank == 0:
            raise ValueError(
                f"`{piece}` is a scalar; expected x of shape [B, ...], one row per data point "
                "of q's batch."
            )
        if shape.rank is None or shape[0] is None or size is None:
            continue
        if shape[0] != size:
            raise ValueError(
                f"`{piece}` has batch size {shape[0]} (shape {fmt(shape)}) but q(z|x) has batch "
                f"size {size}: x and q must hold the same data points, one row of x per "
                "distribution of q's batch (x is never broadcast over q's batch). Build q "
                "from the same batch x."
            )


def observations_assertion(x, z, piece: str = "observations"):
    """A run-time check that x's batch size is z's [S, B, ...] B, where either is dynamic."""
    zleaf = tf.nest.flatten(z)[0]
    zshape = static_shape(zleaf)
    checks = []
    for leaf in tf.nest.flatten(x):
        shape = static_shape(leaf)
        if shape.rank in (None, 0):
            continue
        if shape[0] is not None and (zshape.rank or 0) >= 2 and zshape[1] is not None:
            if shape[0] != zshape[1]:
                raise ValueError(
                    f"`{piece}` has batch size {shape[0]} (shape {fmt(shape)}) but the samples z "
                    f"have batch size {zshape[1]} (leaf shape {fmt(zshape)}, [S, B, "
                    "...]): x and q must hold the same data points (x is never broadcast)."
                )
            continue
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(leaf)[0],
                tf.shape(zleaf)[1],
                message=f"`{piece}` has another batch size than q (the B of z [S, B, ...])",
            )
        )
    return checks


def check_log_prob_shape(log_prob, expected: tf.TensorShape, piece: str, what: str) -> None:
    """A piece's log-probability has the shape of the log joint's terms, [S, B]."""
    shape = getattr(log_prob, "shape", None)
    if shape is None:
        return
    if not tf.TensorShape(shape).is_compatible_with(expected):
        raise ValueError(
            f"`{piece}`'s {what} has shape {fmt(shape)}, expected [S, B] = {fmt(expected)}: "
            "each term of log p(x, z) is one number per sample and data point. Check its "
            "batch and event shapes (wrap per-dimension distributions in tfd.Independent)."
        )


def check_batch_shape(dist, expected: tf.TensorShape, piece: str, about: str) -> None:
    """`dist`'s batch shape (each leaf's, for a joint) is `expected` where both are known."""
    for shape in checks.flat_shapes(dist.batch_shape):
        if shape.rank is None:
            continue
        if not shape.is_compatible_with(expected):
            raise ValueError(
                f"`{piece}` returned a distribution of batch shape {fmt(shape)}; expected "
                f"{fmt(expected)} ({about}). Dimensions of x belong to the event: wrap "
                "per-dimension distributions in tfd.Independent(..., "
                "reinterpreted_batch_ndims=...)."
            )


def check_likelihood(dist, x, piece: str, batch: tf.TensorShape, about: str, example: str) -> None:
    """What the likelihood (or decoder) returned: a distribution with x's event shape.

    Args:
      dist: what it returned.
      x: the observations, [B or S*B, *x_event].
      batch: its expected batch shape ([S, B], or [S*B] for the Keras decoder).
      about: what that batch shape is, in words.
      example: a fix to show.
    """
    if not isinstance(dist, tfd.Distribution):
        got = type(dist).__name__
        if isinstance(dist, (tf.Tensor, tf.Variable)) or hasattr(dist, "dtype"):
            got = f"a tensor ({got} of shape {fmt(getattr(dist, 'shape', None))})"
        raise TypeError(
            f"`{piece}` must return p(x|z), a tfp.distributions.Distribution over x, but "
            f"returned {got}. Wrap its output in a distribution, e.g. {example}; "
            "mcobjectives takes its log_prob of x."
        )
    x_events = [static_shape(leaf)[1:] for leaf in tf.nest.flatten(x)]
    events = checks.flat_shapes(dist.event_shape)
    if len(events) != len(x_events):
        raise ValueError(
            f"`{piece}` returned a distribution over {len(events)} leaves but x has "
            f"{len(x_events)}."
        )
    for got, expected in zip(events, x_events, strict=True):
        if got.rank is None or expected.rank is None:
            continue
        if not got.is_compatible_with(expected):
            hint = ""
            if got.is_fully_defined() and expected.is_fully_defined():
                if got.num_elements() == expected.num_elements() and got.rank < expected.rank:
                    hint = (
                        f" x's data points hold as many numbers as the event: flatten x to "
                        f"[B, {', '.join(map(str, got.as_list()))}] (as the encoder reads it)."
                    )
            raise ValueError(
                f"`{piece}` returned a distribution of event shape {fmt(got)}, but x's event "
                f"shape (its shape without the batch axis) is {fmt(expected)}: p(x|z) must "
                "score one whole x per sample and data point. Give it x's shape as its "
                "event (tfd.Independent(..., reinterpreted_batch_ndims=...) over per-pixel "
                f"distributions, or reshape the decoder's output to x's shape).{hint}"
            )
    check_batch_shape(dist, batch, piece, about)


class BindableLogJoint:
    """A log joint z -> log p(x, z) that checks its pieces against q when bound to it.

    `compute(z, binding)` gives log p(x, z); `bind(q)` checks the pieces against q (in
    Python, before anything is traced) and returns the `binding` that `compute` then
    receives (None until bound: a log joint called directly, not through an objective).
    """

    def __init__(self, compute: Callable, bind: Callable, binding=None, name: str = "log_joint"):
        self._compute = compute
        self._bind = bind
        self._binding = binding
        self._name = name

    def __call__(self, z):
        return self._compute(z, self._binding)

    def _bind_to(self, q) -> BindableLogJoint:
        return type(self)(self._compute, self._bind, self._bind(q), self._name)

    def __repr__(self) -> str:
        return f"<{self._name}{' bound to q' if self._binding is not None else ''}>"
