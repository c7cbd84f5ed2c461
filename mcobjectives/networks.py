"""Keras layers that return TFP distributions: the encoders, decoders and priors of the papers.

Each layer is a Keras layer whose call returns a TFP distribution made from its dense
layers' outputs (`tfp.layers` is written for Keras 2 and cannot be used in Keras 3
models). The layers build these models:

One stochastic layer (Burda et al. 2016, section 5; Rainforth et al. 2018):
  q(z|x)    784-200-200-(2 x 50), tanh, diagonal Gaussian    `GaussianEncoder(50)`
  p(z)      N(0, I) over 50 latents                          a fixed `tfd` distribution
  p(x|z)    50-200-200-784, tanh, Bernoulli pixels           `BernoulliDecoder(784)`
Tucker et al. (2019) condition the prior and decoder on the top half of a digit
(structured prediction): `GaussianPrior` is p(z|c), and every layer here takes an
optional `context`, concatenated to its input, for q(z|x, c) and p(x|z, c).

Two stochastic layers (Burda et al. 2016, section 5 and appendix C): z1 of 100 units
next to the data and z2 of 50 units above it, two deterministic tanh layers of 200
units between x and z1 and two of 100 units between z1 and z2, in both networks:
  q(z1|x)   784-200-200-(2 x 100)   } `TwoLayerGaussianEncoder()`
  q(z2|z1)  100-100-100-(2 x 50)    }   JointDistributionNamed({"z1": ..., "z2": ...})
  p(z2)     N(0, I) over 50         } `TwoLayerGaussianPrior()`
  p(z1|z2)  50-100-100-(2 x 100)    }   JointDistributionNamed({"z2": ..., "z1": ...})
  p(x|z1)   100-200-200-784         `BernoulliDecoder(784, latent="z1")`

A sigmoid belief net (Neal 1992) with two layers of 200 binary units, the 200-200-784
SBN of Mnih & Gregor (2014) and Mnih & Rezende (2016), whose score-function
estimators (NVIL, VIMCO; RWS, Bornschein & Bengio 2015) train it:
  q(z1|x) q(z2|z1)   784-200, 200-200, Bernoulli (int32)   `SigmoidBeliefEncoder()`
  p(z2) p(z1|z2)     learnable logits, 200-200, Bernoulli  `SigmoidBeliefPrior()`
  p(x|z1)            200-784, Bernoulli pixels             `BernoulliDecoder(784, (),
                                                                latent="z1")`

Structured latents. The two-layer encoders return a `tfd.JointDistributionNamed` with
keys "z1" (next to the data) and "z2", so z is a dict of [S, B, *event] leaves; the
priors return the same structure. A decoder reads one leaf, named by its `latent`
argument. The priors of the two-layer families are unconditional: they take no
context and `ImportanceWeightedAutoencoder` calls them as `prior()`.

Inputs. Every layer takes unbatched inputs ([d]), flat batches ([N, d], e.g. the
S * B latents of a step flattened) and sample-and-batch ones ([S, B, d]); a context
([C], [N, C] or [B, C]) is broadcast over the leading axes of the input it joins.

Saving. Every layer is registered as a Keras serializable ("mcobjectives>" + its class
name): `get_config()` holds all its constructor arguments, so that
`keras.saving.serialize_keras_object` / `deserialize_keras_object` and `.keras` files
rebuild it, and every variable is an attribute path of the layer, so that
`tf.train.Checkpoint` saves and restores all of them.

Mixed precision. Under a "mixed_float16" or "mixed_bfloat16" policy the dense layers
compute in the low precision (the inputs x, z and context are cast to the compute
dtype on entry) while the variables, and the distributions returned, stay in float32:
the locations, scales and logits are cast back before the distribution is made.
Bernoulli latents stay int32.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _checks

tfd = tfp.distributions

__all__ = [
    "BernoulliDecoder",
    "GaussianEncoder",
    "GaussianPrior",
    "SigmoidBeliefEncoder",
    "SigmoidBeliefPrior",
    "TwoLayerGaussianEncoder",
    "TwoLayerGaussianPrior",
]


def _hidden_units(hidden_units: Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden_units, (str, bytes)) or not isinstance(hidden_units, Sequence):
        raise TypeError(f"`hidden_units` must be a sequence of ints, got {hidden_units!r}.")
    return tuple(_checks.check_count("hidden_units", h) for h in hidden_units)


def _min_scale(min_scale) -> float:
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


def _activation(activation):
    """`activation` itself, once Keras can interpret it (a name, a callable or None)."""
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`activation` must be the name of a Keras activation (e.g. 'tanh', 'relu') or "
            f"a callable, got {activation!r}: {error}"
        ) from None
    return activation


def _latent_sizes(latent_sizes: Sequence[int], lengths: tuple[int, ...]) -> tuple[int, ...]:
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
    return tuple(_checks.check_count("latent_sizes", n) for n in latent_sizes)


def _hidden_pair(hidden_units) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """((hidden units between x and z1), (hidden units between z1 and z2))."""
    if isinstance(hidden_units, (str, bytes)) or not (
        isinstance(hidden_units, Sequence) and len(hidden_units) == 2
    ):
        raise ValueError(
            "`hidden_units` must be a pair of sequences of ints, the hidden layers of "
            f"q(z1|x) and of q(z2|z1), e.g. ((200, 200), (100, 100)); got {hidden_units!r}."
        )
    return _hidden_units(hidden_units[0]), _hidden_units(hidden_units[1])


def _concat_context(inputs: tf.Tensor, context: tf.Tensor | None) -> tf.Tensor:
    """concat([inputs, context], -1), broadcasting the context [B, C] over leading sample axes."""
    if context is None:
        return inputs
    context = tf.cast(context, inputs.dtype)
    lead = tf.shape(inputs)[:-1]
    context = tf.broadcast_to(context, tf.concat([lead, tf.shape(context)[-1:]], axis=0))
    return tf.concat([inputs, context], axis=-1)


def _context_size(context_shape) -> int:
    """The number of context features given the context's shape (0 without a context)."""
    return 0 if context_shape is None else context_shape[-1]


