"""The library's numbers are those recorded before the package was reorganized.

`tests/data/fingerprints.npz` holds draws, bounds, losses, gradients (float64 and float32)
of every objective on the toy Gaussian, sampled values of several distributions, and the
losses, weights and log p^(x) of three Keras models after two epochs, all written by
`python -m tests.fingerprints` before the code moved (the float32 entries again when
float32 draws moved to the float32 quantile, `CHANGELOG.md`; the float64 ones are those
first recorded). On the machine that recorded them
they agree bit for bit; the tolerance (1e-6 relative) only absorbs another CPU's rounding.
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


def test_draws_losses_gradients_and_trained_weights_equal_the_recorded_ones(stored, fresh):
    exact = [key for key in stored if np.array_equal(stored[key], fresh[key])]
    print(f"{len(exact)} of {len(stored)} fingerprints bit-identical")
    for key, value in stored.items():
        np.testing.assert_allclose(fresh[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
