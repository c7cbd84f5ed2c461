"""Reweighted wake-sleep's sleep phase and wake-sleep mixture through the Keras model.

The sleep gradient is checked against the hand derivation of tests/reference_sleep.py
on the toy Gaussian (float64, 1e-6, every mode), on the model samples replayed with the
step's sleep seed; the wake-sleep gradient is the average of the wake and sleep ones.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives.keras import generation
from tests import reference_sleep
from tests.conftest import in_mode, modes
from tests.keras_toy_gaussian import SIGMA, toy_model

tfd = tfp.distributions
D, N, K = 3, 5, 4
SEED = [11, 12]


def _parameters():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=D)
    A = 0.3 * rng.normal(size=(D, D))
    b = rng.normal(size=D)
    x = rng.normal(size=(N, D))
    return mu, A, b, x


def _gradients(update, mode):
    mu, A, b, x = _parameters()
    model = toy_model(mu, A, b, mco.RWS(K, update))

    def grads():
        return model.compute_gradients(x, seed=tf.constant(SEED))[0]

    return model, [g.numpy() for g in in_mode(grads, mode)()]


def test_the_sleep_gradient_of_q_equals_the_hand_derivation_on_replayed_model_samples(mode):
    _, A, b, _ = _parameters()
    model, (grad_A, grad_b) = _gradients("sleep", mode)
    drawn = model.sample(N, generation.sleep_seed(model, tf.constant(SEED)))
    _, want_A, want_b = reference_sleep.sleep_loss_gradients(
        A, b, SIGMA, drawn.x.numpy(), drawn.z.numpy()
    )
    np.testing.assert_allclose(grad_A, want_A, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad_b, want_b, rtol=1e-6, atol=1e-9)


def test_the_wake_sleep_gradient_is_the_average_of_the_wake_and_sleep_gradients(mode):
    _, wake = _gradients("wake", mode)
    _, sleep = _gradients("sleep", mode)
    _, both = _gradients("wake_sleep", mode)
    for w, s, m in zip(wake, sleep, both, strict=True):
        np.testing.assert_allclose(m, 0.5 * (w + s), rtol=1e-6, atol=1e-9)
    assert not np.allclose(wake[1], sleep[1])  # the two phases differ on this model


class ShiftedDecoder(keras.layers.Layer):
    """p(x|z) = N(z + c, I) with a trainable shift c: a model parameter."""

    def __init__(self):
        super().__init__(dtype="float64")
        self.c = self.add_weight(shape=(D,), initializer=keras.initializers.Constant(0.2))

    def call(self, z):
        return tfd.Independent(tfd.Normal(z + self.c, tf.ones_like(z)), 1)


def test_the_sleep_phase_leaves_the_model_parameters_their_wake_gradient(mode):
    mu, A, b, x = _parameters()
    shift = {}
    for update in ("wake", "sleep", "wake_sleep"):
        model = toy_model(mu, A, b, mco.RWS(K, update))
        model.decoder = ShiftedDecoder()

        def step(model=model):
            return model.compute_gradients(x, seed=tf.constant(SEED))[0]

        grads = in_mode(step, mode)()
        assert len(grads) == 3  # the decoder's shift (a model variable) first, then A, b
        shift[update] = grads[0].numpy()
    for update in ("sleep", "wake_sleep"):
        np.testing.assert_allclose(shift[update], shift["wake"], rtol=1e-9)


def test_rws_refuses_an_unknown_inference_update():
    with pytest.raises(ValueError, match="inference_update"):
        mco.RWS(4, inference_update="dream")
    assert mco.RWS(4, "wake_sleep").get_config() == {
        "num_samples": 4,
        "inference_update": "wake_sleep",
    }
    assert [mco.RWS(4, u).sleep_weight for u in ("wake", "sleep", "wake_sleep")] == [0, 1, 0.5]


def _train(update, steps, seed=0):
    mu = np.array([1.0, -0.5])
    model = toy_model(mu, np.zeros((2, 2)), np.zeros(2), mco.RWS(8, update), seed=seed)
    rng = np.random.default_rng(seed)
    z = mu + rng.normal(size=(steps * 32, 2))
    data = z + rng.normal(size=z.shape)  # x ~ p(x), the model's own marginal
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(32, drop_remainder=True)
    model.fit(dataset, epochs=1, verbose=0)
    A_star, b_star = reference_sleep.toy_posterior(mu)
    encoder = model.encoder
    return (
        float(np.abs(encoder.A.numpy() - A_star).max()),
        float(np.abs(encoder.b.numpy() - b_star).max()),
    )


@pytest.mark.parametrize("update", ["sleep", "wake_sleep"])
def test_fit_with_the_sleep_phase_moves_q_to_the_true_posterior(update):
    """Probabilistic (fixed seed): q = N(Ax + b, 2/3 I) trained from A = 0, b = 0 on the
    linear-Gaussian model, whose posterior mean is (x + mu)/2 (A* = I/2, b* = mu/2); after
    150 Adam steps every entry of A and b is within 0.1 of the posterior's (at the start
    A is 0.5 and b 0.5 away)."""
    error_A, error_b = _train(update, steps=150)
    print(f"{update}: max |A - A*| = {error_A:.4f}, max |b - b*| = {error_b:.4f}")
    assert error_A < 0.1 and error_b < 0.1


@modes(
    "function",
    "xla",
    reason="make_train_step compiles by itself: a tf.function, with or without XLA",
)
def test_make_train_step_with_the_sleep_phase_takes_the_steps_of_fit(mode):
    mu, A, b, x = _parameters()
    data = tf.data.Dataset.from_tensor_slices(np.tile(x, (4, 1))).batch(N, drop_remainder=True)
    weights = []
    for use_fit in (True, False):
        model = toy_model(mu, A, b, mco.RWS(K, "wake_sleep"), seed=2)
        optimizer = keras.optimizers.SGD(0.01)
        if use_fit:
            model.compile(optimizer=optimizer, jit_compile=mode == "xla")
            model.fit(data, epochs=1, verbose=0)
        else:
            step = mco.make_train_step(model, optimizer, jit_compile=mode == "xla")
            for batch in data:
                assert bool(step(batch)["finite"])
        weights.append([model.encoder.A.numpy(), model.encoder.b.numpy()])
    for got, want in zip(weights[1], weights[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9)
    assert not np.allclose(weights[0][0], A)


def test_a_non_finite_sleep_loss_skips_the_step():
    mu, A, b, x = _parameters()
    model = toy_model(mu, A, b, mco.RWS(K, "sleep"))
    model.encoder.sigma = 0.0  # q's scale 0: log q(z|x) of the model's samples is -inf
    step = mco.make_train_step(model, keras.optimizers.SGD(0.01), jit_compile=False)
    logs = step(x)
    assert not bool(logs["finite"])
    np.testing.assert_array_equal(model.encoder.A.numpy(), A)


def test_a_batch_size_known_only_at_run_time_draws_k_model_samples(mode):
    mu, A, b, x = _parameters()
    model = toy_model(mu, A, b, mco.RWS(K, "sleep"))
    signature = [tf.TensorSpec([None, D], tf.float64)] if mode != "eager" else None
    fn = in_mode(lambda x: generation.sleep_loss(model, x, tf.constant(SEED)), mode,
                 input_signature=signature)  # fmt: skip
    got = float(fn(tf.constant(x)))
    seed = generation.sleep_seed(model, tf.constant(SEED))
    drawn = model.sample(N if mode == "eager" else K, seed)
    want, _, _ = reference_sleep.sleep_loss_gradients(A, b, SIGMA, drawn.x.numpy(), drawn.z.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-6)
