"""Monte Carlo variational objectives for TensorFlow Probability.

Every objective turns q(z|x) (a TFP distribution) and log p(x, z) into a surrogate
loss whose value is the negative bound and whose gradients are the objective's
estimators for the model and inference networks.
"""

from mcobjectives import diagnostics, limits, networks, sampling, saving, weights
from mcobjectives.autoencoder import ImportanceWeightedAutoencoder, make_train_step
from mcobjectives.base import (
    Coefficients,
    GradientPath,
    Gradients,
    LogJoint,
    MCObjective,
    ObjectiveResult,
)
from mcobjectives.dreg import STL, DReG
from mcobjectives.evaluation import active_units, log_marginal_estimate
from mcobjectives.iwae import CIWAE, IWAE, MIWAE, PIWAE, VAE
from mcobjectives.jvi import JVI
from mcobjectives.model import make_log_joint
from mcobjectives.registry import make_objective, objective_names
from mcobjectives.rws import RWS
from mcobjectives.saving import load_model
from mcobjectives.vimco import VIMCO
from mcobjectives.vriwae import VRIWAE
from mcobjectives.weights import (
    effective_sample_size,
    leave_one_out_logsumexp,
    log_mean_exp,
    normalized_weights,
)

__version__ = "0.1.0"

__all__ = [
    "CIWAE",
    "IWAE",
    "JVI",
    "MIWAE",
    "PIWAE",
    "RWS",
    "STL",
    "VAE",
    "VIMCO",
    "VRIWAE",
    "Coefficients",
    "DReG",
    "GradientPath",
    "Gradients",
    "ImportanceWeightedAutoencoder",
    "LogJoint",
    "MCObjective",
    "ObjectiveResult",
    "active_units",
    "diagnostics",
    "effective_sample_size",
    "leave_one_out_logsumexp",
    "limits",
    "load_model",
    "log_marginal_estimate",
    "log_mean_exp",
    "make_log_joint",
    "make_objective",
    "make_train_step",
    "networks",
    "normalized_weights",
    "objective_names",
    "sampling",
    "saving",
    "weights",
]
