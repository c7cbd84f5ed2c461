"""The sample-memory limit: a call whose samples would not fit is refused before it runs.

`sampling.sample` (which every objective calls with its `num_samples`) and
`log_marginal_estimate` (for one chunk of `chunk_size` draws) compute, from q's static
shapes alone, how many bytes their sample tensors z would take,

    bytes = sum over q's leaves of  num_samples * prod(batch shape) * prod(event shape)
                                    * dtype size,

and raise a ValueError naming the argument (`num_samples`, `chunk_size`), the bytes it
would need, the limit, and the fix, before anything is allocated or traced: a call of
10^9 samples fails at once instead of after minutes in TensorFlow's
`ResourceExhaustedError` (or never).

The limit. By default, `DEFAULT_FRACTION` (one tenth) of this machine's physical memory
(`os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')`, or a container's smaller
cgroup memory limit), or `FALLBACK_LIMIT` (2 GiB) where the system does not say. The
samples are not all of a call's memory: drawing them goes through int64 counters and
float64 uniforms, and an objective adds log densities and gradients; the peak measured
for `sample` and for `IWAE` with its gradient on a toy model is about 6-7 times the
samples' own bytes. It is a guard on the sample tensors, not a bound on a call's memory:
a decoder's per-sample activations (for Burda et al.'s MNIST model about 25 times z's
bytes) and a Categorical leaf's Gumbel noise ([S, B, num_categories] floats) are not
counted, so a model far larger than its latents needs a lower limit. On an accelerator the
device's memory is what runs out first: set the limit to a fraction of it.

Overriding it, in the order that wins:

* `sample_memory_limit_scope(limit)`, a context manager, for the calls inside it;
* `set_sample_memory_limit(limit)`, for the rest of the process (None restores the
  default, reading the environment again);
* the environment variable `MCOBJECTIVES_SAMPLE_MEMORY_LIMIT`, read once, when the limit
  is first needed.

A limit is a number of bytes (an int > 0), `math.inf` (no limit; the element count must
still fit an int64), or a string: "8000000000", "8GiB", "512 MiB", "2GB" (K, M, G, T
with B for powers of 1000 and iB for powers of 1024), "25%" (of physical memory) or
"inf". The limit is a process-wide Python setting read when a call is traced (it costs
one lookup): a `tf.function` traced under one limit is not checked again when the limit
changes. It is not thread-local.

Dynamic shapes. Where a size is not known statically (a `tf.function` traced for a batch
of any size), it counts as 1: the check is then of the bytes per data point, a lower
bound, and the batch's own memory is left to the input pipeline's batch size.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import tensorflow as tf

if TYPE_CHECKING:  # for annotations only: limits is imported before TFP is needed
    import tensorflow_probability as tfp

from mcobjectives.core import checks

__all__ = [
    "DEFAULT_FRACTION",
    "ENVIRONMENT_VARIABLE",
    "FALLBACK_LIMIT",
    "LeafBytes",
    "check_memory",
    "check_sample_memory",
    "default_sample_memory_limit",
    "physical_memory",
    "sample_bytes",
    "sample_memory_limit",
    "sample_memory_limit_scope",
    "set_sample_memory_limit",
]

ENVIRONMENT_VARIABLE = "MCOBJECTIVES_SAMPLE_MEMORY_LIMIT"
DEFAULT_FRACTION = 0.1
FALLBACK_LIMIT = 2**31  # 2 GiB, where the physical memory is unknown
_MAX_ELEMENTS = 2**63 - 1  # element counts of a draw are int64 (`sampling.bits._num_elements`)

# The limit in force and where it came from: None until first needed (then the
# environment's or the default).
_limit: tuple[float | int, str] | None = None
_LIMIT_SYNTAX = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(?:([kmgt])(i?)b?|b?)\s*$", re.IGNORECASE)
_PERCENT_SYNTAX = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*%\s*$")


def physical_memory() -> int | None:
    """This machine's memory in bytes: physical memory, or a smaller cgroup limit.

    None where the system does not say (e.g. Windows, where `os.sysconf` is absent).
    """
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = None
    if total is not None and total <= 0:
        total = None
    # A container may hold less than the machine (cgroup v2, then v1); "max" or a huge
    # value means no limit of its own.
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or 2**62):
            total = int(text)
        break
    return total


def default_sample_memory_limit() -> int:
    """`DEFAULT_FRACTION` of `physical_memory()`, or `FALLBACK_LIMIT` where it is unknown."""
    total = physical_memory()
    return FALLBACK_LIMIT if total is None else int(total * DEFAULT_FRACTION)


def _parse_limit(value, what: str) -> float | int:
    """A limit in bytes (int > 0 or inf) from an int, a float inf or a string."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("inf", "infinity", "unlimited"):
            return math.inf
        percent = _PERCENT_SYNTAX.match(text)
        if percent:
            fraction = float(percent.group(1)) / 100
            if not 0 < fraction <= 1:
                raise ValueError(f"{what} must be a percentage in (0%, 100%], got {value!r}.")
            total = physical_memory()
            if total is None:
                raise ValueError(
                    f"{what} is {value!r}, a fraction of physical memory, which this system "
                    "does not report: give a number of bytes, e.g. '4GiB'."
                )
            return max(1, int(total * fraction))
        match = _LIMIT_SYNTAX.match(text)
        if not match:
            raise ValueError(
                f"{what} must be a number of bytes, e.g. '8000000000', '8GiB', '512MiB', "
                f"'2GB', a percentage of physical memory such as '25%', or 'inf'; got {value!r}."
            )
        number, unit, binary = match.groups()
        unit = (unit or "").lower()
        scale = (1024 if binary else 1000) ** " kmgt".index(unit)
        limit = int(float(number) * scale)
        if limit <= 0:
            raise ValueError(f"{what} must be positive, got {value!r}.")
        return limit
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{what} must be a number of bytes (an int > 0), math.inf, or a string such as "
            f"'8GiB' or '25%'; got {value!r} of type {type(value).__name__}."
        )
    if value == math.inf:
        return math.inf
    if isinstance(value, numbers.Integral) and value > 0:
        return int(value)
    hint = " (a float: give the bytes as an int, or a string such as '1.5GiB')" if value > 0 else ""
    raise ValueError(
        f"{what} must be a positive int number of bytes or math.inf, got {value!r}{hint}."
    )


