"""The extension contract of `mco.MCObjective` and the registry.

Subclasses that break the contract fail loudly at their first call, before anything is
drawn or traced; `num_samples` is validated by the base class; every registered
objective has a constructor-like `repr` and a `get_config` that rebuilds it; objectives
written from the guide "Adding an objective" (docs/guides/adding-an-objective.md) alone
work; `make_objective` names what is wrong.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from mcobjectives.weights import log_mean_exp, normalized_weights
from tests import toy
from tests.conftest import GRAPH_MODES, in_mode, modes, skip_unless_gaussian_q

B, D, K = 3, 2, 4
SEED = (5, 6)


def _data(dtype=tf.float64):
    rng = np.random.default_rng(0)
    mu = rng.normal(size=D)
    x = mu + np.sqrt(2.0) * rng.normal(size=(B, D))
    A = 0.5 * np.eye(D) + 0.2 * rng.normal(size=(D, D))
    b = mu / 2 + 0.2 * rng.normal(size=D)
    return tuple(tf.constant(t, dtype) for t in (mu, A, b, x))


def _call(objective, seed=SEED, log_joint=None):
    mu, A, b, x = _data()
    return objective(toy.make_q(A, b, x), log_joint or toy.make_log_joint(mu, x), seed=seed)


def _loss_and_grads(objective, seed=SEED):
    mu, A, b, x = _data()
    result, d_mu, d_A, d_b = toy.loss_and_grads(objective, mu, A, b, x, seed)
    return [t.numpy() for t in (result.loss, d_mu, d_A, d_b)]


class _Recorder:
    """A log_joint that records its calls."""

    def __init__(self):
        mu, _, _, x = _data()
        self.calls = 0
        self._log_joint = toy.make_log_joint(mu, x)

    def __call__(self, z):
        self.calls += 1
        return self._log_joint(z)


def _iwae_like(gradient_path, coefficients):
    """An objective with IWAE's value and the given `_coefficients(log_weights)`."""

    class Custom(mco.MCObjective):
        def __init__(self, num_samples: int, name: str | None = None):
            super().__init__(num_samples, name=name)

        def _value(self, log_weights):
            return log_mean_exp(log_weights)

        def _coefficients(self, log_weights):
            return coefficients(log_weights)

    if gradient_path is not None:
        Custom.gradient_path = gradient_path
    return Custom


# --------------------------------------------------------------------------------------
# gradient_path and the coefficients that fit it
# --------------------------------------------------------------------------------------


def test_a_subclass_that_forgets_gradient_path_raises_type_error_at_its_first_call():
    """Construction works; the first call raises TypeError naming `gradient_path`, before
    log_joint is called (nothing is drawn or traced)."""
    Forgetful = _iwae_like(None, lambda lw: mco.Coefficients.total(normalized_weights(lw)))
    objective = Forgetful(K)
    log_joint = _Recorder()
    with pytest.raises(TypeError, match=r"gradient_path.*GradientPath\.TOTAL, SPLIT or SCORE"):
        _call(objective, log_joint=log_joint)
    assert log_joint.calls == 0


@modes(*GRAPH_MODES, reason="eagerly: the test above")
def test_a_forgotten_gradient_path_raises_before_tracing_in_a_tf_function(mode):
    """Inside tf.function the same TypeError comes from the first trace, before log_joint."""
    Forgetful = _iwae_like(None, lambda lw: mco.Coefficients.total(normalized_weights(lw)))
    objective = Forgetful(K)
    log_joint = _Recorder()
    _, A, b, x = _data()

    def loss(seed):
        return objective(toy.make_q(A, b, x), log_joint, seed=seed).loss

    with pytest.raises(TypeError, match="gradient_path"):
        in_mode(loss, mode)(tf.constant(SEED))
    assert log_joint.calls == 0


def test_a_gradient_path_that_is_not_a_gradient_path_member_raises_type_error():
    """A string such as "total" (the old private spelling) is refused too."""
    Stringly = _iwae_like(None, lambda lw: mco.Coefficients.total(normalized_weights(lw)))
    Stringly.gradient_path = "total"
    with pytest.raises(TypeError, match=r"gradient_path.*'total'"):
        _call(Stringly(K))


