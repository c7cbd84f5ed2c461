"""Write `mnist_subset.npz`: the first images of the real MNIST train and test splits.

The subset is the offline fallback of `mcobjectives.experimental.mnist.load_mnist`. It is read
from a TFDS data directory in which `mnist` has been prepared, in TFDS order, so the result is
deterministic. It is written, by default, where the package reads it (package data of
`mcobjectives.experimental.mnist`, `bundled/mnist_subset.npz`):

    python examples/data/make_mnist_subset.py --data_dir /path/to/tensorflow_datasets

The file holds uint8 arrays `train_images` [N_train, 784] and `test_images` [N_test, 784] (raw
0-255 intensities, flattened row-major from 28x28), uint8 `train_labels` and `test_labels`, and a
`source` string describing the origin. MNIST is by Yann LeCun and Corinna Cortes, licensed
CC BY-SA 3.0; the subset is a derivative under the same license.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

# The package data of mcobjectives.experimental.mnist, which `load_mnist` falls back to.
_ROOT = pathlib.Path(__file__).resolve().parents[2]
_DEFAULT_OUT = _ROOT / "mcobjectives" / "experimental" / "mnist" / "bundled" / "mnist_subset.npz"


def _first_images(split: str, count: int, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images (uint8 [count, 784]) and labels (uint8 [count]) of `split`."""
    import tensorflow_datasets as tfds

    data = tfds.as_numpy(
        tfds.load("mnist", split=f"{split}[:{count}]", batch_size=-1, data_dir=data_dir)
    )
    images = np.asarray(data["image"])
    labels = np.asarray(data["label"])
    if images.shape != (count, 28, 28, 1) or images.dtype != np.uint8:
        raise ValueError(f"unexpected {split} images: shape {images.shape}, dtype {images.dtype}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"unexpected {split} labels outside 0..9")
    return images.reshape(count, 784), labels.astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, read the two splits and write the compressed npz."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data_dir",
        default=None,
        help="TFDS data directory with `mnist` prepared (default: TFDS's own, e.g. TFDS_DATA_DIR)",
    )
    parser.add_argument("--num_train", type=int, default=5000, help="first N train images")
    parser.add_argument("--num_test", type=int, default=1000, help="first N test images")
    parser.add_argument("--out", default=str(_DEFAULT_OUT), help="output .npz path")
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_test < 1:
        parser.error("--num_train and --num_test must be positive")

    train_images, train_labels = _first_images("train", args.num_train, args.data_dir)
    test_images, test_labels = _first_images("test", args.num_test, args.data_dir)
    source = (
        f"First {args.num_train} train and first {args.num_test} test images of MNIST "
        "(tensorflow_datasets `mnist`, TFDS order), uint8 0-255, flattened to 784. "
        "MNIST by Yann LeCun and Corinna Cortes, CC BY-SA 3.0 "
        "(https://creativecommons.org/licenses/by-sa/3.0/); this subset is a derivative "
        "distributed under the same license."
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source=np.array(source),
    )
    print(f"wrote {out} ({out.stat().st_size} bytes): {args.num_train} train, {args.num_test} test")


if __name__ == "__main__":
    main()
