"""The decoder's Bernoulli log-probability, x l - softplus(l), against TFP's Bernoulli.

`mco.networks.BernoulliDecoder` returns pixels whose `log_prob` computes
x l - softplus(l) from the logits l (one softplus, as max(l, 0) + log(1 + exp(-|l|)),
with the gradient x - sigmoid(l) given directly), where TFP's `Bernoulli.log_prob`
computes -(1 - x) softplus(l) - x softplus(-l) with two softplus and two
`multiply_no_nan`. The two are the same function; these tests check that they agree to
float rounding, and so do their gradients with respect to the logits, in float32 and
float64, for logits up to 1e4 in magnitude, binary and fractional pixels (the decoder
takes probabilities in [0, 1] as pixels), in every execution mode (eager, tf.function,
XLA). Also: the traced log_prob holds one Exp, one Log, one Sigmoid (its gradient) and
no MulNoNan, and the range check
of x is one reduce_min and one reduce_max outside a `tf.cond`, whose branch does the
finite-masked check only when those leave [0, 1].

Tolerances. Per pixel, |ours - TFP's| <= 8 eps softplus(|l|): eight units of
relative rounding of the larger of the two softplus terms (measured: at most 4 ulps of
softplus(|l|) over 3e5 logits per dtype). Gradients lie in [-1, 1]: |difference| <= 4 eps
(measured: at most 2 eps).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import networks
from mcobjectives.networks.bernoulli import PixelBernoulli, checked_pixels
from tests.conftest import EAGER_AND_FUNCTION, in_mode, modes

tfd = tfp.distributions

DTYPES = (np.float32, np.float64)
_RNG = np.random.default_rng(20240612)
# Logits: moderate ones, large ones up to 1e4 in magnitude, and edge values (0, where
# float32 and float64 exp overflows, where softplus switches to its asymptotes).
EDGES = [0.0, 1e-6, -1e-6, 1.0, -1.0, 15.0, -15.0, 17.0, -17.0, 40.0, -40.0, 88.0, -88.0]
EDGES += [89.0, -89.0, 710.0, -710.0, 1e3, -1e3, 1e4, -1e4]
LOGITS = np.concatenate([_RNG.normal(0.0, 4.0, 3000), _RNG.uniform(-1e4, 1e4, 1000), EDGES])
N = LOGITS.size


def _pixels(kind: str, dtype) -> np.ndarray:
    """x for every logit: binary, fractional in [0, 1], all ones or all zeros."""
    rng = np.random.default_rng({"binary": 1, "fractional": 2}.get(kind, 0))
    if kind == "binary":
        return rng.integers(0, 2, N).astype(dtype)
    if kind == "fractional":
        x = rng.random(N)
        x[:4] = [0.0, 1.0, 0.5, 1e-7]
        return x.astype(dtype)
    return np.full(N, 1.0 if kind == "ones" else 0.0, dtype)


def _ours_and_tfps(logits: tf.Tensor, x: tf.Tensor, event_ndims: int = 1):
    """(log_prob, d log_prob / d logits) of the decoder's pixels and of TFP's Bernoulli."""
    out = []
    for make in (PixelBernoulli, tfd.Independent):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            d = make(tfd.Bernoulli(logits=logits, dtype=logits.dtype), event_ndims)
            log_prob = d.log_prob(x)
        out += [log_prob, tape.gradient(log_prob, logits)]
    return out


def _tolerance(logits: np.ndarray, dtype) -> np.ndarray:
    softplus = np.logaddexp(0.0, np.abs(logits.astype(np.float64)))
    return 8 * np.finfo(dtype).eps * softplus


@pytest.mark.parametrize("kind", ["binary", "fractional", "ones", "zeros"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_log_prob_and_gradient_are_tfps_to_rounding(mode, dtype, kind):
    """One pixel per batch member ([N, 1], event [1]): each pixel compared by itself."""
    logits = tf.constant(LOGITS.astype(dtype)[:, None])
    x = tf.constant(_pixels(kind, dtype)[:, None])
    ours, our_gradient, tfps, tfp_gradient = in_mode(_ours_and_tfps, mode)(logits, x)
    assert ours.dtype == tfps.dtype == dtype and ours.shape == (N,)
    error = np.abs(ours.numpy() - tfps.numpy())
    bound = _tolerance(LOGITS.astype(dtype), dtype)
    worst = np.argmax(error / bound)
    print(f"{mode} {np.dtype(dtype).name} {kind}: max error / bound {error[worst] / bound[worst]}")
    assert np.all(error <= bound), (LOGITS[worst], error[worst], bound[worst])
    gradient_error = np.abs(our_gradient.numpy() - tfp_gradient.numpy())
    assert np.all(np.isfinite(our_gradient.numpy()))
    assert gradient_error.max() <= 4 * np.finfo(dtype).eps, gradient_error.max()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_an_image_of_784_pixels_sums_to_tfps_log_prob(mode, dtype):
    """[S*B, 784] logits and x tiled from [B, 784] as the autoencoder passes them: the
    sums over the event agree to 16 eps sum_i (|x_i l_i| + softplus(l_i)), room for the
    rounding of the terms and of their sum (measured: at most 0.6 eps times that sum)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 6.0, (12, 784)).astype(dtype)
    logits[0, :20] = [1e4, -1e4] * 10
    x = np.tile((rng.random((3, 784)) < 0.4).astype(dtype), [4, 1])
    x[1, :50] = rng.random(50)  # fractional pixels too
    ours, our_gradient, tfps, tfp_gradient = in_mode(_ours_and_tfps, mode)(
        tf.constant(logits), tf.constant(x)
    )
    assert ours.shape == (12,)
    eps = np.finfo(dtype).eps
    terms = np.abs(x * logits) + np.logaddexp(0.0, logits)
    bound = 16 * eps * terms.sum(-1)
    assert np.all(np.abs(ours.numpy() - tfps.numpy()) <= bound)
    np.testing.assert_allclose(our_gradient, tfp_gradient, rtol=0, atol=4 * eps)


