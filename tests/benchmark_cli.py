"""Shared by the benchmark tests: import a benchmark script, run one in the background, and
check that its figures are redrawn from its results.json alone."""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_script(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (its flags are defined only under __main__).

    The scripts import their sibling modules (`_harness`, `figures`, ...) by name, as when
    run from the command line: benchmarks/ goes on sys.path, and each module is imported
    under its own name.
    """
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    module = importlib.import_module(name)
    assert pathlib.Path(module.__file__).parent == BENCHMARKS, module.__file__
    return module


@contextlib.contextmanager
def background_run(
    name: str, args: Sequence[str], out_dir: pathlib.Path, env: Mapping[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen, pathlib.Path]]:
    """Runs `python benchmarks/<name>.py *args --out_dir=out_dir`; kills it on exit.

    Output goes to out_dir/stdout.txt and out_dir/stderr.txt; `env` adds to the environment.
    Started from a module-scoped fixture, the run shares the cores with the module's
    in-process tests.
    """
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"} | dict(env or {})
    with open(out_dir / "stdout.txt", "w") as stdout, open(out_dir / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, f"--out_dir={out_dir}"],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            env=env,
        )
    try:
        yield process, out_dir
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_figures_redrawn(out_dir: pathlib.Path, redraw_dir: pathlib.Path) -> list[str]:
    """Redraws the figures of out_dir/results.json into redraw_dir with benchmarks/figures.py
    alone, and asserts that they are the run's PNG files, pixel for pixel."""
    import matplotlib.image
    import numpy as np

    drawn = load_script("figures").draw(out_dir / "results.json", redraw_dir)
    names = sorted(path.name for path in drawn)
    assert names == sorted(path.name for path in out_dir.glob("*.png"))
    for name in names:
        original = matplotlib.image.imread(out_dir / name)
        redrawn = matplotlib.image.imread(redraw_dir / name)
        assert original.shape == redrawn.shape and np.array_equal(original, redrawn), name
    return names
