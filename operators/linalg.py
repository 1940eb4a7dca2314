"""The one conjugate-gradient solver of the project, and the least-squares solve built on it.

Used by the samplers' model-space solves (``invsolve.samplers.toolkit.LinearPart``), CG-SENSE
(``operators.mri``) and the classical baselines. It lives in the bottom layer so that operators
and the library share it without an upward import.

Written here rather than taken from ``deepinv.optim.utils.conjugate_gradient`` or sigpy's
``ConjugateGradient`` because both stop on the residual of the whole batch: a batch of posterior
samples would then not equal its samples solved one at a time. Here every batch row has its own
step sizes and its own stopping test (its iterate freezes once converged).
"""

from __future__ import annotations

from typing import Callable

import torch


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product ``Re <a_i, b_i>`` of each batch row, shaped to broadcast against ``a``."""
    prod = (a.conj() * b).real if a.is_complex() else a * b
    return prod.reshape(a.shape[0], -1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
       iters: int = 100, tol: float = 1e-6, info: dict | None = None) -> torch.Tensor:
    """Solve ``apply(x) = b`` (``apply`` Hermitian positive semi-definite) by conjugate gradients.

    Each batch row (dimension 0) runs on its own and stops once ``||b - apply(x)|| <= tol ||b||``
    or after ``iters`` iterations, so a batch gives the same result as its rows one at a time.
    ``tol`` is raised to ten machine epsilons of the dtype (below rounding, float32 CG stalls and
    then diverges). Started at ``x0 = 0`` (the default) on a singular but consistent system, the
    iterates stay in the range of ``apply``: the minimum-norm solution. ``info``, if given, receives
    ``iterations`` (the number run) and ``relative_residual`` (one value per row).
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - apply(x)
    p = r.clone()
    rr = rowdot(r, r)
    tol = max(float(tol), 10 * torch.finfo(b.real.dtype if b.is_complex() else b.dtype).eps)
    bb = rowdot(b, b)
    stop = tol ** 2 * bb
    done = 0
    for _ in range(iters):
        active = rr > stop
        if not bool(active.any()):
            break
        done += 1
        Ap = apply(p)
        pAp = rowdot(p, Ap)
        alpha = torch.where(active & (pAp > 0), rr / torch.where(pAp > 0, pAp, torch.ones_like(pAp)),
                            torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = rowdot(r, r)
        beta = torch.where(active, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = torch.where(active, r + beta * p, p)
        rr = torch.where(active, rr_new, rr)
    if info is not None:
        info["iterations"] = done
        info["relative_residual"] = (rr.sqrt() / torch.where(bb > 0, bb.sqrt(), torch.ones_like(bb))).reshape(-1)
    return x


def least_squares(A: Callable[[torch.Tensor], torch.Tensor], A_adjoint: Callable[[torch.Tensor], torch.Tensor],
                  y: torch.Tensor, rho: float = 0.0, iters: int = 50, tol: float = 1e-10,
                  x0: torch.Tensor | None = None, info: dict | None = None) -> torch.Tensor:
    """``(A^T A + rho I)^+ A^T y`` by ``cg`` on the normal equations, per batch row.

    ``rho = 0`` started at 0 gives the minimum-norm least-squares solution ``A^+ y``; ``rho > 0``
    its Tikhonov-regularised form.
    """
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")

    def normal(v):
        out = A_adjoint(A(v))
        return out + rho * v if rho else out

    return cg(normal, A_adjoint(y), x0=x0, iters=iters, tol=tol, info=info)


def operator_norm_sq(physics, like: torch.Tensor, iters: int = 100, tol: float = 1e-7, seed: int = 0) -> float:
    """``||A||^2``, the largest eigenvalue of ``A^T A`` of a linear ``physics``, by power iteration
    from a start drawn from its own generator (``seed``), so no caller randomness is consumed and
    the same call gives the same number. ``like`` is a tensor of the input's shape and dtype.

    Written here rather than using deepinv's ``compute_sqnorm``: deepinv 0.5 draws the start from
    the global RNG and stops on an absolute change of the estimate, which makes the result depend
    on the caller's random state and on the operator's scale.
    """
    real = not like.is_complex()
    v = torch.randn(like.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = v.to(like.dtype if not real else torch.promote_types(like.dtype, torch.float32)).to(like.device)
    v = v / v.norm()
    value = 0.0
    for _ in range(iters):
        w = physics.A_adjoint(physics.A(v))
        if real and w.is_complex():
            w = w.real
        new = float(w.norm())
        if new == 0:
            return 0.0
        v = w / new
        if abs(new - value) <= tol * new:
            return new
        value = new
    return value
