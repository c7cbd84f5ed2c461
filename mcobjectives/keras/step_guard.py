"""The non-finite step guard: a step whose loss or gradients are not finite is not applied.

The weights and the optimizer then keep the last finite update, the skipped step is
counted (`nonfinite_run`, the current run of consecutive ones, and `nonfinite_steps`,
the total), and `max_nonfinite_steps` consecutive ones stop training with a
FloatingPointError. Under a distribution strategy every replica takes the same
decision, in cross-replica context (`merge_call`).

A stalled run takes no further step until the error is raised: the rest of a block of
`steps_per_execution` (or of `make_train_step`'s `steps_per_call`) is neither applied nor
counted, so the model is that of one step per call, stopped at the step the error names.
Raising restarts the count of consecutive skipped steps, so training may resume.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["StopWhenStalled", "apply_if_finite", "stalled_error"]


def apply_if_finite(model, optimizer, grads: list, variables: list, loss) -> tf.Tensor:
    """Applies the update only if the loss and gradients are finite; counts skipped steps.

    Under loss scaling the `LossScaleOptimizer` itself skips steps whose gradients
    overflow (and lowers the scale); only a non-finite loss is counted then. Every
    replica takes the same decision. Returns whether the step was applied.
    """
    finite = tf.reduce_all(tf.math.is_finite(loss))
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        for g in grads:
            if g is not None:
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
    replica = tf.distribute.get_replica_context()
    distributed = tf.distribute.has_strategy() and replica is not None
    if distributed and replica.num_replicas_in_sync > 1:
        bad = replica.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
        )
        finite = tf.equal(bad, 0.0)
    # A stalled run (`max_nonfinite_steps` skipped in a row) takes no further step, applied
    # or counted, until `raise_if_stalled` stops it: the later steps of a block of
    # `steps_per_execution` (or `steps_per_call`) then leave the model as one step per
    # call would have, and the error names the step that stalled.
    live = tf.less(model.nonfinite_run, model.max_nonfinite_steps)
    applied = tf.logical_and(finite, live)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
    updated = [v for _, v in pairs]

    def apply(grads):
        optimizer.apply_gradients(zip(grads, updated, strict=True))
        return tf.constant(True)

    grads = [g for g, _ in pairs]
    if distributed:
        # A cond whose branch synchronizes replicas must run in cross-replica context;
        # each replica's gradients reach it through merge_call's arguments.
        def cross_replica(strategy, finite, grads):
            def apply_on_every_replica():
                strategy.extended.call_for_each_replica(apply, args=(grads,))
                return tf.constant(True)

            flag = strategy.experimental_local_results(finite)[0]
            tf.cond(flag, apply_on_every_replica, lambda: tf.constant(False))

        replica.merge_call(cross_replica, args=(applied, grads))
    else:
        tf.cond(applied, lambda: apply(grads), lambda: tf.constant(False))
    skipped = tf.logical_and(live, tf.logical_not(finite))
    run = tf.where(finite, tf.constant(0, tf.int64), model.nonfinite_run + 1)
    model.nonfinite_run.assign(tf.where(live, run, model.nonfinite_run))
    model.nonfinite_steps.assign_add(tf.cast(skipped, tf.int64))
    return applied


def stalled_error(model) -> FloatingPointError | None:
    """The error for `max_nonfinite_steps` consecutive skipped steps, or None if fewer."""
    run = int(model.nonfinite_run.numpy())
    if run < model.max_nonfinite_steps:
        return None
    iterations = getattr(getattr(model, "optimizer", None), "iterations", 0)
    step = int(iterations) + int(model.nonfinite_steps.numpy())
    return FloatingPointError(
        f"{run} consecutive training steps, the last being step {step} (counted from "
        "1), had a non-finite loss or gradient and were skipped: the weights and the "
        "optimizer hold the last finite update. Check the data for NaN or infinite "
        "values and lower the learning rate. A loss of +inf is a bound of -inf: "
        "every sample of some data point (or, for VAE and CIWAE, any one sample) "
        "fell outside the support of the prior or the likelihood, a weight of 0; "
        "widen q's support or the model's, or use more samples "
        f"(max_nonfinite_steps={model.max_nonfinite_steps})."
    )


class StopWhenStalled(keras.callbacks.Callback):
    """Calls the model's `raise_if_stalled` after a training batch (XLA or not) whose
    `nonfinite_steps` log differs from the last batch's, and after the first of each
    `fit`. A run of skipped steps grows with that count, and a run that stalls raises
    at the batch that completes it, so a batch that skipped nothing needs no read of the
    model's counters (a host read of a variable per batch, the largest cost of a small
    step's callbacks). Logs without the count (a subclass's own `train_step`) are checked
    after every batch."""

    def on_train_begin(self, logs=None):
        self._last_count = None

    def on_train_batch_end(self, batch, logs=None):
        count = (logs or {}).get("nonfinite_steps")
        if count is None or count != self._last_count:
            self._last_count = count
            self.model.raise_if_stalled()