def _decoder_distribution(dtype=None):
    keras.utils.set_random_seed(7)
    decoder = networks.BernoulliDecoder(784, (16,), dtype=dtype)
    z = tf.random.stateless_normal([5, 4], [1, 2], dtype=dtype or "float32")
    return decoder, z


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_decoders_log_prob_and_its_weight_gradients_are_tfps(mode, dtype):
    """Through the decoder: its log_prob, prob and unnormalized_log_prob, and the gradient
    of its log_prob with respect to the decoder's weights, against TFP's Bernoulli on the
    same logits."""
    decoder, z = _decoder_distribution(dtype)
    x = tf.constant((np.random.default_rng(3).random([5, 784]) < 0.3).astype(dtype))
    weights = decoder.trainable_variables

    def run(z, x):
        with tf.GradientTape(persistent=True) as tape:
            p = decoder(z)
            logits = p.distribution.logits
            reference = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=logits.dtype), 1)
            ours, tfps = p.log_prob(x), reference.log_prob(x)
        return (
            ours,
            tfps,
            p.prob(x),
            p.unnormalized_log_prob(x),
            tape.gradient(ours, weights),
            tape.gradient(tfps, weights),
        )

    ours, tfps, prob, unnormalized, our_grads, tfp_grads = in_mode(run, mode)(z, x)
    assert ours.dtype == dtype and ours.shape == (5,)
    rtol = 8 * np.finfo(dtype).eps * np.sqrt(784)
    np.testing.assert_allclose(ours, tfps, rtol=rtol)
    np.testing.assert_allclose(prob, np.exp(ours.numpy()), rtol=rtol)
    np.testing.assert_array_equal(unnormalized, ours)
    for mine, theirs in zip(our_grads, tfp_grads, strict=True):
        scale = np.abs(theirs.numpy()).max()
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=64 * np.finfo(dtype).eps * scale)


def test_mixed_precision_computes_low_and_emits_float32():
    """Under mixed_float16 the dense layers compute in float16; the logits, the
    distribution and its log_prob are float32 and equal TFP's on those logits."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        decoder, z = _decoder_distribution()
        p = decoder(z)
        assert decoder.net.output_layer.compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy(previous)
    x = tf.constant((np.random.default_rng(4).random([5, 784]) < 0.5).astype(np.float32))
    logits = p.distribution.logits
    assert logits.dtype == p.dtype == tf.float32
    expected = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1).log_prob(x)
    np.testing.assert_allclose(p.log_prob(x), expected, rtol=1e-5)


def test_the_rest_of_the_interface_is_tfps():
    """Sampling, the mean, the event shape and entropy are those of TFP's Bernoulli."""
    decoder, z = _decoder_distribution()
    p = decoder(z)
    logits = p.distribution.logits
    reference = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)
    assert p.event_shape == [784] and p.batch_shape == [5] and p.dtype == tf.float32
    np.testing.assert_array_equal(p.mean(), reference.mean())
    np.testing.assert_array_equal(p.entropy(), reference.entropy())
    draws = p.sample(3, seed=[4, 5])
    np.testing.assert_array_equal(draws, reference.sample(3, seed=[4, 5]))
    assert draws.dtype == tf.float32 and set(np.unique(draws.numpy())) <= {0.0, 1.0}


