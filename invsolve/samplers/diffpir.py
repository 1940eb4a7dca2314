"""DiffPIR: Denoising Diffusion Models for Plug-and-Play Image Restoration.

Paper: Y. Zhu, K. Zhang, J. Liang, J. Cao, B. Wen, R. Timofte, L. Van Gool, "Denoising
Diffusion Models for Plug-and-Play Image Restoration", CVPR Workshops (NTIRE) 2023.
Official code: https://github.com/yuanzhi-zhu/DiffPIR (commit 111d26e: ``main_ddpir.py`` with
``configs/{deblur,sisr,inpaint}.yaml``, and ``main_ddpir_{deblur,sisr,inpainting}.py``).

Update rule (official code, DiffPIR branch with ``eta = 0``, written in invsolve's VE
coordinates; see docs/samplers.md):

    x_0      = sigma_0 z
    for each level sigma_i > sigma_{i+1} (quad grid; the last level sigma_{N-1} ~ 0.01, then 0):
        x0_hat   = D(x_i, sigma_i)                                            (prior sub-problem)
        x0_y     = argmin_x ||y - forward(x)||^2 + rho_i ||x - x0_hat||^2      (data sub-problem)
        eps_hat  = (x_i - x0_y) / sigma_i
        x_{i+1}  = x0_y + sigma_{i+1} (sqrt(1 - zeta) eps_hat + sqrt(zeta) z)
    return x0_y of the last level

with ``rho_i = lambda * max(sigma_y, 0.001)^2 / sigma_i^2 / scale^2``. The official code solves
the data step for images in [0, 1] (the physical units, where ``sigma_y`` lives) while
``sigma_i`` is the noise level of the [-1, 1] model space; the same objective written in model
space has ``rho / scale^2``, so official ``lambda`` values carry over for priors with the same
data map. ``sigma_i = sqrt(1 - abar_t) / sqrt(abar_t)`` is the VE noise level itself, and the
zeta-mixed step above is the official VP step divided by ``sqrt(abar_{t-1})``.

Where invsolve differs (docs/samplers.md): the official loop skips the data step at the last
level and outputs the state ``x`` there (noise ~0.01, the last denoiser call unused); invsolve
returns that level's ``x0_y``. The official start adds a task-shaped O(1) image (``y``, the
bicubic upsampling of ``y`` or the masked ``y``) to noise of standard deviation ~157; invsolve
starts from the noise alone. The data step is solved exactly for decomposable physics (masks,
Cartesian MRI), small dense problems and real physics with at most ``gram_max`` measurements
per sample (8-view CT), by at most ``cg_iters`` warm-started conjugate-gradient steps to relative
residual ``cg_tol`` otherwise (``toolkit.LinearPart``), instead of the official per-task FFT /
mask formulas.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from operators.errors import ConfigError

from .base import register
from .toolkit import GRAM_MAX, LinearPart, noise_estimate, randn, report, sigma_grid


@register("diffpir")
@dataclasses.dataclass(frozen=True)
class DiffPIR:
    """DiffPIR (Zhu et al., CVPRW 2023): HQS plug-and-play inside diffusion sampling, linear
    physics only (``TypeError`` otherwise).

    :param steps: number of noise levels = NFE (official ``iter_num``: 100 for deblurring and
        super-resolution, 20 for inpainting).
    :param lambda_: data-step weight ``lambda`` in ``rho = lambda sigma_y^2 / sigma^2`` (official
        deblurring: 7 = ``lambda_`` 1 of ``configs/deblur.yaml`` times the factor 7 of the sweep
        in ``main_ddpir.py``; inpainting 1; super-resolution: swept over 2..12, no single value).
    :param zeta: share of fresh noise in the re-noising step, 0 = DDIM, 1 = all fresh noise
        (official deblurring 0.3 = ``zeta`` 0.1 times the sweep factor 3; super-resolution 0.25;
        inpainting 1).
    :param schedule: ``"quad"`` (official ``skip_type``), ``"ddpm"`` (uniform DDPM respacing)
        or ``"karras"`` (EDM grid).
    :param sigma_y_floor: lower bound on the ``sigma_y`` used in ``rho`` (official
        ``max(0.001, noise_level_img)``: noiseless problems get a near-hard projection).
    :param cg_iters: at most this many conjugate-gradient iterations per data step for physics
        without an exact solve (blur on large images; CT beyond ``gram_max``).
    :param cg_tol: relative residual at which a CG solve of the data step stops (at most
        ``cg_iters`` iterations; only physics without an exact solve). Default 1e-2: on 8-view CT solved by CG
        (``gram_max=0``), NFE 50, 4 held-out phantoms, it gives 23.38 dB PSNR with warm starts at
        7.2 operator pairs per step, as 1e-6 from zero does at 48.6 (benchmarks/speed, issue 14).
        The pre-issue-14 solver is ``cg_tol=1e-6, cg_warm_start=False, gram_max=0``.
    :param cg_warm_start: start each CG solve from the previous step's solution of the same system
        (default True) instead of from 0.
    :param gram_max: largest per-sample measurement dimension for which the data step is solved
        exactly through an eigendecomposition of ``M M^T`` (``LinearPart``'s ``gram`` backend, e.g.
        8-view CT on 64x64: 728), built once per operator and reused; 0: never (CG instead).
        Default 1024.
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 100
    lambda_: float = 7.0
    zeta: float = 0.3
    schedule: str = "quad"
    sigma_y_floor: float = 0.001
    cg_iters: int = 50
    cg_tol: float = 1e-2
    cg_warm_start: bool = True
    gram_max: int = GRAM_MAX
    sigma_max: float | None = None

    PRESETS = {
        # official code (main_ddpir.py task branches + configs/*.yaml), sigma_y = 12.75/255 on [0, 1]
        "deblur": dict(steps=100, lambda_=7.0, zeta=0.3),
        # configs/sisr.yaml: 100 steps, zeta 0.25; lambda is swept over 2..12 in main_ddpir.py
        # (no single value fixed in the code): 6, the middle of that sweep, is invsolve's choice
        "sr4": dict(steps=100, lambda_=6.0, zeta=0.25),
        # configs/inpaint.yaml: noiseless, 20 NFE, lambda 1, zeta 1
        "inpainting": dict(steps=20, lambda_=1.0, zeta=1.0),
        # invsolve's 8-view CT on ct-phantom64 (no official setting): the official inpainting
        # weights, chosen on training-distribution phantoms (random_ellipses seeds 2000003 and 123,
        # 4 each): +2.3 to +3.6 dB over the deblurring setting (lambda 7, zeta 0.3) used before, at
        # 20, 50, 100 and 200 steps (docs/samplers.md, benchmarks/speed/deepinv.md)
        "ct-sparse8": dict(steps=100, lambda_=1.0, zeta=1.0),
    }

    def __post_init__(self):
        if not 0.0 <= self.zeta <= 1.0:
            raise ConfigError(f"zeta must lie in [0, 1], got {self.zeta}")
        if self.lambda_ <= 0:
            raise ConfigError(f"lambda_ must be > 0, got {self.lambda_}")

    def run(self, prior, problem, x_shape, generator, callback=None):
        lin = LinearPart(problem, x_shape, iters=self.cg_iters, tol=self.cg_tol, who="DiffPIR's closed-form data step",
                         gram_max=self.gram_max, warm_start=self.cg_warm_start)
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        sigma_y = max(problem.sigma_y, self.sigma_y_floor)
        x = sigmas[0] * randn(x_shape, generator)
        y = problem.tiled_y(x_shape[0])
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            rho = self.lambda_ * sigma_y ** 2 / sigma ** 2 / problem.scale ** 2
            with torch.no_grad():
                denoised = prior(x, sigma)
                x0_y = lin.project(denoised, y, rho, key="data")
            if sigma_next > 0:
                eps_hat = noise_estimate(x, x0_y, sigma)
                noise = randn(x_shape, generator)
                x = x0_y + sigma_next * (math.sqrt(1 - self.zeta) * eps_hat + math.sqrt(self.zeta) * noise)
            else:
                x = x0_y
            report(callback, i, len(sigmas) - 1, sigma, x, denoised)
        return x.detach()
