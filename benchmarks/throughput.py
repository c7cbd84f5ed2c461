"""Training throughput of Burda et al.'s MNIST model for every objective, against two baselines.

Times the training steps per second of `mco.make_train_step` at each batch size of
`--batch_sizes` with K = `--num_samples` for every objective of the library (each name of
`mco.objective_names()` and the variants of VARIANTS), with and without XLA, side by side
with a hand-written TensorFlow IWAE step and TFP's doubly reparameterized IWAE step on the
same networks, optimizer and data, in interleaved rounds; and the noise of one step, the
diagnostic steps (`throughput_steps.py`), a matmul ceiling, log p^(x), the peak memory of
each configuration (one subprocess each) and TFP's DReG against `mco.DReG`. Writes
`--out_dir`/results.json and prints a summary; benchmarks/README.md describes the method.

    python benchmarks/throughput.py
    python benchmarks/throughput.py --rounds=3 --eval_images=500 --nomemory
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import app, flags

import mcobjectives as mco
from mcobjectives import sampling

# isort: split
# The benchmarks' own modules, beside this script.
import _harness
import throughput_report as report
import throughput_steps as parts
from _harness import LATENT_SIZE, Timed
from throughput_report import HANDWRITTEN, TFP_DREG, config_key

FLAGS = flags.FLAGS
# label -> (registered name, keyword arguments of `mco.make_objective`): every registered
# name with its default arguments (but SETTINGS), each followed by its VARIANTS.
SETTINGS = {"ciwae": ("ciwae", {"beta": 0.05}), "dreg": ("dreg", {"alpha": 0.0})}
VARIANTS = {
    "ciwae_learnable": ("ciwae", {"beta": 0.05, "learnable_beta": True}),
    "dreg_rws": ("dreg", {"alpha": 1.0}),
    "jvi_dreg": ("jvi", {"dreg": True}),
}
OBJECTIVES = {}
for _name in mco.objective_names():
    OBJECTIVES[_name] = SETTINGS.get(_name, (_name, {}))
    OBJECTIVES.update({k: v for k, v in VARIANTS.items() if v[0] == _name})
DIAGNOSTIC_STEPS = (
    "iwae_tfnoise",
    "iwae_philoxbits",
    "handwritten_libnoise",
    "handwritten_tfpbernoulli",
)


MEMORY_METHOD = (
    "one subprocess per configuration; VmHWM (peak resident set) of /proc/self/status, reset "
    "through /proc/self/clear_refs. first_call_mb: peak during the first step (tracing, XLA "
    "compilation, the step) over the resident size before it; step_mb: peak during "
    "--memory_steps further steps over the resident size after the first (the working memory "
    "of a step beyond what the process keeps)"
)


def define_flags() -> None:
    """The command-line flags (defined only when run as a script, so the module imports cleanly)."""
    flags.DEFINE_list("batch_sizes", ["20", "100"], "Batch sizes to time.")
    flags.DEFINE_integer("num_samples", 64, "K, the sample budget of every objective.")
    flags.DEFINE_integer("num_outer", 8, "M of MIWAE(M, K / M) and PIWAE(M, K / M).")
    flags.DEFINE_list("objectives", list(OBJECTIVES), "Library objectives to time.")
    flags.DEFINE_enum("jit", "both", ["both", "on", "off"], "jit_compile modes to time.")
    flags.DEFINE_integer("steps", 5, "Training steps (noise draws) per configuration per round.")
    flags.DEFINE_integer("rounds", 6, "Timing rounds (the median over rounds is reported).")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per configuration (trace, compile).")
    flags.DEFINE_bool("tfp", True, "Time TFP's DReG step and check it against mco.DReG.")
    flags.DEFINE_bool("diagnostics", True, "Time the noise-swapped steps and the noise alone.")
    flags.DEFINE_integer("check_seeds", 200, "Seeds per estimator in the TFP DReG check.")
    flags.DEFINE_integer("check_batch_size", 4, "Images in the TFP DReG check.")
    flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n matmul giving the ceiling.")
    flags.DEFINE_integer("eval_images", 10000, "Test images for log p^(x) (0: skip).")
    flags.DEFINE_integer("eval_num_samples", 5000, "K of the log p^(x) estimate.")
    flags.DEFINE_integer("eval_chunk_size", 500, "Samples per chunk of the log p^(x) estimate.")
    flags.DEFINE_integer("eval_batch_size", 100, "Test images per log p^(x) batch.")
    flags.DEFINE_bool("memory", True, "Measure peak memory, one subprocess per configuration.")
    flags.DEFINE_integer("memory_steps", 3, "Steps after the first in each memory subprocess.")
    flags.DEFINE_integer("memory_workers", 2, "Memory subprocesses run at a time.")
    flags.DEFINE_enum(
        "data", "synthetic", ["synthetic", "mnist"],
        "synthetic: random binary images (pixels on with probability 1/2); mnist: "
        "examples/mnist_data.load_mnist('mnist'), binarized once with a fixed seed.",
    )  # fmt: skip
    flags.DEFINE_integer("seed", 0, "Seed of the weights, data and samples.")
    out_dir = str(_harness.RESULTS_DIR / "throughput")
    flags.DEFINE_string("out_dir", out_dir, "Where results.json goes.")
    flags.DEFINE_string("memory_probe", None, "Internal: name,batch_size,jit of one configuration.")


def make_library_objective(label: str, k: int, m: int) -> mco.MCObjective:
    """The objective `label` with a budget of K samples (M bounds where it takes them)."""
    name, kwargs = OBJECTIVES[label]
    if "num_outer" in inspect.signature(mco.registry.OBJECTIVES[name].__init__).parameters:
        kwargs = {**kwargs, "num_outer": m}
    return mco.make_objective(name, k, **kwargs)


# --------------------------------------------------------------------------- the steps
@dataclasses.dataclass
class Runner:
    """One model with its step functions, one per jit mode."""

    name: str
    steps: dict  # jit (bool) -> step(x)
    gradient_kind: str  # "total", "split" or "score": the objective's `mco.GradientPath`
    trace_context: Callable = contextlib.nullcontext
    objective: str | None = None  # repr of the library's objective


def custom_runner(name, loss_fn_of, example_x, jit_modes, seed, num_samples) -> Runner:
    """A step with `make_train_step`'s structure around `loss_fn_of(encoder, decoder, K)`: the
    seed folded from the step counter, the gradients alone under XLA, Adam outside."""
    encoder, decoder = _harness.burda_networks(example_x, seed)
    variables = decoder.trainable_variables + encoder.trainable_variables
    optimizer = _harness.adam()
    optimizer.build(variables)
    loss_fn = loss_fn_of(encoder, decoder, num_samples)
    base_seed = sampling.stateless_seed(seed)

    def make_step(jit):  # autograph=False: no Python control flow on tensors here
        @tf.function(jit_compile=jit, autograph=False)
        def gradients(x, step_seed):
            with tf.GradientTape() as tape:
                loss = loss_fn(x, step_seed)
            return tape.gradient(loss, variables), loss

        @tf.function(autograph=False)
        def step(x):
            counter = tf.cast(optimizer.iterations, tf.int64)
            step_seed = tf.random.experimental.stateless_fold_in(base_seed, counter)
            grads, loss = gradients(x, tf.cast(step_seed, tf.int32))
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            return loss

        return step

    return Runner(name, {jit: make_step(jit) for jit in jit_modes}, "total")


def make_runner(name: str, example_x, jit_modes, seed: int, k: int, m: int) -> Runner:
    if name in OBJECTIVES or name in ("iwae_tfnoise", "iwae_philoxbits"):
        objective = make_library_objective(name, k, m) if name in OBJECTIVES else mco.IWAE(k)
        noise = {"iwae_tfnoise": parts.tf_normal, "iwae_philoxbits": parts.bits_ndtri_normal}.get(
            name
        )
        model = _harness.burda_model(objective, example_x, seed)
        optimizer = _harness.adam()
        step_fns = {
            jit: mco.make_train_step(model, optimizer, jit_compile=jit) for jit in jit_modes
        }
        context = (lambda: parts.library_noise(noise)) if noise else contextlib.nullcontext
        return Runner(name, step_fns, objective.gradient_path.value, context, repr(objective))
    options = {
        HANDWRITTEN: {},
        "handwritten_libnoise": {"noise": sampling.standard_normal},
        "handwritten_tfpbernoulli": {"tfp_bernoulli": True},
    }
    if name in options:
        loss_fn_of = lambda e, d, n: parts.handwritten_iwae_loss(e, d, n, **options[name])  # noqa: E731
    elif name == TFP_DREG:
        loss_fn_of = lambda e, d, n: parts.tfp_dreg_loss(e, d, _harness.prior(), n)  # noqa: E731
    else:
        raise ValueError(f"unknown configuration {name!r}")
    return custom_runner(name, loss_fn_of, example_x, jit_modes, seed, k)


def run_step(step, x) -> tf.Tensor:
    out = step(x)
    return out["loss"] if isinstance(out, dict) else out


def tracing_count(step) -> int | None:
    """How often a step's tf.function traced (None if the step does not say)."""
    count = getattr(step, "experimental_get_tracing_count", None)
    return None if count is None else count()


