"""DAPS: Decoupled Annealing Posterior Sampling.

Paper: B. Zhang, W. Chu, J. Berner, C. Meng, A. Anandkumar, Y. Song, "Improving Diffusion
Inverse Problem Solving with Decoupled Noise Annealing", CVPR 2025 (arXiv:2407.01521).
Official code: https://github.com/zhangbingliang2019/DAPS (commit 098df6b; ``sampler.py::DAPS``,
``cores/mcmc.py::MCMCSampler``, ``cores/scheduler.py``, ``configs/sampler/edm_daps.yaml``,
``configs/task/*.yaml``). Its ``VPPrecond`` already works in invsolve's VE coordinates.

Update rule, for the annealing levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0 (``annealing_sigmas``):

    x0_hat = Euler PF-ODE from sigma_i down to ode_sigma_min, ode_steps denoiser calls   (no gradient)
    x0y    = mc_steps Langevin or damped-HMC steps on
             p(x0 | x_i, y) ~ exp(-w ||y - A(x0)||^2 - ||x0 - x0_hat||^2 / (2 sigma_i^2)), from x0_hat,
             step eta_i = lr (tau / 0.01)^2 / max(1, ||A||^2) (1 + i / (N + 1) (lr_min_ratio - 1))
    x_{i+1} = x0y + sigma_{i+1} xi

with ``w = scale^2 / tau^2`` on the residual in physical units (the official weight). Where invsolve
differs (docs/samplers.md, DAPS): ``tau=None`` (default) uses the true likelihood
``w = 1 / (2 sigma_y^2)``; the step is divided by ``max(1, ||A||^2)`` for linear physics
(``normalize_lr``), the identity on every official task and what keeps the chain stable for
``||A|| > 1`` (8-view CT has ``||A||^2 ~ 500``); a chain that leaves the finite numbers returns
zeros per draw (official: for the whole batch).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from operators import linalg
from operators.errors import ConfigError

from .base import register
from .toolkit import annealing_sigmas, data_grad, pf_ode_euler, randn, report


TAU_REF = 0.01  # the official likelihood temperature, at which the official step sizes were tuned


def effective_tau(problem, tau: float | None) -> float:
    """The likelihood temperature in model units of ``y``: ``tau``, or ``sqrt(2) sigma_y scale``
    (the true likelihood ``||y - A(x)||^2 / (2 sigma_y^2)``, physical units) when ``tau`` is None."""
    if tau is not None:
        return float(tau)
    if problem.sigma_y <= 0:
        raise ConfigError("DAPS with tau=None uses the true likelihood and needs sigma_y > 0; "
                         "pass a likelihood temperature tau (official: 0.01) for noiseless data")
    return math.sqrt(2.0) * problem.sigma_y * problem.scale


def operator_norm_sq(problem) -> float:
    """``||A||^2`` of a linear physics in its own (physical) units (``operators.linalg``). The
    model-space data term of DAPS has curvature ``2 ||A||^2 / tau^2`` with ``tau`` in model units of
    ``y`` (the ``scale`` factors cancel), so this is the norm that sets its stable Langevin step."""
    return linalg.operator_norm_sq(problem.physics, problem.adjoint(problem.y))


# Official per-task settings (configs/task/*.yaml of the official repository, tau = 0.01,
# sigma_y = 0.05 on [-1, 1] images there). Pixel-space Langevin "DAPS-1K": 200 levels x 5 ODE steps.
_PIXEL = dict(tau=0.01, lr_min_ratio=0.01, mc_algo="langevin", mc_steps=100)
# Official latent DAPS-100 (configs/sampler/latent_edm_daps.yaml and commands/ldm_*.sh):
# 50 levels x 2 ODE steps on latents, sigma_max 10, PF-ODE to 0.001, HMC.
_LATENT = dict(levels=50, ode_steps=2, sigma_max=10.0, ode_sigma_min=0.001, tau=0.01, mc_algo="hmc")


@register("daps")
@dataclasses.dataclass(frozen=True)
class DAPS:
    """Decoupled Annealing Posterior Sampling (Zhang et al., CVPR 2025).

    Defaults are the official pixel-space "DAPS-1K" setting (``configs/sampler/edm_daps.yaml``,
    ``commands/pixel_*.sh`` and the ``pixel`` group of ``configs/task/down_sampling.yaml``),
    except ``tau`` (see below).

    :param levels: annealing levels N (official ``annealing_scheduler_config.num_steps``: 200).
    :param ode_steps: Euler steps of the unconditional PF-ODE per level (official 5); NFE = levels x ode_steps.
    :param sigma_max: first annealing level (official 100), clipped to the prior's range.
    :param sigma_min: last non-zero annealing level (official 0.1).
    :param ode_sigma_min: where each PF-ODE stops (official ``diffusion_scheduler_config.sigma_min``: 0.01),
        raised to the prior's ``sigma_min`` if that is larger.
    :param mc_algo: ``"langevin"`` (official pixel default) or ``"hmc"`` (damped Hamiltonian MC,
        official for latent / Stable-Diffusion priors and the ``pixel_hmc`` task groups).
    :param mc_steps: MCMC steps per level (official ``mcmc_sampler_config.num_steps``: 100; 200 for nonlinear deblur).
    :param lr: MCMC step size eta at the first level, in model-space units at ``tau = 0.01``
        (official 1e-4 for super-resolution, random inpainting and Gaussian deblur); used as
        ``lr (tau / 0.01)^2 / max(1, ||A||^2)`` (module docstring).
    :param lr_min_ratio: eta decays linearly to ``lr * lr_min_ratio`` (official 0.01).
    :param tau: likelihood temperature in the units of ``y`` computed from model-space images
        (official 0.01 in every task config); ``None`` (default) uses the problem's true
        ``sigma_y`` (the exact likelihood). See docs/samplers.md for why.
    :param momentum: HMC damping ``m`` (official class default 0.9; per-task values in the presets).
    :param normalize_lr: divide the step by ``max(1, ||A||^2)`` for linear physics (invsolve; the
        identity on every official task, see the module docstring); ``False`` is the official rule.
    """

    levels: int = 200
    ode_steps: int = 5
    sigma_max: float = 100.0
    sigma_min: float = 0.1
    ode_sigma_min: float = 0.01
    mc_algo: str = "langevin"
    mc_steps: int = 100
    lr: float = 1e-4
    lr_min_ratio: float = 0.01
    tau: float | None = None
    momentum: float = 0.9
    normalize_lr: bool = True

    PRESETS = {
        # task: "pixel" group of configs/task/<file>.yaml
        "sr4": dict(_PIXEL, lr=1e-4),                             # down_sampling.yaml
        "inpainting": dict(_PIXEL, lr=1e-4),                      # inpainting_rand.yaml (70% random)
        "inpainting-box": dict(_PIXEL, lr=5e-5),                  # inpainting.yaml (128x128 box)
        "deblur": dict(_PIXEL, lr=1e-4),                          # gaussian_blur.yaml
        "deblur-motion": dict(_PIXEL, lr=5e-5),                   # motion_blur.yaml
        "phase-retrieval": dict(_PIXEL, lr=5e-5),                 # phase_retrieval.yaml
        "hdr": dict(_PIXEL, lr=2e-5),                             # hdr.yaml
        "deblur-nonlinear": dict(_PIXEL, lr=1e-5, mc_steps=200),  # nonlinear_blur.yaml
        # "pixel_hmc" group of the same files: pixel DAPS-1K with damped HMC
        "sr4-hmc": dict(tau=0.01, mc_algo="hmc", mc_steps=12, lr=1.04e-4, lr_min_ratio=0.012, momentum=0.90),
        "inpainting-hmc": dict(tau=0.01, mc_algo="hmc", mc_steps=11, lr=3.56e-5, lr_min_ratio=0.015, momentum=0.80),
        "inpainting-box-hmc": dict(tau=0.01, mc_algo="hmc", mc_steps=84, lr=1.15e-5, lr_min_ratio=0.014, momentum=0.003),
        "deblur-hmc": dict(tau=0.01, mc_algo="hmc", mc_steps=82, lr=4.04e-5, lr_min_ratio=0.011, momentum=0.10),
        "deblur-motion-hmc": dict(tau=0.01, mc_algo="hmc", mc_steps=96, lr=3.69e-5, lr_min_ratio=0.01, momentum=0.11),
        "phase-retrieval-hmc": dict(tau=0.01, mc_algo="hmc", mc_steps=62, lr=9.75e-6, lr_min_ratio=0.019, momentum=0.73),
        "hdr-hmc": dict(tau=0.01, mc_algo="hmc", mc_steps=100, lr=2.18e-5, lr_min_ratio=0.013, momentum=0.23),
        "deblur-nonlinear-hmc": dict(tau=0.01, mc_algo="hmc", mc_steps=85, lr=1.20e-5, lr_min_ratio=0.012, momentum=0.46),
        # "ldm" group (LatentDAPS-100 with HMC): for a latent prior, i.e. physics composed with its decoder
        "sr4-latent": dict(_LATENT, mc_steps=24, lr=1.35e-4, lr_min_ratio=0.023, momentum=0.86),
        "inpainting-latent": dict(_LATENT, mc_steps=38, lr=8.40e-6, lr_min_ratio=0.013, momentum=0.92),
        "inpainting-box-latent": dict(_LATENT, mc_steps=15, lr=9.02e-6, lr_min_ratio=0.13, momentum=0.74),
        "deblur-latent": dict(_LATENT, mc_steps=35, lr=2.70e-6, lr_min_ratio=0.95, momentum=0.95),
        "deblur-motion-latent": dict(_LATENT, mc_steps=49, lr=2.4e-5, lr_min_ratio=0.041, momentum=0.45),
        "phase-retrieval-latent": dict(_LATENT, mc_steps=65, lr=2.1e-5, lr_min_ratio=0.12, momentum=0.41),
        "hdr-latent": dict(_LATENT, mc_steps=38, lr=4.52e-6, lr_min_ratio=0.015, momentum=0.58),
        "deblur-nonlinear-latent": dict(_LATENT, mc_steps=80, lr=3.71e-6, lr_min_ratio=0.024, momentum=0.91),
        # "fast": the official DAPS-100 split (50 levels x 2 ODE steps, commands/ldm_*.sh, sd_*.sh)
        # with the pixel grid and the official pixel Langevin settings of down_sampling.yaml;
        # the official repository runs pixel priors only as DAPS-1K.
        "fast": dict(_PIXEL, levels=50, ode_steps=2, lr=1e-4),
        # invsolve's 8-view CT on ct-phantom64 (no official CT task): the DAPS-100 split with the official
        # pixel_hmc super-resolution chain, chosen on training-distribution phantoms (docs/samplers.md)
        "ct-sparse8": dict(levels=50, ode_steps=2, tau=0.01, mc_algo="hmc", mc_steps=12, lr=1.04e-4,
                           lr_min_ratio=0.012, momentum=0.90),
        # invsolve's 4x MRI (mri-4x-equispaced) with the magnitude prior mri-brain64 seen through the real
        # channel (no official MRI setting); chosen on 2 MNI152 T1 slices, benchmarks/mri/tune_presets.md
        "mri-4x": dict(levels=50, ode_steps=2, mc_algo="langevin", mc_steps=100, lr=1e-4, lr_min_ratio=0.01, tau=0.01),
    }

    def __post_init__(self):
        if self.mc_algo not in ("langevin", "hmc"):
            raise ConfigError(f"mc_algo must be 'langevin' or 'hmc', got {self.mc_algo!r}")
        if self.levels < 1 or self.ode_steps < 1 or self.mc_steps < 0:
            raise ConfigError(f"need levels >= 1, ode_steps >= 1 and mc_steps >= 0; got {self.levels}, "
                             f"{self.ode_steps}, {self.mc_steps}")
        if not 0 < self.ode_sigma_min < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < ode_sigma_min < sigma_min < sigma_max; got {self.ode_sigma_min}, "
                             f"{self.sigma_min}, {self.sigma_max}")
        if self.tau is not None and not self.tau > 0:
            raise ConfigError(f"tau must be > 0 or None (true sigma_y), got {self.tau}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")

    @classmethod
    def for_nfe(cls, nfe: int) -> dict:
        """Keep the official 5 ODE steps per level and scale the number of annealing levels:
        ``levels = round(nfe / 5)`` (NFE 1000 is the official DAPS-1K)."""
        ode_steps = cls.ode_steps
        return {"levels": max(1, round(nfe / ode_steps)), "ode_steps": ode_steps}

    def run(self, prior, problem, x_shape, generator, callback=None):
        sigma_max = min(self.sigma_max, prior.sigma_max)
        sigma_min = max(self.sigma_min, prior.sigma_min)
        ode_sigma_min = max(self.ode_sigma_min, prior.sigma_min)
        if not ode_sigma_min < sigma_min < sigma_max:
            raise ConfigError(f"the prior's sigma range [{prior.sigma_min:g}, {prior.sigma_max:g}] leaves no room for "
                             f"DAPS levels {sigma_max:g} -> {sigma_min:g} above ode_sigma_min={ode_sigma_min:g}; "
                             "adjust sigma_max / sigma_min / ode_sigma_min")
        tau = effective_tau(problem, self.tau)
        weight = problem.scale ** 2 / tau ** 2  # on ||y - A(x)||^2 in physical units of y
        lr = self.lr * (tau / TAU_REF) ** 2  # the official step at tau = 0.01, scaled with the temperature
        if self.normalize_lr and problem.is_linear:
            lr = lr / max(1.0, operator_norm_sq(problem))  # = the official step whenever ||A|| <= 1
        sigmas = annealing_sigmas(self.levels, sigma_min, sigma_max)
        x = sigmas[0] * randn(x_shape, generator)
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            with torch.no_grad():
                x0_hat = pf_ode_euler(prior, x, sigma, ode_sigma_min, self.ode_steps)
            eta = lr * (1 + i / (self.levels + 1) * (self.lr_min_ratio - 1))
            x0y = self._mcmc(problem, x0_hat, sigma, eta, weight, x_shape, generator)
            x = x0y + sigma_next * randn(x_shape, generator) if sigma_next > 0 else x0y
            report(callback, i, self.levels, sigma, x, x0_hat, x0y=x0y)
        return x.detach()

    def _mcmc(self, problem, x0_hat, sigma, eta, weight, x_shape, generator):
        """Langevin or damped HMC on ``p(x0 | x_i, y)`` with the Gaussian prior term
        (official ``prior_solver='gaussian'``), started at ``x0_hat``."""
        x = x0_hat.detach().clone()
        velocity = randn(x_shape, generator, dtype=x.dtype, device=x.device) if self.mc_algo == "hmc" else None
        for _ in range(self.mc_steps):
            score = -weight * data_grad(problem, x) + (x0_hat - x) / sigma ** 2
            noise = randn(x_shape, generator, dtype=x.dtype, device=x.device)
            if self.mc_algo == "langevin":
                x = x + eta * score + math.sqrt(2 * eta) * noise
            else:
                velocity = self.momentum * velocity + math.sqrt(eta) * score + math.sqrt(2 * (1 - self.momentum)) * noise
                x = x + math.sqrt(eta) * velocity
        # The official chain stops and returns zeros for the whole batch as soon as a NaN shows up.
        # A non-finite value never becomes finite again under these updates, so checking once at the
        # end zeroes exactly the draws whose chain broke; per draw, so batched draws stay independent.
        failed = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        if failed.any():
            x = torch.where(failed.reshape(-1, *([1] * (x.ndim - 1))), torch.zeros_like(x), x)
        return x.detach()
