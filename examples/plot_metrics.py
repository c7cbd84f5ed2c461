r"""Plot test IWAE-64 and log p^(x) against training step for several training runs.

The figure follows Rainforth et al. (2018), "Tighter variational bounds are not necessarily
better", figure 5: the left panel shows the test IWAE-64 bound and the right panel the test
log p^(x) estimate (K is the runs' --eval_num_samples, 5000 by default), one line per
run. Each run is a `metrics.json` written by `examples/mnist.py --out_dir=DIR`.

Usage:

  python examples/plot_metrics.py --metrics=runs/iwae,runs/miwae,runs/vae/metrics.json \
      --out=figure5.png

Run directories and metrics.json paths may also be given as positional arguments.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
from collections import Counter
from collections.abc import Sequence

from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

METRICS_FILE = "metrics.json"
BUNDLED_SUBSET = "mnist-bundled-subset"
SUBSET_NOTE = "bundled MNIST subset: not comparable with full MNIST"
X_LABEL = "training step"
IWAE_LABEL = "test IWAE-64 (nats)"
LOG_PX_LABEL = r"test $\log\,\hat{p}(x)$, $K$ = %s (nats)"
DEFAULT_TITLE = "Test bounds during training"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h")

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run's test metrics, as read from its metrics.json.

    Attributes:
      path: the metrics.json file the run was read from.
      name: the run directory's name (the parent of metrics.json).
      dataset: "mnist", "binarized_mnist" or "mnist-bundled-subset".
      objective: the objective flag value, e.g. "iwae".
      description: the objective's description, e.g. "IWAE(num_samples=64)".
      steps: the training step of each evaluation, in increasing order.
      iwae64: the test IWAE-64 at each evaluation (nan where missing).
      log_px: the test log p^(x) estimate at each evaluation (nan where missing).
      log_px_samples: K of the log p^(x) estimate (the run's eval_num_samples), if recorded.
    """

    path: pathlib.Path
    name: str
    dataset: str
    objective: str
    description: str
    steps: tuple[int, ...]
    iwae64: tuple[float, ...]
    log_px: tuple[float, ...]
    log_px_samples: int | None = None

    @property
    def is_bundled_subset(self) -> bool:
        """Whether the run was trained and evaluated on the small bundled MNIST subset."""
        return self.dataset == BUNDLED_SUBSET


def resolve_path(path: str | pathlib.Path) -> pathlib.Path:
    """The metrics.json for `path`: the path itself, or DIR/metrics.json for a directory.

    Raises:
      FileNotFoundError: if the file does not exist; the message names the path.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        metrics = path / METRICS_FILE
        if not metrics.is_file():
            raise FileNotFoundError(f"run directory {path} has no {METRICS_FILE} ({metrics})")
        return metrics
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    return path


def _number(value: object) -> float:
    """`value` as a float, or nan when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def load_run(path: str | pathlib.Path) -> Run:
    """Read one run from a metrics.json file or a run directory containing one.

    Raises:
      FileNotFoundError: if the file does not exist.
      ValueError: if the file is not valid JSON or lacks the "evaluations" list.
    """
    metrics = resolve_path(path)
    try:
        data = json.loads(metrics.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{metrics} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("evaluations"), list):
        raise ValueError(f"{metrics} has no 'evaluations' list; is it a metrics.json?")
    evaluations = sorted(
        (e for e in data["evaluations"] if isinstance(e, dict) and "step" in e),
        key=lambda e: e["step"],
    )
    objective = str(data.get("objective", "?"))
    return Run(
        path=metrics,
        name=metrics.resolve().parent.name,
        dataset=str(data.get("dataset", "?")),
        objective=objective,
        description=str(data.get("objective_description") or objective),
        steps=tuple(int(e["step"]) for e in evaluations),
        iwae64=tuple(_number(e.get("iwae64")) for e in evaluations),
        log_px=tuple(_number(e.get("log_px")) for e in evaluations),
        log_px_samples=(data.get("config") or {}).get("eval_num_samples"),
    )


def load_runs(paths: Sequence[str | pathlib.Path]) -> list[Run]:
    """Read the runs at `paths` (metrics.json files or run directories), in order.

    Runs without evaluations are skipped with a warning on stderr.

    Raises:
      FileNotFoundError: if any path has no metrics.json; the message names the path.
      ValueError: if a file is malformed.
    """
    runs = []
    for path in paths:
        run = load_run(path)
        if not run.steps:
            print(f"warning: {run.path} has no evaluations; skipping it", file=sys.stderr)
            continue
        runs.append(run)
    return runs


