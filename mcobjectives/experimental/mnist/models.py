"""Burda et al.'s one- and two-stochastic-layer VAEs and a sigmoid belief net, unbuilt.

`one_layer`, `two_layer` and `sbn` (`ARCHITECTURES`, picked by name with `build_model`)
assemble an `ImportanceWeightedAutoencoder` from the layers of `mcobjectives.networks`;
`adam` is the optimizer of the papers.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives.experimental.mnist.data import NUM_PIXELS

tfd = tfp.distributions

__all__ = [
    "ARCHITECTURES",
    "adam",
    "build_model",
    "one_layer",
    "one_layer_networks",
    "sbn",
    "standard_normal_prior",
    "two_layer",
]


def standard_normal_prior(latent_size: int = 50) -> tfd.Distribution:
    """p(z) = N(0, I) in `latent_size` dimensions (float32)."""
    return tfd.Independent(tfd.Normal(tf.zeros(latent_size), tf.ones(latent_size)), 1)


def adam(
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
) -> keras.optimizers.Optimizer:
    """The optimizer of Burda et al. and Tucker et al.: Adam, beta 0.9 / 0.999, epsilon 1e-4."""
    return keras.optimizers.Adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-4)


def _pixels(mean_pixel: np.ndarray | None, num_pixels: int) -> int:
    """The decoder's number of pixels: `mean_pixel`'s size, else `num_pixels`."""
    return num_pixels if mean_pixel is None else int(np.shape(mean_pixel)[-1])


def one_layer_networks(
    mean_pixel: np.ndarray | None = None,
    *,
    num_pixels: int = NUM_PIXELS,
    latent_size: int = 50,
    hidden_units: int = 200,
) -> tuple[mco.networks.GaussianEncoder, mco.networks.BernoulliDecoder]:
    """Burda et al.'s encoder 784-200-200-(2 x 50) and decoder 50-200-200-784, tanh units.

    Unbuilt. The decoder's output bias starts at the logit of `mean_pixel` (the mean
    training image, whose size sets the number of pixels), if given. The weights come
    from Keras's global seed: call `keras.utils.set_random_seed` first to fix them.
    """
    hidden = (hidden_units, hidden_units)
    encoder = mco.networks.GaussianEncoder(latent_size, hidden)
    decoder = mco.networks.BernoulliDecoder(
        _pixels(mean_pixel, num_pixels), hidden, mean_pixel=mean_pixel
    )
    return encoder, decoder


def one_layer(
    objective: mco.MCObjective,
    mean_pixel: np.ndarray | None = None,
    *,
    seed: int = 0,
    num_pixels: int = NUM_PIXELS,
    latent_size: int = 50,
    hidden_units: int = 200,
) -> mco.ImportanceWeightedAutoencoder:
    """Burda et al.'s one-stochastic-layer model, trained with `objective` (unbuilt).

    q(z|x) a diagonal Gaussian from a 784-200-200-(2 x 50) tanh network, p(z) = N(0, I)
    over 50 latents, p(x|z) Bernoulli pixels from a 50-200-200-784 tanh network whose
    output bias starts at the logit of `mean_pixel`. `seed` seeds the model's samples;
    the initial weights come from Keras's global seed (`keras.utils.set_random_seed`).
    """
    encoder, decoder = one_layer_networks(
        mean_pixel, num_pixels=num_pixels, latent_size=latent_size, hidden_units=hidden_units
    )
    return mco.ImportanceWeightedAutoencoder(
        encoder=encoder,
        decoder=decoder,
        prior=standard_normal_prior(latent_size),
        objective=objective,
        seed=seed,
    )


def two_layer(
    objective: mco.MCObjective,
    mean_pixel: np.ndarray | None = None,
    *,
    seed: int = 0,
    num_pixels: int = NUM_PIXELS,
) -> mco.ImportanceWeightedAutoencoder:
    """Burda et al.'s two-stochastic-layer model (z1: 100, z2: 50); the decoder reads z1.

    q(z1|x) q(z2|z1) from 784-200-200-(2 x 100) and 100-100-100-(2 x 50) tanh networks,
    p(z2) = N(0, I), a trainable p(z1|z2) (50-100-100-(2 x 100)) and p(x|z1)
    (100-200-200-784). Arguments as for `one_layer`.
    """
    return mco.ImportanceWeightedAutoencoder(
        encoder=mco.networks.TwoLayerGaussianEncoder(latent_sizes=(100, 50)),
        decoder=mco.networks.BernoulliDecoder(
            _pixels(mean_pixel, num_pixels), (200, 200), mean_pixel=mean_pixel, latent="z1"
        ),
        prior=mco.networks.TwoLayerGaussianPrior(latent_sizes=(100, 50)),
        objective=objective,
        seed=seed,
    )


def sbn(
    objective: mco.MCObjective,
    mean_pixel: np.ndarray | None = None,
    *,
    seed: int = 0,
    num_pixels: int = NUM_PIXELS,
) -> mco.ImportanceWeightedAutoencoder:
    """A 200-200-784 sigmoid belief net with a mirrored linear-sigmoid inference network.

    Two layers of 200 binary (int32 Bernoulli) latents, as in Mnih & Rezende (2016):
    linear-sigmoid q(z1|x) q(z2|z1), p(z2) with learnable logits, p(z1|z2) and p(x|z1).
    Only the score-function objectives (`mco.VIMCO`, `mco.RWS`) train it. Arguments as
    for `one_layer`.
    """
    return mco.ImportanceWeightedAutoencoder(
        encoder=mco.networks.SigmoidBeliefEncoder(latent_sizes=(200, 200)),
        decoder=mco.networks.BernoulliDecoder(
            _pixels(mean_pixel, num_pixels), (), mean_pixel=mean_pixel, latent="z1"
        ),
        prior=mco.networks.SigmoidBeliefPrior(latent_sizes=(200, 200)),
        objective=objective,
        seed=seed,
    )


ARCHITECTURES: dict[str, Callable[..., mco.ImportanceWeightedAutoencoder]] = {
    "one_layer": one_layer,
    "two_layer": two_layer,
    "sbn": sbn,
}


def build_model(
    architecture: str,
    objective: mco.MCObjective,
    mean_pixel: np.ndarray | None = None,
    *,
    seed: int = 0,
    **sizes: int,
) -> mco.ImportanceWeightedAutoencoder:
    """`ARCHITECTURES[architecture](objective, mean_pixel, seed=seed, **sizes)`, unbuilt.

    `sizes` (`latent_size`, `hidden_units`) apply to "one_layer" only.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}"
        )
    if sizes and architecture != "one_layer":
        raise ValueError(
            f"{sorted(sizes)} size the one_layer architecture only, not {architecture}."
        )
    return ARCHITECTURES[architecture](objective, mean_pixel, seed=seed, **sizes)
