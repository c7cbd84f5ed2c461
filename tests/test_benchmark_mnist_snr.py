"""benchmarks/mnist_snr.py from its command line with tiny flags, as a user would run it;
figures.py redraws its figures from its results.json alone.

The run reads the bundled MNIST subset (TFDS_DATA_DIR pointed at an empty folder and
--nodownload): loading the full MNIST from TFDS alone takes longer than the whole run.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess

import pytest

from tests.benchmark_cli import assert_figures_redrawn, background_run, load_script

OBJECTIVES = ("iwae", "rws")
LAYERS = ("hidden_0", "hidden_1", "output")
TINY = (
    f"--objectives={','.join(OBJECTIVES)}",
    "--steps=2",
    "--eval_every=2",
    "--num_estimates=4",
    "--chunk_size=4",
    "--snr_batch_size=4",
    "--num_weights=5",
    "--train_size=100",
    "--eval_size=20",
    "--log_every=1",
    "--nodownload",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
    """The tiny run; meanwhile this process imports what the redraw test needs."""
    env = {"TFDS_DATA_DIR": str(tmp_path_factory.mktemp("no_tfds"))}
    out_dir = tmp_path_factory.mktemp("mnist_snr")
    with background_run("mnist_snr", TINY, out_dir, env) as (process, _):
        import matplotlib.figure  # noqa: F401

        load_script("figures")
        returncode = process.wait(timeout=600)
    stdout, stderr = ((out_dir / f"{f}.txt").read_text() for f in ("stdout", "stderr"))
    return subprocess.CompletedProcess(process.args, returncode, stdout, stderr), out_dir


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_runs_and_writes_json_and_figures(run):
    """Exit 0; results.json has every run, checkpoint and statistic; both PNGs exist."""
    process, out_dir = run
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "variance IWAE-DReG(K=64) / IWAE(K=64) per checkpoint" in process.stdout
    record = json.loads((out_dir / "results.json").read_text())
    assert record["dataset"] == "mnist-bundled-subset"
    assert record["num_train_images"] == 100
    assert record["checkpoint_steps"] == [0, 2]
    assert record["num_encoder_parameters"] == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 100 + 100
    assert sorted(record["runs"]) == sorted(OBJECTIVES)
    assert {layer: len(w) for layer, w in record["weights"].items()} == dict.fromkeys(LAYERS, 5)
    for name, run_record in record["runs"].items():
        assert [c["step"] for c in run_record["checkpoints"]] == [0, 2]
        assert run_record["train"]["step"] == [1, 2]
        assert all(math.isfinite(b) and b < 0 for b in run_record["train"]["bound"])
        for checkpoint in run_record["checkpoints"]:
            assert {"own", "counterpart", "paired"} <= set(checkpoint)
            for part in ("own", "counterpart"):
                stats = checkpoint[part]
                assert _positive(stats["variance_mean"]), (name, part, stats)
                assert _positive(stats["variance_sum"])
                for layer in LAYERS:
                    snr = stats["snr"][layer]
                    assert len(snr["values"]) == 5
                    assert all(_positive(v) for v in snr["values"]), (name, layer, snr)
                    assert _positive(snr["mean"]) and math.isfinite(snr["std"])
                    assert _positive(snr["median_all"])
            assert _positive(checkpoint["paired"]["variance_ratio"])
            assert _positive(checkpoint["paired"]["t_summary"]["mean_t_squared"])
            assert math.isfinite(checkpoint["test_iwae64"]) and checkpoint["test_iwae64"] < 0
    assert record["runs"]["iwae"]["objective"] == "IWAE(num_samples=64)"
    assert record["runs"]["rws"]["objective"] == "RWS(num_samples=64)"
    assert record["runs"]["iwae"]["counterpart_objective"] == "DReG(num_samples=64, alpha=0.0)"
    assert record["runs"]["rws"]["counterpart_objective"] == "DReG(num_samples=64, alpha=1.0)"
    summary = record["summary"]
    assert summary["iwae"]["counterpart"] == "IWAE-DReG(K=64)"
    assert summary["rws"]["counterpart"] == "RWS-DReG(K=64)"
    assert len(summary["rws"]["variance_ratio_per_checkpoint"]) == 2
    for png in ("fig8_snr.png", "tucker_fig2_variance.png"):
        data = (out_dir / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert not list(out_dir.glob("*.tmp"))


def test_runs_start_from_the_same_weights(run):
    """Step 0: the IWAE and RWS runs have the same parameters, so their paired t agree.

    IWAE - IWAE-DReG = sum_k (w~_k - w~_k^2) path_k - sum_k w~_k score_k
                     = RWS-DReG - RWS,
    so on the same seeds and parameters the two paired differences are exact negatives
    and their t statistics have the same squares. After training steps the parameters
    differ and so do the statistics.
    """
    process, out_dir = run
    assert process.returncode == 0, process.stderr[-3000:]
    runs = json.loads((out_dir / "results.json").read_text())["runs"]
    iwae, rws = (runs[name]["checkpoints"] for name in ("iwae", "rws"))
    first, last = ([run[i]["paired"]["t_summary"] for run in (iwae, rws)] for i in (0, 1))
    for key in ("mean_t_squared", "max_abs_t"):
        assert first[0][key] == pytest.approx(first[1][key], rel=1e-3)
    assert last[0]["mean_t_squared"] != pytest.approx(last[1]["mean_t_squared"], rel=1e-3)


def test_figures_are_redrawn_from_results_json(run, tmp_path):
    """figures.py draws both figures of the run again from its results.json, identically."""
    process, out_dir = run
    assert process.returncode == 0, process.stderr[-3000:]
    names = assert_figures_redrawn(out_dir, tmp_path)
    assert names == ["fig8_snr.png", "tucker_fig2_variance.png"]
