"""Bad input gets a clear ValueError/TypeError naming the argument, before any graph is traced."""

from __future__ import annotations

import functools
import inspect
import math
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests import toy
from tests.conftest import GRAPH_MODES, in_mode, modes, skip_unless_gaussian_q

tfd = tfp.distributions

B, D, K = 4, 3, 5
SEED = 7

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

SINGLE_K = {
    "IWAE": mco.IWAE,
    "STL": mco.STL,
    "DReG": mco.DReG,
    "RWS": mco.RWS,
    "CIWAE": mco.CIWAE,
    "VAE": mco.VAE,
}


def _all_objectives() -> dict:
    """Class name -> constructor: every registered objective (K samples, or 6 in 2 bounds),
    and the variants whose checks differ (DReG(alpha), JVI-DReG, VRIWAE-DReG)."""
    objectives = {}
    for name in mco.objective_names():
        cls = mco.objectives.OBJECTIVES[name]
        kwargs = {"num_outer": 2} if "num_outer" in inspect.signature(cls).parameters else {}
        budget = 6 if kwargs else K
        objectives[cls.__name__] = functools.partial(mco.make_objective, name, budget, **kwargs)
    objectives.update(
        {
            "CIWAE": lambda: mco.CIWAE(K, beta=0.3),
            "DReG-0.5": lambda: mco.DReG(K, alpha=0.5),
            "JVI-DReG": lambda: mco.JVI(K, dreg=True),
            "VRIWAE-DReG": lambda: mco.VRIWAE(K, dreg=True),
        }
    )
    return objectives


ALL_OBJECTIVES = _all_objectives()

# Objectives that differentiate through z and so need a fully reparameterized q.
REPARAMETERIZED = [
    name
    for name, make in ALL_OBJECTIVES.items()
    if make().gradient_path is not mco.GradientPath.SCORE
]


def _data(dtype=tf.float32):
    x = tf.reshape(tf.range(B * D, dtype=dtype), [B, D]) / 10.0
    A = 0.5 * tf.eye(D, dtype=dtype)
    b = tf.fill([D], tf.constant(0.1, dtype))
    mu = tf.zeros([D], dtype)
    return mu, A, b, x


def _valid(dtype=tf.float32):
    """A valid (q, log_joint) pair of the toy Gaussian, batch B, event D."""
    mu, A, b, x = _data(dtype)
    return toy.make_q(A, b, x), toy.make_log_joint(mu, x)


def _all_of(*words):
    """A regex matching a message that contains every one of `words`, in any order."""
    return "(?s)" + "".join(f"(?=.*{re.escape(word)})" for word in words)


class _Spy:
    """A log_joint that records whether it was called."""

    def __init__(self, log_joint):
        self.log_joint = log_joint
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.log_joint(z)


def _poisson_q():
    return tfd.Poisson(rate=tf.fill([B], 2.0))


def _independent_poisson_q():
    return tfd.Independent(tfd.Poisson(rate=tf.fill([B, D], 2.0)), reinterpreted_batch_ndims=1)


def _float_bernoulli_q():
    return tfd.Independent(
        tfd.Bernoulli(logits=tf.zeros([B, D]), dtype=tf.float32), reinterpreted_batch_ndims=1
    )


NON_REPARAMETERIZED_Q = {
    "Poisson": _poisson_q,
    "Independent(Poisson)": _independent_poisson_q,
    "Independent(Bernoulli)": _float_bernoulli_q,
}

# --------------------------------------------------------------------------------------
# num_samples and other counts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE_K)
@pytest.mark.parametrize("k", [0, -1, -5])
def test_num_samples_below_one_is_value_error(name, k):
    """K < 1 raises ValueError naming num_samples."""
    with pytest.raises(ValueError, match="num_samples"):
        SINGLE_K[name](k)


@pytest.mark.parametrize("name", [*SINGLE_K, "JVI"])
@pytest.mark.parametrize("k", [3.0, True, False, "3", None, 2.5])
def test_num_samples_not_int_is_type_error(name, k):
    """A float, bool, string or None K raises TypeError naming num_samples."""
    cls = mco.JVI if name == "JVI" else SINGLE_K[name]
    with pytest.raises(TypeError, match="num_samples"):
        cls(k)


@pytest.mark.parametrize("name", [*SINGLE_K, "JVI"])
@pytest.mark.parametrize("k", [np.int64(4), np.int32(4), np.uint8(4)])
def test_numpy_integer_num_samples_accepted(name, k):
    """Numpy integers are accepted and stored as a Python int."""
    cls = mco.JVI if name == "JVI" else SINGLE_K[name]
    objective = cls(k)
    assert objective.num_samples == 4
    assert type(objective.num_samples) is int


@pytest.mark.parametrize("k", [1, 0, -2])
def test_jvi_needs_two_samples(k):
    """JVI with K < 2 raises ValueError naming num_samples and the minimum."""
    with pytest.raises(ValueError, match=_all_of("num_samples", ">= 2")):
        mco.JVI(k)


def test_jvi_accepts_two_samples():
    """JVI(2) is the smallest valid jackknife."""
    assert mco.JVI(2).num_samples == 2


