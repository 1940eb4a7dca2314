"""Public contract checks for physics operators (ours or a user's).

``check_operator(physics, x)`` runs every check that applies and returns a report;
``assert_operator(physics, x)`` raises ``AssertionError`` listing what failed. Each
check is also available on its own and returns a relative error.
"""

from __future__ import annotations

import dataclasses

import torch
from deepinv.physics import LinearPhysics, Physics


def _randn_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).sum().real if a.is_complex() else (a * b).sum()


def adjointness(physics: LinearPhysics, x: torch.Tensor, generator: torch.Generator) -> float:
    """``|<A u, v> - <u, A^T v>| / (||A u|| ||v||)`` for random u, v shaped like x and A(x)."""
    u = _randn_like(x, generator)
    Au = physics.A(u)
    v = _randn_like(Au, generator)
    lhs, rhs = _inner(Au, v), _inner(u, physics.A_adjoint(v))
    return float((lhs - rhs).abs() / (Au.norm() * v.norm()))


def linearity(physics: Physics, x: torch.Tensor, generator: torch.Generator) -> float:
    """``||A(a u + b v) - a A u - b A v|| / ||a A u + b A v||``."""
    u, v = _randn_like(x, generator), _randn_like(x, generator)
    a, b = 0.7, -1.3
    expected = a * physics.A(u) + b * physics.A(v)
    return float((physics.A(a * u + b * v) - expected).norm() / expected.norm())


def batch_invariance(physics: Physics, x: torch.Tensor, generator: torch.Generator) -> float:
    """Relative difference between applying A to a batch and to each of its elements alone."""
    u = _randn_like(x, generator)
    batched = physics.A(u)
    single = torch.cat([physics.A(u[i:i + 1]) for i in range(u.shape[0])])
    return float((batched - single).norm() / batched.norm())


def vjp_vs_adjoint(physics: LinearPhysics, x: torch.Tensor, generator: torch.Generator) -> float:
    """Relative difference between autograd's vector-Jacobian product of A and ``A_adjoint``."""
    u = _randn_like(x, generator).requires_grad_(True)
    with torch.enable_grad():
        Au = physics.A(u)
        v = _randn_like(Au, generator)
        (vjp,) = torch.autograd.grad(Au, u, grad_outputs=v)
    adjoint = physics.A_adjoint(v)
    return float((vjp - adjoint).norm() / adjoint.norm())


@dataclasses.dataclass
class Report:
    errors: dict[str, float]
    tolerances: dict[str, float]

    @property
    def failed(self) -> dict[str, float]:
        return {k: v for k, v in self.errors.items() if not v <= self.tolerances[k]}

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [f"{'check':<18} {'error':>10} {'tolerance':>10}  result"]
        for k, v in self.errors.items():
            lines.append(f"{k:<18} {v:>10.2e} {self.tolerances[k]:>10.1e}  {'ok' if k not in self.failed else 'FAILED'}")
        return "\n".join(lines)


def check_operator(physics: Physics, x: torch.Tensor, generator: torch.Generator | None = None) -> Report:
    """Run the contract checks that apply to ``physics`` at inputs shaped like ``x``.

    Tolerances scale with the dtype of ``x`` (use float64 for tight adjoint checks).
    """
    g = generator or torch.Generator().manual_seed(0)
    eps = torch.finfo(x.dtype).eps
    errors, tol = {}, {}
    if isinstance(physics, LinearPhysics):
        errors["adjointness"], tol["adjointness"] = adjointness(physics, x, g), 1e3 * eps
        errors["linearity"], tol["linearity"] = linearity(physics, x, g), 1e3 * eps
        errors["vjp_vs_adjoint"], tol["vjp_vs_adjoint"] = vjp_vs_adjoint(physics, x, g), 1e3 * eps
    if x.shape[0] > 1:
        errors["batch_invariance"], tol["batch_invariance"] = batch_invariance(physics, x, g), 1e2 * eps
    return Report(errors, tol)


def assert_operator(physics: Physics, x: torch.Tensor, generator: torch.Generator | None = None) -> Report:
    report = check_operator(physics, x, generator)
    if not report.ok:
        raise AssertionError(f"{type(physics).__name__} failed its contract checks:\n{report}")
    return report
