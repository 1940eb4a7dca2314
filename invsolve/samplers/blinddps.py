"""BlindDPS: joint posterior sampling of an image and its blur kernel with two diffusion priors.

Paper: H. Chung, J. Kim, S. Kim, J. C. Ye, "Parallel Diffusion Models of Operator and Image for
Blind Inverse Problems", CVPR 2023.
Official code: https://github.com/BlindDPS/blind-dps
(``guided_diffusion/gaussian_diffusion.py::BlindDPS.p_sample_loop``, ``blind_condition_methods.py``).

Update rule (official code, in invsolve's VE coordinates; ``x`` the image state, ``k`` the kernel state,
both on the same step grid, each with its own prior):

    x0_hat = D_x(x_i, sigma_i),  k0_hat = D_k(k_i, s_i)             (both clamped to the data range)
    kappa  = (to_physical(k0_hat))_+ / sum(...)                      (the kernel normalised to sum 1)
    L      = ||y - kappa * x0_hat||_2 + kernel_reg ||kappa||_1       (non-squared norm; '*' = convolution)
    x_{i+1} = ancestral(x_i -> sigma_{i+1}) - w_i grad_{x_i} L
    k_{i+1} = ancestral(k_i -> s_{i+1})     - w_i grad_{k_i} L

The official step is ``sqrt(alpha_bar_t)`` on both VP states (its config's ``scale`` is ignored), which in
VE coordinates is ``w_i = zeta sqrt(1 + sigma_{i+1}^2)`` with ``zeta = 1`` (``vp_scaling`` of a VP weight
``zeta sqrt(alpha_bar_t)``). Where invsolve differs:

- ``zeta_rule="spanned"`` (default, as DPS): the weight is stated per step of the official 1000-step grid
  and each step applies it times the official steps it spans, capped per sample at ``spanned_cap`` of the
  joint Polyak step (``||grad_x||^2 + ||grad_k||^2`` in its denominator), so a preset keeps working when
  the step count changes; ``"per-step"`` is the official rule;
- each posterior sample differentiates its own residual (the official code the batch's), so samples in a
  batch are independent;
- ``kernel_reg``: the official scripts' L1 weight 1.0 on the normalised kernel. A clamped, non-negative
  kernel normalised to sum 1 has L1 norm exactly 1, so this term's gradient vanishes (to rounding) in the
  official code and here alike; it is kept for fidelity, and ``kernel_reg_ord=2`` (an L2 penalty, which does
  act: it favours spread-out kernels) is offered beside it.

The physics is a deepinv ``Blur`` (e.g. ``operators.make("deblur-motion61")``): its ``padding`` is used and
its own kernel ignored (it is never modified). The kernel prior is a 1-channel prior over kernels divided
by their peak, ``[0, 1]`` (``invsolve train --data motion-kernels``; shipped: ``kernel-motion16``). The
posterior's ``extras["kernels"]`` holds each draw's kernel (sum 1), shape (n_samples, B, 1, h, w).
NFE counts image-prior evaluations; the kernel prior is evaluated as often (a far smaller network).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from deepinv.physics import Blur
from deepinv.physics.functional import conv2d

from operators.errors import ConfigError, PhysicsError

from ..kernels import as_blur
from ..priors.loaders import load_prior
from .base import register
from .toolkit import (ancestral_step, check_weight_rule, guidance_weight, model_clip, randn, report, sigma_grid,
                      squared_norms, step_noise)

KERNEL_REG_ORDS = (1, 2)


def blur_padding(problem) -> str:
    """The padding of the problem's blur (a deepinv ``Blur``), or a ``PhysicsError``."""
    physics = problem.physics
    if not isinstance(physics, Blur) or getattr(physics, "filter", None) is None or physics.filter.dim() != 4:
        raise PhysicsError(f"blinddps estimates the kernel of a 2D blur and needs a deepinv Blur "
                           f"(e.g. operators.make('deblur-motion61')); got {type(physics).__name__}")
    return physics.padding


def convolve(x: torch.Tensor, kernels: torch.Tensor, padding: str) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) blurred by its own kernel (N, 1, h, w), as deepinv's ``Blur.A``."""
    return conv2d(x, kernels.to(x.dtype), padding=padding)


