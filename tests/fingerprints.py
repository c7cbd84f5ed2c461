"""Fingerprints of the library's numbers: draws, bounds, losses, gradients and trained weights.

`python -m tests.fingerprints OUT.npz` writes them; `tests/test_fingerprints.py` compares a
fresh computation with the stored `tests/data/fingerprints.npz`, recorded before the package
was reorganized, so that a move of code that changes any number is caught.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests import toy

tfd = tfp.distributions

OBJECTIVES = {
    "iwae": lambda: mco.IWAE(5),
    "vae": lambda: mco.VAE(3),
    "miwae": lambda: mco.MIWAE(2, 3),
    "ciwae": lambda: mco.CIWAE(5, 0.4),
    "piwae": lambda: mco.PIWAE(2, 3),
    "rws": lambda: mco.RWS(5),
    "stl": lambda: mco.STL(5),
    "dreg": lambda: mco.DReG(5, alpha=0.3),
    "jvi": lambda: mco.JVI(4, dreg=True),
    "vimco": lambda: mco.VIMCO(5),
    "vriwae": lambda: mco.VRIWAE(5, alpha=0.5, dreg=True),
}


def _toy(dtype):
    rng = np.random.default_rng(3)
    D, B = 3, 4
    mu = tf.constant(rng.normal(size=D), dtype)
    A = tf.constant(np.eye(D) * 0.5 + rng.normal(size=(D, D)) * 0.1, dtype)
    b = tf.constant(rng.normal(size=D) * 0.2, dtype)
    x = tf.constant(rng.normal(size=(B, D)), dtype)
    return mu, A, b, x


def objective_fingerprints() -> dict[str, np.ndarray]:
    out = {}
    for dtype in (tf.float64, tf.float32):
        mu, A, b, x = _toy(dtype)
        for name, make in OBJECTIVES.items():
            result, g_mu, g_A, g_b = toy.loss_and_grads(make(), mu, A, b, x, seed=(7, 11))
            key = f"objective/{name}/{dtype.name}"
            out[f"{key}/bound"] = result.bound.numpy()
            out[f"{key}/loss"] = result.loss.numpy()
            for grad_name, grad in (("mu", g_mu), ("A", g_A), ("b", g_b)):
                out[f"{key}/grad_{grad_name}"] = grad.numpy()
        q = toy.make_q(A, b, x)
        out[f"log_marginal/{dtype.name}"] = mco.log_marginal_estimate(
            q, toy.make_log_joint(mu, x), seed=(1, 2), num_samples=40, chunk_size=16
        ).numpy()
    return out


def sampling_fingerprints() -> dict[str, np.ndarray]:
    out = {}
    normal = tfd.Independent(tfd.Normal(tf.zeros([2, 3]), tf.ones([2, 3])), 1)
    bernoulli = tfd.Independent(tfd.Bernoulli(logits=tf.linspace(-2.0, 2.0, 6)), 1)
    joint = tfd.JointDistributionNamed(
        {"z1": tfd.Normal(tf.zeros([2]), 1.0), "z2": tfd.Bernoulli(logits=tf.zeros([2]))}
    )
    out["sample/normal"] = mco.sampling.sample(normal, 4, seed=(5, 6)).numpy()
    out["sample/normal_per_example"] = mco.sampling.sample(
        normal, 3, seed=tf.constant([[1, 2], [3, 4]])
    ).numpy()
    out["sample/bernoulli"] = mco.sampling.sample(bernoulli, 4, seed=(5, 6)).numpy()
    for key, value in mco.sampling.sample(joint, 3, seed=(8, 9)).items():
        out[f"sample/joint/{key}"] = value.numpy()
    return out


def keras_fingerprints() -> dict[str, np.ndarray]:
    out = {}
    rng = np.random.default_rng(0)
    x = (rng.random((40, 12)) < 0.3).astype("float32")
    for name in ("iwae", "dreg", "vimco"):
        tf.keras.utils.set_random_seed(0)
        model = mco.ImportanceWeightedAutoencoder(
            mco.networks.GaussianEncoder(2, hidden_units=(8,)),
            mco.networks.BernoulliDecoder(12, hidden_units=(8,)),
            tfd.Independent(tfd.Normal(tf.zeros(2), tf.ones(2)), 1),
            OBJECTIVES[name](),
            seed=3,
        )
        import keras

        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        history = model.fit(x, batch_size=10, epochs=2, verbose=0, shuffle=False)
        out[f"keras/{name}/loss"] = np.asarray(history.history["loss"])
        for i, weight in enumerate(model.get_weights()):
            out[f"keras/{name}/weight{i}"] = np.asarray(weight)
        out[f"keras/{name}/log_marginal"] = np.asarray(
            model.log_marginal(x[:5], num_samples=20, seed=4)
        )
    return out


def all_fingerprints() -> dict[str, np.ndarray]:
    return {**objective_fingerprints(), **sampling_fingerprints(), **keras_fingerprints()}


if __name__ == "__main__":
    np.savez(sys.argv[1], **all_fingerprints())
