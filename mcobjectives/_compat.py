"""Every private name of TensorFlow Probability and Keras that the library relies on.

Nothing else in the package reaches into `tensorflow_probability.python...` or
`keras.src...`: each name below says why the public API does not serve and on which
versions it was checked (TensorFlow Probability 0.25, Keras 3.15 with TensorFlow 2.21).
A release that renames one breaks this module alone, where the fallback (if any) is.
"""

from __future__ import annotations

import tensorflow_probability as tfp
from tensorflow_probability.python.distributions import (
    independent,
    joint_distribution_named,
    joint_distribution_sequential,
    transformed_distribution,
)
from tensorflow_probability.python.distributions import sample as sample_lib

# --- TensorFlow Probability ---------------------------------------------------------------

# tfd.Independent, tfd.Sample and tfd.TransformedDistribution are factories whose instances
# are of these private classes (auto-composite variants). The sampler recognizes a
# reparameterizable wrapper by its class to draw through it with its own noise, and the
# public classes do not match with isinstance. Checked on TFP 0.25.
INDEPENDENT = independent._Independent
SAMPLE = sample_lib._Sample
TRANSFORMED_DISTRIBUTION = transformed_distribution._TransformedDistribution

# The same for the joint distributions: pairing a joint prior with q by its parts' names
# needs to know which kind of joint it is (named keys or a sequence's argument names), and
# tfd.JointDistributionNamed / Sequential instances are of these private classes. TFP 0.25.
JOINT_DISTRIBUTION_NAMED = joint_distribution_named._JointDistributionNamed
JOINT_DISTRIBUTION_SEQUENTIAL = joint_distribution_sequential._JointDistributionSequential


def model_coroutine(joint):
    """The coroutine of a JointDistributionCoroutine-like joint: it yields each part.

    Drawing part by part with the library's own noise needs each conditional given the
    values drawn so far; TFP exposes that only as `_model_coroutine` (TFP 0.25).
    """
    return joint._model_coroutine()


def run_model(joint, draw_part) -> list:
    """Runs `joint`'s model part by part; returns the values drawn, in the model's order.

    `draw_part(index, part)` gives part `index`'s value (the part a plain distribution: a
    `Root` is unwrapped), which is sent back to the model so that the later parts are the
    conditionals given it.
    """
    root = tfp.distributions.JointDistributionCoroutine.Root
    model = model_coroutine(joint)
    values: list = []
    try:
        part = next(model)
        while True:
            if isinstance(part, root):
                part = part.distribution
            values.append(draw_part(len(values), part))
            part = model.send(values[-1])
    except StopIteration:
        pass
    return values


def model_flatten(joint, value) -> list:
    """The leaves of `value` (a structure like `joint`'s parts) in the order of its model.

    A JointDistributionNamed orders its parts by its model's dependencies, not by its
    dict's keys, and only `_model_flatten` says that order (TFP 0.25).
    """
    return joint._model_flatten(value)


def model_unflatten(joint, values):
    """`values`, one per part in the order of the model, in the structure of `joint`'s parts.

    The inverse of `model_flatten`, TFP's `_model_unflatten` (TFP 0.25).
    """
    return joint._model_unflatten(values)


def flat_resolve_names(joint, **kwargs) -> list[str]:
    """The names of a joint distribution's parts, in its model's order.

    A JointDistribution's parts are named by its keys, a Sequential's lambda arguments or
    `name=`, and TFP resolves them (with made-up names for the rest) only in the private
    `_flat_resolve_names`; `leaf_name` / `dummy_name` choose the made-up names, so that the
    caller can tell them from the user's. TFP 0.25.
    """
    return joint._flat_resolve_names(**kwargs)


# --- Keras ------------------------------------------------------------------------------


def flatten_layers(model):
    """Every layer inside a Keras model, nested ones included (`Layer._flatten_layers`).

    Keras 3 has no public recursive walk that includes layers held in attributes;
    `_flatten_layers` is what Keras itself uses to collect them. Checked on Keras 3.15.
    """
    return model._flatten_layers()


def in_symbolic_build() -> bool:
    """Whether Keras is tracing the model on placeholders to create its variables.

    Keras 3 builds a subclassed model by a symbolic call; a check that needs concrete
    values must stand aside then, and only `keras.src...symbolic_scope` tells. Keras 3.15;
    a Keras without it traces with the batch's own dtypes, so False is the right answer.
    """
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:
        return False
    return in_symbolic_scope()
