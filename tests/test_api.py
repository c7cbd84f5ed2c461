"""The public API: names, class hierarchy, the ObjectiveResult contract and learnable CIWAE."""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from tests import toy
from tests.conftest import in_mode, modes, skip_unless_gaussian_q

B, D, K = 4, 3, 5
SEED = 11

# The class of every registered objective (`mco.objectives.OBJECTIVES`), by name.
OBJECTIVE_CLASSES = sorted({cls.__name__ for cls in mco.objectives.OBJECTIVES.values()})


def _parameters(name: str) -> dict:
    return dict(inspect.signature(mco.objectives.OBJECTIVES[name].__init__).parameters)


def _registered_objectives() -> dict:
    """id -> constructor: every registered objective (`mco.objective_names()`) built by
    `mco.make_objective` with K samples (6 in 2 bounds for those taking `num_outer`), its
    variant with each bool argument that defaults to False set to True (CIWAE's
    learnable beta, JVI-DReG, ...), and explicit variants of the numeric arguments."""
    objectives = {}
    for name in mco.objective_names():
        kwargs = {"num_outer": 2} if "num_outer" in _parameters(name) else {}
        budget = 6 if kwargs else K
        objectives[name] = lambda name=name, kwargs=kwargs, budget=budget: mco.make_objective(
            name, budget, **kwargs
        )
        for arg, parameter in _parameters(name).items():
            if parameter.default is False:
                objectives[f"{name}({arg})"] = (
                    lambda name=name, kwargs=kwargs, budget=budget, arg=arg: mco.make_objective(
                        name, budget, **kwargs, **{arg: True}
                    )
                )
    objectives.update(
        {
            "dreg(alpha=0.5)": lambda: mco.make_objective("dreg", K, alpha=0.5),
            "dreg(alpha=1)": lambda: mco.make_objective("dreg", K, alpha=1.0),
            "ciwae(beta=0.3)": lambda: mco.make_objective("ciwae", K, beta=0.3),
            "ciwae(beta=0.3, learnable)": lambda: mco.make_objective(
                "ciwae", K, beta=0.3, learnable_beta=True
            ),
            "VAE()": lambda: mco.VAE(),
        }
    )
    return objectives


OBJECTIVES = _registered_objectives()


def _data():
    x = tf.reshape(tf.range(B * D, dtype=tf.float32), [B, D]) / 4.0 - 1.0
    mu = tf.constant([0.2, -0.1, 0.4])
    A = 0.4 * tf.eye(D) + 0.05
    b = tf.constant([0.3, 0.0, -0.2])
    return mu, A, b, x


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def test_all_has_no_duplicates():
    """`__all__` lists every name once."""
    assert len(mco.__all__) == len(set(mco.__all__))


@pytest.mark.parametrize("name", mco.__all__)
def test_all_name_exists(name):
    """Every name in `__all__` is an attribute of the package."""
    assert hasattr(mco, name)


@pytest.mark.parametrize("name", mco.__all__)
def test_all_name_importable(name):
    """Every name in `__all__` can be imported with `from mcobjectives import X`."""
    namespace: dict = {}
    exec(f"from mcobjectives import {name}", namespace)
    assert namespace[name] is getattr(mco, name)