@pytest.mark.parametrize("dreg", ["yes", 1, 0, None, np.bool_(True)])
def test_jvi_dreg_not_bool_is_type_error(dreg):
    """JVI's dreg must be a Python bool."""
    with pytest.raises(TypeError, match="dreg"):
        mco.JVI(K, dreg=dreg)


@pytest.mark.parametrize("cls", [mco.MIWAE, mco.PIWAE], ids=["MIWAE", "PIWAE"])
@pytest.mark.parametrize("argument", ["num_outer", "num_inner"])
@pytest.mark.parametrize("value", [0, -1])
def test_outer_inner_below_one_is_value_error(cls, argument, value):
    """MIWAE/PIWAE num_outer or num_inner < 1 raises ValueError naming it."""
    kwargs = {"num_outer": 2, "num_inner": 3, argument: value}
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [mco.MIWAE, mco.PIWAE], ids=["MIWAE", "PIWAE"])
@pytest.mark.parametrize("argument", ["num_outer", "num_inner"])
@pytest.mark.parametrize("value", [2.0, True, "2", None])
def test_outer_inner_not_int_is_type_error(cls, argument, value):
    """MIWAE/PIWAE num_outer or num_inner not an int raises TypeError naming it."""
    kwargs = {"num_outer": 2, "num_inner": 3, argument: value}
    with pytest.raises(TypeError, match=argument):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [mco.MIWAE, mco.PIWAE], ids=["MIWAE", "PIWAE"])
def test_outer_inner_numpy_integers_accepted(cls):
    """MIWAE/PIWAE accept numpy integers for num_outer and num_inner."""
    objective = cls(np.int64(2), np.int32(3))
    assert objective.num_samples == 6
    assert type(objective.num_samples) is int


# --------------------------------------------------------------------------------------
# CIWAE beta, DReG alpha
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [-0.1, 1.5, math.nan, math.inf, -math.inf, np.float64(2.0)])
def test_ciwae_beta_outside_unit_interval(beta):
    """CIWAE beta outside [0, 1] (or nan) raises ValueError naming beta."""
    with pytest.raises(ValueError, match="beta"):
        mco.CIWAE(K, beta=beta)


@pytest.mark.parametrize("beta", ["0.5", True, False, None, [0.5], 0.5j])
def test_ciwae_beta_not_a_number(beta):
    """CIWAE beta that is not a real number raises TypeError naming beta."""
    with pytest.raises(TypeError, match="beta"):
        mco.CIWAE(K, beta=beta)


@pytest.mark.parametrize("beta", [0, 0.0, 1, 1.0, 0.25, np.float32(0.5)])
def test_ciwae_fixed_beta_accepts_closed_interval(beta):
    """A fixed beta may be any real number in the closed interval [0, 1]."""
    assert mco.CIWAE(K, beta=beta).beta == pytest.approx(float(beta))


@pytest.mark.parametrize("beta", [0.0, 1.0, 0, 1])
def test_ciwae_learnable_beta_at_endpoint(beta):
    """A learnable beta cannot start at 0 or 1 (its sigmoid never reaches them)."""
    with pytest.raises(ValueError, match="beta"):
        mco.CIWAE(K, beta=beta, learnable_beta=True)


@pytest.mark.parametrize("learnable", ["yes", 1, 0, None, np.bool_(True)])
def test_ciwae_learnable_beta_not_bool(learnable):
    """learnable_beta must be a Python bool."""
    with pytest.raises(TypeError, match="learnable_beta"):
        mco.CIWAE(K, beta=0.5, learnable_beta=learnable)


@pytest.mark.parametrize("beta", [1.0 - 1e-9, 1e-50])
def test_ciwae_learnable_beta_near_endpoint(beta):
    """A learnable beta whose float32 sigmoid would round to 0 or 1 is refused, naming it."""
    with pytest.raises(ValueError, match=_all_of("`beta`", "too close to 0 or 1", "float32")):
        mco.CIWAE(K, beta=beta, learnable_beta=True)


@pytest.mark.parametrize("beta", [1.0 - 1e-6, 1e-30])
def test_ciwae_learnable_beta_close_to_an_endpoint_is_kept_inside(beta):
    """A learnable beta close to, but representably inside, (0, 1) is stored as a finite
    float32 logit whose sigmoid stays strictly inside (0, 1) and near beta."""
    objective = mco.CIWAE(K, beta=beta, learnable_beta=True)
    assert np.isfinite(objective.beta_logit.numpy())
    assert 0.0 < float(objective.beta) < 1.0
    assert float(objective.beta) == pytest.approx(beta, rel=1e-3)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, math.inf])
def test_dreg_alpha_outside_unit_interval(alpha):
    """DReG alpha outside [0, 1] (or nan) raises ValueError naming alpha."""
    with pytest.raises(ValueError, match="alpha"):
        mco.DReG(K, alpha=alpha)


@pytest.mark.parametrize("alpha", ["0.5", True, None])
def test_dreg_alpha_not_a_number(alpha):
    """DReG alpha that is not a real number raises TypeError naming alpha."""
    with pytest.raises(TypeError, match="alpha"):
        mco.DReG(K, alpha=alpha)