def _activation_config(activation):
    """`activation` as a config value: its name, or Keras' serialization of a callable."""
    if isinstance(activation, str):
        return activation
    return keras.activations.serialize(keras.activations.get(activation))


def _refuse_context(layer: keras.layers.Layer, context) -> None:
    if context is not None:
        raise ValueError(
            f"{type(layer).__name__} is an unconditional prior p(z): it takes no context "
            "(call it as prior()). For a conditional model use a prior layer of the "
            "context, such as GaussianPrior."
        )


def _flat_features(layer: keras.layers.Layer, x) -> tf.Tensor:
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


def _check_event_shape(distribution: tfd.Distribution, x) -> None:
    """x's trailing dimensions must be the decoder's event shape (e.g. [784] for MNIST)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        return
    shape, event = tf.TensorShape(shape), distribution.event_shape
    if shape.rank is None or event.rank is None:
        return
    if shape.rank < event.rank or not shape[shape.rank - event.rank :].is_compatible_with(event):
        raise ValueError(
            f"p(x|z) of a BernoulliDecoder has event shape {event} but x has shape {shape}: "
            f"flatten x to [B, {event.num_elements()}] (as the encoder reads it), or use a "
            "decoder whose event shape is x's (e.g. tfd.Independent(..., 3) for images)."
        )


def _refuse_raw_intensities(x) -> None:
    """Raises a TypeError if x (a tensor or an array) is uint8, the dtype of raw pixels."""
    try:
        dtype = tf.as_dtype(x.dtype)
    except (AttributeError, TypeError):  # a list, or no TF dtype: converted to float32
        return
    if dtype == tf.uint8:
        raise TypeError(
            "p(x|z) of a BernoulliDecoder: log_prob(x) got pixels x of dtype uint8, raw "
            "intensities (0-255), but Bernoulli pixels must lie in [0, 1]. Pass "
            "tf.cast(x, tf.float32) / 255, or binarize them (e.g. tf.cast(tf.random.uniform("
            "tf.shape(x)) * 255 < tf.cast(x, tf.float32), tf.float32)); uint8 pixels that "
            "are already 0/1 need only tf.cast(x, tf.float32)."
        )


_PIXELS_NEEDED = (
    "p(x|z) of a BernoulliDecoder: log_prob(x) needs pixels x in [0, 1] (binary, or "
    "probabilities), but the pixels of x range over"
)
_PIXELS_FIX = "scale raw intensities to [0, 1] (x / 255) or binarize them."


def _finite_range(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(min, max) of x's finite values (NaN and infinite pixels read as 0)."""
    if not x.dtype.is_floating:
        return tf.reduce_min(x), tf.reduce_max(x)
    finite = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
    return tf.reduce_min(finite), tf.reduce_max(finite)


