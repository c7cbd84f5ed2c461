"""The IWAE gradient alone, as a pure function, in TensorFlow under XLA and in JAX's jit.

What a small training step costs in each framework before any library, optimizer or
variable enters: Burda et al.'s MNIST model (the peers' weights, `peers/jax_step.py`), the
gradient of the IWAE loss in the weights given as tensors, with the noise given too, so
both frameworks compute the same numbers. Each framework runs in its own process (as the
peers of throughput.py do), `--rounds` times in turn; a process warms up (trace, compile),
then times `--steps` calls, each waited for. The report gives the minimum and median over
the processes of each one's mean ms per call, their ratio (TensorFlow / JAX), and the two
losses and gradients (their projections on fixed random directions) on the same weights and
noise, which agree to float32 rounding.

    python benchmarks/gradient_floor.py --ks 1,64 --batch_size 20

JAX is optional (`pip install -e ".[peers]"`); without it only TensorFlow is timed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _harness  # the benchmarks' own modules, beside this script
import _peers

PREFIX = "FLOOR "
PROJECTIONS = 4  # random directions the two gradients are compared along


def weights_and_data(k: int, batch_size: int, seed: int):
    """The peers' initial weights [(kernel, bias)] (encoder then decoder), x and the noise."""
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in _peers.ENCODER + _peers.DECODER:  # Glorot-uniform kernels, zero biases
        limit = np.sqrt(6.0 / (n_in + n_out))
        layers.append((rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32),
                       np.zeros(n_out, np.float32)))  # fmt: skip
    x = (rng.random((batch_size, _harness.PIXELS)) < 0.5).astype(np.float32)
    eps = rng.standard_normal((k, batch_size, _peers.LATENT)).astype(np.float32)
    return layers, x, eps


def tf_gradient(layers):
    """(x, eps) -> (loss, gradients): TensorFlow, one XLA computation."""
    import tensorflow as tf
    from throughput_steps import iwae_loss_of_noise

    weights = [(tf.constant(kernel), tf.constant(bias)) for kernel, bias in layers]
    n = len(_peers.ENCODER)

    @tf.function(jit_compile=True, autograph=False)
    def gradient(weights, x, eps):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = iwae_loss_of_noise(weights[:n], weights[n:], _peers.MIN_SCALE, x, eps)
        return loss, tape.gradient(loss, weights)

    def run(x, eps):
        loss, grads = gradient(weights, x, eps)
        return float(loss), [g.numpy() for g in tf.nest.flatten(grads)]

    return lambda x, eps: gradient(weights, x, eps)[0].numpy(), run


def jax_gradient(layers):
    """(x, eps) -> (loss, gradients): JAX, one jit."""
    import jax
    import jax.numpy as jnp
    from peers.jax_step import iwae_loss

    n = len(_peers.ENCODER)
    pairs = [(jnp.asarray(kernel), jnp.asarray(bias)) for kernel, bias in layers]
    params = {"encoder": pairs[:n], "decoder": pairs[n:]}
    gradient = jax.jit(jax.value_and_grad(iwae_loss))

    def run(x, eps):
        loss, grads = gradient(params, x, eps)
        layers = [*grads["encoder"], *grads["decoder"]]  # [(kernel, bias)], as TensorFlow's
        return float(loss), [np.asarray(g) for g in jax.tree.leaves(layers)]

    return lambda x, eps: gradient(params, x, eps)[0].block_until_ready(), run


