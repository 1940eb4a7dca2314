"""DDS: Decomposed Diffusion Sampler.

Paper: H. Chung, S. Lee, J. C. Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale
Inverse Problems", ICLR 2024.
Official code: https://github.com/HJ-harry/DDS (``solver_2d.py``, ``solver_3d.py``, ``main.py``).

Update rule (invsolve's VE coordinates; the official code is VP, see docs/3d.md):

    x0_hat  = D(x_i, sigma_i)                                 (no gradient through the network)
    eps_hat = (x_i - x0_hat) / sigma_i
    x0'     = CG_K( M^T M + gamma I [+ rho D_z^T D_z],  M^T y + gamma x0_hat [+ rho D_z^T (w - u)] ),
              started at x0_hat                              (K = cg_steps)
    volumes with tv_z > 0:  w <- soft(D_z x0' + u, tv_z / rho);  u <- u + D_z x0' - w   (w, u kept
              across all steps: one ADMM-TV-along-z iteration per step, as solver_3d.py)
    x_{i+1} = x0' + sigma_{i+1} (eta z + sqrt(1 - eta^2) eps_hat)        (final step: x0')

The grid is DDIM's uniform skip of the 1000-step linear-beta DDPM schedule (the official
``times``); NFE = ``steps``. Differences from the official code: ``gamma`` here is the weight of
the proximal term ``gamma/2 ||x - x0_hat||^2``, i.e. ``1/gamma`` of the official ``--gamma``
(official 2D with sigma_y > 0 solves ``(I + gamma_o A^T A) x = x0_hat + gamma_o A^T y``; with
gamma_o = 1 the two coincide); ``gamma=None`` follows the official switch (0 for noise-free
problems and for 3D, 1 otherwise). CG is ``operators.linalg.cg`` (per sample, real inner
products also for complex data, where the official MRI path is broken, see the reference notes);
``rho``/``tv_z`` act on invsolve's operators in model space, whose scale differs from the
official torch-Radon (presets are re-tuned, official values in ``OFFICIAL``). D_z is the
circular forward difference along the slice axis of the prior (``toolkit.tv_dims``).
"""

from __future__ import annotations

import dataclasses

import torch

from operators.errors import ConfigError
from operators.linalg import TVState

from .base import register
from .toolkit import admm_tv_data_step, eta_ddim_step, noise_estimate, randn, report, sigma_grid, step_noise, tv_dims


@register("dds")
@dataclasses.dataclass(frozen=True)
class DDS:
    """Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024); 2D images and 3D volumes.

    :param steps: DDIM steps = NFE (official ``--T_sampling`` 50).
    :param eta: eta-DDIM noise fraction (official 0.85).
    :param cg_steps: CG iterations of data consistency per step (official ``--CG_iter`` 5).
    :param gamma: proximal weight towards ``x0_hat`` in the CG system (None: official switch).
    :param tv_z: TV-along-z weight lambda of the ADMM step on volumes (0: no TV; official 0.04
        for 8-view CT in its units).
    :param rho: ADMM penalty (official 10).
    :param schedule: noise grid (``"uniform"``: the official DDIM skip).
    :param clip: clamp ``x0'`` to the prior's physical range (official: no clipping).
    """

    steps: int = 50
    eta: float = 0.85
    cg_steps: int = 5
    gamma: float | None = None
    tv_z: float = 0.0
    rho: float = 10.0
    schedule: str = "uniform"
    clip: bool = False

    OFFICIAL = dict(steps=50, eta=0.85, cg_steps=5, rho=10.0, tv_z=0.04)  # solver_3d.py, SV-CT 8 views
    PRESETS = {
        # invsolve's 8-view parallel-beam CT (operators "ct", 64^2 slices, ct-phantom64, model space [-1, 1]):
        # eta, cg_steps, rho as official; tv_z the best of 0.1 / 0.5 / 2 on a training-seed volume
        # (benchmarks/volume/run.py --tune: 32.8 / 33.6 / 32.4 dB axial)
        "ct-sparse8": dict(steps=30, eta=0.85, cg_steps=5, rho=10.0, tv_z=0.5),
        # 4x Cartesian CS-MRI (official eval_mri.sh: 4x uniform1d, 50 steps, eta 0.85, CG 5; 2D, no TV)
        "mri-cs4": dict(steps=50, eta=0.85, cg_steps=5, tv_z=0.0),
        # invsolve, 2D phantom tasks of benchmarks/phantom/run.py (ct-phantom64, no TV): the best of
        # CG 2 / 5 / 10 at eta 0.85 (deblur: equal to 0.01 dB, the cheapest kept) and, inpainting,
        # whose CG system is diagonal, eta 0.5 / 1 at CG 2; training phantoms, benchmarks/phantom/tune_new.md
        "deblur": dict(steps=50, eta=0.85, cg_steps=2, tv_z=0.0),
        "inpainting": dict(steps=50, eta=0.5, cg_steps=2, tv_z=0.0),
    }

    def __post_init__(self):
        if self.steps < 1 or self.cg_steps < 0:
            raise ConfigError(f"dds needs steps >= 1 and cg_steps >= 0, got steps={self.steps}, cg_steps={self.cg_steps}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"dds eta must be in [0, 1], got {self.eta}")
        if self.tv_z < 0 or self.rho <= 0:
            raise ConfigError(f"dds needs tv_z >= 0 and rho > 0, got tv_z={self.tv_z}, rho={self.rho}")

    def run(self, prior, problem, x_shape, generator, callback=None):
        problem.require_linear("dds (CG data consistency)")
        sigmas = sigma_grid(self.schedule, self.steps, prior).tolist()
        x = sigmas[0] * randn(x_shape, generator)
        dims = tv_dims(prior, x) if self.tv_z > 0 else ()
        gamma = self.gamma if self.gamma is not None else (1.0 if problem.sigma_y > 0 and x.ndim != 5 else 0.0)
        clip = None
        if self.clip and prior.card.physical_range is not None:
            lo, hi = sorted(float(problem.to_model(torch.tensor(v))) for v in prior.card.physical_range)
            clip = (lo, hi)
        state = TVState()
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            with torch.no_grad():
                denoised = prior(x, sigma)
                eps_hat = noise_estimate(x, denoised, sigma)
                x0 = admm_tv_data_step(problem, denoised, state, dims, self.tv_z, self.rho, self.cg_steps,
                                       gamma=gamma, anchor=denoised) if self.cg_steps else denoised
                if clip is not None:
                    x0 = x0.clamp(*clip)
                x = eta_ddim_step(x0, eps_hat, sigma_next, self.eta, step_noise(x, generator, sigma_next))
            report(callback, i, len(sigmas) - 1, sigma, x, denoised, x0_hat=x0)
        return x
