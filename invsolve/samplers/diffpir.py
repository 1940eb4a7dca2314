"""DiffPIR: Denoising Diffusion Models for Plug-and-Play Image Restoration.

Paper: Y. Zhu, K. Zhang, J. Liang, J. Cao, B. Wen, R. Timofte, L. Van Gool, "Denoising
Diffusion Models for Plug-and-Play Image Restoration", CVPR Workshops (NTIRE) 2023.
Official code: https://github.com/yuanzhi-zhu/DiffPIR (``main_ddpir.py``, ``configs/*.yaml``,
``main_ddpir_{deblur,sisr,inpainting}.py``).

Update rule (official code, written in invsolve's VE coordinates; see docs/samplers.md):

    x0_hat   = D(x_i, sigma_i)                                        (prior sub-problem)
    x0_y     = argmin_x ||y - A(x)||^2 + rho_i ||x - x0_hat||^2       (data sub-problem)
    eps_hat  = (x_i - x0_y) / sigma_i
    x_{i+1}  = x0_y + sigma_{i+1} (sqrt(1 - zeta) eps_hat + sqrt(zeta) z),   z ~ N(0, I)

with ``rho_i = lambda * sigma_y^2 / sigma_i^2``. The official code solves the data step for
images in [0, 1] (physical units, noise level ``sigma_y`` on that scale) while ``sigma_i`` is
the diffusion noise of the [-1, 1] model space; invsolve keeps exactly that: the proximal
objective is written in physical units, i.e. ``rho_model = rho_i / scale^2`` in model space,
so the official ``lambda`` carries over unchanged for priors with the same data map. For a
prior with ``scale = 1`` (e.g. a Gaussian mixture), ``lambda = 1`` is the Gaussian
approximation ``p(x0 | x_i) ~ N(x0_hat, sigma_i^2 I)`` of the posterior. ``sigma_i`` is
``sqrt(1 - abar_t) / sqrt(abar_t)``, which is the VE noise level itself, so no VP rescaling
is needed; the zeta-mixed DDIM step above is the official VP step divided by ``sqrt(abar)``.
The data step is solved in closed form for decomposable physics (masks, MRI) and by
conjugate gradients in model space otherwise (``linalg.prox_data``).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .base import randn, register, sigma_grid
from .linalg import _require_linear, prox_data


def quad_ddpm_sigmas(steps: int, prior, sigma_max: float | None = None, timesteps: int = 1000) -> torch.Tensor:
    """The official ``skip_type='quad'`` grid: DDPM (linear beta) levels at timesteps
    ``T - 1 - floor(sqrt(linspace(0, T^2, steps)))`` (last one at t = 0), clipped to the
    prior's range, then 0. Dense near t = 0, coarse at high noise."""
    from ..priors.adapters import DDPMSchedule

    all_sigmas = DDPMSchedule(timesteps=timesteps).sigmas
    seq = torch.linspace(0, float(timesteps) ** 2, steps, dtype=torch.float64).sqrt().floor().long()
    seq[-1] = timesteps - 1
    t = (timesteps - 1) - seq
    hi = min(sigma_max or prior.sigma_max, prior.sigma_max)
    sigmas = all_sigmas[t].clamp(prior.sigma_min, hi)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


@register("diffpir")
@dataclasses.dataclass(frozen=True)
class DiffPIR:
    """DiffPIR (Zhu et al., CVPRW 2023): HQS plug-and-play inside diffusion sampling.

    :param steps: number of noise levels = NFE (official: 100; 20 for inpainting).
    :param lambda_: data-step weight ``lambda`` in ``rho = lambda sigma_y^2 / sigma^2``
        (official deblurring: 7, i.e. ``configs/deblur.yaml`` lambda 1 times the sweep
        factor 7 in ``main_ddpir.py``; inpainting 1).
    :param zeta: share of fresh noise in the re-noising step, 0 = DDIM, 1 = all fresh noise
        (official deblurring 0.3 = 0.1 x sweep factor 3; super-resolution 0.25; inpainting 1).
    :param schedule: ``"quad"`` (official ``skip_type``), ``"ddpm"`` (uniform DDPM respacing)
        or ``"karras"`` (EDM grid).
    :param sigma_y_floor: lower bound on the ``sigma_y`` used in ``rho`` (official
        ``max(0.001, noise_level_img)``: noiseless problems get a near-hard projection).
    :param cg_iters: conjugate-gradient iterations of the data step for physics without a
        closed form (CT, blur with non-circular padding).
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 100
    lambda_: float = 7.0
    zeta: float = 0.3
    schedule: str = "quad"
    sigma_y_floor: float = 0.001
    cg_iters: int = 50
    sigma_max: float | None = None

    PRESETS = {
        # official code (main_ddpir.py task branches + configs/*.yaml), sigma_y = 12.75/255 on [0, 1]
        "deblur": dict(steps=100, lambda_=7.0, zeta=0.3),
        # configs/sisr.yaml: zeta 0.25; lambda is swept over 2..12 in main_ddpir.py (no single
        # value fixed in code); 6 is the middle of that sweep
        "sr4": dict(steps=100, lambda_=6.0, zeta=0.25),
        # configs/inpaint.yaml: noiseless, 20 NFE
        "inpainting": dict(steps=20, lambda_=1.0, zeta=1.0),
        # invsolve's 8-view CT on ct-phantom64 (no official setting); chosen on
        # training-distribution phantoms, see docs/samplers.md
        "ct-sparse8": dict(steps=100, lambda_=7.0, zeta=0.3),
    }

    def __post_init__(self):
        if not 0.0 <= self.zeta <= 1.0:
            raise ValueError(f"zeta must lie in [0, 1], got {self.zeta}")
        if self.lambda_ <= 0:
            raise ValueError(f"lambda_ must be > 0, got {self.lambda_}")

    def sigmas(self, prior) -> list[float]:
        if self.schedule == "quad":
            return quad_ddpm_sigmas(self.steps, prior, self.sigma_max).tolist()
        return sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()

    def run(self, prior, problem, x_shape, generator, callback=None):
        _require_linear(problem, "DiffPIR's closed-form data step")
        sigmas = self.sigmas(prior)
        sigma_y = max(problem.sigma_y, self.sigma_y_floor)
        x = sigmas[0] * randn(x_shape, generator)
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            with torch.no_grad():
                denoised = prior(x, sigma)
            rho = self.lambda_ * sigma_y ** 2 / sigma ** 2 / problem.scale ** 2
            x0_y = prox_data(problem, denoised, rho, iters=self.cg_iters)
            if sigma_next > 0:
                eps_hat = (x - x0_y) / sigma
                noise = randn(x_shape, generator)
                x = x0_y + sigma_next * (math.sqrt(1 - self.zeta) * eps_hat + math.sqrt(self.zeta) * noise)
            else:
                x = x0_y
            if callback is not None:
                callback({"step": i, "steps": len(sigmas) - 1, "sigma": sigma, "x": x, "denoised": denoised})
        return x.detach(), len(sigmas) - 1
