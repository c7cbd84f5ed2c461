"""Training speed of Burda et al.'s MNIST model: every objective, and the peers a user would pick.

Times the training step of `mco.make_train_step` for every objective of the library (each
name of `mco.objective_names()` and the variants of VARIANTS) at K = `--num_samples` and each
batch size of `--batch_sizes`, in `tf.function` with and without XLA; beside them a
hand-written TensorFlow IWAE step, TFP's doubly reparameterized IWAE step, and the same
model's IWAE and DReG steps in JAX (jit, optax) and PyTorch (eager and `torch.compile`), each
peer in its own process (benchmarks/peers/; skipped with a note when its framework is not
installed). Every configuration runs in the same interleaved rounds, with the matmul
ceiling of each size ([B K, 200] x [200, 784]) and `mco.log_marginal_estimate`. Also the IWAE
step over K in `--ks` for our best mode, the hand-written TensorFlow step and the peers,
the peak memory of one configuration per subprocess, and TFP's DReG against `mco.DReG`.
Writes `--out_dir`/results.json and prints the tables (throughput_report.py);
benchmarks/README.md describes the method.

    python benchmarks/throughput.py
    python benchmarks/throughput.py --peers=jax --ks=8,64 --rounds=3 --nomemory
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import pathlib
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

import mcobjectives as mco

# isort: split
# The benchmarks' own modules, beside this script.
import _harness
import _peers
import throughput_report as report
import throughput_steps as parts
from _harness import Timed
from _peers import matmul_key, step_key
from throughput_report import HANDWRITTEN, TFP_DREG

FLAGS = flags.FLAGS
# label -> (registered name, keyword arguments of `mco.make_objective`): every registered
# name with its default arguments (but SETTINGS), each followed by its VARIANTS.
SETTINGS = {"ciwae": ("ciwae", {"beta": 0.05}), "dreg": ("dreg", {"alpha": 0.0})}
VARIANTS = {
    "ciwae_learnable": ("ciwae", {"beta": 0.05, "learnable_beta": True}),
    "dreg_rws": ("dreg", {"alpha": 1.0}),
    "dreg_alpha": ("dreg", {"alpha": 0.5}),
    "jvi_dreg": ("jvi", {"dreg": True}),
    "vriwae_dreg": ("vriwae", {"dreg": True}),
}
OBJECTIVES = {}
# Burda's model has a Gaussian q: an objective for other leaves only (DisARM) is left out.
for _name in (
    n for n in mco.objective_names() if not hasattr(mco.objectives.OBJECTIVES[n], "leaf_families")
):
    OBJECTIVES[_name] = SETTINGS.get(_name, (_name, {}))
    OBJECTIVES.update({k: v for k, v in VARIANTS.items() if v[0] == _name})
MODES = {False: "tf", True: "xla"}
# Rough costs for the estimate printed at the start, in seconds on 2 quiet cores.
WARMUP_SECONDS = {"tf": 1.5, "xla": 4.0, "jit": 3.0, "eager": 1.0, "compile": 12.0}
MEMORY_PROBE_SECONDS, STEP_EFFICIENCY = 12.0, 0.4  # a probe; step GFLOP/s over matmul GFLOP/s
MEMORY_METHOD = (
    "one subprocess per configuration; VmHWM (peak resident set) of /proc/self/status, reset "
    "through /proc/self/clear_refs. first_call_mb: peak during the first step (tracing, "
    "compilation, the step) over the resident size before it; step_mb: peak during "
    "--memory_steps further steps over the resident size after the first (the working memory "
    "of a step beyond what the process keeps); held_mb: resident after the steps, once "
    "glibc's malloc_trim has returned the heap's free pages, over the size before the first "
    "call, split into anonymous memory (held_anon_mb) and file-backed pages, the libraries' "
    "code read in "
    "(held_file_mb). Peers: the same probe in their script"
)


def define_flags() -> None:
    """The command-line flags (defined only when run as a script, so the module imports cleanly)."""
    flags.DEFINE_list("batch_sizes", ["20", "100"], "Batch sizes to time.")
    flags.DEFINE_integer("num_samples", 64, "K, the sample budget of every objective.")
    flags.DEFINE_list("ks", ["1", "8", "64", "512"], "K of the IWAE scaling (ours and peers).")
    flags.DEFINE_integer("num_outer", 8, "M of MIWAE(M, K / M) and PIWAE(M, K / M).")
    flags.DEFINE_list("objectives", list(OBJECTIVES), "Library objectives to time.")
    flags.DEFINE_enum("jit", "both", ["both", "on", "off"], "jit_compile modes to time.")
    flags.DEFINE_list("peers", list(_peers.SCRIPTS), "Peer frameworks (skipped if missing).")
    flags.DEFINE_float("round_gflop", 12.0, "Work per configuration per round, in matmul GFLOP.")
    flags.DEFINE_integer("max_steps", 200, "At most this many steps per configuration per round.")
    flags.DEFINE_integer("rounds", 5, "Timing rounds (the median over rounds is reported).")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per configuration (trace, compile).")
    flags.DEFINE_integer("peer_timeout", 1800, "Seconds a peer may take to warm up or answer.")
    flags.DEFINE_bool("tfp", True, "Time TFP's DReG step and check it against mco.DReG.")
    flags.DEFINE_integer("check_seeds", 200, "Seeds per estimator in the TFP DReG check.")
    flags.DEFINE_integer("check_batch_size", 4, "Images in the TFP DReG check.")
    flags.DEFINE_integer("eval_num_samples", 5000, "K of log_marginal_estimate (0: skip it).")
    flags.DEFINE_integer("eval_chunk_size", 500, "Samples per chunk of log_marginal_estimate.")
    flags.DEFINE_integer("eval_batch_size", 20, "Test images per log_marginal_estimate call.")
    flags.DEFINE_bool("memory", True, "Measure peak memory, one subprocess per configuration.")
    memory_names = ["handwritten", "iwae", "dreg"]
    flags.DEFINE_list("memory_names", memory_names, "Steps whose memory is measured (at K, "
                      "every batch size and mode; the peers' IWAE too).")  # fmt: skip
    flags.DEFINE_integer("memory_steps", 3, "Steps after the first in each memory subprocess.")
    flags.DEFINE_integer("memory_workers", 2, "Memory subprocesses run at a time.")
    flags.DEFINE_enum(
        "data", "synthetic", ["synthetic", "mnist"],
        "synthetic: random binary images (pixels on with probability 1/2); mnist: "
        "mcobjectives.experimental.mnist.load_mnist('mnist'), binarized once with a fixed seed.",
    )  # fmt: skip
    flags.DEFINE_integer("seed", 0, "Seed of the weights, data and samples.")
    out_dir = str(_harness.RESULTS_DIR / "throughput")
    flags.DEFINE_string("out_dir", out_dir, "Where results.json goes.")
    flags.DEFINE_string("memory_probe", None, "Internal: name,K,batch_size,tf|xla of one step.")


def make_library_objective(label: str, k: int, m: int) -> mco.MCObjective:
    """The objective `label` with a budget of K samples (M bounds where it takes them)."""
    name, kwargs = OBJECTIVES[label]
    if "num_outer" in inspect.signature(mco.objectives.OBJECTIVES[name].__init__).parameters:
        kwargs = {**kwargs, "num_outer": m}
    return mco.make_objective(name, k, **kwargs)


# --------------------------------------------------------------------------- the steps
def make_runner(name: str, example_x, jit_modes, seed: int, k: int, m: int) -> parts.Runner:
    if name in OBJECTIVES:
        objective = make_library_objective(name, k, m)
        model = _harness.burda_model(objective, example_x, seed)
        optimizer = _harness.adam()
        steps = {jit: mco.make_train_step(model, optimizer, jit_compile=jit) for jit in jit_modes}
        return parts.Runner(
            name, steps, "mcobjectives", objective.gradient_path.value, repr(objective)
        )
    if name == HANDWRITTEN:
        loss_fn_of = parts.handwritten_iwae_loss
    elif name == TFP_DREG:
        loss_fn_of = lambda e, d, n: parts.tfp_dreg_loss(e, d, _harness.prior(), n)  # noqa: E731
    else:
        raise ValueError(f"unknown configuration {name!r}")
    return parts.custom_runner(name, loss_fn_of, example_x, jit_modes, seed, k)


def run_step(step, x) -> tf.Tensor:
    out = step(x)
    return out["loss"] if isinstance(out, dict) else out


def tracing_count(step) -> int | None:
    """How often a step's tf.function traced (None if the step does not say)."""
    count = getattr(step, "experimental_get_tracing_count", None)
    return None if count is None else count()