@pytest.mark.parametrize(
    "coefficients",
    [
        lambda w: mco.Coefficients(model=w, path=w, score=-w),
        lambda w: mco.Coefficients(model=w, path=None, score=None),
        lambda w: mco.Coefficients(model=w, path=w, score=None),
        lambda w: mco.Coefficients.total(w)._replace(model=2 * w),
        lambda w: mco.Coefficients.total(w)._replace(score=None),
    ],
    ids=[
        "spelled-out-total",
        "model-only",
        "model-and-path",
        "total-with-model-replaced",
        "total-with-score-replaced",
    ],
)
def test_a_total_objective_returning_coefficients_not_made_by_total_raises_value_error(
    coefficients,
):
    """TOTAL differentiates sum_k c_k log w_k in full: only `Coefficients.total(c)` fits."""
    Wrong = _iwae_like(mco.GradientPath.TOTAL, lambda lw: coefficients(normalized_weights(lw)))
    with pytest.raises(ValueError, match=r"GradientPath\.TOTAL.*Coefficients\.total\(c\)"):
        _call(Wrong(K))


@pytest.mark.parametrize(
    "coefficients",
    [
        lambda w: mco.Coefficients(model=w, path=w, score=w),
        lambda w: mco.Coefficients(model=w, path=w, score=None),
        lambda w: mco.Coefficients.total(w),
    ],
    ids=["path-and-score", "path-only", "total"],
)
def test_a_score_objective_returning_a_path_coefficient_raises_value_error(coefficients):
    """The SCORE path never differentiates through z: a path coefficient is refused."""
    Wrong = _iwae_like(mco.GradientPath.SCORE, lambda lw: coefficients(normalized_weights(lw)))
    with pytest.raises(ValueError, match=r"GradientPath\.SCORE.*path coefficient"):
        _call(Wrong(K))


@pytest.mark.parametrize("gradient_path", list(mco.GradientPath), ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("coefficient", "what"),
    [
        (lambda w: w[:-1], r"\(3, 3\)"),  # one sample short: [S - 1, B]
        (lambda w: tf.concat([w, w], axis=0), r"\(8, 3\)"),  # [2 S, B]
        (lambda w: tf.reduce_sum(w, axis=0), r"\(3,\)"),  # [B]
        (lambda w: w[..., None], r"\(4, 3, 1\)"),  # [S, B, 1]
        (lambda w: tf.cast(w, tf.float32), "float32"),
        (lambda w: tf.cast(w, tf.float16), "float16"),
    ],
    ids=["short", "long", "per-point", "extra-axis", "float32", "float16"],
)
def test_coefficients_of_the_wrong_shape_or_dtype_raise_value_error(
    gradient_path, coefficient, what
):
    """Coefficients must be [S, B] in the log weights' dtype (float64 here)."""

    def coefficients(log_weights):
        c = coefficient(normalized_weights(log_weights))
        if gradient_path is mco.GradientPath.TOTAL:
            return mco.Coefficients.total(c)
        return mco.Coefficients(model=c, path=None, score=c)

    Wrong = _iwae_like(gradient_path, coefficients)
    with pytest.raises(ValueError, match=rf"`model` coefficient of .*{what}.*expected float64"):
        _call(Wrong(K))


def test_a_wrong_shape_score_coefficient_is_named():
    """The message names the offending field."""
    Wrong = _iwae_like(
        mco.GradientPath.SCORE,
        lambda lw: mco.Coefficients(model=normalized_weights(lw), path=None, score=lw[:1]),
    )
    with pytest.raises(ValueError, match="`score` coefficient"):
        _call(Wrong(K))


def test_coefficients_that_are_not_a_coefficients_tuple_raise_type_error():
    """A plain tuple is refused: `_coefficients` must return `mco.Coefficients`."""
    Wrong = _iwae_like(mco.GradientPath.SPLIT, lambda lw: (normalized_weights(lw), None, None))
    with pytest.raises(TypeError, match=r"must return mcobjectives\.Coefficients, got tuple"):
        _call(Wrong(K))


