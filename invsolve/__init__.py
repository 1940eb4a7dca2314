"""invsolve: posterior sampling for inverse problems in scientific and medical imaging."""

from . import errors, priors, samplers
from .priors import GaussianMixture, Prior, load_prior
from .problem import Problem
from .samplers import Posterior, sample

__version__ = "0.1.0"

__all__ = ["GaussianMixture", "Posterior", "Prior", "Problem", "errors", "load_prior", "priors", "sample", "samplers"]