def units_for(gflop: float) -> int:
    """Steps (or calls) per round: about `--round_gflop` of work, 1 to `--max_steps`."""
    return int(min(FLAGS.max_steps, max(1, math.ceil(FLAGS.round_gflop / gflop))))


def remote_units(info: dict) -> int:
    """Steps per round of a peer's configuration (a step's `info` gets its GFLOP)."""
    if info["kind"] == "step":
        info["gflop"] = parts.step_gflop(
            info["gradient_kind"], info["batch_size"], info["num_samples"]
        )
    return units_for(info["gflop"])


def step_configs(runners: dict, batches: dict, jit_modes, log) -> list[Timed]:
    """Warms up every (step, K, batch size, jit mode); returns them as timed configurations."""
    timed = []
    for (name, k), runner in runners.items():
        for batch_size, xs in batches.items():
            for jit in jit_modes:
                step, key = runner.steps[jit], step_key(name, k, batch_size, MODES[jit])
                start = time.perf_counter()
                for i in range(FLAGS.warmup_steps):
                    run_step(step, xs[i % len(xs)]).numpy()
                log(
                    f"  warm-up {key} {runner.objective or ''}: {time.perf_counter() - start:.1f} s"
                )

                def run(n, step=step, xs=xs):
                    return [run_step(step, xs[i % len(xs)]) for i in range(n)][-1]

                info = {"kind": "step", "name": name, "framework": runner.framework}
                info |= {"num_samples": k, "batch_size": batch_size, "mode": MODES[jit]}
                info |= {"gradient_kind": runner.gradient_kind, "objective": runner.objective}
                info["gflop"] = parts.step_gflop(runner.gradient_kind, batch_size, k)
                timed.append(Timed(key, run, units_for(info["gflop"]), info))
    return timed