def _in_unit_interval(low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
    return tf.logical_and(low >= 0, high <= 1)


def _checked_pixels(x: tf.Tensor) -> tf.Tensor:
    """x, after a check that its finite pixels lie in [0, 1].

    Finite values outside [0, 1] fail a `tf.debugging.Assert`, at once eagerly or
    when the graph runs. NaN and infinite pixels pass: they make the loss non-finite,
    and `ImportanceWeightedAutoencoder` skips such a step (a corrupt pixel in one batch
    should not stop a run that raw intensities must). XLA compiles assertions away:
    under `jit_compile` only the static uint8 refusal remains.

    Cost: one `reduce_min` and one `reduce_max` of x. Only when they leave [0, 1]
    (a NaN, an infinity or a pixel out of range) does a `tf.cond` branch compute the
    range of the finite pixels, which the assertion checks and names.
    """
    _refuse_raw_intensities(x)
    if x.dtype == tf.bool:
        return x
    plain = _in_unit_interval(tf.reduce_min(x), tf.reduce_max(x))
    if tf.executing_eagerly():
        if not plain:
            low, high = _finite_range(x)
            if not _in_unit_interval(low, high):
                message = f"{_PIXELS_NEEDED} [{low.numpy()}, {high.numpy()}]: {_PIXELS_FIX}"
                raise tf.errors.InvalidArgumentError(None, None, message)
        return x

    def finite_pixels_in_range():
        low, high = _finite_range(x)
        in_range = _in_unit_interval(low, high)
        data = [_PIXELS_NEEDED, "[min, max] =", low, high, ":", _PIXELS_FIX]
        with tf.control_dependencies([tf.debugging.Assert(in_range, data)]):
            return tf.identity(in_range)

    checked = tf.cond(plain, lambda: plain, finite_pixels_in_range)
    with tf.control_dependencies([checked]):
        return tf.identity(x)


@tf.custom_gradient
def _bernoulli_log_prob(x: tf.Tensor, logits: tf.Tensor):
    """log Bernoulli(x; sigmoid(l)) per pixel: x l - softplus(l).

    TFP's x log p + (1 - x) log(1 - p) = -(1 - x) softplus(l) - x softplus(-l), in one
    softplus; the two differ by float rounding, at most a few ulps of softplus(|l|) per
    pixel. The gradient with respect to l is x - sigmoid(l). NaN and infinite pixels
    give a non-finite value, and so does an infinite logit (NaN or -inf, where TFP's
    value for a pixel that the logit makes certain is 0): the decoder's logits, outputs
    of a dense layer, are finite unless its computation overflowed.

    softplus(l) is written max(l, 0) + log(1 + exp(-|l|)), which XLA and TF's kernels
    evaluate faster than their softplus and log1p (for |l| > 17 the log term rounds to
    0 where it is below float32's resolution of softplus(|l|) = |l|), and the gradient
    is given directly, x - sigmoid(l), rather than traced through |l| (whose
    derivative TF takes as 0 at l = 0).
    """
    value = x * logits - tf.nn.relu(logits) - tf.math.log(1.0 + tf.exp(-tf.abs(logits)))

    def gradient(upstream):
        return upstream * logits, upstream * (x - tf.sigmoid(logits))

    return value, gradient


class _PixelBernoulli(tfd.Independent):
    """Independent Bernoulli pixels: log_prob(x) = sum x l - softplus(l), for x in [0, 1].

    A `tfd.Independent` of a float `tfd.Bernoulli(logits=l)`: sampling, the mean, the
    event shape, entropies and the like are TFP's, and `log_prob`, `prob` and
    `unnormalized_log_prob` compute the Bernoulli log-probability of x from the
    logits themselves (`_bernoulli_log_prob`: one softplus per pixel, rather than TFP's
    two softplus and two `multiply_no_nan`). TFP's formula takes any real x: raw
    intensities (0-255) give no likelihood at all, and a "bound" that can be positive.
    So before TFP converts x, uint8 x (raw intensities) is refused and x's event shape
    checked, and the range of any other x is checked (`_checked_pixels`).
    """

    def log_prob(self, value, name="log_prob", **kwargs):
        _refuse_raw_intensities(value)
        _check_event_shape(self, value)
        return super().log_prob(value, name=name, **kwargs)

    def prob(self, value, name="prob", **kwargs):
        _refuse_raw_intensities(value)
        _check_event_shape(self, value)
        return super().prob(value, name=name, **kwargs)

    def unnormalized_log_prob(self, value, name="unnormalized_log_prob", **kwargs):
        _refuse_raw_intensities(value)
        _check_event_shape(self, value)
        return super().unnormalized_log_prob(value, name=name, **kwargs)

    def _log_prob(self, x, **kwargs):
        del kwargs  # a Bernoulli's log_prob takes no other arguments
        bernoulli = self.distribution
        logits = bernoulli.logits
        logits = bernoulli.logits_parameter() if logits is None else tf.convert_to_tensor(logits)
        x = tf.cast(_checked_pixels(x), logits.dtype)
        ndims = tf.get_static_value(self.reinterpreted_batch_ndims)
        if ndims is None:
            axis = -1 - tf.range(self.reinterpreted_batch_ndims)
        else:
            axis = list(range(-int(ndims), 0))
        return tf.reduce_sum(_bernoulli_log_prob(x, logits), axis=axis)

    def _unnormalized_log_prob(self, x, **kwargs):
        return self._log_prob(x, **kwargs)  # a Bernoulli is normalized


class _MLP(keras.layers.Layer):
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
        self.hidden_units = _hidden_units(hidden_units)
        activation = _activation(activation)
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


class _DiagonalGaussian(keras.layers.Layer):
    """N(mu(h), diag(sigma(h)^2)) with [mu, sigma_raw] = MLP(h), sigma = softplus + floor."""

    def __init__(self, latent_size, hidden_units, activation, min_scale, **kwargs):
        super().__init__(**kwargs)
        self.latent_size = _checks.check_count("latent_size", latent_size)
        self.hidden_units = _hidden_units(hidden_units)
        self.activation = _activation(activation)
        self.min_scale = _min_scale(min_scale)
        self.net = _MLP(
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
            "activation": _activation_config(self.activation),
            "min_scale": self.min_scale,
        }


class _IndependentBernoulli(keras.layers.Layer):
    """prod_i Bernoulli(sigmoid(logit_i(h))), logits = MLP(h), in TFP's default int32 dtype."""

    def __init__(self, latent_size, hidden_units, activation, **kwargs):
        super().__init__(**kwargs)
        self.latent_size = _checks.check_count("latent_size", latent_size)
        self.net = _MLP(
            hidden_units, self.latent_size, activation, name="mlp", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        self.net.build((None, input_shape[-1]))

    def call(self, inputs: tf.Tensor) -> tfd.Distribution:
        logits = tf.cast(self.net(tf.cast(inputs, self.compute_dtype)), self.variable_dtype)
        return tfd.Independent(tfd.Bernoulli(logits=logits), reinterpreted_batch_ndims=1)


@keras.saving.register_keras_serializable(package="mcobjectives")
class GaussianEncoder(_DiagonalGaussian):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)) from an MLP; with a context, q(z|x, c).

    The MLP's last layer gives mu and sigma_raw; sigma = softplus(sigma_raw) + `min_scale`.

    Args:
      latent_size: the dimension of z (50 in Burda et al.).
      hidden_units: widths of the hidden layers ((200, 200) in Burda et al.).
      activation: the hidden units' activation ("tanh" in Burda et al.).
      min_scale: a floor on sigma, for numerical safety.
      name, **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_size: int,
        hidden_units: Sequence[int] = (200, 200),
        activation: str = "tanh",
        min_scale: float = 1e-4,
        name: str = "encoder",
        **kwargs,
    ):
        super().__init__(latent_size, hidden_units, activation, min_scale, name=name, **kwargs)

    def build(self, x_shape, context_shape=None):
        self.net.build((None, x_shape[-1] + _context_size(context_shape)))

    def call(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        return self._distribution(_concat_context(_flat_features(self, x), context))


@keras.saving.register_keras_serializable(package="mcobjectives")
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
        **kwargs,
    ):
        super().__init__(latent_size, hidden_units, activation, min_scale, name=name, **kwargs)

    def call(self, context: tf.Tensor) -> tfd.Distribution:
        return self._distribution(context)


