"""The functions `fit` and `evaluate` call once per batch: the step's own `tf.function`.

Keras's TensorFlow trainer wraps a step in two functions: the step itself, run by the
distribution strategy (compiled with XLA under `jit_compile`), inside a second
`tf.function` over the data iterator that draws the batch in its graph and returns the
logs wrapped in a `tf.experimental.Optional`. The outer function is what lets
`steps_per_execution` = N loop over N batches in one call. With one step per call and
no strategy it only adds work around a small step: a second graph to run around the
compiled one, and two eager operations per call to unwrap the logs.

So without a strategy, with `steps_per_execution` = 1 and not `run_eagerly`, the model's
`make_train_function` and `make_test_function` build `lambda iterator:
step(next(iterator))`, `step` being the `train_step` (or `test_step`) as one
`tf.function` (with XLA as `compile` decides, and `reduce_retracing` as Keras's), the
loop of `make_train_step`. The step's computation is the same as Keras's; so are its
results, its logs and the end of an epoch (`next` raises StopIteration, which `fit`
catches). Everywhere else the functions are Keras's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

__all__ = ["OneStepFunctions", "one_step_function"]


def _single_replica(model) -> bool:
    """Whether the model trains outside any distribution strategy (Keras sets
    `_distribute_strategy` when the model is made in a strategy's scope)."""
    return getattr(model, "_distribute_strategy", None) is None and not tf.distribute.has_strategy()


def one_step_function(model, step_function: Callable) -> Callable[[Any], Any] | None:
    """`iterator -> step_function(next(iterator))` as one `tf.function`, or None where
    Keras's own function is needed (a strategy, `steps_per_execution` > 1, eager)."""
    if model.steps_per_execution != 1 or model.run_eagerly or not _single_replica(model):
        return None

    def step(data):
        # A batch leaf that is a `tf.experimental.Optional` stands for a missing value,
        # as in Keras's own step function.
        data = tf.nest.map_structure(
            lambda t: None if isinstance(t, tf.experimental.Optional) else t, data
        )
        return step_function(data)

    step = tf.function(step, reduce_retracing=True, jit_compile=model.jit_compile)

    def function(iterator):
        return step(next(iterator))

    return function


class OneStepFunctions:
    """The model's `make_train_function` and `make_test_function` (a mixin before
    `keras.Model`): the step's own function where `one_step_function` gives one, else
    Keras's."""

    def make_train_function(self, force: bool = False):
        """Keras's hook: the function `fit` calls per batch."""
        return self._own_or_keras("train_function", self.train_step, force)

    def make_test_function(self, force: bool = False):
        """Keras's hook: the function `evaluate` calls per batch."""
        return self._own_or_keras("test_function", self.test_step, force)

    def _own_or_keras(self, name: str, step_function: Callable, force: bool):
        if getattr(self, name) is None or force:
            setattr(self, name, one_step_function(self, step_function))
            if getattr(self, name) is None:  # Keras's own: make_train_function, ...
                getattr(super(), f"make_{name}")(force=True)
        return getattr(self, name)
