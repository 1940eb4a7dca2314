"""Posterior samplers; ``names()`` lists them, ``invsolve.sample`` runs one."""

from . import dps  # noqa: F401  (registers the sampler)
from . import mcg, reddiff  # noqa: F401
from . import daps  # noqa: F401
from . import flowdps  # noqa: F401
from . import diffpir, dmps, pigdm  # noqa: F401
from .base import Posterior, configure, get, names, nfe_overrides, register, sample

__all__ = ["Posterior", "configure", "get", "names", "nfe_overrides", "register", "sample"]