@pytest.mark.parametrize("alpha", [0, 1, 0.0, 1.0, 0.5, np.float64(0.3)])
def test_dreg_alpha_accepts_closed_interval(alpha):
    """DReG accepts every alpha in [0, 1], endpoints included, as a float."""
    objective = mco.DReG(K, alpha=alpha)
    assert objective.alpha == pytest.approx(float(alpha))
    assert type(objective.alpha) is float


# --------------------------------------------------------------------------------------
# q
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REPARAMETERIZED)
@pytest.mark.parametrize("make_q", NON_REPARAMETERIZED_Q.values(), ids=NON_REPARAMETERIZED_Q)
def test_non_reparameterized_q_rejected(name, make_q):
    """A q that is not fully reparameterized raises ValueError naming its class and the fix."""
    q = make_q()
    assert q.reparameterization_type != tfd.FULLY_REPARAMETERIZED
    spy = _Spy(lambda z: tf.zeros(tf.shape(z)[:2]))
    with pytest.raises(ValueError, match=_all_of(type(q).__name__, "reparameterized", "RWS")):
        ALL_OBJECTIVES[name]()(q, spy, seed=SEED)
    assert spy.calls == 0


def _rws_case(name, param):
    """(q(param), log prior) for a non-reparameterized family, batch B."""
    if name == "Poisson":
        return tfd.Poisson(rate=param), tfd.Poisson(rate=tf.fill([B], 2.0)).log_prob
    if name == "Independent(Poisson)":
        q = tfd.Independent(tfd.Poisson(rate=param), reinterpreted_batch_ndims=1)
        prior = tfd.Independent(tfd.Poisson(rate=tf.fill([B, D], 2.0)), 1)
        return q, prior.log_prob
    q = tfd.Independent(tfd.Bernoulli(logits=param, dtype=tf.float32), 1)
    prior = tfd.Independent(tfd.Bernoulli(logits=tf.fill([B, D], -0.5), dtype=tf.float32), 1)
    return q, prior.log_prob


@pytest.mark.parametrize("name", NON_REPARAMETERIZED_Q)
def test_rws_accepts_non_reparameterized_q(name):
    """RWS needs only log q: a non-reparameterized q gives a finite loss and q gradient."""
    param = tf.Variable(tf.fill([B] if name == "Poisson" else [B, D], 1.5))
    with tf.GradientTape() as tape:
        q, log_joint = _rws_case(name, param)
        assert q.reparameterization_type != tfd.FULLY_REPARAMETERIZED
        result = mco.RWS(K)(q, log_joint, seed=SEED)
    (grad,) = result.gradients(tape, [], [param]).inference
    assert result.loss.shape == []
    assert np.isfinite(result.loss.numpy())
    assert grad is not None
    assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
@pytest.mark.parametrize(
    "q",
    [tf.zeros([B, D]), np.zeros([B, D], np.float32), None, "q"],
    ids=["tensor", "ndarray", "None", "str"],
)
def test_q_not_a_distribution(name, q):
    """q that is not a Distribution raises TypeError naming `q`."""
    _, log_joint = _valid()
    with pytest.raises(TypeError, match="`q`"):
        ALL_OBJECTIVES[name]()(q, log_joint, seed=SEED)


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
def test_q_batch_shape_b_d_suggests_independent(name):
    """A per-dimension q of batch shape [B, D] raises ValueError suggesting tfd.Independent."""
    q = tfd.Normal(tf.zeros([B, D]), 1.0)
    _, log_joint = _valid()
    with pytest.raises(ValueError, match=_all_of("`q`", "batch shape", "tfd.Independent")):
        ALL_OBJECTIVES[name]()(q, log_joint, seed=SEED)


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
def test_q_scalar_batch_shape(name):
    """A q of batch shape [] (no data axis) raises ValueError naming `q`."""
    q = tfd.MultivariateNormalDiag(tf.zeros([D]), tf.ones([D]))
    with pytest.raises(ValueError, match=_all_of("`q`", "batch shape")):
        ALL_OBJECTIVES[name]()(q, lambda z: tf.zeros(tf.shape(z)[:2]), seed=SEED)


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
def test_q_integer_dtype_is_refused_by_objectives_that_differentiate_through_z(name):
    """A q with an integer event (a default Bernoulli) trains with RWS; the objectives
    that differentiate through z raise a ValueError naming the discrete leaf."""
    q = tfd.Independent(tfd.Bernoulli(logits=tf.zeros([B, D])), reinterpreted_batch_ndims=1)
    objective = ALL_OBJECTIVES[name]()
    log_joint = lambda z: tf.zeros(tf.shape(z)[:2])  # noqa: E731
    if objective.gradient_path is mco.GradientPath.SCORE:
        assert objective(q, log_joint, seed=SEED).loss.shape == []
        return
    with pytest.raises(
        ValueError, match=_all_of(type(objective).__name__, "discrete", "int32", "RWS")
    ):
        objective(q, log_joint, seed=SEED)