def test_a_missing_model_coefficient_raises_value_error():
    Wrong = _iwae_like(
        mco.GradientPath.SPLIT,
        lambda lw: mco.Coefficients(model=None, path=normalized_weights(lw), score=None),
    )
    with pytest.raises(ValueError, match="no model coefficient"):
        _call(Wrong(K))


@pytest.mark.parametrize("name", mco.objective_names())
def test_every_registered_objective_declares_a_gradient_path(name):
    """Each registered objective (and its bool variants) declares a `mco.GradientPath`."""
    for objective in _variants(name):
        assert isinstance(objective.gradient_path, mco.GradientPath), repr(objective)


# --------------------------------------------------------------------------------------
# num_samples
# --------------------------------------------------------------------------------------


def _takes(name: str, argument: str) -> bool:
    return argument in inspect.signature(mco.objectives.OBJECTIVES[name].__init__).parameters


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError), ("4", TypeError)],
    ids=["zero", "negative", "float", "bool", "str"],
)
@pytest.mark.parametrize("name", mco.objective_names())
def test_an_invalid_num_samples_raises_naming_num_samples(name, value, error):
    """Through `make_objective` and, for classes taking it, the constructor itself."""
    kwargs = {"num_outer": 1} if _takes(name, "num_outer") else {}
    with pytest.raises(error, match="`num_samples`"):
        mco.make_objective(name, value, **kwargs)
    if _takes(name, "num_samples"):
        with pytest.raises(error, match="`num_samples`"):
            mco.objectives.OBJECTIVES[name](value)


def _with_a_minimum() -> list[str]:
    return [n for n in mco.objective_names() if mco.objectives.OBJECTIVES[n].min_num_samples > 1]


def test_jvi_is_among_the_objectives_with_a_minimum_above_one():
    assert mco.JVI.min_num_samples == 2
    assert "jvi" in _with_a_minimum()


@pytest.mark.parametrize("name", _with_a_minimum())
def test_num_samples_below_min_num_samples_raises_value_error(name):
    """E.g. JVI(1): its leave-one-out terms need a second sample."""
    cls = mco.objectives.OBJECTIVES[name]
    minimum = cls.min_num_samples
    with pytest.raises(ValueError, match=rf"`num_samples` must be an int >= {minimum}, got"):
        cls(minimum - 1)
    with pytest.raises(ValueError, match="`num_samples`"):
        mco.make_objective(name, minimum - 1)
    assert cls(minimum).num_samples == minimum


def test_jvi_dreg_below_its_minimum_raises_too():
    with pytest.raises(ValueError, match=r"`num_samples` must be an int >= 2, got 1"):
        mco.JVI(1, dreg=True)


def test_a_subclass_min_num_samples_is_enforced_by_the_base_class():
    Triple = _iwae_like(
        mco.GradientPath.TOTAL, lambda lw: mco.Coefficients.total(normalized_weights(lw))
    )
    Triple.min_num_samples = 3
    with pytest.raises(ValueError, match=r"`num_samples` must be an int >= 3, got 2"):
        Triple(2)
    assert Triple(3).num_samples == 3


def test_numpy_integers_are_accepted_as_python_ints():
    objective = mco.IWAE(np.int64(4))
    assert objective.num_samples == 4 and type(objective.num_samples) is int


# --------------------------------------------------------------------------------------
# repr and get_config of every registered objective
# --------------------------------------------------------------------------------------

# Arguments other than the defaults, for the registered objectives that take them (the
# bool arguments are covered for every objective by `_variants`).
REPRESENTATIVE = {
    "ciwae": [{"beta": 0.3}],
    "dreg": [{"alpha": 0.3}, {"alpha": 1.0}],
    "vriwae": [{"alpha": 0.25}],
}


def _variants(name: str) -> list[mco.MCObjective]:
    """`name` built by make_objective with K samples (6 in 2 bounds where it takes
    `num_outer`): its defaults, each bool argument defaulting to False set to True, the
    REPRESENTATIVE arguments, and a given `name`."""
    grouped = {"num_outer": 2} if _takes(name, "num_outer") else {}
    budget = 6 if grouped else K
    parameters = inspect.signature(mco.objectives.OBJECTIVES[name].__init__).parameters
    settings = [{}]
    settings += [{a: True} for a, p in parameters.items() if p.default is False]
    settings += [s for s in REPRESENTATIVE.get(name, []) if set(s) <= set(parameters)]
    objectives = [mco.make_objective(name, budget, **grouped, **s) for s in settings]
    # make_objective's own first parameter is `name`: the objective's name is given here.
    default = objectives[0]
    return [*objectives, type(default)(**default.get_config(), name=f"my_{name}")]


