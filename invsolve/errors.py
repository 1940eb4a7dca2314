"""The invsolve exception family (defined in ``operators.errors``, the bottom layer, so operators
can raise them too). Each class is also the matching built-in: see that module's docstring."""

from operators.errors import (CheckpointError, ConfigError, DataError, InvsolveError, PhysicsError, UnknownNameError,
                              UnknownOptionError)

__all__ = ["CheckpointError", "ConfigError", "DataError", "InvsolveError", "PhysicsError", "UnknownNameError",
           "UnknownOptionError"]