# --------------------------------------------------------------------------------------
# log_joint
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
@pytest.mark.parametrize(
    "log_joint", [3.0, None, tf.zeros([K, B])], ids=["float", "None", "tensor"]
)
def test_log_joint_not_callable(name, log_joint):
    """A log_joint that is not callable raises TypeError naming log_joint."""
    q, _ = _valid()
    with pytest.raises(TypeError, match="log_joint"):
        ALL_OBJECTIVES[name]()(q, log_joint, seed=SEED)


def _wrong_shapes():
    """log_joint mistakes: a scalar, [S], [B], [S, 1] and an unsummed [S, B, D]."""
    _, log_joint = _valid()
    return {
        "scalar": lambda z: tf.reduce_sum(log_joint(z)),
        "[S]": lambda z: tf.reduce_sum(log_joint(z), axis=1),
        "[B]": lambda z: log_joint(z)[0],
        "[S,1]": lambda z: tf.reduce_sum(log_joint(z), axis=1, keepdims=True),
        "[S,B,D]": lambda z: tfd.Normal(0.0, 1.0).log_prob(z),
    }


WRONG_SHAPES = list(_wrong_shapes())


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
@pytest.mark.parametrize("shape", WRONG_SHAPES)
def test_log_joint_wrong_shape(name, shape):
    """A log_joint not of shape [S, B] raises ValueError naming log_joint."""
    skip_unless_gaussian_q(ALL_OBJECTIVES[name]())
    q, _ = _valid()
    with pytest.raises(ValueError, match=_all_of("log_joint", "shape")):
        ALL_OBJECTIVES[name]()(q, _wrong_shapes()[shape], seed=SEED)


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
@pytest.mark.parametrize(
    ("q_dtype", "p_dtype"),
    [(tf.float64, tf.float32), (tf.float32, tf.float64)],
    ids=["q64-p32", "q32-p64"],
)
def test_log_joint_wrong_dtype(name, q_dtype, p_dtype):
    """A log_joint in another dtype than q raises TypeError naming log_joint and both dtypes."""
    skip_unless_gaussian_q(ALL_OBJECTIVES[name]())
    q, _ = _valid(q_dtype)

    def log_joint(z):
        return tf.zeros(tf.shape(z)[:2], p_dtype)

    with pytest.raises(TypeError, match=_all_of("log_joint", "float32", "float64")):
        ALL_OBJECTIVES[name]()(q, log_joint, seed=SEED)


@pytest.mark.parametrize("name", ["IWAE", "STL", "RWS"])
@pytest.mark.parametrize("value", [0.0, [0.0] * B, "0"], ids=["float", "list", "str"])
def test_log_joint_returning_non_tensor(name, value):
    """A log_joint returning a non-tensor raises TypeError naming log_joint."""
    q, _ = _valid()
    with pytest.raises(TypeError, match="log_joint"):
        ALL_OBJECTIVES[name]()(q, lambda z: value, seed=SEED)


# --------------------------------------------------------------------------------------
# seed
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
def test_seed_none(name):
    """seed=None raises TypeError naming seed, before log_joint is called."""
    q, log_joint = _valid()
    spy = _Spy(log_joint)
    with pytest.raises(TypeError, match="seed"):
        ALL_OBJECTIVES[name]()(q, spy, seed=None)
    assert spy.calls == 0


@pytest.mark.parametrize("name", ["IWAE", "RWS"])
def test_seed_is_required(name):
    """`seed` has no default: omitting it is Python's missing-argument TypeError (not the
    library's seed=None message), and given by position it is the keyword `seed`."""
    q, log_joint = _valid()
    objective = ALL_OBJECTIVES[name]()
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'seed'"):
        objective(q, log_joint)
    np.testing.assert_array_equal(
        objective(q, log_joint, SEED).log_weights, objective(q, log_joint, seed=SEED).log_weights
    )


