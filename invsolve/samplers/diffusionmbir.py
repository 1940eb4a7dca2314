"""DiffusionMBIR: 2D diffusion prior + model-based TV-along-z coupling for 3D reconstruction.

Paper: H. Chung, D. Ryu, M. T. McCann, M. L. Klasky, J. C. Ye, "Solving 3D Inverse Problems
using Pre-trained 2D Diffusion Models", CVPR 2023.
Official code: https://github.com/HJ-harry/DiffusionMBIR
(``controllable_generation_TV.py::get_pc_radon_ADMM_TV_vol`` and ``..._mri``).

Update rule (VE predictor-corrector; invsolve's coordinates are the official VE ones):

    x ~ N(0, sigma_max^2 I) for the whole volume;  w = u = 0, kept across all steps
    for each step i (sigma_i -> sigma_{i+1} on the geometric VE grid):
        predictor  x <- x + (s_i^2 - s_{i+1}^2) score(x, s_i) + sqrt(s_i^2 - s_{i+1}^2) z
        corrector  (corrector_steps times, at s_{i+1} > 0) Langevin with eps = 2 (snr ||z|| / ||score||)^2
        ADMM-TV-z on the noisy x:  x <- CG_K(M^T M + rho D_z^T D_z, M^T y + rho D_z^T (w - u)), from x
                                   w <- soft(D_z x + u, lam / rho);  u <- u + D_z x - w
    optional final consistency (official, CT only):  x <- x + M^T (y - forward(x)) / (M^T M 1)

``score(x, s) = (D(x, s) - x) / s^2``, so any diffusion or flow prior works through D. The slices
are denoised in chunks by the prior itself (``SliceWisePrior``); D_z is the circular forward
difference along its slice axis (``toolkit.tv_dims``). NFE = steps + corrector_steps *
(steps - 1). Differences from the official code: the grid ends at the prior's sigma_min and a
last step to 0 (whose predictor mean is D(x)); the Langevin step size uses each volume's norms
(official: mean over the slices of a chunk); ``rho``/``lam`` act on invsolve's operators in
model space (presets re-tuned; official values in ``OFFICIAL``); 2000 steps (4000 NFE) in the
official code, far fewer here.
"""

from __future__ import annotations

import dataclasses

import torch

from operators.errors import ConfigError
from operators.linalg import TVState

from .base import register
from .toolkit import (admm_tv_data_step, langevin_step, randn, report, reverse_diffusion_step, sigma_grid, step_noise,
                      tv_dims)


@register("diffusionmbir")
@dataclasses.dataclass(frozen=True)
class DiffusionMBIR:
    """DiffusionMBIR (Chung et al., CVPR 2023): PC sampling + one ADMM-TV-z iteration per step.

    :param steps: predictor steps (official 2000).
    :param corrector_steps: Langevin corrector steps per predictor step (official 1).
    :param snr: Langevin signal-to-noise ratio (official 0.16).
    :param lam: TV-along-z weight (official CT 0.04, MRI 0.005, in its units).
    :param rho: ADMM penalty (official CT 10, MRI 0.01).
    :param cg_steps: CG iterations per ADMM step (official 1).
    :param final_dc: the official CT-only final step ``x + M^T r / (M^T M 1)``.
    :param schedule: noise grid (``"geometric"``: score_sde's VE grid).
    :param persist_duals: keep ``w``, ``u`` across diffusion steps (official). With few steps the
        state changes a lot between steps and the kept duals carry earlier noise into the volume;
        ``False`` restarts them (zero) at every step.
    """

    steps: int = 2000
    corrector_steps: int = 1
    snr: float = 0.16
    lam: float = 0.04
    rho: float = 10.0
    cg_steps: int = 1
    final_dc: bool = False
    schedule: str = "geometric"
    persist_duals: bool = True

    OFFICIAL = {"ct": dict(steps=2000, corrector_steps=1, snr=0.16, lam=0.04, rho=10.0, cg_steps=1, final_dc=True),
                "mri": dict(steps=2000, corrector_steps=1, snr=0.16, lam=0.005, rho=0.01, cg_steps=1)}
    PRESETS = {
        # invsolve's 8-view CT on ct-phantom64 volumes at few steps (benchmarks/volume/run.py --tune, training-seed
        # volume): with the official persistent duals the state diverges at 25 steps (11-17 dB for lam 0.1-2);
        # restarting them each step (which leaves only the rho D_z^T D_z term of the CG system as coupling)
        # and 3 CG steps gave 32.9 dB axial on 8 slices
        "ct-sparse8": dict(steps=50, corrector_steps=1, snr=0.16, lam=0.5, rho=10.0, cg_steps=3, persist_duals=False),
        # CS-MRI: official settings (…BRATS_MRI_3d_total.py) at fewer steps
        "mri-cs": dict(steps=200, corrector_steps=1, snr=0.16, lam=0.005, rho=0.01, cg_steps=1),
    }

    def __post_init__(self):
        if self.steps < 1 or self.corrector_steps < 0 or self.cg_steps < 1:
            raise ConfigError(f"diffusionmbir needs steps >= 1, corrector_steps >= 0, cg_steps >= 1; got "
                              f"{self.steps}, {self.corrector_steps}, {self.cg_steps}")
        if self.lam < 0 or self.rho <= 0 or self.snr <= 0:
            raise ConfigError(f"diffusionmbir needs lam >= 0, rho > 0, snr > 0; got {self.lam}, {self.rho}, {self.snr}")

    @classmethod
    def for_nfe(cls, nfe: int) -> dict:
        """About ``nfe`` evaluations with one corrector step: steps = (nfe + 1) // 2."""
        return {"steps": max(1, (int(nfe) + 1) // 2)}

    def run(self, prior, problem, x_shape, generator, callback=None):
        problem.require_linear("diffusionmbir (ADMM-TV data consistency)")
        sigmas = sigma_grid(self.schedule, self.steps, prior).tolist()
        x = sigmas[0] * randn(x_shape, generator)
        dims = tv_dims(prior, x)
        state = TVState()
        with torch.no_grad():
            for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
                denoised = prior(x, sigma)
                x, _ = reverse_diffusion_step(x, denoised, sigma, sigma_next, step_noise(x, generator, sigma_next))
                if sigma_next > 0:
                    for _ in range(self.corrector_steps):
                        x, _ = langevin_step(x, prior(x, sigma_next), sigma_next, self.snr, randn(x.shape, generator))
                if not self.persist_duals:
                    state = TVState()
                x = admm_tv_data_step(problem, x, state, dims, self.lam, self.rho, self.cg_steps)
                report(callback, i, len(sigmas) - 1, sigma, x, denoised)
            if self.final_dc:
                ones = torch.ones_like(x[:1])
                denom = problem.adjoint(problem.linear_forward(ones))
                denom = denom.real if denom.is_complex() else denom
                step = problem.adjoint(problem.residual(x))
                step = step.real if step.is_complex() and not x.is_complex() else step
                x = x + torch.where(denom.abs() > 1e-8, step / torch.where(denom.abs() > 1e-8, denom, 1.0), 0.0)
        return x
