"""DPS: Diffusion Posterior Sampling.

Paper: H. Chung, J. Kim, M. T. Mccann, M. L. Klasky, J. C. Ye, "Diffusion Posterior
Sampling for General Noisy Inverse Problems", ICLR 2023.
Official code: https://github.com/DPS2022/diffusion-posterior-sampling
(``guided_diffusion/condition_methods.py::PosteriorSampling``, ``gaussian_diffusion.py``).

Update rule (official code, written in invsolve's VE coordinates; see docs/samplers.md):

    x0_hat   = D(x_i, sigma_i)                         (clamped to the data range, as clip_denoised)
    x'       = ancestral step sigma_i -> sigma_{i+1}   (DDPM posterior q(x_{i+1} | x_i, x0_hat))
    x_{i+1}  = x' - zeta_i * grad_{x_i} ||y - A(x0_hat)||_2

The official code differentiates the norm of the whole batch; here each posterior sample
gets the gradient of its own residual norm so samples in a batch are independent. The
official step ``zeta`` acts on the VP state ``x_vp = x / sqrt(1 + sigma^2)``; the same
update in VE coordinates is ``zeta_i = zeta * sqrt((1 + sigma_i^2)(1 + sigma_{i+1}^2))``
(``x_vp`` rescales the state and the gradient), which is what ``vp_scaling=True`` applies,
so official step sizes carry over unchanged.

Step-count independence (invsolve; docs/samplers.md): the official code applies ``zeta`` once per
step, so the total guidance grows with the number of steps and a ``zeta`` tuned at 1000 steps is
5x too weak at 200. With ``zeta_rule="spanned"`` (default) ``zeta`` is stated per step of the
official 1000-step DDPM grid and each step of the grid in use applies ``zeta`` times the number of
official steps it spans (``toolkit.ddpm_steps_spanned``, exactly 1 on the official grid, so the
official configs are reproduced unchanged); ``zeta_rule="per-step"`` is the official code's rule
on any grid. ``zeta="auto"`` replaces the weight by a per-sample Polyak step to the noise level
(``toolkit.polyak_weight``), which needs no tuning for a new operator.
"""

from __future__ import annotations

import dataclasses

from operators.errors import ConfigError

from .base import register
from .toolkit import (ancestral_step, check_weight_rule, guidance_weight, guided_denoise, model_clip, randn, report, sigma_grid,
                      step_noise)


@register("dps")
@dataclasses.dataclass(frozen=True)
class DPS:
    """Diffusion Posterior Sampling (Chung et al., ICLR 2023).

    :param steps: number of noise levels (official: 1000 DDPM steps).
    :param zeta: guidance step ``zeta'`` in the official VP parameterization, per step of the
        official 1000-step DDPM grid (official configs: 0.3 super-resolution and deblurring, 0.5
        inpainting, 1.0 phase retrieval; ``configs/*.yaml`` of the official repository); or
        ``"auto"``: the per-sample Polyak step to the noise level, ``auto_fraction`` of it.
    :param zeta_rule: ``"spanned"`` (``zeta`` times the official steps each step spans: the
        guidance does not depend on ``steps`` or ``schedule``) or ``"per-step"`` (the official
        code's rule: ``zeta`` at every step of whatever grid).
    :param auto_fraction: fraction of the Polyak step taken with ``zeta="auto"``.
    :param spanned_cap: the spanned rule's cap, as a fraction of the Polyak step (0.5: chosen on
        training phantoms over 1, the full step, and 0.25; ``benchmarks/phantom/tune_guidance.md``).
    :param norm: ``"l2"`` (official, non-squared residual norm) or ``"l2sq"``.
    :param schedule: ``"ddpm"`` (official linear-beta grid) or ``"karras"`` (EDM grid, better
        for fewer steps).
    :param clip_denoised: clamp ``x0_hat`` to the prior's data range (official: True).
    :param vp_scaling: convert ``zeta`` from the VP parameterization (see module docstring).
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 1000
    zeta: float | str = 1.0
    zeta_rule: str = "spanned"
    auto_fraction: float = 1.0
    spanned_cap: float = 0.5
    norm: str = "l2"
    schedule: str = "ddpm"
    clip_denoised: bool = True
    vp_scaling: bool = True
    sigma_max: float | None = None

    PRESETS = {
        # official configs (DPS repository, configs/*.yaml): 1000 steps
        "sr4": dict(zeta=0.3),
        "deblur": dict(zeta=0.3),
        "inpainting": dict(zeta=0.5),
        "phase-retrieval": dict(zeta=1.0),
        # invsolve's 8-view CT on ct-phantom64 (no official setting: DPS has no CT task); zeta 0.5 was
        # chosen under the per-step rule (benchmarks/phantom/tune_dps.md) and re-measured under the
        # spanned rule on the same training phantoms (benchmarks/phantom/tune_guidance.md): 30.26 dB
        # at 250 Karras steps (per-step: 27.99); "auto" 31.17 there but it falls further at 50 steps
        "ct-sparse8": dict(steps=250, zeta=0.5, schedule="karras"),
        # invsolve's 4x MRI (mri-4x-equispaced) with the magnitude prior mri-brain64 seen through the real
        # channel (no official MRI setting); chosen on 2 MNI152 T1 slices under the spanned rule,
        # benchmarks/mri/tune_presets.md: zeta 3 / 10 / "auto" 29.80 / 28.96 / 26.31 dB
        "mri-4x": dict(steps=100, schedule="karras", zeta=3.0),
    }

    def __post_init__(self):
        check_weight_rule("dps", "zeta", self.zeta_rule, self.zeta)
        if not 0 < self.spanned_cap <= 1:
            raise ConfigError(f"dps: spanned_cap must be in (0, 1], got {self.spanned_cap}")

    def run(self, prior, problem, x_shape, generator, callback=None):
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        clip = model_clip(prior, problem) if self.clip_denoised else None
        x = sigmas[0] * randn(x_shape, generator)
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            denoised, grad, r = guided_denoise(prior, problem, x, sigma, self.norm, clip, with_residual=True)
            zeta = guidance_weight(problem, denoised, grad, self.zeta, self.zeta_rule, sigma, sigma_next, self.vp_scaling,
                                   self.norm, self.auto_fraction, cap=self.spanned_cap, residual=r)
            x = ancestral_step(x, denoised, sigma, sigma_next, step_noise(x, generator, sigma_next)) - zeta * grad
            report(callback, i, len(sigmas) - 1, sigma, x, denoised)
        return x.detach()