# ------------------------------------------------------------------------------ memory
def memory_probe(spec: str) -> dict:
    """Peak memory of one configuration (name,K,batch_size,tf|xla), in this fresh process."""
    name, k, batch_size, mode = spec.split(",")
    x = parts.batches_of(parts.load_images(FLAGS.data, FLAGS.seed)[0], int(batch_size), count=1)[0]
    jit = mode == "xla"
    step = make_runner(name, x, [jit], FLAGS.seed, int(k), FLAGS.num_outer).steps[jit]
    return _harness.peak_memory(
        lambda: run_step(step, x).numpy(),
        lambda: [run_step(step, x).numpy() for _ in range(FLAGS.memory_steps)],
    )


def measure_memory(configs: list[tuple[str, int, int, str]], peers, log=print) -> dict:
    """Peak memory of each configuration in a subprocess, `--memory_workers` at a time:
    ours through `memory_probe`, a peer's (name "jax_iwae", ...) through its script's."""
    commands = []
    for name, k, b, mode in configs:
        if name.partition("_")[0] in peers:
            commands.append(_peers.memory_command(name, k, b, mode, FLAGS.memory_steps, FLAGS.seed))
        else:
            passed = [
                f"--{n}={FLAGS[n].value}" for n in ("num_outer", "data", "seed", "memory_steps")
            ]
            commands.append(
                [sys.executable, __file__, *passed, f"--memory_probe={name},{k},{b},{mode}"]
            )
    results = {}
    outputs = _harness.run_commands(commands, FLAGS.memory_workers)
    for config, (code, out, err) in zip(configs, outputs, strict=True):
        key, memory = step_key(*config), _peers.read_memory(out)
        if code != 0 or memory is None:
            results[key] = {"error": err.strip().splitlines()[-3:]}
            log(f"  memory {key}: failed ({code})")
        else:
            results[key] = memory
            held = memory.get("held_mb")
            log(f"  memory {key}: first call +{memory['first_call_mb']:.0f} MB, step "
                f"+{memory['step_mb']:.0f} MB, held "
                + ("-" if held is None else f"+{held:.0f} MB"))  # fmt: skip
    return results


