"""``Problem`` (physics + measurement + noise level, physical units) and its model-space view.

A sampler never sees a ``Problem``: ``invsolve.sample`` asks the prior for the problem's view in
its model space (``Prior.model_problem``): ``ModelProblem`` for pixel priors (the affine
``UnitMap`` of the prior's card), ``LatentModelProblem`` for latent priors (the decoder). This
file holds the affine map's only formula; it has no linear algebra of its own (that is
``operators.linalg`` and ``invsolve.samplers.toolkit.LinearPart``).
"""

from __future__ import annotations

import dataclasses

import torch
from deepinv.physics import LinearPhysics, Physics

from operators.errors import ConfigError, DataError, PhysicsError


@dataclasses.dataclass(frozen=True)
class UnitMap:
    """The affine map between physical units and a prior's model space:
    ``x_model = scale * x_physical + offset`` (e.g. [0, 1] attenuation -> [-1, 1]: scale 2, offset -1)."""

    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self):
        if not (self.scale == self.scale and self.scale != 0 and abs(self.scale) != float("inf")):
            raise ConfigError(f"scale must be finite and nonzero (x_model = scale * x_physical + offset), got {self.scale}")

    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.scale * x_physical + self.offset

    def to_physical(self, x_model: torch.Tensor) -> torch.Tensor:
        return (x_model - self.offset) / self.scale


class Problem:
    """An inverse problem ``y = A(x) + n``, ``n ~ N(0, sigma_y^2 I)``, in physical units.

    :param physics: any ``deepinv.physics.Physics`` acting on physical-unit images.
    :param y: measurements, batch first: one row per scan to reconstruct.
    :param sigma_y: standard deviation of the measurement noise, in the physical units of ``y``.
    :param prior: the prior this problem is meant for (optional): ``invsolve.sample`` checks that
        it is the prior it is given, and the model-space helpers below use its map.
    :param scale, offset: an explicit physical -> model map that replaces the prior card's
        (``x_model = scale * x_physical + offset``), for priors without one (e.g. a
        ``GaussianMixture`` defined in model space).

    ``forward``, ``residual``, ``adjoint``, ``linear_forward``, ``to_model`` and ``to_physical`` are those of the
    model-space view (``view()``), kept here for convenience.
    """

    def __init__(self, physics: Physics, y: torch.Tensor, sigma_y: float, prior=None,
                 scale: float | None = None, offset: float | None = None):
        if not isinstance(physics, Physics):
            raise PhysicsError(f"physics must be a deepinv.physics.Physics, got {type(physics).__name__}")
        if not torch.is_tensor(y):
            raise DataError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if not torch.isfinite(y).all():
            raise DataError("the measurement y contains NaN or Inf values; clean or mask them before reconstructing")
        if not (sigma_y >= 0) or sigma_y == float("inf"):
            raise ConfigError(f"sigma_y must be finite and >= 0 (physical units of y), got {sigma_y}")
        self.physics = physics
        self.y = y
        self.sigma_y = float(sigma_y)
        self.prior = prior
        explicit = scale is not None or offset is not None
        self.unit_map = UnitMap(float(1.0 if scale is None else scale), float(0.0 if offset is None else offset)) \
            if explicit else None

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    @property
    def is_linear(self) -> bool:
        return isinstance(self.physics, LinearPhysics)

    def tiled_y(self, batch: int) -> torch.Tensor:
        """The measurements repeated sample-major to match a model batch of size ``batch``."""
        if batch % self.batch:
            raise DataError(f"a batch of {batch} samples does not divide into {self.batch} measurements")
        return self.y.repeat(batch // self.batch, *([1] * (self.y.ndim - 1)))

    def view(self, prior=None) -> "ModelProblem":
        """This problem in the model space of ``prior`` (default: the problem's own prior; with
        neither, the explicit ``scale``/``offset`` or the identity map)."""
        prior = prior if prior is not None else self.prior
        if prior is not None:
            return prior.model_problem(self)
        return ModelProblem(self, self.unit_map or UnitMap())

    # the model-space view's helpers, for code that holds a Problem
    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.view().to_model(x_physical)

    def to_physical(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.view().to_physical(x_model)

    def forward(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.view().forward(x_model)

    def residual(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.view().residual(x_model)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.view().adjoint(r)

    def linear_forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.view().linear_forward(v)


class ModelProblem:
    """A ``Problem`` seen from a pixel prior's model space through an affine ``UnitMap``.

    ``forward(x) = A(to_physical(x))`` is what samplers call; for linear physics it is affine,
    ``forward(x) = M x + c`` with ``M v = A(v / scale)`` (``linear_forward``) and adjoint
    ``M^T r = A^T(r) / scale`` (``adjoint``). A batch of ``n * B`` model-space tensors is matched
    sample-major against the ``B`` measurements (row ``j * B + i`` belongs to measurement ``i``).
    """

    def __init__(self, problem: Problem, unit_map: UnitMap, x_shape: tuple[int, ...] | None = None, prior=None):
        self.problem = problem
        self.unit_map = unit_map
        self.x_shape = None if x_shape is None else tuple(x_shape)
        self.prior = prior

    # the physical problem's data
    physics = property(lambda self: self.problem.physics)
    y = property(lambda self: self.problem.y)
    sigma_y = property(lambda self: self.problem.sigma_y)
    batch = property(lambda self: self.problem.batch)
    is_linear = property(lambda self: isinstance(self.physics, LinearPhysics))
    scale = property(lambda self: self.unit_map.scale)
    offset = property(lambda self: self.unit_map.offset)

    def tiled_y(self, batch: int) -> torch.Tensor:
        return self.problem.tiled_y(batch)

    def view(self, prior=None) -> "ModelProblem":
        return self

    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.unit_map.to_model(x_physical)

    def to_physical(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.unit_map.to_physical(x_model)

    def forward(self, x_model: torch.Tensor) -> torch.Tensor:
        """``A(x)`` for model-space ``x`` (physical units out)."""
        return self.physics.A(self.to_physical(x_model))

    def residual(self, x_model: torch.Tensor) -> torch.Tensor:
        """``y - A(x)`` for a model-space batch (measurements tiled to the batch)."""
        Ax = self.forward(x_model)
        return self.tiled_y(Ax.shape[0]) - Ax

    def require_linear(self, who: str) -> None:
        """A ``PhysicsError`` (a ``TypeError``) naming ``who`` unless the physics is linear."""
        if not self.is_linear:
            raise PhysicsError(f"{who} needs linear physics (a deepinv LinearPhysics); "
                               f"{type(self.physics).__name__} is not linear. Use a guidance sampler such as 'dps' instead.")

    def linear_forward(self, v: torch.Tensor) -> torch.Tensor:
        """``M v``: the linear part of ``forward`` (model-space ``v``, physical units out)."""
        self.require_linear("linear_forward")
        return self.physics.A(v / self.scale)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``M^T r``: the adjoint of ``forward``'s linear part, into model space."""
        self.require_linear("adjoint")
        return self.physics.A_adjoint(r) / self.scale