@keras.saving.register_keras_serializable(package="mcobjectives")
class TwoLayerGaussianEncoder(keras.layers.Layer):
    """q(z1, z2|x) = q(z1|x) q(z2|z1), diagonal Gaussians: Burda et al.'s two-layer encoder.

    Returns `tfd.JointDistributionNamed({"z1": q(z1|x), "z2": lambda z1: q(z2|z1)})`
    with batch shape [B]; samples are dicts {"z1": [S, B, 100], "z2": [S, B, 50]}.
    Each conditional is an MLP with tanh hidden layers whose output gives mu and
    sigma_raw, sigma = softplus(sigma_raw) + `min_scale` (Burda et al. exponentiate the
    predicted variances; softplus keeps the scale's gradient bounded). With the
    defaults (Burda et al. 2016, section 5 and appendix C):

      q(z1|x)   x-200-200-(2 x 100)
      q(z2|z1)  100-100-100-(2 x 50)

    With a context, both conditionals also read it: q(z1|x, c) q(z2|z1, c).

    Args:
      latent_sizes: (size of z1, size of z2); (100, 50) in Burda et al.
      hidden_units: (hidden widths of q(z1|x), hidden widths of q(z2|z1));
        ((200, 200), (100, 100)) in Burda et al.
      activation: the hidden units' activation ("tanh" in Burda et al.).
      min_scale: a floor on sigma, for numerical safety.
      name, **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (100, 50),
        hidden_units: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
        activation: str = "tanh",
        min_scale: float = 1e-4,
        name: str = "encoder",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.latent_sizes = _latent_sizes(latent_sizes, (2,))
        self.hidden_units = _hidden_pair(hidden_units)
        self.activation = _activation(activation)
        self.min_scale = _min_scale(min_scale)
        self.q_z1 = _DiagonalGaussian(
            self.latent_sizes[0],
            self.hidden_units[0],
            activation,
            self.min_scale,
            name="q_z1",
            dtype=self.dtype_policy,
        )
        self.q_z2 = _DiagonalGaussian(
            self.latent_sizes[1],
            self.hidden_units[1],
            activation,
            self.min_scale,
            name="q_z2",
            dtype=self.dtype_policy,
        )

    def build(self, x_shape, context_shape=None):
        context_size = _context_size(context_shape)
        self.q_z1.build((None, x_shape[-1] + context_size))
        self.q_z2.build((None, self.latent_sizes[0] + context_size))

    def call(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tfd.JointDistribution:
        q_z1 = self.q_z1(_concat_context(_flat_features(self, x), context))

        def q_z2(z1):
            return self.q_z2(_concat_context(tf.cast(z1, self.compute_dtype), context))

        return tfd.JointDistributionNamed({"z1": q_z1, "z2": q_z2})

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "latent_sizes": self.latent_sizes,
            "hidden_units": self.hidden_units,
            "activation": _activation_config(self.activation),
            "min_scale": self.min_scale,
        }


@keras.saving.register_keras_serializable(package="mcobjectives")
class TwoLayerGaussianPrior(keras.layers.Layer):
    """p(z1, z2) = p(z2) p(z1|z2): Burda et al.'s two-layer prior, with a trainable conditional.

    Called with no arguments (`prior()`), it returns
    `tfd.JointDistributionNamed({"z2": N(0, I), "z1": lambda z2: N(mu(z2), sigma(z2))})`:
    p(z2) a standard normal over 50 latents (batch shape [], broadcast over samples and
    data points), p(z1|z2) a diagonal Gaussian over 100 latents from a 50-100-100-(2 x
    100) tanh MLP of z2 (Burda et al. 2016, section 5 and appendix C), sigma =
    softplus(sigma_raw) + `min_scale`. Its variables are created when the layer is
    first called, and `ImportanceWeightedAutoencoder` counts them among the model
    variables. The prior is unconditional: a context is refused.

    Args:
      latent_sizes: (size of z1, size of z2); (100, 50) in Burda et al.
      hidden_units: hidden widths of p(z1|z2); (100, 100) in Burda et al.
      activation: the hidden units' activation ("tanh" in Burda et al.).
      min_scale: a floor on sigma, for numerical safety.
      name, **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (100, 50),
        hidden_units: Sequence[int] = (100, 100),
        activation: str = "tanh",
        min_scale: float = 1e-4,
        name: str = "prior",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.latent_sizes = _latent_sizes(latent_sizes, (2,))
        self.hidden_units = _hidden_units(hidden_units)
        self.activation = _activation(activation)
        self.min_scale = _min_scale(min_scale)
        self.p_z1 = _DiagonalGaussian(
            self.latent_sizes[0],
            self.hidden_units,
            activation,
            self.min_scale,
            name="p_z1",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape=None):
        del input_shape  # no input: the conditional reads z2
        self.p_z1.build((None, self.latent_sizes[1]))

    def call(self, context: tf.Tensor | None = None) -> tfd.JointDistribution:
        _refuse_context(self, context)
        zeros = tf.zeros([self.latent_sizes[1]], self.variable_dtype)
        p_z2 = tfd.Independent(tfd.Normal(zeros, tf.ones_like(zeros)), reinterpreted_batch_ndims=1)

        def p_z1(z2):
            return self.p_z1(z2)

        return tfd.JointDistributionNamed({"z2": p_z2, "z1": p_z1})

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "latent_sizes": self.latent_sizes,
            "hidden_units": self.hidden_units,
            "activation": _activation_config(self.activation),
            "min_scale": self.min_scale,
        }


