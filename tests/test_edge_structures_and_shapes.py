"""Where the model's pieces meet: joint priors paired with q by name, and shapes checked.

Issue 17, items 3 and 4, for `make_log_joint` and the Keras model's `log_joint`:

* A joint prior and a joint q whose parts all have names are paired by name, whatever
  the order or container (a prior written in generative order p(b) p(a|b) beside a
  q(a) q(b|a); a dict q beside a list prior): the log weights equal the hand-computed
  log p(b) + log p(a|b) + log p(x|a) - log q(a, b) on the objective's own draws (which
  are `sampling.sample`'s, as tests/test_structured.py checks). Without names the
  structures must be the same; names that differ, structures that differ and a joint
  beside a single distribution are refused with both structures in the message.
* Shapes: x against q's batch (no broadcast of a batch of 1, none of B + 1), the
  prior's batch ([] or [B]) and event shapes against q's, the likelihood's (and the
  Keras decoder's) distribution, event shape and batch shape against x and z.
* Priors of other families work: a mixture and a truncated normal, checked by hand.

Each refusal asserts the error type and that the message names the piece (and the
shapes or structures); each handled case asserts the result against a hand
computation (float64, 1e-10 relative).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import sampling
from mcobjectives.networks import BernoulliDecoder, GaussianEncoder
from tests.conftest import in_mode

tfd = tfp.distributions
root = tfd.JointDistributionCoroutine.Root

B, S, D = 3, 4, 2
SEED = 7
X = np.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.2]])  # [B, D]


def _f64(value):
    return tf.convert_to_tensor(value, tf.float64)


def _normal(loc, scale=1.0, name=None):
    """A diagonal Gaussian over the last axis of `loc` (event [n]), float64."""
    loc = _f64(loc)
    return tfd.Independent(tfd.Normal(loc, _f64(scale) * tf.ones_like(loc)), 1, name=name)


def _q_a(x):
    return _normal(0.5 * x + 0.1, 0.8, name="a")  # [B] of event [D]


def _q_b_given_a(a):
    return _normal(tf.reduce_sum(a, -1, keepdims=True) * 0.3 - 0.2, 0.6, name="b")  # event [1]


def _q_sequential(x):
    """q(a|x) q(b|a) as a JointDistributionSequential with named parts (a, b)."""
    return tfd.JointDistributionSequential([_q_a(x), lambda a: _q_b_given_a(a)])


def _q_named(x):
    return tfd.JointDistributionNamed({"a": _q_a(x), "b": lambda a: _q_b_given_a(a)})


def _q_coroutine(x):
    def model():
        a = yield root(_q_a(x))
        yield _q_b_given_a(a)

    return tfd.JointDistributionCoroutine(model)


def _p_b(name="b"):
    return _normal(tf.constant([0.4], tf.float64), 1.3, name=name)


def _p_a_given_b(b, name="a"):
    return _normal(tf.concat([b, -b], -1) * 0.7, 0.9, name=name)


# The prior p(b) p(a|b), written in generative order (b first), in each form of joint.
PRIORS_IN_GENERATIVE_ORDER = {
    "sequential by name=": lambda: tfd.JointDistributionSequential(
        [_p_b(), lambda b: _p_a_given_b(b)]
    ),
    "sequential by lambda argument names": lambda: tfd.JointDistributionSequential(
        [_p_b(name=None), lambda b: _p_a_given_b(b, name="a")]
    ),
    "named": lambda: tfd.JointDistributionNamed({"b": _p_b(), "a": lambda b: _p_a_given_b(b)}),
    "named autobatched": lambda: tfd.JointDistributionNamedAutoBatched(
        {"b": _p_b(), "a": lambda b: _p_a_given_b(b)}
    ),
    "coroutine": lambda: tfd.JointDistributionCoroutine(_generative_coroutine),
}


def _generative_coroutine():
    b = yield root(_p_b())
    yield _p_a_given_b(b)


Q_FORMS = {"sequential": _q_sequential, "named": _q_named, "coroutine": _q_coroutine}


def _leaf(z, name):
    """Leaf a or b of z: a dict's key, a StructTuple's field, or a list's position."""
    if isinstance(z, dict):
        return z[name]
    if hasattr(z, "_fields"):
        return getattr(z, name)
    return z[{"a": 0, "b": 1}[name]]