# ------------------------------------------------------------------ the configurations
def step_configs(runners: dict, batches: dict, jit_modes, log) -> list[Timed]:
    """Warms up every (step, batch size, jit mode); returns them as timed configurations."""
    timed = []
    for name, runner in runners.items():
        for batch_size, xs in batches.items():
            for jit in jit_modes:
                step, key = runner.steps[jit], config_key(name, batch_size, jit)
                start = time.perf_counter()
                with runner.trace_context():
                    for i in range(FLAGS.warmup_steps):
                        run_step(step, xs[i % len(xs)]).numpy()
                log(
                    f"  warm-up {key} {runner.objective or ''}: {time.perf_counter() - start:.1f} s"
                )

                def run(n, step=step, xs=xs):
                    return [run_step(step, xs[i % len(xs)]) for i in range(n)][-1]

                info = {"kind": "step", "name": name, "batch_size": batch_size, "jit_compile": jit}
                timed.append(Timed(key, run, FLAGS.steps, info))
    return timed


# -------------------------------------------------------------------------------- main
def load_images(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, test, description): float32 binary images [N, 784]."""
    rng = np.random.default_rng(seed)
    if kind == "synthetic":
        half = np.full((1000, 784), 0.5, np.float32)
        train, test = _harness.binarize(half, rng), _harness.binarize(half, rng)
        return train, test, "synthetic random binary images (each pixel on with probability 1/2)"
    data = _harness.load_mnist("mnist", log=lambda s: print(s, flush=True))
    if data.binarized:
        return data.train, data.test, data.source
    train, test = (_harness.binarize(images, rng) for images in (data.train, data.test))
    return train, test, f"{data.source} (binarized once with seed {seed})"


def batches_of(images: np.ndarray, batch_size: int, count: int = 8) -> list[tf.Tensor]:
    """`count` consecutive batches, wrapping around the images."""
    indices = np.arange(count * batch_size).reshape(count, batch_size) % len(images)
    return [tf.constant(images[i]) for i in indices]


def memory_probe(spec: str) -> dict:
    """Peak memory of one configuration (name,batch_size,on|off), in this fresh process."""
    name, batch_size, jit = spec.split(",")
    x = batches_of(load_images(FLAGS.data, FLAGS.seed)[0], int(batch_size), count=1)[0]
    runner = make_runner(name, x, [jit == "on"], FLAGS.seed, FLAGS.num_samples, FLAGS.num_outer)
    step = runner.steps[jit == "on"]

    def first():
        with runner.trace_context():
            run_step(step, x).numpy()

    return _harness.peak_memory(
        first, lambda: [run_step(step, x).numpy() for _ in range(FLAGS.memory_steps)]
    )


def measure_memory(configs: list[tuple[str, int, bool]], log=print) -> dict:
    """`memory_probe` of each configuration in a subprocess, `--memory_workers` at a time."""
    passthrough = [
        f"--{n}={FLAGS[n].value}"
        for n in ("num_samples", "num_outer", "memory_steps", "data", "seed")
    ]
    specs = [f"{name},{b},{'on' if jit else 'off'}" for name, b, jit in configs]
    commands = [[sys.executable, __file__, f"--memory_probe={s}", *passthrough] for s in specs]
    results = {}
    for config, (code, out, err) in zip(
        configs, _harness.run_commands(commands, FLAGS.memory_workers), strict=True
    ):
        key = config_key(*config)
        lines = [line for line in out.splitlines() if line.startswith("MEMORY ")]
        if code != 0 or not lines:
            results[key] = {"error": err.strip().splitlines()[-3:]}
            log(f"  memory {key}: failed ({code})")
        else:
            results[key] = json.loads(lines[-1][len("MEMORY ") :])
            first, step = results[key]["first_call_mb"], results[key]["step_mb"]
            log(f"  memory {key}: first call +{first:.0f} MB, step +{step:.0f} MB")
    return results


def check_flags() -> tuple[list[int], list[str], list[bool]]:
    batch_sizes, names = [int(b) for b in FLAGS.batch_sizes], list(FLAGS.objectives)
    unknown = sorted(set(names) - set(OBJECTIVES))
    if unknown:
        raise app.UsageError(f"unknown --objectives {unknown}; choose from {list(OBJECTIVES)}")
    if FLAGS.num_samples < 2:
        raise app.UsageError("--num_samples must be >= 2")
    for name in names:  # builds each objective once: bad settings fail before any timing
        try:
            make_library_objective(name, FLAGS.num_samples, FLAGS.num_outer)
        except (TypeError, ValueError) as e:
            raise app.UsageError(f"--objectives={name}: {e}") from e
    if min(batch_sizes) < 1 or min(FLAGS.steps, FLAGS.rounds, FLAGS.warmup_steps) < 1:
        raise app.UsageError("batch sizes, --steps, --rounds and --warmup_steps must be >= 1")
    return batch_sizes, names, {"both": [False, True], "on": [True], "off": [False]}[FLAGS.jit]


def main(argv) -> None:
    del argv
    tf.get_logger().setLevel("ERROR")  # many functions are traced on purpose; retraces are checked
    if FLAGS.memory_probe:
        print("MEMORY " + json.dumps(memory_probe(FLAGS.memory_probe)), flush=True)
        return
    batch_sizes, objective_names, jit_modes = check_flags()
    k, m, seed = FLAGS.num_samples, FLAGS.num_outer, FLAGS.seed
    started = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    train, test, data_description = load_images(FLAGS.data, seed)
    log(f"data: {data_description}")
    batches = {b: batches_of(train, b) for b in batch_sizes}
    names = [HANDWRITTEN] + ([TFP_DREG] if FLAGS.tfp else []) + objective_names
    names += [] if "iwae" in names else ["iwae"]  # the reference of the DReG and JVI ratios
    names += list(DIAGNOSTIC_STEPS) if FLAGS.diagnostics else []
    results: dict = {
        "benchmark": "throughput",
        "config": _harness.flag_values(exclude=("memory_probe",)),
        "data": data_description,
        "machine": _harness.machine_info(),
    }

    # Correctness checks (cheap).
    x_check = batches_of(test, FLAGS.check_batch_size, count=1)[0]
    results["handwritten_check"] = parts.handwritten_check(x_check, k, seed)
    log(f"hand-written vs library IWAE, same noise: {results['handwritten_check']}")
    if FLAGS.tfp and FLAGS.check_seeds >= 2:
        results["tfp_check"] = parts.tfp_check(x_check, k, FLAGS.check_seeds, seed)
        log(f"TFP DReG vs mco.DReG: agree = {results['tfp_check']['agree']}")

    # Every configuration, warmed up, then timed in interleaved rounds.
    runners = {
        name: make_runner(name, batches[batch_sizes[0]][0], jit_modes, seed, k, m) for name in names
    }
    timed = step_configs(runners, batches, jit_modes, log)
    traces = {
        (n, jit): tracing_count(r.steps[jit]) for n, r in runners.items() for jit in jit_modes
    }
    size, rows = FLAGS.matmul_size, max(batch_sizes) * k
    timed.append(parts.matmul_config(f"matmul/{size}", size, size, size, 3))
    key = f"matmul/decoder_output_b{max(batch_sizes)}"
    timed.append(parts.matmul_config(key, rows, 200, 784, 10))
    agreement = {}
    if FLAGS.diagnostics:
        timed += parts.noise_configs(batch_sizes, jit_modes, k, seed, FLAGS.steps)
        fns = parts.noise_functions([k, batch_sizes[-1], LATENT_SIZE])
        agreement = parts.noise_agreement(fns, tf.constant([seed, 11], tf.int32))
    log(f"timing {len(timed)} configurations in {FLAGS.rounds} rounds")
    _harness.time_rounds(timed, FLAGS.rounds, seed, log)

    retraced = [
        f"{name}/{'xla' if jit else 'tf'}"
        for (name, jit), count in traces.items()
        if tracing_count(runners[name].steps[jit]) != count
    ]
    results.update(report.tables(timed, runners, k, OBJECTIVES), noise_agreement=agreement)
    results["retraced_during_timing"] = retraced
    results["retrace_checked"] = [
        f"{n}/{'xla' if jit else 'tf'}" for (n, jit), c in traces.items() if c is not None
    ]
    if FLAGS.eval_images > 0:
        repeats = math.ceil(FLAGS.eval_images / len(test))
        images = np.concatenate([test] * repeats)[: FLAGS.eval_images]
        log(f"log p^(x) of {len(images)} images, K = {FLAGS.eval_num_samples}")
        args = {n: FLAGS[f"eval_{n}"].value for n in ("num_samples", "chunk_size", "batch_size")}
        results["log_marginal"] = parts.time_log_marginal(images, args, seed)
        results["log_marginal"]["test_images_repeated"] = repeats > 1
    if FLAGS.memory:
        configs = [
            (n, b, jit)
            for n in names
            if n not in DIAGNOSTIC_STEPS
            for b in batch_sizes
            for jit in jit_modes
        ]
        log(f"peak memory: {len(configs)} subprocesses, {FLAGS.memory_workers} at a time")
        results["memory"] = measure_memory(configs, log)
        results["memory_method"] = MEMORY_METHOD

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["seconds_total"] = time.perf_counter() - started
    path = pathlib.Path(FLAGS.out_dir) / "results.json"
    _harness.write_json(path, results)
    report.print_summary(results)
    print(f"wrote {path} ({results['seconds_total']:.0f} s)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
