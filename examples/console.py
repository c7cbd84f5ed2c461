"""A run's progress on stdout, and its warnings on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable

import keras


class Console:
    """Progress on stdout: Keras progress bars on a terminal, else a plain line per log.

    A worker other than the chief (`enabled` False) prints nothing but its errors.
    """

    def __init__(self, num_steps: int, *, enabled: bool = True):
        self.enabled = enabled
        self.interactive = enabled and sys.stdout.isatty()
        self.num_steps = num_steps
        self._bar = None
        self._on_bar_line = False
        if self.interactive:
            self._bar = keras.utils.Progbar(
                num_steps, stateful_metrics=["loss", "bound", "ess", "steps/s"]
            )

    def print(self, text: str) -> None:
        if self.enabled:
            self._end_bar_line()
            print(text, flush=True)

    def _end_bar_line(self) -> None:
        if self._on_bar_line:
            print()
            self._on_bar_line = False

    def warn(self, text: str) -> None:
        if self.enabled:
            self._end_bar_line()
            sys.stdout.flush()
            print(f"WARNING: {text}", file=sys.stderr, flush=True)

    def training(self, step: int, values: dict[str, float], rate: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step, [*values.items(), ("steps/s", rate)])
            self._on_bar_line = step < self.num_steps  # the bar ends its last line
            return
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(f"step {step}/{self.num_steps}  {shown}  ({rate:.3g} steps/s)", flush=True)

    def evaluation(self, step: int, num_batches: int) -> Callable[[int], None] | None:
        """The progress callback of the evaluation at `step`: a bar on a terminal."""
        if not self.interactive:
            return None
        self.print(f"evaluating step {step} ({num_batches} test batches)")
        bar = keras.utils.Progbar(num_batches, unit_name="batch")

        def update(done: int) -> None:
            bar.update(done)
            self._on_bar_line = done < num_batches  # the bar ends its last line

        return update

    def evaluated(self, result: dict) -> None:
        """One line of an evaluation's results."""
        per_latent = result["active_units_per_latent"]
        leaves = ""
        if len(per_latent) > 1:
            leaves = " (" + ", ".join(f"{k} {v}" for k, v in per_latent.items()) + ")"
        self.print(
            f"step {result['step']}: test IWAE-64 {result['iwae64']:.2f}, log p^(x) "
            f"{result['log_px']:.2f}, -KL {result['neg_kl']:.2f}, ESS/K "
            f"{result['ess_fraction']:.3f}, active units {result['active_units']}{leaves}"
        )