def _likelihood(z):
    """p(x|a) = N(x; a, 0.5^2 I): reads leaf a."""
    return _normal(_leaf(z, "a"), 0.5)


def _hand_log_weights(q, z, x):
    """log p(b) + log p(a|b) + log p(x|a) - log q(a, b), written out leaf by leaf."""
    a, b = _leaf(z, "a"), _leaf(z, "b")
    log_p = _p_b().log_prob(b) + _p_a_given_b(b).log_prob(a) + _normal(a, 0.5).log_prob(x)
    return log_p - q.log_prob(z)


def _iwae_and_hand(q_form, prior, mode):
    def fn():
        x = _f64(X)
        q = Q_FORMS[q_form](x)
        result = mco.IWAE(S)(q, mco.make_log_joint(prior(), _likelihood, x), seed=SEED)
        hand = _hand_log_weights(q, sampling.sample(q, S, SEED), x)
        return result.log_weights, result.bound, hand

    return [t.numpy() for t in in_mode(fn, mode)()]


def _log_mean_exp(log_w):
    return np.log(np.mean(np.exp(log_w), axis=0))


# --------------------------------------------------------------------------------------
# Structures matched by name
# --------------------------------------------------------------------------------------


def test_a_sequential_prior_in_generative_order_gives_the_hand_computed_bound(mode):
    """q(a) q(b|a) beside p(b) p(a|b) as a JointDistributionSequential named by name=:
    the parts are paired by name, not by position (which would score a as b)."""
    log_w, bound, hand = _iwae_and_hand(
        "sequential", PRIORS_IN_GENERATIVE_ORDER["sequential by name="], mode
    )
    np.testing.assert_allclose(log_w, hand, rtol=1e-10)
    np.testing.assert_allclose(bound, _log_mean_exp(hand), rtol=1e-10)


@pytest.mark.parametrize(
    "q_form, prior",
    [
        ("sequential", "sequential by lambda argument names"),
        ("sequential", "named"),
        ("sequential", "coroutine"),
        ("named", "sequential by name="),
        ("named", "named"),
        ("named", "named autobatched"),
        ("coroutine", "sequential by name="),
        ("coroutine", "coroutine"),
    ],
)
def test_every_form_of_joint_prior_in_generative_order_is_paired_with_q_by_name(q_form, prior):
    """Each joint form on either side, the prior in the other order: exact log weights."""
    log_w, bound, hand = _iwae_and_hand(q_form, PRIORS_IN_GENERATIVE_ORDER[prior], "eager")
    np.testing.assert_allclose(log_w, hand, rtol=1e-10)
    np.testing.assert_allclose(bound, _log_mean_exp(hand), rtol=1e-10)


def test_a_prior_in_q_s_own_order_is_passed_z_itself_and_gives_the_same_bound():
    """Matched order: no rearrangement at all (the pairing is None), and the bound is the
    one of the reversed prior, both equal to the hand computation."""
    from mcobjectives.core import structures

    x = _f64(X)
    q = _q_named(x)
    matched = tfd.JointDistributionNamed({"a": lambda b: _p_a_given_b(b), "b": _p_b()})
    assert structures.pair_prior(q, matched) is None
    reversed_ = PRIORS_IN_GENERATIVE_ORDER["sequential by name="]()
    assert structures.pair_prior(q, reversed_) is not None
    bounds = [
        mco.IWAE(S)(q, mco.make_log_joint(p, _likelihood, x), seed=SEED).bound.numpy()
        for p in (matched, reversed_)
    ]
    hand = _hand_log_weights(q, sampling.sample(q, S, SEED), x).numpy()
    np.testing.assert_allclose(bounds[0], _log_mean_exp(hand), rtol=1e-10)
    np.testing.assert_allclose(bounds[1], bounds[0], rtol=1e-12)


def test_a_prior_in_q_s_own_order_adds_no_op_to_the_traced_log_joint():
    """The checks read static shapes in Python and the pairing is None: the traced graph
    of the bound log joint has exactly the ops of log p(z) + log p(x|z) written out."""
    from mcobjectives.core import checks

    x = _f64(X)
    q = _q_named(x)
    prior = tfd.JointDistributionNamed({"a": lambda b: _p_a_given_b(b), "b": _p_b()})
    bound = checks.bind_log_joint(mco.make_log_joint(prior, _likelihood, x), q)
    spec = tf.nest.map_structure(tf.TensorSpec.from_tensor, sampling.sample(q, S, SEED))

    def ops(fn):
        return len(tf.function(fn).get_concrete_function(spec).graph.get_operations())

    assert ops(bound) == ops(lambda z: prior.log_prob(z) + _likelihood(z).log_prob(x))