@keras.saving.register_keras_serializable(package="mcobjectives")
class SigmoidBeliefEncoder(keras.layers.Layer):
    """q(z1|x) q(z2|z1) of a sigmoid belief net: independent Bernoullis in int32.

    Returns `tfd.JointDistributionNamed({"z1": q(z1|x), "z2": lambda z1: q(z2|z1)})`
    (only "z1" for one layer), batch shape [B]; each conditional is
    prod_i Bernoulli(sigmoid(logit_i)) in TFP's default int32 dtype, with logits an
    affine function of the layer below (`hidden_units=()`, the default) or an MLP of it.
    The defaults mirror the generative model, as the inference networks of Mnih &
    Gregor (2014), Bornschein & Bengio (2015) and Mnih & Rezende (2016) do:

      q(z1|x)   x-200, linear-sigmoid
      q(z2|z1)  200-200, linear-sigmoid

    Linear-sigmoid conditionals are the sigmoid belief net of those papers (Neal 1992),
    whose published results the score-function objectives are compared on; the binary
    units are the nonlinearity, and one matmul per layer keeps a K = 64 step cheap.
    Samples are discrete, so only score-function objectives (`RWS`, `VIMCO`) train it;
    the others refuse it, naming the leaf.

    Args:
      latent_sizes: binary units per layer, z1 first: (200, 200), or (200,) for one.
      hidden_units: hidden widths of every conditional's MLP; () for linear-sigmoid.
      activation: the hidden units' activation, when there are hidden units.
      name, **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (200, 200),
        hidden_units: Sequence[int] = (),
        activation: str = "tanh",
        name: str = "encoder",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.latent_sizes = _latent_sizes(latent_sizes, (1, 2))
        self.hidden_units = _hidden_units(hidden_units)
        self.activation = _activation(activation)
        self.q_z1 = _IndependentBernoulli(
            self.latent_sizes[0],
            self.hidden_units,
            activation,
            name="q_z1",
            dtype=self.dtype_policy,
        )
        self.q_z2 = None
        if len(self.latent_sizes) == 2:
            self.q_z2 = _IndependentBernoulli(
                self.latent_sizes[1],
                self.hidden_units,
                activation,
                name="q_z2",
                dtype=self.dtype_policy,
            )

    def build(self, x_shape, context_shape=None):
        context_size = _context_size(context_shape)
        self.q_z1.build((None, x_shape[-1] + context_size))
        if self.q_z2 is not None:
            self.q_z2.build((None, self.latent_sizes[0] + context_size))

    def call(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tfd.JointDistribution:
        model = {"z1": self.q_z1(_concat_context(_flat_features(self, x), context))}
        if self.q_z2 is not None:

            def q_z2(z1):
                return self.q_z2(_concat_context(tf.cast(z1, self.compute_dtype), context))

            model["z2"] = q_z2
        return tfd.JointDistributionNamed(model)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "latent_sizes": self.latent_sizes,
            "hidden_units": self.hidden_units,
            "activation": _activation_config(self.activation),
        }


@keras.saving.register_keras_serializable(package="mcobjectives")
class SigmoidBeliefPrior(keras.layers.Layer):
    """p(z2) p(z1|z2) of a sigmoid belief net, with learnable top-layer logits.

    Called with no arguments (`prior()`), it returns
    `tfd.JointDistributionNamed({"z2": Bernoulli(sigmoid(b)), "z1": lambda z2:
    Bernoulli(sigmoid(W z2 + c))})` (only "z1": Bernoulli(sigmoid(b)) for one layer),
    independent int32 Bernoullis: b a learnable vector of logits (initialised at 0,
    p = 1/2), p(z1|z2) linear-sigmoid (`hidden_units=()`, the 200-200 layer of Mnih &
    Gregor 2014 and Mnih & Rezende 2016) or an MLP of z2. The prior is unconditional:
    a context is refused.

    Args:
      latent_sizes: binary units per layer, z1 first: (200, 200), or (200,) for one.
      hidden_units: hidden widths of p(z1|z2)'s MLP; () for linear-sigmoid.
      activation: the hidden units' activation, when there are hidden units.
      name, **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (200, 200),
        hidden_units: Sequence[int] = (),
        activation: str = "tanh",
        name: str = "prior",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.latent_sizes = _latent_sizes(latent_sizes, (1, 2))
        self.hidden_units = _hidden_units(hidden_units)
        self.activation = _activation(activation)
        self.p_z1 = None
        if len(self.latent_sizes) == 2:
            self.p_z1 = _IndependentBernoulli(
                self.latent_sizes[0],
                self.hidden_units,
                activation,
                name="p_z1",
                dtype=self.dtype_policy,
            )

    def build(self, input_shape=None):
        del input_shape  # no input: the top layer has free logits
        # Not autocast: the logits are read in float32 under mixed precision too.
        self.top_logits = self.add_weight(
            shape=(self.latent_sizes[-1],), initializer="zeros", autocast=False, name="top_logits"
        )
        if self.p_z1 is not None:
            self.p_z1.build((None, self.latent_sizes[1]))

    def call(self, context: tf.Tensor | None = None) -> tfd.JointDistribution:
        _refuse_context(self, context)
        top = tfd.Independent(
            tfd.Bernoulli(logits=tf.convert_to_tensor(self.top_logits)),
            reinterpreted_batch_ndims=1,
        )
        if self.p_z1 is None:
            return tfd.JointDistributionNamed({"z1": top})

        def p_z1(z2):
            return self.p_z1(z2)

        return tfd.JointDistributionNamed({"z2": top, "z1": p_z1})

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "latent_sizes": self.latent_sizes,
            "hidden_units": self.hidden_units,
            "activation": _activation_config(self.activation),
        }


