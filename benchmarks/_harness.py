"""What the benchmark scripts share: results files, figures, timing, memory, the MNIST model.

* `write_json` / `read_json`: results.json, written atomically with one policy for
  numbers (NaN and inf become null; floats keep 6 significant digits, NumPy arrays 4).
* `save_figure`: a Matplotlib figure to PNG, atomically.
* `Timed`, `time_rounds`, `rate_summary`: interleaved timing rounds on a shared machine.
* `peak_memory`, `run_commands`: peak resident memory of a probe, one subprocess each.
* `machine_info`, `flag_values`: what ran, where, with which flags.
* `burda_networks`, `burda_model`, `adam`, `load_mnist`: Burda et al.'s
  one-stochastic-layer MNIST model, its optimizer and its data, from
  `mcobjectives.experimental.mnist` (which the examples use too); `binarize`, NumPy
  draws for throughput.py's data.

TensorFlow, Keras and the library are imported by the functions that use them: figures.py,
which draws from results.json alone, starts without them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from subprocess import PIPE
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow_probability as tfp

    import mcobjectives as mco

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
LATENT_SIZE = 50
PIXELS = 784


# ---------------------------------------------------------------------------- files
def _atomically(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """Writes path through a temporary file and a rename: readers never see half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def jsonable(value: Any, digits: int = 6) -> Any:
    """Plain JSON values: non-finite floats to None, floats to `digits` significant digits
    (NumPy arrays to 4), NumPy scalars to Python numbers, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [jsonable(v, 4) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [jsonable(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    return value


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9.eE+-]+|null)(?:,\s*(?:-?[0-9.eE+-]+|null))*)\s*\]")


def write_json(path: pathlib.Path, payload: dict) -> None:
    """Writes `jsonable(payload)` atomically: objects indented, lists of numbers on one line."""
    text = json.dumps(jsonable(payload), indent=1, sort_keys=True, allow_nan=False)
    text = _NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    _atomically(path, lambda tmp: tmp.write_text(text + "\n"))


def read_json(path: pathlib.Path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def save_figure(figure, path: pathlib.Path, dpi: int = 100) -> pathlib.Path:
    """Saves a `matplotlib.figure.Figure` as PNG, atomically (no pyplot state involved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    _atomically(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))
    return pathlib.Path(path)


# --------------------------------------------------------------------------- timing
@dataclasses.dataclass
class Timed:
    """A timed configuration: `run(n)` does n units of work and returns what to fetch."""

    key: str
    run: Callable[[int], object]
    units: int  # units per round
    info: dict
    rates: list = dataclasses.field(default_factory=list)  # units per second, per round


def time_rounds(timed: Sequence[Timed], rounds: int, seed: int, log=print) -> None:
    """Runs every configuration once per round, in a new random order each round.

    Interleaving spreads the load of other work on the machine over all configurations;
    the medians over rounds are then comparable.
    """
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        start_round = time.perf_counter()
        for i in rng.permutation(len(timed)):
            t = timed[i]
            start = time.perf_counter()
            np.asarray(t.run(t.units))  # waits for the last result
            t.rates.append(t.units / (time.perf_counter() - start))
        log(f"  round {r + 1}/{rounds}: {time.perf_counter() - start_round:.1f} s")


def rate_summary(rates: Sequence[float]) -> dict:
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "rounds": rates,
    }


# --------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Resets the kernel's peak resident size (VmHWM); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> bool:
    """Returns the C heap's free pages to the system (glibc's malloc_trim); False elsewhere."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # its result says only whether pages were freed
        return True
    except (AttributeError, OSError):
        return False


def peak_memory(first: Callable[[], None], then: Callable[[], None]) -> dict:
    """Peak resident memory (MB) of `first()`, then of `then()`, over the size before each.

    The kernel's peak (VmHWM) is reset right before each: first_call_mb is the peak during
    `first` over the resident size before it, step_mb the peak during `then` over the
    resident size after `first` (the working memory beyond what the process keeps).
    held_mb is what the process still holds after both, over the size before `first`, once
    the C heap has returned its free pages (a compiler's freed working memory stays
    resident in the allocator otherwise): anonymous memory (held_anon_mb: the heap, JIT
    code, thread stacks) and pages of the libraries' code read in at their first use
    (held_file_mb, shareable). None where the heap cannot be trimmed (not glibc).
    """
    reset = _reset_peak()
    before = {kind: _status_kb(kind) for kind in ("VmRSS", "RssAnon", "RssFile")}
    first()
    first_peak = _status_kb("VmHWM")
    reset = _reset_peak() and reset
    steady = _status_kb("VmRSS")
    then()
    then_peak = _status_kb("VmHWM")
    trimmed = _trim_heap()
    held = {k: (_status_kb(k) - kb) / 1024 if trimmed else None for k, kb in before.items()}
    return {
        "rss_before_first_step_mb": before["VmRSS"] / 1024,
        "first_call_mb": (first_peak - before["VmRSS"]) / 1024,
        "rss_after_first_step_mb": steady / 1024,
        "step_mb": (then_peak - steady) / 1024,
        "peak_rss_mb": max(first_peak, then_peak) / 1024,
        "peak_reset_worked": reset,
        "held_mb": held["VmRSS"],
        "held_anon_mb": held["RssAnon"],
        "held_file_mb": held["RssFile"],
    }


def run_commands(commands: Sequence[Sequence[str]], workers: int) -> list[tuple[int, str, str]]:
    """Runs the commands, `workers` at a time; (returncode, stdout, stderr) of each, in order."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    pending, running, done = list(enumerate(commands)), [], {}
    while pending or running:
        while pending and len(running) < workers:
            i, command = pending.pop(0)
            running.append(
                (i, subprocess.Popen(command, stdout=PIPE, stderr=PIPE, text=True, env=env))
            )
        i, process = running.pop(0)
        out, err = process.communicate()
        done[i] = (process.returncode, out, err)
    return [done[i] for i in range(len(commands))]