def test_unnamed_parts_of_the_same_structure_are_paired_by_position():
    """Neither side names its parts (TFP's made-up names are no names): same structure,
    same order, paired by position, exact."""
    x = _f64(X)
    q = tfd.JointDistributionSequential([_normal(0.5 * x), _normal(tf.zeros([B, 1], tf.float64))])
    prior = tfd.JointDistributionSequential([_normal(tf.zeros([D], tf.float64)), _p_b(name=None)])
    result = mco.IWAE(S)(q, mco.make_log_joint(prior, lambda z: _normal(z[0], 0.5), x), seed=SEED)
    a, b = sampling.sample(q, S, SEED)
    hand = (
        _normal(tf.zeros([D], tf.float64)).log_prob(a)
        + _p_b().log_prob(b)
        + _normal(a, 0.5).log_prob(x)
        - q.log_prob([a, b])
    )
    np.testing.assert_allclose(result.log_weights.numpy(), hand.numpy(), rtol=1e-10)


def _refused(q, prior, likelihood=_likelihood, x=X, error=ValueError, match="`prior`"):
    with pytest.raises(error, match=match) as info:
        mco.IWAE(S)(q, mco.make_log_joint(prior, likelihood, _f64(x)), seed=SEED)
    return str(info.value)


def test_a_dict_q_beside_a_list_prior_without_names_is_refused_showing_both():
    prior = tfd.JointDistributionSequential([_p_b(name=None), _normal(tf.zeros([D], tf.float64))])
    message = _refused(_q_named(_f64(X)), prior, match="structures differ")
    assert "JointDistributionNamed {'a': [2], 'b': [1]}" in message
    assert "JointDistributionSequential [part 0 (no name): [1], part 1 (no name): [2]]" in message


def test_parts_whose_names_differ_are_refused_naming_the_names_on_each_side():
    prior = tfd.JointDistributionNamed({"c": _p_b(), "a": lambda c: _p_a_given_b(c)})
    message = _refused(_q_named(_f64(X)), prior, match="names differ")
    assert "only in q: ['b']; only in the prior: ['c']" in message


def test_a_part_named_differently_at_the_same_position_is_never_paired_by_position():
    """q names (a, b); the prior names its first part b and leaves the second unnamed: not
    every part has a name, so position would pair a with 'b': refused."""
    prior = tfd.JointDistributionSequential(
        [_normal(tf.zeros([D], tf.float64), name="b"), _normal(tf.zeros([1], tf.float64))]
    )
    _refused(_q_sequential(_f64(X)), prior, match="leaf 0 is named 'a' in q but 'b'")


def test_a_single_q_beside_a_joint_prior_is_refused_showing_both():
    prior = PRIORS_IN_GENERATIVE_ORDER["named"]()
    message = _refused(_q_a(_f64(X)), prior, likelihood=lambda z: _normal(z, 0.5), match="single")
    assert "Independent (a single distribution) with event shape [2]" in message


def test_a_joint_q_beside_a_single_prior_is_refused_showing_both():
    _refused(_q_named(_f64(X)), _normal(tf.zeros([D], tf.float64)), match="q is a joint")


def test_a_joint_prior_with_another_number_of_parts_is_refused():
    prior = tfd.JointDistributionNamed({"a": _normal(tf.zeros([D], tf.float64))})
    _refused(_q_named(_f64(X)), prior, match="q has 2 latent leaves and the prior 1")


def test_a_joint_prior_part_of_another_event_shape_is_refused_naming_the_leaf():
    prior = tfd.JointDistributionNamed({"b": _p_b(), "a": _normal(tf.zeros([3], tf.float64))})
    _refused(
        _q_named(_f64(X)),
        prior,
        match=r"`prior` leaf 'a' has event shape \[3\] but q's samples there have event "
        r"shape \[2\]",
    )


