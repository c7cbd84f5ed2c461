"""Keras configs for what an `ImportanceWeightedAutoencoder` holds: objectives and fixed priors.

Objectives. Every `MCObjective` of the library is registered with Keras under the
package "mcobjectives", so `keras.saving.serialize_keras_object(objective)` records it
by its constructor arguments (`get_config`) and `deserialize_keras_object` rebuilds it.
An objective defined elsewhere registers itself as any custom Keras object does
(`@keras.saving.register_keras_serializable()`).

Fixed priors. A TFP distribution is recorded as its class name (a class of
`tfp.distributions`) and its constructor parameters: numbers, strings, dtypes,
tensors (as nested lists with their dtype) and nested distributions. A distribution
that holds anything else (a `tf.Variable`, a function such as a `JointDistribution`'s
conditionals, a bijector) has no such config: it is refused, naming the parameter,
and the fix is a prior Keras layer (registered like any custom layer).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.core.objective import MCObjective
from mcobjectives.objectives.registry import OBJECTIVES

tfd = tfp.distributions

__all__ = [
    "deserialize_distribution",
    "deserialize_objective",
    "register_objectives",
    "serialize_distribution",
    "serialize_objective",
]

PACKAGE = "mcobjectives"


def register_objectives() -> None:
    """Registers every objective class of the library with Keras (idempotent)."""
    classes = set(OBJECTIVES.values())
    for cls in list(classes):
        classes.update(c for c in cls.__mro__ if isinstance(c, type) and issubclass(c, MCObjective))
    for cls in classes:
        if cls is MCObjective or getattr(cls, "__abstractmethods__", None):
            continue
        name = f"{PACKAGE}>{cls.__name__}"
        if keras.saving.get_registered_object(name) is None:
            keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def serialize_objective(objective: MCObjective) -> dict:
    try:
        return keras.saving.serialize_keras_object(objective)
    except Exception as error:  # get_config of a user's objective
        raise ValueError(
            f"`objective` ({type(objective).__name__}) cannot be serialized: {error}. Give it "
            "a get_config() returning its constructor arguments."
        ) from error


def deserialize_objective(config: dict) -> MCObjective:
    objective = keras.saving.deserialize_keras_object(config)
    if not isinstance(objective, MCObjective):
        raise TypeError(f"The saved objective is a {type(objective).__name__}, not an MCObjective.")
    return objective


# ----------------------------------------------------------------- distributions
def serialize_distribution(distribution: tfd.Distribution, where: str = "prior") -> dict:
    """{"class_name", "parameters"} of a fixed TFP distribution; ValueError naming `where`."""
    cls = type(distribution)
    if getattr(tfd, cls.__name__, None) is not cls:
        raise ValueError(
            f"`{where}` is a {cls.__name__}, which is not a class of tfp.distributions and "
            "has no saved form: give the model a prior Keras layer (registered with "
            "keras.saving.register_keras_serializable) that returns it."
        )
    parameters = {
        key: _serialize_value(value, f"{where}.{key}")
        for key, value in distribution.parameters.items()
    }
    return {"class_name": cls.__name__, "parameters": parameters}


def _serialize_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tfd.Distribution):
        return {"distribution": serialize_distribution(value, where)}
    if isinstance(value, tf.DType):
        return {"dtype": value.name}
    if isinstance(value, (tf.Variable, keras.Variable)):
        raise ValueError(
            f"`{where}` is a variable ({value.name}): a fixed prior is not trained or saved. "
            "Put learnable parameters in a prior Keras layer, whose weights the model trains "
            "and saves."
        )
    if isinstance(value, (tf.Tensor, np.ndarray, np.generic)):
        array = np.asarray(value)
        return {"tensor": array.tolist(), "dtype": array.dtype.name}
    if isinstance(value, (list, tuple)):
        return [_serialize_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if callable(value):
        raise ValueError(
            f"`{where}` is a function (e.g. a JointDistribution's conditional), which has no "
            "saved form. Give the model a prior Keras layer (registered with "
            "keras.saving.register_keras_serializable) that returns the distribution."
        )
    raise ValueError(
        f"`{where}` is a {type(value).__name__}, which has no saved form (a fixed prior may "
        "hold numbers, tensors and distributions). Give the model a prior Keras layer "
        "(registered with keras.saving.register_keras_serializable) that returns it."
    )


def deserialize_distribution(config: dict) -> tfd.Distribution:
    cls = getattr(tfd, config["class_name"], None)
    if not (isinstance(cls, type) and issubclass(cls, tfd.Distribution)):
        raise ValueError(f"Unknown saved prior class {config['class_name']!r}.")
    return cls(**{k: _deserialize_value(v) for k, v in config["parameters"].items()})


def _deserialize_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_deserialize_value(v) for v in value]
    if isinstance(value, dict):
        if "distribution" in value:
            return deserialize_distribution(value["distribution"])
        if "tensor" in value:
            return tf.constant(np.asarray(value["tensor"], dtype=value["dtype"]))
        if set(value) == {"dtype"}:
            return tf.as_dtype(value["dtype"])
    return value
