"""ReSample: latent diffusion with hard data consistency and stochastic resampling.

Paper: B. Song, S. M. Kwon, Z. Zhang, X. Hu, Q. Qu, L. Shen, "Solving Inverse Problems with Latent
Diffusion Models via Hard Data Consistency", ICLR 2024.
Official code: https://github.com/soominkwon/resample (``ldm/models/diffusion/ddim.py::resample_sampling``,
``ldm_inverse/condition_methods.py``; commit 3e332b2).

Update rule, VE coordinates (``abar(sigma) = 1 / (1 + sigma^2)``; primes: the next, less noisy level),
step ``i`` of ``N`` DDIM (eta = 0) steps, ``index = N - 1 - i``:

    x0_hat = D(z, sigma);   z' = x0_hat + (sigma' / sigma)(z - x0_hat)                      (DDIM, eta 0)
    z'    <- z' - dps_scale sqrt(abar / abar') grad_z ||y - A(Dec(x0_hat(z)))||     (official 0.5 abar_t
                                                              in VP units, non-squared norm)
    if 0 < index <= N - N//3 and index % interval == 0:                 (hard data consistency)
        x0_tt = D after up to ``travel`` more DDIM steps from z'                  ("time travel")
        index >= N//3:  x* = argmin_x ||y - A x||^2 from Dec(x0_tt) (AdamW, pixel_lr, pixel_iters);
                        z0* = Enc(x*)                                          (pixel optimisation)
        index <  N//3:  z0* = argmin_z ||y - A(Dec(z))||^2 from x0_tt (AdamW, latent_lr, latent_iters,
                        stop at no improvement over ``patience`` iterations)     (latent optimisation)
        gamma = gamma_scale (1 - abar') / (1 - abar) (1 - abar / abar')
        z'  ~ N( (gamma z0* + abar' sigma'^2 z') / (gamma + abar' sigma'^2),
                 gamma sigma'^2 / (gamma + abar' sigma'^2) )                     (stochastic resampling)
    final: latent optimisation of the last state, then decode.

Optimisations stop per sample when the mean squared residual falls below ``tol`` (official 1e-6).
NFE per sample = ``steps`` + the time-travel evaluations. Works on latent priors (``LatentPrior``:
``Dec``/``Enc`` are its decoder/encoder) and on pixel priors (``Dec = Enc`` = the unit map, so
"pixel" and "latent" optimisation differ only in their step size and budget).

Where invsolve differs from the official code: ``x0_hat`` is Tweedie's ``D(z, sigma)`` (the official
"pseudo_x0" ``(z - (1 - abar) eps) / sqrt(abar)`` has ``1 - abar`` for ``sqrt(1 - abar)``); the grid is
the prior's own (``schedule``; official: the LDM's linear-beta DDPM skip); a latent prior without an
encoder uses latent optimisation in the middle third too. As in the official code, the optimisations
fit ``y`` (mean squared residual) as if it were noiseless: ``sigma_y`` enters nowhere.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from operators.errors import ConfigError

from .base import register
from .toolkit import adamw_fit, guided_denoise, image_physics, randn, report, sigma_grid, squared_norms


def alpha_bar(sigma: float) -> float:
    return 1.0 / (1.0 + sigma ** 2)


@register("resample")
@dataclasses.dataclass(frozen=True)
class ReSample:
    """ReSample (Song et al., ICLR 2024).

    :param steps: DDIM steps (official 500).
    :param dps_scale: DPS step ``c`` in ``c abar_t`` (official 0.5).
    :param interval: hard data consistency every ``interval`` steps (official 10).
    :param travel: DDIM steps of the time travel before each optimisation (official 5).
    :param gamma_scale: the resampling variance scale (official 40).
    :param pixel_lr, pixel_iters: AdamW of the pixel optimisation (official 1e-2, 2000).
    :param latent_lr, latent_iters: AdamW of the latent optimisation (official 5e-3, 500).
    :param patience: latent optimisation stops after this many iterations without improvement (official 200).
    :param tol: stop when the mean squared residual is below this (official 1e-6).
    :param schedule: noise grid (``"uniform"``: DDIM's skip of the 1000-step linear-beta DDPM grid).
    """

    steps: int = 500
    dps_scale: float = 0.5
    interval: int = 10
    travel: int = 5
    gamma_scale: float = 40.0
    pixel_lr: float = 1e-2
    pixel_iters: int = 2000
    latent_lr: float = 5e-3
    latent_iters: int = 500
    patience: int = 200
    tol: float = 1e-6
    schedule: str = "uniform"

    def __post_init__(self):
        if self.steps < 1 or self.interval < 1 or self.travel < 0:
            raise ConfigError(f"resample needs steps >= 1, interval >= 1, travel >= 0; got {self.steps}, "
                              f"{self.interval}, {self.travel}")
        if min(self.pixel_lr, self.latent_lr, self.gamma_scale) <= 0 or min(self.pixel_iters, self.latent_iters) < 0:
            raise ConfigError("resample needs pixel_lr, latent_lr, gamma_scale > 0 and iterations >= 0")

    @classmethod
    def for_nfe(cls, nfe: int) -> dict:
        """About ``nfe`` evaluations: ``steps`` guided steps plus ``travel + 1`` per hard data-consistency
        step (one every ``interval`` steps over two thirds of them), i.e. about 1.4 ``steps`` at the defaults."""
        events = (2 / 3) / cls.interval * (cls.travel + 1)
        return {"steps": max(1, round(int(nfe) / (1 + events)))}

    def hard_consistency(self, problem, x0: torch.Tensor, pixel_space: bool) -> torch.Tensor:
        """``argmin ||y - A x||^2 / m`` by AdamW: over images from ``Dec(x0)`` then re-encoded (``pixel_space``,
        where an encoder exists), else over latents from ``x0`` (through the decoder)."""
        m = problem.y[0].numel()
        latent = getattr(problem, "latent_prior", None)
        if pixel_space and (latent is None or latent.encoder is not None):
            physics, y = image_physics(problem), problem.tiled_y(x0.shape[0])
            x = adamw_fit(lambda v: squared_norms(y - physics.A(v)) / m, problem.to_physical(x0),
                          self.pixel_lr, self.pixel_iters, self.tol)
            return problem.to_model(x).to(x0.dtype)
        return adamw_fit(lambda z: squared_norms(problem.residual(z)) / m, x0, self.latent_lr, self.latent_iters,
                         self.tol, self.patience)

    def run(self, prior, problem, x_shape, generator, callback=None):
        sigmas = sigma_grid(self.schedule, self.steps, prior).tolist()
        n = len(sigmas) - 1
        third = n // 3
        z = sigmas[0] * randn(x_shape, generator)
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            x0_hat, grad = guided_denoise(prior, problem, z, sigma, "l2")
            z_next = x0_hat + (sigma_next / sigma) * (z - x0_hat)
            if sigma_next > 0:
                z_next = z_next - self.dps_scale * math.sqrt(alpha_bar(sigma) / alpha_bar(sigma_next)) * grad
            index = n - 1 - i
            if 0 < index <= n - third and index % self.interval == 0 and sigma_next > 0:
                x0_tt = self.time_travel(prior, z_next, sigmas[i + 1:])
                z0 = self.hard_consistency(problem, x0_tt, pixel_space=index >= third)
                z_next = self.resample(z_next, z0, sigma, sigma_next, generator)
            report(callback, i, n, sigma, z_next, x0_hat)
            z = z_next.detach()
        return self.hard_consistency(problem, z, pixel_space=False)

    def time_travel(self, prior, z: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
        """``D`` after up to ``travel`` unconditional DDIM (eta 0) steps from ``z`` at ``sigmas[0]``."""
        with torch.no_grad():
            x0 = prior(z, sigmas[0])
            for s, s_next in list(zip(sigmas[:-1], sigmas[1:]))[:self.travel]:
                if s_next <= 0:
                    break
                z = x0 + (s_next / s) * (z - x0)
                x0 = prior(z, s_next)
        return x0

    def resample(self, z: torch.Tensor, z0: torch.Tensor, sigma: float, sigma_next: float, generator) -> torch.Tensor:
        """Stochastic resampling: the Gaussian combining ``z0`` (variance ``gamma``) with ``z`` (``abar' sigma'^2``)."""
        a, a_next = alpha_bar(sigma), alpha_bar(sigma_next)
        gamma = self.gamma_scale * (1 - a_next) / (1 - a) * (1 - a / a_next)
        prior_var = a_next * sigma_next ** 2
        mean = (gamma * z0 + prior_var * z) / (gamma + prior_var)
        std = math.sqrt(gamma * sigma_next ** 2 / (gamma + prior_var))
        return mean + std * randn(z.shape, generator, dtype=z.dtype)