def test_a_pairing_refused_inside_a_tf_function_is_raised_while_tracing():
    prior = tfd.JointDistributionNamed({"c": _p_b(), "a": lambda c: _p_a_given_b(c)})

    @tf.function(autograph=False)
    def loss():
        x = _f64(X)
        return mco.IWAE(S)(_q_named(x), mco.make_log_joint(prior, _likelihood, x), seed=SEED).loss

    with pytest.raises(ValueError, match="`prior` and `q` do not have the same latent parts"):
        loss()


# --------------------------------------------------------------------------------------
# x against q's batch
# --------------------------------------------------------------------------------------


def _single(x_rows=B, prior=None, likelihood=None):
    """(q over z [D] for B = 3, log joint of x with `x_rows` rows)."""
    q = _q_a(_f64(X))
    prior = _normal(tf.zeros([D], tf.float64)) if prior is None else prior
    likelihood = (lambda z: _normal(z, 0.5)) if likelihood is None else likelihood
    x = _f64(np.resize(X, (x_rows, D)))
    return q, mco.make_log_joint(prior, likelihood, x)


@pytest.mark.parametrize("rows", [1, B + 1], ids=["batch 1", "batch B+1"])
def test_x_of_another_batch_size_than_q_is_refused_naming_observations(rows):
    q, log_joint = _single(x_rows=rows)
    with pytest.raises(ValueError, match=rf"`observations` has batch size {rows}.*batch size 3"):
        mco.IWAE(S)(q, log_joint, seed=SEED)


def test_x_of_another_batch_size_is_refused_by_log_marginal_estimate_too():
    q, log_joint = _single(x_rows=1)
    with pytest.raises(ValueError, match="`observations` has batch size 1"):
        mco.log_marginal_estimate(q, log_joint, seed=SEED, num_samples=8)


def test_x_of_another_batch_size_known_only_at_run_time_is_refused_by_an_assertion():
    """Traced for batches of unknown size (a tf.function; XLA drops assertions)."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, D], tf.float64), tf.TensorSpec([None, D], tf.float64)]
    )
    def bound(x_q, x):
        log_joint = mco.make_log_joint(_normal(tf.zeros([D], tf.float64)), lambda z: _normal(z), x)
        return mco.IWAE(S)(_q_a(x_q), log_joint, seed=SEED).bound

    assert bound(_f64(X), _f64(X)).shape == (B,)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="`observations` has another batch size than q"
    ):
        bound(_f64(X), _f64(X[:1]))


def test_x_without_a_batch_axis_is_refused():
    q = _q_a(_f64(X))
    log_joint = mco.make_log_joint(_normal(tf.zeros([D], tf.float64)), _normal, _f64(1.0))
    with pytest.raises(ValueError, match="`observations` is a scalar"):
        mco.IWAE(S)(q, log_joint, seed=SEED)


def test_observations_of_none_are_refused():
    with pytest.raises(TypeError, match="`observations`"):
        mco.make_log_joint(_normal(tf.zeros([D], tf.float64)), _normal, None)


# --------------------------------------------------------------------------------------
# The likelihood
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "likelihood, got",
    [
        (lambda z: z, "a tensor"),
        (lambda z: _normal(z).log_prob(_f64(X)), "a tensor"),
        (lambda z: None, "NoneType"),
    ],
    ids=["the latents", "a log-probability", "None"],
)
def test_a_likelihood_returning_no_distribution_is_refused_naming_it_with_the_fix(likelihood, got):
    q, log_joint = _single(likelihood=likelihood)
    with pytest.raises(TypeError, match=rf"`likelihood` must return p\(x\|z\).*{got}.*tfd"):
        mco.IWAE(S)(q, log_joint, seed=SEED)


def test_a_likelihood_over_single_coordinates_is_refused_naming_both_event_shapes():
    """tfd.Normal(z, 1) without tfd.Independent: event [] where x's is [2]."""
    q, log_joint = _single(likelihood=lambda z: tfd.Normal(z, _f64(1.0)))
    with pytest.raises(
        ValueError, match=r"`likelihood` returned a distribution of event shape \[\].*is \[2\]"
    ):
        mco.IWAE(S)(q, log_joint, seed=SEED)


