"""examples/pictures.py: the PNG grid of model samples and reconstructions of a run.

(The runs of tests/test_examples.py check that every evaluation writes one.)
"""

from __future__ import annotations

import importlib
import pathlib
import sys

import keras
import matplotlib.image
import numpy as np

import mcobjectives as mco

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
pictures = importlib.import_module("pictures")


def _model():
    keras.utils.set_random_seed(0)
    return mco.ImportanceWeightedAutoencoder(
        mco.networks.SigmoidBeliefEncoder((8, 4)),
        mco.networks.BernoulliDecoder(784, (), latent="z1"),
        mco.networks.SigmoidBeliefPrior((8, 4)),
        mco.VIMCO(2),
    )


def test_the_grid_holds_the_samples_then_digit_and_reconstruction_pairs(tmp_path):
    digits = (np.random.default_rng(0).uniform(size=(16, 784)) > 0.7).astype(np.float32)
    batch = pictures.fixed_digits(digits, lambda images: {"x": images})
    path = pictures.write_pictures(_model(), batch, tmp_path, step=7, seed=3)
    assert path == tmp_path / "pictures" / "step-0000007.png"
    assert not list(path.parent.glob("*.tmp"))
    image = matplotlib.image.imread(path)
    # 2 rows of 8 samples, a 3-pixel band, 4 rows of 4 pairs; 29 pixels a cell, 3x scaled.
    assert image.shape[:2] == (3 * (2 * 29 + 1 + 3 + 4 * 29 + 1), 3 * (8 * 29 + 1))
    grid = pictures.picture(_model(), batch, seed=3)
    np.testing.assert_array_equal(grid, pictures.picture(_model(), batch, seed=3))
    # The digits sit in the left cell of each pair, unchanged.
    top = 2 * 29 + 1 + 3
    np.testing.assert_array_equal(grid[top + 1 : top + 29, 1:29], digits[0].reshape(28, 28))


def test_flat_images_are_cut_into_rows_of_28_pixels_else_a_square():
    assert pictures.image_shape(392) == (14, 28)
    assert pictures.image_shape(784) == (28, 28)
    assert pictures.image_shape(10) == (1, 10)
