"""The library's numbers are those recorded before the package was reorganized.

`tests/data/fingerprints.npz` holds draws, bounds, losses, gradients (float64 and float32)
of every objective on the toy Gaussian, sampled values of several distributions, and the
losses, weights and log p^(x) of three Keras models after two epochs, all written by
`python -m tests.fingerprints` before the code moved (the float32 entries again when
float32 draws moved to the float32 quantile, `CHANGELOG.md`; the float64 ones are those
first recorded). On the machine that recorded them most agree bit for bit. The tolerance
absorbs rounding alone: float64 entries agree to 1e-6 relative; a float32 entry to 1e-6
relative or to 64 float32 eps times its largest magnitude (64 to 128 ulps of its largest
element), whichever is looser. float32 sums on several threads round in the order the
threads finish: a few eps from run to run on one machine, more on another CPU (the test
prints the largest it sees; 16 eps, in weights trained for two epochs, here). A change of
the math or of the random stream moves entries by far more. A change of the float32
normals' rounding alone does not (float64 `ndtri` in place of the float32 quantile, within
6 ulps of each draw, moved entries by at most 20 eps when tried):
`tests/test_float32_normals.py` pins those draws bit for bit.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from tests import fingerprints

STORED = pathlib.Path(__file__).parent / "data" / "fingerprints.npz"


@pytest.fixture(scope="module")
def stored():
    with np.load(STORED) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def fresh():
    return fingerprints.all_fingerprints()


def test_every_stored_fingerprint_is_computed_again(stored, fresh):
    assert sorted(stored) == sorted(fresh)


FLOAT32_EPS = 64  # float32 eps times an entry's largest magnitude, see above


def _eps_of_largest(fresh: np.ndarray, value: np.ndarray) -> float:
    """The largest difference, in float32 eps times `value`'s largest magnitude."""
    scale = np.finfo(np.float32).eps * max(float(np.max(np.abs(value), initial=0.0)), 1e-30)
    return float(np.max(np.abs(fresh.astype(np.float64) - value), initial=0.0)) / scale


def test_draws_losses_gradients_and_trained_weights_equal_the_recorded_ones(stored, fresh):
    exact = [key for key in stored if np.array_equal(stored[key], fresh[key])]
    float32 = {
        key: _eps_of_largest(fresh[key], v) for key, v in stored.items() if v.dtype == np.float32
    }
    worst = max(float32, key=float32.get)
    print(
        f"{len(exact)} of {len(stored)} fingerprints bit-identical; the float32 entry "
        f"farthest from its record: {worst}, {float32[worst]:.1f} eps times its largest magnitude"
    )
    for key, value in stored.items():
        assert fresh[key].shape == value.shape and fresh[key].dtype == value.dtype, key
        if key in float32 and float32[key] <= FLOAT32_EPS:
            continue
        np.testing.assert_allclose(fresh[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
