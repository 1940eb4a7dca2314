"""Public contract checks for physics operators (ours or a user's).

``check_operator(physics, x)`` runs every check that applies and returns a ``Report``;
``assert_operator(physics, x)`` raises ``AssertionError`` listing what failed. Each check is
also available on its own and returns a relative error (``taylor_test`` returns the remainders
and the observed order).

Which checks run:

- linear operators (``deepinv.physics.LinearPhysics``): ``adjointness``, ``linearity``,
  ``vjp_vs_adjoint``;
- nonlinear operators: ``vjp_vs_autograd`` (``A_vjp`` against autograd through ``A``) and the
  ``taylor`` test (the first-order Taylor remainder must shrink like h^2);
- black-box operators (``operators.blackbox.BlackBox``, ``black_box = True``): ``refuses_gradient``
  (autograd through ``A`` raises ``PhysicsError``, never a silent zero gradient) and ``determinism``
  (the same input gives the same output) instead of the derivative checks;
- every other operator: ``func_vjp`` (``torch.func.vjp`` agrees with autograd, so ``torch.func``
  transforms and deepinv's ``A_vjp`` work);
- every operator, for a batch ``x`` of more than one element: ``batch_invariance``;
- ``pseudo_inverse``: ``||A(A_dagger(A u)) - A u|| / ||A u||``. Enforced only with
  ``pinv_tol=...`` (an exact pseudo-inverse gives rounding error; FBP or a truncated iterative
  solver does not); otherwise it is reported for information when the operator defines its own
  ``A_dagger`` and skipped (with the reason in ``Report.skipped``) when it does not.

Tolerances scale with the dtype of ``x`` (use float64 for tight adjoint checks).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from deepinv.physics import LinearPhysics, Physics

from .errors import PhysicsError


def _randn_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).sum().real if a.is_complex() else (a * b).sum()


def _point(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` itself, or a random point shaped like it when ``x`` is all zeros (a shape template)."""
    return x.detach().clone() if bool((x != 0).any()) else _randn_like(x, generator)


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


def vjp_vs_autograd(physics: Physics, x: torch.Tensor, generator: torch.Generator) -> float:
    """Relative difference between ``physics.A_vjp(x, v)`` and autograd's vector-Jacobian product
    of ``A`` at x (the point is ``x``, or random if ``x`` is all zeros)."""
    point = _point(x, generator)
    with torch.enable_grad():
        leaf = point.clone().requires_grad_(True)
        Ax = physics.A(leaf)
        v = _randn_like(Ax, generator)
        (autograd,) = torch.autograd.grad(Ax, leaf, grad_outputs=v)
    vjp = physics.A_vjp(point, v)
    return float((vjp - autograd).norm() / autograd.norm())


def refuses_gradient(physics: Physics, x: torch.Tensor, generator: torch.Generator) -> float:
    """0 when a backward pass through a black box's ``A`` raises ``PhysicsError``; 1 when it returns a gradient."""
    u = _point(x, generator).requires_grad_(True)
    try:
        with torch.enable_grad():
            physics.A(u).sum().backward()
    except PhysicsError:
        return 0.0
    return 1.0


def determinism(physics: Physics, x: torch.Tensor, generator: torch.Generator) -> float:
    """Relative difference between two evaluations of ``A`` at the same point."""
    u = _point(x, generator)
    first, second = physics.A(u), physics.A(u)
    return float((first - second).norm() / first.norm().clamp(min=torch.finfo(first.dtype).tiny))


def func_vjp(physics: Physics, x: torch.Tensor, generator: torch.Generator) -> float:
    """Relative difference between ``torch.func.vjp`` through ``physics.A`` and ``torch.autograd``'s
    vector-Jacobian product: fails for custom autograd functions that ``torch.func`` cannot run
    (no ``setup_context``), which also break deepinv's ``A_vjp`` and ``L2().grad`` on such operators."""
    point = _point(x, generator)
    y, pullback = torch.func.vjp(physics.A, point)
    v = _randn_like(y, generator)
    (functional,) = pullback(v)
    with torch.enable_grad():
        u = point.detach().requires_grad_(True)
        (autograd,) = torch.autograd.grad(physics.A(u), u, grad_outputs=v)
    return float((functional - autograd).norm() / autograd.norm())


