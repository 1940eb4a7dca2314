"""Model-space linear algebra for samplers that need more than ``A`` and ``A^T``.

For linear physics, ``problem.forward(x) = A((x - offset) / scale)`` is affine in the
model-space state ``x``; its linear part is ``M = A / scale`` with adjoint
``M^T = problem.adjoint``. The helpers below solve the three systems that closed-form
likelihood samplers (DiffPIR, PiGDM, DMPS, MCG, ...) need, per posterior sample:

- ``prox_data(problem, z, rho)``: ``argmin_x ||y - forward(x)||^2 + rho ||x - z||^2``
  (a data-consistency proximal step, ``z + Problem.pinv(y - forward(z), rho)``);
- ``solve_measurement(problem, r, c, noise_var)``: ``(noise_var I + c M M^T)^-1 r`` in
  measurement space (a Gaussian likelihood's covariance; with ``noise_var = 0`` the
  pseudo-inverse ``M^T (M M^T)^-1 r`` is ``problem.adjoint`` of the result);
- ``cg(apply, b)``: conjugate gradients for a self-adjoint positive (semi-)definite
  ``apply``, with inner products per batch row so batched samples stay independent.

``deepinv.physics.DecomposablePhysics`` (inpainting, Cartesian MRI: ``A = U diag(m) V^*``)
is solved in closed form; any other ``LinearPhysics`` (CT, blur with non-circular
padding, a user's matrix) goes through conjugate gradients (``cg`` here, the model-space
normal equations in ``Problem.pinv``). Batches of ``n * B`` model tensors are
matched sample-major to the ``B`` measurements, as in ``Problem.residual``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from deepinv.physics import DecomposablePhysics

CG_ITERS = 100
CG_TOL = 1e-6


def _require_linear(problem, who: str) -> None:
    if not problem.is_linear:
        raise TypeError(f"{who} needs linear physics (a deepinv LinearPhysics); "
                        f"got {type(problem.physics).__name__}. Use a guidance sampler such as 'dps' instead.")


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product of each batch row, shaped to broadcast against ``a``."""
    prod = (a.conj() * b).real if a.is_complex() else a * b
    return prod.reshape(a.shape[0], -1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = CG_ITERS,
       tol: float = CG_TOL) -> torch.Tensor:
    """Solve ``apply(x) = b`` by conjugate gradients from ``x = 0``, each batch row on its own.

    A row stops (its iterate freezes) once ``||r|| <= tol * ||b||``; so solving a batch
    equals solving its rows one at a time. On a singular but consistent system the
    iterates stay in the range of ``apply`` (the minimum-norm solution).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = _rowdot(r, r)
    stop = (tol ** 2) * rr
    for _ in range(iters):
        active = rr > stop
        if not bool(active.any()):
            break
        Ap = apply(p)
        pAp = _rowdot(p, Ap)
        alpha = torch.where(active & (pAp > 0), rr / torch.where(pAp > 0, pAp, torch.ones_like(pAp)),
                            torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = _rowdot(r, r)
        beta = torch.where(active, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = torch.where(active, r + beta * p, p)
        rr = torch.where(active, rr_new, rr)
    return x


def _decomposable(problem) -> DecomposablePhysics | None:
    physics = problem.physics
    return physics if isinstance(physics, DecomposablePhysics) else None


def _singular_values(physics: DecomposablePhysics, like: torch.Tensor) -> torch.Tensor:
    mask = physics.mask
    if not torch.is_tensor(mask):
        return torch.as_tensor(float(mask), dtype=like.real.dtype, device=like.device)
    return mask.to(device=like.device)


def solve_measurement(problem, r: torch.Tensor, c: float, noise_var: float, iters: int = CG_ITERS,
                      tol: float = CG_TOL) -> torch.Tensor:
    """``(noise_var I + c M M^T)^-1 r`` for measurement-space ``r`` (one row per sample).

    With ``noise_var = 0`` this is ``(c M M^T)^+ r`` (zero on directions ``M`` does not reach).
    """
    _require_linear(problem, "solve_measurement")
    dec = _decomposable(problem)
    if dec is not None:
        ur = dec.U_adjoint(r)
        s2 = _singular_values(dec, ur).abs() ** 2 / problem.scale ** 2
        denom = noise_var + c * s2
        inv = torch.where(denom > 0, 1 / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        return dec.U(ur * inv)

    def apply(u):
        return noise_var * u + c * problem.linear_forward(problem.adjoint(u))

    return cg(apply, r, iters, tol)


def prox_data(problem, z: torch.Tensor, rho: float, iters: int = CG_ITERS, tol: float = CG_TOL) -> torch.Tensor:
    """``argmin_x ||y - forward(x)||^2 + rho ||x - z||^2`` for each model-space row of ``z``:
    ``z + (M^T M + rho I)^+ M^T (y - forward(z))`` through ``Problem.pinv`` (closed form for
    decomposable physics, per-sample CG otherwise). ``rho = 0`` gives the least-squares
    point closest to ``z`` (the projection onto ``{x : forward(x) = y}`` when it is not empty).
    """
    _require_linear(problem, "prox_data")
    return z + problem.pinv(problem.residual(z), rho=rho, iters=iters, tol=tol).to(z.dtype)


def likelihood_score(problem, x: torch.Tensor, c: float, noise_var: float, iters: int = CG_ITERS,
                     tol: float = CG_TOL) -> torch.Tensor:
    """``M^T (noise_var I + c M M^T)^-1 (y - forward(x))``: the gradient in ``x`` of
    ``log N(y; forward(x), noise_var I + c M M^T)`` (its covariance held fixed)."""
    r = problem.residual(x)
    return problem.adjoint(solve_measurement(problem, r, c, noise_var, iters, tol)).to(x.dtype)


# ---- one problem's linear part, set up once per sampler run ---------------------------------

DENSE_MAX = 1024


class LinearPart:
    """The model-space linear part ``M`` of ``problem.forward`` (``forward(x) = M x + c``), set
    up once per sampler run, with the solves that projection and closed-form-likelihood
    samplers need. The backend is chosen once:

    - ``"svd"``: a ``deepinv`` ``DecomposablePhysics`` (``A = U diag(s) V^*``: inpainting
      masks, Cartesian MRI, ...), exact;
    - ``"dense"``: real physics whose per-sample model dimension is at most ``dense_max``:
      ``M`` is assembled from ``d`` forward calls on the basis vectors and factored by a thin
      SVD in float64, exact (the official DMPS code, too, works with the SVD of ``A``);
    - ``"cg"``: any other ``LinearPhysics`` (CT, blur, large images): conjugate gradients with
      ``iters`` steps per solve, each posterior sample on its own.

    ``x_shape`` is the model batch shape ``(N, *sample_shape)``; the physics must act on each
    batch row alike (as every sampler assumes when it tiles ``y``).
    """

    def __init__(self, problem, x_shape, iters: int = CG_ITERS, tol: float = CG_TOL, dense_max: int = DENSE_MAX):
        _require_linear(problem, "LinearPart")
        self.problem, self.iters, self.tol = problem, iters, tol
        self.sample_shape = tuple(x_shape[1:])
        self.backend = "cg"
        if _decomposable(problem) is not None:
            self.backend = "svd"
        elif math.prod(self.sample_shape) <= dense_max:
            self._assemble()

    def _assemble(self) -> None:
        d = math.prod(self.sample_shape)
        with torch.no_grad():
            basis = torch.eye(d).reshape(d, *self.sample_shape)
            columns = self.problem.linear_forward(basis)
        if columns.is_complex():
            return
        self.m_shape = tuple(columns.shape[1:])
        M = columns.reshape(d, -1).T.to(torch.float64)  # (m, d)
        U, s, Vh = torch.linalg.svd(M, full_matrices=False)
        if s.numel():  # numerically zero singular values (numpy's pinv cut-off at the assembly precision)
            s = torch.where(s > s.max() * max(M.shape) * torch.finfo(columns.dtype).eps, s, torch.zeros_like(s))
        self.U, self.s, self.V = U, s, Vh.T
        self.backend = "dense"

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1).to(torch.float64)

    def pinv(self, r: torch.Tensor, rho: float = 0.0) -> torch.Tensor:
        """``(M^T M + rho I)^+ M^T r`` per row of the measurement-space ``r`` (model space out);
        ``rho = 0``: the pseudo-inverse ``M^+ r``."""
        if self.backend != "dense":
            return self.problem.pinv(r, rho=rho, iters=self.iters, tol=self.tol)
        s = self.s
        gain = torch.where(s ** 2 + rho > 0, s / torch.where(s ** 2 + rho > 0, s ** 2 + rho, torch.ones_like(s)),
                           torch.zeros_like(s))
        out = ((self._rows(r) @ self.U) * gain) @ self.V.T
        return out.reshape(r.shape[0], *self.sample_shape)

    def solve_measurement(self, r: torch.Tensor, c: float, noise_var: float) -> torch.Tensor:
        """``(noise_var I + c M M^T)^-1 r`` (``(c M M^T)^+ r`` when ``noise_var = 0``), as the
        module function ``solve_measurement``."""
        if self.backend != "dense":
            return solve_measurement(self.problem, r, c, noise_var, self.iters, self.tol)
        rows = self._rows(r)
        coef = rows @ self.U
        denom = noise_var + c * self.s ** 2
        inv = torch.where(denom > 0, 1 / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        out = (coef * inv) @ self.U.T
        if noise_var > 0:  # directions outside the range of M
            out = out + (rows - coef @ self.U.T) / noise_var
        return out.reshape(r.shape).to(r.dtype)

    def likelihood_score(self, x: torch.Tensor, c: float, noise_var: float) -> torch.Tensor:
        """``M^T (noise_var I + c M M^T)^-1 (y - forward(x))``, as the module function."""
        u = self.solve_measurement(self.problem.residual(x), c, noise_var)
        return self.problem.adjoint(u).to(x.dtype)

    def project(self, x: torch.Tensor, target: torch.Tensor, rho: float = 0.0) -> torch.Tensor:
        """``x + (M^T M + rho I)^+ M^T (target - forward(x))``: for ``rho = 0`` the orthogonal
        projection of ``x`` onto ``{forward = target}`` (least squares when it is empty);
        ``target`` holds one row per row of ``x``."""
        return x + self.pinv(target - self.problem.forward(x), rho).to(x.dtype)