# -------------------------------------------------------------------------------- main
def check_flags() -> tuple[list[int], list[int], list[str], list[bool]]:
    batch_sizes, names = [int(b) for b in FLAGS.batch_sizes], list(FLAGS.objectives)
    ks = sorted({int(k) for k in FLAGS.ks})
    unknown = sorted(set(names) - set(OBJECTIVES))
    if unknown:
        raise app.UsageError(f"unknown --objectives {unknown}; choose from {list(OBJECTIVES)}")
    unknown = sorted(set(FLAGS.peers) - set(_peers.SCRIPTS))
    if unknown:
        raise app.UsageError(f"unknown --peers {unknown}; choose from {list(_peers.SCRIPTS)}")
    if FLAGS.num_samples < 2 or (ks and min(ks) < 1):
        raise app.UsageError("--num_samples must be >= 2 and --ks >= 1")
    for name in names:  # builds each objective once: bad settings fail before any timing
        try:
            make_library_objective(name, FLAGS.num_samples, FLAGS.num_outer)
        except (TypeError, ValueError) as e:
            raise app.UsageError(f"--objectives={name}: {e}") from e
    if min(batch_sizes) < 1 or min(FLAGS.rounds, FLAGS.warmup_steps, FLAGS.max_steps) < 1:
        raise app.UsageError("batch sizes, --rounds, --warmup_steps and --max_steps must be >= 1")
    jit_modes = {"both": [False, True], "on": [True], "off": [False]}[FLAGS.jit]
    return batch_sizes, ks, names, jit_modes


def estimate_seconds(items: list[tuple[str, float]], memory_modes: list[str]) -> dict:
    """A rough duration from (mode, GFLOP per step or call) of every configuration: the work
    at STEP_EFFICIENCY of a matmul's GFLOP/s measured now, warm-ups, memory probes, checks."""
    rows = max(int(b) for b in FLAGS.batch_sizes) * FLAGS.num_samples
    timed = parts.matmul_config("estimate", rows, 5)
    start = time.perf_counter()
    np.asarray(timed.run(5))
    gflops = 5 * timed.info["gflop"] / (time.perf_counter() - start)
    per_round = sum(units_for(g) * g for _, g in items) / (STEP_EFFICIENCY * gflops)
    warmup = sum(FLAGS.warmup_steps * g for _, g in items) / (STEP_EFFICIENCY * gflops)
    seconds = {
        "timed_rounds": FLAGS.rounds * per_round,
        "warm_up": warmup + sum(WARMUP_SECONDS.get(mode, 0.0) for mode, _ in items),
        "memory": sum(MEMORY_PROBE_SECONDS + WARMUP_SECONDS[mode] for mode in memory_modes)
        / FLAGS.memory_workers,
        "checks": 10.0 + 0.3 * FLAGS.check_seeds,
    }
    return {**seconds, "total": sum(seconds.values()), "matmul_gflop_per_second_now": gflops}


