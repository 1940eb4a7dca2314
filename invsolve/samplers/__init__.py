"""Posterior samplers; ``names()`` lists them, ``invsolve.sample`` runs one.

Shared steps are in ``toolkit``; each other module is one method (its update rule, hyperparameters,
presets and citation) and registers itself on import.
"""

from . import blinddps, cddb, daps, ddnm, ddrm, dds, dflow, diffpir, diffusionmbir, dmps, dps, enkg, flair, flowdps, fps, mcg, mcgdiff, pigdm, reddiff, resample, tds, tpdm  # noqa: F401  (register the samplers)
from .base import Posterior, configure, get, names, nfe_overrides, register, sample

__all__ = ["Posterior", "configure", "get", "names", "nfe_overrides", "register", "sample"]
