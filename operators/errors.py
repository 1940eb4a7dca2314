"""The invsolve exception family.

Every error invsolve raises about what a user gave it (options, files, checkpoints, physics) is an
``InvsolveError``; each subclass is also the built-in exception code used to catch, so
``except ValueError`` (or ``TypeError``, ``KeyError``) keeps working:

- ``ConfigError`` (``ValueError``): a bad option, flag, hyperparameter, preset or field value.
- ``UnknownNameError`` (``ConfigError``, ``KeyError``): an unknown registered name (operator, sampler, preset).
- ``UnknownOptionError`` (``ConfigError``, ``TypeError``): a keyword argument or option the call does not
  take (unknown, conflicting with another, or fixed by a preset).
- ``DataError`` (``ValueError``): a bad input file or array (wrong shape, NaN values, corrupt file).
- ``CheckpointError`` (``ValueError``): weights or a card that fail to load or to verify.
- ``PhysicsError`` (``TypeError``): physics that does not support what is asked (e.g. nonlinear
  physics given to a method that needs linear physics).

This module lives in ``operators`` (the bottom layer) so operators can raise these without
importing ``invsolve``; ``invsolve.errors`` is their public home.
"""

from __future__ import annotations

import difflib

__all__ = ["closest_first", "CheckpointError", "ConfigError", "DataError", "InvsolveError", "PhysicsError", "UnknownNameError",
           "UnknownOptionError"]


class InvsolveError(Exception):
    """Base class of the errors invsolve raises about its inputs."""


class ConfigError(InvsolveError, ValueError):
    """A bad option, flag, hyperparameter, preset or field value."""


class UnknownNameError(ConfigError, KeyError):
    """An unknown registered name; also a ``KeyError``, printed without ``KeyError``'s quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownOptionError(ConfigError, TypeError):
    """A keyword argument or option the call does not take (unknown, conflicting, or fixed by a
    preset); also a ``TypeError``, as Python raises for an unexpected keyword."""


class DataError(InvsolveError, ValueError):
    """A bad input file or array: wrong shape or dtype, NaN values, a corrupt or incomplete file."""


class CheckpointError(InvsolveError, ValueError):
    """Weights or a prior card that fail to load or to verify (layout, config, checksum)."""


class PhysicsError(InvsolveError, TypeError):
    """Physics that does not support what is asked, e.g. a method that needs linear physics."""


def closest_first(name: str, choices) -> str:
    """``choices`` as a comma-separated list with the closest matches to ``name`` first (for
    "unknown X; available: ..." messages)."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    return ", ".join(close + [c for c in choices if c not in close])
