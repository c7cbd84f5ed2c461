"""The building blocks of the layers: dense networks, their distributions, argument checks.

`MLP` is the dense network of every layer; `DiagonalGaussian` (a Gaussian with a
softplus scale above a floor) and `IndependentBernoulli` (int32 Bernoulli units) turn its
outputs into a distribution. The checks turn constructor arguments into the values the
layers store (and `get_config` returns), refusing those that would build a wrong model;
the context helpers concatenate an optional context to a layer's input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.core.checks import check_count

tfd = tfp.distributions

__all__ = [
    "MLP",
    "DiagonalGaussian",
    "IndependentBernoulli",
    "activation_config",
    "check_activation",
    "check_hidden_pair",
    "check_hidden_units",
    "check_latent_sizes",
    "check_min_scale",
    "concat_context",
    "context_features",
    "flat_features",
    "refuse_context",
]


def check_hidden_units(hidden_units: Sequence[int]) -> tuple[int, ...]:
    """`hidden_units` as a tuple of positive ints (the widths of the hidden layers), or raises."""
    if isinstance(hidden_units, (str, bytes)) or not isinstance(hidden_units, Sequence):
        raise TypeError(f"`hidden_units` must be a sequence of ints, got {hidden_units!r}.")
    return tuple(check_count("hidden_units", h) for h in hidden_units)


def check_min_scale(min_scale) -> float:
    """`min_scale` as a float, or raises: the floor of every scale must be finite and > 0.

    sigma = softplus(sigma_raw) + min_scale; softplus underflows to 0 for a very negative
    sigma_raw, so a floor of 0 lets a scale reach 0 (an infinite density), and a negative
    or non-finite one gives negative or NaN scales, which TFP accepts without validation.
    """
    if isinstance(min_scale, bool) or not isinstance(min_scale, numbers.Real):
        raise TypeError(
            f"`min_scale` must be a positive float (the floor on every scale sigma), got "
            f"{min_scale!r} of type {type(min_scale).__name__}; pass e.g. min_scale=1e-4."
        )
    value = float(min_scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"`min_scale` must be a finite float > 0, the floor added to every scale "
            f"(sigma = softplus(sigma_raw) + min_scale); got {value}. Pass e.g. "
            "min_scale=1e-4 (the default)."
        )
    return value


def check_activation(activation):
    """`activation` itself, once Keras can interpret it (a name, a callable or None)."""
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`activation` must be the name of a Keras activation (e.g. 'tanh', 'relu') or "
            f"a callable, got {activation!r}: {error}"
        ) from None
    return activation


def check_latent_sizes(latent_sizes: Sequence[int], lengths: tuple[int, ...]) -> tuple[int, ...]:
    """`latent_sizes` as a tuple of ints, one per stochastic layer (z1 first)."""
    if (
        isinstance(latent_sizes, (str, bytes))
        or not isinstance(latent_sizes, Sequence)
        or len(latent_sizes) not in lengths
    ):
        counts = " or ".join(str(n) for n in lengths)
        raise ValueError(
            f"`latent_sizes` must be a sequence of {counts} ints, the sizes of z1 (next to "
            f"the data) and z2, got {latent_sizes!r}."
        )
    return tuple(check_count("latent_sizes", n) for n in latent_sizes)


def check_hidden_pair(hidden_units) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """((hidden units between x and z1), (hidden units between z1 and z2))."""
    if isinstance(hidden_units, (str, bytes)) or not (
        isinstance(hidden_units, Sequence) and len(hidden_units) == 2
    ):
        raise ValueError(
            "`hidden_units` must be a pair of sequences of ints, the hidden layers of "
            f"q(z1|x) and of q(z2|z1), e.g. ((200, 200), (100, 100)); got {hidden_units!r}."
        )
    return check_hidden_units(hidden_units[0]), check_hidden_units(hidden_units[1])


def concat_context(inputs: tf.Tensor, context: tf.Tensor | None) -> tf.Tensor:
    """concat([inputs, context], -1), broadcasting the context [B, C] over leading sample axes."""
    if context is None:
        return inputs
    context = tf.cast(context, inputs.dtype)
    lead = tf.shape(inputs)[:-1]
    context = tf.broadcast_to(context, tf.concat([lead, tf.shape(context)[-1:]], axis=0))
    return tf.concat([inputs, context], axis=-1)


def context_features(context_shape) -> int:
    """The number of context features given the context's shape (0 without a context)."""
    return 0 if context_shape is None else context_shape[-1]


def activation_config(activation):
    """`activation` as a config value: its name, or Keras' serialization of a callable."""
    if isinstance(activation, str):
        return activation
    return keras.activations.serialize(keras.activations.get(activation))


