"""Shared by the benchmark tests: import a benchmark script, and run one in the background."""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_script(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (its flags are defined only under __main__)."""
    module_name = f"benchmark_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # for its dataclasses
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@contextlib.contextmanager
def background_run(
    name: str, args: Sequence[str], out_dir: pathlib.Path
) -> Iterator[tuple[subprocess.Popen, pathlib.Path]]:
    """Runs `python benchmarks/<name>.py *args --out_dir=out_dir`; kills it on exit.

    Output goes to out_dir/stdout.txt and out_dir/stderr.txt. Started from a module-scoped
    fixture, the run shares the cores with the module's in-process tests.
    """
    with open(out_dir / "stdout.txt", "w") as stdout, open(out_dir / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, f"--out_dir={out_dir}"],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        yield process, out_dir
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