def _op_types(graph: tf.Graph) -> list[str]:
    return [op.type for op in graph.get_operations()]


def _all_op_types(graph_def) -> list[str]:
    """Op types of a GraphDef and of every function in its library (cond branches...)."""
    types = [node.op for node in graph_def.node]
    for function in graph_def.library.function:
        types += [node.op for node in function.node_def]
    return types


def test_log_prob_and_its_gradient_hold_one_exp_one_log_one_sigmoid_and_no_multiply_no_nan():
    """Per pixel: exp and log for softplus, sigmoid for the gradient; nothing of TFP's."""
    logits = tf.zeros([4, 784])
    x = tf.zeros([4, 784])

    @tf.function(autograph=False)
    def log_prob_and_gradient(logits, x):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            p = PixelBernoulli(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)
            log_prob = p.log_prob(x)
        return log_prob, tape.gradient(log_prob, logits)

    graph_def = log_prob_and_gradient.get_concrete_function(logits, x).graph.as_graph_def()
    types = _all_op_types(graph_def)
    assert types.count("Exp") == 1
    assert types.count("Log") == 1
    assert types.count("Sigmoid") == 1  # the gradient, x - sigmoid(l)
    assert "Softplus" not in types
    assert "MulNoNan" not in types


def test_the_range_check_reads_x_in_one_min_and_one_max_outside_its_cond():
    """The graph around the cond reduces x once each way and never masks it; the masked
    range (IsFinite, SelectV2) and the assertion sit in the cond's branch."""

    @tf.function(autograph=False)
    def check(x):
        return checked_pixels(x)

    graph = check.get_concrete_function(tf.TensorSpec([None, 784], tf.float32)).graph
    outer = _op_types(graph)
    assert outer.count("Min") == 1 and outer.count("Max") == 1
    assert not {"IsFinite", "Select", "SelectV2", "Assert"} & set(outer)
    assert {"If", "StatelessIf"} & set(outer)
    inner = _all_op_types(graph.as_graph_def())
    assert "IsFinite" in inner and "Assert" in inner


X_OK = np.array([[0.0, 1.0, 0.25, 1.0]], np.float32)


@pytest.mark.parametrize(
    "x",
    [X_OK, np.array([[0.0, np.nan, 1.0, 0.5]]), np.array([[np.inf, 0.0, -np.inf, 1.0]])],
    ids=["in_range", "nan", "infinite"],
)
def test_the_check_lets_pixels_in_range_and_non_finite_pixels_through(mode, x):
    logits = tf.constant([[0.5, -2.0, 3.0, 0.0]])

    def log_prob(x):
        return PixelBernoulli(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1).log_prob(x)

    value = in_mode(log_prob, mode)(tf.constant(x, tf.float32)).numpy()
    assert np.isfinite(value).all() == np.isfinite(x).all()


@pytest.mark.parametrize(
    "x",
    [[[0.0, 1.5, 0.5, 1.0]], [[0.0, np.nan, -0.5, 1.0]], [[np.inf, 2.0, 0.0, 1.0]]],
    ids=["out_of_range", "nan_and_out_of_range", "infinite_and_out_of_range"],
)
@modes(*EAGER_AND_FUNCTION, reason="XLA compiles run-time assertions away")
def test_a_finite_pixel_outside_the_unit_interval_fails_beside_non_finite_ones(mode, x):
    """Whichever way TensorFlow's reduce_min and reduce_max treat NaN, the masked range in
    the cond's branch finds the finite pixel out of range."""
    logits = tf.constant([[0.5, -2.0, 3.0, 0.0]])

    def log_prob(x):
        return PixelBernoulli(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1).log_prob(x)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"pixels x in \[0, 1\]"):
        in_mode(log_prob, mode)(tf.constant(x, tf.float32))
