"""Pieces of a graph compiled by XLA on their own: the estimate of log p(x) outside XLA.

`ImportanceWeightedAutoencoder.log_marginal` without `jit_compile` runs its networks'
matmuls on TensorFlow's kernels (on a CPU faster than XLA's) but would run its
elementwise work one TensorFlow kernel per operation, each writing its output out: the
sampler's integer bits and the normal quantile, and the Bernoulli pixels' softplus before
their sum. Inside `compiled_pieces()`, those pieces (`noise.noise`, `PixelBernoulli`'s
log-probability) are each traced as one jit-compiled function, which XLA fuses. The
values are the same functions, up to float rounding: the noise is XLA's, the same bits
as in a fully compiled graph (the uniforms are integer arithmetic; the quantile may
differ from TensorFlow's kernels in its last bits), and the pixel sum is the same sum
in another order. Eagerly, and inside an XLA computation (which fuses everything anyway),
nothing changes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import tensorflow as tf

__all__ = ["compiled_pieces", "compiling_pieces", "flag_scope"]

_STATE = threading.local()


@contextlib.contextmanager
def flag_scope(state: threading.local, name: str) -> Iterator[None]:
    """`state.<name>` is True within the block and as before after it (blocks nest)."""
    previous = getattr(state, name, False)
    setattr(state, name, True)
    try:
        yield
    finally:
        setattr(state, name, previous)


def compiled_pieces():
    """Within it (per thread, at trace time), the pieces above are traced jit-compiled."""
    return flag_scope(_STATE, "on")


def compiling_pieces() -> bool:
    """Whether a piece traced now is to be jit-compiled: inside the block, in a graph."""
    return getattr(_STATE, "on", False) and not tf.executing_eagerly()
