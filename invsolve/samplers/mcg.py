"""MCG: Manifold Constrained Gradient.

Paper: H. Chung, B. Sim, D. Ryu, J. C. Ye, "Improving Diffusion Models for Inverse Problems
using Manifold Constraints", NeurIPS 2022.
Official code: https://github.com/HJ-harry/MCG_diffusion
(inpainting: ``guided_diffusion/gaussian_diffusion.py::p_sample_loop_progressive``; sparse-view
CT: ``controllable_generation.py::get_pc_radon_MCG``).

Update rule (official inpainting rule, written in invsolve's VE coordinates for any linear
physics ``forward(x) = M x + c``; see docs/samplers.md):

    x0_hat   = clamp(D(x_i, sigma_i))                           (clip_denoised, as the official p_sample)
    g        = alpha_i * grad_{x_i} ||y - A(x0_hat)||            (non-squared norm, model-space units)
    g        = (I - M^+ M) g                                      (official: g * (1 - P), unobserved pixels only)
    x'       = ancestral step sigma_i -> sigma_{i+1} from x0_hat  (DDPM posterior q(x_{i+1} | x_i, x0_hat))
    y_{i+1}  = y + sigma_{i+1} M z,  z ~ N(0, I)                  (q_sample of the measurement, VE form)
    x_{i+1}  = (x' - g) + (M^T M + rho_{i+1} I)^+ M^T (y_{i+1} - forward(x' - g)),
               rho_{i+1} = (sigma_y / sigma_{i+1})^2              (projection onto the noised measurement)

For a mask ``M = P`` and ``sigma_y = 0`` the last line is the official
``x' * (1 - P) - g + q_sample(y) * P``. For ``sigma_y > 0`` the hard projection becomes the
minimiser of ``||forward(x) - y_{i+1}||^2 / sigma_y^2 + ||x - x'||^2 / sigma_{i+1}^2``: it is the
official projection while the diffusion noise dominates the measurement noise, and lets the
prior take over below it (at the last step, ``sigma = 0``, nothing is projected). See the docs
for why. ``alpha_i = alpha * scale * sqrt((1 + s_i^2)(1 + s_{i+1}^2))`` converts the official
weight (applied to VP states and [-1, 1] images, ``alpha = 1`` in the code, no ``1/||r||``
normalisation [MCG#15]) to VE coordinates and invsolve's physical-unit residual.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .base import ancestral_step, model_clip, randn, register, sigma_grid
from .dps import guided_denoise


@register("mcg")
@dataclasses.dataclass(frozen=True)
class MCG:
    """Manifold Constrained Gradient with projection onto the measurement (Chung et al., NeurIPS 2022).

    Needs linear physics (``TypeError`` otherwise).

    :param steps: number of noise levels (official inpainting: 1000 DDPM steps, ``run_inpainting.sh``).
    :param alpha: MCG gradient weight in the official parameterization (VP state, [-1, 1]
        images); official code: 1, without the paper's ``1 / ||y - P x0_hat||`` [MCG#15].
    :param schedule: ``"ddpm"`` (official linear-beta grid) or ``"karras"``.
    :param clip_denoised: clamp ``x0_hat`` to the prior's data range (official: True).
    :param vp_scaling: convert ``alpha`` from the VP parameterization (as DPS's ``zeta``).
    :param noise_aware: regularise the projection by ``rho = (sigma_y / sigma_next)^2`` (invsolve;
        identical to the official hard projection when ``sigma_y = 0``). False: always the hard
        projection onto ``y + sigma_next M z``, as the official code does with noisy ``y``.
    :param cg_iters: CG steps for pseudo-inverses when the physics is not a deepinv
        ``DecomposablePhysics`` (those are solved exactly); fewer steps regularise ill-posed
        operators such as sparse-view CT.
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 1000
    alpha: float = 1.0
    schedule: str = "ddpm"
    clip_denoised: bool = True
    vp_scaling: bool = True
    noise_aware: bool = True
    cg_iters: int = 50
    sigma_max: float | None = None

    PRESETS = {
        # official MCG inpainting (run_inpainting.sh; gaussian_diffusion.py): 1000 DDPM steps, alpha 1
        "inpainting": dict(steps=1000, alpha=1.0),
        # invsolve's 8-view CT on ct-phantom64 (the official CT variant uses a 2000-step VE
        # predictor-corrector with SIRT steps, too costly here); chosen on training-distribution
        # phantoms, see docs/samplers.md
        "ct-sparse8": dict(steps=200, alpha=1.0, schedule="karras", cg_iters=10),
    }

    def run(self, prior, problem, x_shape, generator, callback=None):
        if not problem.is_linear:
            raise TypeError(f"MCG projects onto the measurement and needs linear physics (a deepinv LinearPhysics); "
                            f"{type(problem.physics).__name__} is not. Use 'dps' or 'reddiff' for nonlinear physics.")
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        clip = model_clip(prior, problem) if self.clip_denoised else None
        x = sigmas[0] * randn(x_shape, generator)
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            denoised, grad = guided_denoise(prior, problem, x, sigma, "l2", clip)
            alpha = self.alpha * problem.scale * (math.sqrt((1 + sigma ** 2) * (1 + sigma_next ** 2))
                                                   if self.vp_scaling else 1.0)
            g = alpha * grad
            g = g - problem.pinv(problem.linear_forward(g), iters=self.cg_iters).to(g.dtype)
            if sigma_next > 0:
                noise = randn(x_shape, generator)
                z = randn(x_shape, generator)
            else:
                noise = z = torch.zeros_like(x)
            x = ancestral_step(x, denoised, sigma, sigma_next, noise) - g
            x = self._project(problem, x, sigma_next, z)
            if callback is not None:
                callback({"step": i, "steps": len(sigmas) - 1, "sigma": sigma, "x": x, "denoised": denoised})
        return x.detach(), len(sigmas) - 1

    def _project(self, problem, x, sigma_next, z):
        """Move ``x`` onto (towards) ``{forward(x) = y + sigma_next M z}``."""
        if problem.sigma_y > 0 and self.noise_aware:
            if sigma_next == 0:
                return x
            rho = (problem.sigma_y / sigma_next) ** 2
        else:
            rho = 0.0
        r = problem.residual(x) + sigma_next * problem.linear_forward(z)
        return x + problem.pinv(r, rho=rho, iters=self.cg_iters).to(x.dtype)
