"""The peers of throughput.py: JAX and PyTorch steps of the same model, each in its own process.

`benchmarks/peers/jax_step.py` and `benchmarks/peers/torch_step.py` build Burda et al.'s MNIST
model, its IWAE and DReG losses and Adam in their framework; this module holds what they and
throughput.py share, and imports neither TensorFlow nor a peer's framework.

* The peer side: `parse_args` (the flags of every peer script), `skip` (a peer whose
  framework is not installed says so and exits), `run_peer` (build the configurations, warm
  them up, then time them: by itself, or on the parent's command), `synthetic_batches`.
* The parent side: `Peer` (one peer process: started at once, so that its compilation
  overlaps the parent's, then ready, run, finish), `Remote` (a configuration timed in a
  peer process) and `interleaved_rounds`, which times the parent's own configurations
  (`_harness.Timed`) and the peers' in one shuffled order per round.

A peer writes JSON objects on stdout, one a line, each after the prefix "PEER " (other
output is ignored): {"skipped": why} and nothing else when its framework is missing; else
{"ready": true, ...} once every configuration is warmed up. Started with --serve it then
reads commands on stdin, one JSON object a line: {"run": key, "steps": n} runs n steps of
a configuration and answers {"rate": steps per second} (timed in the peer, around the steps
alone); {"finish": true} answers with its peak resident memory and exits. Without --serve
it times `--rounds` rounds itself and writes one line with every rate ({"results": ...}).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

# isort: split
import _harness
from _harness import Timed

PREFIX = "PEER "
# Burda et al.'s one-layer MNIST model, as every peer builds it: (inputs, outputs) per layer.
LATENT, MIN_SCALE = 50, 1e-4
ENCODER = ((784, 200), (200, 200), (200, 2 * LATENT))
DECODER = ((LATENT, 200), (200, 200), (200, 784))
PEERS_DIR = _harness.ROOT / "benchmarks" / "peers"
# Peer -> its script, and the extra whose installation it needs.
SCRIPTS = {"jax": "jax_step.py", "torch": "torch_step.py"}
MODES = {"jax": ("jit",), "torch": ("eager", "compile")}  # each peer's step modes
EXTRA = "pip install -e '.[peers]'"


def step_key(name: str, num_samples: int, batch_size: int, mode: str) -> str:
    """The key of a training step configuration, the parent's and the peers' alike."""
    return f"{name}/k{num_samples}/b{batch_size}/{mode}"


def matmul_key(rows: int) -> str:
    """The key of the [rows, 200] x [200, 784] float32 matmul: the ceiling at that size."""
    return f"matmul/r{rows}"


# -------------------------------------------------------------------------- the peer side
def emit(message: dict) -> None:
    print(PREFIX + json.dumps(_harness.jsonable(message)), flush=True)


def skip(peer: str, error: BaseException) -> None:
    """Says why the peer cannot run (its framework is not installed) and exits cleanly."""
    emit({"skipped": f"{peer} skipped: {error} (install the extra: {EXTRA})"})
    sys.exit(0)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(description: str, argv=None) -> argparse.Namespace:
    """The flags of a peer script (the parent passes its own values)."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    add = parser.add_argument
    add("--serve", action="store_true", help="Take commands on stdin (as throughput.py runs it).")
    add("--ks", type=_ints, default=[1, 8, 64, 512], help="K of the IWAE steps.")
    add("--batch_sizes", type=_ints, default=[20, 100], help="Batch sizes.")
    add("--num_samples", type=int, default=64, help="K of the DReG steps.")
    add("--losses", default="iwae,dreg", help="Losses: iwae (at every K), dreg (at --num_samples).")
    add("--modes", default=None, help="Modes to build (default: all of the peer's).")
    add("--matmul_rows", type=_ints, default=[], help="Rows of the matmuls to time.")
    add("--warmup_steps", type=int, default=2, help="Untimed steps per configuration.")
    add("--rounds", type=int, default=5, help="Rounds without --serve.")
    add("--steps", type=int, default=5, help="Steps per configuration per round without --serve.")
    add("--seed", type=int, default=0, help="Seed of the weights, data and noise.")
    add("--memory_probe", default=None, help="name,K,batch_size,mode: peak memory of one step.")
    add("--memory_steps", type=int, default=3, help="Steps after the first in a memory probe.")
    args = parser.parse_args(argv)
    args.losses = [v for v in args.losses.split(",") if v]
    args.modes = None if args.modes is None else [v for v in args.modes.split(",") if v]
    return args


def synthetic_batches(batch_size: int, seed: int, count: int = 8) -> list[np.ndarray]:
    """throughput.py's synthetic data: `count` batches of binary images, pixels on w.p. 1/2."""
    rng = np.random.default_rng(seed)
    images = _harness.binarize(np.full((1000, _harness.PIXELS), 0.5, np.float32), rng)
    indices = np.arange(count * batch_size).reshape(count, batch_size) % len(images)
    return [images[i] for i in indices]


