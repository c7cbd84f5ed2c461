"""The smoke of an installed wheel, run by .ci/wheel_smoke.sh in a fresh virtual environment.

Run from a folder outside the checkout, with the wheel installed: mcobjectives must import
from the environment (not the checkout), every module of the package must import, the
offline fallback of `mcobjectives.experimental.mnist.load_mnist` must load the MNIST subset
from the package data, and a small `ImportanceWeightedAutoencoder` must train for 20 `fit`
steps, save to a `.keras` file and load back with `mco.load_model` with the same weights and
outputs. Prints one line per check and a final PASS line; any failure raises.

    python wheel_smoke.py [--checkout /path/to/the/checkout]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import pathlib
import pkgutil
import sys
import tempfile
import time

STEPS = 20


def _is_within(path: pathlib.Path, folder: pathlib.Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_installed(checkout: pathlib.Path | None) -> None:
    """mcobjectives comes from this environment's site-packages, and every module imports."""
    import mcobjectives as mco

    location = pathlib.Path(mco.__file__)
    assert _is_within(location, pathlib.Path(sys.prefix)), f"{location} is not in {sys.prefix}"
    if checkout is not None:
        assert not _is_within(location, checkout), f"{location} is in the checkout {checkout}"
    version = importlib.metadata.version("mcobjectives")
    assert mco.__version__ == version, (mco.__version__, version)
    names = [m.name for m in pkgutil.walk_packages(mco.__path__, prefix="mcobjectives.")]
    for name in names:
        importlib.import_module(name)
    print(f"import: mcobjectives {version} from {location.parent}; {len(names)} modules import")


def _load_offline(data_dir: str):
    """The bundled subset, through the fallback of a plain install (no TensorFlow Datasets)."""
    del data_dir  # without TFDS there is no data folder to read
    from mcobjectives.experimental import mnist

    assert "TFDS_DATA_DIR" not in os.environ, "the smoke must run without TFDS_DATA_DIR"
    assert importlib.util.find_spec("tensorflow_datasets") is None, "a plain install has no TFDS"
    assert _is_within(pathlib.Path(str(mnist.BUNDLED_PATH)), pathlib.Path(sys.prefix))
    banner: list[str] = []
    data = mnist.load_mnist("mnist", log=banner.append)
    assert data.source == mnist.BUNDLED_SOURCE, data.source
    assert data.train.shape == (5000, 784) and data.test.shape == (1000, 784)
    assert "BUNDLED SUBSET" in "\n".join(banner)
    assert "TensorFlow Datasets is not installed" in "\n".join(banner)
    print(f"offline fallback: {data.train.shape[0]} train / {data.test.shape[0]} test images")
    return data


def _fit_save_load(data, folder: pathlib.Path) -> None:
    """20 fit steps of a small IWAE, saved as .keras and loaded with mco.load_model."""
    import keras
    import numpy as np

    import mcobjectives as mco
    from mcobjectives.experimental import mnist

    keras.utils.set_random_seed(0)
    model = mnist.one_layer(
        mco.IWAE(4), data.train.mean(axis=0), seed=0, latent_size=8, hidden_units=32
    )
    model.compile(mnist.adam())
    batches = mnist.train_dataset(data.train, batch_size=50, seed=0, num_steps=STEPS)
    history = model.fit(batches, shuffle=False, verbose=0).history
    assert int(model.optimizer.iterations) == STEPS, int(model.optimizer.iterations)
    loss = history["loss"][-1]
    assert np.isfinite(loss), history

    path = folder / "iwae.keras"
    model.save(path)
    loaded = mco.load_model(path)
    assert type(loaded) is type(model) and repr(loaded.objective) == repr(model.objective)
    assert len(loaded.weights) == len(model.weights)
    for ours, theirs in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=ours.path)
    x = mnist.test_batches(data.test[:20], binarized=data.binarized)[0]["x"]
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), err_msg="predict"
    )
    assert int(loaded.optimizer.iterations) == STEPS
    print(
        f"fit: {STEPS} steps, loss {loss:.2f}; saved {path.stat().st_size} bytes and loaded: "
        f"{len(model.weights)} weights and the outputs identical"
    )


def main() -> None:
    """Run the checks in turn, timing each; a failed check raises."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=pathlib.Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    _check_installed(args.checkout)
    with tempfile.TemporaryDirectory() as folder:
        data = _load_offline(str(pathlib.Path(folder) / "tensorflow_datasets"))
        _fit_save_load(data, pathlib.Path(folder))
    print(f"wheel smoke (python): PASS in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