# --------------------------------------------------------------------------------------
# log_marginal_estimate
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"num_samples": -3}, ValueError, "num_samples"),
        ({"num_samples": 10.0}, TypeError, "num_samples"),
        ({"num_samples": True}, TypeError, "num_samples"),
        ({"num_samples": 10, "chunk_size": 0}, ValueError, "chunk_size"),
        ({"num_samples": 10, "chunk_size": -1}, ValueError, "chunk_size"),
        ({"num_samples": 10, "chunk_size": 2.0}, TypeError, "chunk_size"),
        ({"num_samples": 10, "seed": None}, TypeError, "seed"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_log_marginal_estimate_bad_arguments(kwargs, error, argument):
    """log_marginal_estimate rejects bad counts and a missing seed, naming the argument."""
    q, log_joint = _valid()
    kwargs = {"seed": SEED, **kwargs}
    spy = _Spy(log_joint)
    with pytest.raises(error, match=argument):
        mco.log_marginal_estimate(q, spy, **kwargs)
    assert spy.calls == 0


@pytest.mark.parametrize("q", [tf.zeros([B, D]), None], ids=["tensor", "None"])
def test_log_marginal_estimate_q_not_a_distribution(q):
    """log_marginal_estimate rejects a q that is not a Distribution."""
    _, log_joint = _valid()
    with pytest.raises(TypeError, match="`q`"):
        mco.log_marginal_estimate(q, log_joint, seed=SEED, num_samples=10)


@pytest.mark.parametrize(
    ("chunk_size", "num_samples"),
    [
        ("10", 10),
        (None, 10),
        (3.5, 2),
    ],
)
def test_log_marginal_estimate_chunk_size_not_int(chunk_size, num_samples):
    """A non-int chunk_size raises TypeError naming chunk_size, whatever num_samples."""
    q, log_joint = _valid()
    with pytest.raises(TypeError, match="chunk_size"):
        mco.log_marginal_estimate(
            q, log_joint, seed=SEED, num_samples=num_samples, chunk_size=chunk_size
        )


def test_log_marginal_estimate_log_joint_not_callable():
    """log_marginal_estimate rejects a log_joint that is not callable, naming it."""
    q, _ = _valid()
    with pytest.raises(TypeError, match="log_joint"):
        mco.log_marginal_estimate(q, 3.0, seed=SEED, num_samples=10)


@pytest.mark.parametrize("shape", ["scalar", "[S]"])
def test_log_marginal_estimate_log_joint_wrong_shape(shape):
    """log_marginal_estimate rejects a log_joint of shape other than [S, B], naming it."""
    q, _ = _valid()
    with pytest.raises(ValueError, match="log_joint"):
        mco.log_marginal_estimate(q, _wrong_shapes()[shape], seed=SEED, num_samples=10)


def test_log_marginal_estimate_valid_call():
    """The valid call the error tests perturb works and gives a finite [B] estimate."""
    q, log_joint = _valid()
    estimate = mco.log_marginal_estimate(q, log_joint, seed=SEED, num_samples=10, chunk_size=4)
    assert estimate.shape == [B]
    assert np.all(np.isfinite(estimate.numpy()))


# --------------------------------------------------------------------------------------
# make_log_joint
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prior", [tf.zeros([D]), None, "normal", tfd.Normal], ids=["tensor", "None", "str", "class"]
)
def test_make_log_joint_prior_not_a_distribution(prior):
    """make_log_joint rejects a prior that is not a Distribution instance, naming prior."""
    with pytest.raises(TypeError, match="prior"):
        mco.make_log_joint(prior, lambda z: tfd.MultivariateNormalDiag(z), tf.zeros([B, D]))


@pytest.mark.parametrize(
    "likelihood",
    [tfd.MultivariateNormalDiag(tf.zeros([D])), tf.zeros([D]), None],
    ids=["distribution", "tensor", "None"],
)
def test_make_log_joint_likelihood_not_callable(likelihood):
    """make_log_joint rejects a likelihood that is not callable, naming likelihood."""
    prior = tfd.MultivariateNormalDiag(tf.zeros([D]))
    with pytest.raises(TypeError, match="likelihood"):
        mco.make_log_joint(prior, likelihood, tf.zeros([B, D]))


# --------------------------------------------------------------------------------------
# Errors are Python errors, raised before any graph is traced
# --------------------------------------------------------------------------------------

BAD_CONSTRUCTIONS = {
    "IWAE(0)": (lambda: mco.IWAE(0), ValueError, "num_samples"),
    "STL(3.0)": (lambda: mco.STL(3.0), TypeError, "num_samples"),
    "JVI(1)": (lambda: mco.JVI(1), ValueError, "num_samples"),
    "JVI(dreg)": (lambda: mco.JVI(K, dreg="yes"), TypeError, "dreg"),
    "MIWAE(0,3)": (lambda: mco.MIWAE(0, 3), ValueError, "num_outer"),
    "PIWAE(2,0)": (lambda: mco.PIWAE(2, 0), ValueError, "num_inner"),
    "CIWAE(beta)": (lambda: mco.CIWAE(K, beta=1.5), ValueError, "beta"),
    "CIWAE(learnable)": (lambda: mco.CIWAE(K, 1.0, learnable_beta=True), ValueError, "beta"),
    "DReG(alpha)": (lambda: mco.DReG(K, alpha="x"), TypeError, "alpha"),
    "VAE(True)": (lambda: mco.VAE(True), TypeError, "num_samples"),
}


@pytest.mark.parametrize("case", BAD_CONSTRUCTIONS)
def test_construction_error_creates_no_op(case):
    """A bad construction raises without adding a single op to the default graph."""
    build, error, argument = BAD_CONSTRUCTIONS[case]
    graph = tf.Graph()
    with graph.as_default(), pytest.raises(error, match=argument):
        build()
    assert graph.get_operations() == []


@pytest.mark.parametrize("case", BAD_CONSTRUCTIONS)
@modes(*GRAPH_MODES, reason="eagerly: test_construction_error_creates_no_op")
def test_construction_error_inside_tf_function(case, mode):
    """A bad construction inside a tf.function raises the same Python error at trace time."""
    build, error, argument = BAD_CONSTRUCTIONS[case]
    with pytest.raises(error, match=argument):
        in_mode(build, mode)()


