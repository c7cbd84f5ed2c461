"""Saving the layers of mcobjectives.networks: Keras serialization and TF checkpoints.

Every public network is a registered Keras serializable whose config holds all its
constructor arguments; a deserialized copy, given the original's weights, returns the
same distribution, also through a `.keras` file of a small model holding it. Every
variable is reachable by TF's object graph, so that `tf.train.Checkpoint` saves and
restores all of them (the hidden layers used to sit in a list the graph skips).
"""

from __future__ import annotations

import inspect
import json

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mcobjectives import networks

B, S, D, C = 3, 2, 20, 3
_RNG = np.random.default_rng(0)
X = (_RNG.random([B, D]) < 0.5).astype(np.float32)
CONTEXT = _RNG.random([B, C]).astype(np.float32)
MEAN_PIXEL = _RNG.uniform(0.05, 0.95, D)


def _normal(*shape):
    return tf.constant(_RNG.normal(size=shape), tf.float32)


def _bits(*shape):
    return tf.constant(_RNG.random(shape) < 0.5, tf.int32)


Z1 = _normal(S, B, 4)

# name -> (constructor, call: net -> distribution, a value to score)
CASES = {
    "gaussian_encoder": (
        lambda: networks.GaussianEncoder(4, (8, 8), min_scale=1e-3),
        lambda net: net(X, CONTEXT),
        _normal(S, B, 4),
    ),
    "gaussian_prior": (
        lambda: networks.GaussianPrior(4, (8,), activation="relu", name="p"),
        lambda net: net(CONTEXT),
        _normal(S, B, 4),
    ),
    "two_layer_encoder": (
        lambda: networks.TwoLayerGaussianEncoder((4, 3), ((8, 8), (5,))),
        lambda net: net(X, CONTEXT),
        {"z1": _normal(S, B, 4), "z2": _normal(S, B, 3)},
    ),
    "two_layer_prior": (
        lambda: networks.TwoLayerGaussianPrior((4, 3), (5,)),
        lambda net: net(),
        {"z1": _normal(S, B, 4), "z2": _normal(S, B, 3)},
    ),
    "sigmoid_belief_encoder": (
        lambda: networks.SigmoidBeliefEncoder((5, 3), (4,)),
        lambda net: net(X),
        {"z1": _bits(S, B, 5), "z2": _bits(S, B, 3)},
    ),
    "sigmoid_belief_prior": (
        lambda: networks.SigmoidBeliefPrior((5, 3)),
        lambda net: net(),
        {"z1": _bits(S, B, 5), "z2": _bits(S, B, 3)},
    ),
    "bernoulli_decoder": (
        lambda: networks.BernoulliDecoder(D, (8,), mean_pixel=MEAN_PIXEL, latent="z1"),
        lambda net: net({"z1": Z1}, CONTEXT),
        X,
    ),
}
NAMES = list(CASES)


def _built(name):
    """The network of case `name`, built by a first call, with all its weights random."""
    make, call, _ = CASES[name]
    net = make()
    call(net)
    for v in net.weights:  # the SBN's top logits start at 0: make every weight distinct
        v.assign(_RNG.normal(size=v.shape).astype(np.float32))
    return net


def _log_prob(net, name) -> np.ndarray:
    _, call, value = CASES[name]
    return call(net).log_prob(value).numpy()


def _assert_same_weights(net, other):
    assert [v.path for v in other.weights] == [v.path for v in net.weights]
    for v, w in zip(net.weights, other.weights, strict=True):
        np.testing.assert_array_equal(v.numpy(), w.numpy(), err_msg=v.path)


@keras.saving.register_keras_serializable(package="mcobjectives_tests")
class _Holder(keras.Model):
    """A model that only holds a network, to save it in a `.keras` file."""

    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.built = True  # the network is built (from its own build config when loaded)

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network, **config)


# --- Keras serialization --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_network_is_registered_and_its_config_holds_every_constructor_argument(name):
    net = CASES[name][0]()
    cls = type(net)
    assert keras.saving.get_registered_name(cls) == f"mcobjectives>{cls.__name__}"
    assert keras.saving.get_registered_object(f"mcobjectives>{cls.__name__}") is cls
    config = net.get_config()
    arguments = [
        p.name for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"
    ]  # fmt: skip
    assert set(arguments) <= set(config)
    json.dumps(config)  # plain Python: numpy's mean_pixel is a list
    rebuilt = cls.from_config(config)
    assert type(rebuilt) is cls
    assert rebuilt.get_config() == config


