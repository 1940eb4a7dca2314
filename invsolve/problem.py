"""``Problem``: physics + measurement + noise level + the physical <-> model-space map."""

from __future__ import annotations

import torch
from deepinv.physics import LinearPhysics, Physics


class Problem:
    """An inverse problem ``y = A(x) + n``, ``n ~ N(0, sigma_y^2 I)``, seen from model space.

    :param physics: any ``deepinv.physics.Physics`` acting on physical-unit images.
    :param y: measurements, batch first: one row per scan to reconstruct.
    :param sigma_y: standard deviation of the measurement noise, in the physical units of ``y``.
    :param prior: the prior whose card gives the affine map between physical units and its
        model space (``x_model = scale * x_physical + offset``); or give ``scale``/``offset``.

    Samplers only call ``forward`` (the physics on model-space tensors), ``residual`` and
    ``shape``; a batch of ``n * B`` model-space tensors is matched sample-major against the
    ``B`` measurements (row ``j * B + i`` belongs to measurement ``i``).
    """

    def __init__(self, physics: Physics, y: torch.Tensor, sigma_y: float, prior=None,
                 scale: float | None = None, offset: float | None = None):
        if not isinstance(physics, Physics):
            raise TypeError(f"physics must be a deepinv.physics.Physics, got {type(physics).__name__}")
        if not torch.is_tensor(y):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if not torch.isfinite(y).all():
            raise ValueError("the measurement y contains NaN or Inf values; clean or mask them before reconstructing")
        if not (sigma_y >= 0):
            raise ValueError(f"sigma_y must be >= 0 (physical units of y), got {sigma_y}")
        self.physics = physics
        self.y = y
        self.sigma_y = float(sigma_y)
        card = getattr(prior, "card", None)
        self.scale = float(scale if scale is not None else (card.scale if card else 1.0))
        self.offset = float(offset if offset is not None else (card.offset if card else 0.0))
        self.x_shape = tuple(card.shape) if card is not None else None

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    @property
    def is_linear(self) -> bool:
        return isinstance(self.physics, LinearPhysics)

    def to_physical(self, x_model: torch.Tensor) -> torch.Tensor:
        return (x_model - self.offset) / self.scale

    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.scale * x_physical + self.offset

    def forward(self, x_model: torch.Tensor) -> torch.Tensor:
        """``A(x)`` for model-space ``x`` (physical units out)."""
        return self.physics.A(self.to_physical(x_model))

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """Adjoint of ``forward``'s linear part, into model space."""
        if not self.is_linear:
            raise TypeError(f"{type(self.physics).__name__} is not linear; this method needs a LinearPhysics")
        return self.physics.A_adjoint(r) / self.scale

    def tiled_y(self, batch: int) -> torch.Tensor:
        """The measurements repeated sample-major to match a model batch of size ``batch``."""
        if batch % self.batch:
            raise ValueError(f"a batch of {batch} samples does not divide into {self.batch} measurements")
        return self.y.repeat(batch // self.batch, *([1] * (self.y.ndim - 1)))

    def residual(self, x_model: torch.Tensor) -> torch.Tensor:
        """``y - A(x)`` for a model-space batch (measurements tiled to the batch)."""
        Ax = self.forward(x_model)
        return self.tiled_y(Ax.shape[0]) - Ax