def _bad_calls():
    """Call-time mistakes: (objective, q factory, log_joint, seed, error, regex)."""
    q, log_joint = _valid()
    q64, _ = _valid(tf.float64)
    return {
        "non-reparameterized q": (
            mco.DReG(K),
            _independent_poisson_q,
            log_joint,
            SEED,
            ValueError,
            "Poisson",
        ),
        "q tensor": (mco.IWAE(K), lambda: tf.zeros([B, D]), log_joint, SEED, TypeError, "`q`"),
        "q batch [B, D]": (
            mco.STL(K),
            lambda: tfd.Normal(tf.zeros([B, D]), 1.0),
            log_joint,
            SEED,
            ValueError,
            "tfd.Independent",
        ),
        "log_joint not callable": (mco.RWS(K), lambda: q, 1.0, SEED, TypeError, "log_joint"),
        "log_joint scalar": (
            mco.JVI(K),
            lambda: q,
            _wrong_shapes()["scalar"],
            SEED,
            ValueError,
            "log_joint",
        ),
        "log_joint [S,B,D]": (
            mco.JVI(K, dreg=True),
            lambda: q,
            _wrong_shapes()["[S,B,D]"],
            SEED,
            ValueError,
            "log_joint",
        ),
        "log_joint dtype": (
            mco.PIWAE(2, 2),
            lambda: q64,
            lambda z: tf.zeros(tf.shape(z)[:2]),
            SEED,
            TypeError,
            _all_of("log_joint", "float32", "float64"),
        ),
        "seed None": (mco.MIWAE(2, 2), lambda: q, log_joint, None, TypeError, "seed"),
    }


BAD_CALLS = list(_bad_calls())


@pytest.mark.parametrize("case", BAD_CALLS)
def test_call_error_same_in_every_mode(case, mode):
    """A bad call raises the same Python error eagerly and while a tf.function is traced."""
    objective, make_q, log_joint, seed, error, pattern = _bad_calls()[case]

    def step():
        return objective(make_q(), log_joint, seed=seed).loss

    with pytest.raises(error, match=pattern):
        in_mode(step, mode)()


@pytest.mark.parametrize(
    "case", ["non-reparameterized q", "q tensor", "q batch [B, D]", "seed None"]
)
def test_argument_errors_precede_log_joint(case, mode):
    """Errors in q or seed are raised before log_joint is traced (it is never called)."""
    objective, make_q, log_joint, seed, error, pattern = _bad_calls()[case]
    spy = _Spy(log_joint)

    def step():
        return objective(make_q(), spy, seed=seed).loss

    with pytest.raises(error, match=pattern):
        in_mode(step, mode)()
    assert spy.calls == 0


def test_call_error_is_not_a_tf_runtime_error():
    """A wrong log_joint shape is a Python ValueError, not a TF InvalidArgumentError."""
    q, _ = _valid()
    with pytest.raises(ValueError, match="log_joint") as info:
        mco.IWAE(K)(q, _wrong_shapes()["[S]"], seed=SEED)
    assert not isinstance(info.value, tf.errors.OpError)


# --------------------------------------------------------------------------------------
# Structured q (a JointDistribution): each mistake names the leaf, before log_joint runs
# --------------------------------------------------------------------------------------


def _normal_leaf(shape, dtype=tf.float32, name=None):
    """A diagonal Gaussian leaf of batch shape shape[:1] and event shape shape[1:]."""
    return tfd.Independent(
        tfd.Normal(tf.zeros(shape, dtype), tf.ones(shape, dtype)), len(shape) - 1, name=name
    )


def _bernoulli_leaf(dtype, name):
    return tfd.Independent(tfd.Bernoulli(logits=tf.zeros([B, D]), dtype=dtype), 1, name=name)


def _bernoulli_coroutine():
    def model():
        z = yield tfd.Normal(tf.zeros([B, D]), 1.0, name="z")
        yield tfd.Bernoulli(logits=z, name="switch")

    return tfd.JointDistributionCoroutineAutoBatched(model, batch_ndims=1)


# name -> (q factory, leaf named in the message, what the message says of it)
STRUCTURED_NOT_REPARAMETERIZED = {
    "named-int-bernoulli": (
        lambda: tfd.JointDistributionNamed(
            {"z": _normal_leaf([B, D]), "switch": _bernoulli_leaf(tf.int32, "switch")}
        ),
        "switch",
        "discrete (int32)",
    ),
    "sequential-float-bernoulli": (
        lambda: tfd.JointDistributionSequential(
            [_normal_leaf([B, D], name="z"), _bernoulli_leaf(tf.float32, "switch")]
        ),
        "switch",
        "not fully reparameterized",
    ),
    "named-poisson": (
        lambda: tfd.JointDistributionNamed(
            {"z": _normal_leaf([B, D]), "count": tfd.Poisson(rate=tf.fill([B], 2.0))}
        ),
        "count",
        "not fully reparameterized",
    ),
    "coroutine-autobatched-bernoulli": (_bernoulli_coroutine, "switch", "discrete (int32)"),
}


def _structured_log_joint(z):
    """A valid log p(x, z) of any structured z: -1/2 sum of squares over every leaf."""
    total = 0.0
    for leaf in tf.nest.flatten(z):
        leaf = tf.cast(leaf, tf.float32)
        total += -0.5 * tf.reduce_sum(leaf**2, axis=list(range(2, leaf.shape.rank)))
    return total


