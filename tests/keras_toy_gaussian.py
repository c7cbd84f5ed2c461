"""The toy Gaussian of tests/toy.py as Keras layers (float64), for the model-level tests.

z ~ N(mu, I) (a fixed prior), x | z ~ N(z, I) (`ToyDecoder`), q(z|x) = N(A x + b,
sigma^2 I) (`ToyEncoder`, A and b trainable, sigma fixed).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco

tfd = tfp.distributions

SIGMA = math.sqrt(2.0 / 3.0)


class ToyEncoder(keras.layers.Layer):
    def __init__(self, A, b, sigma=SIGMA, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.A = self.add_weight(shape=np.shape(A), initializer=keras.initializers.Constant(A))
        self.b = self.add_weight(shape=np.shape(b), initializer=keras.initializers.Constant(b))
        self.sigma = sigma

    def call(self, x):
        loc = tf.linalg.matvec(self.A, x) + self.b
        return tfd.Independent(tfd.Normal(loc, tf.constant(self.sigma, tf.float64)), 1)


class ToyDecoder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(dtype="float64", **kwargs)

    def call(self, z):
        return tfd.Independent(tfd.Normal(z, tf.ones_like(z)), 1)


def toy_model(mu, A, b, objective, seed=0, sigma=SIGMA):
    mu = np.asarray(mu, np.float64)
    prior = tfd.Independent(tfd.Normal(tf.constant(mu), tf.ones_like(mu)), 1)
    return mco.ImportanceWeightedAutoencoder(
        ToyEncoder(A, b, sigma), ToyDecoder(), prior, objective, seed=seed, dtype="float64"
    )
