"""Tests of mcobjectives.networks: the layers of the one-layer, two-layer and SBN models.

Shapes, dtypes and the joint structure of what each layer returns; the papers' sizes
of the default two-layer and sigmoid-belief-net layers; the decoders' `latent`; that
the two-layer prior's conditional p(z1|z2) is trained; and that the SBN's int32 q is
refused, naming the leaf, by an objective that differentiates through z. Data: the
first images of the bundled MNIST subset (real digits), binarized with a fixed seed.

Also: every layer on flat ([N, d]), sample-and-batch ([S, B, d]) and unbatched ([d])
inputs; the mixed_float16 and mixed_bfloat16 policies (low-precision dense layers,
float32 distributions); and the decoder's refusal of pixels outside [0, 1]. Saving
and checkpoints are in test_network_saving.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import networks, sampling
from mcobjectives.experimental import mnist
from mcobjectives.networks.blocks import MLP
from tests.conftest import EAGER_AND_FUNCTION, in_mode, modes

tfd = tfp.distributions

B, S = 6, 5
SEED = 3
NEW_LAYERS = (
    "SigmoidBeliefEncoder",
    "SigmoidBeliefPrior",
    "TwoLayerGaussianEncoder",
    "TwoLayerGaussianPrior",
)


def _digits(n: int) -> np.ndarray:
    with np.load(mnist.BUNDLED_PATH) as data:
        images = data["train_images"][:n].astype(np.float64) / 255.0
    return (np.random.default_rng(0).random(images.shape) < images).astype(np.float32)


X = _digits(100)
MEAN_PIXEL = X.mean(axis=0)


def _kernel_shapes(layer) -> list[tuple]:
    return [tuple(v.shape) for v in layer.trainable_variables if v.path.endswith("kernel")]


def _two_layer_small():
    """A two-layer model of small widths: z1 of 8, z2 of 4 units."""
    return (
        networks.TwoLayerGaussianEncoder((8, 4), ((32,), (16,))),
        networks.TwoLayerGaussianPrior((8, 4), (16,)),
        networks.BernoulliDecoder(784, (32,), mean_pixel=MEAN_PIXEL, latent="z1"),
    )


def _sbn_small(latent_sizes=(12, 6)):
    return (
        networks.SigmoidBeliefEncoder(latent_sizes),
        networks.SigmoidBeliefPrior(latent_sizes),
        networks.BernoulliDecoder(784, (), mean_pixel=MEAN_PIXEL, latent="z1"),
    )


def _log_joint(prior, decoder, x):
    p = prior()
    return lambda z: p.log_prob(z) + decoder(z).log_prob(x)


# --- exports --------------------------------------------------------------------------------


def test_new_layers_are_exported():
    for name in NEW_LAYERS:
        assert name in networks.__all__
        assert getattr(mco.networks, name).__doc__
    assert sorted(networks.__all__) == list(networks.__all__)


# --- the two-layer Gaussian model -----------------------------------------------------------


def test_two_layer_encoder_returns_the_joint_q(mode):
    """q(z1|x) q(z2|z1): a JointDistributionNamed with batch [B] per leaf, float32,
    reparameterized; samples {"z1": [S, B, 100], "z2": [S, B, 50]}; log q [S, B]."""
    encoder = networks.TwoLayerGaussianEncoder()
    x = tf.constant(X[:B])

    def fn(x):
        q = encoder(x)
        z = sampling.sample(q, S, SEED)
        return z, q.log_prob(z)

    q = encoder(x)
    assert isinstance(q, tfd.JointDistributionNamed)
    assert q.dtype == {"z1": tf.float32, "z2": tf.float32}
    assert q.batch_shape == {"z1": [B], "z2": [B]}
    assert q.event_shape == {"z1": [100], "z2": [50]}
    reparameterization = q.reparameterization_type
    assert all(t == tfd.FULLY_REPARAMETERIZED for t in reparameterization.values())
    z, log_q = in_mode(fn, mode)(x)
    assert {k: tuple(v.shape) for k, v in z.items()} == {"z1": (S, B, 100), "z2": (S, B, 50)}
    assert log_q.shape == (S, B)
    assert np.all(np.isfinite(log_q))
    # z2's part is conditioned on the draws of z1: batch [S, B] once they are given.
    distributions, _ = q.sample_distributions(sample_shape=S, seed=tf.constant([1, 2]))
    assert distributions["z1"].batch_shape == [B]
    assert distributions["z2"].batch_shape == [S, B]


def test_two_layer_default_sizes_are_burda_et_al():
    """Burda et al. (2016) section 5 / appendix C: x-200-200-z1(100), z1-100-100-z2(50)."""
    encoder, prior = networks.TwoLayerGaussianEncoder(), networks.TwoLayerGaussianPrior()
    decoder = networks.BernoulliDecoder(784, latent="z1")
    q = encoder(tf.constant(X[:2]))
    decoder(sampling.sample(q, 1, SEED))
    prior()
    assert _kernel_shapes(encoder) == [
        (784, 200), (200, 200), (200, 200),  # q(z1|x): mu and sigma of 100 units
        (100, 100), (100, 100), (100, 100),  # q(z2|z1): mu and sigma of 50 units
    ]  # fmt: skip
    assert _kernel_shapes(prior) == [(50, 100), (100, 100), (100, 200)]  # p(z1|z2)
    assert _kernel_shapes(decoder) == [(100, 200), (200, 200), (200, 784)]  # p(x|z1)
    activations = [layer.activation.__name__ for layer in encoder.q_z1.net.hidden]
    assert activations == ["tanh", "tanh"]


def test_two_layer_prior_is_called_without_arguments():
    """prior() gives p(z2) p(z1|z2): z2 standard normal (batch [], broadcast), z1 Gaussian
    given z2; its variables exist after the first call; a context is refused."""
    prior = networks.TwoLayerGaussianPrior((8, 4), (16,))
    p = prior()
    assert isinstance(p, tfd.JointDistributionNamed)
    assert len(prior.trainable_variables) == 4  # two dense layers of p(z1|z2)
    z = {
        "z2": tf.random.stateless_normal([S, B, 4], [1, 2]),
        "z1": tf.random.stateless_normal([S, B, 8], [3, 4]),
    }
    log_p = p.log_prob(z)
    assert log_p.shape == (S, B)
    standard = tfd.Independent(tfd.Normal(tf.zeros(4), 1.0), 1).log_prob(z["z2"])
    conditional = prior.p_z1(z["z2"]).log_prob(z["z1"])
    np.testing.assert_allclose(log_p, standard + conditional, rtol=1e-6)
    draw = p.sample(seed=tf.constant([5, 6]))  # unbatched draws work too
    assert {k: tuple(v.shape) for k, v in draw.items()} == {"z2": (4,), "z1": (8,)}
    with pytest.raises(ValueError, match="unconditional"):
        prior(tf.constant(X[:B]))


def test_two_layer_prior_conditional_is_trained():
    """Through the Keras model, the prior's p(z1|z2) variables are model variables, get a
    nonzero gradient, and move in 10 steps of Adam."""
    keras.utils.set_random_seed(0)
    encoder, prior, decoder = _two_layer_small()
    model = mco.ImportanceWeightedAutoencoder(encoder, decoder, prior, mco.IWAE(4), seed=1)
    model(X[:20])
    prior_ids = {id(v) for v in prior.trainable_variables}
    assert len(prior_ids) == 4
    assert prior_ids <= {id(v) for v in model.model_variables}
    assert not prior_ids & {id(v) for v in model.inference_variables}
    grads, variables, _ = model.compute_gradients(X[:20], seed=tf.constant([1, 2]))
    for grad, var in zip(grads, variables, strict=True):
        if id(var) in prior_ids:
            assert np.any(grad.numpy() != 0), var.path
    before = [v.numpy() for v in prior.trainable_variables]
    optimizer = keras.optimizers.Adam(1e-3)
    model.compile(optimizer=optimizer, jit_compile=False)
    model.fit(X[:100], batch_size=10, epochs=1, shuffle=False, verbose=0)
    for old, var in zip(before, prior.trainable_variables, strict=True):
        assert np.max(np.abs(var.numpy() - old)) > 1e-4, var.path


def test_two_layer_with_a_context():
    """With a context, both conditionals of q read it (c is concatenated to x and z1)."""
    encoder = networks.TwoLayerGaussianEncoder((8, 4), ((32,), (16,)))
    q = encoder(tf.constant(X[:B, 392:]), tf.constant(X[:B, :392]))
    z = sampling.sample(q, S, SEED)
    assert q.log_prob(z).shape == (S, B)
    assert _kernel_shapes(encoder) == [(784, 32), (32, 16), (8 + 392, 16), (16, 8)]


# --- decoders and `latent` -----------------------------------------------------------------


def test_decoder_reads_the_named_leaf_only():
    decoder = networks.BernoulliDecoder(784, (16,), latent="z1")
    z1 = tf.random.stateless_normal([S, B, 8], [1, 2])
    z = {"z1": z1, "z2": tf.zeros([S, B, 4])}
    other = {"z1": z1, "z2": tf.ones([S, B, 4])}
    p, p_other = decoder(z), decoder(other)
    assert p.batch_shape == [S, B] and p.event_shape == [784]
    np.testing.assert_array_equal(p.distribution.logits, p_other.distribution.logits)
    by_index = networks.BernoulliDecoder(784, (16,), latent=0)
    assert by_index([z1, tf.zeros([S, B, 4])]).batch_shape == [S, B]


def test_decoder_latent_errors():
    z = {"z1": tf.zeros([S, B, 8]), "z2": tf.zeros([S, B, 4])}
    with pytest.raises(ValueError, match="latent"):
        networks.BernoulliDecoder(784, (16,))(z)
    with pytest.raises(ValueError, match=r"leaves are \['z1', 'z2'\]"):
        networks.BernoulliDecoder(784, (16,), latent="h1")(z)
    with pytest.raises(ValueError, match="single tensor"):
        networks.BernoulliDecoder(784, (16,), latent="z1")(z["z1"])
    with pytest.raises(TypeError, match="latent"):
        networks.BernoulliDecoder(784, latent=1.5)


def test_decoder_casts_binary_latents():
    decoder = networks.BernoulliDecoder(784, (), latent="z1")
    p = decoder({"z1": tf.ones([S, B, 12], tf.int32)})
    assert p.dtype == tf.float32
    assert p.log_prob(tf.constant(X[:B])).shape == (S, B)


# --- the sigmoid belief net -----------------------------------------------------------------


def test_sbn_encoder_is_int32_bernoulli(mode):
    """q(z1|x) q(z2|z1): int32 Bernoulli leaves of 200 units, draws in {0, 1}."""
    encoder = networks.SigmoidBeliefEncoder()
    x = tf.constant(X[:B])

    def fn(x):
        q = encoder(x)
        z = sampling.sample(q, S, SEED)
        return z, q.log_prob(z)

    q = encoder(x)
    assert isinstance(q, tfd.JointDistributionNamed)
    assert q.dtype == {"z1": tf.int32, "z2": tf.int32}
    assert q.batch_shape == {"z1": [B], "z2": [B]}
    assert q.event_shape == {"z1": [200], "z2": [200]}
    z, log_q = in_mode(fn, mode)(x)
    for name in ("z1", "z2"):
        assert z[name].dtype == tf.int32
        assert z[name].shape == (S, B, 200)
        assert set(np.unique(z[name].numpy())) <= {0, 1}
    assert log_q.shape == (S, B) and log_q.dtype == tf.float32
    assert np.all(log_q.numpy() < 0)
    # Linear-sigmoid by default: one dense layer per conditional.
    assert _kernel_shapes(encoder) == [(784, 200), (200, 200)]


def test_sbn_prior_has_learnable_top_logits():
    prior = networks.SigmoidBeliefPrior()
    p = prior()
    assert p.dtype == {"z1": tf.int32, "z2": tf.int32}
    names = sorted(v.path for v in prior.trainable_variables)
    assert names == [
        "prior/p_z1/mlp/output/bias",
        "prior/p_z1/mlp/output/kernel",
        "prior/top_logits",
    ]
    np.testing.assert_array_equal(prior.top_logits.numpy(), np.zeros(200))
    z2 = tf.cast(tf.random.stateless_uniform([S, B, 200], [1, 2]) < 0.5, tf.int32)
    z = {"z2": z2, "z1": tf.zeros([S, B, 200], tf.int32)}
    assert p.log_prob(z).shape == (S, B)
    # Logits 0: p(z2) = 2^-200 for every z2.
    np.testing.assert_allclose(p.model["z2"].log_prob(z2), -200 * np.log(2.0), rtol=1e-6)
    with tf.GradientTape() as tape:
        log_p = prior().log_prob(z)
    grads = tape.gradient(log_p, prior.trainable_variables)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)


def test_sbn_one_layer():
    encoder, prior, _ = _sbn_small(latent_sizes=(12,))
    q, p = encoder(tf.constant(X[:B])), prior()
    assert q.dtype == {"z1": tf.int32} and p.dtype == {"z1": tf.int32}
    z = sampling.sample(q, S, SEED)
    assert p.log_prob(z).shape == (S, B)
    assert [v.path for v in prior.trainable_variables] == ["prior/top_logits"]


@pytest.mark.parametrize("objective", [mco.RWS(S), mco.VIMCO(S)], ids=repr)
def test_sbn_trains_with_score_function_objectives(objective):
    encoder, prior, decoder = _sbn_small()
    x = tf.constant(X[:B])
    variables = None
    with tf.GradientTape() as tape:
        result = objective(encoder(x), _log_joint(prior, decoder, x), seed=SEED)
    variables = encoder.trainable_variables + prior.trainable_variables
    variables += decoder.trainable_variables
    grads = tape.gradient(result.loss, variables)
    assert np.all(np.isfinite(result.bound))
    for grad, var in zip(grads, variables, strict=True):
        assert grad is not None and np.all(np.isfinite(grad)), var.path


@pytest.mark.parametrize("objective", [mco.DReG(S), mco.IWAE(S), mco.STL(S)], ids=repr)
def test_sbn_refused_by_reparameterized_objectives_naming_the_leaf(objective):
    encoder, prior, decoder = _sbn_small()
    x = tf.constant(X[:B])
    with pytest.raises(ValueError, match=r"leaf 'z1' of `q` is discrete \(int32\)"):
        objective(encoder(x), _log_joint(prior, decoder, x), seed=SEED)


def test_sbn_refused_by_dreg_through_the_model():
    encoder, prior, decoder = _sbn_small()
    model = mco.ImportanceWeightedAutoencoder(encoder, decoder, prior, mco.DReG(S), seed=1)
    with pytest.raises(ValueError, match=r"DReG .* leaf 'z1' .* discrete \(int32\)"):
        model.objective_result(X[:B], seed=SEED)


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: networks.TwoLayerGaussianEncoder(latent_sizes=(100,)),
        lambda: networks.TwoLayerGaussianEncoder(latent_sizes="ab"),
        lambda: networks.TwoLayerGaussianPrior(latent_sizes=(100, 50, 25)),
        lambda: networks.SigmoidBeliefEncoder(latent_sizes=()),
        lambda: networks.SigmoidBeliefPrior(latent_sizes=(200, 200, 200)),
    ],
)
def test_bad_latent_sizes_are_value_errors(make):
    with pytest.raises(ValueError, match="latent_sizes"):
        make()


def test_bad_hidden_units():
    with pytest.raises(ValueError, match="pair"):
        networks.TwoLayerGaussianEncoder(hidden_units=(200, 200, 100))
    with pytest.raises(ValueError, match="hidden_units"):
        networks.SigmoidBeliefEncoder(hidden_units=(0,))
    with pytest.raises(TypeError, match="hidden_units"):
        networks.TwoLayerGaussianPrior(hidden_units=100)


# --- flat, sample-and-batch and unbatched inputs --------------------------------------------

C = 5  # context features


def _context(n):
    return tf.constant(np.random.default_rng(1).random([n, C]), tf.float32)


def _flat(tensor):
    return tf.reshape(tensor, [S * B, *tensor.shape[2:]])


def test_encoders_take_flat_sample_and_batch_and_unbatched_inputs():
    """q(z|x, c) on x [S * B, d] with c [S * B, C] is q on x [S, B, d] with c [B, C]
    (broadcast), flattened; an unbatched x [d] with c [C] has batch shape []."""
    rng = np.random.default_rng(2)
    x = tf.constant(rng.random([S, B, 784]) < 0.5, tf.float32)
    context = _context(B)
    tiled = tf.tile(context, [S, 1])  # [S * B, C], as the flattened x
    for encoder in (
        networks.GaussianEncoder(4, (16,)),
        networks.TwoLayerGaussianEncoder((4, 3), ((16,), (8,))),
        networks.SigmoidBeliefEncoder((6, 3)),
    ):
        q_flat, q_3d = encoder(_flat(x), tiled), encoder(x, context)
        batch = tf.nest.flatten(q_flat.batch_shape)
        assert all(shape == [S * B] for shape in batch), encoder.name
        z = sampling.sample(q_flat, 2, SEED)  # leaves [2, S * B, d]
        z_3d = tf.nest.map_structure(lambda t: tf.reshape(t, [2, S, B, *t.shape[2:]]), z)
        np.testing.assert_allclose(
            tf.reshape(q_flat.log_prob(z), [2, S, B]), q_3d.log_prob(z_3d), rtol=1e-6
        )
        q_one = encoder(x[0, 0], context[0])
        assert all(shape == [] for shape in tf.nest.flatten(q_one.batch_shape))
        assert q_one.log_prob(tf.nest.map_structure(lambda t: t[0, 0], z)).shape == ()


def test_decoders_and_priors_take_flat_latents():
    """p(x|z, c) on z [S * B, d] with the context tiled to [S * B, C] is p(x|z, c) on
    z [S, B, d] with c [B, C], flattened; the priors score flat z as [S * B]."""
    decoder = networks.BernoulliDecoder(784, (16,), mean_pixel=MEAN_PIXEL, latent="z1")
    z1 = tf.random.stateless_normal([S, B, 4], [1, 2])
    context = _context(B)
    x = tf.constant(X[:B])
    p_flat = decoder({"z1": _flat(z1)}, tf.tile(context, [S, 1]))
    assert p_flat.batch_shape == [S * B] and p_flat.event_shape == [784]
    np.testing.assert_allclose(
        tf.reshape(p_flat.log_prob(tf.tile(x, [S, 1])), [S, B]),
        decoder({"z1": z1}, context).log_prob(x),
        rtol=1e-6,
    )
    assert decoder({"z1": z1[0, 0]}, context[0]).batch_shape == []
    gaussian = networks.GaussianPrior(4, (16,))
    assert gaussian(tf.tile(context, [S, 1])).log_prob(_flat(z1)).shape == (S * B,)
    z = {"z1": _flat(z1), "z2": tf.random.stateless_normal([S * B, 3], [3, 4])}
    assert networks.TwoLayerGaussianPrior((4, 3), (8,))().log_prob(z).shape == (S * B,)
    bits = {"z1": tf.ones([S * B, 6], tf.int32), "z2": tf.zeros([S * B, 3], tf.int32)}
    assert networks.SigmoidBeliefPrior((6, 3))().log_prob(bits).shape == (S * B,)


def test_a_decoder_traced_for_any_number_of_flat_latents(mode):
    """Under tf.function (and XLA) with a dynamic leading axis: z [None, d]."""
    decoder = networks.BernoulliDecoder(784, (16,))
    x = tf.constant(X[:B])

    def log_likelihood(z):
        return decoder(z).log_prob(tf.tile(x, [tf.shape(z)[0] // B, 1]))

    signature = None if mode == "eager" else [tf.TensorSpec([None, 4], tf.float32)]
    log_likelihood = in_mode(log_likelihood, mode, input_signature=signature)
    for n in (B, S * B):
        assert log_likelihood(tf.zeros([n, 4])).shape == (n,)


# --- mixed precision ------------------------------------------------------------------------


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def low_precision(request):
    """The low compute dtype of a mixed policy, set globally for the test, then restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield keras.mixed_precision.global_policy().compute_dtype
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _mlps(layer) -> list:
    return [sub for sub in layer._flatten_layers() if isinstance(sub, MLP)]