@pytest.mark.parametrize("name", ["DReG", "IWAE", "STL", "JVI-DReG"])
@pytest.mark.parametrize("case", STRUCTURED_NOT_REPARAMETERIZED)
def test_structured_q_with_a_non_reparameterized_or_discrete_leaf_names_the_leaf(name, case):
    """DReG, IWAE, ... refuse it with a ValueError naming the objective, the leaf, what is
    wrong with it and RWS/VIMCO, before log_joint is called."""
    make_q, leaf, kind = STRUCTURED_NOT_REPARAMETERIZED[case]
    spy = _Spy(_structured_log_joint)
    objective = ALL_OBJECTIVES[name]()
    with pytest.raises(
        ValueError, match=_all_of(type(objective).__name__, f"'{leaf}'", kind, "RWS", "VIMCO")
    ):
        objective(make_q(), spy, seed=SEED)
    assert spy.calls == 0


@pytest.mark.parametrize("objective", [mco.RWS(K), mco.VIMCO(K)], ids=["RWS", "VIMCO"])
@pytest.mark.parametrize("case", STRUCTURED_NOT_REPARAMETERIZED)
def test_structured_q_with_a_discrete_leaf_is_accepted_by_score_function_objectives(
    objective, case
):
    """RWS and VIMCO need only log q: for the same q's their log weights are those of the
    draws of sampling.sample, and their loss is minus the batch mean of the IWAE bound."""
    make_q, _, _ = STRUCTURED_NOT_REPARAMETERIZED[case]
    q = make_q()
    result = objective(q, _structured_log_joint, seed=SEED)
    z = mco.sampling.sample(q, K, SEED)
    log_w = (_structured_log_joint(z) - q.log_prob(z)).numpy().astype(np.float64)
    np.testing.assert_allclose(result.log_weights, log_w, rtol=1e-6, atol=1e-5)
    bound = np.logaddexp.reduce(log_w, axis=0) - np.log(K)
    np.testing.assert_allclose(result.loss, -bound.mean(), rtol=1e-5)


def _structured_q():
    return tfd.JointDistributionNamed(
        {"z1": _normal_leaf([B, D], name="z1"), "z2": lambda z1: _normal_leaf_at(z1)}
    )


def _normal_leaf_at(loc):
    return tfd.Independent(tfd.Normal(loc, 1.0), 1, name="z2")


STRUCTURED_WRONG_SHAPES = {
    "[S,B,D] (one leaf unsummed)": lambda z: tfd.Normal(0.0, 1.0).log_prob(z["z1"]),
    "[S]": lambda z: tf.reduce_sum(_structured_log_joint(z), axis=1),
    "[B]": lambda z: _structured_log_joint(z)[0],
    "scalar": lambda z: tf.reduce_sum(_structured_log_joint(z)),
}


@pytest.mark.parametrize("name", ["IWAE", "DReG", "VIMCO", "JVI"])
@pytest.mark.parametrize("shape", STRUCTURED_WRONG_SHAPES)
def test_structured_q_log_joint_of_the_wrong_shape(name, shape):
    """A log_joint of a structured z that is not [S, B] raises ValueError naming log_joint
    and the expected shape."""
    objective = mco.VIMCO(K) if name == "VIMCO" else ALL_OBJECTIVES[name]()
    with pytest.raises(ValueError, match=_all_of("log_joint", "shape", f"({K}, {B})")):
        objective(_structured_q(), STRUCTURED_WRONG_SHAPES[shape], seed=SEED)


# name -> (q factory, error, words of the message)
STRUCTURED_BAD_Q = {
    "float32 + float64 leaves": (
        lambda: tfd.JointDistributionNamed(
            {"z1": _normal_leaf([B, D], tf.float32), "z2": _normal_leaf([B, D], tf.float64)}
        ),
        TypeError,
        ("'z1': float32", "'z2': float64", "dtype"),
    ),
    "batch [3] vs [4]": (
        lambda: tfd.JointDistributionNamed(
            {"z1": _normal_leaf([3, D]), "z2": _normal_leaf([4, D])}
        ),
        ValueError,
        ("'z1': (3,)", "'z2': (4,)", "batch"),
    ),
    "leaf of batch rank 2 (named)": (
        lambda: tfd.JointDistributionNamed(
            {"z1": _normal_leaf([B, D]), "z2": tfd.Normal(tf.zeros([B, D]), 1.0)}
        ),
        ValueError,
        (f"'z2': ({B}, {D})", "batch shape [B]", "tfd.Independent"),
    ),
    "leaf of batch rank 2 (sequential)": (
        lambda: tfd.JointDistributionSequential(
            [_normal_leaf([B, D], name="z1"), tfd.Normal(tf.zeros([B, D]), 1.0, name="z2")]
        ),
        ValueError,
        (f"'z2': ({B}, {D})", "batch shape [B]", "tfd.Independent"),
    ),
}


