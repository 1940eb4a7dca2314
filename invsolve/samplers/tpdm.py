"""TPDM: Two-perspective (perpendicular) diffusion models for 3D reconstruction.

Paper: S. Lee, H. Chung, M. Park, J. Park, W.-S. Ryu, J. C. Ye, "Improving 3D Imaging with
Pre-Trained Perpendicular 2D Diffusion Models", ICCV 2023.
Official code: https://github.com/hyn2028/tpdm (``controllable_generation.py``, ``tpdm_utils.py``,
``run_tpdm_*.py``).

Update rule (VE predictor-corrector, as the official code):

    for step i (sigma_i -> sigma_{i+1}, geometric VE grid):
        primary turn:  i % K != K - 1 (integer K), or u_i > 1/K with u_i ~ U(0, 1) (fractional K)
        primary turn:   x  <- Langevin(x; D_primary) - w grad_x ||y - A(D_primary(x, s_i))||      (corrector)
                        xm <- mean of ReverseDiffusion(x; D_primary) - w grad_x ||y - A(D_primary(x, s_i))||
        auxiliary turn: x  <- Langevin(x; D_aux);  xm <- mean of ReverseDiffusion(x; D_aux)   (no data term)
        x <- xm        (the predictor's noise is discarded, as the official code keeps x_mean)

The primary prior is the sampler's prior; the auxiliary is the same ``SliceWisePrior`` along
``aux_axis`` (one prior along two axes) or the 2D prior given for that axis
(``SliceWisePrior(..., others={"axial": prior_b})``: two priors). With a prior that has no slice
axis (a genuine 3D or a 2D prior) both turns use it and K only toggles the data term.
NFE = 2 * steps. Differences from the official code: the fractional-K turn draws come from their
own generator (``turn_seed``), so they do not consume the caller's noise; the DPS norm is each
volume's residual norm (official: the norm over a mini-batch of 6 slices, which is why its
weights depend on the batch size); the grid ends with a step to 0; ``w`` is re-tuned for
invsolve's operators (official values in ``OFFICIAL``).
"""

from __future__ import annotations

import dataclasses

import torch

from operators.errors import ConfigError

from .base import register
from .toolkit import guided_denoise, langevin_step, randn, report, reverse_diffusion_step, sigma_grid


@register("tpdm")
@dataclasses.dataclass(frozen=True)
class TPDM:
    """TPDM (Lee, Chung et al., ICCV 2023): two perpendicular 2D priors alternated with ratio K.

    :param steps: predictor-corrector steps (official 2000).
    :param K: ratio: K - 1 primary steps per auxiliary step for integer K (official 2 for MRI);
        a fractional K gives an auxiliary turn with probability 1/K (official 2.7 for sparse-view CT).
    :param weight: DPS weight ``w`` on the non-squared residual norm (official 0.025 CT 36 views,
        0.002-0.01 CS-MRI, in its units).
    :param snr: Langevin signal-to-noise ratio (official 0.16).
    :param aux_axis: axis of the auxiliary prior (default: coronal if the primary is axial, else axial).
    :param turn_seed: seed of the fractional-K turn draws.
    :param schedule: noise grid (``"geometric"``: score_sde's VE grid).
    """

    steps: int = 2000
    K: float = 2
    weight: float = 0.025
    snr: float = 0.16
    aux_axis: str | int | None = None
    turn_seed: int = 0
    schedule: str = "geometric"

    OFFICIAL = {"ct": dict(K=2.7, weight=0.025, snr=0.16, steps=2000), "mri": dict(K=2, weight=0.002, snr=0.16)}
    PRESETS = {
        # invsolve's 8-view CT on ct-phantom64 volumes, one prior along two axes: official K = 2.7;
        # weight the best of 0.1 / 1 / 3 on a 16-slice training-seed volume at 15 steps (20.7 / 28.0 / 27.6 dB axial)
        "ct-sparse8": dict(steps=50, K=2.7, weight=1.0, snr=0.16),
        "mri-cs": dict(steps=200, K=2, weight=0.002, snr=0.16),
    }

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"tpdm needs steps >= 1, got {self.steps}")
        if not self.K > 1:
            raise ConfigError(f"tpdm needs K > 1 (K - 1 primary steps per auxiliary step), got {self.K}")
        if self.weight < 0 or self.snr <= 0:
            raise ConfigError(f"tpdm needs weight >= 0 and snr > 0, got {self.weight}, {self.snr}")

    @classmethod
    def for_nfe(cls, nfe: int) -> dict:
        return {"steps": max(1, int(nfe) // 2)}

    def turns(self) -> list[bool]:
        """``True`` for a primary turn, per step."""
        if float(self.K).is_integer():
            k = int(self.K)
            return [i % k != k - 1 for i in range(self.steps)]
        u = torch.rand(self.steps, generator=torch.Generator().manual_seed(self.turn_seed), dtype=torch.float64)
        return (u > 1 / self.K).tolist()

    def _aux_kwargs(self, prior) -> dict:
        if not getattr(prior, "supports_axis", False):
            return {}
        axis = self.aux_axis
        if axis is None:
            axis = "coronal" if prior.axis == 0 else "axial"
        return {"axis": axis}

    def run(self, prior, problem, x_shape, generator, callback=None):
        sigmas = sigma_grid(self.schedule, self.steps, prior).tolist()
        x = sigmas[0] * randn(x_shape, generator)
        aux = self._aux_kwargs(prior)
        for i, (primary, sigma, sigma_next) in enumerate(zip(self.turns(), sigmas[:-1], sigmas[1:])):
            if primary:  # corrector + DPS, then predictor + DPS (official order)
                denoised, grad = guided_denoise(prior, problem, x, sigma, "l2")
                x, _ = langevin_step(x, denoised, sigma, self.snr, randn(x.shape, generator))
                x = x - self.weight * grad
                denoised, grad = guided_denoise(prior, problem, x, sigma, "l2")
                _, x = reverse_diffusion_step(x, denoised, sigma, sigma_next, torch.zeros_like(x))
                x = x - self.weight * grad
            else:
                with torch.no_grad():
                    denoised = prior(x, sigma, **aux)
                    x, _ = langevin_step(x, denoised, sigma, self.snr, randn(x.shape, generator))
                    denoised = prior(x, sigma, **aux)
                    _, x = reverse_diffusion_step(x, denoised, sigma, sigma_next, torch.zeros_like(x))
            report(callback, i, len(sigmas) - 1, sigma, x, denoised, primary=primary)
        return x.detach()
