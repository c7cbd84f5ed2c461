"""The NaN policy: NaN and +inf propagate as NaN by default; `validate_args=True` names them.

log p(x, z) = -inf is a zero importance weight (tests/test_edge_zero_weights.py). A NaN,
or a +inf (log p = +inf, or log q = -inf at q's own sample), has no meaning as a weight:
by default it makes the log weight, that data point's bound and the loss NaN, a step
the Keras model skips. With `validate_args=True` an objective (or
`log_marginal_estimate`) raises `tf.errors.InvalidArgumentError` naming the piece that
produced it (q(z|x) or `log_joint`) and the data points, eagerly and in a tf.function.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests.conftest import EAGER_AND_FUNCTION, in_mode, modes

tfd = tfp.distributions

B = 4
REASON = "XLA compiles assertions away (documented): the checks run eagerly and in tf.function"


def _points(message: str) -> list[int]:
    """The batch indices an assertion's message lists after its text (eager: on the next
    line; in a graph: the next bracketed field)."""
    found = re.search(r"batch indices\).*?(?:\n|\] \[)\[?([\d ]+)\]?", message, re.S)
    assert found, message
    return [int(v) for v in found.group(1).split()]


def _q(loc=None, scale=1.0):
    loc = tf.zeros([B, 2], tf.float64) if loc is None else tf.constant(loc, tf.float64)
    return tfd.Independent(tfd.Normal(loc, tf.constant(scale, tf.float64)), 1)


def _log_joint(bad_point=None, bad_value=math.nan, sample=0):
    """A standard normal model; log p = `bad_value` at (sample, bad_point)."""

    def log_joint(z):
        lp = tfd.Independent(tfd.Normal(tf.zeros_like(z), 1.0), 1).log_prob(z)
        if bad_point is None:
            return lp
        hit = np.zeros(lp.shape, bool)
        hit[sample, bad_point] = True
        return tf.where(tf.constant(hit), tf.constant(bad_value, lp.dtype), lp)

    return log_joint


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "plus-inf"])
@pytest.mark.parametrize("name", ["iwae", "dreg", "vimco", "jvi", "vae"])
def test_by_default_nan_and_plus_inf_from_log_joint_propagate_as_nan(name, bad):
    """log p = NaN or +inf at one sample of data point 2: its log weight and bound are
    NaN, the loss is NaN; the other data points' bounds are unchanged."""
    objective = mco.make_objective(name, 4)
    clean = objective(_q(), _log_joint(), seed=1)
    result = objective(_q(), _log_joint(2, bad), seed=1)
    assert np.isnan(result.log_weights.numpy()[0, 2])
    assert np.isnan(result.bound.numpy()[2]) and np.isnan(result.loss.numpy())
    np.testing.assert_array_equal(result.bound.numpy()[[0, 1, 3]], clean.bound.numpy()[[0, 1, 3]])


def test_by_default_a_nan_parameter_of_q_propagates_as_nan():
    loc = np.zeros([B, 2])
    loc[1, 0] = np.nan
    result = mco.IWAE(4)(_q(loc), _log_joint(), seed=1)
    assert np.isnan(result.bound.numpy()[1]) and np.isnan(result.loss.numpy())
    assert np.isfinite(result.bound.numpy()[[0, 2, 3]]).all()


@modes(*EAGER_AND_FUNCTION, reason=REASON)
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "plus-inf"])
@pytest.mark.parametrize("name", ["iwae", "dreg", "rws", "vimco", "piwae"])
def test_validate_args_names_log_joint_and_the_data_point(name, bad, mode):
    """validate_args=True: NaN or +inf at data point 2 raises, naming `log_joint` and 2."""
    grouped = {"num_outer": 2} if name == "piwae" else {}
    objective = mco.make_objective(name, 4, validate_args=True, **grouped)
    run = in_mode(lambda: objective(_q(), _log_joint(2, bad), seed=1).loss, mode)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"`log_joint` returned NaN or \+inf"
    ) as error:
        run()
    assert _points(error.value.message) == [2]


@modes(*EAGER_AND_FUNCTION, reason=REASON)
@pytest.mark.parametrize("case", ["nan-loc", "inf-loc", "zero-scale"])
def test_validate_args_names_q_and_the_data_point(case, mode):
    """A NaN or infinite parameter of q, or a scale of 0, at data point 3: the error names
    q(z|x) and 3 (not `log_joint`, whose NaN follows from q's)."""
    loc, scale = np.zeros([B, 2]), np.ones([B, 2])
    if case == "nan-loc":
        loc[3, 1] = np.nan
    elif case == "inf-loc":
        loc[3, 0] = np.inf
    else:
        scale[3, 0] = 0.0
    q = tfd.Independent(tfd.Normal(tf.constant(loc), tf.constant(scale)), 1)
    objective = mco.IWAE(4, validate_args=True)
    run = in_mode(lambda: objective(q, _log_joint(), seed=1).loss, mode)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"q\(z\|x\) gave NaN or infinite"
    ) as error:
        run()
    assert _points(error.value.message) == [3]


