"""The hand derivation of tests/reference_hierarchical.py against central finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from tests import reference
from tests.reference_hierarchical import Point, batch_loss_and_grads, log_p, log_q, sample

D, D1, D2, K = 3, 3, 2, 4
S1, S2 = 0.7, 0.4
STEP = 1e-6


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    theta = (rng.normal(size=(D1, D2)), rng.normal(size=D1))
    phi = (
        rng.normal(size=(D1, D)) * 0.5,
        rng.normal(size=D1),
        rng.normal(size=(D2, D1)) * 0.5,
        rng.normal(size=D2),
    )
    x, eps1, eps2 = rng.normal(size=D), rng.normal(size=(K, D1)), rng.normal(size=(K, D2))
    return theta, phi, x, eps1, eps2


def _flat(parts):
    return np.concatenate([np.ravel(p) for p in parts])


def _unflat(vector, like):
    cuts = np.cumsum([np.size(p) for p in like])[:-1]
    return [v.reshape(np.shape(p)) for v, p in zip(np.split(vector, cuts), like, strict=True)]


def _finite_difference(f, params):
    """Central differences of a [K]-valued f(list of arrays) w.r.t. the flattened params."""
    flat = _flat(params)
    columns = []
    for i in range(len(flat)):
        step = np.zeros_like(flat)
        step[i] = STEP
        up, down = f(_unflat(flat + step, params)), f(_unflat(flat - step, params))
        columns.append((up - down) / (2 * STEP))
    return np.stack(columns, axis=-1)


def _log_w(theta, phi, x, eps1, eps2, phi_q=None):
    """log w at z(e; phi); log q uses phi_q's parameters when given."""
    z1, z2 = sample(*phi, x, eps1, eps2, S1, S2)
    return log_p(*theta, x, z1, z2) - log_q(*(phi_q or phi), x, z1, z2, S1, S2)


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def test_total_derivative_matches_finite_differences_at_fixed_noise(setup):
    theta, phi, x, eps1, eps2 = setup
    point = Point(*theta, *phi, x, eps1, eps2, S1, S2)
    numeric = _finite_difference(lambda f: _log_w(theta, f, x, eps1, eps2), list(phi))
    _close(point.total, numeric)


def test_path_derivative_keeps_z1_live_inside_q_of_z2(setup):
    theta, phi, x, eps1, eps2 = setup
    point = Point(*theta, *phi, x, eps1, eps2, S1, S2)
    numeric = _finite_difference(lambda f: _log_w(theta, f, x, eps1, eps2, phi_q=phi), list(phi))
    _close(point.path, numeric)


def test_score_is_the_phi_gradient_of_log_q_at_fixed_latents(setup):
    theta, phi, x, eps1, eps2 = setup
    point = Point(*theta, *phi, x, eps1, eps2, S1, S2)
    z1, z2 = sample(*phi, x, eps1, eps2, S1, S2)
    numeric = _finite_difference(lambda f: log_q(*f, x, z1, z2, S1, S2), list(phi))
    _close(point.score, numeric)


def test_model_gradient_is_the_theta_gradient_of_log_p_at_fixed_latents(setup):
    theta, phi, x, eps1, eps2 = setup
    point = Point(*theta, *phi, x, eps1, eps2, S1, S2)
    z1, z2 = sample(*phi, x, eps1, eps2, S1, S2)
    numeric = _finite_difference(lambda t: log_p(*t, x, z1, z2), list(theta))
    _close(point.dmu, numeric)


def test_path_is_total_plus_score(setup):
    theta, phi, x, eps1, eps2 = setup
    point = Point(*theta, *phi, x, eps1, eps2, S1, S2)
    _close(point.path, point.total + point.score)


def test_iwae_gradients_match_finite_differences_of_the_iwae_value(setup):
    theta, phi, x, eps1, eps2 = setup
    value, *grads = reference.iwae(Point(*theta, *phi, x, eps1, eps2, S1, S2))

    def iwae_value(t, f):
        return np.atleast_1d(reference._lme(_log_w(t, f, x, eps1, eps2)))

    numeric_theta = _finite_difference(lambda t: iwae_value(t, phi), list(theta))[0]
    numeric_phi = _finite_difference(lambda f: iwae_value(theta, f), list(phi))[0]
    _close(value, iwae_value(theta, phi)[0])
    _close(_flat(grads[:2]), numeric_theta)
    _close(_flat(grads[2:]), numeric_phi)


def test_batch_loss_is_minus_the_batch_mean_of_values_and_ascent_directions(setup):
    theta, phi, _, _, _ = setup
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, D))
    eps1, eps2 = rng.normal(size=(K, 2, D1)), rng.normal(size=(K, 2, D2))
    loss, grads, values = batch_loss_and_grads(
        reference.iwae, (*theta, *phi), x, eps1, eps2, S1, S2
    )
    outs = [
        reference.iwae(Point(*theta, *phi, x[n], eps1[:, n], eps2[:, n], S1, S2)) for n in (0, 1)
    ]
    _close(values, [o[0] for o in outs])
    _close(loss, -values.mean())
    for i, grad in enumerate(grads):
        assert grad.shape == np.shape(outs[0][i + 1])
        _close(grad, -(outs[0][i + 1] + outs[1][i + 1]) / 2)


# (estimator, kwargs, whether its inference gradient is the total derivative of its value)
ESTIMATORS = {
    "miwae": (reference.miwae, {"num_outer": 2, "num_inner": 2}, True),
    "ciwae": (reference.ciwae, {"beta": 0.3}, True),
    "piwae": (reference.piwae, {"num_outer": 2, "num_inner": 2}, False),
    "rws": (reference.rws, {}, False),
    "stl": (reference.stl, {}, False),
    "dreg": (reference.dreg, {"alpha": 0.5}, False),
    "jvi": (reference.jvi, {"use_dreg": False}, True),
    "jvi-dreg": (reference.jvi, {"use_dreg": True}, False),
    "vimco": (reference.vimco, {}, False),
    "vriwae": (reference.vriwae, {"alpha": 0.3, "use_dreg": False}, True),
    "vriwae-dreg": (reference.vriwae, {"alpha": 0.3, "use_dreg": True}, False),
}


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_reference_estimators_gradients_differentiate_its_value(setup, name):
    """On the hierarchical point, every estimator's model gradient is the theta-derivative
    of its value at fixed noise (central finite differences); so is its inference gradient
    in phi where it is the total derivative (the others are checked through path and
    score above, and against the library in tests/test_hierarchical.py)."""
    estimator, kwargs, phi_is_total = ESTIMATORS[name]
    theta, phi, x, eps1, eps2 = setup

    def value(t, f):
        return np.atleast_1d(estimator(Point(*t, *f, x, eps1, eps2, S1, S2), **kwargs)[0])

    out = estimator(Point(*theta, *phi, x, eps1, eps2, S1, S2), **kwargs)
    assert [np.shape(o) for o in out[1:]] == [np.shape(p) for p in (*theta, *phi)]
    _close(_flat(out[1:3]), _finite_difference(lambda t: value(t, phi), list(theta))[0])
    if phi_is_total:
        _close(_flat(out[3:]), _finite_difference(lambda f: value(theta, f), list(phi))[0])
