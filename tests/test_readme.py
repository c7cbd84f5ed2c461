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


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def _keras_model_namespace(seed: int, num_images: int, epochs: str) -> tuple[dict, list[str]]:
    """Runs the Keras block (the second python block) on random binary images.

    The Keras block uses the imports of the first block, as a reader's session would.
    Returns the namespace it ran in and the python blocks.
    """
    blocks = _python_blocks()
    imports = "\n".join(line for line in blocks[0].splitlines() if line.startswith("import"))
    rng = np.random.default_rng(seed)
    images = (rng.random((num_images, 784)) < 0.2).astype(np.float32)
    namespace: dict = {"binarized_images": tf.data.Dataset.from_tensor_slices(images)}
    exec(compile(imports, str(README), "exec"), namespace)
    namespace["tfd"] = namespace["tfp"].distributions
    block = blocks[1].replace("epochs=10)", f"epochs={epochs}, verbose=0)")
    assert block != blocks[1]
    exec(compile(block, str(README), "exec"), namespace)
    return namespace, blocks


def test_readme_keras_example_runs():
    """The Keras block fits real-looking data and logs its metrics."""
    namespace, _ = _keras_model_namespace(seed=1, num_images=100, epochs="10")
    history = namespace["model"].history.history
    print({k: [round(v[0], 2), round(v[-1], 2)] for k, v in history.items()})
    assert set(history) >= {"loss", "bound", "ess"}
    assert history["loss"][-1] < history["loss"][0] - 50
    np.testing.assert_allclose(history["bound"], -np.asarray(history["loss"]), rtol=1e-6)


def test_readme_diagnostics_example_runs():
    """The gradient-statistics block (the third) runs on the Keras block's model."""
    namespace, blocks = _keras_model_namespace(seed=2, num_images=40, epochs="1")
    block = blocks[2].replace("num_estimates=1000", "num_estimates=8")
    assert block != blocks[2]
    exec(compile(block, str(README), "exec"), namespace)
    stats, variables = namespace["stats"], namespace["model"].inference_variables
    assert [s.shape for s in stats.snr] == [tuple(v.shape) for v in variables]
    assert all(np.all(np.isfinite(v)) and np.all(v >= 0) for v in stats.variance)
    print(f"median SNR per variable: {[float(np.median(s)) for s in stats.snr]}")
