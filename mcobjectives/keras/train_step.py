"""`make_train_step`: the step of `model.fit` as a `tf.function`, for a hand-written loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from mcobjectives.core.checks import check_count
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
    steps_per_call: int = 1,
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

    Several steps per call (`steps_per_call` = N > 1): `step(stacked)` takes N batches
    stacked, every leaf [N, B, ...] (x, and a context [N, B, ...] and seeds [N, B, 2] if
    the batches have them), e.g. from `dataset.batch(B, drop_remainder=True).batch(N,
    drop_remainder=True)`, and takes the N steps in order inside one `tf.function`: the
    weights, the optimizer and the skipped-step counts are those of N calls of the one-step
    function on the N batches (each step draws the seed it would draw alone), and the logs
    are theirs stacked, each [N]. A skipped step inside the call is skipped and counted as
    alone; a run of `max_nonfinite_steps` stalls training at the step that completes it
    (the rest of the call is neither applied nor counted) and the call then raises,
    naming that step. It helps where the step's math is small (a small network, K = 1,
    a small B): the fixed cost of a call (Python, the function call, the host round trip
    for the logs and the stall check) is paid once per N steps. At large K or B the math
    dominates and N = 1 is as fast. Not with a `strategy` (use `model.fit` with
    `compile(steps_per_execution=N)` there).

    Args:
      model: the model.
      optimizer: a Keras optimizer (created in the strategy's scope, if any).
      jit_compile: True (XLA), False (a `tf.function` without XLA) or "auto" (the
        default): XLA when every layer of the model supports it, as `model.compile`
        decides. XLA fuses the step's elementwise work around the matmuls, which makes
        it the faster mode for these models (benchmarks/throughput.py measures both).
      strategy: an optional `tf.distribute.Strategy`.
      steps_per_call: N >= 1, the training steps each call takes (default 1), on N
        stacked batches when N > 1.

    Raises:
      TypeError, ValueError: for an argument the step cannot take, before any tracing;
        when called, a ValueError for a batch whose shapes do not fit (with N > 1, a leaf
        whose first dimension is not N).
    """
    if not isinstance(model, ImportanceWeightedAutoencoder):
        raise TypeError(f"`model` must be an ImportanceWeightedAutoencoder, got {type(model)}.")
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"`optimizer` must be a keras optimizer, got {type(optimizer).__name__}.")
    steps_per_call = check_count("steps_per_call", steps_per_call)
    if strategy is not None and steps_per_call > 1:
        raise ValueError(
            f"`steps_per_call`={steps_per_call} with a `strategy` is not supported: give "
            "steps_per_call=1, or train with model.compile(steps_per_execution=N) and fit."
        )
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

    # Without a strategy the whole step (seed, gradients, guard and update) is one XLA
    # computation, as `fit` compiles its `train_step`: the optimizer's update and the guard
    # then fuse too, which is most of a small step's fixed cost. Under a strategy only the
    # gradients are compiled: the guard's cross-replica decision (`merge_call`) and the
    # optimizer's all-reduce run outside XLA.
    whole = strategy is None and jit_compile
    if not whole:
        compute = tf.function(compute, jit_compile=jit_compile)

    def replica_step(batch):
        batch = batches.unpack(batch)
        # Read before the update advances the counter (auto control dependencies order
        # the read before the assignment, also inside one XLA computation).
        seed = batch.seed if batch.seed is not None else model.step_seed()
        grads, (loss, bound, ess) = compute(batch, seed, gradients.num_replicas())
        finite = step_guard.apply_if_finite(model, optimizer, grads, list(trained), loss)
        return loss, bound, ess, tf.cast(finite, tf.float32)

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

    def steps(stacked):
        stacked = _unpack_stacked(stacked)
        per_step = []
        # Unrolled, so that the optimizer's slots may be made by the first step's trace;
        # each step reads the step counter after the update before it, as N calls would.
        for i in range(steps_per_call):
            part = batches.Batch(*(None if t is None else t[i] for t in stacked))
            per_step.append(replica_step(part))
        loss, bound, ess, finite = (tf.stack(values) for values in zip(*per_step, strict=True))
        return {"loss": loss, "bound": bound, "ess": ess, "finite": finite > 0.5}

    if steps_per_call == 1:
        step = tf.function(step, jit_compile=True if whole else None)
        return _TrainStep(step, model, check_shapes=strategy is None)
    if whole:
        # Each step its own XLA computation: one computation over the N steps would fuse
        # across them and round otherwise than N single steps.
        replica_step = tf.function(replica_step, jit_compile=True)
    return _TrainStep(tf.function(steps), model, steps_per_call=steps_per_call)


def _unpack_stacked(data) -> batches.Batch:
    """`batches.unpack` of N stacked batches, whose seeds are [N, B, 2]."""
    if isinstance(data, Mapping) and "seed" in data:
        rest = batches.unpack({key: value for key, value in data.items() if key != "seed"})
        return rest._replace(seed=data["seed"])
    return batches.unpack(data)


def _per_step(name: str, t, steps_per_call: int):
    """The spec of one step's slice of a stacked leaf [N, B, ...]; raises if it is not N."""
    shape = batches.static_shape(t)
    if shape is None or shape.rank is None or shape.rank < 2 or shape[0] != steps_per_call:
        raise ValueError(
            f"With steps_per_call={steps_per_call} the batch's `{name}` must be "
            f"{steps_per_call} batches stacked, shape [{steps_per_call}, B, ...]; got shape "
            f"{shape}. Stack them, e.g. dataset.batch(B, drop_remainder=True)"
            f".batch({steps_per_call}, drop_remainder=True)."
        )
    return tf.TensorSpec(shape[1:])


class _TrainStep:
    """The `tf.function` step, then the check for consecutive non-finite steps; the
    function's attributes (e.g. `experimental_get_tracing_count`) are reachable."""

    def __init__(
        self, step, model: ImportanceWeightedAutoencoder, check_shapes: bool = True,
        steps_per_call: int = 1,
    ):  # fmt: skip
        self._step, self._model, self._check_shapes = step, model, check_shapes
        self._steps_per_call = steps_per_call

    def __call__(self, batch) -> dict[str, tf.Tensor]:
        n = self._steps_per_call
        if n > 1:  # before the steps are traced: N stacked batches, each of the model's shape
            batch = _unpack_stacked(batch)
            x, context, seed = (
                None if t is None else _per_step(name, t, n)
                for name, t in zip(("x", "context", "seed"), batch, strict=True)
            )
            batches.unpack({"x": x, "seed": seed})  # one step's seeds: [B, 2]
            self._model.check_batch_shapes(x, context)
        elif self._check_shapes:  # before the step is traced (a distributed batch: inside it)
            batch = batches.unpack(batch)
            self._model.check_batch_shapes(batch.x, batch.context)
        if isinstance(batch, batches.Batch) and batch.context is None and batch.seed is None:
            # x alone: binding a tensor costs less per call than binding the tuple, and
            # every form of the same batch (x, (x,), {"x": x}) shares one trace.
            batch = batch.x
        logs = self._step(batch)
        self._model.raise_if_stalled()
        return logs

    def __getattr__(self, name: str):
        return getattr(self._step, name)