def labels(runs: Sequence[Run]) -> list[str]:
    """Legend labels: each run's objective description, plus its directory name on a clash.

    When the runs mix datasets, the dataset is appended too.
    """
    counts = Counter(run.description for run in runs)
    mixed = len({run.dataset for run in runs}) > 1
    result = []
    for run in runs:
        label = run.description
        if counts[label] > 1:
            label = f"{label} ({run.name})"
        if mixed:
            label = f"{label} [{run.dataset}]"
        result.append(label)
    return result


def _last(steps: Sequence[int], values: Sequence[float]) -> tuple[int | None, float]:
    """The last evaluation with a finite value: (step, value), or (None, nan)."""
    for step, value in zip(reversed(steps), reversed(values), strict=True):
        if math.isfinite(value):
            return step, value
    return None, math.nan


def table(runs: Sequence[Run]) -> str:
    """A text table of each run's last step, last IWAE-64 and last log p^(x)."""
    header = ("run", "objective", "last step", "last IWAE-64", "last log p^(x)")
    rows = [header]
    for run, label in zip(runs, labels(runs), strict=True):
        rows.append(
            (
                label,
                run.objective,
                str(run.steps[-1]),
                f"{_last(run.steps, run.iwae64)[1]:.2f}",
                f"{_last(run.steps, run.log_px)[1]:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plot(
    runs: Sequence[Run],
    out: str | pathlib.Path,
    title: str | None = None,
    log_x: bool = False,
) -> pathlib.Path:
    """Draw test IWAE-64 (left) and log p^(x) (right) against training step; save a PNG.

    Args:
      runs: the runs to draw, one line each.
      out: the PNG path to write; missing parent directories are created.
      title: the figure title; a default is used when None. If any run used the bundled
        MNIST subset, a note saying so is added below it.
      log_x: whether to use a log scale for the training step.

    Returns:
      The path written.

    Raises:
      ValueError: if `runs` is empty.
    """
    if not runs:
        raise ValueError("no runs with evaluations to plot")
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for i, (run, label) in enumerate(zip(runs, labels(runs), strict=True)):
        marker = MARKERS[i % len(MARKERS)]
        style = {"marker": marker, "markersize": 5, "linewidth": 1.5, "label": label}
        (line,) = left.plot(run.steps, run.iwae64, **style)
        right.plot(run.steps, run.log_px, color=line.get_color(), **style)
    samples = {run.log_px_samples for run in runs}
    k = str(samples.pop()) if len(samples) == 1 and None not in samples else "per run"
    for ax, ylabel in ((left, IWAE_LABEL), (right, LOG_PX_LABEL % k)):
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(ylabel)
        if log_x:
            ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    left.legend(loc="best", fontsize="small")

    heading = title if title is not None else DEFAULT_TITLE
    if any(run.is_bundled_subset for run in runs):
        heading = f"{heading}\n({SUBSET_NOTE})" if heading else SUBSET_NOTE
    if heading:
        fig.suptitle(heading)
    fig.savefig(out, dpi=150)
    return out


def define_flags() -> None:
    """Define the command-line flags (only when run as a script, so importing is side-free)."""
    flags.DEFINE_list(
        "metrics",
        [],
        "Comma-separated metrics.json paths or run directories (DIR means DIR/metrics.json). "
        "Positional arguments are added to these.",
    )
    flags.DEFINE_string("out", "metrics.png", "The PNG file to write.")
    flags.DEFINE_string("title", None, "The figure title (a default is used when unset).")
    flags.DEFINE_bool("log_x", False, "Use a log scale for the training step.")


def main(argv: Sequence[str]) -> None:
    """Load the runs named on the command line, plot them and print a summary table."""
    paths = [*FLAGS.metrics, *argv[1:]]
    if not paths:
        raise app.UsageError("error: no runs given: pass --metrics=RUN_DIR_OR_JSON[,...]")
    try:
        runs = load_runs(paths)
    except (OSError, ValueError) as e:
        raise app.UsageError(f"error: {e}") from e
    if not runs:
        raise app.UsageError("error: nothing to plot: none of the runs has any evaluations")
    out = plot(runs, FLAGS.out, title=FLAGS.title, log_x=FLAGS.log_x)
    print(f"wrote {out}")
    print(table(runs))
    if any(run.is_bundled_subset for run in runs):
        print(f"note: {SUBSET_NOTE}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