def _from_environment() -> tuple[float | int, str]:
    """The limit of the environment variable, else the default; with its source."""
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    if value is None or not value.strip():
        total = physical_memory()
        if total is None:
            return FALLBACK_LIMIT, "the fallback where the physical memory is unknown"
        source = f"{DEFAULT_FRACTION:.0%} of this machine's {_bytes(total)} of memory"
        return default_sample_memory_limit(), source
    what = f"The environment variable {ENVIRONMENT_VARIABLE}"
    return _parse_limit(value, what), f"{ENVIRONMENT_VARIABLE}={value.strip()!r}"


def _given(limit) -> tuple[float | int, str]:
    if limit is None:
        return _from_environment()
    return _parse_limit(limit, "`limit`"), "set by mcobjectives.limits"


# The functions below are plain Python on static shapes and module state, with nothing
# for autograph to convert: inside a `tf.function` they run as written.
@tf.autograph.experimental.do_not_convert
def sample_memory_limit() -> float | int:
    """The limit in force, in bytes (an int, or `math.inf` for none)."""
    global _limit
    if _limit is None:
        _limit = _from_environment()
    return _limit[0]


@tf.autograph.experimental.do_not_convert
def set_sample_memory_limit(limit: int | float | str | None) -> float | int:
    """Sets the limit for the rest of the process; returns the previous one.

    Args:
      limit: bytes (an int > 0), `math.inf` (no limit), a string such as "8GiB", "2GB",
        "25%" (of physical memory) or "inf"; or None to restore the default (reading
        `MCOBJECTIVES_SAMPLE_MEMORY_LIMIT` again, else `DEFAULT_FRACTION` of memory).
    """
    global _limit
    previous = sample_memory_limit()
    _limit = _given(limit)
    return previous


@contextlib.contextmanager
def sample_memory_limit_scope(limit) -> Iterator[float | int]:
    """A context manager: `limit` (as `set_sample_memory_limit` takes it) inside, the
    previous limit restored on leaving (also on an error); yields the limit in force."""
    global _limit
    sample_memory_limit()  # the limit in force before, read from the environment if need be
    previous, _limit = _limit, _given(limit)
    try:
        yield _limit[0]
    finally:
        _limit = previous


class LeafBytes(NamedTuple):
    """The static size of one leaf of a draw: its name, shape, dtype and bytes."""

    name: str
    shape: tuple[int | None, ...]
    dtype: tf.DType
    num_bytes: int


def _known(shape: tf.TensorShape) -> list[int | None]:
    return [] if shape.rank is None else shape.as_list()


@tf.autograph.experimental.do_not_convert
def sample_bytes(q, num_samples: int) -> list[LeafBytes]:
    """The bytes of `sampling.sample(q, num_samples, seed)`'s leaves, from static shapes.

    Leaf i of a draw is [num_samples, *batch, *event_i] of q's dtype for that leaf; a
    size that is not static (or a shape of unknown rank) counts as 1, so for a dynamic
    batch this is the bytes per data point. Nothing is traced or allocated.
    """
    names = checks.leaf_names(q)
    dtypes = tf.nest.flatten(q.dtype)
    batches = checks.per_leaf(checks.flat_shapes(q.batch_shape), len(names))
    events = checks.flat_shapes(q.event_shape)
    leaves = []
    for name, dtype, batch, event in zip(names, dtypes, batches, events, strict=True):
        shape = (num_samples, *_known(batch), *_known(event))
        count = math.prod(1 if n is None else n for n in shape)
        leaves.append(LeafBytes(name, shape, tf.as_dtype(dtype), count * tf.as_dtype(dtype).size))
    return leaves


