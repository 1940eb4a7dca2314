"""Priors: the ``Prior`` contract, adapters, the exact Gaussian mixture, loaders and training."""

from .adapters import DDPMSchedule, make_denoiser
from .base import Prior, PriorCard
from .gaussian_mixture import GaussianMixture
from .latent import LatentPrior, LatentProblem
from .loaders import list_priors, load_prior

__all__ = ["DDPMSchedule", "GaussianMixture", "LatentPrior", "LatentProblem", "Prior", "PriorCard", "list_priors", "load_prior", "make_denoiser"]
