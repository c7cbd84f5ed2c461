"""`make_train_step`: the step of `model.fit` as a `tf.function`, for a hand-written loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from mcobjectives.keras import batches, gradients, step_guard
from mcobjectives.keras.log_marginal import checked_jit_compile, supports_xla
from mcobjectives.keras.model import ImportanceWeightedAutoencoder

__all__ = ["make_train_step"]


def _check_optimizer(model, optimizer, strategy) -> None:
    """Raises a ValueError if `optimizer` cannot train `model` (under `strategy`)."""
    if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        raise ValueError(
            "Under the mixed_float16 policy float16 gradients underflow without loss "
            "scaling: pass keras.optimizers.LossScaleOptimizer(optimizer) as `optimizer` "
            "(model.compile wraps it for fit)."
        )
    if strategy is not None and not strategy.extended.variable_created_in_scope(
        optimizer.iterations.value
    ):
        raise ValueError(
            "`optimizer` was created outside `strategy.scope()`: create it (and the model) "
            "inside the scope, so that its variables are mirrored like the model's."
        )
    compiled = getattr(model, "optimizer", None)
    if compiled is not None and compiled is not optimizer:
        raise ValueError(
            "`optimizer` differs from the optimizer the model was compiled with: the step "
            "counter that seeds each step must be the one that advances."
        )


def make_train_step(
    model: ImportanceWeightedAutoencoder,
    optimizer: keras.optimizers.Optimizer,
    *,
    jit_compile: bool | str = "auto",
    strategy: tf.distribute.Strategy | None = None,
) -> Callable[[Any], dict[str, tf.Tensor]]:
    """A `tf.function` training step for a hand-written loop: the step of `model.fit`.

    The returned `step(batch)` computes the objective's gradients (compiled with XLA if
    `jit_compile`), applies them with `optimizer` and returns the global-batch means
    {"loss", "bound", "ess"} and "finite": False when the step's loss or gradients were
    not finite and the update was skipped (weights and optimizer untouched), as
    `model.fit` skips it; `model.max_nonfinite_steps` consecutive ones raise
    FloatingPointError. Step t draws its samples from the model seed and
    `optimizer.iterations` plus the skipped steps (or from the batch's per-example
    seeds), as `model.fit` does. Under the "mixed_float16" policy `optimizer` must be a
    `LossScaleOptimizer`.

    With a `strategy`, `batch` is a distributed batch (from
    `strategy.experimental_distribute_dataset`); every replica computes its share and
    the optimizer sums the replicas' gradients, which `compute_gradients` has scaled by
    1 / num_replicas, so the update is that of the global batch.

    Args:
      model: the model.
      optimizer: a Keras optimizer (created in the strategy's scope, if any).
      jit_compile: True (XLA), False (a `tf.function` without XLA) or "auto" (the
        default): XLA when every layer of the model supports it, as `model.compile`
        decides. XLA fuses the step's elementwise work around the matmuls, which makes
        it the faster mode for these models (benchmarks/throughput.py measures both).
      strategy: an optional `tf.distribute.Strategy`.
    """
    if not isinstance(model, ImportanceWeightedAutoencoder):
        raise TypeError(f"`model` must be an ImportanceWeightedAutoencoder, got {type(model)}.")
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"`optimizer` must be a keras optimizer, got {type(optimizer).__name__}.")
    if checked_jit_compile(jit_compile) == "auto":
        jit_compile = supports_xla(model)
    _check_optimizer(model, optimizer, strategy)
    if getattr(model, "optimizer", None) is None:
        model.optimizer = optimizer
    if model.built and not optimizer.built:
        # Slots made now, in the strategy's scope; otherwise at the first step's trace.
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            optimizer.build(model.trainable_variables)

    # The variables the gradients are aligned with, split once per trace of `gradients`
    # (a tf.function returns tensors only); the same list on every later step.
    trained: list = []

    def compute(batch, seed, num_replicas):
        grads, variables, result = gradients.compute(model, batch, seed, num_replicas, optimizer)
        trained[:] = variables
        stats = (result.loss, tf.reduce_mean(result.bound), tf.reduce_mean(result.ess))
        return grads, stats

    compute = tf.function(compute, jit_compile=jit_compile)

    def replica_step(batch):
        batch = batches.unpack(batch)
        # The seed is read before the update advances the counter, outside XLA.
        seed = batch.seed if batch.seed is not None else model.step_seed()
        grads, (loss, bound, ess) = compute(batch, seed, gradients.num_replicas())
        finite = step_guard.apply_if_finite(model, optimizer, grads, list(trained), loss)
        return loss, bound, ess, tf.cast(finite, tf.float32)

    @tf.function
    def step(batch):
        if strategy is None:
            loss, bound, ess, finite = replica_step(batch)
        else:
            per_replica = strategy.run(replica_step, args=(batch,))
            loss, bound, ess, finite = (
                strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for value in per_replica
            )
        return {"loss": loss, "bound": bound, "ess": ess, "finite": finite > 0.5}

    return _TrainStep(step, model, check_shapes=strategy is None)


class _TrainStep:
    """The `tf.function` step, then the check for consecutive non-finite steps; the
    function's attributes (e.g. `experimental_get_tracing_count`) are reachable."""

    def __init__(self, step, model: ImportanceWeightedAutoencoder, check_shapes: bool = True):
        self._step, self._model, self._check_shapes = step, model, check_shapes

    def __call__(self, batch) -> dict[str, tf.Tensor]:
        if self._check_shapes:  # before the step is traced (a distributed batch: inside it)
            batch = batches.unpack(batch)
            self._model.check_batch_shapes(batch.x, batch.context)
        logs = self._step(batch)
        self._model.raise_if_stalled()
        return logs

    def __getattr__(self, name: str):
        return getattr(self._step, name)
