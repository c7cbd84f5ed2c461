"""Every estimator's loss and per-batch gradient against hand-derived NumPy, exactly.

The library's autodiff of its surrogate loss, on the toy Gaussian with fixed noise, must
match tests/reference.py (derived by hand from the table of objectives) to 1e-6 relative
in float64, for every objective, several K, B > 1, D > 1: every case eagerly, and in
tf.function and under XLA one case per kind of surrogate (`ONE_PER_KIND`) by default and
every case in the slow run.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import mcobjectives as mco
from tests import reference, toy
from tests.conftest import GRAPH_MODES, MODES, in_mode, mode_params

B, D = 3, 2
RTOL, ATOL = 1e-6, 1e-10

# (id, library objective, reference estimator, reference kwargs)
CASES = [
    ("iwae-1", mco.IWAE(1), reference.iwae, {}),
    ("iwae-5", mco.IWAE(5), reference.iwae, {}),
    ("iwae-17", mco.IWAE(17), reference.iwae, {}),
    ("vae-4", mco.VAE(4), reference.miwae, {"num_outer": 4, "num_inner": 1}),
    ("miwae-3x4", mco.MIWAE(3, 4), reference.miwae, {"num_outer": 3, "num_inner": 4}),
    ("miwae-1x6", mco.MIWAE(1, 6), reference.miwae, {"num_outer": 1, "num_inner": 6}),
    ("ciwae-6-0.3", mco.CIWAE(6, 0.3), reference.ciwae, {"beta": 0.3}),
    ("ciwae-6-0", mco.CIWAE(6, 0.0), reference.ciwae, {"beta": 0.0}),
    ("ciwae-6-1", mco.CIWAE(6, 1.0), reference.ciwae, {"beta": 1.0}),
    ("piwae-3x4", mco.PIWAE(3, 4), reference.piwae, {"num_outer": 3, "num_inner": 4}),
    ("piwae-2x1", mco.PIWAE(2, 1), reference.piwae, {"num_outer": 2, "num_inner": 1}),
    ("rws-1", mco.RWS(1), reference.rws, {}),
    ("rws-7", mco.RWS(7), reference.rws, {}),
    ("stl-1", mco.STL(1), reference.stl, {}),
    ("stl-7", mco.STL(7), reference.stl, {}),
    ("dreg-7-0", mco.DReG(7), reference.dreg, {"alpha": 0.0}),
    ("dreg-7-1", mco.DReG(7, alpha=1.0), reference.dreg, {"alpha": 1.0}),
    ("dreg-7-0.3", mco.DReG(7, alpha=0.3), reference.dreg, {"alpha": 0.3}),
    ("dreg-1-0.5", mco.DReG(1, alpha=0.5), reference.dreg, {"alpha": 0.5}),
    ("jvi-2", mco.JVI(2), reference.jvi, {"use_dreg": False}),
    ("jvi-6", mco.JVI(6), reference.jvi, {"use_dreg": False}),
    ("jvi-dreg-2", mco.JVI(2, dreg=True), reference.jvi, {"use_dreg": True}),
    ("jvi-dreg-6", mco.JVI(6, dreg=True), reference.jvi, {"use_dreg": True}),
    ("vimco-2", mco.VIMCO(2), reference.vimco, {}),
    ("vimco-7", mco.VIMCO(7), reference.vimco, {}),
    *[
        (
            f"vriwae{'-dreg' if dreg else ''}-{k}-{alpha}",
            mco.VRIWAE(k, alpha=alpha, dreg=dreg),
            reference.vriwae,
            {"alpha": alpha, "use_dreg": dreg},
        )
        for alpha in (0.0, 0.3, 0.9)
        for dreg in (False, True)
        for k in (1, 7)
    ],
]


# One case per kind of surrogate: TOTAL (IWAE), SPLIT with each form of coefficients
# (PIWAE's inner MIWAE, DReG(alpha), JVI-DReG, VR-IWAE-DReG) and SCORE (RWS, VIMCO).
ONE_PER_KIND = {"iwae-5", "piwae-3x4", "rws-7", "dreg-7-0.3", "jvi-dreg-6", "vimco-7"}
ONE_PER_KIND |= {"vriwae-dreg-7-0.3"}
assert ONE_PER_KIND <= {case[0] for case in CASES}


# Every case runs eagerly. In tf.function and under XLA the other cases are slow: the
# default run has ONE_PER_KIND there, and tests/test_properties.py's
# test_same_seed_same_numbers_in_every_mode shows every registered objective giving the
# eager numbers in every mode (float64, 1e-12), so a graph repeats the eager check.
def _cases_in_modes():
    for case_id, objective, estimator, kwargs in CASES:
        slow = () if case_id in ONE_PER_KIND else GRAPH_MODES
        for mode in mode_params(MODES, slow=slow):
            yield pytest.param(
                objective,
                estimator,
                kwargs,
                *mode.values,
                id=f"{mode.id}-{case_id}",
                marks=mode.marks,
            )


def _parameters(seed: int = 0):
    return toy.off_optimum_parameters(D, B, seed)


@pytest.mark.parametrize(("objective", "estimator", "kwargs", "mode"), _cases_in_modes())
def test_loss_and_gradients_match_hand_derivation(objective, estimator, kwargs, mode):
    """Library loss, bound and gradients equal the NumPy derivation for fixed noise."""
    mu, A, b, x = _parameters()
    seed = tf.constant([7, 11], tf.int32)

    def run(seed):
        return toy.loss_and_grads(objective, mu, A, b, tf.constant(x), seed)

    result, d_mu, d_A, d_b = in_mode(run, mode)(seed)
    # Replay the noise the objective drew (documented: sampling.sample with the same seed).
    eps = toy.replayed_noise(A, b, x, objective.num_samples, seed)

    loss, r_mu, r_A, r_b, values = reference.batch_loss_and_grads(
        estimator, mu, A, b, x, eps, toy.SIGMA, **kwargs
    )
    np.testing.assert_allclose(result.loss.numpy(), loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.bound.numpy(), values, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_mu.numpy(), r_mu, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_A.numpy(), r_A, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_b.numpy(), r_b, rtol=RTOL, atol=ATOL)


def test_replayed_noise_reproduces_log_weights():
    """The reference's log weights equal the library's for the replayed noise."""
    mu, A, b, x = _parameters(1)
    seed = tf.constant([3, 4], tf.int32)
    result = toy.loss_and_grads(mco.IWAE(9), mu, A, b, tf.constant(x), seed)[0]
    q = toy.make_q(tf.constant(A), tf.constant(b), tf.constant(x))
    eps = (mco.sampling.sample(q, 9, seed).numpy() - (x @ A.T + b)) / toy.SIGMA
    for n in range(B):
        point = reference.Point(mu, A, b, x[n], eps[:, n], toy.SIGMA)
        np.testing.assert_allclose(result.log_weights.numpy()[:, n], point.log_w, rtol=1e-12)
