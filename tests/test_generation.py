"""`ImportanceWeightedAutoencoder.sample` and `reconstruct`: draws of p(x, z) and of q.

Every draw is replayed with `mco.sampling.sample` (z from child seed 0 of the seed, x
from child seed 1) and must agree in every mode (eager, tf.function, XLA).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives.sampling.seeds import child_seeds
from tests.conftest import in_mode
from tests.keras_toy_gaussian import toy_model

tfd = tfp.distributions
D = 3


def _toy():
    rng = np.random.default_rng(0)
    return toy_model(rng.normal(size=D), 0.3 * rng.normal(size=(D, D)), rng.normal(size=D),
                     mco.IWAE(4))  # fmt: skip


def test_samples_of_a_fixed_prior_are_the_replayed_draws_in_every_mode(mode):
    model = _toy()
    drawn = in_mode(lambda: model.sample(6, seed=5), mode)()
    seed = mco.sampling.stateless_seed(5)
    z = mco.sampling.sample(model.prior, 6, child_seeds(seed, 0))
    likelihood = tfd.Independent(tfd.Normal(z, tf.ones_like(z)), 1)
    x = mco.sampling.sample(likelihood, 1, child_seeds(seed, 1))[0]
    assert drawn.z.shape == drawn.x.shape == drawn.mean.shape == (6, D)
    np.testing.assert_allclose(drawn.z.numpy(), z.numpy(), rtol=1e-10)
    np.testing.assert_allclose(drawn.x.numpy(), x.numpy(), rtol=1e-10)
    np.testing.assert_allclose(drawn.mean.numpy(), z.numpy(), rtol=1e-10)
    other = model.sample(6, seed=6)
    assert not np.allclose(other.z.numpy(), drawn.z.numpy())


def _sbn():
    keras.utils.set_random_seed(1)
    return mco.ImportanceWeightedAutoencoder(
        mco.networks.SigmoidBeliefEncoder((8, 4)),
        mco.networks.BernoulliDecoder(12, (), latent="z1"),
        mco.networks.SigmoidBeliefPrior((8, 4)),
        mco.VIMCO(3),
    )


def _two_layer():
    keras.utils.set_random_seed(2)
    return mco.ImportanceWeightedAutoencoder(
        mco.networks.TwoLayerGaussianEncoder((6, 4), ((10,), (10,))),
        mco.networks.BernoulliDecoder(12, (10,), latent="z1"),
        mco.networks.TwoLayerGaussianPrior((6, 4), (10,)),
        mco.IWAE(3),
    )


@pytest.mark.parametrize("build", [_sbn, _two_layer], ids=["sbn", "two_layer"])
def test_samples_of_a_joint_prior_agree_in_every_mode(build, mode):
    model = build()
    model.objective_result(np.full((2, 12), 0.5, np.float32), seed=0)  # builds the layers
    eager = model.sample(5, seed=3)
    drawn = in_mode(lambda: model.sample(5, seed=3), mode)()
    assert sorted(drawn.z) == ["z1", "z2"]
    sizes = {"z1": model.prior.latent_sizes[0], "z2": model.prior.latent_sizes[1]}
    for key, size in sizes.items():
        assert drawn.z[key].shape == (5, size)
        np.testing.assert_allclose(drawn.z[key].numpy(), eager.z[key].numpy(), rtol=1e-5)
    assert drawn.x.shape == drawn.mean.shape == (5, 12)
    np.testing.assert_array_equal(drawn.x.numpy(), eager.x.numpy())
    np.testing.assert_allclose(drawn.mean.numpy(), eager.mean.numpy(), rtol=1e-5)
    assert set(np.unique(drawn.x.numpy())) <= {0.0, 1.0}
    assert np.all((drawn.mean.numpy() > 0) & (drawn.mean.numpy() < 1))


def test_the_sbn_sample_draws_z1_from_p_z1_given_the_drawn_z2():
    model = _sbn()
    drawn = model.sample(2000, seed=0)
    assert drawn.z["z1"].dtype == tf.int32 and drawn.z["z2"].dtype == tf.int32
    # Replay p(z1|z2) at the drawn z2: its mean, averaged, matches the z1 frequencies.
    prior = model.prior_distribution()
    dists, _ = prior.sample_distributions(value={"z2": drawn.z["z2"], "z1": drawn.z["z1"]})
    z1_given = dists["z1"]
    mean = z1_given.mean().numpy().mean(axis=0)
    freq = drawn.z["z1"].numpy().mean(axis=0)
    print("max |freq - mean| over z1's units:", np.abs(freq - mean).max())
    assert np.abs(freq - mean).max() < 0.05  # 2000 draws: 4.5 standard errors at most


def test_samples_of_a_conditional_prior_take_one_draw_per_row_of_the_context():
    keras.utils.set_random_seed(4)
    model = mco.ImportanceWeightedAutoencoder(
        mco.networks.GaussianEncoder(4, (8,)),
        mco.networks.BernoulliDecoder(6, (8,)),
        mco.networks.GaussianPrior(4, (8,)),
        mco.IWAE(2),
    )
    context = np.linspace(0, 1, 3 * 5, dtype=np.float32).reshape(3, 5)
    drawn = model.sample(None, seed=1, context=context)
    assert drawn.z.shape == (3, 4) and drawn.mean.shape == (3, 6)
    with pytest.raises(ValueError, match="one draw is made per row"):
        model.sample(4, seed=1, context=context)
    with pytest.raises(ValueError, match="context"):
        model.sample(3, seed=1)


def test_reconstructions_are_the_decoder_mean_at_a_replayed_draw_of_q(mode):
    model = _toy()
    x = np.random.default_rng(1).normal(size=(4, D))
    got = in_mode(lambda: model.reconstruct(x, seed=9), mode)()
    z = mco.sampling.sample(model.posterior(x), 1, 9)[0]
    assert got.z.shape == got.mean.shape == (4, D)
    np.testing.assert_allclose(got.z.numpy(), z.numpy(), rtol=1e-10)
    np.testing.assert_allclose(got.mean.numpy(), z.numpy(), rtol=1e-10)


@pytest.mark.parametrize(
    ("num", "seed", "error", "match"),
    [
        (0, 1, ValueError, "`num` must be an int >= 1"),
        (2.5, 1, TypeError, "`num` must be a Python int"),
        (True, 1, TypeError, "`num` must be a Python int"),
        (None, 1, ValueError, "`num`"),
        (3, "one", TypeError, "seed"),
        (3, -1, ValueError, "seed"),
        (3, tf.zeros([2, 2], tf.int32), ValueError, "one stateless seed"),
    ],
)
def test_bad_arguments_of_sample_are_refused_naming_them(num, seed, error, match):
    with pytest.raises(error, match=match):
        _toy().sample(num, seed)