def _ids(name: str) -> list[str]:
    return [repr(o) for o in _variants(name)]


ALL_VARIANTS = [(name, i) for name in mco.objective_names() for i in range(len(_variants(name)))]


@pytest.fixture(params=ALL_VARIANTS, ids=lambda p: _ids(p[0])[p[1]])
def objective(request):
    name, i = request.param
    return _variants(name)[i]


def test_repr_reads_like_the_constructor(objective):
    """`repr(o)` is ClassName(arg=value, ...) with the constructor's arguments, and
    evaluating it rebuilds an objective with the same repr."""
    cls = type(objective)
    config = objective.get_config()
    arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
    assert repr(objective) == f"{cls.__name__}({arguments})"
    assert set(config) <= set(inspect.signature(cls.__init__).parameters)
    rebuilt = eval(repr(objective), {cls.__name__: cls})
    assert type(rebuilt) is cls
    assert repr(rebuilt) == repr(objective)


def test_get_config_rebuilds_the_same_objective(objective):
    """`type(o)(**o.get_config())` and `from_config` have the same repr, num_samples and
    gradient path."""
    for rebuilt in (
        type(objective)(**objective.get_config()),
        type(objective).from_config(objective.get_config()),
    ):
        assert type(rebuilt) is type(objective)
        assert repr(rebuilt) == repr(objective)
        assert rebuilt.get_config() == objective.get_config()
        assert rebuilt.num_samples == objective.num_samples
        assert rebuilt.gradient_path is objective.gradient_path


def test_get_config_rebuilds_an_objective_with_the_same_loss_on_the_same_seed(objective):
    """Same loss and gradients (toy Gaussian, float64, same seed) as the original."""
    skip_unless_gaussian_q(objective)
    rebuilt = type(objective)(**objective.get_config())
    for got, want in zip(_loss_and_grads(rebuilt), _loss_and_grads(objective), strict=True):
        np.testing.assert_array_equal(got, want)


def test_get_config_is_plain_python(objective):
    """The config holds plain Python values (JSON-like), never tensors or variables."""
    for value in objective.get_config().values():
        assert isinstance(value, (bool, int, float, str)), (repr(objective), value)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: mco.make_objective("piwae", 64, num_outer=8), "PIWAE(num_outer=8, num_inner=8)"),
        (lambda: mco.make_objective("iwae", 64), "IWAE(num_samples=64)"),
        (lambda: mco.make_objective("dreg", 64, alpha=1.0), "DReG(num_samples=64, alpha=1.0)"),
        (lambda: mco.make_objective("jvi", 8, dreg=True), "JVI(num_samples=8, dreg=True)"),
        (lambda: mco.make_objective("vae", 3), "VAE(num_samples=3)"),
        (lambda: mco.VAE(), "VAE(num_samples=1)"),
        (lambda: mco.IWAE(4, name="enc"), "IWAE(num_samples=4, name='enc')"),
        (
            lambda: mco.make_objective("ciwae", 5, beta=0.3),
            "CIWAE(num_samples=5, beta=0.3, learnable_beta=False)",
        ),
    ],
)
def test_repr_examples(build, expected):
    assert repr(build()) == expected


def _trained_ciwae():
    """A learnable CIWAE(beta=0.3) after one descent step on beta_logit, and its beta."""
    ciwae = mco.make_objective("ciwae", K, beta=0.3, learnable_beta=True)
    mu, A, b, x = _data(tf.float32)
    with tf.GradientTape() as tape:
        result = ciwae(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=SEED)
    (grad,) = tape.gradient(result.loss, ciwae.trainable_variables)
    ciwae.beta_logit.assign_sub(2.0 * grad)
    trained = float(ciwae.beta)
    print(f"beta 0.3 -> {trained}")
    assert trained < 0.3 - 1e-3  # d loss / d beta >= 0: a descent step lowers beta
    return ciwae, trained


