"""FlowDPS: Flow-Driven Posterior Sampling.

Paper: J. Kim, B. S. Kim, J. C. Ye, "FlowDPS: Flow-Driven Posterior Sampling for Inverse
Problems", ICCV 2025 (arXiv:2503.08136).
Official code: https://github.com/FlowDPS-Inverse/FlowDPS (``sd3_sampler.py::SD3FlowDPS``,
``solve.py``; commit 8361843).

Update rule, in flow time ``t`` with ``z_t = (1 - t) x0 + t eps`` (the VE state is
``x = z / (1 - t)`` at ``sigma = t / (1 - t)``), on SD3's shifted time grid (``shifted_times``):

    x0_hat  = D(z_i / (1 - t_i), t_i / (1 - t_i));   eps_hat = (z_i - (1 - t_i) x0_hat) / t_i
    x0y     = x0_hat, then dc_iters steps  x0y <- x0y - s grad ||B (y - A(x0y))||
              (B = I "residual", A^T "adjoint", A^+ "pinv"; non-squared norms)
    x0y     = (1 - t_i) x0_hat + t_i x0y
    z_{i+1} = (1 - t_{i+1}) x0y + t_{i+1} (sqrt(t_{i+1}) eps_hat + sqrt(1 - t_{i+1}) xi)

Where invsolve differs (docs/samplers.md, FlowDPS): the grid starts at the prior's largest level,
not t = 1; each posterior sample gets the gradient of its own norm; the default loss is the plain
residual (defined for every physics; the official code picks ``A^T`` or ``A^+`` by task, the
presets ``deblur`` and ``sr12``); norms are in the physical units of ``y``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from deepinv.physics import LinearPhysics

from operators.errors import ConfigError, PhysicsError

from .base import register
from .toolkit import denoise, image_physics, model_clip, randn, report, shifted_times

LOSSES = ("residual", "adjoint", "pinv")


def consistency_loss(problem, x0: torch.Tensor, loss: str) -> torch.Tensor:
    """Sum over the batch of each sample's non-squared ``||B (y - A(x0))||``.

    ``B`` is the identity (``"residual"``), the adjoint ``A^T`` (``"adjoint"``, official deblurring
    loss) or the pseudo-inverse ``A^+`` (``"pinv"``, official super-resolution loss) of the
    image physics.
    """
    r = problem.residual(x0)
    if loss in ("adjoint", "pinv"):
        physics = image_physics(problem)
        if not isinstance(physics, LinearPhysics):
            raise PhysicsError(f"FlowDPS loss={loss!r} needs linear physics ({type(physics).__name__} is not a "
                            "deepinv LinearPhysics); use loss='residual'")
        r = physics.A_adjoint(r) if loss == "adjoint" else physics.A_dagger(r)
    elif loss != "residual":
        raise ConfigError(f"loss must be one of {LOSSES}, got {loss!r}")
    r = r.reshape(x0.shape[0], -1)
    if r.is_complex():
        r = torch.view_as_real(r).reshape(r.shape[0], -1)
    return r.pow(2).sum(1).sqrt().sum()


def data_consistency(problem, x0: torch.Tensor, step: float, iters: int, loss: str, clip=None) -> torch.Tensor:
    """``iters`` gradient steps of size ``step`` on ``consistency_loss``, per sample (official
    ``SD3FlowDPS.data_consistency``); no denoiser evaluation."""
    x = x0.detach()
    for _ in range(iters):
        with torch.enable_grad():
            x = x.requires_grad_(True)
            (grad,) = torch.autograd.grad(consistency_loss(problem, x, loss), x)
        x = (x - step * grad).detach()
        if clip is not None:
            x = clip(x)
    return x


@register("flowdps")
@dataclasses.dataclass(frozen=True)
class FlowDPS:
    """FlowDPS (J. Kim, B. S. Kim, J. C. Ye, ICCV 2025).

    :param steps: number of flow times = NFE (official: 28, ``solve.py --NFE``).
    :param step_size: data-consistency step ``s`` (official: 15, ``solve.py --step_size``; the
        class default of the official ``SD3FlowDPS.sample`` is 30).
    :param dc_iters: gradient steps per time (official: 3, hard-coded).
    :param loss: ``"residual"`` ``||y - A(x)||`` (default: defined for every physics, nonlinear and
        latent included), ``"adjoint"`` ``||A^T(y - A x)||`` (official for deblurring) or
        ``"pinv"`` ``||A^+(y - A x)||`` (official for super-resolution); all non-squared.
    :param shift: time shift of the SD3 schedule (official: 4.0).
    :param clip_denoised: clamp the clean estimates to the prior's data range (official: no clamp;
        the official estimate is a latent).
    :param sigma_max: start level (default: the prior's maximum), as a VE sigma.
    """

    steps: int = 28
    step_size: float = 15.0
    dc_iters: int = 3
    loss: str = "residual"
    shift: float = 4.0
    clip_denoised: bool = False
    sigma_max: float | None = None

    PRESETS = {
        # official solve.py / sd3_sampler.py: 28 NFE, step 15, 3 DC iterations, shift 4;
        # SR x12 (avg-pool or bicubic) uses the pseudo-inverse loss, deblurring the adjoint loss
        "sr12": dict(steps=28, step_size=15.0, dc_iters=3, loss="pinv", shift=4.0),
        "deblur": dict(steps=28, step_size=15.0, dc_iters=3, loss="adjoint", shift=4.0),
        # invsolve's 8-view CT on ct-phantom64 (no official CT setting): chosen on training-distribution
        # phantoms; CT's large gain makes the official 15 too strong (docs/samplers.md)
        "ct-sparse8": dict(steps=200, step_size=3.0, loss="residual"),
    }

    def times(self, prior) -> torch.Tensor:
        """The flow-time grid ``t_0 > ... > t_{steps-1} > 0 = t_steps`` within the prior's range."""
        sigma_hi = min(self.sigma_max or prior.sigma_max, prior.sigma_max)
        sigma_lo = prior.sigma_min
        return shifted_times(self.steps, self.shift, sigma_hi / (1 + sigma_hi), sigma_lo / (1 + sigma_lo))

    def run(self, prior, problem, x_shape, generator, callback=None):
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.dc_iters < 0:
            raise ConfigError(f"dc_iters must be >= 0, got {self.dc_iters}")
        times = self.times(prior).tolist()
        clip = model_clip(prior, problem) if self.clip_denoised else None
        z = times[0] * randn(x_shape, generator)  # (1 - t) x0 + t eps with the x0 term dropped, as x = sigma_max eps
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            sigma = t / (1 - t)
            x = z / (1 - t)
            with torch.no_grad():
                x0_hat = denoise(prior, x, sigma, clip)
            eps_hat = (z - (1 - t) * x0_hat) / t
            x0y = data_consistency(problem, x0_hat, self.step_size, self.dc_iters, self.loss, clip)
            x0y = (1 - t) * x0_hat + t * x0y
            if t_next > 0:
                noise = math.sqrt(t_next) * eps_hat + math.sqrt(1 - t_next) * randn(x_shape, generator)
                z = (1 - t_next) * x0y + t_next * noise
            else:
                z = x0y
            report(callback, i, len(times) - 1, sigma, z / (1 - t_next), x0_hat)
        return z.detach()