def test_a_likelihood_of_another_event_size_than_x_is_refused():
    q, log_joint = _single(likelihood=lambda z: _normal(tf.concat([z, z[..., :1]], -1)))
    with pytest.raises(ValueError, match=r"`likelihood`.*event shape \[3\].*is \[2\]"):
        mco.IWAE(S)(q, log_joint, seed=SEED)


@pytest.mark.parametrize(
    "likelihood, shape",
    [
        (lambda z: _normal(tf.zeros([B, D], tf.float64)), r"\[3\]"),
        (lambda z: _normal(tf.reshape(z, [S * B, D])), r"\[12\]"),
        (lambda z: _normal(z[:1]), r"\[1, 3\]"),
    ],
    ids=["[B], ignoring z", "[S*B], flattened", "[1, B], one sample"],
)
def test_a_likelihood_of_another_batch_shape_than_s_b_is_refused(likelihood, shape):
    q, log_joint = _single(likelihood=likelihood)
    with pytest.raises(
        ValueError,
        match=rf"`likelihood` returned a distribution of batch shape {shape}; "
        r"expected \[4, 3\]",
    ):
        mco.IWAE(S)(q, log_joint, seed=SEED)


def test_the_likelihood_is_checked_when_the_log_joint_is_called_directly():
    _, log_joint = _single(likelihood=lambda z: z)
    z = sampling.sample(_q_a(_f64(X)), S, SEED)
    with pytest.raises(TypeError, match="`likelihood` must return"):
        log_joint(z)


# --------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prior, match",
    [
        (
            lambda: _normal(tf.zeros([3], tf.float64)),
            r"`prior` has event shape \[3\] but q's samples have event shape \[2\]",
        ),
        (
            lambda: tfd.Normal(_f64(0.0), _f64(1.0)),
            r"`prior` has event shape \[\] but q's samples have event shape \[2\]",
        ),
        (
            lambda: tfd.Normal(tf.zeros([D], tf.float64), _f64(1.0)),
            r"`prior` has batch shape \[2\]; expected \[\] or \[B\] = \[3\].*tfd.Independent",
        ),
    ],
    ids=["event [3]", "a scalar", "batch [D] of coordinates"],
)
def test_a_prior_of_another_event_shape_than_q_is_refused_naming_both(prior, match):
    q, log_joint = _single(prior=prior())
    with pytest.raises(ValueError, match=match):
        mco.IWAE(S)(q, log_joint, seed=SEED)


@pytest.mark.parametrize(
    "batch", [[S, B], [B + 1], [1]], ids=["[S, B]", "[B+1]", "[1] beside B = 3"]
)
def test_a_prior_of_another_batch_shape_than_none_or_q_s_is_refused(batch):
    prior = _normal(tf.zeros([*batch, D], tf.float64))
    q, log_joint = _single(prior=prior)
    shape = ", ".join(map(str, batch))
    with pytest.raises(ValueError, match=rf"`prior` has batch shape \[{shape}\]; expected \[\] or"):
        mco.IWAE(S)(q, log_joint, seed=SEED)


def test_a_conditional_prior_of_batch_b_gives_the_hand_computed_log_weights():
    x = _f64(X)
    q = _q_a(x)
    prior = _normal(0.2 * x, 1.5)  # p(z | c = x), batch [B]
    result = mco.IWAE(S)(q, mco.make_log_joint(prior, lambda z: _normal(z, 0.5), x), seed=SEED)
    z = sampling.sample(q, S, SEED)
    hand = _normal(0.2 * x, 1.5).log_prob(z) + _normal(z, 0.5).log_prob(x) - q.log_prob(z)
    np.testing.assert_allclose(result.log_weights.numpy(), hand.numpy(), rtol=1e-10)


