"""examples/plot_metrics.py: run from its command line on synthetic metrics.json files."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "plot_metrics.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plot_metrics():
    """The example module, imported from its file (examples/ is not a package)."""
    name = "examples_plot_metrics"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _metrics(
    objective: str,
    description: str,
    num_samples: int,
    final_iwae: float,
    gap: float,
    dataset: str = "mnist",
) -> dict:
    """A realistic metrics.json: bounds rising to `final_iwae` at step 3000."""
    evaluations = []
    for i, step in enumerate((500, 1000, 1500, 2000, 2500, 3000)):
        iwae64 = final_iwae - 60.0 * (math.exp(-step / 800.0) - math.exp(-3000 / 800.0))
        evaluations.append(
            {
                "step": step,
                "epoch": round(step * 20 / 60000, 3),
                "iwae64": round(iwae64, 3),
                "log_px": round(iwae64 + gap, 3),
                "neg_kl": round(-2.0 - 0.1 * i, 3),
                "ess_fraction": round(0.05 + 0.01 * i, 3),
                "active_units": 10 + i,
                "num_test_images": 10000,
                "seconds": 12.0 * (i + 1),
            }
        )
    config = {
        "objective": objective,
        "num_samples": num_samples,
        "batch_size": 20,
        "seed": 0,
        "eval_num_samples": 5000,
    }
    return {
        "dataset": dataset,
        "objective": objective,
        "objective_description": description,
        "config": config,
        "evaluations": evaluations,
        "train": {
            "steps": 3000,
            "steps_per_second": 45.1,
            "final_loss": -final_iwae - 3.0,
            "wall_seconds": 70.0,
        },
    }


def _write_run(directory: pathlib.Path, metrics: dict) -> pathlib.Path:
    """Write `metrics` to directory/metrics.json and return the directory."""
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return directory


def _run_script(*args: str) -> subprocess.CompletedProcess:
    """Run examples/plot_metrics.py from the repository root with `args`."""
    return subprocess.run(
        [sys.executable, str(SCRIPT.relative_to(ROOT)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def runs(tmp_path: pathlib.Path) -> list[pathlib.Path]:
    """Three run directories: IWAE and VAE on MNIST, MIWAE on the bundled subset."""
    return [
        _write_run(tmp_path / "iwae", _metrics("iwae", "IWAE(num_samples=64)", 64, -88.4, 1.1)),
        _write_run(tmp_path / "vae", _metrics("vae", "VAE(num_samples=1)", 1, -91.0, 3.2)),
        _write_run(
            tmp_path / "miwae",
            _metrics(
                "miwae",
                "MIWAE(num_samples=8, num_groups=8)",
                64,
                -95.7,
                1.6,
                dataset="mnist-bundled-subset",
            ),
        ),
    ]


def test_command_line_writes_png_and_table(runs, tmp_path):
    """Directories and a metrics.json path on the command line: a PNG and a summary table."""
    out = tmp_path / "figures" / "figure5.png"
    arguments = [str(runs[0]), str(runs[1] / "metrics.json"), str(runs[2])]
    result = _run_script(f"--metrics={','.join(arguments)}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    assert str(out) in result.stdout
    for objective in ("iwae", "vae", "miwae"):
        assert objective in result.stdout
    assert "-88.40" in result.stdout  # the last IWAE-64 of the IWAE run
    assert "-87.30" in result.stdout  # and its last log p^(x)
    assert "not comparable with full MNIST" in result.stdout


def test_missing_file_names_the_path(runs, tmp_path):
    """A missing metrics.json stops the script with an error naming the path."""
    missing = tmp_path / "no_such_run" / "metrics.json"
    result = _run_script(f"--metrics={runs[0]},{missing}", f"--out={tmp_path / 'out.png'}")
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_nothing_to_plot_is_an_error(tmp_path):
    """Runs without evaluations are skipped with a warning; with none left, the script fails."""
    metrics = _metrics("iwae", "IWAE(num_samples=64)", 64, -88.4, 1.1)
    empty = _write_run(tmp_path / "empty", {**metrics, "evaluations": []})
    result = _run_script(f"--metrics={empty}", f"--out={tmp_path / 'out.png'}")
    assert result.returncode != 0
    assert "no evaluations" in result.stderr
    assert "nothing to plot" in result.stderr


def test_load_runs_directory_argument(runs, capsys):
    """load_runs reads DIR/metrics.json for a directory, and skips runs without evaluations."""
    module = _plot_metrics()
    empty_metrics = json.loads((runs[0] / "metrics.json").read_text())
    empty = _write_run(runs[0].parent / "empty", {**empty_metrics, "evaluations": []})
    loaded = module.load_runs([runs[0], str(empty), runs[2] / "metrics.json"])
    assert "no evaluations" in capsys.readouterr().err
    assert [run.objective for run in loaded] == ["iwae", "miwae"]
    iwae, miwae = loaded
    assert iwae.path == runs[0] / "metrics.json"
    assert iwae.name == "iwae"
    assert iwae.description == "IWAE(num_samples=64)"
    assert iwae.steps == (500, 1000, 1500, 2000, 2500, 3000)
    assert iwae.iwae64[-1] == pytest.approx(-88.4, abs=0.01)
    assert iwae.log_px[-1] == pytest.approx(-87.3, abs=0.01)
    assert not iwae.is_bundled_subset and miwae.is_bundled_subset
    assert iwae.log_px_samples == 5000  # the K of log p^(x), from the run's config
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        module.load_runs([runs[0].parent / "no_such_dir"])


def test_labels_disambiguate_clashes(runs):
    """Two runs with the same objective description get their directory names appended."""
    module = _plot_metrics()
    first = module.load_run(runs[0])
    clone = module.Run(**{**first.__dict__, "name": "iwae_seed1"})
    assert module.labels([first, clone]) == [
        "IWAE(num_samples=64) (iwae)",
        "IWAE(num_samples=64) (iwae_seed1)",
    ]
