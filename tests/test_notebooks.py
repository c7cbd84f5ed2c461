"""The tutorials in docs/tutorials/: stored without outputs, and each one runs to its end.

The docs build executes the notebooks (mkdocs-jupyter, `execute: true`); the slow run here
executes them the same way, with nbclient in a fresh kernel, so that a tutorial broken by a
change of the library fails a test and not only the site's build. Each takes about a minute
on two free cores (the issue's limit is three); the default run only reads them.
"""

from __future__ import annotations

import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")

TUTORIALS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
# Seconds a single cell may run before nbclient gives up (a hang, not a slow machine).
CELL_TIMEOUT = 600


def test_there_are_the_three_tutorials():
    assert [p.name for p in NOTEBOOKS] == [
        "gradient_snr.ipynb",
        "iwae_vs_dreg_mnist.ipynb",
        "sigmoid_belief_net_vimco.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_tutorial_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}, cell {index}: stored with outputs"
            assert cell.execution_count is None, f"{path.name}, cell {index}: has a count"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_tutorial_runs_to_its_end(path):
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell that failed
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
