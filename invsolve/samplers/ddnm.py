"""DDNM / DDNM+: Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model.

Paper: Y. Wang, J. Yu, J. Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
Model", ICLR 2023 (DDNM: Algorithm 1; DDNM+ for noisy y: Section 3.3).
Official code: https://github.com/wyhuai/DDNM (commit 00b58ea: ``guided_diffusion/diffusion.py``,
``functions/svd_ddnm.py``, ``functions/svd_operators.py`` ``Lambda``/``Lambda_noise``,
``configs/*.yml``).

Update rule in invsolve's VE coordinates (the official VP step ``x' = sqrt(abar') x0 +
sqrt(1 - abar') (eta z + sqrt(1 - eta^2) eps)`` divided by ``sqrt(abar')``), ``forward(x) = M x + c``:

    x_T = sigma_T z;   x0_hat = D(x, sigma),  eps_hat = (x - x0_hat) / sigma  (unconditional)
    DDNM (sigma_y = 0, or noise_aware=False):
        x0_y = x0_hat + M^+ (y - forward(x0_hat))                       (range-null-space correction)
        x'   = x0_y + sigma' (eta z + sqrt(1 - eta^2) eps_hat)
    DDNM+ (sigma_y > 0), with an exact SVD of M (official SVD path), per spectral coordinate i,
    yb = diag(s)^+ U^T (y - c) with noise n_i = sigma_y / s_i:
        s_i = 0:            xb'_i = x0b_i + sigma' (eta z + sqrt(1 - eta^2) epsb_i)
        sigma' >= n_i:      xb'_i = yb_i + sqrt(sigma'^2 - n_i^2) z                  (Lambda_i = 1)
        sigma' <  n_i:      xb'_i = x0b_i + Lambda_i (yb_i - x0b_i) + eta sigma' z,
                            Lambda_i = sqrt(1 - eta^2) sigma' / n_i
    DDNM+ without an exact SVD (CT, reflect-padded motion blur) or with plus_rule="scalar" (the paper's scalar Sigma_t = lambda I, Phi_t = gamma I,
    with a_t = 1 in VE), n = sqrt(E||M^+ e||^2 / rank M) sigma_y the mean noise per seen coordinate:
        lambda = min(1, sigma' / n);  x0_y = x0_hat + lambda M^+ (y - forward(x0_hat))
        x'     = x0_y + sqrt(sigma'^2 - (lambda n)^2) (eta z + sqrt(1 - eta^2) eps_hat)

At ``sigma' = 0`` DDNM returns ``x0_y`` and DDNM+ returns ``x0_hat`` (``lambda = 0``).

Where invsolve differs: ``M^+`` comes from ``toolkit.LinearPart`` (exact for decomposable and
small dense operators, conjugate gradients otherwise) instead of the official per-task SVD
classes; the official code has no DDNM+ for operators without its ``Lambda`` (it raises
``NotImplementedError``), invsolve uses the paper's scalar rule there, with ``n`` estimated once by
4 Hutchinson probes from a fixed generator. No time travel (official configs: ``travel_length =
travel_repeat = 1``, i.e. none; only ``oldphoto.yml`` uses 2). The step's ``eta`` is the official
"eta-DDIM" mixing above (``toolkit.eta_ddim_step``), not ``toolkit.ddim_step``'s standard DDIM ``eta``. ``sigma_y`` is in the
physical units of ``y`` (the official doubles it for [-1, 1] images; invsolve's ``M`` carries the
data map).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from operators.errors import ConfigError

from .base import register
from .toolkit import DENSE_MAX, GRAM_MAX, LinearPart, eta_ddim_step, noise_estimate, randn, report, sigma_grid, step_noise

PROBES = 4


@register("ddnm")
@dataclasses.dataclass(frozen=True)
class DDNM:
    """DDNM and DDNM+ (Wang et al., ICLR 2023), linear physics only (``TypeError`` otherwise).

    One name for both: DDNM+ is DDNM's noisy-measurement rule and coincides with it in the
    correction for ``sigma_y = 0``; the official code switches on ``sigma_y == 0`` as well.

    :param steps: number of noise levels = NFE (official ``time_travel.T_sampling: 100``).
    :param eta: share of fresh noise in the step (official ``--eta 0.85``).
    :param noise_aware: use DDNM+ when ``sigma_y > 0`` (default). ``False`` forces DDNM's hard
        range-space replacement, which copies the measurement noise, amplified by ``1 / s_i``,
        into every sample.
    :param plus_rule: DDNM+'s rule: ``"auto"`` (the official per-singular-component ``Lambda``
        where ``M`` has an exact SVD, the paper's scalar ``lambda_t`` otherwise) or ``"scalar"``
        (the paper's scalar rule everywhere).
    :param schedule: ``"uniform"`` (official: timesteps ``990, 980, ..., 0`` for 100 steps),
        ``"ddpm"`` or ``"karras"``.
    :param cg_iters: at most this many conjugate-gradient iterations for ``M^+`` where no exact
        solve exists.
    :param cg_tol: relative residual at which a CG solve of ``M^+`` stops (only physics without an
        exact solve). Default 1e-6 (not re-measured). The pre-issue-14 solver is ``cg_tol=1e-6,
        cg_warm_start=False, gram_max=0``.
    :param cg_warm_start: start each step's CG solve from the previous step's solution (default True).
    :param gram_max: largest per-sample measurement dimension for which ``M^+`` is exact through an
        eigendecomposition of ``M M^T`` (``LinearPart``'s ``gram`` backend; 8-view CT on 64x64: 728),
        built once per operator and reused; 0: never. Default 1024. It does not make DDNM+'s
        per-component rule available (``plus_rule="auto"`` still takes the scalar rule there).
    :param dense_max: largest per-sample dimension for which ``M`` is assembled and factored by a
        dense SVD (``LinearPart``), default 1024. Larger separable or circular blurs and separable
        downsampling keep an exact SVD through ``samplers/spectral.py`` at any size.
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 100
    eta: float = 0.85
    noise_aware: bool = True
    plus_rule: str = "auto"
    schedule: str = "uniform"
    cg_iters: int = 50
    cg_tol: float = 1e-6
    cg_warm_start: bool = True
    gram_max: int = GRAM_MAX
    dense_max: int = DENSE_MAX
    sigma_max: float | None = None

    PRESETS = {
        # official configs/*.yml (celeba_hq, imagenet_256): T_sampling 100, --eta 0.85, no time travel
        "inpainting": dict(steps=100, eta=0.85),
        "sr4": dict(steps=100, eta=0.85),
        "deblur": dict(steps=100, eta=0.85),
        # invsolve (no official CT setting): 8-view CT on ct-phantom64 (DDNM+ scalar rule); the best
        # of a small grid on training phantoms (steps 50 / 100 at eta 0.85, eta 0.5 / 1 at 100 steps),
        # benchmarks/phantom/tune_new.md, run with M^+ by 50 CG iterations from 0 (before the gram solve)
        "ct-sparse8": dict(steps=100, eta=0.5),
    }

    def __post_init__(self):
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must lie in [0, 1], got {self.eta}")
        if self.plus_rule not in ("auto", "scalar"):
            raise ConfigError(f"plus_rule must be 'auto' or 'scalar', got {self.plus_rule!r}")
        if self.schedule not in ("uniform", "ddpm", "karras"):
            raise ConfigError(f"schedule must be 'uniform', 'ddpm' or 'karras', got {self.schedule!r}")

    def run(self, prior, problem, x_shape, generator, callback=None):
        lin = LinearPart(problem, x_shape, iters=self.cg_iters, tol=self.cg_tol, who="DDNM", gram_max=self.gram_max,
                         warm_start=self.cg_warm_start, dense_max=self.dense_max)
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        plus = self.noise_aware and problem.sigma_y > 0
        spectral = plus and self.plus_rule == "auto" and lin.spectral_unavailable() is None
        keep = math.sqrt(1 - self.eta ** 2)
        x = sigmas[0] * randn(x_shape, generator)
        with torch.no_grad():
            y = problem.tiled_y(x_shape[0])
            if spectral:
                yb = lin.y_spectral(x_shape[0], x)
                s = lin.singular_values(yb).abs()
                seen = s > 0
                noise_y = torch.where(seen, problem.sigma_y / torch.where(seen, s, torch.ones_like(s)),
                                      torch.zeros_like(s))
            elif plus:
                n_eff = self._range_noise(lin, problem, x_shape)
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            with torch.no_grad():
                denoised = prior(x, sigma)
                eps = noise_estimate(x, denoised, sigma)
                z = step_noise(x, generator, sigma_next)
                if not plus:
                    x = eta_ddim_step(lin.project(denoised, y, key="data"), eps, sigma_next, self.eta, z)
                elif spectral:
                    x = self._spectral_step(lin, denoised, eps, z, yb, s, noise_y, sigma_next)
                else:
                    lam = min(1.0, sigma_next / n_eff)
                    x0_y = denoised + lam * lin.pinv(y - problem.forward(denoised), key="data").to(x.dtype)
                    gamma = math.sqrt(max(0.0, sigma_next ** 2 - (lam * n_eff) ** 2))
                    x = x0_y + gamma * (self.eta * z + keep * eps)  # eta-DDIM noise scaled to gamma
            report(callback, i, len(sigmas) - 1, sigma, x, denoised)
        return x.detach()

    def _spectral_step(self, lin, denoised, eps, z, yb, s, noise_y, sigma_next):
        """DDNM+'s official SVD path (``Lambda`` and ``Lambda_noise``), one step to ``sigma_next``."""
        keep = math.sqrt(1 - self.eta ** 2)
        x0b, epsb, zb = lin.to_spectral(denoised), lin.to_spectral(eps), lin.to_spectral(z)
        seen = s > 0
        full = seen & (sigma_next >= noise_y)
        part = seen & ~full
        lam = torch.where(part, keep * sigma_next / torch.where(part, noise_y, torch.ones_like(noise_y)),
                          torch.ones_like(noise_y))
        x0c = torch.where(seen, x0b + lam * (yb - x0b), x0b)
        noise = torch.where(full, (sigma_next ** 2 - noise_y ** 2).clamp_min(0).sqrt() * zb,
                            torch.where(part, self.eta * sigma_next * zb, sigma_next * (self.eta * zb + keep * epsb)))
        rest = lin.null_part(denoised + sigma_next * (self.eta * z + keep * eps))
        return lin.from_spectral(x0c + noise, denoised) + rest

    @staticmethod
    def _range_noise(lin, problem, x_shape) -> float:
        """``sigma_y sqrt(tr((M M^T)^+) / rank M)``: the mean standard deviation of ``M^+ e``
        (``e ~ N(0, sigma_y^2 I)``) per seen coordinate, by ``PROBES`` Hutchinson probes from a
        fixed generator (no caller randomness used); exact for ``M M^T = c I``."""
        g = torch.Generator().manual_seed(0)
        probe = torch.randn((PROBES, *x_shape[1:]), generator=g, dtype=problem.dtype)
        seen = problem.linear_forward(probe)
        e = torch.randn(seen.shape, generator=g, dtype=seen.dtype)
        if e.is_complex():  # sigma_y per real and imaginary part
            e = e * math.sqrt(2)

        def sq(t):
            return float((t.abs() ** 2).sum())

        rank = float((probe.double() * lin.pinv(seen).real.double()).sum())
        return problem.sigma_y * math.sqrt(sq(lin.pinv(e)) / max(rank, 1e-12))
