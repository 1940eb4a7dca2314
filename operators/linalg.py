"""The one conjugate-gradient solver of the project, and the least-squares solve built on it.

Also the volume coupling shared by DDS and DiffusionMBIR: circular finite differences along
an axis, soft thresholding and one ADMM-TV iteration (``admm_tv_step``).

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

from .errors import ConfigError


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product ``Re <a_i, b_i>`` of each batch row, shaped to broadcast against ``a``."""
    prod = (a.conj() * b).real if a.is_complex() else a * b
    return prod.reshape(a.shape[0], -1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
       iters: int = 100, tol: float = 1e-6, info: dict | None = None, r0: torch.Tensor | None = None) -> torch.Tensor:
    """Solve ``apply(x) = b`` (``apply`` Hermitian positive semi-definite) by conjugate gradients.

    Each batch row (dimension 0) runs on its own and stops once ``||b - apply(x)|| <= tol ||b||``
    or after ``iters`` iterations, so a batch gives the same result as its rows one at a time.
    ``tol`` is raised to ten machine epsilons of the dtype (below rounding, float32 CG stalls and
    then diverges). Started at ``x0 = 0`` (the default) on a singular but consistent system, the
    iterates stay in the range of ``apply``: the minimum-norm solution. ``info``, if given, receives
    ``iterations`` (the number run) and ``relative_residual`` (one value per row). ``r0``: the
    residual ``b - apply(x0)`` when the caller already has it (saves one ``apply``).
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else (b - apply(x) if r0 is None else r0.clone())
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


# ---- finite differences, soft thresholding and ADMM-TV (the volume coupling of DDS / DiffusionMBIR) ----


def forward_diff(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``(D x)_i = x_{i+1} - x_i`` along ``dim``, circular (the last entry wraps to the first), as
    DiffusionMBIR's and DDS's ``D_z``."""
    return torch.roll(x, -1, dim) - x


def forward_diff_adjoint(g: torch.Tensor, dim: int) -> torch.Tensor:
    """``D^T g`` of ``forward_diff``: ``(D^T g)_i = g_{i-1} - g_i`` (circular)."""
    return torch.roll(g, 1, dim) - g


def soft_threshold(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """``sign(v) max(|v| - threshold, 0)``: the proximal map of ``threshold * ||.||_1``."""
    return torch.sign(v) * torch.clamp(v.abs() - threshold, min=0)


class TVState:
    """The splitting variables ``w_d`` (``~ D_d x``) and scaled duals ``u_d`` of ADMM-TV, one per
    difference dim; zero until the first step, then kept across steps (DiffusionMBIR and DDS keep
    them across all diffusion steps)."""

    def __init__(self):
        self.w: dict[int, torch.Tensor] = {}
        self.u: dict[int, torch.Tensor] = {}


def tv_objective(x: torch.Tensor, residual: torch.Tensor, dims, lam: float) -> torch.Tensor:
    """Per batch row, ``1/2 ||residual||^2 + lam sum_d ||D_d x||_1`` (the problem ADMM-TV solves)."""
    r = torch.view_as_real(residual) if residual.is_complex() else residual
    value = 0.5 * r.reshape(r.shape[0], -1).pow(2).sum(1)
    for d in dims:
        value = value + lam * forward_diff(x, d).reshape(x.shape[0], -1).abs().sum(1)
    return value


def admm_tv_step(x: torch.Tensor, normal: Callable[[torch.Tensor], torch.Tensor], data_rhs: torch.Tensor,
                 state: TVState | None, dims, lam: float, rho: float, cg_iters: int, gamma: float = 0.0,
                 anchor: torch.Tensor | None = None, tol: float = 1e-6) -> torch.Tensor:
    """One scaled-form ADMM iteration for ``min_x 1/2 ||b - M x||^2 + lam sum_d ||D_d x||_1
    (+ gamma/2 ||x - anchor||^2)`` with ``D_d = forward_diff(., d)`` over ``dims``:

        x   <- CG_{cg_iters}( M^T M + rho sum_d D_d^T D_d + gamma I,
                              M^T b + rho sum_d D_d^T (w_d - u_d) + gamma anchor ),  started at x
        w_d <- soft_threshold(D_d x + u_d, lam / rho)
        u_d <- u_d + D_d x - w_d

    ``normal(v) = M^T M v`` and ``data_rhs = M^T b`` are given by the caller; ``state`` holds
    ``w``, ``u`` (updated in place). With ``lam = 0`` or no ``dims`` this is ``cg_iters`` CG steps
    on ``(M^T M + gamma I) x = M^T b + gamma anchor`` (DDS's data consistency).
    """
    dims = tuple(dims) if lam > 0 else ()
    if dims and not rho > 0:
        raise ConfigError(f"ADMM-TV needs rho > 0 when lam > 0, got rho={rho}")
    if gamma < 0:
        raise ConfigError(f"gamma must be >= 0, got {gamma}")
    if gamma > 0 and anchor is None:
        raise ConfigError("gamma > 0 needs an anchor (the point the proximal term pulls towards)")
    state = TVState() if state is None else state
    rhs = data_rhs + gamma * anchor if gamma > 0 else data_rhs.clone()
    for d in dims:
        w = state.w.get(d)
        if w is not None:
            rhs = rhs + rho * forward_diff_adjoint(w - state.u[d], d)

    def apply(v):
        out = normal(v)
        if gamma > 0:
            out = out + gamma * v
        for d in dims:
            out = out + rho * forward_diff_adjoint(forward_diff(v, d), d)
        return out

    x = cg(apply, rhs, x0=x, iters=cg_iters, tol=tol)
    for d in dims:
        dx = forward_diff(x, d)
        u = state.u.get(d, torch.zeros_like(dx))
        w = soft_threshold(dx + u, lam / rho)
        state.w[d], state.u[d] = w, u + dx - w
    return x
