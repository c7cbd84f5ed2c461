"""Structured prediction on MNIST: the bottom half of a digit given its top half.

    python examples/structured_mnist.py --objective=dreg --max_steps=5000 --out_dir=runs/sp

Tucker et al. (2019, section 6.2) model the bottom half x of a binarized digit given the
top half c with a conditional latent-variable model: a prior p(z|c) and a likelihood
p(x|z, c) (each two tanh layers of 200 units, the likelihood on concat(z, c)) and an
inference network q(z|x, c). Every objective of the library trains it unchanged: the
model only differs from `mnist.py`'s by taking a context. The reported bounds are of
log p(x|c), the bottom half's 392 pixels given the top half.

Flags are those of `mnist.py` (see `examples/cli.py`, and `mnist.py` for their checks,
resuming and --strategy=multi_worker); the defaults follow Tucker et al.'s batch
of 32 and Adam learning rate 3e-4 (with Burda et al.'s stage decay).
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up messages are not this run's news (see mnist.py).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import flags

import mcobjectives as mco

import cli
from config import Config

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(cli)  # --help lists the flags of cli.py
FLAGS.set_default("batch_size", 32)
FLAGS.set_default("learning_rate", 3e-4)

HALF = 14 * 28  # the top 14 rows of a 28 x 28 image


def to_batch(images: tf.Tensor) -> dict:
    """A batch of the conditional model: x the bottom half, the context the top half."""
    return {"x": images[:, HALF:], "context": images[:, :HALF]}


def build_model(
    config: Config, objective: mco.MCObjective, train_images: np.ndarray
) -> mco.ImportanceWeightedAutoencoder:
    """q(z|x, c), p(z|c) and p(x|z, c), each with two tanh layers."""
    hidden = (config.hidden_units, config.hidden_units)
    latent = config.latent_size
    return mco.ImportanceWeightedAutoencoder(
        encoder=mco.networks.GaussianEncoder(latent, hidden),
        decoder=mco.networks.BernoulliDecoder(
            train_images.shape[1] - HALF, hidden, mean_pixel=train_images[:, HALF:].mean(axis=0)
        ),
        prior=mco.networks.GaussianPrior(latent, hidden),
        objective=objective,
        seed=config.seed,
    )


def main(argv):
    # The one place that reads the flags: everything after takes the Config.
    config = cli.config_from_flags(FLAGS, task="structured_mnist")
    cli.main(argv, config, build_model=build_model, to_batch=to_batch)


if __name__ == "__main__":
    cli.run_app(main)  # app.run(main), with --help exiting 0