def test_a_mixture_prior_gives_the_hand_computed_log_weights(mode):
    """p(z) = 0.3 N([-1, -1], I) + 0.7 N([1, 1], 0.5^2 I), a MixtureSameFamily."""

    def fn():
        x = _f64(X)
        q = _q_a(x)
        prior = tfd.MixtureSameFamily(
            tfd.Categorical(probs=_f64([0.3, 0.7])),
            tfd.MultivariateNormalDiag(
                _f64([[-1.0, -1.0], [1.0, 1.0]]), _f64([[1.0, 1.0], [0.5, 0.5]])
            ),
        )
        result = mco.IWAE(S)(q, mco.make_log_joint(prior, lambda z: _normal(z, 0.5), x), seed=SEED)
        z = sampling.sample(q, S, SEED)
        std = tfd.Normal(_f64(0.0), _f64(1.0))
        first = math.log(0.3) + tf.reduce_sum(std.log_prob(z + 1.0), -1)
        second = math.log(0.7) + tf.reduce_sum(std.log_prob((z - 1.0) / 0.5) - math.log(0.5), -1)
        log_prior = tf.reduce_logsumexp(tf.stack([first, second]), axis=0)
        hand = log_prior + _normal(z, 0.5).log_prob(x) - q.log_prob(z)
        return result.log_weights, hand

    log_w, hand = (t.numpy() for t in in_mode(fn, mode)())
    np.testing.assert_allclose(log_w, hand, rtol=1e-10)


def test_a_truncated_normal_prior_gives_the_hand_computed_log_weights():
    """p(z) = N(0, I) truncated to [-20, 20]^2 (no sample falls outside): the density is
    the normal's divided by the mass inside, erf(20 / sqrt 2)^2 (1 to float64)."""
    x = _f64(X)
    q = _q_a(x)
    prior = tfd.Independent(
        tfd.TruncatedNormal(tf.zeros([D], tf.float64), _f64(1.0), _f64(-20.0), _f64(20.0)), 1
    )
    result = mco.IWAE(S)(q, mco.make_log_joint(prior, lambda z: _normal(z, 0.5), x), seed=SEED)
    z = sampling.sample(q, S, SEED)
    mass = math.erf(20.0 / math.sqrt(2.0)) ** D
    hand = (
        _normal(tf.zeros([D], tf.float64)).log_prob(z)
        - math.log(mass)
        + _normal(z, 0.5).log_prob(x)
        - q.log_prob(z)
    )
    np.testing.assert_allclose(result.log_weights.numpy(), hand.numpy(), rtol=1e-10)


def test_the_pieces_are_readable_and_read_only():
    prior = _normal(tf.zeros([D], tf.float64))
    x = _f64(X)
    log_joint = mco.make_log_joint(prior, _normal, x)
    assert log_joint.prior is prior and log_joint.likelihood is _normal
    assert log_joint.observations is x
    with pytest.raises(AttributeError):
        log_joint.prior = prior


# --------------------------------------------------------------------------------------
# The Keras model
# --------------------------------------------------------------------------------------

LATENT, HIDDEN, K, PIXELS = 3, (8,), 4, 784
IMAGES = (np.random.default_rng(0).random((8, PIXELS)) < 0.3).astype(np.float32)


def _keras_model(decoder=None, prior=None, encoder=None, objective=None):
    return mco.ImportanceWeightedAutoencoder(
        encoder or GaussianEncoder(LATENT, HIDDEN),
        decoder or BernoulliDecoder(PIXELS, HIDDEN),
        prior if prior is not None else tfd.Independent(tfd.Normal(tf.zeros(LATENT), 1.0), 1),
        objective or mco.IWAE(K),
        seed=3,
    )


class _Returns(keras.layers.Layer):
    """A layer returning what `make` builds from its input (for pieces that misbehave)."""

    def __init__(self, make, **kwargs):
        super().__init__(name="returns", **kwargs)
        self.make = make

    def call(self, inputs=None):
        return self.make(inputs)


def _ten_pixel_decoder():
    """A decoder of one's own over 10 pixels (x has 784), of the right batch [S*B]."""
    return _Returns(
        lambda z: tfd.Independent(tfd.Bernoulli(logits=tf.zeros([tf.shape(z)[0], 10])), 1)
    )


@pytest.mark.parametrize(
    "decoder",
    [lambda: BernoulliDecoder(10, HIDDEN), _ten_pixel_decoder],
    ids=["BernoulliDecoder", "a decoder of one's own"],
)
def test_a_decoder_whose_event_shape_differs_from_x_is_refused_naming_it(decoder):
    model = _keras_model(decoder=decoder())
    with pytest.raises(
        ValueError, match=r"`decoder` returned a distribution of event shape \[10\].*\[784\]"
    ):
        model.objective_result(IMAGES[:4], seed=SEED)


def test_a_decoder_returning_a_tensor_is_refused_naming_it():
    model = _keras_model(decoder=_Returns(lambda z: tf.zeros([tf.shape(z)[0], PIXELS])))
    with pytest.raises(TypeError, match=r"`decoder` must return p\(x\|z\)"):
        model.objective_result(IMAGES[:4], seed=SEED)


