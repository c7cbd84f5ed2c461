"""A batch of the Keras model: unpacked once, its static shapes checked against the model.

A batch is a tensor `x` of shape [B, ...], or a dict with the key "x" and optionally
"context" (c, [B, ...]) and "seed" ([B, 2] int32 per-example seeds). `unpack` turns
any of these into a `Batch` once per step; everything after it takes the `Batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from mcobjectives import _compat

__all__ = ["Batch", "checked", "unpack"]


class Batch(NamedTuple):
    """A batch taken apart: x [B, ...], and the optional context and per-example seeds."""

    x: Any
    context: Any = None
    seed: Any = None


def unpack(data) -> Batch:
    """The `Batch` of a tensor, a 1-tuple, a dict with key "x", or a `Batch` (as it is)."""
    if isinstance(data, Batch):
        return data
    if isinstance(data, tuple) and len(data) > 1 and all(d is None for d in data[1:]):
        data = data[:1]  # Keras' train_on_batch(x) hands over (x, None, None)
    if isinstance(data, (tuple, list)) and len(data) == 1:
        data = data[0]
    if isinstance(data, Mapping):
        unknown = set(data) - {"x", "context", "seed"}
        if "x" not in data or unknown:
            raise ValueError(
                "A batch given as a dict needs the key 'x' and may hold only 'context' and "
                f"'seed' besides; got keys {sorted(data)}."
            )
        seed = data.get("seed")
        rank = getattr(getattr(seed, "shape", None), "rank", None)
        if seed is not None and rank is None:
            rank = np.ndim(seed)
        if seed is not None and rank is not None and rank != 2:
            raise ValueError(
                "A batch's 'seed' holds one stateless seed per data point, shape [B, 2]; got "
                f"rank {rank}. Make each example's seed a pair, e.g. "
                "tf.stack([index, tf.fill(tf.shape(index), run_seed)], axis=1)."
            )
        return Batch(data["x"], data.get("context"), seed)
    if isinstance(data, (tuple, list)):
        raise ValueError(
            f"A batch must be x or a dict {{'x': ..., 'context': ..., 'seed': ...}}; got a "
            f"{type(data).__name__} of {len(data)} elements. An autoencoder has no targets: "
            "pass the images alone (or as {'x': images})."
        )
    return Batch(data)


def static_shape(t) -> tf.TensorShape | None:
    """The static shape of a tensor, array, spec or KerasTensor; None if it has none."""
    shape = getattr(t, "shape", None)
    if shape is None:
        if not isinstance(t, (list, tuple, int, float)):
            return None
        shape = np.shape(t)
    try:
        return tf.TensorShape(shape)
    except (TypeError, ValueError):
        return None


def _check_features(name: str, shape: tf.TensorShape | None, expected) -> None:
    """Raises naming `name` if a batch's shape [B, ...] is not that of the built model."""
    if shape is None or shape.rank is None or expected is None:
        return
    features = tf.TensorShape(expected[0])
    if shape.rank >= 1 and shape[1:].is_compatible_with(features):
        return
    wanted = tuple([None, *features.as_list()]) if features.rank is not None else "[B, ...]"
    raise ValueError(
        f"`{name}` has shape {tuple(shape.as_list())} but the model was built (or trained) on "
        f"{name} of shape {wanted}: each data point must have the shape "
        f"{tuple(features.as_list())} the model's networks were built for. Give data of "
        f"that shape (e.g. flattened as in training), or build a new model for these data."
    )


def check_shapes(x, context, batch_spec: tuple | None) -> None:
    """The checks of `ImportanceWeightedAutoencoder.check_batch_shapes` (see there)."""
    x_shape = static_shape(x)
    context_shape = None if context is None else static_shape(context)
    if x_shape is not None and x_shape.rank == 0:
        raise ValueError(
            f"`x` must be a batch [B, ...] of data points, got a scalar of shape {x_shape}."
        )
    if (
        x_shape is not None
        and context_shape is not None
        and x_shape.rank
        and context_shape.rank
        and x_shape[0] is not None
        and context_shape[0] is not None
        and x_shape[0] != context_shape[0]
    ):
        raise ValueError(
            f"`context` has batch size {context_shape[0]} but `x` has batch size "
            f"{x_shape[0]}: a batch's context holds one row per data point (context[b] "
            "conditions x[b]). Give context and x the same first dimension, e.g. batch "
            "them together as one dataset of {'x': ..., 'context': ...}."
        )
    if batch_spec is None:
        return
    expected_x, expected_context = batch_spec
    _check_features("x", x_shape, expected_x)
    if context is not None and expected_context is not None:
        _check_features("context", context_shape, expected_context)


def with_batch_size_assertion(x, context):
    """x, with a run-time check that `context` has x's batch size where one is unknown.

    Statically known sizes were compared by `check_shapes`; eagerly and while Keras
    builds the model on placeholders nothing is left to check.
    """
    if context is None or tf.executing_eagerly() or _compat.in_symbolic_build():
        return x
    x_shape, context_shape = static_shape(x), static_shape(context)
    if x_shape is None or context_shape is None or not x_shape.rank or not context_shape.rank:
        return x
    if x_shape[0] is not None and context_shape[0] is not None:
        return x  # equal: checked by check_shapes
    x = tf.convert_to_tensor(x)
    context = tf.convert_to_tensor(context)
    same = tf.debugging.assert_equal(
        tf.shape(x)[0],
        tf.shape(context)[0],
        message="`context` must have the batch size of `x` (one row per data point)",
    )
    with tf.control_dependencies([same]):
        return tf.identity(x)


def checked(data, batch_spec: tuple | None) -> Batch:
    """The `Batch` of `data`, its static shapes checked (`check_shapes`), once per batch.

    Its x carries a run-time check that the context has x's batch size where either
    batch size is known only at run time (`with_batch_size_assertion`).
    """
    batch = unpack(data)
    check_shapes(batch.x, batch.context, batch_spec)
    return batch._replace(x=with_batch_size_assertion(batch.x, batch.context))


def input_batch(data) -> Batch | None:
    """The `Batch` (of specs or arrays) of what `fit`, `evaluate` or `predict` got, if any.

    A `tf.data.Dataset` gives its element spec, arrays and tensors (or a dict of them)
    themselves; anything else (a generator, a `PyDataset`), or a structure that is not
    a batch, gives None: the traced step checks and names it.
    """
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        data = data.element_spec
    elif not isinstance(data, (Mapping, np.ndarray, tf.Tensor, tf.TensorSpec)):
        return None
    try:
        return unpack(data)
    except ValueError:
        return None


def batch_spec(x, context) -> tuple:
    """((shape per data point, dtype name) of x, the same of context or None)."""

    def spec(t):
        if t is None:
            return None
        shape = tf.TensorShape(t.shape) if hasattr(t, "shape") else None
        if shape is None:
            t = tf.convert_to_tensor(t)
            shape = t.shape
        return (tuple(shape.as_list()[1:]), tf.as_dtype(t.dtype).name)

    return (spec(x), spec(context))
