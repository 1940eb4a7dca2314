"""EnKG: Ensemble Kalman diffusion guidance, derivative-free posterior sampling for any forward model.

Paper: H. Zheng, W. Chu, A. Wang, N. Kovachki, R. Baptista, Y. Yue, "Ensemble Kalman Diffusion
Guidance: A Derivative-free Method for Inverse Problems", 2024 (arXiv:2409.20175).
Official code: https://github.com/devzhk/enkg-pytorch (``algo/enkg.py``); the port in InverseBench
(https://github.com/devzhk/InverseBench, ``algo/enkg.py``).

Update rule (the official one, EDM/VE coordinates: probability-flow ODE on the Karras grid
``sigma_0 > ... > sigma_{N-1}``, then 0). An ensemble ``x^(1..J)`` per posterior sample starts from
``N(0, sigma_0^2 I)``; at every step ``i`` inside the guidance window
(``start * N < i < N - int(end * N)``), ``updates`` times:

    x0^(j)  = PF-ODE Euler(x^(j), sigma_i -> 0 over m_i Karras levels sigma_i .. sigma_min, then 0),
              m_i = min(1 + (N - i) // ode_factor, ode_max)   (m_i denoiser calls; m_i = 1: D(x, sigma_i))
    g^(j)   = forward(x0^(j)),   e^(j) = g^(j) - y                    (forward evaluations only)
    C_jk    = <e^(j), g^(k) - mean_k g> / J                            (J x J)
    x^(j)  <- x^(j) - gamma_i / ||C||_F * sum_k C_jk (x^(k) - mean_k x)
    gamma_i = gamma,  or gamma (1 - r)(N - i) / N + r with r = lr_min_ratio > 0  (the official get_lr, r unscaled)

then the Euler step ``x <- x + (sigma_{i+1} - sigma_i)(x - D(x, sigma_i)) / sigma_i`` (no noise; the
last one, to 0, is ``D``). The ensemble moves only within its own span, along the ensemble's
cross-covariance of state and prediction: a Kalman-type step that needs no gradient or adjoint of
``forward``, which is called as a black box (``operators.blackbox.BlackBox``).

NFE per posterior sample = ``particles * (steps + updates * sum_i m_i)`` over the guided steps
(``nfe_per_member``): with the official Navier-Stokes settings 2048 x 1588, about 3.3 million.

Differences from the official code: each posterior sample has its own ensemble of ``particles``
members (drawn from its own generator) and returns member 0 (the members are exchangeable);
the official code runs one ensemble and returns all of it, which is ``n_samples = 1`` here with
every member in the callback's ``particles``. The prior's own grid and range (``sigma_grid``)
replace EDM's fixed 80 -> 0.002; ``batch`` chunks the denoiser calls as the official ``batch_size``
does.
"""

from __future__ import annotations

import dataclasses

import torch

from operators.errors import ConfigError

from .base import register
from .toolkit import StateShape, from_groups, karras_sigmas, particle_noise, report, sigma_grid, to_groups


def chunked(prior, size: int):
    """``prior`` as a function applying it to at most ``size`` rows at a time."""
    def apply(x: torch.Tensor, sigma) -> torch.Tensor:
        if x.shape[0] <= size:
            return prior(x, sigma)
        return torch.cat([prior(part, sigma) for part in x.split(size)])
    return apply


def ode_to_zero(denoiser, x: torch.Tensor, sigma: float, sigma_min: float, steps: int) -> torch.Tensor:
    """``x0`` from ``x`` at ``sigma``: Euler steps of the probability-flow ODE over ``steps`` Karras (rho 7)
    levels from ``sigma`` to ``sigma_min``, then to 0 (``steps`` denoiser calls; 1 step: ``D(x, sigma)``)."""
    if steps == 1 or sigma <= sigma_min:
        return denoiser(x, sigma)
    grid = karras_sigmas(steps, sigma_min, sigma).tolist()  # steps levels, then 0
    for s, s_next in zip(grid[:-1], grid[1:]):
        denoised = denoiser(x, s)
        x = denoised if s_next == 0 else x + (s_next - s) * (x - denoised) / s
    return x


