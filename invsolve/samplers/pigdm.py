"""ΠGDM: Pseudoinverse-Guided Diffusion Models.

Paper: J. Song, A. Vahdat, M. Mardani, J. Kautz, "Pseudoinverse-Guided Diffusion Models for
Inverse Problems", ICLR 2023 (Algorithm 1; noisy measurements: Section 3.2).
Reference code: https://github.com/NVlabs/RED-diff (commit 66482f2: ``algos/pgdm.py``,
``algos/ddim.py``, ``_configs/algo/pgdm.yaml``, ``sample_test.sh``).

Update rule (VE coordinates, ``forward(x) = M x + c``, ``r_i^2 = sigma_i^2 / (1 + sigma_i^2)``):

    x        = M^+ (y - c) + sigma_0 z                                          (init="pinv")
    x0_hat   = D(x_i, sigma_i)
    v        = r_i^2 M^T (r_i^2 M M^T + sigma_y^2 I)^-1 (y - forward(x0_hat))    (held fixed)
    g        = grad_{x_i} <v, x0_hat>                          (one vector-Jacobian product through D)
    x_{i+1}  = DDIM step (eta) towards x0_hat + w_i g along (x_i - x0_hat) / sigma_i

``w_i = w`` reproduces the reference code (``weighting="reference"``); ``"score"`` uses the paper's
likelihood score at full strength, ``w_i = w (1 + sigma_i^2)``. For ``sigma_y = 0`` ``v`` is the
reference's ``H^+ y - H^+ H x0_hat``; the reference has no noisy branch. Solves with ``M`` go
through ``toolkit.LinearPart``. Derivation: docs/samplers.md, ΠGDM.
"""

from __future__ import annotations

import dataclasses

import torch

from operators.errors import ConfigError

from .base import register
from .toolkit import GRAM_MAX, LinearPart, ddim_step, guided_denoise, model_clip, randn, report, sigma_grid, step_noise


@register("pigdm")
@dataclasses.dataclass(frozen=True)
class PiGDM:
    """ΠGDM (Song et al., ICLR 2023), linear physics only (``TypeError`` otherwise).

    :param steps: number of noise levels = NFE (reference scripts: 100 — ``sample_test.sh``
        pgdm lines, ``exp.num_steps=100``; ``sample_batch.sh``: 1000).
    :param eta: DDIM stochasticity (reference scripts: 1.0; ``pgdm.yaml`` default 0.0).
    :param weight: guidance weight ``w`` (reference ``grad_term_weight``: 1 in ``pgdm.yaml``
        and ``sample_batch.sh``).
    :param weighting: ``"reference"`` (``x0_hat + w g``, the reference code) or ``"score"``
        (``x0_hat + w (1 + sigma^2) g``, the paper's likelihood score in the Tweedie update).
    :param schedule: ``"uniform"`` (reference: timesteps ``range(0, 1000, 1000 // steps)`` of
        the linear-beta DDPM schedule), ``"ddpm"`` (``linspace(999, 0, steps)``) or ``"karras"``.
    :param init: ``"pinv"`` (reference ``initialize``: ``M^+ (y - c) + sigma_0 z``) or
        ``"noise"`` (``sigma_0 z``).
    :param clip_denoised: clamp ``x0_hat`` to the data range (reference: no clamp).
    :param cg_iters: at most this many conjugate-gradient iterations for
        ``(r^2 M M^T + sigma_y^2 I)^-1`` where the physics has no closed form (decomposable
        physics, small dense problems and, up to ``gram_max`` measurements, any real physics are exact).
    :param cg_tol: relative residual at which a CG solve of the data step stops (at most
        ``cg_iters`` iterations; only physics without an exact solve). Default 1e-2: on 8-view CT solved by CG
        (``gram_max=0``), NFE 50, 4 held-out phantoms, 26.17 dB PSNR with warm starts, as 1e-3
        and as 1e-6 from zero (issue 14).
        The pre-issue-14 solver is ``cg_tol=1e-6, cg_warm_start=False, gram_max=0``.
    :param cg_warm_start: start each CG solve from the previous step's solution of the same system
        (default True) instead of from 0.
    :param gram_max: largest per-sample measurement dimension for which the data step is solved
        exactly through an eigendecomposition of ``M M^T`` (``LinearPart``'s ``gram`` backend, e.g.
        8-view CT on 64x64: 728), built once per operator and reused; 0: never (CG instead).
        Default 1024.
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 100
    eta: float = 1.0
    weight: float = 1.0
    weighting: str = "reference"
    schedule: str = "uniform"
    init: str = "pinv"
    clip_denoised: bool = False
    cg_iters: int = 50
    cg_tol: float = 1e-2
    cg_warm_start: bool = True
    gram_max: int = GRAM_MAX
    sigma_max: float | None = None

    PRESETS = {
        # reference scripts (RED-diff sample_test.sh / sample_batch.sh, pgdm lines): eta 1.0,
        # grad_term_weight 1; 100 steps in sample_test.sh (the deg names are in2_20ff, sr4, deblur_gauss)
        "inpainting": dict(steps=100, eta=1.0, weight=1.0),
        "sr4": dict(steps=100, eta=1.0, weight=1.0),
        "deblur": dict(steps=100, eta=1.0, weight=1.0),
        # invsolve's 8-view CT on ct-phantom64 (no reference setting); chosen on
        # training-distribution phantoms (seed 123), see docs/samplers.md
        "ct-sparse8": dict(steps=100, eta=1.0, weight=1.0),
        # invsolve's 4x MRI (mri-4x-equispaced) with the magnitude prior mri-brain64 seen through the real
        # channel (no official MRI setting); chosen on 2 MNI152 T1 slices, benchmarks/mri/tune_presets.md (weight 2: the grid's edge)
        "mri-4x": dict(steps=100, eta=1.0, weight=2.0),
    }

    def __post_init__(self):
        if self.weighting not in ("reference", "score"):
            raise ConfigError(f"weighting must be 'reference' or 'score', got {self.weighting!r}")
        if self.schedule not in ("uniform", "ddpm", "karras"):
            raise ConfigError(f"schedule must be 'uniform', 'ddpm' or 'karras', got {self.schedule!r}")
        if self.init not in ("pinv", "noise"):
            raise ConfigError(f"init must be 'pinv' or 'noise', got {self.init!r}")

    def run(self, prior, problem, x_shape, generator, callback=None):
        lin = LinearPart(problem, x_shape, iters=self.cg_iters, tol=self.cg_tol, who="ΠGDM", gram_max=self.gram_max,
                         warm_start=self.cg_warm_start)
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        clip = model_clip(prior, problem) if self.clip_denoised else None
        noise_var = problem.sigma_y ** 2
        x = sigmas[0] * randn(x_shape, generator)
        if self.init == "pinv":
            with torch.no_grad():
                x = x + lin.pinv(problem.residual(torch.zeros_like(x))).to(x.dtype)
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            r2 = sigma ** 2 / (1 + sigma ** 2)

            def inner(denoised, r2=r2):
                with torch.no_grad():
                    v = r2 * lin.likelihood_score(denoised.detach(), r2, noise_var, key="score")
                return (v.to(denoised.dtype) * denoised).sum()

            denoised, g = guided_denoise(prior, problem, x, sigma, clip=clip, loss=inner)
            w = self.weight * ((1 + sigma ** 2) if self.weighting == "score" else 1.0)
            x = ddim_step(x, denoised, denoised + w * g, sigma, sigma_next, self.eta, step_noise(x, generator, sigma_next))
            report(callback, i, len(sigmas) - 1, sigma, x, denoised)
        return x.detach()
