"""The toy Gaussian of Rainforth et al. (2018) section 4, in TensorFlow, for the tests.

z ~ N(mu, I), x | z ~ N(z, I); q(z|x) = N(A x + b, sigma^2 I) (sigma^2 = 2/3 by default).
Parameters may carry a leading replicate axis ([R, D], [R, D, D], data x [R, D]) so that
R independent gradient estimates come out of one batched computation.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco

tfd = tfp.distributions

SIGMA = math.sqrt(2.0 / 3.0)


def make_q(A, b, x, sigma=SIGMA):
    loc = tf.linalg.matvec(A, x) + b
    scale = tf.constant(sigma, loc.dtype)
    return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)


def make_log_joint(mu, x):
    ones = tf.ones_like(mu)
    return mco.make_log_joint(
        tfd.MultivariateNormalDiag(mu, ones),
        lambda z: tfd.MultivariateNormalDiag(z, tf.ones_like(z)),
        x,
    )


def loss_and_grads(objective, mu, A, b, x, seed, sigma=SIGMA):
    """(result, dloss/dmu, dloss/dA, dloss/db) for fixed parameter tensors."""
    mu, A, b = (tf.convert_to_tensor(t) for t in (mu, A, b))
    with tf.GradientTape() as tape:
        tape.watch([mu, A, b])
        result = objective(make_q(A, b, x, sigma), make_log_joint(mu, x), seed=seed)
    grads = result.gradients(tape, [mu], [A, b])
    return result, grads.model[0], grads.inference[0], grads.inference[1]


def off_optimum_parameters(dim: int, batch: int, seed: int = 0):
    """NumPy (mu, A, b, x): a point where every parameter is off its optimum, so that
    the importance weights are uneven; x [batch, dim]."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=dim)
    x = mu + np.sqrt(2.0) * rng.normal(size=(batch, dim))
    A = 0.5 * np.eye(dim) + 0.3 * rng.normal(size=(dim, dim))
    b = mu / 2 + 0.3 * rng.normal(size=dim)
    return mu, A, b, x


def replayed_noise(A, b, x, num_samples: int, seed, sigma=SIGMA) -> np.ndarray:
    """The standard normal noise eps [S, B, D] an objective drew with `seed` from q(z|x):
    replayed by `sampling.sample` with the same seed, as documented."""
    z = mco.sampling.sample(make_q(tf.constant(A), tf.constant(b), tf.constant(x), sigma),
                            num_samples, seed).numpy()  # fmt: skip
    return (z - (x @ A.T + b)) / sigma