def test_learnable_ciwae_get_config_gives_the_constructor_beta_while_training_runs():
    """get_config (and repr) are the constructor's arguments: beta stays the given 0.3
    after beta_logit was trained; the trained value is the variable's."""
    ciwae, trained = _trained_ciwae()
    config = ciwae.get_config()
    assert config == {"num_samples": K, "beta": 0.3, "learnable_beta": True}
    assert repr(ciwae) == f"CIWAE(num_samples={K}, beta=0.3, learnable_beta=True)"
    assert float(ciwae.beta) == pytest.approx(trained, rel=1e-12)
    rebuilt = mco.CIWAE(**config)
    assert float(rebuilt.beta) == pytest.approx(0.3, rel=1e-6)  # a fresh start
    rebuilt.beta_logit.assign(ciwae.beta_logit)  # what loading the weights does
    assert float(rebuilt.beta) == trained


def test_a_saved_keras_model_restores_the_trained_beta_through_its_weights(tmp_path):
    """A model with a learnable CIWAE, trained, saved and loaded: the loaded objective's
    config holds the constructor's beta, its beta_logit (a weight) the trained value."""
    import keras

    from mcobjectives import networks

    keras.utils.set_random_seed(0)
    x = (np.random.default_rng(0).random([6, 10]) < 0.5).astype(np.float32)
    model = mco.ImportanceWeightedAutoencoder(
        networks.GaussianEncoder(3, (8,)),
        networks.BernoulliDecoder(10, (8,)),
        tfp_normal_prior(3),
        mco.CIWAE(2, beta=0.5, learnable_beta=True),
        seed=1,
    )
    model.compile(keras.optimizers.Adam(0.1))
    model.fit(x, batch_size=6, epochs=3, verbose=0)
    trained = float(model.objective.beta_logit)
    assert trained != pytest.approx(0.0, abs=1e-3)  # logit(0.5) = 0 moved
    path = tmp_path / "ciwae.keras"
    model.save(path)
    loaded = mco.load_model(path)
    assert loaded.objective.get_config()["beta"] == 0.5
    assert float(loaded.objective.beta_logit) == trained


def tfp_normal_prior(latent):
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    return tfd.Independent(tfd.Normal(tf.zeros(latent), tf.ones(latent)), 1)


@pytest.mark.parametrize(("dreg", "path"), [(False, "TOTAL"), (True, "SPLIT")])
@pytest.mark.parametrize("name", ["jvi", "vriwae"])
def test_an_objective_whose_path_depends_on_dreg_reads_it_from_a_read_only_property(
    name, dreg, path
):
    """JVI's and VRIWAE's gradient_path is a property of the objective, not an attribute
    set per instance: it follows `dreg` and cannot be assigned."""
    objective = mco.make_objective(name, K, dreg=dreg)
    assert objective.gradient_path is mco.GradientPath[path]
    assert "gradient_path" not in vars(objective)
    with pytest.raises(AttributeError):
        objective.gradient_path = mco.GradientPath.SCORE


def test_a_subclass_that_does_not_store_an_argument_cannot_describe_itself():
    """get_config (and so repr) name the constructor argument that is not stored."""

    class Forgetful(mco.MCObjective):
        gradient_path = mco.GradientPath.TOTAL

        def __init__(self, num_samples: int, temperature: float = 1.0, name=None):
            super().__init__(num_samples, name=name)
            self._t = temperature

        def _value(self, log_weights):
            return log_mean_exp(log_weights)

        def _coefficients(self, log_weights):
            return mco.Coefficients.total(normalized_weights(log_weights))

    with pytest.raises(NotImplementedError, match="`temperature`"):
        Forgetful(3).get_config()


# --------------------------------------------------------------------------------------
# Objectives written from the guide docs/guides/adding-an-objective.md alone
# --------------------------------------------------------------------------------------


class HalfIWAE(mco.MCObjective):
    """Half the IWAE bound: a TOTAL objective with a constructor argument."""

    gradient_path = mco.GradientPath.TOTAL

    def __init__(self, num_samples: int, scale: float = 0.5, name: str | None = None):
        super().__init__(num_samples, name=name)
        self.scale = scale

    def _value(self, log_weights):
        return self.scale * log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        return mco.Coefficients.total(self.scale * normalized_weights(log_weights))