def child(framework: str, k: int, batch_size: int, steps: int, seed: int) -> dict:
    """In a fresh process: warm up, time `steps` calls, check the numbers."""
    layers, x, eps = weights_and_data(k, batch_size, seed)
    call, check = (tf_gradient if framework == "tensorflow" else jax_gradient)(layers)
    if framework == "jax":  # the inputs made once, on each framework's side
        import jax.numpy as jnp

        x, eps = jnp.asarray(x), jnp.asarray(eps)
    else:
        import tensorflow as tf

        x, eps = tf.constant(x), tf.constant(eps)
    for _ in range(10):
        call(x, eps)
    start = time.perf_counter()
    for _ in range(steps):
        call(x, eps)
    milliseconds = (time.perf_counter() - start) / steps * 1e3
    loss, gradients = check(x, eps)
    flat = np.concatenate([g.ravel() for g in gradients]).astype(np.float64)
    # The gradient's projections on fixed random directions: equal gradients, equal numbers.
    directions = np.random.default_rng(seed + 1).standard_normal((PROJECTIONS, flat.size))
    return {
        "milliseconds": milliseconds,
        "loss": loss,
        "gradient_norm": float(np.linalg.norm(flat)),
        "gradient_projections": (directions @ flat).tolist(),
    }


def measure(frameworks, k: int, batch_size: int, steps: int, rounds: int, seed: int) -> dict:
    """`rounds` child processes of each framework, in turn; min and median of each."""
    runs: dict = {f: [] for f in frameworks}
    for _ in range(rounds):
        for framework in frameworks:
            args = ["--child", framework, "--ks", str(k), "--batch_size", str(batch_size),
                    "--steps", str(steps), "--seed", str(seed)]  # fmt: skip
            done = subprocess.run([sys.executable, __file__, *args], capture_output=True,
                                  text=True)  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"the {framework} process failed:\n{done.stderr[-3000:]}")
            runs[framework].append(json.loads(done.stdout.split(PREFIX, 1)[1]))
    summary = {}
    for framework, results in runs.items():
        times = [r["milliseconds"] for r in results]
        summary[framework] = {"min_ms": min(times), "median_ms": float(np.median(times)),
                              "loss": results[0]["loss"],
                              "gradient_norm": results[0]["gradient_norm"],
                              "projections": results[0]["gradient_projections"]}  # fmt: skip
    if len(summary) == 2:
        tf_, jax_ = summary["tensorflow"], summary["jax"]
        summary["tensorflow_over_jax_min"] = tf_["min_ms"] / jax_["min_ms"]
        summary["tensorflow_over_jax_median"] = tf_["median_ms"] / jax_["median_ms"]
        summary["loss_difference"] = abs(tf_["loss"] - jax_["loss"])
        # |difference of the projections| / |gradient|: a relative gradient difference.
        summary["gradient_relative_difference"] = (
            max(abs(a - b) for a, b in zip(tf_["projections"], jax_["projections"], strict=True))
            / jax_["gradient_norm"]
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,64", help="K of the gradients timed.")
    parser.add_argument("--batch_size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300, help="Timed calls per process.")
    parser.add_argument("--rounds", type=int, default=3, help="Processes per framework.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/gradient_floor/results.json")
    parser.add_argument("--child", choices=["tensorflow", "jax"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    if args.child:
        print(PREFIX + json.dumps(child(args.child, ks[0], args.batch_size, args.steps, args.seed)))
        return
    try:
        import jax  # noqa: F401

        frameworks, note = ["tensorflow", "jax"], None
    except ImportError:
        frameworks, note = ["tensorflow"], "JAX is not installed: TensorFlow alone was timed"
        print(f"NOTE: {note}")
    results = {"benchmark": "gradient_floor", "config": vars(args), "note": note,
               "machine": _harness.machine_info(), "by_k": {}}  # fmt: skip
    for k in ks:
        summary = measure(frameworks, k, args.batch_size, args.steps, args.rounds, args.seed)
        results["by_k"][str(k)] = summary
        line = ", ".join(f"{f} {summary[f]['min_ms']:.3f} ms (median {summary[f]['median_ms']:.3f})"
                         for f in frameworks)  # fmt: skip
        ratio = summary.get("tensorflow_over_jax_min")
        print(f"K = {k}, B = {args.batch_size}: {line}"
              + ("" if ratio is None else f"; TensorFlow / JAX {ratio:.2f} (min)"))  # fmt: skip
    _harness.write_json(pathlib.Path(args.out), results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
