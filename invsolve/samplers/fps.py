"""FPS: Filtering Posterior Sampling, a particle filter on a backward sequence of noisy measurements.

Paper: Z. Dou, Y. Song, "Diffusion Posterior Sampling for Linear Inverse Problem Solving: A
Filtering Perspective", ICLR 2024.
Official code: https://github.com/ZehaoDou-official/FPS-SMC-2023
(``guided_diffusion/gaussian_diffusion.py``: ``p_sample_loop``, ``DDIM.p_sample``;
``posterior_mean_variance.py``); the EDM-framework port in InverseBench (``algo/fps.py``).

Update rule (invsolve's VE coordinates, linear physics ``forward(x) = M x + c``, noise variance
``s2 = max(sigma_y, sigma_y_min)^2`` in the units of ``y``):

    y-sequence  y_0 = y + sigma_0 M e_0,  e_{k+1} = sqrt(1 - eta^2) e_k + eta z_k   (e_k ~ N(0, I): the
                eta-DDIM bridge of the measurement, y_k - forward(x_k) ~ N(0, s2) at every level)
    x0_hat   = D(x_k, sigma_k);  mu = x0_hat + sigma_{k+1} sqrt(1 - eta^2) (x_k - x0_hat) / sigma_k,  v = (eta sigma_{k+1})^2
    log w   += log N(y_{k+1}; forward(mu), v M M^T + s2 I)                       (fully adapted weight)
    resample (systematic) where ESS < ess_threshold * particles
    x_{k+1}  ~ N(mu, v I) N(y_{k+1}; forward(x), s2 I)  (Gaussian product, drawn exactly as
               argmin ||x - mu - sqrt(v) z1||^2 / v + ||forward(x) - y_{k+1} - sqrt(s2) z2||^2 / s2)

starting from N(0, sigma_0^2 I) N(y_0; forward(x), s2 I); the last step (to sigma = 0, ``y_K = y``)
weights by the likelihood ``N(y; forward(x0_hat), s2)`` and returns x0_hat; one particle per posterior
sample is drawn from the final weights. Each posterior sample has its own y-sequence.

Differences from the official code: VE coordinates (its VP likelihood variance ``sigma^2 abar_t``
is exactly ``s2`` here); the noise level is the problem's ``sigma_y`` (official: 0.05 hard-coded),
floored at ``sigma_y_min`` (InverseBench: 1e-4); systematic resampling when the ESS falls below
``ess_threshold * particles`` (official: multinomial at every step), the weights accumulated in
log space and applied before the move (the official code weights after proposing; same target);
the y-sequence is drawn on the fly (same law as generating it first); the Gaussian product is
solved through ``LinearPart`` (exact for decomposable and small physics, conjugate gradients
otherwise, where the draw and the weights are approximate), official: the SVD or a mask; the
returned particle is drawn from the weights (official: particle 0 after resampling).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .base import register
from .toolkit import (StateShape, LinearPart, denoise, draw_one, ess, heaviest, model_clip, particle_noise,
                      randn, report, resample_if, select, sigma_grid, to_groups)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row real inner product ``Re <a, b>`` (float64)."""
    prod = (a.conj() * b).real if a.is_complex() or b.is_complex() else a * b
    return prod.reshape(prod.shape[0], -1).sum(1).to(torch.float64)


@register("fps")
@dataclasses.dataclass(frozen=True)
class FPS:
    """Filtering Posterior Sampling (Dou & Song, ICLR 2024): linear physics, Gaussian noise.

    Needs linear physics (``TypeError`` otherwise). NFE = ``steps * particles`` (each step evaluates every particle).

    :param steps: noise levels (InverseBench ``fps``: 100; official: 1000).
    :param particles: particles per posterior sample (InverseBench: 20; official ``--particle_size``: 5).
    :param eta: eta of the eta-DDIM transition and y-bridge, ``x' = x0 + sigma' (eta z + sqrt(1 - eta^2) eps)``
        (InverseBench: 0.85; official ``--c_rate`` 0.95 = eta^2).
    :param schedule: noise grid (``"ddpm"``: the VP linear-beta grid both official codes use).
    :param ess_threshold: resample a group when its ESS < ``ess_threshold * particles`` (1: almost every step).
    :param sigma_y_min: floor of the noise level used by the filter, in the units of ``y`` (InverseBench: 1e-4).
    :param clip_denoised: clamp ``x0_hat`` to the prior's data range.
    :param cg_iters: conjugate-gradient iterations per solve for physics without a closed form.
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 100
    particles: int = 20
    eta: float = 0.85
    schedule: str = "ddpm"
    ess_threshold: float = 1.0
    sigma_y_min: float = 1e-4
    clip_denoised: bool = True
    cg_iters: int = 50
    sigma_max: float | None = None

    PRESETS = {
        # invsolve (InverseBench: 20 particles x 100 steps): 70 % random inpainting on ct-phantom64
        # within a 200-NFE budget (steps x particles), the better of 50 x 4 / 20 x 10 on training
        # phantoms, benchmarks/phantom/tune_new.md
        "inpainting": dict(steps=50, particles=4),
    }

    def run(self, prior, problem, x_shape, generator, callback=None):
        lin = LinearPart(problem, x_shape, self.cg_iters, who="FPS")
        n, n_part = x_shape[0], self.particles
        rows = StateShape((n * n_part, *x_shape[1:]), problem.dtype)  # the state dtype (float64 physics)
        clip = model_clip(prior, problem) if self.clip_denoised else None
        s2 = max(problem.sigma_y, self.sigma_y_min) ** 2
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        y = problem.tiled_y(n * n_part)
        keep = math.sqrt(max(0.0, 1 - self.eta ** 2))

        def tile(t):  # one row per group -> particle-major rows
            return t.repeat(n_part, *([1] * (t.ndim - 1)))

        def propose(mu, v, target):
            """An exact draw from N(mu, v I) N(target; forward(x), s2 I) (perturb, then solve)."""
            z1 = particle_noise(rows, n_part, generator)
            z2 = particle_noise(target.shape, n_part, generator, dtype=target.real.dtype)
            return lin.project(mu + math.sqrt(v) * z1, target + math.sqrt(s2) * z2, rho=s2 / v)

        with torch.no_grad():
            e = randn(x_shape, generator)                     # the bridge noise, one per group
            target = y + sigmas[0] * tile(lin.problem.linear_forward(e))
            x = propose(torch.zeros(rows), sigmas[0] ** 2, target)
        logw = torch.zeros(n, n_part, dtype=torch.float64)
        steps = len(sigmas) - 1
        for k in range(steps):
            sigma, sigma_next = sigmas[k], sigmas[k + 1]
            with torch.no_grad():
                denoised = denoise(prior, x, sigma, clip)
                mu = denoised + sigma_next * keep * (x - denoised) / sigma
                v = (self.eta * sigma_next) ** 2
                if sigma_next > 0:
                    e = keep * e + self.eta * randn(x_shape, generator)
                    target = y + sigma_next * tile(lin.problem.linear_forward(e))
                else:
                    target = y
                r = target - lin.problem.forward(mu)
                logw = logw + to_groups(-0.5 * _inner(r, lin.solve_measurement(r, v, s2)), n_part)
                report(callback, k, steps, sigma, heaviest(x, logw), heaviest(denoised, logw), ess=ess(logw), particles=x)
                idx, logw = resample_if(logw, self.ess_threshold, generator)
                mu = select(mu, idx)
                x = propose(mu, v, target) if sigma_next > 0 else mu
        pick = draw_one(logw, generator)
        return to_groups(x, n_part)[torch.arange(n), pick].detach()