class ReinforceIWAE(mco.MCObjective):
    """IWAE's bound with the plain score-function (REINFORCE) gradient for q.

    d E_q[L_K] / d phi = E[sum_k (L_K - w~_k) d log q(z_k|x) / d phi] with z_k fixed, so
    score_k = L_K - w~_k, model_k = w~_k, path = None.
    """

    gradient_path = mco.GradientPath.SCORE
    min_num_samples = 1

    def __init__(self, num_samples: int, name: str | None = None):
        super().__init__(num_samples, name=name)

    def _value(self, log_weights):
        return log_mean_exp(log_weights)

    def _coefficients(self, log_weights):
        normalized = normalized_weights(log_weights)
        return mco.Coefficients(
            model=normalized, path=None, score=log_mean_exp(log_weights) - normalized
        )


def test_a_half_iwae_total_objective_is_exactly_half_of_iwae():
    """Loss and every gradient are half of IWAE's on the same seed."""
    half = _loss_and_grads(HalfIWAE(K))
    iwae = _loss_and_grads(mco.IWAE(K))
    for got, want in zip(half, iwae, strict=True):
        np.testing.assert_allclose(got, 0.5 * want, rtol=1e-12, atol=1e-15)
    assert repr(HalfIWAE(K, scale=0.25)) == "HalfIWAE(num_samples=4, scale=0.25)"
    assert repr(HalfIWAE(**HalfIWAE(K, scale=0.25).get_config())) == repr(HalfIWAE(K, 0.25))


def test_a_user_objective_registered_with_one_line_is_made_by_make_objective(monkeypatch):
    """One line in `mco.objectives.OBJECTIVES` and make_objective builds it."""
    monkeypatch.setitem(mco.objectives.OBJECTIVES, "halfiwae", HalfIWAE)
    assert mco.objective_names()[-1] == "halfiwae"
    objective = mco.make_objective("halfiwae", K, scale=0.25)
    assert repr(objective) == "HalfIWAE(num_samples=4, scale=0.25)"
    np.testing.assert_allclose(
        _loss_and_grads(objective)[0], 0.25 * _loss_and_grads(mco.IWAE(K))[0], rtol=1e-12
    )
    with pytest.raises(TypeError, match="'alpha'"):
        mco.make_objective("halfiwae", K, alpha=0.5)


def test_a_reinforce_score_objective_gives_the_hand_derived_gradient():
    """On replayed draws: d loss / d b = -(1/B) sum_b sum_k (L_K - w~_k) (z_k - loc) /
    sigma^2, the score of q at fixed z; the model gradient is IWAE's."""
    mu, A, b, x = _data()
    loss, d_mu, d_A, d_b = _loss_and_grads(ReinforceIWAE(K))
    _, iwae_mu, _, _ = _loss_and_grads(mco.IWAE(K))
    np.testing.assert_allclose(d_mu, iwae_mu, rtol=1e-12)

    q = toy.make_q(A, b, x)
    z = mco.sampling.sample(q, K, SEED).numpy()  # [K, B, D]
    log_w = (toy.make_log_joint(mu, x)(z) - q.log_prob(z)).numpy()
    lme = np.logaddexp.reduce(log_w, axis=0) - math.log(K)
    w = np.exp(log_w - np.logaddexp.reduce(log_w, axis=0))
    loc = (x.numpy() @ A.numpy().T) + b.numpy()
    score_b = (z - loc) / toy.SIGMA**2  # d log q(z_k|x) / d b at fixed z
    want_b = -np.mean(np.sum((lme - w)[..., None] * score_b, axis=0), axis=0)
    want_A = -np.mean(np.einsum("kb,kbi,bj->bij", lme - w, score_b, x.numpy()), axis=0)
    np.testing.assert_allclose(d_b, want_b, rtol=1e-10)
    np.testing.assert_allclose(d_A, want_A, rtol=1e-10)
    assert loss == pytest.approx(-np.mean(lme), rel=1e-12)


