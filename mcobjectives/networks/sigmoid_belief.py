"""The encoder and prior of a sigmoid belief net: layers of binary (int32 Bernoulli) units.

A sigmoid belief net (Neal 1992) with two layers of 200 binary units, the 200-200-784
SBN of Mnih & Gregor (2014) and Mnih & Rezende (2016), whose score-function
estimators (NVIL, VIMCO; RWS, Bornschein & Bengio 2015) train it:
  q(z1|x) q(z2|z1)   784-200, 200-200, Bernoulli (int32)   `SigmoidBeliefEncoder()`
  p(z2) p(z1|z2)     learnable logits, 200-200, Bernoulli  `SigmoidBeliefPrior()`
  p(x|z1)            200-784, Bernoulli pixels             `BernoulliDecoder(784, (),
                                                                latent="z1")`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.networks.blocks import (
    IndependentBernoulli,
    activation_config,
    check_activation,
    check_hidden_units,
    check_latent_sizes,
    concat_context,
    context_features,
    flat_features,
    refuse_context,
)

tfd = tfp.distributions

__all__ = ["SigmoidBeliefEncoder", "SigmoidBeliefPrior"]


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
      name: the layer's name.
      **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (200, 200),
        hidden_units: Sequence[int] = (),
        activation: str = "tanh",
        name: str = "encoder",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.latent_sizes = check_latent_sizes(latent_sizes, (1, 2))
        self.hidden_units = check_hidden_units(hidden_units)
        self.activation = check_activation(activation)
        self.q_z1 = IndependentBernoulli(
            self.latent_sizes[0],
            self.hidden_units,
            activation,
            name="q_z1",
            dtype=self.dtype_policy,
        )
        self.q_z2 = None
        if len(self.latent_sizes) == 2:
            self.q_z2 = IndependentBernoulli(
                self.latent_sizes[1],
                self.hidden_units,
                activation,
                name="q_z2",
                dtype=self.dtype_policy,
            )

    def build(self, x_shape, context_shape=None):
        context_size = context_features(context_shape)
        self.q_z1.build((None, x_shape[-1] + context_size))
        if self.q_z2 is not None:
            self.q_z2.build((None, self.latent_sizes[0] + context_size))

    def call(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tfd.JointDistribution:
        model = {"z1": self.q_z1(concat_context(flat_features(self, x), context))}
        if self.q_z2 is not None:

            def q_z2(z1):
                return self.q_z2(concat_context(tf.cast(z1, self.compute_dtype), context))

            model["z2"] = q_z2
        return tfd.JointDistributionNamed(model)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "latent_sizes": self.latent_sizes,
            "hidden_units": self.hidden_units,
            "activation": activation_config(self.activation),
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
      name: the layer's name.
      **kwargs: passed to `keras.layers.Layer` (e.g. `dtype`, `trainable`).
    """

    def __init__(
        self,
        latent_sizes: Sequence[int] = (200, 200),
        hidden_units: Sequence[int] = (),
        activation: str = "tanh",
        name: str = "prior",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.latent_sizes = check_latent_sizes(latent_sizes, (1, 2))
        self.hidden_units = check_hidden_units(hidden_units)
        self.activation = check_activation(activation)
        self.p_z1 = None
        if len(self.latent_sizes) == 2:
            self.p_z1 = IndependentBernoulli(
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
        refuse_context(self, context)
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
            "activation": activation_config(self.activation),
        }
