"""Turn networks in their native parameterization into the denoiser ``D(x, sigma)``.

invsolve samplers see only the EDM/VE state ``x = x0 + sigma * eps`` and the denoiser
``D(x, sigma) ~ E[x0 | x]`` (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1). Each adapter below holds the native
network and performs the change of variables, so the native scaling of a prior never
leaks into a sampler:

=================  ==========================================  ===================================
parameterization   network call                                 D(x, sigma)
=================  ==========================================  ===================================
``edm``            F(c_in x, ln(sigma)/4)                       c_skip x + c_out F
``ve-score``       s(x, sigma) ~ grad log p_sigma(x)            x + sigma^2 s
``vp-eps``         eps(x / sqrt(1+sigma^2), t(sigma))           x - sigma eps
``vp-x0``          x0(x / sqrt(1+sigma^2), t(sigma))            x0
``vp-v``           v(x / sqrt(1+sigma^2), t(sigma))             alpha x_vp - s v   (alpha^2 = 1/(1+sigma^2), s = sigma alpha)
``flow-velocity``  v(x / (1+sigma), sigma / (1+sigma))          x_t - t v          (x_t = (1-t) x0 + t eps)
=================  ==========================================  ===================================

For the VP family, ``t(sigma)`` is the (fractional) DDPM timestep whose
``alpha_bar_t = 1 / (1 + sigma^2)``, found by interpolating ``log sigma_t`` over the
discrete schedule exactly as EDM's ``VPPrecond`` and DAPS do for ADM networks.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError

PARAMETERIZATIONS = ("edm", "ve-score", "vp-eps", "vp-x0", "vp-v", "flow-velocity")


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a tensor of shape (B, 1, ..., 1) broadcastable against x."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    return sigma.expand(x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))


class DDPMSchedule:
    """Discrete DDPM noise schedule (``alpha_bar_t`` for t = 0..T-1) with a continuous ``t(sigma)``.

    Default: the linear beta schedule 1e-4 .. 0.02 over 1000 steps of DDPM / guided-diffusion.
    """

    def __init__(self, alphas_cumprod: torch.Tensor | None = None, beta_start: float = 1e-4,
                 beta_end: float = 0.02, timesteps: int = 1000):
        if alphas_cumprod is None:
            betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
            alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.sigmas = torch.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep with ``sigma_t == sigma`` (clamped to the schedule's range)."""
        log_sigma = sigma.to(torch.float64).log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        hi = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        lo = hi - 1
        w = (log_sigma - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        return (lo + w).to(sigma.dtype)


class Denoiser(nn.Module):
    """Base class: a module computing ``D(x, sigma)`` from a native network ``net``."""

    parameterization: str = ""

    def __init__(self, net: Callable):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class EDMDenoiser(Denoiser):
    """EDM preconditioning (Karras et al. 2022, Table 1, column "EDM")."""

    parameterization = "edm"

    def __init__(self, net: Callable, sigma_data: float = 0.5):
        super().__init__(net)
        self.sigma_data = float(sigma_data)

    def forward(self, x, sigma):
        s = _per_sample(sigma, x)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s ** 2 + sd2)
        c_in = 1 / torch.sqrt(s ** 2 + sd2)
        c_noise = s.reshape(-1).log() / 4
        return c_skip * x + c_out * self.net(c_in * x, c_noise)


class VEScoreDenoiser(Denoiser):
    """Score network of a VE SDE (score_sde NCSN++): ``D = x + sigma^2 s(x, sigma)`` (Tweedie)."""

    parameterization = "ve-score"

    def forward(self, x, sigma):
        s = _per_sample(sigma, x)
        return x + s ** 2 * self.net(x, s.reshape(-1))


class _VPDenoiser(Denoiser):
    def __init__(self, net: Callable, schedule: DDPMSchedule | None = None):
        super().__init__(net)
        self.schedule = schedule or DDPMSchedule()

    def native(self, x, sigma):
        s = _per_sample(sigma, x)
        alpha = 1 / torch.sqrt(1 + s ** 2)
        t = self.schedule.t(s.reshape(-1))
        return s, alpha, self.net(alpha * x, t)


class VPEpsDenoiser(_VPDenoiser):
    """DDPM / ADM eps-prediction: ``D = x - sigma * eps(x_vp, t)``."""

    parameterization = "vp-eps"

    def forward(self, x, sigma):
        s, _, eps = self.native(x, sigma)
        return x - s * eps


class VPX0Denoiser(_VPDenoiser):
    """x0-prediction with VP inputs: ``D = x0(x_vp, t)``."""

    parameterization = "vp-x0"

    def forward(self, x, sigma):
        return self.native(x, sigma)[2]


class VPVDenoiser(_VPDenoiser):
    """v-prediction (Salimans & Ho 2022): ``v = alpha eps - s x0`` so ``x0 = alpha x_vp - s v``."""

    parameterization = "vp-v"

    def forward(self, x, sigma):
        s, alpha, v = self.native(x, sigma)
        s_vp = s * alpha
        return alpha * (alpha * x) - s_vp * v


class FlowVelocityDenoiser(Denoiser):
    """Rectified-flow velocity ``v = eps - x0`` at ``x_t = (1-t) x0 + t eps``.

    With ``sigma = t / (1 - t)``: ``x_t = x / (1 + sigma)`` and ``D = x_t - t v``.
    """

    parameterization = "flow-velocity"

    def forward(self, x, sigma):
        s = _per_sample(sigma, x)
        t = s / (1 + s)
        x_t = x / (1 + s)
        return x_t - t * self.net(x_t, t.reshape(-1))


ADAPTERS: dict[str, type[Denoiser]] = {
    cls.parameterization: cls
    for cls in (EDMDenoiser, VEScoreDenoiser, VPEpsDenoiser, VPX0Denoiser, VPVDenoiser, FlowVelocityDenoiser)
}


def make_denoiser(parameterization: str, net: Callable, **options) -> Denoiser:
    """Wrap ``net`` in the adapter for ``parameterization`` (one of ``PARAMETERIZATIONS``)."""
    if parameterization not in ADAPTERS:
        raise ConfigError(f"unknown parameterization {parameterization!r}; choose one of {sorted(ADAPTERS)}")
    return ADAPTERS[parameterization](net, **options)


class DeepinvDenoiser(nn.Module):
    """The other direction: an invsolve prior as a deepinv denoiser ``model(x, sigma)``.

    deepinv's samplers (``DPS``, ``DiffPIR``, ``PosteriorDiffusion`` with ``MinusOneOneDenoiserWrapper``)
    call their denoiser on images in the physical range with ``sigma`` in the same units; an invsolve
    prior works in its model space ``x_model = scale x + offset`` (the card's ``UnitMap``), where the
    noise level is ``scale * sigma``. So

        model(x, sigma) = to_physical(D(to_model(x), scale * sigma)).

    Extra keyword arguments deepinv passes through (e.g. ``input_in_minus_one_one``) are ignored.
    Used by ``benchmarks/speed/deepinv_pairs.py``, which checks the conversion numerically.
    """

    def __init__(self, prior):
        super().__init__()
        self.prior = prior

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, *args, **kwargs) -> torch.Tensor:
        scale = self.prior.card.scale
        sigma_model = _per_sample(sigma, x).reshape(-1) * scale
        return self.prior.to_physical(self.prior(self.prior.to_model(x), sigma_model))
