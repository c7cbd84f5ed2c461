"""benchmarks/sbn_objectives.py from its command line with tiny flags, as a user would run
it: one `examples/mnist.py --architecture=sbn` subprocess per (objective, seed), the
records it reads back from their metrics.json, the table it prints, a rerun that skips
finished runs, another budget refused, and the figure redrawn from results.json alone.

The runs read the bundled MNIST subset (TFDS_DATA_DIR pointed at an empty folder and
--nodownload), which is quicker to load than the full MNIST.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from tests.benchmark_cli import BENCHMARKS, ROOT, load_script

TINY = (
    "--objectives=vimco,rws",
    "--seeds=1",
    "--steps=3",
    "--evaluations=6",
    "--train_size=100",
    "--eval_size=10",
    "--eval_num_samples=64",
    "--nodownload",
)
KEYS = {"objective", "seed", "num_samples", "iwae64", "log_px", "neg_kl", "active_units",
        "wall_seconds", "steps_per_second", "dataset", "objective_description",
        "resumed"}  # fmt: skip


def _run(out_dir, *extra, env):
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "sbn_objectives.py"), *TINY, *extra,
         f"--out_dir={out_dir}", f"--run_dir={out_dir / 'runs'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    env = os.environ | {
        "TFDS_DATA_DIR": str(tmp_path_factory.mktemp("no_tfds")),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    out_dir = tmp_path_factory.mktemp("sbn_objectives")
    first = _run(out_dir, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    return first, out_dir, env


# Slow: the run of three example processes; tests/test_benchmark_mnist_objectives.py
# checks the same record, resume and figure steps of the MNIST benchmark by default,
# and the in-process tests below this script's budget and summary.
@pytest.mark.slow
def test_every_objective_gets_a_record_of_its_example_run_at_the_budget(run):
    completed, out_dir, _ = run
    results = json.loads((out_dir / "results.json").read_text())
    assert sorted((r["objective"], r["seed"]) for r in results["runs"]) == [
        ("rws", 0), ("vimco", 0),
    ]  # fmt: skip
    for record in results["runs"]:
        assert KEYS <= set(record) and record["num_samples"] == 6
        assert record["dataset"] == "mnist-bundled-subset" and not record["resumed"]
        np.testing.assert_allclose(record["neg_kl"], record["iwae64"] - record["log_px"], atol=1e-3)
        assert record["wall_seconds"] > 0 and 0 <= record["active_units"] <= 400
        metrics = json.loads((out_dir / "runs" / f"{record['objective']}_seed0" / "metrics.json")
                             .read_text())  # fmt: skip
        assert metrics["architecture"] == "sbn" and metrics["config"]["max_steps"] == 3
    assert "--architecture=sbn --objective=vimco --num_samples=6" in completed.stdout
    assert "| vimco (K=6) | 1 |" in completed.stdout  # the table, with its seed count


@pytest.mark.slow
def test_a_rerun_skips_finished_runs_and_another_budget_is_refused(run):
    _, out_dir, env = run
    before = (out_dir / "results.json").read_text()
    again = _run(out_dir, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out_dir / "results.json").read_text() == before
    assert "--architecture=sbn" not in again.stdout  # no example was started
    other = _run(out_dir, "--evaluations=12", env=env)
    assert other.returncode != 0 and "another --out_dir" in other.stderr


@pytest.mark.slow
def test_the_figure_is_redrawn_from_results_json_alone(run, tmp_path):
    _, out_dir, _ = run
    module = load_script("sbn_objectives")
    module.draw(json.loads((out_dir / "results.json").read_text()), tmp_path / "figure.png")
    original = matplotlib.image.imread(out_dir / "figure.png")
    assert np.array_equal(original, matplotlib.image.imread(tmp_path / "figure.png"))


def test_disarm_gets_a_third_of_the_evaluations_as_samples_on_the_two_layer_net():
    module = load_script("sbn_objectives")
    assert module.samples_for("vimco", 24) == 24 and module.samples_for("disarm", 24) == 8
    with pytest.raises(ValueError, match="multiple of 3"):
        module.samples_for("disarm", 10)


def test_summary_gives_means_and_standard_errors():
    module = load_script("sbn_objectives")
    runs = [
        {"objective": "vimco", "num_samples": 24, "iwae64": v, "log_px": v + 1, "neg_kl": -1.0,
         "ess_fraction": 0.1, "active_units": 50, "wall_seconds": 10.0, "steps_per_second": 5.0}
        for v in (-100.0, -102.0, -104.0)
    ]  # fmt: skip
    row = module.summarize(runs)["vimco"]
    assert row["iwae64"] == pytest.approx((-102.0, 2.0 / np.sqrt(3), 3))
    assert row["label"] == "vimco (K=24)"
