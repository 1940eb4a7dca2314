"""Classical reconstructions: pseudo-inverse (FBP for CT) and total-variation regularisation.

TV solves ``min_x 1/2 ||A x - y||^2 + lam TV(x)`` subject to ``lo <= x <= hi`` by FISTA
(Beck & Teboulle 2009) with deepinv's ``TVDenoiser`` (primal-dual, isotropic TV) as the
proximal step, warm-started between iterations; the step is ``1 / ||A||^2`` from
deepinv's power iteration.
"""

from __future__ import annotations

import torch
from deepinv.physics import LinearPhysics


def pseudo_inverse(physics, y: torch.Tensor) -> torch.Tensor:
    """``physics.A_dagger(y)`` (FBP for invsolve's CT)."""
    return physics.A_dagger(y)


def tv(physics: LinearPhysics, y: torch.Tensor, lam: float, iterations: int = 100,
       x_init: torch.Tensor | None = None, bounds: tuple[float, float] | None = (0.0, 1.0),
       prox_iterations: int = 50) -> torch.Tensor:
    """TV-regularised least squares (FISTA); ``lam`` is in the units of ``||A x - y||^2 / 2``."""
    from deepinv.models import TVDenoiser

    if not isinstance(physics, LinearPhysics):
        raise TypeError("the TV baseline needs linear physics (a deepinv LinearPhysics)")
    x = physics.A_adjoint(y) * 0 if x_init is None else x_init.clone()
    with torch.no_grad():
        lipschitz = float(physics.compute_sqnorm(torch.randn_like(x), max_iter=50, tol=1e-4, verbose=False))
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
