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

    # ---- model-space linear algebra for linear physics (MCG, RED-Diff; shared by samplers) ----
    # ``forward(x) = M x + c`` with ``M v = A(v) / scale``: ``M`` maps model space to physical
    # measurement units and its adjoint is ``adjoint``.

    def linear_forward(self, v: torch.Tensor) -> torch.Tensor:
        """``M v``: the linear part of ``forward`` (model-space ``v``, physical units out)."""
        if not self.is_linear:
            raise TypeError(f"{type(self.physics).__name__} is not linear; this method needs a LinearPhysics")
        return self.physics.A(v / self.scale)

    def pinv(self, r: torch.Tensor, rho: float = 0.0, iters: int = 50, tol: float = 1e-10) -> torch.Tensor:
        """``(M^T M + rho I)^+ M^T r`` per sample: for ``rho = 0`` the model-space pseudo-inverse
        ``M^+ r`` (minimum-norm least squares), for ``rho > 0`` its Tikhonov-regularised form.

        Exact through the SVD for a ``deepinv`` ``DecomposablePhysics`` (masks, MRI, ...);
        otherwise ``iters`` conjugate-gradient steps on the normal equations started at 0 (which
        stay in the row space of ``M`` and so converge to the minimum-norm solution). Each sample
        (row of ``r``) has its own CG steps and stops on its own once its residual falls below
        ``tol`` (at least ten machine epsilons of the dtype) times its start, so a batch gives the same result as its rows one at a time.
        """
        from deepinv.physics import DecomposablePhysics

        if not self.is_linear:
            raise TypeError(f"{type(self.physics).__name__} is not linear; pinv needs a LinearPhysics")
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        physics = self.physics
        if isinstance(physics, DecomposablePhysics):
            s = physics.mask / self.scale
            s2 = s.abs() ** 2
            inv = torch.where(s2 + rho > 1e-10, s.conj() / (s2 + rho).clamp_min(1e-10), torch.zeros_like(s))
            return physics.V(physics.U_adjoint(r) * inv)

        def dot(a, b):
            return (a * b).reshape(a.shape[0], -1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))

        b = self.adjoint(r)
        x = torch.zeros_like(b)
        res, p = b.clone(), b.clone()
        rs = dot(res, res)
        tol = max(tol, 10 * torch.finfo(b.dtype).eps)  # below rounding, CG stalls then diverges (float32)
        stop = tol ** 2 * rs
        for _ in range(iters):
            active = rs > stop
            if not active.any():
                break
            Ap = self.adjoint(self.linear_forward(p)) + rho * p
            pAp = dot(p, Ap)
            alpha = torch.where(active & (pAp > 0), rs / torch.where(pAp > 0, pAp, 1.0), 0.0)
            x = x + alpha * p
            res = res - alpha * Ap
            rs_new = dot(res, res)
            beta = torch.where(active, rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
            p = torch.where(active, res + beta * p, p)
            rs = torch.where(active, rs_new, rs)
        return x
