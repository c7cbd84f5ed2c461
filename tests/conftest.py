"""Shared test fixtures: every numerical test runs eagerly, in tf.function and under XLA."""

from __future__ import annotations

import os
import pathlib

import pytest
import tensorflow as tf

MODES = ("eager", "function", "xla")

_SHARED_TFDS = (
    pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tensorflow_datasets"
)
if "TFDS_DATA_DIR" not in os.environ and _SHARED_TFDS.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(_SHARED_TFDS)


def in_mode(fn, mode: str):
    """`fn` run eagerly, as a tf.function, or as an XLA-compiled tf.function."""
    if mode == "eager":
        return fn
    if mode == "function":
        return tf.function(fn)
    if mode == "xla":
        return tf.function(fn, jit_compile=True)
    raise ValueError(f"unknown mode {mode!r}")


@pytest.fixture(params=MODES)
def mode(request) -> str:
    """The execution mode of the test: eager, function or xla."""
    return request.param
