"""D-Flow: differentiating through the flow to optimise the source noise.

Paper: H. Ben-Hamu, O. Puny, I. Gat, B. Karrer, U. Singer, Y. Lipman, "D-Flow: Differentiating
through Flows for Controlled Generation", ICML 2024. No official code was published; the reference
re-implementation is PnP-Flow's (https://github.com/annegnx/PnP-Flow, ``pnpflow/methods/d_flow.py``,
``scripts/script_test.sh``; commit ee5b159).

Update rule, flow time ``t`` with ``z_t = (1 - t) x0 + t eps`` (VE state ``x = z / (1 - t)`` at
``sigma = t / (1 - t)``), velocity ``v(z, t) = (z - D(z / (1 - t), t / (1 - t))) / t``:

    T(eps):  z = t_max eps, then ``ode_steps`` midpoint steps of dz/dt = v on a uniform grid t_max -> 0
             (2 NFE each; the whole solve is differentiated, per step checkpointed with ``checkpoint``)
    init:    eps0 = T^-1(A^T y) (``invert_steps`` midpoint steps backwards, ``init="adjoint"``), T^-1(A^+ y)
             (``init="pinv"``) or eps0 = 0 (``init="noise"``);  eps = sqrt(alpha) eps0 + sqrt(1 - alpha) xi
    repeat ``iterations`` times: L-BFGS (``lbfgs_iters`` inner iterations, history 100, strong Wolfe) on
        L(eps) = ||A(T(eps)) - y||^2 + lam (||eps||^2 / 2 - (d - 1) log ||eps||)
             (the second term: the negative log-density of ||eps|| under the chi distribution with d
             degrees of freedom, d = numel of one sample: it keeps eps at a typical noise norm)
    return T(eps)

A ``callback`` gets the sources (``x``) and their solves (``denoised``) after every outer iteration (one
extra solve each, counted in NFE).
Each posterior sample is its own optimisation (L-BFGS couples everything it optimises, so samples
are optimised one after another; a batch equals separate runs). Works for flow and diffusion priors
(the ODE is the prior's probability-flow ODE through ``D``), pixel or latent.

Where invsolve differs from PnP-Flow: the inversion uses fixed midpoint steps instead of dopri5
(atol = rtol = 1e-5); the source is ``t_max eps`` at the prior's largest level, not t = 1; the
adjoint image is mapped into the model space of the prior (through the encoder for a latent prior;
``init="noise"`` where there is none).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from operators.errors import ConfigError

from .base import register
from .toolkit import flow_midpoint, measured_image, randn, report, squared_norms

INITS = ("adjoint", "pinv", "noise")


@register("dflow")
@dataclasses.dataclass(frozen=True)
class DFlow:
    """D-Flow (Ben-Hamu et al., ICML 2024), as PnP-Flow runs it.

    :param ode_steps: midpoint steps of the differentiated solve (PnP-Flow: 5, i.e. ``steps_euler`` 6).
    :param iterations: outer L-BFGS calls (PnP-Flow ``max_iter``: 3 denoising, 7 deblurring, 10 SR,
        9 box inpainting, 20 random inpainting).
    :param lbfgs_iters: inner iterations per L-BFGS call (PnP-Flow 20).
    :param lam: weight of the chi-norm regulariser (PnP-Flow scripts 1e-3; config default 0.01).
    :param alpha: blend of the inverted initialisation with fresh noise (PnP-Flow 0.1).
    :param init: ``"adjoint"``: invert ``A^T y`` through the flow (PnP-Flow); ``"pinv"``: invert ``A^+ y`` (for
        operators whose adjoint is not in image units, e.g. CT's back-projection); ``"noise"``: fresh noise only.
    :param invert_steps: midpoint steps of the inversion ODE.
    :param checkpoint: recompute each ODE step in the backward pass instead of storing its activations
        (memory of one step instead of all; the recomputation adds ``2 ode_steps`` NFE per gradient).
    """

    ode_steps: int = 5
    iterations: int = 20
    lbfgs_iters: int = 20
    lam: float = 1e-3
    alpha: float = 0.1
    init: str = "adjoint"
    invert_steps: int = 20
    checkpoint: bool = True

    PRESETS = {
        # PnP-Flow scripts/script_test.sh: lam 1e-3 everywhere, max_iter per task
        "denoising": dict(iterations=3), "deblur": dict(iterations=7), "sr": dict(iterations=10),
        "inpainting": dict(iterations=20),
        # invsolve's 8-view CT (no official CT setting): A^T y is a back-projection, hundreds of times the
        # image's scale, so its inversion is no starting point; the pseudo-inverse (least squares) is
        "ct-sparse8": dict(iterations=7, init="pinv"),
    }

    def __post_init__(self):
        if min(self.ode_steps, self.iterations, self.lbfgs_iters, self.invert_steps) < 1:
            raise ConfigError("dflow needs ode_steps, iterations, lbfgs_iters, invert_steps >= 1")
        if not 0 <= self.alpha <= 1 or self.lam < 0:
            raise ConfigError(f"dflow needs 0 <= alpha <= 1 and lam >= 0; got alpha={self.alpha}, lam={self.lam}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")

    @classmethod
    def for_nfe(cls, nfe: int) -> dict:
        """About ``nfe`` evaluations in one L-BFGS call: each objective evaluation costs ``2 ode_steps``
        forward and (checkpointed) ``2 ode_steps`` backward recomputations, the inversion ``2 ode_steps``;
        5 ODE steps (PnP-Flow) from 60 NFE, else 1. L-BFGS's line search may add evaluations."""
        ode = 5 if nfe >= 60 else 1
        return {"ode_steps": ode, "invert_steps": ode, "iterations": 1,
                "lbfgs_iters": max(1, (int(nfe) - 2 * ode) // (4 * ode))}

    def times(self, prior) -> list[float]:
        t_max = prior.sigma_max / (1 + prior.sigma_max)
        return torch.linspace(t_max, 0.0, self.ode_steps + 1, dtype=torch.float64).tolist()

    def solve(self, prior, eps: torch.Tensor) -> torch.Tensor:
        """``T(eps)``: the flow from the source noise to data (model space)."""
        times = self.times(prior)
        z = times[0] * eps
        for t, t_next in zip(times[:-1], times[1:]):
            if self.checkpoint and torch.is_grad_enabled():
                z = torch_checkpoint(flow_midpoint, prior, z, t, t_next, use_reentrant=False)
            else:
                z = flow_midpoint(prior, z, t, t_next)
        return z

    def invert(self, prior, problem, x_shape) -> torch.Tensor:
        """``T^-1`` of ``A^T y`` (``init="adjoint"``) or ``A^+ y`` (``"pinv"``) in model space, as source noise;
        zeros for ``init="noise"`` and where ``toolkit.measured_image`` cannot form the image."""
        z = None if self.init == "noise" else measured_image(problem, x_shape, self.init)
        if z is None:
            return torch.zeros(x_shape, dtype=x_shape.dtype)
        t_max = self.times(prior)[0]
        grid = torch.linspace(0.5 * prior.sigma_min / (1 + prior.sigma_min), t_max, self.invert_steps + 1,
                              dtype=torch.float64).tolist()
        with torch.no_grad():
            for t, t_next in zip(grid[:-1], grid[1:]):
                z = flow_midpoint(prior, z, t, t_next)
        return z / t_max

    def regulariser(self, eps: torch.Tensor) -> torch.Tensor:
        d = eps[0].numel()
        norm = eps.reshape(eps.shape[0], -1).norm(dim=1)
        return self.lam * (0.5 * norm ** 2 - (d - 1) * torch.log(norm))

    def run(self, prior, problem, x_shape, generator, callback=None):
        eps0 = self.invert(prior, problem, x_shape)
        xi = randn(x_shape, generator)
        eps = math.sqrt(self.alpha) * eps0.to(xi.dtype) + math.sqrt(1 - self.alpha) * xi
        sources = [eps[j:j + 1].detach().clone().requires_grad_(True) for j in range(x_shape[0])]
        # one L-BFGS per sample (row j meets measurement j % B): L-BFGS couples what it optimises
        optimisers = [torch.optim.LBFGS([e], max_iter=self.lbfgs_iters, history_size=100,
                                        line_search_fn="strong_wolfe") for e in sources]
        for k in range(self.iterations):
            for j, (e, opt) in enumerate(zip(sources, optimisers)):
                y_j = problem.y[j % problem.batch:j % problem.batch + 1]
                opt.step(lambda e=e, opt=opt, y_j=y_j: self.objective(prior, problem, e, opt, y_j))
            if callback is not None:
                with torch.no_grad():
                    state = torch.cat([e.detach() for e in sources])
                    report(callback, k, self.iterations, float("nan"), state, self.solve(prior, state))
        with torch.no_grad():
            return self.solve(prior, torch.cat([e.detach() for e in sources]))

    def objective(self, prior, problem, e: torch.Tensor, opt, y: torch.Tensor) -> torch.Tensor:
        """L-BFGS's closure: ``L(eps)`` of one sample, its gradient left in ``e.grad``."""
        opt.zero_grad()
        with torch.enable_grad():
            value = (squared_norms(y - problem.forward(self.solve(prior, e))) + self.regulariser(e)).sum()
            value.backward()
        e.grad = e.grad.contiguous()  # L-BFGS views the gradient flat (FFT-based physics can return strided ones)
        return value.detach()
