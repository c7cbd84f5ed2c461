"""The core of the library: the objective contract, the forward pass and the surrogate.

* `core.objective`: `MCObjective`, `ObjectiveResult`, `Gradients`, `LogJoint`;
* `core.surrogate`: `GradientPath`, `Coefficients` and the one value-preserving surrogate
  assembled from an objective's coefficients;
* `core.forward`: the one forward pass, draw -> log q -> log p(x, z) -> checks, shared by
  the objectives and `mcobjectives.log_marginal_estimate`;
* `core.checks`, `core.structures`, `core.validation`: the argument checks, where the
  model's pieces meet q, and the opt-in run-time checks of `validate_args=True`;
* `core.log_joint`: `make_log_joint`.

The public names are spelled `mcobjectives.X` (`mco.MCObjective`, `mco.GradientPath`, ...);
this package imports none of its modules itself, so that the low-level checks can be
imported without the objectives.
"""

__all__: list[str] = []
