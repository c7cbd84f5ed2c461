"""Diagonal Gaussian encoders and priors: Burda et al.'s one- and two-layer VAEs.

One stochastic layer (Burda et al. 2016, section 5; Rainforth et al. 2018):
  q(z|x)    784-200-200-(2 x 50), tanh, diagonal Gaussian    `GaussianEncoder(50)`
  p(z)      N(0, I) over 50 latents                          a fixed `tfd` distribution
Tucker et al. (2019) condition the prior and decoder on the top half of a digit
(structured prediction): `GaussianPrior` is p(z|c).

Two stochastic layers (Burda et al. 2016, section 5 and appendix C): z1 of 100 units
next to the data and z2 of 50 units above it, two deterministic tanh layers of 200
units between x and z1 and two of 100 units between z1 and z2, in both networks:
  q(z1|x)   784-200-200-(2 x 100)   } `TwoLayerGaussianEncoder()`
  q(z2|z1)  100-100-100-(2 x 50)    }   JointDistributionNamed({"z1": ..., "z2": ...})
  p(z2)     N(0, I) over 50         } `TwoLayerGaussianPrior()`
  p(z1|z2)  50-100-100-(2 x 100)    }   JointDistributionNamed({"z2": ..., "z1": ...})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.networks.blocks import (
    DiagonalGaussian,
    activation_config,
    check_activation,
    check_hidden_pair,
    check_hidden_units,
    check_latent_sizes,
    check_min_scale,
    concat_context,
    context_features,
    flat_features,
    refuse_context,
)

tfd = tfp.distributions

__all__ = [
    "GaussianEncoder",
    "GaussianPrior",
    "TwoLayerGaussianEncoder",
    "TwoLayerGaussianPrior",
]


@keras.saving.register_keras_serializable(package="mcobjectives")
class GaussianEncoder(DiagonalGaussian):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)) from an MLP; with a context, q(z|x, c).

    The MLP's last layer gives mu and sigma_raw; sigma = softplus(sigma_raw) + `min_scale`.

    Args:
      latent_size: the dimension of z (50 in Burda et al.).
      hidden_units: widths of the hidden layers ((200, 200) in Burda et al.).
      activation: the hidden units' activation ("tanh" in Burda et al.).
      min_scale: a floor on sigma, for numerical safety.
      name: the layer's name.
      **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_size: int,
        hidden_units: Sequence[int] = (200, 200),
        activation: str = "tanh",
        min_scale: float = 1e-4,
        name: str = "encoder",
        **kwargs: Any,
    ):
        super().__init__(latent_size, hidden_units, activation, min_scale, name=name, **kwargs)

    def build(self, x_shape, context_shape=None):
        self.net.build((None, x_shape[-1] + context_features(context_shape)))

    def call(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        return self._distribution(concat_context(flat_features(self, x), context))


@keras.saving.register_keras_serializable(package="mcobjectives")
class GaussianPrior(DiagonalGaussian):
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
        **kwargs: Any,
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
      name: the layer's name.
      **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (100, 50),
        hidden_units: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
        activation: str = "tanh",
        min_scale: float = 1e-4,
        name: str = "encoder",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.latent_sizes = check_latent_sizes(latent_sizes, (2,))
        self.hidden_units = check_hidden_pair(hidden_units)
        self.activation = check_activation(activation)
        self.min_scale = check_min_scale(min_scale)
        self.q_z1 = DiagonalGaussian(
            self.latent_sizes[0],
            self.hidden_units[0],
            activation,
            self.min_scale,
            name="q_z1",
            dtype=self.dtype_policy,
        )
        self.q_z2 = DiagonalGaussian(
            self.latent_sizes[1],
            self.hidden_units[1],
            activation,
            self.min_scale,
            name="q_z2",
            dtype=self.dtype_policy,
        )

    def build(self, x_shape, context_shape=None):
        context_size = context_features(context_shape)
        self.q_z1.build((None, x_shape[-1] + context_size))
        self.q_z2.build((None, self.latent_sizes[0] + context_size))

    def call(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tfd.JointDistribution:
        q_z1 = self.q_z1(concat_context(flat_features(self, x), context))

        def q_z2(z1):
            return self.q_z2(concat_context(tf.cast(z1, self.compute_dtype), context))

        return tfd.JointDistributionNamed({"z1": q_z1, "z2": q_z2})

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "latent_sizes": self.latent_sizes,
            "hidden_units": self.hidden_units,
            "activation": activation_config(self.activation),
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
      name: the layer's name.
      **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (100, 50),
        hidden_units: Sequence[int] = (100, 100),
        activation: str = "tanh",
        min_scale: float = 1e-4,
        name: str = "prior",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.latent_sizes = check_latent_sizes(latent_sizes, (2,))
        self.hidden_units = check_hidden_units(hidden_units)
        self.activation = check_activation(activation)
        self.min_scale = check_min_scale(min_scale)
        self.p_z1 = DiagonalGaussian(
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
        refuse_context(self, context)
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
            "activation": activation_config(self.activation),
            "min_scale": self.min_scale,
        }
