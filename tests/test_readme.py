"""The README's training example runs as written and lowers its loss."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import tensorflow as tf

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_training_example_runs():
    """Execute the README's first python block and train a few steps on random binary data."""
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    rng = np.random.default_rng(0)
    x = tf.constant((rng.random((20, 784)) < 0.2).astype(np.float32))
    seeds = tf.random.experimental.stateless_split([0, 0], 60)
    losses = [float(namespace["train_step"](x, seeds[i])) for i in range(60)]
    print(f"loss first {losses[0]:.2f}, last {losses[-1]:.2f}")
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 50  # the same batch: the bound rises quickly