def test_a_reinforce_score_objective_is_unbiased_for_the_iwae_gradient():
    """Probabilistic: over R = 4000 replicates of one data point, the mean per-example b
    gradient of REINFORCE-IWAE matches IWAE's reparameterized one (paired on the same
    draws) within 4.5 standard errors per coordinate."""
    replicates = 4000
    rng = np.random.default_rng(1)
    mu = rng.normal(size=D)
    x = np.tile(mu + np.sqrt(2.0) * rng.normal(size=D), (replicates, 1))
    A = np.tile(0.5 * np.eye(D) + 0.3 * rng.normal(size=(D, D)), (replicates, 1, 1))
    b = np.tile(mu / 2 + 0.3 * rng.normal(size=D), (replicates, 1))

    def per_example_b(objective):
        _, _, _, d_b = toy.loss_and_grads(objective, mu, A, b, tf.constant(x), (7, 8))
        return -replicates * d_b.numpy()  # ascent direction of each replicate

    reinforce = per_example_b(ReinforceIWAE(K))
    iwae = per_example_b(mco.IWAE(K))
    difference = reinforce - iwae
    t = difference.mean(axis=0) / (difference.std(axis=0, ddof=1) / math.sqrt(replicates))
    print(f"mean REINFORCE {reinforce.mean(axis=0)}, IWAE {iwae.mean(axis=0)}, paired t {t}")
    assert np.all(np.abs(t) < 4.5)
    # ... and REINFORCE is the noisier estimator of the two.
    assert np.all(reinforce.var(axis=0) > iwae.var(axis=0))


def test_a_reinforce_score_objective_takes_a_q_that_is_not_reparameterized():
    """The SCORE path needs only log q: a discrete q works."""
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    logits = tf.Variable(tf.zeros([B, D], tf.float64))
    x = tf.constant(np.random.default_rng(2).normal(size=(B, D)))

    def log_joint(z):
        prior = tfd.Independent(tfd.Bernoulli(logits=tf.zeros(D, tf.float64)), 1)
        likelihood = tfd.Independent(tfd.Normal(tf.cast(z, tf.float64), 1.0), 1)
        return prior.log_prob(z) + likelihood.log_prob(x)

    with tf.GradientTape() as tape:
        q = tfd.Independent(tfd.Bernoulli(logits=logits), 1)
        result = ReinforceIWAE(K)(q, log_joint, seed=SEED)
    grad = tape.gradient(result.loss, logits)
    assert grad is not None and np.all(np.isfinite(grad.numpy()))
    assert np.any(grad.numpy() != 0)


# --------------------------------------------------------------------------------------
# make_objective errors
# --------------------------------------------------------------------------------------


def test_make_objective_with_an_unknown_name_lists_every_registered_name():
    with pytest.raises(ValueError, match="Unknown objective 'iwea'") as info:
        mco.make_objective("iwea", K)
    for name in mco.objective_names():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["IWAE", "dreg_rws", "", None, 3])
def test_make_objective_refuses_other_spellings(name):
    """One spelling per objective, the lower-case class name; variants are arguments."""
    with pytest.raises(ValueError, match="Unknown objective"):
        mco.make_objective(name, K)


@pytest.mark.parametrize("name", [n for n in mco.objective_names() if _takes(n, "num_outer")])
def test_make_objective_without_num_outer_raises_naming_it(name):
    with pytest.raises(TypeError, match="needs `num_outer`"):
        mco.make_objective(name, 64)


@pytest.mark.parametrize("name", [n for n in mco.objective_names() if _takes(n, "num_outer")])
def test_make_objective_with_a_budget_not_divisible_by_num_outer_raises(name):
    with pytest.raises(ValueError, match=r"`num_samples` \(64\) must be a multiple of `num_outer`"):
        mco.make_objective(name, 64, num_outer=7)
    objective = mco.make_objective(name, 64, num_outer=8)
    assert (objective.num_outer, objective.num_inner, objective.num_samples) == (8, 8, 64)


@pytest.mark.parametrize("name", [n for n in mco.objective_names() if _takes(n, "num_outer")])
def test_make_objective_refuses_num_inner(name):
    with pytest.raises(TypeError, match="give `num_outer` only"):
        mco.make_objective(name, 64, num_outer=8, num_inner=8)


