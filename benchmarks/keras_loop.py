"""The Keras loop beside the hand-written one: `fit` with `compile(steps_per_execution=N)`
and `make_train_step(..., steps_per_call=N)`, per training step, side by side in one run.

Burda et al.'s one-stochastic-layer MNIST model (`_harness.burda_model`, 784-200-200-50)
trained with IWAE(K) and Adam, XLA (jit_compile=True) throughout, on synthetic binary
images. Every configuration gets its own model from the same seed. A round times
`--steps` steps of each configuration in turn (a `fit` call of that many steps, or that
many steps of a `make_train_step` loop ending with one host read of the last logs: "loop"
over batches already in memory as tensors, "data loop" over the `tf.data` pipeline that
`fit` reads, as a user's loop would); the
minimum over `--rounds` rounds is reported, with the ratios the issue's targets name:

  fit(spe=1) / loop(spc=1)       `fit`'s cost per step over the hand-written loop's
  fit(spe=1) / data loop(spc=1)  the same against a loop over fit's own tf.data pipeline
  fit(spe=10) / fit(spe=1)       what ten steps per execution save in `fit`
  loop(spc=10) / loop(spc=1)     the same for `make_train_step`

Run (from the repository root; a few minutes on 2 cores):

  python benchmarks/keras_loop.py --ks 1,64 --batch_size 20 --steps 200 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import mcobjectives as mco

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _harness  # the benchmarks' own module, beside this script

DISTINCT_BATCHES = 10  # cycled over: the data a step sees does not change its cost


def images(batch_size: int, seed: int) -> np.ndarray:
    """DISTINCT_BATCHES batches of synthetic binary images (pixels on with probability 1/2)."""
    rng = np.random.default_rng(seed)
    half = np.full((DISTINCT_BATCHES * batch_size, _harness.PIXELS), 0.5, np.float32)
    return _harness.binarize(half, rng)


def pipeline(x: np.ndarray, batch_size: int, steps: int, stacked: int = 1) -> tf.data.Dataset:
    """`steps` batches of x, the same every pass (cached), prefetched; with `stacked` > 1,
    `stacked` batches stacked per element (`make_train_step`'s steps_per_call)."""
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch_size, drop_remainder=True)
    dataset = dataset.repeat().take(steps)
    if stacked > 1:
        dataset = dataset.batch(stacked, drop_remainder=True)
    return dataset.cache().prefetch(tf.data.AUTOTUNE)


def fit_runner(k: int, x: np.ndarray, batch_size: int, spe: int, steps: int, seed: int):
    """A function of no argument running `steps` steps of `fit`, warmed up (traced, compiled)."""
    model = _harness.burda_model(mco.IWAE(k), x[:batch_size], seed)
    model.compile(_harness.adam(), steps_per_execution=spe, jit_compile=True)
    dataset = pipeline(x, batch_size, steps)

    def run():
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)

    run()
    return run


def loop_runner(
    k: int, x: np.ndarray, batch_size: int, spc: int, steps: int, seed: int, data: bool = False
):
    """A function of no argument running `steps` steps of a `make_train_step` loop, over
    tensors in memory or (`data`) over fit's `tf.data` pipeline."""
    if steps % spc:
        raise ValueError(f"--steps {steps} must be a multiple of steps_per_call {spc}")
    model = _harness.burda_model(mco.IWAE(k), x[:batch_size], seed)
    step = mco.make_train_step(model, _harness.adam(), jit_compile=True, steps_per_call=spc)
    if data:
        batches = pipeline(x, batch_size, steps, spc)
    else:  # tensors in memory, cycled over
        per_call = x.reshape(-1, batch_size, x.shape[-1])
        if spc > 1:
            index = np.arange(spc * DISTINCT_BATCHES) % DISTINCT_BATCHES
            per_call = per_call[index].reshape(DISTINCT_BATCHES, spc, batch_size, x.shape[-1])
        calls = [tf.constant(b) for b in per_call]
        batches = [calls[i % len(calls)] for i in range(steps // spc)]

    def run():
        logs = None
        for batch in batches:
            logs = step(batch)
        logs["loss"].numpy()

    run()
    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,64", help="K of IWAE(K), comma-separated.")
    parser.add_argument("--batch_size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200, help="Steps per configuration per round.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds; the minimum is reported.")
    parser.add_argument("--blocks", default="1,10", help="N of steps_per_execution/steps_per_call.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="Optional JSON file for the results.")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    blocks = [int(n) for n in args.blocks.split(",")]
    x = images(args.batch_size, args.seed)
    results = {"machine": _harness.machine_info(), "args": vars(args), "ms_per_step": {}}
    for k in ks:
        runners = {}
        for n in blocks:
            runners[f"fit(spe={n})"] = fit_runner(k, x, args.batch_size, n, args.steps, args.seed)
            runners[f"loop(spc={n})"] = loop_runner(k, x, args.batch_size, n, args.steps, args.seed)
            runners[f"data loop(spc={n})"] = loop_runner(
                k, x, args.batch_size, n, args.steps, args.seed, data=True
            )
        times = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():  # interleaved: a slow spell hits every one
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
        best = {name: min(values) for name, values in times.items()}
        results["ms_per_step"][f"K={k}"] = {"min": best, "rounds": times}
        print(f"K = {k}, B = {args.batch_size}: ms per step (min of {args.rounds} x {args.steps})")
        for name, value in best.items():
            print(
                f"  {name:19s} {value:8.3f}   rounds: " + " ".join(f"{t:.2f}" for t in times[name])
            )
        low, high = blocks[0], blocks[-1]
        ratios = {
            f"fit(spe={low}) / loop(spc={low})": best[f"fit(spe={low})"] / best[f"loop(spc={low})"],
            f"fit(spe={high}) / loop(spc={high})": best[f"fit(spe={high})"]
            / best[f"loop(spc={high})"],
            f"fit(spe={low}) / data loop(spc={low})": best[f"fit(spe={low})"]
            / best[f"data loop(spc={low})"],
            f"fit(spe={high}) / data loop(spc={high})": best[f"fit(spe={high})"]
            / best[f"data loop(spc={high})"],
            f"fit(spe={high}) / fit(spe={low})": best[f"fit(spe={high})"] / best[f"fit(spe={low})"],
            f"loop(spc={high}) / loop(spc={low})": best[f"loop(spc={high})"]
            / best[f"loop(spc={low})"],
        }
        results["ms_per_step"][f"K={k}"]["ratios"] = ratios
        for name, value in ratios.items():
            print(f"  {name:38s} {value:.3f}")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(_harness.jsonable(results), indent=1))
    return results


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
