"""The gradients of one batch: one forward pass on a tape, one variable split, one backward pass.

The objective's single surrogate loss is differentiated once with respect to every
trainable variable, model variables first, then inference variables, in one list that
the optimizer applies together.

An objective with a sleep phase (`mco.RWS(..., inference_update="sleep" | "wake_sleep")`,
which sets `sleep_weight` > 0) has `sleep_weight` times the model's sleep loss
(`mcobjectives.keras.generation.sleep_loss`: -log q(z|x) on model samples held fixed,
so only q's variables get its gradient) added to the surrogate on the same tape.
"""

from __future__ import annotations

import tensorflow as tf

from mcobjectives.keras import generation, variables

__all__ = ["compute", "num_replicas"]


def num_replicas() -> int:
    """The number of replicas in sync in the current replica context (1 outside one)."""
    replica = tf.distribute.get_replica_context()
    return 1 if replica is None else replica.num_replicas_in_sync


def compute(model, data, seed, replicas, optimizer) -> tuple[list, list, object]:
    """(gradients, variables, result) of `model` on one (per-replica) batch `data`.

    The loss is divided by `replicas` (read from the replica context if None) and
    scaled by `optimizer.scale_loss` if an optimizer is given (the identity unless loss
    scaling is on). `result` is the `ObjectiveResult`, its loss unscaled.

    Raises:
      ValueError: if the loss reads a trainable variable the model does not track.
    """
    with tf.GradientTape() as tape:
        result = model.objective_result(data, seed, training=True)
        if replicas is None:
            replicas = num_replicas()
        loss = result.loss
        sleep_weight = getattr(model.objective, "sleep_weight", 0.0)
        if sleep_weight:
            loss = loss + sleep_weight * generation.sleep_loss(model, data, seed)
        loss = loss / replicas
        if optimizer is not None:
            loss = optimizer.scale_loss(loss)  # identity unless loss scaling is on
    # Read after the forward pass, which builds the layers on a first call.
    trained = variables.trained(model, model.encoder, tape.watched_variables())
    return tape.gradient(loss, trained), trained, result
