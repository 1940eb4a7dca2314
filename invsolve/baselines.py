"""Classical reconstructions: filtered back-projection, least squares and total-variation regularisation.

``fbp`` is the operator's own FBP (``physics.fbp``: the CT operators). ``least_squares`` is
``physics.A_dagger``, which keeps deepinv's meaning: the least-squares solution (closed form where
the operator has one, CG on the normal equations for CT, CG-SENSE for multi-coil MRI).

TV solves ``min_x 1/2 ||A x - y||^2 + lam TV(x)`` subject to ``lo <= x <= hi`` by FISTA
(Beck & Teboulle 2009) with deepinv's ``TVDenoiser`` (primal-dual, isotropic TV) as the
proximal step, warm-started between iterations; the step is ``1 / ||A||^2`` from
``operators.linalg.operator_norm_sq`` (a power iteration from its own seeded start, so the same
measurement always gives the same output).
"""

from __future__ import annotations

import torch
from deepinv.models import TVDenoiser
from deepinv.physics import LinearPhysics

from operators.linalg import operator_norm_sq

from .errors import PhysicsError


def fbp(physics, y: torch.Tensor) -> torch.Tensor:
    """Filtered back-projection ``physics.fbp(y)`` of a CT operator (parallel or fan beam, torch or
    astra; the 3D cone beam's FDK is ``physics.fdk``)."""
    if not callable(getattr(physics, "fbp", None)):
        raise PhysicsError(f"{type(physics).__name__} has no fbp(); FBP is for the CT operators "
                           "(use least_squares for the others)")
    return physics.fbp(y)


def least_squares(physics, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """The least-squares solution ``physics.A_dagger(y, **kwargs)`` (deepinv's meaning of ``A_dagger``;
    e.g. ``max_iter=`` / ``tol=`` for the iterative ones)."""
    return physics.A_dagger(y, **kwargs)


def tv(physics: LinearPhysics, y: torch.Tensor, lam: float, iterations: int = 100,
       x_init: torch.Tensor | None = None, bounds: tuple[float, float] | None = (0.0, 1.0),
       prox_iterations: int = 50) -> torch.Tensor:
    """TV-regularised least squares (FISTA); ``lam`` is in the units of ``||A x - y||^2 / 2``."""
    if not isinstance(physics, LinearPhysics):
        raise PhysicsError("the TV baseline needs linear physics (a deepinv LinearPhysics)")
    x = physics.A_adjoint(y) * 0 if x_init is None else x_init.clone()
    with torch.no_grad():
        lipschitz = operator_norm_sq(physics, x, iters=100, tol=1e-6)  # seeded: same y, same output
        step = 1.0 / lipschitz
        denoiser = TVDenoiser(n_it_max=prox_iterations, crit=1e-6)
        z, t = x.clone(), 1.0
        for _ in range(iterations):
            grad = physics.A_adjoint(physics.A(z) - y)
            x_next = denoiser(z - step * grad, ths=lam * step)
            if bounds is not None:
                x_next = x_next.clamp(*bounds)
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            z = x_next + ((t - 1) / t_next) * (x_next - x)
            x, t = x_next, t_next
    return x