def test_a_decoder_of_another_batch_than_the_flat_latents_is_refused_naming_it():
    model = _keras_model(
        decoder=_Returns(lambda z: tfd.Independent(tfd.Bernoulli(logits=tf.zeros([7, PIXELS])), 1))
    )
    with pytest.raises(ValueError, match=r"`decoder`.*batch shape \[7\]; expected \[16\]"):
        model.objective_result(IMAGES[:4], seed=SEED)


def test_a_fixed_prior_of_another_event_shape_than_the_encoder_s_q_is_refused():
    model = _keras_model(prior=tfd.Independent(tfd.Normal(tf.zeros(LATENT + 1), 1.0), 1))
    with pytest.raises(ValueError, match=r"`prior` has event shape \[4\].*\[3\]"):
        model.objective_result(IMAGES[:4], seed=SEED)


def test_a_prior_layer_of_a_batch_of_distributions_is_refused_naming_it():
    """A prior layer called as prior() is one p(z) for all samples: batch [] only."""
    prior = _Returns(lambda _: tfd.Independent(tfd.Normal(tf.zeros([4, LATENT]), 1.0), 1))
    model = _keras_model(prior=prior)
    with pytest.raises(ValueError, match=r"`prior` has batch shape \[4\]; expected \[\]"):
        model.objective_result(IMAGES[:4], seed=SEED)


def test_a_prior_layer_returning_a_tensor_is_refused_naming_it():
    model = _keras_model(prior=_Returns(lambda _: tf.zeros([LATENT])))
    with pytest.raises(TypeError, match=r"`prior`.*must return p\(z\)"):
        model.objective_result(IMAGES[:4], seed=SEED)


class _ListEncoder(keras.layers.Layer):
    """q(z1|x) q(z2|z1) as a JointDistributionSequential with parts named z1, z2."""

    def __init__(self, **kwargs):
        super().__init__(name="list_encoder", **kwargs)
        self.h1 = keras.layers.Dense(2 * LATENT)
        self.h2 = keras.layers.Dense(2 * LATENT)

    def build(self, x_shape):
        self.h1.build(x_shape)
        self.h2.build((None, LATENT))

    def call(self, x, context=None):
        def gaussian(h, name):
            loc, raw = tf.split(h, 2, axis=-1)
            return tfd.Independent(tfd.Normal(loc, tf.nn.softplus(raw) + 0.1), 1, name=name)

        return tfd.JointDistributionSequential(
            [gaussian(self.h1(x), "z1"), lambda z1: gaussian(self.h2(z1), "z2")]
        )


class _GenerativeOrderPrior(keras.layers.Layer):
    """p(z2) p(z1|z2), written in that order (z2 first), with a trainable shift."""

    def __init__(self, **kwargs):
        super().__init__(name="generative_order_prior", **kwargs)
        self.shift = self.add_weight(shape=(LATENT,), initializer="zeros", name="shift")

    def call(self, context=None):
        return tfd.JointDistributionSequential(
            [
                tfd.Independent(tfd.Normal(tf.zeros(LATENT), 1.0), 1, name="z2"),
                lambda z2: tfd.Independent(tfd.Normal(0.5 * z2 + self.shift, 0.8), 1, name="z1"),
            ]
        )