@pytest.mark.parametrize("name", ["iwae", "stl", "vimco", "miwae"])
def test_validate_args_accepts_zero_weights_and_changes_no_number(name):
    """log p = -inf is a zero weight, not an error; with finite inputs validate_args=True
    gives exactly the numbers of the default."""
    grouped = {"num_outer": 2} if name == "miwae" else {}
    checked = mco.make_objective(name, 4, validate_args=True, **grouped)
    plain = mco.make_objective(name, 4, **grouped)
    for log_joint in (_log_joint(), _log_joint(1, -math.inf)):
        a, b = checked(_q(), log_joint, seed=2), plain(_q(), log_joint, seed=2)
        np.testing.assert_array_equal(a.bound.numpy(), b.bound.numpy())
        np.testing.assert_array_equal(a.loss.numpy(), b.loss.numpy())


def test_validate_args_with_discrete_latents():
    """A Bernoulli q (int32 samples, no finiteness to check) with VIMCO: a NaN log p is
    named, a finite one passes."""
    q = tfd.Independent(tfd.Bernoulli(logits=tf.zeros([B, 3], tf.float64)), 1)

    def log_joint(bad):
        def fn(z):
            lp = tf.reduce_sum(tf.cast(z, tf.float64), -1) * 0.1
            return lp + (math.nan if bad else 0.0)

        return fn

    objective = mco.VIMCO(3, validate_args=True)
    assert np.isfinite(objective(q, log_joint(False), seed=1).loss.numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="`log_joint` returned NaN"):
        objective(q, log_joint(True), seed=1)


@pytest.mark.parametrize("value", [1, "yes", None, np.bool_(True)])
def test_validate_args_must_be_a_bool(value):
    with pytest.raises(TypeError, match="`validate_args` must be a bool"):
        mco.IWAE(4, validate_args=value)
    with pytest.raises(TypeError, match="`validate_args` must be a bool"):
        mco.log_marginal_estimate(_q(), _log_joint(), 1, num_samples=4, validate_args=value)


@pytest.mark.parametrize("name", mco.objective_names())
def test_validate_args_is_in_the_config_only_when_set(name):
    grouped = {"num_outer": 2} if name in ("miwae", "piwae") else {}
    plain = mco.make_objective(name, 4, **grouped)
    checked = mco.make_objective(name, 4, validate_args=True, **grouped)
    assert "validate_args" not in plain.get_config()
    assert checked.get_config()["validate_args"] is True
    rebuilt = type(checked).from_config(checked.get_config())
    assert rebuilt.validate_args and rebuilt.get_config() == checked.get_config()


@modes(*EAGER_AND_FUNCTION, reason=REASON)
def test_log_marginal_estimate_validate_args_names_log_joint(mode):
    """By default a NaN log p makes that point's estimate NaN; validate_args=True names
    `log_joint` and the data point, from inside the chunk loop."""

    def log_joint(z):
        lp = tfd.Independent(tfd.Normal(tf.zeros_like(z), 1.0), 1).log_prob(z)
        return tf.where(tf.range(B)[None, :] == 1, tf.constant(math.nan, lp.dtype), lp)

    estimate = mco.log_marginal_estimate(_q(), log_joint, 3, num_samples=10, chunk_size=4)
    assert np.isnan(estimate.numpy()[1]) and np.isfinite(estimate.numpy()[[0, 2, 3]]).all()
    run = in_mode(
        lambda: mco.log_marginal_estimate(
            _q(), log_joint, 3, num_samples=10, chunk_size=4, validate_args=True
        ),
        mode,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="log_marginal_estimate") as error:
        run()
    assert "`log_joint` returned NaN" in error.value.message and _points(error.value.message) == [1]


def test_log_marginal_estimate_plus_inf_is_nan():
    estimate = mco.log_marginal_estimate(
        _q(), _log_joint(0, math.inf), 3, num_samples=4, chunk_size=4
    ).numpy()
    assert np.isnan(estimate[0]) and np.isfinite(estimate[1:]).all()


def test_a_nan_learnable_beta_is_named_with_validate_args():
    """CIWAE's learnable beta whose logit is NaN (a diverged or damaged run): NaN bounds by
    default, an error naming the beta with validate_args=True."""
    plain = mco.CIWAE(4, beta=0.5, learnable_beta=True)
    checked = mco.CIWAE(4, beta=0.5, learnable_beta=True, validate_args=True)
    for objective in (plain, checked):
        objective.beta_logit.assign(math.nan)
    assert np.isnan(plain(_q(), _log_joint(), seed=1).loss.numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="CIWAE's learnable beta"):
        checked(_q(), _log_joint(), seed=1)
