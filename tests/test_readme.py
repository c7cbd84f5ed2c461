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


def test_readme_keras_example_runs():
    """The Keras block (the second python block) fits real-looking data and logs its metrics."""
    first, keras_block = _python_blocks()[:2]
    # The Keras block uses the imports of the first block, as a reader's session would.
    imports = "\n".join(line for line in first.splitlines() if line.startswith("import"))
    rng = np.random.default_rng(1)
    images = (rng.random((100, 784)) < 0.2).astype(np.float32)
    namespace: dict = {"binarized_images": tf.data.Dataset.from_tensor_slices(images)}
    exec(compile(imports, str(README), "exec"), namespace)
    namespace["tfd"] = namespace["tfp"].distributions
    block = keras_block.replace("epochs=10)", "epochs=10, verbose=0)")
    assert block != keras_block
    exec(compile(block, str(README), "exec"), namespace)
    history = namespace["model"].history.history
    print({k: [round(v[0], 2), round(v[-1], 2)] for k, v in history.items()})
    assert set(history) >= {"loss", "bound", "ess"}
    assert history["loss"][-1] < history["loss"][0] - 50
    np.testing.assert_allclose(history["bound"], -np.asarray(history["loss"]), rtol=1e-6)