def test_networks_compute_in_low_precision_and_return_float32_distributions(low_precision):
    """Dense layers in float16 / bfloat16 over float32 variables; inputs of any float dtype
    cast on entry; distributions, draws and log_probs in float32 (latents of the SBN int32)."""
    x64 = tf.constant(X[:B], tf.float64)
    context = tf.cast(_context(B), low_precision)
    seed = tf.constant([7, 8])
    layers = {
        "q": networks.GaussianEncoder(4, (16,)),
        "p": networks.GaussianPrior(4, (16,)),
        "q2": networks.TwoLayerGaussianEncoder((4, 3), ((16,), (8,))),
        "p2": networks.TwoLayerGaussianPrior((4, 3), (8,)),
        "q_sbn": networks.SigmoidBeliefEncoder((6, 3), (8,)),
        "p_sbn": networks.SigmoidBeliefPrior((6, 3), (8,)),
    }
    distributions = {
        "q": layers["q"](x64, context),
        "p": layers["p"](context),
        "q2": layers["q2"](x64, context),
        "p2": layers["p2"](),
        "q_sbn": layers["q_sbn"](x64),
        "p_sbn": layers["p_sbn"](),
    }
    latents = {}
    for name, d in distributions.items():
        z = d.sample(S, seed=seed)
        latents[name] = z
        expected = tf.int32 if "sbn" in name else tf.float32
        assert all(t == expected for t in tf.nest.flatten(d.dtype)), name
        assert all(t.dtype == expected for t in tf.nest.flatten(z)), name
        log_prob = d.log_prob(z)
        assert log_prob.dtype == tf.float32 and np.all(np.isfinite(log_prob)), name
    decoder = networks.BernoulliDecoder(784, (16,), latent="z1")
    p_x = decoder(latents["q_sbn"], context)  # int32 latents cast to the compute dtype
    assert p_x.dtype == tf.float32 and p_x.distribution.logits.dtype == tf.float32
    log_p_x = p_x.log_prob(tf.constant(X[:B]))
    assert log_p_x.dtype == tf.float32 and np.all(np.isfinite(log_p_x))
    layers["decoder"] = decoder
    for name, layer in layers.items():
        assert all(v.dtype == "float32" for v in layer.weights), name
        for mlp in _mlps(layer):
            assert mlp.compute_dtype == low_precision, name
            first = (mlp.hidden or [mlp.output_layer])[0]
            hidden = first(tf.zeros([2, first.kernel.shape[0]]))
            assert hidden.dtype == low_precision, name  # the matmul ran in low precision
            assert mlp(tf.zeros([2, first.kernel.shape[0]])).dtype == low_precision, name