def refuse_context(layer: keras.layers.Layer, context) -> None:
    """Raises a ValueError if an unconditional prior p(z) is given a context."""
    if context is not None:
        raise ValueError(
            f"{type(layer).__name__} is an unconditional prior p(z): it takes no context "
            "(call it as prior()). For a conditional model use a prior layer of the "
            "context, such as GaussianPrior."
        )


def flat_features(layer: keras.layers.Layer, x) -> tf.Tensor:
    """x as the layer's compute dtype; images [B, H, W, C] refused: a dense network.

    x may be [features], [B, features] or [S, B, features]; a rank of 4 or more is an
    image batch, whose last axis (the channels) a dense network would read as features.
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank is not None and x.shape.rank > 3:
        raise ValueError(
            f"{type(layer).__name__} is a dense network of x [B, features], but x has shape "
            f"{x.shape}: flatten it (tf.reshape(x, [B, -1]) or keras.layers.Flatten), or "
            "write a convolutional encoder for images."
        )
    return tf.cast(x, layer.compute_dtype)


class MLP(keras.layers.Layer):
    """Dense layers with `activation`, then a linear output layer of `output_size` units.

    The hidden layers are the attributes `hidden_0`, `hidden_1`, ... (`hidden` lists
    them): TF's object graph, which `tf.train.Checkpoint` saves, follows attributes but
    not the lists Keras tracks, whose layers a checkpoint would silently leave out.
    """

    def __init__(
        self,
        hidden_units: Sequence[int],
        output_size: int,
        activation,
        output_bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_units = check_hidden_units(hidden_units)
        activation = check_activation(activation)
        for i, units in enumerate(self.hidden_units):
            layer = keras.layers.Dense(
                units, activation=activation, name=f"hidden_{i}", dtype=self.dtype_policy
            )
            setattr(self, f"hidden_{i}", layer)
        self.output_layer = keras.layers.Dense(
            output_size,
            bias_initializer=output_bias_initializer,
            name="output",
            dtype=self.dtype_policy,
        )

    @property
    def hidden(self) -> list[keras.layers.Dense]:
        """The hidden Dense layers, first to last."""
        return [getattr(self, f"hidden_{i}") for i in range(len(self.hidden_units))]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = (*shape[:-1], layer.units)
        self.output_layer.build(shape)

    def call(self, inputs):
        if inputs.shape.rank == 1:  # one unbatched input, e.g. from prior.sample()
            return self.call(inputs[tf.newaxis])[0]
        h = inputs
        for layer in self.hidden:
            h = layer(h)
        return self.output_layer(h)


class DiagonalGaussian(keras.layers.Layer):
    """N(mu(h), diag(sigma(h)^2)) with [mu, sigma_raw] = MLP(h), sigma = softplus + floor."""

    def __init__(self, latent_size, hidden_units, activation, min_scale, **kwargs):
        super().__init__(**kwargs)
        self.latent_size = check_count("latent_size", latent_size)
        self.hidden_units = check_hidden_units(hidden_units)
        self.activation = check_activation(activation)
        self.min_scale = check_min_scale(min_scale)
        self.net = MLP(
            self.hidden_units, 2 * self.latent_size, activation, name="mlp", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        self.net.build((None, input_shape[-1]))

    def _distribution(self, inputs: tf.Tensor) -> tfd.Distribution:
        outputs = self.net(tf.cast(inputs, self.compute_dtype))
        # The distribution in the variables' dtype: float32 under mixed precision.
        loc, raw_scale = tf.split(tf.cast(outputs, self.variable_dtype), 2, axis=-1)
        scale = tf.nn.softplus(raw_scale) + self.min_scale
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)

    def call(self, inputs: tf.Tensor) -> tfd.Distribution:
        return self._distribution(inputs)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "latent_size": self.latent_size,
            "hidden_units": self.hidden_units,
            "activation": activation_config(self.activation),
            "min_scale": self.min_scale,
        }


class IndependentBernoulli(keras.layers.Layer):
    """prod_i Bernoulli(sigmoid(logit_i(h))), logits = MLP(h), in TFP's default int32 dtype."""

    def __init__(self, latent_size, hidden_units, activation, **kwargs):
        super().__init__(**kwargs)
        self.latent_size = check_count("latent_size", latent_size)
        self.net = MLP(
            hidden_units, self.latent_size, activation, name="mlp", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        self.net.build((None, input_shape[-1]))

    def call(self, inputs: tf.Tensor) -> tfd.Distribution:
        logits = tf.cast(self.net(tf.cast(inputs, self.compute_dtype)), self.variable_dtype)
        return tfd.Independent(tfd.Bernoulli(logits=logits), reinterpreted_batch_ndims=1)
