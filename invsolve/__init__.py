"""invsolve: posterior sampling for inverse problems in scientific and medical imaging."""

__version__ = "0.1.0"

from . import baselines, errors, io, metrics, priors, samplers  # noqa: E402
from .fit import prior_fit  # noqa: E402
from .priors import GaussianMixture, Prior, load_prior  # noqa: E402
from .problem import Problem  # noqa: E402
from .reconstruct import reconstruct  # noqa: E402
from .samplers import Posterior, sample  # noqa: E402

__all__ = ["GaussianMixture", "Posterior", "Prior", "Problem", "baselines", "errors", "io", "load_prior", "metrics",
           "prior_fit", "priors", "reconstruct", "sample", "samplers"]