def test_star_import_gives_all():
    """`from mcobjectives import *` binds exactly the names of `__all__`."""
    namespace: dict = {}
    exec("from mcobjectives import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(mco.__all__)


@pytest.mark.parametrize(
    "name", ["diagnostics", "keras", "limits", "networks", "objectives", "sampling", "weights"]
)
def test_submodules_exported(name):
    """`diagnostics`, `keras`, `limits`, `networks`, `objectives`, `sampling` and `weights` are
    exported as modules."""
    assert isinstance(getattr(mco, name), types.ModuleType)


@pytest.mark.parametrize(
    "name",
    [
        "active_units",
        "load_model",
        "log_marginal_estimate",
        "make_log_joint",
        "make_objective",
        "make_train_step",
        "objective_names",
    ],
)
def test_functions_exported(name):
    """The exported helpers are plain functions."""
    assert inspect.isfunction(getattr(mco, name))


@pytest.mark.parametrize(
    "name",
    ["effective_sample_size", "leave_one_out_logsumexp", "log_mean_exp", "normalized_weights"],
)
def test_weight_functions_have_one_spelling_under_weights(name):
    """The weight functions are `mco.weights.X` alone: no second alias at the top level."""
    assert inspect.isfunction(getattr(mco.weights, name))
    assert not hasattr(mco, name)


def test_keras_model_exported():
    """The Keras model is a keras.Model subclass; the network layers are Keras layers."""
    import keras

    assert issubclass(mco.ImportanceWeightedAutoencoder, keras.Model)
    for name in mco.networks.__all__:
        assert issubclass(getattr(mco.networks, name), keras.layers.Layer)


def test_version():
    """The package has a version string."""
    assert isinstance(mco.__version__, str)
    assert mco.__version__


# --------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------


def test_objective_classes_all_exported():
    """Every registered objective class is listed in `__all__` and is the exported class."""
    assert set(OBJECTIVE_CLASSES) <= set(mco.__all__)
    for cls in mco.objectives.OBJECTIVES.values():
        assert getattr(mco, cls.__name__) is cls


def test_every_exported_objective_is_registered():
    """Every concrete MCObjective subclass in `__all__` is registered (VAE: as "vae")."""
    exported = {
        name
        for name in mco.__all__
        if inspect.isclass(getattr(mco, name))
        and issubclass(getattr(mco, name), mco.MCObjective)
        and not inspect.isabstract(getattr(mco, name))
    }
    assert exported == set(OBJECTIVE_CLASSES)


def test_registered_names_are_lower_case_class_names():
    """`mco.objective_names()` spells each objective as its lower-case class name, once."""
    names = mco.objective_names()
    assert len(names) == len(set(names))
    assert names == tuple(mco.objectives.OBJECTIVES)
    for name in names:
        assert name == mco.objectives.OBJECTIVES[name].__name__.lower()


@pytest.mark.parametrize("name", OBJECTIVE_CLASSES)
def test_objective_is_mcobjective(name):
    """Every objective class is a subclass of MCObjective (and so a tf.Module)."""
    cls = getattr(mco, name)
    assert inspect.isclass(cls)
    assert issubclass(cls, mco.MCObjective)
    assert issubclass(cls, tf.Module)
    assert not inspect.isabstract(cls)


def test_vae_is_miwae():
    """VAE is MIWAE with one inner sample."""
    vae = mco.VAE(4)
    assert isinstance(vae, mco.MIWAE)
    assert (vae.num_outer, vae.num_inner) == (4, 1)


def test_mcobjective_is_abstract():
    """MCObjective cannot be instantiated: _value and _coefficients are abstract."""
    assert inspect.isabstract(mco.MCObjective)
    with pytest.raises(TypeError, match="abstract"):
        mco.MCObjective(3)


def test_mcobjective_subclass_missing_method_is_abstract():
    """A subclass that implements only _value is still abstract."""

    class Partial(mco.MCObjective):
        def _value(self, log_weights):
            return tf.reduce_mean(log_weights, axis=0)

    with pytest.raises(TypeError, match="_coefficients"):
        Partial(3)


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (mco.ObjectiveResult, ("loss", "bound", "log_weights", "ess")),
        (mco.Gradients, ("model", "inference")),
        (mco.Coefficients, ("model", "path", "score")),
    ],
    ids=["ObjectiveResult", "Gradients", "Coefficients"],
)
def test_namedtuple_fields(cls, fields):
    """The result types are NamedTuples with the documented fields."""
    assert issubclass(cls, tuple)
    assert cls._fields == fields


# --------------------------------------------------------------------------------------
# num_samples
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: mco.MIWAE(2, 3), 6),
        (lambda: mco.PIWAE(2, 3), 6),
        (lambda: mco.PIWAE(1, 4), 4),
        (lambda: mco.VAE(4), 4),
        (lambda: mco.VAE(), 1),
        (lambda: mco.IWAE(7), 7),
        (lambda: mco.JVI(2), 2),
        (lambda: mco.CIWAE(3), 3),
    ],
    ids=["MIWAE(2,3)", "PIWAE(2,3)", "PIWAE(1,4)", "VAE(4)", "VAE()", "IWAE(7)", "JVI(2)", "CIWAE"],
)
def test_num_samples(build, expected):
    """`num_samples` is S, the samples drawn per data point (M * K for MIWAE/PIWAE)."""
    objective = build()
    assert objective.num_samples == expected
    assert type(objective.num_samples) is int


def test_num_samples_read_only():
    """`num_samples` is a read-only property."""
    objective = mco.IWAE(K)
    with pytest.raises(AttributeError):
        objective.num_samples = 3
    assert objective.num_samples == K


# --------------------------------------------------------------------------------------
# ObjectiveResult
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OBJECTIVES)
def test_result_type_and_fields(name):
    """Calling an objective returns an ObjectiveResult of four fields, one loss for both
    networks (no aliases of it)."""
    skip_unless_gaussian_q(OBJECTIVES[name]())
    mu, A, b, x = _data()
    result = OBJECTIVES[name]()(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=SEED)
    assert type(result) is mco.ObjectiveResult
    assert result._fields == ("loss", "bound", "log_weights", "ess")
    assert not hasattr(result, "model_loss")
    assert not hasattr(result, "inference_loss")


