"""The objectives, one module per family, and the registry that builds them by name.

* `objectives.iwae`: `VAE`, `IWAE`, `MIWAE`, `CIWAE`, `PIWAE` (the importance weighted bounds);
* `objectives.dreg`: `STL`, `DReG` (path-derivative inference gradients);
* `objectives.rws`: `RWS`; `objectives.jvi`: `JVI`; `objectives.vimco`: `VIMCO`;
  `objectives.vriwae`: `VRIWAE`;
* `objectives.registry`: `OBJECTIVES` (name -> class), `make_objective`, `objective_names`.

The classes and `make_objective`, `objective_names` are also `mcobjectives.X`;
`mcobjectives.objectives.OBJECTIVES` is the registry itself.
"""

from mcobjectives.objectives.dreg import STL, DReG
from mcobjectives.objectives.iwae import CIWAE, IWAE, MIWAE, PIWAE, VAE
from mcobjectives.objectives.jvi import JVI
from mcobjectives.objectives.registry import OBJECTIVES, make_objective, objective_names
from mcobjectives.objectives.rws import RWS
from mcobjectives.objectives.vimco import VIMCO
from mcobjectives.objectives.vriwae import VRIWAE

__all__ = [
    "CIWAE",
    "IWAE",
    "JVI",
    "MIWAE",
    "OBJECTIVES",
    "PIWAE",
    "RWS",
    "STL",
    "VAE",
    "VIMCO",
    "VRIWAE",
    "DReG",
    "make_objective",
    "objective_names",
]