@pytest.mark.parametrize("num_outer", [0, 2.0, True])
def test_make_objective_with_an_invalid_num_outer_names_it(num_outer):
    with pytest.raises((TypeError, ValueError), match="`num_outer`"):
        mco.make_objective("piwae", 64, num_outer=num_outer)


@pytest.mark.parametrize("name", mco.objective_names())
def test_make_objective_with_an_unknown_argument_names_it(name):
    """The message names the argument and lists those the objective accepts."""
    kwargs = {"num_outer": 2} if _takes(name, "num_outer") else {}
    with pytest.raises(TypeError, match=r"takes no argument 'bogus'; it accepts num_samples"):
        mco.make_objective(name, 4, bogus=1, **kwargs)


def test_make_objective_names_a_misplaced_variant_argument():
    """alpha belongs to DReG, not IWAE."""
    with pytest.raises(TypeError, match=r"IWAE takes no argument 'alpha'"):
        mco.make_objective("iwae", 4, alpha=1.0)


def test_make_objective_passes_the_objectives_name_argument_on():
    """`name` is a constructor argument of every objective, like any other keyword."""
    objective = mco.make_objective("iwae", 4, name="encoder_iwae")
    assert objective.name == "encoder_iwae"
    assert repr(objective) == "IWAE(num_samples=4, name='encoder_iwae')"


@pytest.mark.parametrize("name", mco.objective_names())
def test_make_objective_builds_every_registered_objective(name):
    """Each name gives an instance of its registered class with S = num_samples."""
    kwargs = {"num_outer": 2} if _takes(name, "num_outer") else {}
    objective = mco.make_objective(name, 6, **kwargs)
    assert type(objective) is mco.objectives.OBJECTIVES[name]
    assert objective.num_samples == 6


# --------------------------------------------------------------------------------------
# What `_value` and `_coefficients` return, when the batch size is only known at run time
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [lambda lw: tf.reduce_logsumexp(lw), lambda lw: lw, lambda lw: tf.cast(lw[0], tf.float32)],
    ids=["scalar", "per-sample", "float32"],
)
def test_a_value_that_is_not_one_per_data_point_raises(value):
    """`_value` forgetting axis=0, or keeping the sample axis, would give a wrong loss."""

    class WrongValue(mco.IWAE):
        def _value(self, log_weights):
            return value(log_weights)

    with pytest.raises(ValueError, match=r"WrongValue\._value returned"):
        _call(WrongValue(K))


def _dynamic_batch_loss(objective):
    """The objective's loss in a tf.function whose batch size is unknown when traced (a
    dynamic batch exists only in a traced graph; XLA would compile the run-time check of
    the coefficients' shape away)."""
    mu, A, b, x = _data()

    def loss(x):
        return objective(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=SEED).loss

    return in_mode(loss, "function", input_signature=[tf.TensorSpec([None, D], tf.float64)])(x)


def test_a_coefficient_of_batch_size_one_is_refused_when_the_batch_size_is_dynamic():
    """An [S, 1] coefficient would broadcast point 1's weights over the batch: refused."""
    Broadcast = _iwae_like(
        mco.GradientPath.SPLIT,
        lambda lw: mco.Coefficients(
            model=normalized_weights(lw), path=normalized_weights(lw)[:, :1], score=None
        ),
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="`path` does not have the shape"):
        _dynamic_batch_loss(Broadcast(K))
    # The same objective with well-shaped coefficients runs and matches the static batch.
    np.testing.assert_allclose(
        _dynamic_batch_loss(mco.DReG(K)).numpy(), _call(mco.DReG(K)).loss.numpy(), rtol=1e-12
    )


def test_repr_of_an_objective_that_keeps_an_argument_privately_falls_back_to_num_samples():
    """repr never raises; get_config still says which argument it cannot read."""

    class Tempered(mco.IWAE):
        def __init__(self, num_samples: int, temperature: float = 1.0):
            super().__init__(num_samples)
            self._temperature = temperature

    objective = Tempered(3, temperature=2.0)
    assert repr(objective) == "Tempered(num_samples=3)"
    with pytest.raises(NotImplementedError, match="temperature"):
        objective.get_config()
