"""The core of the library: the objective contract, the forward pass and the surrogate.

* `core.objective`: `MCObjective`, `ObjectiveResult`, `Gradients`, `LogJoint`;
* `core.surrogate`: `GradientPath`, `Coefficients` and the one value-preserving surrogate
  assembled from an objective's coefficients;
* `core.forward`: the one forward pass, draw -> log q -> log p(x, z) -> checks, shared by
  the objectives and `mcobjectives.log_marginal_estimate`;
* `core.checks`, `core.structures`, `core.validation`: the argument checks, where the
  model's pieces meet q, and the opt-in run-time checks of `validate_args=True`;
* `core.log_joint`: `make_log_joint`.

The public names are spelled `mcobjectives.X` (`mco.MCObjective`, `mco.GradientPath`, ...).

Layers, bottom up: `core.checks` and `core.validation` import nothing of the library but
`_compat`, and everything may import them (`limits`, `sampling`, `networks` do); `limits`
and `sampling` come next; then `core.structures`, `core.forward` (which draws through
`sampling`), `core.surrogate` and `core.objective`; then `objectives/`, `estimation/`,
`diagnostics/`; `keras/` and `networks/` on top. So this package imports none of its
modules itself: importing `core.checks` from `sampling` must not pull in the objectives.
"""

__all__: list[str] = []