def main(argv) -> None:
    del argv
    tf.get_logger().setLevel("ERROR")  # many functions are traced on purpose; retraces are checked
    if FLAGS.memory_probe:
        _peers.emit({"memory": memory_probe(FLAGS.memory_probe)})
        return
    batch_sizes, ks, objective_names, jit_modes = check_flags()
    k = FLAGS.num_samples
    started = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    ceiling_rows = sorted({b * kk for b in batch_sizes for kk in {*ks, k}})
    eval_rows = FLAGS.eval_batch_size * min(FLAGS.eval_chunk_size, FLAGS.eval_num_samples)
    ceiling_rows = sorted({*ceiling_rows, eval_rows} if FLAGS.eval_num_samples else ceiling_rows)
    arguments = _peers.peer_arguments(
        sorted({*ks, k}), batch_sizes, k, ceiling_rows, FLAGS.warmup_steps, FLAGS.seed
    )
    peers = {name: _peers.Peer(name, arguments) for name in FLAGS.peers}  # they warm up now
    with contextlib.ExitStack() as stack:
        for peer in peers.values():
            stack.callback(peer.close)
        results = run_benchmark(
            batch_sizes, ks, objective_names, jit_modes, peers, ceiling_rows, log
        )
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["seconds_total"] = time.perf_counter() - started
    path = pathlib.Path(FLAGS.out_dir) / "results.json"
    _harness.write_json(path, results)
    report.print_summary(results)
    print(f"wrote {path} ({results['seconds_total']:.0f} s)")


def gradient_kind(name: str, k: int) -> str:
    if name in OBJECTIVES:
        return make_library_objective(name, k, FLAGS.num_outer).gradient_path.value
    return "total"


