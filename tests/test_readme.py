"""The code blocks of the README and of the guides run as written and lower their losses.

The README keeps the first training example; the longer blocks live in the guide that
explains them (docs/guides/*.md) and run here as a reader pastes them."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))


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


def _python_blocks() -> list[tuple[pathlib.Path, str]]:
    """Every python block of the README and the guides, with the file it is in."""
    return [
        (path, block)
        for path in (README, *GUIDES)
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)
    ]


def _block(marker: str) -> str:
    """The one python block of the README or a guide that contains `marker`."""
    (block,) = [b for _, b in _python_blocks() if marker in b]
    return block


def _path(marker: str) -> str:
    """The file holding the block that contains `marker`, for tracebacks."""
    (path,) = [p for p, b in _python_blocks() if marker in b]
    return str(path)


def _keras_model_namespace(num_images: int, epochs: int, tmp_path) -> dict:
    """Runs the Keras block as pasted, on its first `num_images` binarized MNIST images
    (TensorFlow Datasets' prepared data) for `epochs`, saving into `tmp_path`."""
    original = _block("model.save(")
    block = original.replace(
        "images.batch(20), epochs=10)",
        f"images.take({num_images}).batch(20), epochs={epochs}, verbose=0)",
    ).replace('"piwae.keras"', repr(str(tmp_path / "piwae.keras")))
    assert block.count(f"take({num_images})") == 1 and "tmp" in block
    namespace: dict = {}
    exec(compile(block, _path("model.save("), "exec"), namespace)
    return namespace


def test_readme_keras_example_runs(tmp_path):
    """The Keras block fits MNIST, logs its metrics and saves a model that loads."""
    import keras

    namespace = _keras_model_namespace(100, 10, tmp_path)
    model = namespace["model"]
    history = model.history.history
    print({k: [round(v[0], 2), round(v[-1], 2)] for k, v in history.items()})
    assert set(history) == {"loss", "bound", "ess", "nonfinite_steps"}
    assert history["loss"][-1] < history["loss"][0] - 50
    assert history["nonfinite_steps"][-1] == 0
    np.testing.assert_allclose(history["bound"], -np.asarray(history["loss"]), rtol=1e-6)
    loaded = keras.models.load_model(tmp_path / "piwae.keras")
    x = next(iter(namespace["images"].batch(5)))
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_readme_conv_example_trains(tmp_path):
    """The conv block (after the Keras block, as a reader runs them) trains on 200 images."""
    namespace = _keras_model_namespace(20, 1, tmp_path)
    original = _block("class ConvDecoder")
    block = original.replace("batch(20), epochs=1)", "take(200).batch(20), epochs=2, verbose=0)")
    assert block != original
    exec(compile(block, _path("class ConvDecoder"), "exec"), namespace)
    losses = namespace["conv_model"].history.history["loss"]
    print(f"conv model epoch losses: {losses}")
    assert losses[-1] < losses[0]


def test_readme_diagnostics_example_runs(tmp_path):
    """The gradient-statistics block runs on the Keras block's model."""
    namespace = _keras_model_namespace(40, 1, tmp_path)
    original = _block("diagnostics.gradient_statistics")
    block = original.replace("num_estimates=1000", "num_estimates=8")
    assert block != original
    exec(compile(block, _path("diagnostics.gradient_statistics"), "exec"), namespace)
    stats, variables = namespace["stats"], namespace["model"].inference_variables
    assert [s.shape for s in stats.snr] == [tuple(v.shape) for v in variables]
    assert all(np.all(np.isfinite(v)) and np.all(v >= 0) for v in stats.variance)
    print(f"median SNR per variable: {[float(np.median(s)) for s in stats.snr]}")


def _train_on_one_batch(loss_fn, variables, steps: int, seed: int) -> list[float]:
    """Adam steps of `loss_fn(x, seed)` on one fixed batch of random binary images."""
    import keras

    rng = np.random.default_rng(seed)
    x = tf.constant((rng.random((8, 784)) < 0.2).astype(np.float32))
    seeds = tf.random.experimental.stateless_split([seed, 1], steps)
    optimizer = keras.optimizers.Adam(3e-3)
    losses = []
    for i in range(steps):
        with tf.GradientTape() as tape:
            loss = loss_fn(x, seeds[i])
        grads = tape.gradient(loss, variables)
        assert all(g is not None for g in grads), "every variable gets a gradient"
        assert all(np.all(np.isfinite(g)) for g in grads)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        losses.append(float(loss))
    return losses


def test_readme_hierarchical_example_trains_both_layers():
    """The two-layer DReG block runs, sends a gradient to all four layers, lowers its loss."""
    namespace: dict = {}
    exec(
        compile(_block("def hierarchical_loss"), _path("def hierarchical_loss"), "exec"), namespace
    )
    layers = [namespace[n] for n in ("enc1", "enc2", "dec1", "dec2")]
    namespace["hierarchical_loss"](tf.zeros([1, 784]), tf.constant([0, 0]))  # builds the layers
    variables = [v for layer in layers for v in layer.trainable_variables]
    losses = _train_on_one_batch(namespace["hierarchical_loss"], variables, 40, seed=3)
    print(f"loss first {losses[0]:.2f}, last {losses[-1]:.2f}")
    assert losses[-1] < losses[0] - 20


def test_readme_discrete_example_trains_with_vimco():
    """The sigmoid belief net block (int32 Bernoulli latents, VIMCO) trains every variable."""
    namespace: dict = {}
    for marker in ("def hierarchical_loss", "def sbn_loss"):  # the second uses the first's imports
        exec(compile(_block(marker), _path(marker), "exec"), namespace)
    namespace["sbn_loss"](tf.zeros([1, 784]), tf.constant([0, 0]))  # builds the layers
    variables = [
        *namespace["encoder"].trainable_variables,
        *namespace["decoder"].trainable_variables,
        namespace["prior_logits"],
    ]
    losses = _train_on_one_batch(namespace["sbn_loss"], variables, 40, seed=4)
    print(f"loss first {losses[0]:.2f}, last {losses[-1]:.2f}")
    assert losses[-1] < losses[0] - 20


def test_readme_experimental_mnist_example_runs(tmp_path):
    """The `mcobjectives.experimental.mnist` block trains and evaluates, as pasted but for
    its sizes (30 steps, 20 test images, K = 64) and its data (the bundled subset)."""
    original = _block("from mcobjectives.experimental import mnist")
    empty = tmp_path / "no_tfds"
    empty.mkdir()
    block = (
        original.replace(
            'mnist.load_mnist("mnist")',
            f'mnist.load_mnist("mnist", data_dir={str(empty)!r}, download=False, log=len)',
        )
        .replace("num_steps=3000", "num_steps=30")
        .replace("data.test[:1000]", "data.test[:20]")
        .replace("num_samples=5000", "num_samples=64")
        .replace("print(", "result = (")
    )
    for size in ("num_steps=30", "test[:20]", "num_samples=64", "download=False", "result = ("):
        assert block.count(size) == 1, size
    namespace: dict = {}
    exec(compile(block, _path("from mcobjectives.experimental import mnist"), "exec"), namespace)
    model, result = namespace["model"], namespace["result"]
    assert namespace["data"].source == "mnist-bundled-subset"
    assert int(model.optimizer.iterations) == 30
    assert result["num_test_images"] == 20 and result["log_px_num_samples"] == 64
    for key in ("iwae64", "log_px", "neg_kl", "ess_fraction"):
        assert np.isfinite(result[key]), (key, result)
    assert -400 < result["iwae64"] < -50 and 0 < result["ess_fraction"] <= 1, result
    print({k: result[k] for k in ("iwae64", "log_px", "active_units")})