def test_a_deserialized_network_keeps_its_mixed_policy(low_precision):
    encoder = networks.GaussianEncoder(4, (16,))
    keras.mixed_precision.set_global_policy("float32")
    copy = networks.GaussianEncoder.from_config(encoder.get_config())
    assert copy.compute_dtype == low_precision
    assert copy.net.hidden[0].compute_dtype == low_precision
    assert copy(tf.constant(X[:B])).dtype == tf.float32


# --- the decoder's pixels ---------------------------------------------------------------------


def _decoder_and_logits():
    decoder = networks.BernoulliDecoder(784, (16,), mean_pixel=MEAN_PIXEL)
    z = tf.random.stateless_normal([S, B, 4], [1, 2])
    return decoder, z, decoder(z).distribution.logits


def test_decoder_log_prob_is_tfp_bernoulli_log_prob_for_pixels_in_the_unit_interval(mode):
    """Binary pixels and probabilities (x in [0, 1]): the log_prob of TFP's Bernoulli of
    the same logits to float rounding (one softplus instead of TFP's two: 1e-6 relative
    on sums of 784 pixels), in every mode (XLA drops the range assertion); prob too."""
    decoder, z, _ = _decoder_and_logits()
    probabilities = np.random.default_rng(3).random([B, 784]).astype(np.float32)

    def both(z, x):
        p = decoder(z)
        tfp_bernoulli = tfd.Independent(
            tfd.Bernoulli(logits=p.distribution.logits, dtype=x.dtype), 1
        )
        return p.log_prob(x), tfp_bernoulli.log_prob(x), p.prob(x), tfp_bernoulli.prob(x)

    for x in (tf.constant(X[:B]), tf.constant(probabilities)):
        log_prob, expected, prob, expected_prob = in_mode(both, mode)(z, x)
        assert log_prob.shape == (S, B)
        np.testing.assert_allclose(log_prob, expected, rtol=1e-6)
        np.testing.assert_allclose(prob, expected_prob, rtol=1e-5)


