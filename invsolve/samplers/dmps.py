"""DMPS: Diffusion Model based Posterior Sampling for noisy linear inverse problems.

Paper: X. Meng, Y. Kabashima, "Diffusion Model Based Posterior Sampling for Noisy Linear
Inverse Problems", arXiv:2211.12343 (2022), ACML 2024.
Official code: https://github.com/mengxiangming/dmps
(``guided_diffusion/condition_methods.py::PosteriorSampling_meng``,
``guided_diffusion/gaussian_diffusion.py::p_sample_loop``, ``configs/*_config.yaml``).

Update rule (VE coordinates, ``forward(x) = M x + c``):

    x0_hat   = clamp(D(x_i, sigma_i))                    (no gradient through D)
    x'       = ancestral step sigma_i -> sigma_{i+1}
    x_{i+1}  = x' + scale (sigma_i^2 - sigma_{i+1}^2) M^T (sigma_y^2 I + sigma_i^2 M M^T)^-1 (y - forward(f_i x'))

the pseudo-likelihood score of the uninformative approximation ``p(x0 | x_i) ~ N(x_i, sigma_i^2 I)``,
evaluated at ``f_i x'`` with ``f_i = sqrt((1 + sigma_i^2) / (1 + sigma_{i+1}^2))`` as the official
VP indexing does; the official ``beta_t / sqrt(alpha_t) / sqrt(abar_t)`` is ``sigma_i^2 - sigma_{i+1}^2``
in VE coordinates. The official code inverts through the SVD of ``A``; ``toolkit.LinearPart`` is
exact for decomposable and small physics and uses conjugate gradients otherwise. Derivation:
docs/samplers.md, DMPS.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .base import register
from .toolkit import GRAM_MAX, LinearPart, ancestral_step, denoise, model_clip, randn, report, sigma_grid, step_noise


@register("dmps")
@dataclasses.dataclass(frozen=True)
class DMPS:
    """DMPS (Meng & Kabashima, 2022): linear physics, Gaussian noise, no backpropagation through the prior.

    NFE = ``steps``.

    :param steps: number of noise levels (official: 1000 DDPM steps, ``configs/diffusion_config.yaml``).
    :param scale: weight of the pseudo-likelihood score (official configs: 1.75 for every task,
        marked "default value"; the class default in the code is 1.0, the unweighted score).
    :param schedule: ``"ddpm"`` (official linear-beta grid) or ``"karras"``.
    :param clip_denoised: clamp ``x0_hat`` to the data range (official: True).
    :param vp_scaling: evaluate the residual at ``f_i x'`` as the official VP code does (see the
        module docstring); False: at ``x'``.
    :param cg_iters: at most this many conjugate-gradient iterations per solve for physics without
        a closed form.
    :param cg_tol: relative residual at which a CG solve of the data step stops (at most
        ``cg_iters`` iterations; only physics without an exact solve). Default 1e-2: on 8-view CT solved by CG (``gram_max=0``),
        NFE 50, 4 held-out phantoms, 23.68 dB PSNR with warm starts, as 1e-6 from zero (issue 14).
        The pre-issue-14 solver is ``cg_tol=1e-6, cg_warm_start=False, gram_max=0``.
    :param cg_warm_start: start each CG solve from the previous step's solution of the same system
        (default True) instead of from 0.
    :param gram_max: largest per-sample measurement dimension for which the data step is solved
        exactly through an eigendecomposition of ``M M^T`` (``LinearPart``'s ``gram`` backend, e.g.
        8-view CT on 64x64: 728), built once per operator and reused; 0: never (CG instead).
        Default 1024.
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 1000
    scale: float = 1.75
    schedule: str = "ddpm"
    clip_denoised: bool = True
    vp_scaling: bool = True
    cg_iters: int = 50
    cg_tol: float = 1e-2
    cg_warm_start: bool = True
    gram_max: int = GRAM_MAX
    sigma_max: float | None = None

    PRESETS = {
        # official configs (configs/{sr4,deblur_gauss,deblur_uniform,color,denoise}_config.yaml):
        # 1000 steps, scale 1.75
        "sr4": dict(steps=1000, scale=1.75),
        "deblur": dict(steps=1000, scale=1.75),
        "denoise": dict(steps=1000, scale=1.75),
        "colorization": dict(steps=1000, scale=1.75),
        # invsolve's 8-view CT on ct-phantom64 (no official setting); chosen by a short tune on
        # training-distribution phantoms (seed 123), see docs/samplers.md
        "ct-sparse8": dict(steps=200, scale=1.75, schedule="karras"),
    }

    def run(self, prior, problem, x_shape, generator, callback=None):
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        clip = model_clip(prior, problem) if self.clip_denoised else None
        lin = LinearPart(problem, x_shape, self.cg_iters, tol=self.cg_tol, who="DMPS", gram_max=self.gram_max,
                         warm_start=self.cg_warm_start)
        noise_var = problem.sigma_y ** 2
        x = sigmas[0] * randn(x_shape, generator)
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            with torch.no_grad():
                denoised = denoise(prior, x, sigma, clip)
                x = ancestral_step(x, denoised, sigma, sigma_next, step_noise(x, generator, sigma_next))
                f = math.sqrt((1 + sigma ** 2) / (1 + sigma_next ** 2)) if self.vp_scaling else 1.0
                score = lin.likelihood_score(f * x, sigma ** 2, noise_var, key="score")
                x = x + self.scale * (sigma ** 2 - sigma_next ** 2) * score
            report(callback, i, len(sigmas) - 1, sigma, x, denoised)
        return x.detach()
