"""benchmarks/ovis_snr.py from its command line: a tiny run writes results.json and its figure.

The run is tiny (100 estimates at K in {2, 8}, two seeds), so it checks what the script
writes, not the slopes: the measured table is in benchmarks/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.benchmark_cli import load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # OVIS itself is checked against its derivation in tests/test_ovis.py
def test_a_tiny_run_writes_every_estimator_slope_and_the_figure(tmp_path):
    script = load_script("ovis_snr").__file__
    completed = subprocess.run(
        [
            sys.executable,
            script,
            "--num_estimates=100",
            "--chunk_size=100",
            "--ks=2,8",
            "--num_seeds=2",
            f"--out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["ks"] == [2, 8]
    assert set(results["slopes"]) == set(results["snr"]) == set(load_script("ovis_snr").ESTIMATORS)
    for name, slope in results["slopes"].items():
        assert slope["mean"] is not None, name
    assert (tmp_path / "snr.png").read_bytes()[:8] == PNG_MAGIC
