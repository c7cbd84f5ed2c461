"""p(x|z): Bernoulli pixels from a dense network of one latent leaf (and a context).

The one-layer models decode z, the two-layer and sigmoid belief net models z1, the
layer next to the data (`latent="z1"`):
  p(x|z)    50-200-200-784, tanh, Bernoulli pixels    `BernoulliDecoder(784)`
  p(x|z1)   100-200-200-784                           `BernoulliDecoder(784, latent="z1")`
  p(x|z1)   200-784 (an SBN's linear-sigmoid layer)   `BernoulliDecoder(784, (), latent="z1")`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.core.checks import check_count
from mcobjectives.networks.bernoulli import PixelBernoulli
from mcobjectives.networks.blocks import (
    MLP,
    activation_config,
    check_activation,
    check_hidden_units,
    concat_context,
    context_features,
)

tfd = tfp.distributions

__all__ = ["BernoulliDecoder"]


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
      name: the layer's name.
      **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        event_size: int,
        hidden_units: Sequence[int] = (200, 200),
        activation: str = "tanh",
        mean_pixel: np.ndarray | Sequence[float] | None = None,
        latent: str | int | None = None,
        name: str = "decoder",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.event_size = check_count("event_size", event_size)
        if latent is not None and (isinstance(latent, bool) or not isinstance(latent, (str, int))):
            raise TypeError(f"`latent` must be None, a key or an index, got {latent!r}.")
        self.latent = latent
        self.hidden_units = check_hidden_units(hidden_units)
        self.activation = check_activation(activation)
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
        self.net = MLP(
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
        self.net.build((None, z_shape[-1] + context_features(context_shape)))

    def call(self, z: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        z = tf.cast(z, self.compute_dtype)  # the leaf `latent` names; binary latents too
        logits = self.net(concat_context(z, context))
        logits = tf.cast(logits, self.variable_dtype)  # float32 under mixed precision
        return PixelBernoulli(
            tfd.Bernoulli(logits=logits, dtype=logits.dtype), reinterpreted_batch_ndims=1
        )

    def get_config(self) -> dict:
        mean_pixel = None if self._mean_pixel is None else self._mean_pixel.tolist()
        return {
            **super().get_config(),
            "event_size": self.event_size,
            "hidden_units": self.hidden_units,
            "activation": activation_config(self.activation),
            "mean_pixel": mean_pixel,
            "latent": self.latent,
        }