def _bytes(n: float) -> str:
    """'128000000000 bytes (119.2 GiB)'."""
    if n == math.inf:
        return "no limit"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{int(n)} bytes ({n / scale:.1f} {unit})"
    return f"{int(n)} bytes"


def _how_to_raise() -> str:
    return (
        "or, if this machine has the memory, raise the limit: "
        "mcobjectives.limits.set_sample_memory_limit(bytes) (or sample_memory_limit_scope, "
        f"or the environment variable {ENVIRONMENT_VARIABLE}, e.g. '64GiB' or 'inf')"
    )


@tf.autograph.experimental.do_not_convert
def check_memory(
    num_bytes: int,
    *,
    argument: str,
    value: object,
    what: str = "the samples",
    fix: str | None = None,
) -> None:
    """Refuses `num_bytes` of tensors over `sample_memory_limit()`, naming `argument`.

    The check behind `check_sample_memory`, for callers that know the bytes without a q
    (e.g. a command-line flag checked at startup from the model's sizes).

    Args:
      num_bytes: the bytes that `argument` = `value` would need.
      argument: the argument or flag to name, e.g. "num_samples" or "--batch_size".
      value: its value, for the message.
      what: what the bytes hold, e.g. "the samples z (leaf 'z': [1000000000, 50] float32)".
      fix: the first remedy to offer (default: a smaller `argument`); raising the limit
        is always offered after it.

    Raises:
      ValueError: if `num_bytes` exceeds the limit.
    """
    limit = sample_memory_limit()
    if num_bytes <= limit:
        return
    source = _limit[1]
    fix = fix or f"use a smaller `{argument}`"
    raise ValueError(
        f"`{argument}` = {value} would need {_bytes(num_bytes)} for {what}, over the "
        f"sample-memory limit of {_bytes(limit)} ({source}); nothing was "
        f"allocated. To fix: {fix}; {_how_to_raise()}."
    )


@tf.autograph.experimental.do_not_convert
def check_sample_memory(
    q: tfp.distributions.Distribution,
    num_samples: int,
    *,
    argument: str = "num_samples",
    fix: str | None = None,
) -> int:
    """Refuses `num_samples` draws of `q` whose sample tensors would exceed the limit.

    Reads only q's static shapes and dtypes (`sample_bytes`), so it allocates and traces
    nothing and changes no draw; call it before sampling.

    Args:
      q: the distribution to be sampled (a `JointDistribution`: every leaf counted).
      num_samples: the number of draws in one tensor (e.g. one chunk's `chunk_size`).
      argument: the argument to name in the error, e.g. "num_samples" or "chunk_size".
      fix: the first remedy to offer; by default the largest `argument` that fits.

    Returns:
      The bytes the samples need (per data point where the batch size is dynamic).

    Raises:
      ValueError: naming `argument`, the bytes, the limit and the fix, if the samples
        exceed `sample_memory_limit()` or a leaf's element count does not fit an int64.
    """
    leaves = sample_bytes(q, num_samples)
    total = sum(leaf.num_bytes for leaf in leaves)
    largest = max(leaves, key=lambda leaf: leaf.num_bytes)
    shown = ", ".join(
        f"'{leaf.name}': {list(leaf.shape)} {leaf.dtype.name}"
        for leaf in sorted(leaves, key=lambda leaf: -leaf.num_bytes)[:4]
    )
    more = f" and {len(leaves) - 4} more" if len(leaves) > 4 else ""
    dynamic = any(n is None for leaf in leaves for n in leaf.shape)
    notes = [shown + more]
    if len(leaves) > 1:
        notes.append(f"the largest leaf, '{largest.name}', {_bytes(largest.num_bytes)}")
    if dynamic:
        notes.append("sizes unknown until run time counted as 1: the bytes per data point")
    what = f"the samples of `q` ({'; '.join(notes)})"
    elements = largest.num_bytes // largest.dtype.size
    if elements > _MAX_ELEMENTS:
        raise ValueError(
            f"`{argument}` = {num_samples} would draw {elements} numbers in one tensor for leaf "
            f"'{largest.name}' of `q` ({list(largest.shape)}), more than an int64 can count "
            f"(2**63 - 1): use a smaller `{argument}`."
        )
    if fix is None and total > sample_memory_limit():
        per_sample = max(1, total // num_samples)
        fits = int(sample_memory_limit() // per_sample)
        fix = (
            f"use `{argument}` <= {fits} ({_bytes(per_sample)} per sample)"
            if fits >= 1
            else f"one sample alone needs {_bytes(per_sample)}: use a smaller q"
        )
        if argument == "num_samples":
            fix += (
                ", or, for an estimate of log p(x), mcobjectives.log_marginal_estimate with a "
                "chunk_size that fits (it draws one chunk at a time)"
            )
    check_memory(total, argument=argument, value=num_samples, what=what, fix=fix)
    return total