def ensemble_step(x: torch.Tensor, g: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """One ensemble Kalman update of grouped states ``x`` (G, J, ...) from their predictions ``g``
    (G, J, m; real) against ``y`` (G, m): ``x_j - gamma / ||C||_F sum_k C_jk (x_k - mean x)`` with
    ``C_jk = <g_j - y, g_k - mean g> / J``; a group with ``C = 0`` (one member, or no spread) stays."""
    n_groups, members = x.shape[:2]
    e = g - y[:, None]
    spread = g - g.mean(1, keepdim=True)
    C = torch.einsum("gjm,gkm->gjk", e, spread) / members
    norm = C.flatten(1).norm(dim=1).clamp(min=torch.finfo(C.dtype).tiny)
    xc = (x - x.mean(1, keepdim=True)).reshape(n_groups, members, -1)
    step = torch.einsum("gjk,gkd->gjd", (C / norm[:, None, None]).to(x.dtype), xc)
    return x - gamma * step.reshape(x.shape)


def _real_rows(r: torch.Tensor) -> torch.Tensor:
    r = torch.view_as_real(r) if r.is_complex() else r
    return r.reshape(r.shape[0], -1).to(torch.float64)


@register("enkg")
@dataclasses.dataclass(frozen=True)
class EnKG:
    """Ensemble Kalman diffusion guidance (Zheng et al., 2024): derivative-free, any forward model.

    Defaults are the official Navier-Stokes configuration (``configs/algorithm/enkg.yaml`` of
    InverseBench / ``scripts`` of enkg-pytorch).

    :param steps: PF-ODE levels ``N`` (official: 80, Karras rho 7).
    :param particles: ensemble members per posterior sample (official Navier-Stokes: 2048).
    :param gamma: guidance step ``gamma`` (official Navier-Stokes: 2.0).
    :param updates: ensemble updates per guided step (official Navier-Stokes: 2).
    :param ode_factor: ``m_i = min(1 + (N - i) // ode_factor, ode_max)`` Euler steps to ``x0``
        (enkg-pytorch: 4; InverseBench: 8).
    :param ode_max: the most Euler steps of that inner ODE (official: 20).
    :param start, end: guidance window ``start * N < i < N - int(end * N)`` (official configs: 0.05 / 0.05).
    :param lr_min_ratio: ``r``; > 0 decays the step linearly from ``gamma (1 - r) + r`` to ``r`` (official: 0).
    :param batch: rows per denoiser call (official ``batch_size``: 64).
    :param schedule: noise grid (official: Karras).
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 80
    particles: int = 2048
    gamma: float = 2.0
    updates: int = 2
    ode_factor: int = 4
    ode_max: int = 20
    start: float = 0.05
    end: float = 0.05
    lr_min_ratio: float = 0.0
    batch: int = 64
    schedule: str = "karras"
    sigma_max: float | None = None

    derivative_free = True  # needs forward evaluations only: runs on BlackBox physics

    PRESETS = {
        # official configurations (InverseBench configs/algorithm, enkg-pytorch scripts)
        "navier-stokes": dict(steps=80, particles=2048, gamma=2.0, updates=2),
        "black-hole": dict(steps=80, particles=1024, gamma=3.5, updates=1, start=0.1, end=0.1, lr_min_ratio=1e-3),
    }

    def __post_init__(self):
        for field in ("steps", "particles", "updates", "ode_factor", "ode_max", "batch"):
            if int(getattr(self, field)) < 1:
                raise ConfigError(f"enkg: {field} must be >= 1, got {getattr(self, field)}")
        if not 0 <= self.lr_min_ratio <= 1:
            raise ConfigError(f"enkg: lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}")

    def nfe_per_member(self) -> int:
        """Denoiser evaluations per ensemble member: ``steps + updates * sum of m_i`` over the guided steps."""
        n = self.steps
        inner = sum(min(1 + (n - i) // self.ode_factor, self.ode_max) for i in range(n) if self.guided(i, n))
        return n + self.updates * inner

    @classmethod
    def for_nfe(cls, nfe: int) -> dict:
        """A budget of ``nfe`` evaluations per posterior sample: the most members (of 2048, 1024, ..., 2)
        that still get 10 steps, with the most steps that fit; below that 2 members and at least 2 steps."""
        for members in (2 ** k for k in range(11, 0, -1)):
            steps = max((s for s in range(2, 201) if members * cls(steps=s, particles=members).nfe_per_member() <= nfe),
                        default=None)
            if steps is not None and (steps >= 10 or members == 2):
                return {"steps": steps, "particles": members}
        return {"steps": 2, "particles": 2}

    def guided(self, i: int, n: int) -> bool:
        """Step ``i`` of ``n`` is inside the guidance window (never with ``gamma = 0``: the prior's own ODE)."""
        return self.gamma != 0 and self.start * n < i < n - int(self.end * n)

    def step_size(self, i: int, n: int) -> float:
        if self.lr_min_ratio > 0:
            return self.gamma * (1 - self.lr_min_ratio) * (n - i) / n + self.lr_min_ratio
        return self.gamma

    def run(self, prior, problem, x_shape, generator, callback=None):
        groups, members = x_shape[0], self.particles
        rows = StateShape((groups * members, *x_shape[1:]), problem.dtype)
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        sigma_min, n = sigmas[-2], len(sigmas) - 1
        denoiser = chunked(prior, self.batch)
        y = _real_rows(problem.tiled_y(groups))  # group g meets measurement g % batch, as every particle of it
        x = sigmas[0] * particle_noise(rows, members, generator)
        with torch.no_grad():
            for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
                if self.guided(i, n):
                    m = min(1 + (n - i) // self.ode_factor, self.ode_max)
                    for _ in range(self.updates):
                        x0 = ode_to_zero(denoiser, x, sigma, sigma_min, m)
                        g = _real_rows(problem.forward(x0))
                        x = from_groups(ensemble_step(to_groups(x, members), to_groups(g, members), y,
                                                           self.step_size(i, n)))
                denoised = denoiser(x, sigma)
                x = denoised if sigma_next == 0 else x + (sigma_next - sigma) * (x - denoised) / sigma
                report(callback, i, n, sigma, to_groups(x, members)[:, 0], to_groups(denoised, members)[:, 0],
                       particles=x)
        return to_groups(x, members)[:, 0].detach()