@keras.saving.register_keras_serializable(package="mcobjectives")
class BernoulliDecoder(keras.layers.Layer):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i(z))) from an MLP; with a context, p(x|z, c).

    For structured latents (z a dict or list, q a `JointDistribution`), `latent` names
    the leaf the decoder reads: `latent="z1"` for the two-layer models, whose p(x|z1)
    depends on the layer next to the data only. Discrete (integer) latents are cast to
    the layer's float dtype.

    Pixels. The returned distribution (a `tfd.Independent` of a float `tfd.Bernoulli`)
    is a likelihood only for x in [0, 1]: binary pixels (e.g. dynamically binarized) or
    probabilities. Its `log_prob(x)` is sum_i x_i l_i - softplus(l_i) of the logits l,
    TFP's Bernoulli log-probability up to float rounding (at most a few ulps of
    softplus(|l_i|) per pixel) in one softplus, after a check of x: uint8 x (raw
    intensities, 0-255) is refused when traced, with a TypeError; any other x (float,
    or integer or bool 0/1 such as Bernoulli draws) with a finite pixel outside [0, 1]
    fails a `tf.debugging.Assert` naming the range found; NaN and infinite pixels give
    a non-finite log-probability. XLA compiles that assertion away, so under
    `jit_compile` only the dtype check remains. Sampling, the mean and the other
    methods are TFP's.

    Args:
      event_size: the number of pixels (784 for MNIST).
      hidden_units: widths of the hidden layers ((200, 200) in Burda et al.; () for the
        linear-sigmoid output layer of a sigmoid belief net).
      activation: the hidden units' activation.
      mean_pixel: optional [event_size] array of training-set mean intensities; the output
        bias starts at their logit (Tucker et al. 2019), so that the untrained decoder
        already predicts the average image.
      latent: None if z is a single tensor; else the key (or index) of the leaf of z
        to read.
      name, **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        event_size: int,
        hidden_units: Sequence[int] = (200, 200),
        activation: str = "tanh",
        mean_pixel: np.ndarray | Sequence[float] | None = None,
        latent: str | int | None = None,
        name: str = "decoder",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.event_size = _checks.check_count("event_size", event_size)
        if latent is not None and (isinstance(latent, bool) or not isinstance(latent, (str, int))):
            raise TypeError(f"`latent` must be None, a key or an index, got {latent!r}.")
        self.latent = latent
        self.hidden_units = _hidden_units(hidden_units)
        self.activation = _activation(activation)
        self._mean_pixel = None
        bias = "zeros"
        if mean_pixel is not None:
            mean_pixel = np.array(mean_pixel, np.float64)
            if mean_pixel.shape != (self.event_size,):
                raise ValueError(
                    f"`mean_pixel` must have shape ({self.event_size},), got {mean_pixel.shape}."
                )
            # Clipping below would turn raw intensities (0-255) into a bias of ~6.9 for
            # every lit pixel, and NaN passes np.clip: both would start training silently
            # from a wrong bias.
            outside = ~((mean_pixel >= 0) & (mean_pixel <= 1))  # NaN counts as outside
            if outside.any():
                raise ValueError(
                    f"`mean_pixel` must hold mean pixel intensities in [0, 1] (of the "
                    f"training images as the decoder scores them), but {int(outside.sum())} "
                    f"of its values are not (range [{np.nanmin(mean_pixel)}, "
                    f"{np.nanmax(mean_pixel)}], {int(np.isnan(mean_pixel).sum())} NaN): "
                    "scale raw intensities by 1/255 and drop NaN images."
                )
            mean_pixel.flags.writeable = False
            self._mean_pixel = mean_pixel
            clipped = np.clip(mean_pixel, 1e-3, 1 - 1e-3)
            bias = keras.initializers.Constant(np.log(clipped) - np.log1p(-clipped))
        self.net = _MLP(
            self.hidden_units,
            self.event_size,
            activation,
            bias,
            name="mlp",
            dtype=self.dtype_policy,
        )

    @property
    def mean_pixel(self) -> np.ndarray | None:
        """The mean intensities the output bias started from (read-only), or None."""
        return self._mean_pixel

    def _leaf(self, z):
        if self.latent is None:
            if tf.nest.is_nested(z):
                raise ValueError(
                    f"{type(self).__name__} received structured latents (a "
                    f"{type(z).__name__} of {len(tf.nest.flatten(z))} leaves): pass "
                    "`latent`, the key or index of the leaf p(x|z) reads, e.g. "
                    "BernoulliDecoder(784, latent='z1')."
                )
            return z
        if not tf.nest.is_nested(z):
            raise ValueError(
                f"{type(self).__name__}(latent={self.latent!r}) reads one leaf of structured "
                "latents, but z is a single tensor: leave `latent` unset."
            )
        try:
            return z[self.latent]
        except (KeyError, IndexError, TypeError):
            keys = list(z) if isinstance(z, dict) else list(range(len(z)))
            raise ValueError(
                f"{type(self).__name__}(latent={self.latent!r}): z has no such leaf; its "
                f"leaves are {keys}."
            ) from None

    def __call__(self, z, *args, **kwargs):
        # The leaf is picked before Keras sees the input, so Keras builds the layer for it.
        return super().__call__(self._leaf(z), *args, **kwargs)

    def build(self, z_shape, context_shape=None):
        self.net.build((None, z_shape[-1] + _context_size(context_shape)))

    def call(self, z: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        z = tf.cast(z, self.compute_dtype)  # the leaf `latent` names; binary latents too
        logits = self.net(_concat_context(z, context))
        logits = tf.cast(logits, self.variable_dtype)  # float32 under mixed precision
        return _PixelBernoulli(
            tfd.Bernoulli(logits=logits, dtype=logits.dtype), reinterpreted_batch_ndims=1
        )

    def get_config(self) -> dict:
        mean_pixel = None if self._mean_pixel is None else self._mean_pixel.tolist()
        return {
            **super().get_config(),
            "event_size": self.event_size,
            "hidden_units": self.hidden_units,
            "activation": _activation_config(self.activation),
            "mean_pixel": mean_pixel,
            "latent": self.latent,
        }
