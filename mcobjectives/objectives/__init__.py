"""The objectives, one module per family, and the registry that builds them by name.

* `objectives.iwae`: `VAE`, `IWAE`, `MIWAE`, `CIWAE`, `PIWAE` (the importance weighted bounds);
* `objectives.dreg`: `STL`, `DReG` (path-derivative inference gradients);
* `objectives.rws`: `RWS`; `objectives.jvi`: `JVI`; `objectives.vimco`: `VIMCO`;
  `objectives.vriwae`: `VRIWAE`; `objectives.ovis`: `OVIS` (optimal score control variate);
* `objectives.disarm`: `DisARM` (antithetic gradients for Bernoulli q);
* `objectives.tvo`: `TVO` (the thermodynamic variational objective);
* `objectives.registry`: `OBJECTIVES` (name -> class), `make_objective`, `objective_names`.

The classes, `make_objective` and `objective_names` are spelled `mcobjectives.X`, their one
public spelling; `mcobjectives.objectives.OBJECTIVES` is the registry itself.
"""

from mcobjectives.objectives.registry import OBJECTIVES

__all__ = ["OBJECTIVES"]