@pytest.mark.parametrize("name", ["IWAE", "DReG", "RWS", "VIMCO"])
@pytest.mark.parametrize("case", STRUCTURED_BAD_Q)
def test_structured_q_bad_leaves_are_refused_before_log_joint_runs(name, case, mode):
    """Mixed float dtypes, disagreeing batch sizes and a leaf of batch rank 2 raise a Python
    error naming the leaves, eagerly and while tracing, before log_joint is called."""
    make_q, error, words = STRUCTURED_BAD_Q[case]
    objective = mco.VIMCO(K) if name == "VIMCO" else ALL_OBJECTIVES[name]()
    spy = _Spy(_structured_log_joint)

    def step():
        return objective(make_q(), spy, seed=SEED).loss

    with pytest.raises(error, match=_all_of(*words)) as info:
        in_mode(step, mode)()
    assert not isinstance(info.value, tf.errors.OpError)
    assert spy.calls == 0


def test_log_marginal_estimate_refuses_a_bad_structured_q():
    """log_marginal_estimate runs the same checks on a structured q."""
    make_q, error, words = STRUCTURED_BAD_Q["batch [3] vs [4]"]
    spy = _Spy(_structured_log_joint)
    with pytest.raises(error, match=_all_of(*words)):
        mco.log_marginal_estimate(make_q(), spy, seed=SEED, num_samples=10)
    assert spy.calls == 0


def test_structured_q_per_example_seeds_of_the_wrong_batch_size():
    """Per-example seeds [B + 1, 2] for a joint q of batch [B] raise ValueError naming both."""
    seeds = tf.zeros([B + 1, 2], tf.int32)
    with pytest.raises(ValueError, match=_all_of("Per-example seeds", "[B, 2]", f"{B + 1}")):
        mco.IWAE(K)(_structured_q(), _structured_log_joint, seed=seeds)


def test_structured_q_per_example_seeds_need_recognised_parts():
    """Per-example seeds on a joint q with a part sampled by TFP (a Gamma) name that part."""
    q = tfd.JointDistributionNamed(
        {
            "z1": _normal_leaf([B, D], name="z1"),
            "rate": tfd.Independent(tfd.Gamma(tf.ones([B, D]), 1.0), 1, name="rate"),
        }
    )
    seeds = tf.zeros([B, 2], tf.int32)
    with pytest.raises(ValueError, match=_all_of("Per-example seeds", "'rate'", "Independent")):
        mco.IWAE(K)(q, _structured_log_joint, seed=seeds)


@pytest.mark.parametrize("name", ["RWS", "vimco"])
def test_joint_q_whose_parts_score_in_different_dtypes_raises_naming_each_leaf(name):
    """A float32-logit Bernoulli leaf beside a float64 Normal leaf: a TypeError listing both."""
    q = tfd.JointDistributionNamed(
        {
            "b": tfd.Independent(tfd.Bernoulli(logits=tf.zeros([B, 4])), 1),
            "n": tfd.Independent(
                tfd.Normal(tf.zeros([B, 2], tf.float64), tf.constant(1.0, tf.float64)), 1
            ),
        }
    )
    objective = mco.make_objective(name.lower(), K)
    with pytest.raises(TypeError, match=_all_of("'b': float32", "'n': float64", "one float")):
        objective(q, lambda z: tf.zeros([K, B], tf.float64), seed=SEED)
    with pytest.raises(TypeError, match="'b': float32"):
        mco.log_marginal_estimate(q, lambda z: tf.zeros([K, B], tf.float64), SEED, K, K)


@pytest.mark.parametrize(
    "seed", [[1, 2, 99], np.zeros([3, 2, 1], np.int32), [1.0, 2.0]], ids=["[3]", "[3,2,1]", "float"]
)
def test_seed_of_a_wrong_shape_or_dtype_raises_naming_seed(seed):
    """A [3] seed is not truncated to its first two numbers, nor a float seed rounded."""
    mu, A, b, x = _data()
    with pytest.raises((ValueError, TypeError), match="`seed`"):
        mco.IWAE(K)(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=seed)


def test_integer_scalar_and_int64_seeds_mean_what_an_int_and_an_int32_seed_mean():
    """np.int64(3) and tf.constant(3) are the int 3; an int64 [2] seed of int32 values is
    that int32 seed, and one outside the int32 range is not truncated to its low bits."""
    mu, A, b, x = _data()

    def loss(seed):
        return mco.IWAE(K)(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=seed).loss

    assert float(loss(np.int64(3))) == float(loss(tf.constant(3))) == float(loss(3))
    pair = tf.constant([-(2**31), 2**31 - 1], tf.int64)
    assert float(loss(pair)) == float(loss(tf.cast(pair, tf.int32)))
    wide = tf.constant([2**33 + 5, -(2**40) + 7], tf.int64)
    assert float(loss(wide)) != float(loss(tf.cast(wide, tf.int32)))
    assert float(loss(wide)) == float(loss([2**33 + 5, -(2**40) + 7]))


def test_a_transformed_joint_q_is_refused_with_the_fix():
    """A bijector around a whole JointDistribution: put it inside each part instead."""
    tfb = tfp.bijectors
    joint = tfd.JointDistributionSequential(
        [tfd.Independent(tfd.Normal(tf.zeros([B, D]), 1.0), 1)] * 2
    )
    q = tfd.TransformedDistribution(joint, tfb.JointMap([tfb.Identity(), tfb.Softplus()]))
    with pytest.raises(ValueError, match="inside its part"):
        mco.IWAE(K)(q, lambda z: tf.zeros([K, B]), seed=SEED)
