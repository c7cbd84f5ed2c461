"""Refusals of non-finite numbers: estimates, directions and true gradients.

An estimate holding NaN or inf would make the mean, variance and SNR of its leaf NaN
with no word of why; these checks say how many entries, in which leaves, and which
estimate (whose seed replays it). The statistics are NumPy arrays, so the checks are
plain Python.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_finite", "check_finite_estimates", "leaf_label", "non_finite_counts"]


def non_finite_counts(values: np.ndarray) -> tuple[int, int]:
    """The numbers of NaN and of +-inf entries of `values`."""
    return int(np.count_nonzero(np.isnan(values))), int(np.count_nonzero(np.isinf(values)))


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuses an array holding NaN or inf, naming `what` and how many entries."""
    nan, inf = non_finite_counts(values)
    if nan or inf:
        raise ValueError(
            f"{what} holds {nan} NaN and {inf} inf of its {values.size} entries: it must be finite."
        )


def leaf_label(path: str) -> str:
    """How a message names the leaf at `path` ("leaf 'z1'", or "the estimate" for one leaf)."""
    return f"leaf '{path}'" if path else "the estimate"


def check_finite_estimates(
    name: str, leaves: list[np.ndarray], paths: list[str], start: int, num_estimates: int
) -> None:
    """Refuses a chunk of estimates [n, ...] per leaf (estimates start..start+n-1 of R)
    holding NaN or inf: names how many estimates, in which leaves, and the first one."""
    n = leaves[0].shape[0]
    bad_rows = np.zeros(n, bool)
    by_leaf = []
    for path, leaf in zip(paths, leaves, strict=True):
        rows = ~np.isfinite(leaf.reshape(n, -1)).all(axis=1)
        if rows.any():
            nan, inf = non_finite_counts(leaf)
            by_leaf.append(
                f"{leaf_label(path)}: {int(rows.sum())} estimates, {nan} NaN and {inf} inf "
                f"among their {int(rows.sum()) * (leaf.size // max(n, 1))} components"
            )
        bad_rows |= rows
    if not by_leaf:
        return
    first = start + int(np.argmax(bad_rows))
    raise ValueError(
        f"`{name}` returned non-finite gradient estimates: {int(bad_rows.sum())} of the {n} "
        f"estimates {start} to {start + n - 1} (of num_estimates = {num_estimates}) hold NaN "
        f"or inf, so their mean, variance and SNR would be NaN. By leaf: "
        f"{'; '.join(by_leaf)}. The first is estimate {first}: replay it with the seed "
        f"tf.random.experimental.stateless_split(mcobjectives.sampling.stateless_seed(seed), "
        f"{num_estimates})[{first}], and look for the draws z where log_joint or q gives NaN "
        "or inf (a NaN parameter, or a log_joint of -inf for every sample of a data point)."
    )
