"""DDRM: Denoising Diffusion Restoration Models.

Paper: B. Kawar, M. Elad, S. Ermon, J. Song, "Denoising Diffusion Restoration Models", NeurIPS 2022.
Official code: https://github.com/bahjat-kawar/ddrm (commit 32b6b3c: ``functions/denoising.py::
efficient_generalized_steps``, ``functions/svd_replacement.py``, ``runners/diffusion.py``, README).

Update rule, per spectral coordinate of ``M = U diag(s) V^T`` (``forward(x) = M x + c``), with
``xb = V^T x``, ``yb = diag(s)^+ U^T (y - c)`` (noise ``sigma_y / s_i`` in ``yb_i``), in invsolve's VE
coordinates (the official code already works in ``x_vp / sqrt(abar)``, ``sigma = sqrt(1 - abar) /
sqrt(abar)``; docs/samplers.md):

    init at sigma_T:  xb_i = yb_i + sqrt(sigma_T^2 - sigma_y^2 / s_i^2) z    if s_i sigma_T > sigma_y
                      xb_i = sigma_T z                                        otherwise
    x0_hat = D(x, sigma),  eps_hat = V^T (x - x0_hat) / sigma,  step sigma -> sigma':
      s_i = 0 (unseen; also s_i sigma' = sigma_y):
                      xb'_i = x0_hat_i + sqrt(1 - eta^2) sigma' eps_hat_i + eta sigma' z
      0 < s_i sigma' < sigma_y (less noisy than y):
                      xb'_i = x0_hat_i + sqrt(1 - eta^2) sigma' (yb_i - x0_hat_i) / (sigma_y / s_i) + eta sigma' z
      s_i sigma' > sigma_y (noisier than y):
                      xb'_i = eta_b yb_i + (1 - eta_b) x0_hat_i + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z
    x' = V xb' (+ the unseen rest of the model space, stepped as s_i = 0)

At ``sigma' = 0`` every case gives ``x0_hat``: the output is the last denoised estimate (official).

Where invsolve differs: the SVD comes from ``toolkit.LinearPart`` (deepinv decomposable physics:
inpainting, Cartesian single-coil MRI; any small operator by a dense float64 SVD; average-pool
SR analytically) instead of the official per-task ``H_funcs``; operators without an exact SVD raise
``PhysicsError`` (use 'ddnm' or 'pigdm'). The official init divides the VE state by ``sigma_T``
instead of ``sqrt(1 + sigma_T^2)`` on the way to VP (relative 2e-5 at sigma_T = 157); invsolve
stays in VE. ``sigma_y`` is the noise of ``y`` in its physical units (the official doubles
``sigma_0`` for [-1, 1] images; invsolve's model-space ``M`` carries the data map).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from operators.errors import ConfigError, PhysicsError

from .base import register
from .toolkit import DENSE_MAX, LinearPart, randn, report, sigma_grid, step_noise

SUPPORTED = ("deepinv decomposable physics with an orthonormal V (inpainting masks, Cartesian single-coil MRI), "
             "average-pool super-resolution, operators that act on each axis separately (separable blur, bicubic "
             "super-resolution) and circular convolutions (circular blur, BlurFFT), all at any size, and any "
             "linear operator whose per-sample dimension is at most dense_max (a dense SVD)")


@register("ddrm")
@dataclasses.dataclass(frozen=True)
class DDRM:
    """DDRM (Kawar et al., NeurIPS 2022), linear physics with an exact SVD only (``TypeError`` for
    nonlinear physics, ``PhysicsError`` for operators without an exact SVD).

    :param steps: number of noise levels = NFE (official README examples: ``--timesteps 20``;
        argparse default 1000).
    :param eta: ``eta`` of the unseen and less-noisy-than-y coordinates (official ``--eta 0.85``,
        used for both ``etaA`` and ``etaC``).
    :param eta_b: ``eta_b`` of the noisier-than-y coordinates (official ``--etaB 1``).
    :param schedule: ``"uniform"`` (official: timesteps ``range(0, 1000, 1000 // steps)`` of the
        linear-beta DDPM schedule), ``"ddpm"`` or ``"karras"``.
    :param dense_max: largest per-sample model dimension whose operator is assembled and factored
        densely (``d`` forward calls and an ``O(d^3)`` float64 SVD); larger operators need a
        decomposable, average-pool, separable or circular structure (``LinearPart``, ``spectral.py``).
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 20
    eta: float = 0.85
    eta_b: float = 1.0
    schedule: str = "uniform"
    dense_max: int = DENSE_MAX
    sigma_max: float | None = None

    PRESETS = {
        # official README: every example runs --timesteps 20 --eta 0.85 --etaB 1 (sr4, deblur_uni,
        # inp_lolcat, ... with sigma_0 0.05 or 0)
        "inpainting": dict(steps=20, eta=0.85, eta_b=1.0),
        "sr4": dict(steps=20, eta=0.85, eta_b=1.0),
        "deblur": dict(steps=20, eta=0.85, eta_b=1.0),
        # invsolve (no official CT setting): 8-view CT on ct-phantom64 at 64^2, exact SVD of the
        # (728 x 4096) operator by the dense backend (dense_max 4096); steps / eta the best of a small
        # grid on training phantoms, benchmarks/phantom/tune_new.md (steps 20 / 50 / 100 at eta 0.85,
        # eta 0.5 / 1 at 20 steps, eta 1 at 100 steps)
        "ct-sparse8": dict(steps=100, eta=1.0, eta_b=1.0, dense_max=4096),
    }

    def __post_init__(self):
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must lie in [0, 1], got {self.eta}")
        if not 0.0 <= self.eta_b <= 1.0:
            raise ConfigError(f"eta_b must lie in [0, 1], got {self.eta_b}")
        if self.schedule not in ("uniform", "ddpm", "karras"):
            raise ConfigError(f"schedule must be 'uniform', 'ddpm' or 'karras', got {self.schedule!r}")

    def run(self, prior, problem, x_shape, generator, callback=None):
        lin = LinearPart(problem, x_shape, dense_max=self.dense_max, who="DDRM")
        reason = lin.spectral_unavailable()
        if reason is not None:
            raise PhysicsError(f"DDRM works in the operator's SVD basis and needs an exact SVD; {reason}. DDRM "
                               f"supports {SUPPORTED}. For this operator use 'ddnm' (range-null-space "
                               "projection with conjugate gradients) or 'pigdm'.")
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        sigma_y = problem.sigma_y
        like = torch.zeros(x_shape, dtype=problem.dtype)
        with torch.no_grad():
            yb = lin.y_spectral(x_shape[0], like)
            s = lin.singular_values(yb).abs()
            seen = s > 0
            noise_y = torch.where(seen, sigma_y / torch.where(seen, s, torch.ones_like(s)), torch.zeros_like(s))

            z = randn(x_shape, generator)
            sigma = sigmas[0]
            zb = lin.to_spectral(z)
            start = torch.where(seen & (s * sigma > sigma_y),
                                yb + (sigma ** 2 - noise_y ** 2).clamp_min(0).sqrt() * zb, sigma * zb)
            x = lin.from_spectral(start, z) + sigma * lin.null_part(z)

        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            with torch.no_grad():
                denoised = prior(x, sigma)
                if sigma_next > 0:
                    x = self._step(lin, x, denoised, yb, s, noise_y, sigma, sigma_next, sigma_y,
                                   step_noise(x, generator, sigma_next))
                else:  # every case of the rule gives x0_hat at sigma' = 0
                    x = denoised
            report(callback, i, len(sigmas) - 1, sigma, x, denoised)
        return x.detach()

    def _step(self, lin, x, denoised, yb, s, noise_y, sigma, sigma_next, sigma_y, z):
        keep = math.sqrt(1 - self.eta ** 2) * sigma_next
        fresh = self.eta * sigma_next
        x0b = lin.to_spectral(denoised)
        epsb = (lin.to_spectral(x) - x0b) / sigma
        zb = lin.to_spectral(z)
        unseen = x0b + keep * epsb + fresh * zb
        after = (s > 0) & (s * sigma_next < sigma_y)
        before = (s > 0) & (s * sigma_next > sigma_y)
        safe = torch.where(after, noise_y, torch.ones_like(noise_y))
        less_noisy = x0b + keep * (yb - x0b) / safe + fresh * zb
        noisier = (self.eta_b * yb + (1 - self.eta_b) * x0b
                   + (sigma_next ** 2 - self.eta_b ** 2 * noise_y ** 2).clamp_min(0).sqrt() * zb)
        xb = torch.where(before, noisier, torch.where(after, less_noisy, unseen))
        rest = lin.null_part(denoised + keep * (x - denoised) / sigma + fresh * z)
        return lin.from_spectral(xb, x) + rest
