"""benchmarks/mnist_objectives.py from its command line with tiny flags, as a user would run
it: the records it writes, the table it prints, a rerun that skips finished runs, and the
figure redrawn from results.json alone.

The run reads the bundled MNIST subset (TFDS_DATA_DIR pointed at an empty folder and
--nodownload), which is quicker to load than the full MNIST.
"""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from tests.benchmark_cli import BENCHMARKS, ROOT, load_script

TINY = (
    "--objectives=iwae,dreg",
    "--seeds=2",
    "--steps=3",
    "--eval_size=10",
    "--eval_num_samples=64",
    "--nodownload",
)
KEYS = {"objective", "seed", "steps", "iwae64", "log_px", "neg_kl", "ess_fraction", "active_units"}


def _run(out_dir, *extra, env):
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "mnist_objectives.py"), *TINY, *extra,
         f"--out_dir={out_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import os

    env = os.environ | {
        "TFDS_DATA_DIR": str(tmp_path_factory.mktemp("no_tfds")),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    out_dir = tmp_path_factory.mktemp("mnist_objectives")
    first = _run(out_dir, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    return first, out_dir, env


def test_every_objective_and_seed_gets_a_record_with_the_papers_metrics(run):
    completed, out_dir, _ = run
    results = json.loads((out_dir / "results.json").read_text())
    runs = results["runs"]
    assert sorted((r["objective"], r["seed"]) for r in runs) == [
        ("DReG(64)", 0), ("DReG(64)", 1), ("IWAE(64)", 0), ("IWAE(64)", 1),
    ]  # fmt: skip
    for record in runs:
        assert KEYS <= set(record) and record["steps"] == 3
        assert record["log_px"] >= record["iwae64"] - 5  # K = 64 for both: equal in expectation
        np.testing.assert_allclose(record["neg_kl"], record["iwae64"] - record["log_px"], atol=1e-3)
        assert 0 < record["ess_fraction"] <= 1 and 0 <= record["active_units"] <= 50
    assert results["config"]["dataset"] == "mnist-bundled-subset"
    assert "| IWAE(64) | 2 |" in completed.stdout  # the table, with its seed count


def test_a_rerun_skips_finished_runs_and_another_budget_is_refused(run):
    _, out_dir, env = run
    before = (out_dir / "results.json").read_text()
    again = _run(out_dir, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out_dir / "results.json").read_text() == before
    other = _run(out_dir, "--steps=4", env=env)
    assert other.returncode != 0 and "another --out_dir" in other.stderr


def test_the_figure_is_redrawn_from_results_json_alone(run, tmp_path):
    _, out_dir, _ = run
    (tmp_path / "results.json").write_text((out_dir / "results.json").read_text())
    module = load_script("mnist_objectives")
    module.draw(json.loads((tmp_path / "results.json").read_text()), tmp_path / "figure.png")
    original = matplotlib.image.imread(out_dir / "figure.png")
    redrawn = matplotlib.image.imread(tmp_path / "figure.png")
    assert np.array_equal(original, redrawn)


def test_summary_gives_means_and_standard_errors():
    module = load_script("mnist_objectives")
    runs = [
        {"objective": "IWAE(64)", "iwae64": v, "log_px": v + 1, "neg_kl": -1.0,
         "ess_fraction": 0.1, "active_units": 50}
        for v in (-100.0, -102.0, -104.0)
    ]  # fmt: skip
    row = module.summarize(runs)["IWAE(64)"]
    assert row["iwae64"] == pytest.approx((-102.0, 2.0 / np.sqrt(3), 3))