def run_benchmark(batch_sizes, ks, objective_names, jit_modes, peers, ceiling_rows, log) -> dict:
    """Everything but the writing: checks, warm-ups, the rounds, the tables, memory."""
    k, m, seed = FLAGS.num_samples, FLAGS.num_outer, FLAGS.seed
    train, test, data_description = parts.load_images(FLAGS.data, seed)
    log(f"data: {data_description}")
    batches = {b: parts.batches_of(train, b) for b in batch_sizes}
    names = [HANDWRITTEN] + ([TFP_DREG] if FLAGS.tfp else []) + objective_names
    names += [] if "iwae" in names else ["iwae"]  # the reference of every ratio
    # The scaling in K: our IWAE, and the hand-written step of the same math, which tells
    # the library's cost at each K from TensorFlow's own.
    runner_keys = [(n, k) for n in names]
    runner_keys += [(n, kk) for kk in ks if kk != k for n in ("iwae", HANDWRITTEN)]
    kinds = {(n, kk): gradient_kind(n, kk) for n, kk in runner_keys}
    items = [
        (MODES[j], parts.step_gflop(kinds[key], b, key[1]))
        for key in runner_keys for b in batch_sizes for j in jit_modes
    ]  # fmt: skip
    items += [("matmul", parts.matmul_gflop(r)) for r in ceiling_rows for _ in [0, *peers]]
    if FLAGS.eval_num_samples > 0:
        gflop = parts.eval_gflop(FLAGS.eval_batch_size, FLAGS.eval_num_samples)
        items += [(MODES[j], gflop) for j in jit_modes]
    memory_configs = [
        (n, k, b, MODES[j])
        for n in FLAGS.memory_names if n in names for b in batch_sizes for j in jit_modes
    ]  # fmt: skip
    for peer in peers:
        planned = _peers.planned_steps(peer, ks, k, batch_sizes)
        items += [(mode, parts.step_gflop("total", b, kk)) for _, kk, b, mode in planned]
        memory_configs += [c for c in planned if c[0] == f"{peer}_iwae" and c[1] == k]
    estimate = estimate_seconds(items, [c[3] for c in memory_configs] if FLAGS.memory else [])
    minutes = {n: v / 60 for n, v in estimate.items() if n != "matmul_gflop_per_second_now"}
    log(
        f"estimated duration: about {minutes.pop('total'):.0f} minutes ("
        + ", ".join(f"{n.replace('_', ' ')} {v:.1f}" for n, v in minutes.items())
        + f"; at {estimate['matmul_gflop_per_second_now']:.0f} GFLOP/s of matmul now)"
    )
    results: dict = {
        "benchmark": "throughput",
        "config": _harness.flag_values(exclude=("memory_probe",)),
        "data": data_description,
        "machine": _harness.machine_info(),
        "estimate_seconds": estimate,
    }

    # Correctness checks (cheap), while the peers warm up.
    x_check = parts.batches_of(test, FLAGS.check_batch_size, count=1)[0]
    results["handwritten_check"] = parts.handwritten_check(x_check, k, seed)
    log(f"hand-written vs library IWAE, same noise: {results['handwritten_check']}")
    if FLAGS.tfp and FLAGS.check_seeds >= 2:
        results["tfp_check"] = parts.tfp_check(x_check, k, FLAGS.check_seeds, seed)
        log(f"TFP DReG vs mco.DReG: agree = {results['tfp_check']['agree']}")

    # Every configuration, warmed up, then timed in interleaved rounds.
    example = batches[batch_sizes[0]][0]
    runners = {(n, kk): make_runner(n, example, jit_modes, seed, kk, m) for n, kk in runner_keys}
    timed: list = step_configs(runners, batches, jit_modes, log)
    traces = {(key, j): tracing_count(r.steps[j]) for key, r in runners.items() for j in jit_modes}
    for rows in ceiling_rows:
        timed.append(
            parts.matmul_config(matmul_key(rows), rows, units_for(parts.matmul_gflop(rows)))
        )
    if FLAGS.eval_num_samples > 0:
        images = parts.batches_of(test, FLAGS.eval_batch_size, count=1)[0].numpy()
        args = {n: FLAGS[f"eval_{n}"].value for n in ("num_samples", "chunk_size")}
        for j in jit_modes:
            key = f"log_marginal/{MODES[j]}"
            timed.append(parts.log_marginal_config(key, images, args, seed, j))
            log(f"  warm-up {key}")
    for peer in peers.values():
        log(f"waiting for the {peer.name} peer to warm up")
        if peer.wait_ready(FLAGS.peer_timeout) is not None:
            timed += _peers.remote_configs(peer, remote_units, parts.matmul_gflop)
    log(f"timing {len(timed)} configurations in {FLAGS.rounds} rounds")
    _peers.interleaved_rounds(timed, FLAGS.rounds, seed, FLAGS.peer_timeout, log)
    results["peers"] = {}
    for name, peer in peers.items():
        finished = peer.finish()
        results["peers"][name] = {"info": peer.info, "note": peer.note, **finished}
    results["peer_notes"] = [p.note for p in peers.values() if p.note]
    for note in results["peer_notes"]:
        log(f"NOTE: {note}")

    results["retraced_during_timing"] = [
        f"{n}/k{kk}/{MODES[j]}"
        for ((n, kk), j), count in traces.items()
        if tracing_count(runners[n, kk].steps[j]) != count
    ]
    results.update(report.tables(timed, FLAGS.rounds, k, ks, batch_sizes, OBJECTIVES))
    if FLAGS.memory:
        ready = {name for name, p in peers.items() if p.info is not None and p.note is None}
        configs = [c for c in memory_configs if c[0].split("_")[0] not in peers or
                   c[0].split("_")[0] in ready]  # fmt: skip
        log(f"peak memory: {len(configs)} subprocesses, {FLAGS.memory_workers} at a time")
        results["memory"] = measure_memory(configs, peers, log)
        results["memory_method"] = MEMORY_METHOD
    return results


if __name__ == "__main__":
    define_flags()
    app.run(main)
