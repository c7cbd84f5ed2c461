"""Train a VAE on MNIST with any objective, as in Burda et al. (2016) and Rainforth et al. (2018).

    python examples/mnist.py                                   # the paper's full setup
    python examples/mnist.py --objective=piwae --num_outer=8 --max_steps=3000 \\
        --eval_size=1000 --eval_num_samples=1000 --out_dir=runs/piwae

The model has one stochastic layer: a 784-200-200-(2 x 50) tanh encoder giving a
diagonal Gaussian q(z|x), a N(0, I) prior over 50 latents and a 50-200-200-784 tanh
decoder of Bernoulli pixels whose output bias starts at the logit of the mean training
image. Training follows Burda et al.: dynamically binarized MNIST, batch 20, Adam
(beta1 0.9, beta2 0.999, eps 1e-4), and 8 stages of 3^i epochs at learning rate
1e-3 * 10^(-i/7), 3280 epochs in all (`--epochs` or `--max_steps` cut the run short).

At the end of each stage and of the run, the test set is evaluated: IWAE-64, log p^(x)
with K = 5000 samples, -KL(Q||P) = IWAE-64 - log p^(x), the mean effective sample size
of 64 samples over 64, and the number of active latent units. Results go to
<out_dir>/metrics.json, TensorBoard summaries to <out_dir>/tensorboard, and
checkpoints to <out_dir>/checkpoints: run the same command again to resume.

Data come from TensorFlow Datasets (`TFDS_DATA_DIR` or TFDS's default folder, or a
download). Offline and without prepared data, the run falls back to a small bundled
subset of real MNIST digits, says so, and records "mnist-bundled-subset" as the dataset.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import app, flags

import mcobjectives as mco

import experiment

tfd = tfp.distributions

FLAGS = flags.FLAGS


def build_model(objective: mco.MCObjective, train_images: np.ndarray):
    """Burda et al.'s one-stochastic-layer model, trained with `objective`."""
    hidden = (FLAGS.hidden_units, FLAGS.hidden_units)
    latent = FLAGS.latent_size
    return mco.ImportanceWeightedAutoencoder(
        encoder=mco.networks.GaussianEncoder(latent, hidden),
        decoder=mco.networks.BernoulliDecoder(
            train_images.shape[1], hidden, mean_pixel=train_images.mean(axis=0)
        ),
        prior=tfd.Independent(tfd.Normal(tf.zeros(latent), tf.ones(latent)), 1),
        objective=objective,
        seed=FLAGS.seed,
    )


def main(argv):
    del argv
    experiment.run(build_model=build_model, to_batch=lambda x: {"x": x}, task="mnist")


if __name__ == "__main__":
    app.run(main)