def jvp(physics: Physics, x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Jacobian-vector product ``J(x) d`` of ``A``: forward-mode autograd (``torch.func.jvp``), or,
    where an operation has no forward-mode rule, the double-vjp identity
    ``J d = d/du <J^T u, d>`` through reverse-mode autograd (exact since ``J^T u`` is linear in u)."""
    try:
        _, tangent = torch.func.jvp(lambda u: physics.A(u), (x,), (direction,))
        return tangent
    except (RuntimeError, NotImplementedError):
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            Ax = physics.A(leaf)
            u = torch.zeros_like(Ax).requires_grad_(True)
            (vjp,) = torch.autograd.grad(Ax, leaf, grad_outputs=u, create_graph=True)
            (tangent,) = torch.autograd.grad(_inner(vjp, direction), u)
        return tangent


@dataclasses.dataclass
class TaylorResult:
    """Remainders ``r(h) = ||A(x + h d) - A(x) - h J d||`` at relative steps ``h`` (``||d|| = ||x||``).

    ``order`` is the median slope of log r against log h over the steps whose remainders lie above
    the rounding floor (~2 for a correct derivative, ~1 for a wrong one); it is ``inf`` when every
    remainder is at the floor (A is affine along d to rounding).
    """

    steps: list[float]
    remainders: list[float]
    floor: float
    order: float


def taylor_test(physics: Physics, x: torch.Tensor, generator: torch.Generator,
                steps: tuple[float, ...] = tuple(2.0 ** -k for k in range(1, 15))) -> TaylorResult:
    """First-order Taylor test of ``A`` at x (or a random point if x is all zeros) along a random d."""
    point = _point(x, generator)
    direction = _randn_like(point, generator)
    direction = direction * (point.norm() / direction.norm())
    with torch.no_grad():
        Ax = physics.A(point)
    tangent = jvp(physics, point, direction).detach()
    floor = 1e2 * torch.finfo(point.dtype).eps * float(Ax.norm() + tangent.norm())
    remainders = []
    with torch.no_grad():
        for h in steps:
            remainders.append(float((physics.A(point + h * direction) - Ax - h * tangent).norm()))
    slopes = [math.log(r1 / r0) / math.log(h1 / h0)
              for (h0, r0), (h1, r1) in zip(zip(steps, remainders), zip(steps[1:], remainders[1:]))
              if min(r0, r1) > floor]
    order = float(torch.tensor(slopes).median()) if slopes else math.inf
    if any(not math.isfinite(r) for r in remainders):
        order = math.nan
    return TaylorResult(list(steps), remainders, floor, order)


def taylor_order_deficit(physics: Physics, x: torch.Tensor, generator: torch.Generator) -> float:
    """``max(0, 2 - observed order)`` of the Taylor test (0 for a correct derivative)."""
    order = taylor_test(physics, x, generator).order
    return math.nan if math.isnan(order) else max(0.0, 2.0 - order)


def pseudo_inverse(physics: Physics, x: torch.Tensor, generator: torch.Generator) -> float:
    """Pseudo-inverse on the range: ``||A(A_dagger(A u)) - A u|| / ||A u||`` for a random u."""
    u = _randn_like(x, generator)
    y = physics.A(u)
    return float((physics.A(physics.A_dagger(y)) - y).norm() / y.norm())


def has_own_pseudo_inverse(physics: Physics) -> bool:
    """True when the operator's class defines ``A_dagger`` (not deepinv's generic solver)."""
    return type(physics).A_dagger not in (Physics.A_dagger, LinearPhysics.A_dagger)


@dataclasses.dataclass
class Report:
    """Errors and tolerances per check; a tolerance of ``inf`` marks a check reported for
    information only. ``notes`` says why a check did not run (it is then absent from ``errors``)
    or what a check raised (its error is then NaN, a failure)."""

    errors: dict[str, float]
    tolerances: dict[str, float]
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def skipped(self) -> dict[str, str]:
        return {k: v for k, v in self.notes.items() if k not in self.errors}

    @property
    def failed(self) -> dict[str, float]:
        return {k: v for k, v in self.errors.items() if not v <= self.tolerances[k]}

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [f"{'check':<18} {'error':>10} {'tolerance':>10}  result"]
        for k, v in self.errors.items():
            tol = self.tolerances[k]
            result = "FAILED" if k in self.failed else ("info" if math.isinf(tol) else "ok")
            note = f" ({self.notes[k]})" if k in self.notes else ""
            lines.append(f"{k:<18} {v:>10.2e} {tol:>10.1e}  {result}{note}")
        for k, why in self.skipped.items():
            lines.append(f"{k:<18} {'-':>10} {'-':>10}  skipped: {why}")
        return "\n".join(lines)


def check_operator(physics: Physics, x: torch.Tensor, generator: torch.Generator | None = None,
                   pinv_tol: float | None = None) -> Report:
    """Run the contract checks that apply to ``physics`` at inputs shaped like ``x``.

    ``x`` gives the shape and dtype (a batch of more than one element adds the batch check); the
    nonlinear checks linearise at ``x`` itself unless it is all zeros (then at a random point).
    ``pinv_tol`` enforces the pseudo-inverse check at that relative tolerance.
    """
    g = generator or torch.Generator().manual_seed(0)
    eps = torch.finfo(x.dtype).eps
    errors, tol, notes = {}, {}, {}

    def run(name, check, tolerance):
        try:
            errors[name] = check(physics, x, g)
        except Exception as err:  # a check that cannot run is a failure, reported with its reason
            errors[name] = math.nan
            notes[name] = f"raised {type(err).__name__}: {err}"
        tol[name] = tolerance

    if getattr(physics, "black_box", False):
        run("refuses_gradient", refuses_gradient, 0.0)
        run("determinism", determinism, 0.0)
    elif isinstance(physics, LinearPhysics):
        run("adjointness", adjointness, 1e3 * eps)
        run("linearity", linearity, 1e3 * eps)
        run("vjp_vs_adjoint", vjp_vs_adjoint, 1e3 * eps)
    else:
        run("vjp_vs_autograd", vjp_vs_autograd, 1e3 * eps)
        run("taylor", taylor_order_deficit, 0.25)
    if not getattr(physics, "black_box", False):
        run("func_vjp", func_vjp, 1e3 * eps)
    if x.shape[0] > 1:
        run("batch_invariance", batch_invariance, 1e2 * eps)
    else:
        notes["batch_invariance"] = "x has a batch of one"
    if pinv_tol is not None:
        run("pseudo_inverse", pseudo_inverse, float(pinv_tol))
    elif has_own_pseudo_inverse(physics):
        try:
            errors["pseudo_inverse"], tol["pseudo_inverse"] = pseudo_inverse(physics, x, g), math.inf
        except NotImplementedError as err:
            notes["pseudo_inverse"] = f"A_dagger not implemented ({err})"
    else:
        notes["pseudo_inverse"] = "no A_dagger of its own; pass pinv_tol= to check deepinv's solver"
    return Report(errors, tol, notes)


def assert_operator(physics: Physics, x: torch.Tensor, generator: torch.Generator | None = None,
                    pinv_tol: float | None = None) -> Report:
    """``check_operator`` that raises ``AssertionError`` listing the failed checks."""
    report = check_operator(physics, x, generator, pinv_tol)
    if not report.ok:
        raise AssertionError(f"{type(physics).__name__} failed its contract checks:\n{report}")
    return report
