"""Keras layers that return TFP distributions: the encoders, decoders and priors of the papers.

Burda et al. (2016) and Rainforth et al. (2018) use, for MNIST, an encoder
784-200-200-(2 x 50) with tanh units giving a diagonal Gaussian q(z|x), and a decoder
50-200-200-784 with tanh units giving independent Bernoulli pixels. Tucker et al.
(2019) condition the prior and decoder on the top half of a digit (structured
prediction). These layers build exactly those models: each is a Keras layer whose call
returns a TFP distribution made from its dense layers' outputs (`tfp.layers` is written
for Keras 2 and cannot be used in Keras 3 models).

Each layer takes an optional `context`, concatenated to its input, so the same layers
build conditional models q(z|x, c), p(z|c) and p(x|z, c).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _checks

tfd = tfp.distributions

__all__ = ["BernoulliDecoder", "GaussianEncoder", "GaussianPrior"]


def _hidden_units(hidden_units: Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden_units, (str, bytes)) or not isinstance(hidden_units, Sequence):
        raise TypeError(f"`hidden_units` must be a sequence of ints, got {hidden_units!r}.")
    return tuple(_checks.check_count("hidden_units", h) for h in hidden_units)


def _concat_context(inputs: tf.Tensor, context: tf.Tensor | None) -> tf.Tensor:
    """concat([inputs, context], -1), broadcasting the context [B, C] over leading sample axes."""
    if context is None:
        return inputs
    context = tf.cast(context, inputs.dtype)
    lead = tf.shape(inputs)[:-1]
    context = tf.broadcast_to(context, tf.concat([lead, tf.shape(context)[-1:]], axis=0))
    return tf.concat([inputs, context], axis=-1)


class _MLP(keras.layers.Layer):
    """Dense layers with `activation`, then a linear output layer of `output_size` units."""

    def __init__(
        self,
        hidden_units: Sequence[int],
        output_size: int,
        activation: str,
        output_bias_initializer="zeros",
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.hidden = [
            keras.layers.Dense(h, activation=activation, name=f"hidden_{i}")
            for i, h in enumerate(_hidden_units(hidden_units))
        ]
        self.output_layer = keras.layers.Dense(
            output_size, bias_initializer=output_bias_initializer, name="output"
        )

    def call(self, inputs):
        h = inputs
        for layer in self.hidden:
            h = layer(h)
        return self.output_layer(h)


class _DiagonalGaussian(keras.layers.Layer):
    """N(mu(h), diag(sigma(h)^2)) with [mu, sigma_raw] = MLP(h), sigma = softplus + floor."""

    def __init__(self, latent_size, hidden_units, activation, min_scale, name):
        super().__init__(name=name)
        self.latent_size = _checks.check_count("latent_size", latent_size)
        self.min_scale = float(min_scale)
        self.net = _MLP(hidden_units, 2 * self.latent_size, activation, name="mlp")

    def _distribution(self, inputs: tf.Tensor) -> tfd.Distribution:
        loc, raw_scale = tf.split(self.net(tf.cast(inputs, self.compute_dtype)), 2, axis=-1)
        scale = tf.nn.softplus(raw_scale) + self.min_scale
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)


class GaussianEncoder(_DiagonalGaussian):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)) from an MLP; with a context, q(z|x, c).

    The MLP's last layer gives mu and sigma_raw; sigma = softplus(sigma_raw) + `min_scale`.

    Args:
      latent_size: the dimension of z (50 in Burda et al.).
      hidden_units: widths of the hidden layers ((200, 200) in Burda et al.).
      activation: the hidden units' activation ("tanh" in Burda et al.).
      min_scale: a floor on sigma, for numerical safety.
    """

    def __init__(
        self,
        latent_size: int,
        hidden_units: Sequence[int] = (200, 200),
        activation: str = "tanh",
        min_scale: float = 1e-4,
        name: str = "encoder",
    ):
        super().__init__(latent_size, hidden_units, activation, min_scale, name)

    def call(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        return self._distribution(_concat_context(tf.cast(x, self.compute_dtype), context))


class GaussianPrior(_DiagonalGaussian):
    """A conditional prior p(z|c) = N(mu(c), diag(sigma(c)^2)) from an MLP of the context.

    Tucker et al. (2019)'s structured prediction model: p(z|c) with two tanh layers of
    200 units, c the top half of the digit. Arguments as for `GaussianEncoder`.
    """

    def __init__(
        self,
        latent_size: int,
        hidden_units: Sequence[int] = (200, 200),
        activation: str = "tanh",
        min_scale: float = 1e-4,
        name: str = "prior",
    ):
        super().__init__(latent_size, hidden_units, activation, min_scale, name)

    def call(self, context: tf.Tensor) -> tfd.Distribution:
        return self._distribution(context)


class BernoulliDecoder(keras.layers.Layer):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i(z))) from an MLP; with a context, p(x|z, c).

    Args:
      event_size: the number of pixels (784 for MNIST).
      hidden_units: widths of the hidden layers ((200, 200) in Burda et al.).
      activation: the hidden units' activation.
      mean_pixel: optional [event_size] array of training-set mean intensities; the output
        bias starts at their logit (Tucker et al. 2019), so that the untrained decoder
        already predicts the average image.
    """

    def __init__(
        self,
        event_size: int,
        hidden_units: Sequence[int] = (200, 200),
        activation: str = "tanh",
        mean_pixel: np.ndarray | None = None,
        name: str = "decoder",
    ):
        super().__init__(name=name)
        self.event_size = _checks.check_count("event_size", event_size)
        bias = "zeros"
        if mean_pixel is not None:
            mean_pixel = np.asarray(mean_pixel, np.float64)
            if mean_pixel.shape != (self.event_size,):
                raise ValueError(
                    f"`mean_pixel` must have shape ({self.event_size},), got {mean_pixel.shape}."
                )
            clipped = np.clip(mean_pixel, 1e-3, 1 - 1e-3)
            bias = keras.initializers.Constant(np.log(clipped) - np.log1p(-clipped))
        self.net = _MLP(hidden_units, self.event_size, activation, bias, name="mlp")

    def call(self, z: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        logits = self.net(_concat_context(z, context))
        return tfd.Independent(
            tfd.Bernoulli(logits=logits, dtype=logits.dtype), reinterpreted_batch_ndims=1
        )