def _configurations(args, framework_modes: Sequence[str]) -> list[tuple[str, int, int, str]]:
    """(loss, K, batch size, mode) of every step configuration the flags ask for."""
    modes = args.modes or list(framework_modes)
    configs = []
    for mode in modes:
        for b in args.batch_sizes:
            configs += [("iwae", k, b, mode) for k in args.ks if "iwae" in args.losses]
            configs += [("dreg", args.num_samples, b, mode)] if "dreg" in args.losses else []
    return configs


def run_peer(
    peer: str,
    args: argparse.Namespace,
    modes: Sequence[str],
    build_step: Callable[[str, int, int, str], Callable[[int], None]],
    build_matmul: Callable[[int], Callable[[int], None]],
    info: dict,
) -> None:
    """Builds, warms up and times a peer's configurations, as `args` say.

    `build_step(loss, K, batch_size, mode)` returns run(n), which does n training steps
    and returns when their results are computed; `build_matmul(rows)` likewise n matmuls.
    """
    if args.serve:  # a peer outlives no parent that was killed without closing it
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if args.memory_probe:
        loss, k, b, mode = args.memory_probe.split(",")
        run = build_step(loss, int(k), int(b), mode)  # the first step compiles, as in the parent
        emit({"memory": _harness.peak_memory(lambda: run(1), lambda: run(args.memory_steps))})
        return
    runs, warmup_seconds = {}, {}
    for loss, k, b, mode in _configurations(args, modes):
        key = step_key(f"{peer}_{loss}", k, b, mode)
        start = time.perf_counter()
        runs[key] = build_step(loss, k, b, mode)
        runs[key](args.warmup_steps)
        warmup_seconds[key] = time.perf_counter() - start
    for rows in args.matmul_rows:
        runs[matmul_key(rows)] = build_matmul(rows)
        runs[matmul_key(rows)](2)
    ready = {"ready": True, **info, "configurations": list(runs)}
    ready["warmup_seconds"] = warmup_seconds
    ready["cpus_available"] = len(os.sched_getaffinity(0))

    def rate(key: str, steps: int) -> float:
        start = time.perf_counter()
        runs[key](steps)
        return steps / (time.perf_counter() - start)

    if not args.serve:
        rates = {key: [] for key in runs}
        rng = np.random.default_rng(args.seed)
        for _ in range(args.rounds):
            for i in rng.permutation(len(runs)):
                key = list(runs)[i]
                rates[key].append(rate(key, args.steps))
        results = {key: _harness.rate_summary(r) for key, r in rates.items()}
        emit({**ready, "results": results, "peak_rss_mb": _peak_rss_mb()})
        return
    emit(ready)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("finish"):
            emit({"finished": True, "peak_rss_mb": _peak_rss_mb()})
            return
        emit({"rate": rate(command["run"], int(command["steps"]))})


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


# ------------------------------------------------------------------------ the parent side
class PeerError(RuntimeError):
    """A peer process ended or stopped answering."""


class Peer:
    """One peer process, started at once with --serve (it warms up meanwhile).

    `wait_ready` gives its announcement, or None with `note` saying why it will not run:
    its framework is missing (a skip), or it failed. `run` times steps in it; `finish`
    ends it and gives its peak memory.
    """

    def __init__(self, name: str, args: Sequence[str], env: dict | None = None):
        self.name, self.note, self.info = name, None, None
        self.stderr = tempfile.TemporaryFile("w+")
        command = [sys.executable, str(PEERS_DIR / SCRIPTS[name]), "--serve", *args]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, bufsize=1, env=env,
        )  # fmt: skip
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                self._lines.put(json.loads(line[len(PREFIX) :]))
        self._lines.put(None)

    def _stderr_tail(self, lines: int = 6) -> list[str]:
        self.stderr.seek(0)
        return self.stderr.read().strip().splitlines()[-lines:]

    def _receive(self, timeout: float) -> dict:
        try:
            message = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise PeerError(f"{self.name}: no answer in {timeout:.0f} s") from None
        if message is None:
            self.process.wait()
            tail = self._stderr_tail()
            raise PeerError(f"{self.name} exited ({self.process.returncode}): {tail}")
        return message

    def wait_ready(self, timeout: float) -> dict | None:
        try:
            message = self._receive(timeout)
        except PeerError as error:
            self.fail(str(error))
            return None
        if "skipped" in message:
            self.note = message["skipped"]
            self.process.wait()
            return None
        self.info = message
        return message

    def run(self, key: str, steps: int, timeout: float) -> float:
        self.process.stdin.write(json.dumps({"run": key, "steps": steps}) + "\n")
        self.process.stdin.flush()
        return self._receive(timeout)["rate"]

    def finish(self, timeout: float = 60) -> dict:
        if self.info is None or self.note is not None:
            return {}
        try:
            self.process.stdin.write(json.dumps({"finish": True}) + "\n")
            self.process.stdin.flush()
            return self._receive(timeout)
        except (PeerError, OSError) as error:
            self.fail(str(error))
            return {}
        finally:
            self.close()

    def fail(self, note: str) -> None:
        self.note = self.note or f"{self.name} failed: {note}"
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@dataclasses.dataclass
class Remote:
    """A configuration timed in a peer process; `rates` as `_harness.Timed`'s."""

    key: str
    peer: Peer
    units: int
    info: dict
    rates: list = dataclasses.field(default_factory=list)