def test_the_keras_model_pairs_a_prior_layer_in_generative_order_by_name_and_trains():
    """z1 and z2 have the same size, so pairing by position would be silent; by name the
    bound is the hand-computed one, and fit trains it (finite loss, the shift moves)."""
    model = _keras_model(
        encoder=_ListEncoder(), decoder=BernoulliDecoder(PIXELS, HIDDEN, latent=0),
        prior=_GenerativeOrderPrior(),
    )  # fmt: skip
    x = tf.constant(IMAGES[:4])
    seed = tf.constant([5, 9], tf.int32)
    bound = model.objective_result(x, seed=seed).bound.numpy()
    q = model.posterior(x)
    z1, z2 = sampling.sample(q, K, seed)
    shift = tf.convert_to_tensor(model.prior.shift)
    log_p = (
        tfd.Independent(tfd.Normal(tf.zeros(LATENT), 1.0), 1).log_prob(z2)
        + tfd.Independent(tfd.Normal(0.5 * z2 + shift, 0.8), 1).log_prob(z1)
        + tf.reshape(
            model.decoder([tf.reshape(z, [K * 4, LATENT]) for z in (z1, z2)]).log_prob(
                tf.tile(x, [K, 1])
            ),
            [K, 4],
        )
    )
    hand = _log_mean_exp((log_p - q.log_prob([z1, z2])).numpy().astype(np.float64))
    np.testing.assert_allclose(bound, hand, rtol=1e-5)
    model.compile(keras.optimizers.Adam(1e-2))
    logs = model.fit(IMAGES, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    assert np.abs(model.prior.shift.numpy()).max() > 0.0


def test_the_keras_model_refuses_a_fixed_joint_prior_whose_names_differ_from_q_s():
    prior = tfd.JointDistributionSequential(
        [
            tfd.Independent(tfd.Normal(tf.zeros(LATENT), 1.0), 1, name="top"),
            lambda top: tfd.Independent(tfd.Normal(top, 1.0), 1, name="z1"),
        ]
    )
    model = _keras_model(
        encoder=_ListEncoder(), decoder=BernoulliDecoder(PIXELS, HIDDEN, latent=0), prior=prior
    )
    with pytest.raises(ValueError, match=r"names differ \(only in q: \['z2'\]"):
        model.objective_result(IMAGES[:4], seed=SEED)


class _ConditionalGenerativeOrderPrior(keras.layers.Layer):
    """p(z2|c) p(z1|z2), z2 first, of a context c [S*B, 2]; or of another batch (`rows`)."""

    def __init__(self, rows=None, **kwargs):
        super().__init__(name="conditional_prior", **kwargs)
        self.rows = rows

    def call(self, context):
        loc = tf.tile(tf.reduce_mean(context, -1, keepdims=True), [1, LATENT])
        if self.rows is not None:
            loc = tf.zeros([self.rows, LATENT])
        return tfd.JointDistributionSequential(
            [
                tfd.Independent(tfd.Normal(loc, 1.0), 1, name="z2"),
                lambda z2: tfd.Independent(tfd.Normal(0.5 * z2, 0.8), 1, name="z1"),
            ]
        )


def test_a_prior_layer_of_the_context_in_generative_order_is_paired_by_name_when_called():
    model = _keras_model(
        encoder=_ListEncoder(), decoder=BernoulliDecoder(PIXELS, HIDDEN, latent=0),
        prior=_ConditionalGenerativeOrderPrior(),
    )  # fmt: skip
    x = tf.constant(IMAGES[:4])
    context = tf.constant(np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(4, 2))
    seed = tf.constant([5, 9], tf.int32)
    bound = model.objective_result({"x": x, "context": context}, seed=seed).bound.numpy()
    q = model.posterior(x, context)
    z1, z2 = sampling.sample(q, K, seed)
    loc = tf.reduce_mean(context, -1, keepdims=True)  # [B, 1], broadcast over the latents
    flat = [tf.reshape(z, [K * 4, LATENT]) for z in (z1, z2)]
    log_p = (
        tfd.Independent(tfd.Normal(loc * tf.ones(LATENT), 1.0), 1).log_prob(z2)
        + tfd.Independent(tfd.Normal(0.5 * z2, 0.8), 1).log_prob(z1)
        + tf.reshape(
            model.decoder(flat, tf.tile(context, [K, 1])).log_prob(tf.tile(x, [K, 1])), [K, 4]
        )
    )
    hand = _log_mean_exp((log_p - q.log_prob([z1, z2])).numpy().astype(np.float64))
    np.testing.assert_allclose(bound, hand, rtol=1e-5)


def test_a_prior_layer_of_the_context_of_another_batch_is_refused_naming_it():
    model = _keras_model(
        encoder=_ListEncoder(), decoder=BernoulliDecoder(PIXELS, HIDDEN, latent=0),
        prior=_ConditionalGenerativeOrderPrior(rows=4),
    )  # fmt: skip
    data = {"x": tf.constant(IMAGES[:4]), "context": tf.zeros([4, 2])}
    with pytest.raises(ValueError, match=r"`prior` returned .*batch shape \[4\]; expected \[16\]"):
        model.objective_result(data, seed=SEED)
