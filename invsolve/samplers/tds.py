"""TDS: Twisted Diffusion Sampler, sequential Monte Carlo with twisted proposals for any differentiable physics.

Paper: L. Wu, B. L. Trippe, C. A. Naesseth, D. M. Blei, J. P. Cunningham, "Practical and
Asymptotically Exact Conditional Sampling in Diffusion Models", NeurIPS 2023.
Official code: https://github.com/blt2114/twisted_diffusion_sampler
(``smc_utils/feynman_kac_pf.py::smc_FK``, ``smc_utils/smc_utils.py``,
``image_exp/image_diffusion/feynman_kac_image_ddpm.py::TwistedDDPM``).

Update rule (invsolve's VE coordinates, any differentiable ``forward``):

    x0_hat, g = D(x_k, sigma_k), grad_{x_k} log psi_k(x_k)            (gradient through D, ``guided_denoise``)
    log psi_k(x) = -||y - forward(D(x, sigma_k))||^2 / (2 r_k^2),   r_k^2 = s2 + sigma_k^2 tau2 / (sigma_k^2 + tau2)
    log w   += log psi_k(x_k) - log psi_{k-1}(x_{k-1}) + log p(x_k | x_{k-1}) - log q(x_k | x_{k-1})
    resample (systematic) where ESS < ess_threshold * particles
    x0_tw    = x0_hat + sigma_k^2 g                                   (Tweedie step on the twisted density)
    x_{k+1}  ~ q = N(x0_tw + (s'^2/s^2)(x_k - x0_tw), v),  p = the same around x0_hat,  v = s'^2 (s^2 - s'^2) / s^2

with ``s2 = max(sigma_y, sigma_y_min)^2`` (units of ``y``); the first weights are ``log psi_0``
(particles from N(0, sigma_0^2 I)); the last step returns x0_hat (the prior's own last step) with
the weight ``log N(y; forward(x0_hat), s2) - log psi_{K-1}``, so with exact ``D`` the weighted
particles target the posterior whatever the twist; one particle per posterior sample is drawn from
the final weights.

Differences from the official code: VE coordinates (its ``(1 - abar)/sqrt(abar) grad_{x_vp}`` is
``sigma^2 grad_x`` here); Gaussian measurement noise in the twist and the final weight (official
image code: noiseless inpainting, observed pixels set to ``y`` at the end); ``r_k^2`` is its
``var_type`` 6 (``sigma_t^2 tau^2 / (sigma_t^2 + tau^2)``, ``tau2`` in model units) plus ``s2``;
the DDPM posterior variance ``v`` instead of a learned one; the twisted estimate is clamped only
when the prior has a data range (official: clamped to [-1, 1]).
"""

from __future__ import annotations

import dataclasses

import torch

from .base import register
from .toolkit import (StateShape, draw_one, ess, heaviest, guided_denoise, model_clip, particle_noise, report, resample_if, select,
                      sigma_grid, to_groups)


def _sq_residual(problem, x0: torch.Tensor) -> torch.Tensor:
    """Per-row ``||y - forward(x0)||^2``."""
    r = problem.residual(x0)
    r = torch.view_as_real(r) if r.is_complex() else r
    return r.reshape(r.shape[0], -1).pow(2).sum(1)


@register("tds")
@dataclasses.dataclass(frozen=True)
class TDS:
    """Twisted Diffusion Sampler (Wu et al., NeurIPS 2023): any differentiable physics, Gaussian noise.

    NFE = ``steps * particles`` (each step evaluates every particle, with one backward pass).

    :param steps: noise levels (official image code: 100 respaced DDPM steps).
    :param particles: particles per posterior sample (official ``base_sampler_conf.yml``: 4).
    :param tau2: prior-variance scale of the twist, ``var_type`` 6 (official ``run_image.py``: 0.12).
    :param schedule: noise grid (``"ddpm"``: the respaced linear-beta grid of the official code).
    :param ess_threshold: resample a group when its ESS < ``ess_threshold * particles`` (official: 1,
        i.e. whenever the weights are not uniform; 0: never).
    :param sigma_y_min: floor of the noise level in the twist and final weight, in the units of ``y``.
    :param clip_denoised: clamp ``x0_hat`` and the twisted estimate to the prior's data range.
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 100
    particles: int = 4
    tau2: float = 0.12
    schedule: str = "ddpm"
    ess_threshold: float = 1.0
    sigma_y_min: float = 1e-4
    clip_denoised: bool = True
    sigma_max: float | None = None

    def run(self, prior, problem, x_shape, generator, callback=None):
        n, n_part = x_shape[0], self.particles
        rows = StateShape((n * n_part, *x_shape[1:]), problem.dtype)  # the state dtype (float64 physics)
        clip = model_clip(prior, problem) if self.clip_denoised else None
        s2 = max(problem.sigma_y, self.sigma_y_min) ** 2
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()

        def twist(x, sigma):
            """``(x0_hat, grad log psi, log psi)`` at level ``sigma``, per particle."""
            r2 = s2 + sigma ** 2 * self.tau2 / (sigma ** 2 + self.tau2)
            seen = {}

            def loss(denoised):
                seen["sq"] = _sq_residual(problem, denoised)
                return seen["sq"].sum() / (2 * r2)

            denoised, grad = guided_denoise(prior, problem, x, sigma, clip=clip, loss=loss)
            return denoised, -grad, -seen["sq"].detach().to(torch.float64) / (2 * r2)

        x = sigmas[0] * particle_noise(rows, n_part, generator)
        logw = torch.zeros(n, n_part, dtype=torch.float64)
        log_psi_prev = torch.zeros(rows[0], dtype=torch.float64)
        log_pq = torch.zeros(rows[0], dtype=torch.float64)
        steps = len(sigmas) - 1
        for k in range(steps):
            sigma, sigma_next = sigmas[k], sigmas[k + 1]
            denoised, grad, log_psi = twist(x, sigma)
            with torch.no_grad():
                logw = logw + to_groups(log_psi - log_psi_prev + log_pq, n_part)
                report(callback, k, steps, sigma, heaviest(x, logw), heaviest(denoised, logw), ess=ess(logw), particles=x)
                idx, logw = resample_if(logw, self.ess_threshold, generator)
                x, denoised, grad, log_psi = (select(t, idx) for t in (x, denoised, grad, log_psi))
                if sigma_next > 0:
                    twisted = denoised + sigma ** 2 * grad
                    if clip is not None:
                        twisted = clip(twisted)
                    ratio = (sigma_next / sigma) ** 2
                    v = sigma_next ** 2 * (1 - ratio)
                    mean_q = twisted + ratio * (x - twisted)
                    mean_p = denoised + ratio * (x - denoised)
                    x = mean_q + v ** 0.5 * particle_noise(rows, n_part, generator)
                    if v > 0:
                        dq, dp = (x - mean_q).reshape(rows[0], -1), (x - mean_p).reshape(rows[0], -1)
                        log_pq = ((dq.pow(2).sum(1) - dp.pow(2).sum(1)) / (2 * v)).to(torch.float64)
                    else:  # a repeated level (a grid clipped at sigma_max): both moves keep x
                        log_pq = torch.zeros_like(log_psi)
                    log_psi_prev = log_psi
                else:  # the prior's last step, weighted by the true likelihood
                    x = denoised
                    log_lik = -_sq_residual(problem, x).to(torch.float64) / (2 * s2)
                    logw = logw + to_groups(log_lik - log_psi, n_part)
        pick = draw_one(logw, generator)
        return to_groups(x, n_part)[torch.arange(n), pick].detach()
