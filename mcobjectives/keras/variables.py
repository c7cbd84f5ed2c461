"""Which trainable variables are the model's (p and the objective) and which the inference's (q).

One surrogate loss sends its gradient to every variable: the model estimator to the
decoder's, the prior's, the objective's and those a subclass adds, the inference
estimator to the encoder's, and Tucker et al.'s unified estimator to a variable the
encoder shares with the rest, which counts as a model variable. `variable_key` is the
library's one way of telling two handles of the same Keras variable apart from others.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["adopt_objective_variables", "check_tracked", "split", "trained", "variable_key"]


def variable_key(v) -> int:
    """One identity for a Keras variable, the tf.Variable it stores, or a replica's copy."""
    if isinstance(v, keras.Variable):
        v = v.value
    container = getattr(v, "_distributed_container", None)
    if callable(container):
        v = container()
    return id(v)


def _unique(variables) -> list:
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def split(model: keras.Model, encoder) -> tuple[list, list]:
    """(model variables, inference variables) of `model`, whose q is `encoder`'s.

    The model variables are every trainable variable but the encoder's own (a variable
    the encoder shares with another layer is among them); the inference variables are
    the encoder's others, in the encoder's order.
    """
    encoder_variables = _unique(getattr(encoder, "trainable_variables", []))
    encoder_ids = {id(v) for v in encoder_variables}
    model_variables = []
    for layer in model.layers:
        if layer is not encoder:
            model_variables += layer.trainable_variables
    in_layers = {id(v) for layer in model.layers for v in layer.trainable_variables}
    # The model's own weights (the objective's, a subclass's add_weight) and those of
    # layers Keras tracks below non-layer attributes.
    model_variables += [
        v for v in model.trainable_variables if id(v) not in in_layers and id(v) not in encoder_ids
    ]
    model_variables = _unique(model_variables)
    model_ids = {id(v) for v in model_variables}
    return model_variables, [v for v in encoder_variables if id(v) not in model_ids]


def check_tracked(model: keras.Model, watched, tracked) -> None:
    """Raises a ValueError naming the trainable variables the loss read but Keras does not track."""
    known = {variable_key(v) for v in tracked}
    known |= {variable_key(v) for v in model.non_trainable_variables}
    missing = [v.name for v in watched if v.trainable and variable_key(v) not in known]
    if missing:
        raise ValueError(
            f"The loss reads the trainable variables {missing}, which the model does not "
            "track, so they would never be trained nor saved. Create them as Keras 3 "
            "weights (keras.layers, add_weight) and assign their layer to an attribute "
            "of the model or of one of its layers; a tf_keras layer (e.g. inside a "
            "TFP bijector) or a bare tf.Variable is not tracked by Keras 3."
        )


def trained(model: keras.Model, encoder, watched) -> list:
    """Every trainable variable, model variables first: `split`, once, after `check_tracked`.

    `watched` are the variables the tape saw (the loss read).
    """
    model_variables, inference_variables = split(model, encoder)
    variables = model_variables + inference_variables
    check_tracked(model, watched, variables)
    return variables


def adopt_objective_variables(objective) -> list[keras.Variable]:
    """Keras weights holding the objective's tf.Variables themselves (no copy)."""
    adopted = []
    for value in list(vars(objective).values()):
        if isinstance(value, tf.Variable):
            adopted.append(
                keras.Variable(value, trainable=value.trainable, name=value.name.split(":")[0])
            )
    held = {id(v.value) for v in adopted}
    hidden = [v.name for v in objective.variables if id(v) not in held]
    if hidden:
        raise ValueError(
            f"`objective` ({type(objective).__name__}) keeps the variables {hidden} "
            "inside containers: keep each tf.Variable as a direct attribute of the "
            "objective so that the model can train and save it."
        )
    return adopted
