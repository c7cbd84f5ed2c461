"""benchmarks/gaussian_snr.py: a quick sweep in-process and a tiny run from its command line.

The quick sweep is probabilistic: IWAE and IWAE-DReG with 2000 estimates per setting at
K in {1, 10, 100}, with the script's fixed seeds. It asserts the signs of the fitted
slopes, which the theory puts far apart (IWAE's inference SNR falls like K^(-1/2), its
generative SNR and IWAE-DReG's inference SNR rise like K^(1/2)), and that the paired t
statistics of IWAE-DReG against IWAE look like N(0, 1) (max |t| < 4.5 over 60
parameters, |t| < 4 along the signal direction at each K); it prints what it measured.

The command-line run covers the other estimators (as estimators or as references: STL,
IWAE-DReG, RWS-DReG, JVI-DReG, the VAE and MIWAE, paired with IWAE, RWS and JVI) with 16
estimates at K and M in {1, 3}. It starts in the background when the module's first test
needs it, so that it shares the machine's cores with the quick sweep; it checks the exit
status and the keys of results.json; figures.py then draws every figure from that
results.json alone.
"""

from __future__ import annotations

import json
import subprocess

import pytest

import mcobjectives as mco
from tests.benchmark_cli import background_run, load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = (
    "--objectives=stl,iwae_dreg,rws_dreg,jvi_dreg,vae,miwae",
    "--num_estimates=16",
    "--chunk_size=16",
    "--ks=1,3",
    "--miwae_inner=2",
    "--miwae_max_samples=6",
    "--nofigures",  # drawn by the test, from results.json alone
)
TIMEOUT = 300  # seconds


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The tiny command-line run, started in the background."""
    with background_run("gaussian_snr", TINY, tmp_path_factory.mktemp("gaussian_snr")) as run:
        yield run


@pytest.fixture(scope="module", autouse=True)
def _start_cli_run(cli_run):
    """Starts the command-line run before the module's first test."""


def test_quick_sweep_slope_signs():
    """Probabilistic: IWAE's phi SNR falls with K, IWAE-DReG's and IWAE's theta SNR rise."""
    gaussian_snr = load_script("gaussian_snr")
    config = gaussian_snr.Config(
        num_estimates=2000,
        ks=(1, 10, 100),
        objectives=("iwae", "iwae_dreg"),
        chunk_size=1000,
    )
    results = gaussian_snr.run_benchmark(config, log=print)
    slopes = results["slopes"]

    def median(name, estimator, network):
        return slopes[name][estimator][network]["all"]["median"]

    measured = {
        "IWAE phi (plug-in)": median("iwae", "plug_in", "phi"),
        "IWAE phi (via DReG)": median("iwae", "via_dreg", "phi"),
        "IWAE theta": median("iwae", "plug_in", "theta"),
        "IWAE-DReG phi": median("iwae_dreg", "plug_in", "phi"),
    }
    print(", ".join(f"{k}: {v:+.2f}" for k, v in measured.items()))
    assert measured["IWAE phi (plug-in)"] < 0
    assert measured["IWAE phi (via DReG)"] < 0
    assert measured["IWAE-DReG phi"] > 0
    assert measured["IWAE theta"] > 0
    # The same-expectation pair passes its paired t test.
    pooled = [
        row
        for row in results["bias_tests"]
        if row["objective"] == "iwae_dreg" and not isinstance(row["n"], int)
    ]
    print(f"IWAE-DReG vs IWAE, pooled over K: {pooled[0]}")
    assert pooled[0]["max_abs_t"] < 4.5
    assert pooled[0]["t_u_summary"]["max_abs_t"] < 4.0
    # Every check is reported; at this R IWAE's plug-in SNR is below the noise floor.
    statuses = {row["check"]: row["status"] for row in results["checks"]}
    print(statuses)
    assert statuses["IWAE phi (A, b) SNR in K"] == "below noise floor"


