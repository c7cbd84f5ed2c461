"""A PNG of what the model generates, written at each evaluation of a training run.

`write_pictures` draws samples of p(x, z) (`model.sample`: the decoder's pixel
probabilities, which show a model far better than binary draws) and reconstructions of
a fixed set of test digits (`model.reconstruct`: the decoder's mean at z ~ q(z|x)), and
writes one grid to <out_dir>/pictures/step-<step>.png:

  top rows:    model samples, from the same seed at every evaluation (so the pictures
               of successive steps show the same draws of the noise, decoded by a
               model that learns);
  bottom rows: pairs of columns, a test digit (left) and its reconstruction (right).

A conditional model (structured_mnist.py: p(x|c) for x the bottom half, c the top) is
sampled at the test digits' contexts, one draw each, and every picture shows the
context above x. The file is written to a temporary
name and renamed, so it is never half written.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

import mcobjectives as mco

NUM_DIGITS = 16  # test digits reconstructed; as many model samples
COLUMNS = 8
PICTURES_DIR = "pictures"
TMP_SUFFIX = ".tmp"


def image_shape(num_pixels: int, width: int = 28) -> tuple[int, int]:
    """(height, width) of a flat image: rows of `width` pixels, else the nearest square."""
    if num_pixels % width == 0:
        return num_pixels // width, width
    side = math.isqrt(num_pixels)
    return (
        (side, num_pixels // side) if side * (num_pixels // side) == num_pixels else (1, num_pixels)
    )


def _tile(images: np.ndarray, columns: int, shape: tuple[int, int]) -> np.ndarray:
    """[N, pixels] -> one [rows * h + gaps, columns * w + gaps] picture, 1-pixel gaps."""
    h, w = shape
    rows = math.ceil(len(images) / columns)
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1), np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (
            np.reshape(image, shape)
        )
    return grid


def picture(model: mco.ImportanceWeightedAutoencoder, batch: dict, seed: int) -> np.ndarray:
    """The grid (a float [H, W] array in [0, 1]): samples above, digit/reconstruction pairs below.

    With a context (structured_mnist.py's top halves), each picture shows the context's
    pixels above x's, so the half the model drew completes the given one.
    """
    x, context = batch["x"], batch.get("context")
    num = int(x.shape[0])
    drawn = model.sample(None if context is not None else num, seed, context=context)
    rebuilt = model.reconstruct(x, seed + 1, context=context).mean

    def flat(t):
        t = np.reshape(np.asarray(t, np.float32), (num, -1))
        if context is None:
            return t
        return np.concatenate([np.reshape(np.asarray(context, np.float32), (num, -1)), t], 1)

    shape = image_shape(flat(x).shape[1])
    pairs = np.stack([flat(x), flat(rebuilt)], axis=1).reshape(2 * num, -1)
    samples = _tile(flat(drawn.mean), COLUMNS, shape)
    reconstructions = _tile(pairs, COLUMNS, shape)
    gap = np.full((3, samples.shape[1]), 0.5, np.float32)  # a grey band between the parts
    return np.clip(np.concatenate([samples, gap, reconstructions]), 0.0, 1.0)


def write_pictures(
    model: mco.ImportanceWeightedAutoencoder,
    batch: dict,
    out_dir: pathlib.Path,
    step: int,
    seed: int,
) -> pathlib.Path:
    """Writes the grid of `picture` to <out_dir>/pictures/step-<step>.png; returns its path."""
    directory = pathlib.Path(out_dir) / PICTURES_DIR
    directory.mkdir(exist_ok=True)
    path = directory / f"step-{step:07d}.png"
    tmp = path.with_name(path.name + TMP_SUFFIX)
    grid = picture(model, batch, seed)
    scale = 3  # pixels per image pixel: a 28x28 digit is 84 pixels wide on screen
    grid = np.kron(grid, np.ones((scale, scale), np.float32))
    try:
        plt.imsave(tmp, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def fixed_digits(test_images, to_batch, num: int = NUM_DIGITS) -> dict:
    """The batch of the first `num` test digits (as `to_batch` makes it), float32."""
    return to_batch(tf.constant(np.asarray(test_images[:num]), tf.float32))