# ------------------------------------------------------------------- what ran where
def machine_info() -> dict:
    """Library versions, CPU, load, and the git state and a hash of the library's source."""
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    import mcobjectives as mco

    cpu_model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), None)
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        command = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
        commit = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    sources = sorted((ROOT / "mcobjectives").rglob("*.py"))  # every module, subpackages too
    return {
        "tensorflow": tf.__version__,
        "tensorflow_probability": tfp.__version__,
        "keras": keras.__version__,
        "mcobjectives": mco.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(),
        "git": commit,
        "mcobjectives_sha256": hashlib.sha256(
            b"".join(p.read_bytes() for p in sources)
        ).hexdigest()[:16],
    }


def flag_values(module_name: str = "__main__", exclude: Sequence[str] = ()) -> dict:
    """The values of the absl flags a module defined (by default the running script's)."""
    from absl import flags

    module = sys.modules[module_name]
    defined = flags.FLAGS.get_key_flags_for_module(module)
    return {f.name: f.value for f in defined if f.name not in exclude}


# ------------------------------------------------------------------------ the model
# Burda et al.'s model, its optimizer and its data are those of the examples, from
# `mcobjectives.experimental.mnist`; these wrappers keep the benchmarks' call signatures.
def prior() -> tfp.distributions.Distribution:
    """p(z) = N(0, I) in LATENT_SIZE dimensions."""
    from mcobjectives.experimental import mnist

    return mnist.standard_normal_prior(LATENT_SIZE)


def burda_networks(x, seed: int, mean_pixel: np.ndarray | None = None):
    """Burda et al.'s encoder 784-200-200-(2 x 50) and decoder 50-200-200-784 (tanh units).

    `mnist.one_layer_networks` (the decoder's output bias starts at the logit of
    `mean_pixel`, if given), built on `x`; the same `seed` gives the same weights.
    """
    import keras

    from mcobjectives.experimental import mnist

    keras.utils.set_random_seed(seed)
    encoder, decoder = mnist.one_layer_networks(
        mean_pixel, num_pixels=PIXELS, latent_size=LATENT_SIZE
    )
    encoder(x)
    decoder(np.zeros([1, LATENT_SIZE], np.float32))
    return encoder, decoder


def burda_model(objective: mco.MCObjective, x, seed: int, mean_pixel=None):
    """`mnist.one_layer` (the examples' model) trained with `objective`, built on `x`; the
    same `seed` gives the same weights as `burda_networks`."""
    import keras

    from mcobjectives.experimental import mnist

    keras.utils.set_random_seed(seed)
    model = mnist.one_layer(
        objective, mean_pixel, seed=seed, num_pixels=PIXELS, latent_size=LATENT_SIZE
    )
    model(x)
    return model


def adam(learning_rate: float = 1e-3) -> keras.optimizers.Optimizer:
    """The optimizer of Burda et al. and Tucker et al.: `mnist.adam`, epsilon 1e-4."""
    from mcobjectives.experimental import mnist

    return mnist.adam(learning_rate)


def binarize(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each pixel ~ Bernoulli(its intensity), drawn from a NumPy generator, float32: for
    throughput.py's data, which only time the steps. The MNIST benchmarks binarize with
    `mnist.binarize`, the examples' stateless binarization."""
    return (rng.random(images.shape, dtype=np.float32) < images).astype(np.float32)


def load_mnist(dataset: str = "mnist", download: bool = False, log=print):
    """`mcobjectives.experimental.mnist.load_mnist`: TFDS MNIST, else the bundled subset
    (by default without downloading)."""
    from mcobjectives.experimental import mnist

    return mnist.load_mnist(dataset, download=download, log=log)