def test_estimators_are_made_by_make_objective_and_cover_the_registry():
    """The papers' estimators map to `mco.make_objective` calls; every other registered
    objective is an estimator too (in K, or in M bounds for those taking `num_outer`)."""
    gaussian_snr = load_script("gaussian_snr")
    assert set(mco.objective_names()) <= set(gaussian_snr.ESTIMATORS)
    assert gaussian_snr.Config().objectives == gaussian_snr.DEFAULT_OBJECTIVES
    expected = {
        ("iwae_dreg", 10): "DReG(num_samples=10, alpha=0.0)",
        ("rws_dreg", 10): "DReG(num_samples=10, alpha=1.0)",
        ("jvi_dreg", 10): "JVI(num_samples=10, dreg=True)",
        ("vae", 10): "VAE(num_samples=10)",
        ("miwae", 10): "MIWAE(num_outer=10, num_inner=3)",
        ("piwae", 10): "PIWAE(num_outer=10, num_inner=3)",
    }
    for (name, n), want in expected.items():
        assert repr(gaussian_snr.make_objective(name, n, miwae_inner=3)) == want
    config = gaussian_snr.Config(objectives=tuple(gaussian_snr.ESTIMATORS), ks=(1, 2, 3))
    config.check()
    for name in gaussian_snr.ESTIMATORS:
        for n in config.grid(name):
            objective = gaussian_snr.make_objective(name, n, config.miwae_inner)
            assert objective.num_samples >= n
    assert config.grid("jvi") == [2, 3]  # JVI's min_num_samples
    with pytest.raises(ValueError, match="unknown objectives"):
        gaussian_snr.Config(objectives=("dreg_iwae",)).check()


def _finished(cli_run):
    """The tiny run's output folder, once it has exited with status 0."""
    process, out_dir = cli_run
    import matplotlib.figure  # noqa: F401  (for the redraw test, while the run goes on)

    load_script("figures")
    try:
        returncode = process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the run took more than {TIMEOUT} s")
    stdout = (out_dir / "stdout.txt").read_text()
    stderr = (out_dir / "stderr.txt").read_text()
    assert returncode == 0, f"exit {returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "Slopes against theory" in stdout
    assert "Paired bias t statistics" in stdout
    return out_dir


def test_command_line(cli_run):
    """The script runs from its command line with tiny flags and writes every output."""
    out_dir = _finished(cli_run)
    results = json.loads((out_dir / "results.json").read_text())
    for key in (
        "benchmark",
        "config",
        "estimators",
        "problem",
        "noise_floor",
        "figure4_direction",
        "runs",
        "grids",
        "slopes",
        "checks",
        "bias_tests",
        "histogram_coordinates",
        "histograms",
        "machine",
        "seconds",
    ):
        assert key in results, key
    assert set(results["runs"]) == {"stl", "iwae_dreg", "rws_dreg", "jvi_dreg", "vae", "miwae"}
    grids = {"stl": [1, 3], "iwae_dreg": [1, 3], "rws_dreg": [3], "jvi_dreg": [3]}
    assert results["grids"] == {**grids, "vae": [1, 3], "miwae": [1, 3]}
    assert results["figure4_direction"]["objective"] == "iwae_dreg"
    assert results["runs"]["rws_dreg"]["3"]["objective"] == "DReG(num_samples=3, alpha=1.0)"
    assert results["runs"]["rws_dreg"]["3"]["reference_objective"] == "RWS(num_samples=3)"
    assert results["runs"]["miwae"]["3"]["objective"] == "MIWAE(num_outer=3, num_inner=2)"
    record = results["runs"]["stl"]["3"]
    assert len(record["snr"]["phi"]) == 20 * 20 + 20 and len(record["snr"]["theta"]) == 20
    for key in ("dsnr", "dsnr_k_max", "rmse_theta", "bias", "variance_mean", "snr_u"):
        assert key in record, key
    assert {"t", "t_u", "t_summary", "squared_bias_mean"} <= set(record["bias"])
    assert results["slopes"]["vae"]["plug_in"]["phi"]["all"]["n"] == [1, 3]
    assert {row["objective"] for row in results["bias_tests"]} == set(grids) | {"vae"}
    checked = ["iwae_dreg", "vae", "vae", "miwae", "miwae"]
    assert [c["objective"] for c in results["checks"]] == checked
    # Figure 1's histograms (the VAE's at M = 1 here) are saved: 40 densities per coordinate.
    assert {name: list(h) for name, h in results["histograms"].items()} == {"vae": ["1"]}
    assert len(results["histograms"]["vae"]["1"]["b"]["density"]) == 40
    assert not list(out_dir.glob("*.png"))  # --nofigures


def test_figures_are_drawn_from_results_json_alone(cli_run, tmp_path):
    """figures.py draws every figure from the run's results.json alone (the run drew none:
    test_benchmark_mnist_snr checks that a redraw reproduces a run's own figures)."""
    paths = load_script("figures").draw(_finished(cli_run) / "results.json", tmp_path)
    assert [p.name for p in paths] == list(load_script("figures").GAUSSIAN_FIGURES)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC), path.name
        assert len(data) < 500_000, (path.name, len(data))