def test_the_decoder_config_gives_mean_pixel_as_a_list_that_rebuilds_the_same_bias():
    decoder = CASES["bernoulli_decoder"][0]()
    config = decoder.get_config()
    assert isinstance(config["mean_pixel"], list)
    assert config["mean_pixel"] == MEAN_PIXEL.tolist()
    assert config["latent"] == "z1" and config["hidden_units"] == (8,)
    rebuilt = networks.BernoulliDecoder.from_config(json.loads(json.dumps(config)))
    np.testing.assert_array_equal(rebuilt.mean_pixel, MEAN_PIXEL)
    z = {"z1": tf.zeros([B, 4])}
    decoder(z), rebuilt(z)
    np.testing.assert_array_equal(rebuilt.net.output_layer.bias, decoder.net.output_layer.bias)
    assert networks.BernoulliDecoder(D).get_config()["mean_pixel"] is None


@pytest.mark.parametrize("name", NAMES)
def test_a_deserialized_network_with_the_original_weights_gives_the_same_distribution(name):
    """serialize_keras_object / deserialize_keras_object give a built copy (from the build
    config) with fresh weights; with the original's weights its log_prob is the same."""
    net = _built(name)
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    assert type(copy) is type(net)
    assert copy.get_config() == net.get_config()
    assert copy.built and len(copy.weights) == len(net.weights)
    assert [v.path for v in copy.weights] == [v.path for v in net.weights]
    assert not np.array_equal(_log_prob(copy, name), _log_prob(net, name))
    copy.set_weights(net.get_weights())
    _assert_same_weights(net, copy)
    np.testing.assert_array_equal(_log_prob(copy, name), _log_prob(net, name))


def test_a_deserialized_two_layer_encoder_gives_the_same_distribution():
    """The joint q(z1|x) q(z2|z1) of the copy draws the same z and scores it the same."""
    net = _built("two_layer_encoder")
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    copy.set_weights(net.get_weights())
    q, q_copy = net(X, CONTEXT), copy(X, CONTEXT)
    seed = tf.constant([4, 5])
    z, z_copy = q.sample(S, seed=seed), q_copy.sample(S, seed=seed)
    for key in ("z1", "z2"):
        np.testing.assert_array_equal(z_copy[key], z[key])
    np.testing.assert_array_equal(q_copy.log_prob(z), q.log_prob(z))


@pytest.mark.parametrize("name", NAMES)
def test_a_network_round_trips_through_a_keras_file(name, tmp_path):
    net = _built(name)
    path = tmp_path / f"{name}.keras"
    _Holder(net).save(path)
    loaded = keras.saving.load_model(path).network
    assert type(loaded) is type(net) and loaded.get_config() == net.get_config()
    _assert_same_weights(net, loaded)
    np.testing.assert_array_equal(_log_prob(loaded, name), _log_prob(net, name))


def test_the_weights_file_layout_keeps_the_hidden_layers_list(tmp_path):
    """`.weights.h5` files name the hidden layers as before (a list `hidden`), so that
    weights saved by earlier versions still load."""
    net = _built("bernoulli_decoder")
    path = tmp_path / "decoder.weights.h5"
    _Holder(net).save_weights(path)
    with h5py.File(path) as f:
        names = []
        f.visititems(lambda key, obj: names.append(key) if isinstance(obj, h5py.Dataset) else None)
    assert sorted(name.split("/net/", 1)[1] for name in names) == [
        "hidden/dense/vars/0",
        "hidden/dense/vars/1",
        "output_layer/vars/0",
        "output_layer/vars/1",
    ]


# --- tf.train.Checkpoint --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_saves_and_restores_every_variable_of_a_network(name, tmp_path):
    net = _built(name)
    path = tf.train.Checkpoint(layer=net).save(str(tmp_path / "ckpt"))
    saved = [key for key, _ in tf.train.list_variables(path) if key.startswith("layer/")]
    assert len(saved) == len(net.weights)
    fresh = CASES[name][0]()
    CASES[name][1](fresh)  # built, with its own initial weights
    status = tf.train.Checkpoint(layer=fresh).restore(path)
    status.assert_consumed()
    _assert_same_weights(net, fresh)
    np.testing.assert_array_equal(_log_prob(fresh, name), _log_prob(net, name))


def test_checkpoint_keys_follow_the_layer_attributes(tmp_path):
    """Hidden layers are the attributes hidden_0, hidden_1, ... of the MLP (the output
    layer kept its key, output_layer), so checkpoint keys name them."""
    net = _built("two_layer_encoder")
    path = tf.train.Checkpoint(layer=net).save(str(tmp_path / "ckpt"))
    layers = {
        key.split("/.ATTRIBUTES")[0].rsplit("/", 1)[0]
        for key, _ in tf.train.list_variables(path)
        if key.startswith("layer/")
    }
    assert layers == {
        "layer/q_z1/net/hidden_0",
        "layer/q_z1/net/hidden_1",
        "layer/q_z1/net/output_layer",
        "layer/q_z2/net/hidden_0",
        "layer/q_z2/net/output_layer",
    }
    assert [layer.name for layer in net.q_z1.net.hidden] == ["hidden_0", "hidden_1"]