@register("blinddps")
@dataclasses.dataclass(frozen=True)
class BlindDPS:
    """BlindDPS (Chung et al., CVPR 2023): image and kernel sampled jointly, two diffusion priors.

    :param steps: noise levels of both chains (official: 1000 DDPM steps).
    :param kernel_prior: name or folder of the kernel prior (``iv.load_prior``).
    :param zeta: the official VP step ``zeta sqrt(alpha_bar_t)`` (official code: zeta = 1), per step of the
        official 1000-step grid under ``zeta_rule="spanned"``; or ``"auto"`` (the joint Polyak step).
    :param zeta_rule: ``"spanned"`` or ``"per-step"`` (the official rule), as in DPS.
    :param spanned_cap: the spanned rule's cap, a fraction of the joint Polyak step.
    :param kernel_reg: weight of the kernel penalty (official scripts: 1.0).
    :param kernel_reg_ord: 1 (official: L1 of the normalised kernel, inert, see the module docstring) or 2.
    :param schedule: ``"ddpm"`` (official) or ``"karras"``.
    :param clip_denoised: clamp both ``x0_hat`` and ``k0_hat`` to their data ranges (official: True).
    """

    steps: int = 1000
    kernel_prior: str = "kernel-motion16"
    zeta: float | str = 1.0
    zeta_rule: str = "spanned"
    spanned_cap: float = 0.5
    kernel_reg: float = 1.0
    kernel_reg_ord: int = 1
    schedule: str = "ddpm"
    clip_denoised: bool = True

    PRESETS = {
        # 16x16 motion kernels on 64x64 phantoms, sigma_y 0.02 (benchmarks/blind): zeta chosen from
        # (0.3, 1, 3, 10) on training-seed phantoms and training kernels at 200 Karras steps; the
        # spanned rule keeps it valid at other step counts
        "blind-deblur16": dict(steps=200, schedule="karras", zeta=3.0),
    }

    def __post_init__(self):
        check_weight_rule("blinddps", "zeta", self.zeta_rule, self.zeta)
        if not 0 < self.spanned_cap <= 1:
            raise ConfigError(f"blinddps: spanned_cap must be in (0, 1], got {self.spanned_cap}")
        if self.kernel_reg < 0 or self.kernel_reg_ord not in KERNEL_REG_ORDS:
            raise ConfigError(f"blinddps: kernel_reg must be >= 0 and kernel_reg_ord one of {KERNEL_REG_ORDS}; "
                              f"got {self.kernel_reg}, {self.kernel_reg_ord}")

    def load_kernel_prior(self, device):
        kprior = load_prior(self.kernel_prior)
        if len(kprior.shape) != 3 or kprior.shape[0] != 1 or hasattr(kprior, "decode"):
            raise ConfigError(f"blinddps: kernel_prior {self.kernel_prior!r} must be a 1-channel 2D pixel prior "
                              f"over kernels; it generates {tuple(kprior.shape)}")
        return kprior.to(device)

    def weight(self, problem, x0, grads, residual, sigma, sigma_next):
        """Per-sample multiplier of the joint step: DPS's ``guidance_weight`` on the joint gradient. The official
        VP step ``zeta sqrt(alpha_bar_t)`` is DPS's VP weight times ``1 / sqrt(1 + sigma_i^2)`` (``unit``)."""
        flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads], 1)
        w = guidance_weight(problem, x0, flat, self.zeta, self.zeta_rule, sigma, sigma_next,
                            unit=1 / math.sqrt(1 + sigma ** 2), cap=self.spanned_cap, residual=residual)
        return torch.as_tensor(w, dtype=x0.dtype).reshape(-1).expand(x0.shape[0])

    def run(self, prior, problem, x_shape, generator, callback=None):
        padding = blur_padding(problem)
        if len(x_shape) != 4:
            raise PhysicsError(f"blinddps works on 2D images (N, C, H, W); the prior generates {tuple(x_shape[1:])}")
        device = problem.y.device
        kprior = self.load_kernel_prior(device)
        sigmas = sigma_grid(self.schedule, self.steps, prior).tolist()
        ksigmas = sigma_grid(self.schedule, self.steps, kprior).tolist()
        clip = model_clip(prior, problem) if self.clip_denoised else None
        k_lo, k_hi = sorted(kprior.to_model(torch.tensor(v)).item() for v in kprior.card.physical_range or (0.0, 1.0))
        kclip = (lambda k: k.clamp(k_lo, k_hi)) if self.clip_denoised else None
        n = x_shape[0]
        y = problem.tiled_y(n)
        x = sigmas[0] * randn(x_shape, generator)
        k = ksigmas[0] * randn((n, *kprior.shape), generator, dtype=x.dtype, device=x.device)

        def kernel_of(k0):
            return as_blur(kprior.to_physical(k0))

        for i in range(len(sigmas) - 1):
            (sigma, sigma_next), (ks, ks_next) = sigmas[i:i + 2], ksigmas[i:i + 2]
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                k = k.detach().requires_grad_(True)
                x0 = prior(x, sigma)
                k0 = kprior(k, ks)
                x0, k0 = (x0 if clip is None else clip(x0)), (k0 if kclip is None else kclip(k0))
                kernel = kernel_of(k0)
                residual = y - convolve(problem.to_physical(x0), kernel, padding)
                penalty = kernel.abs().sum(dim=(1, 2, 3)) if self.kernel_reg_ord == 1 else squared_norms(kernel).sqrt()
                loss = (squared_norms(residual).sqrt() + self.kernel_reg * penalty).sum()
                gx, gk = torch.autograd.grad(loss, (x, k))
            x0, k0, residual = x0.detach(), k0.detach(), residual.detach()
            w = self.weight(problem, x0, (gx, gk), residual, sigma, sigma_next)
            x = ancestral_step(x.detach(), x0, sigma, sigma_next, step_noise(x0, generator, sigma_next)) \
                - w.reshape(-1, *[1] * (x0.dim() - 1)) * gx
            k = ancestral_step(k.detach(), k0, ks, ks_next, step_noise(k0, generator, ks_next)) \
                - w.reshape(-1, *[1] * (k0.dim() - 1)).to(gk.dtype) * gk
            report(callback, i, len(sigmas) - 1, sigma, x, x0)
        with torch.no_grad():
            kernels = kernel_of(kclip(k) if kclip is not None else k)
        return x.detach(), {"kernels": kernels.detach()}