# The range check is a run-time assertion, which XLA compiles away.
PIXEL_RANGE_MODES = modes(*EAGER_AND_FUNCTION, reason="XLA drops run-time assertions")


@pytest.mark.parametrize("bad", [255.0, 1.5, -0.5])
@PIXEL_RANGE_MODES
def test_decoder_refuses_float_pixels_outside_the_unit_interval(bad, mode):
    """An assertion naming the range found and the fix, from log_prob and prob."""
    decoder, z, _ = _decoder_and_logits()
    x = X[:B].copy()
    x[1, 100] = bad
    message = r"pixels x in \[0, 1\].*range over.*x / 255"
    for method in ("log_prob", "prob"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            in_mode(lambda z, x, m=method: getattr(decoder(z), m)(x), mode)(z, tf.constant(x))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_decoder_lets_a_non_finite_pixel_through_to_a_non_finite_log_prob(bad):
    """A corrupt pixel is no range error: the log-prob is non-finite, and the model skips
    such a step (tests/test_keras_model.py)."""
    decoder, z, _ = _decoder_and_logits()
    x = X[:B].copy()
    x[1, 100] = bad
    log_prob = decoder(z).log_prob(x).numpy()
    assert not np.isfinite(log_prob[:, 1]).any()
    assert np.isfinite(np.delete(log_prob, 1, axis=-1)).all()


@PIXEL_RANGE_MODES
def test_decoder_pixel_error_names_the_range_found(mode):
    """Eagerly the message holds the range's numbers; in a graph, the assertion's data."""
    decoder, z, _ = _decoder_and_logits()
    raw = X[:B] * 255.0
    found = r"range over \[0.0, 255.0\]" if mode == "eager" else r"\[min, max\] =\] \[0\] \[255\]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=found):
        in_mode(lambda z, x: decoder(z).log_prob(x), mode)(z, tf.constant(raw))


def test_decoder_refuses_uint8_pixels_with_a_type_error(mode):
    """uint8, the dtype of raw intensities, is refused statically, under XLA too."""
    decoder, z, _ = _decoder_and_logits()
    raw = (X[:B] * 255).astype(np.uint8)
    for x in (raw, tf.constant(raw), raw[0, 0]):
        with pytest.raises(TypeError, match=r"dtype uint8.*tf.cast\(x, tf.float32\) / 255"):
            in_mode(lambda z, x: decoder(z).log_prob(x), mode)(z, x)


def test_decoder_takes_integer_and_boolean_binary_pixels():
    """int32 (e.g. Bernoulli draws) and bool 0/1 pixels score as the same float pixels;
    integers outside {0, 1} are refused as floats are."""
    decoder, z, _ = _decoder_and_logits()
    p = decoder(z)
    expected = p.log_prob(X[:B])
    for dtype in (tf.int32, tf.int64, tf.bool):
        np.testing.assert_array_equal(p.log_prob(tf.cast(X[:B], dtype)), expected)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"pixels x in \[0, 1\]"):
        p.log_prob(tf.cast(X[:B] * 255, tf.int32))