@pytest.mark.parametrize("name", OBJECTIVES)
@modes(
    "eager",
    "function",
    reason="shapes are fixed when tf.function traces, and XLA compiles that same trace; "
    "test_exact_gradients.py checks every objective's numbers under XLA",
)
def test_result_shapes(name, mode):
    """loss is a scalar, bound [B], log_weights [S, B] and ess [B] with 1 <= ess <= S."""
    objective = OBJECTIVES[name]()
    skip_unless_gaussian_q(objective)
    num_samples = objective.num_samples
    mu, A, b, x = _data()

    def call():
        return tuple(objective(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=SEED))

    loss, bound, log_weights, ess = (t.numpy() for t in in_mode(call, mode)())
    assert loss.shape == ()
    assert bound.shape == (B,)
    assert log_weights.shape == (num_samples, B)
    assert ess.shape == (B,)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(bound))
    assert np.all(ess >= 1.0 - 1e-5)
    assert np.all(ess <= num_samples * (1.0 + 1e-5))
    assert loss == pytest.approx(-np.mean(bound), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_result_gradients_aligned(name):
    """`result.gradients` returns Gradients(model, inference) aligned with the variable
    lists: each entry is d loss / d that variable, whichever list it is in and in what order."""
    skip_unless_gaussian_q(OBJECTIVES[name]())
    mu0, A0, b0, x = _data()
    mu, A, b = tf.Variable(mu0), tf.Variable(A0), tf.Variable(b0)
    with tf.GradientTape(persistent=True) as tape:
        result = OBJECTIVES[name]()(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=SEED)
    expected = dict(zip(("mu", "A", "b"), tape.gradient(result.loss, [mu, A, b]), strict=True))
    grads = result.gradients(tape, [mu], [A, b])
    assert isinstance(grads, mco.Gradients)
    assert len(grads.model) == 1 and len(grads.inference) == 2
    reordered = result.gradients(tape, [], [b, mu, A])
    assert reordered.model == []
    got = {
        "mu": [grads.model[0], reordered.inference[1]],
        "A": [grads.inference[0], reordered.inference[2]],
        "b": [grads.inference[1], reordered.inference[0]],
    }
    for var, grads_of_var in got.items():
        # mu and b have the same shape: only the values tell a misaligned list.
        assert np.any(expected[var].numpy() != 0), var
        for grad in grads_of_var:
            np.testing.assert_allclose(grad, expected[var], rtol=1e-6, atol=1e-7, err_msg=var)


# --------------------------------------------------------------------------------------
# Learnable CIWAE
# --------------------------------------------------------------------------------------


def test_fixed_beta_has_no_variables():
    """A fixed-beta CIWAE (like every other objective) owns no trainable variables."""
    assert mco.CIWAE(K, beta=0.3).trainable_variables == ()
    assert mco.CIWAE(K, beta=0.3).beta == 0.3
    assert mco.IWAE(K).trainable_variables == ()


def test_learnable_beta_variable_exposed():
    """A learnable CIWAE exposes beta_logit in trainable_variables, with beta = sigmoid."""
    ciwae = mco.CIWAE(K, beta=0.3, learnable_beta=True)
    (variable,) = ciwae.trainable_variables
    assert variable is ciwae.beta_logit
    assert variable.trainable
    assert float(ciwae.beta) == pytest.approx(0.3, rel=1e-6)


@pytest.mark.parametrize("seed", [SEED, 12, 13])
def test_learnable_beta_gradient_pushes_beta_to_zero(seed, mode):
    """d loss / d beta_logit is positive and equals -(ELBO - IWAE) * beta * (1 - beta)."""
    ciwae = mco.CIWAE(K, beta=0.5, learnable_beta=True)
    mu0, A0, b0, x = _data()
    mu, A, b = tf.Variable(mu0), tf.Variable(A0), tf.Variable(b0)

    def step():
        with tf.GradientTape() as tape:
            result = ciwae(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=seed)
        grads = result.gradients(tape, [mu, ciwae.beta_logit], [A, b])
        return result.log_weights, [*grads.model, *grads.inference]

    log_weights, grads = in_mode(step, mode)()
    assert all(grad is not None for grad in grads)
    d_logit = float(grads[1])
    assert d_logit > 0.0

    log_w = log_weights.numpy().astype(np.float64)
    elbo = log_w.mean(axis=0)
    iwae = np.logaddexp.reduce(log_w, axis=0) - np.log(K)
    assert np.all(elbo <= iwae)
    beta = 0.5
    expected = -np.mean(elbo - iwae) * beta * (1.0 - beta)
    assert d_logit == pytest.approx(expected, rel=1e-4)


def test_learnable_beta_descent_step_lowers_beta():
    """One gradient-descent step on the loss moves a learnable beta toward 0."""
    ciwae = mco.CIWAE(K, beta=0.6, learnable_beta=True)
    mu, A, b, x = _data()
    before = float(ciwae.beta)
    with tf.GradientTape() as tape:
        result = ciwae(toy.make_q(A, b, x), toy.make_log_joint(mu, x), seed=SEED)
    (grad,) = tape.gradient(result.loss, ciwae.trainable_variables)
    ciwae.beta_logit.assign_sub(0.5 * grad)
    assert float(ciwae.beta) < before
