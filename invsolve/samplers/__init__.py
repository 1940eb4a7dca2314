"""Posterior samplers; ``names()`` lists them, ``invsolve.sample`` runs one."""

from . import dps  # noqa: F401  (registers the sampler)
from .base import Posterior, configure, get, names, nfe_overrides, register, sample

__all__ = ["Posterior", "configure", "get", "names", "nfe_overrides", "register", "sample"]