def peer_arguments(ks, batch_sizes, num_samples: int, rows, warmup_steps: int, seed: int):
    """The flags of a peer run by throughput.py: IWAE at every K, DReG at `num_samples`."""
    values = {"ks": ks, "batch_sizes": batch_sizes, "matmul_rows": rows}
    args = [f"--{name}={','.join(map(str, v))}" for name, v in values.items()]
    return [*args, f"--num_samples={num_samples}", f"--warmup_steps={warmup_steps}",
            f"--seed={seed}", "--losses=iwae,dreg"]  # fmt: skip


def planned_steps(peer: str, ks, num_samples: int, batch_sizes) -> list[tuple[str, int, int, str]]:
    """(name, K, batch size, mode) of the steps a peer run with `peer_arguments` builds."""
    return [
        (f"{peer}_{loss}", k, b, mode)
        for mode in MODES[peer]
        for b in batch_sizes
        for loss, k in [*(("iwae", k) for k in sorted({*ks, num_samples})), ("dreg", num_samples)]
    ]


def remote_configs(peer: Peer, units_of: Callable[[dict], int], matmul_gflop) -> list[Remote]:
    """A ready peer's configurations as timed configurations, `units_of(info)` steps a round."""
    remotes = []
    for key in peer.info["configurations"]:
        if key.startswith("matmul/"):
            rows = int(key.split("/r")[1])
            info = {"kind": "matmul", "rows": rows, "gflop": matmul_gflop(rows)}
        else:
            name, k, b, mode = key.split("/")
            info = {"kind": "step", "name": name, "mode": mode, "objective": None}
            info |= {"num_samples": int(k[1:]), "batch_size": int(b[1:])}
            info["gradient_kind"] = peer.info["gradient_kinds"][name]
        info["framework"] = peer.name
        remotes.append(Remote(key, peer, units_of(info), info))
    return remotes


def memory_command(name: str, k: int, b: int, mode: str, steps: int, seed: int) -> list[str]:
    """The command of a peer's memory probe for its step `name` ("jax_iwae", ...)."""
    peer, _, loss = name.partition("_")
    script = str(PEERS_DIR / SCRIPTS[peer])
    probe = f"--memory_probe={loss},{k},{b},{mode}"
    return [sys.executable, script, probe, f"--memory_steps={steps}", f"--seed={seed}"]


def read_memory(stdout: str) -> dict | None:
    """The result of a memory probe (ours or a peer's) from its output, if it gave one."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(PREFIX + '{"memory"')]
    return json.loads(lines[-1][len(PREFIX) :])["memory"] if lines else None


def interleaved_rounds(
    items: Sequence[Timed | Remote], rounds: int, seed: int, timeout: float, log=print
) -> None:
    """`_harness.time_rounds` over the parent's configurations and the peers' together.

    A peer's configuration is timed in the peer (its steps alone, not the message to it);
    a peer that fails loses its configurations (their rates stay short) and keeps a note.
    """
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        start_round = time.perf_counter()
        for i in rng.permutation(len(items)):
            t = items[i]
            if isinstance(t, Timed):
                start = time.perf_counter()
                np.asarray(t.run(t.units))  # waits for the last result
                t.rates.append(t.units / (time.perf_counter() - start))
            elif t.peer.note is None:
                try:
                    t.rates.append(t.peer.run(t.key, t.units, timeout))
                except (PeerError, OSError) as error:
                    t.peer.fail(str(error))
                    log(f"  {t.peer.note}")
        log(f"  round {r + 1}/{rounds}: {time.perf_counter() - start_round:.1f} s")


def rates_or_none(rates: Sequence[float], rounds: int) -> dict | None:
    """`_harness.rate_summary` of a configuration timed in every round, else None."""
    finite = [r for r in rates if math.isfinite(r)]
    return _harness.rate_summary(finite) if len(finite) == rounds and finite else None
