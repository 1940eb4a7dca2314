"""RED-Diff: variational posterior estimation with a diffusion regulariser.

Paper: M. Mardani, J. Song, J. Kautz, A. Vahdat, "A Variational Perspective on Solving Inverse
Problems with Diffusion Models", ICLR 2024.
Official code: https://github.com/NVlabs/RED-diff (``algos/reddiff.py``, ``_configs/algo/reddiff.yaml``,
``_configs/exp/default.yaml``, ``utils/functions.py::get_timesteps``).

Update rule (official code, written in invsolve's VE coordinates; see docs/samplers.md):

    mu  <- M^+ (y - c)                 (pseudo-inverse of the measurement, model space; "pinv")
    opt  = Adam([mu], lr, betas=(0.9, 0.99))
    for t in 1000 - skip, ..., skip, 0   (skip = 1000 // steps; sigma_t of the linear-beta DDPM schedule)
        eps ~ N(0, I);  x_t = mu + sigma_t * eps             (VP: sqrt(abar) mu + sqrt(1 - abar) eps)
        eps_hat = (x_t - D(x_t, sigma_t)) / sigma_t           (the network's eps, detached)
        loss = lam * w(sigma_t) * mean((eps_hat - eps) * mu) + v * mean((scale * (y - A(mu)))^2) / 2
        Adam step on grad_mu loss
    return the mu of the last loss evaluation                  (official ``x0_pred``)

``w`` is the SNR weighting (``1/SNR^{1/2} = sigma_t`` for "linear", the official default).
Losses are averaged per sample and summed over the batch, so each posterior draw is its own
optimisation (Adam acts elementwise): RED-Diff gives a point estimate per draw, and its
randomness enters through ``eps`` only. ``scale`` (the prior's physical-to-model factor) puts
the residual in the [-1, 1] model units the official code uses, so official ``lam``/``lr``
carry over. Nonlinear physics works (gradient by autograd); it starts from zeros.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from operators.errors import ConfigError

from .base import register
from .toolkit import GRAM_MAX, LinearPart, noise_estimate, randn, report, sigma_grid

WEIGHTINGS = ("linear", "sqrt", "square", "log", "trunc_linear", "power2over3", "const")


def snr_weight(kind: str, snr_inv: float) -> float:
    """The official ``denoise_term_weight`` options as functions of ``1/SNR^{1/2} = sigma_t``."""
    table = {"linear": snr_inv, "sqrt": math.sqrt(snr_inv), "square": snr_inv ** 2,
             "log": math.log(snr_inv + 1.0), "trunc_linear": min(snr_inv, 1.0),
             "power2over3": snr_inv ** (2 / 3), "const": 1.0}
    if kind not in table:
        raise ConfigError(f"unknown weighting {kind!r}; choose one of {', '.join(WEIGHTINGS)}")
    return table[kind]


@register("reddiff")
@dataclasses.dataclass(frozen=True)
class REDDiff:
    """RED-Diff (Mardani et al., ICLR 2024): Adam on the mean ``mu`` of a variational posterior.

    Sources of the defaults: the official configs ``_configs/algo/reddiff.yaml`` and
    ``_configs/exp/default.yaml`` and the scripts ``sample_test.sh`` / ``sample_batch.sh`` /
    README of https://github.com/NVlabs/RED-diff (commit 66482f2).

    :param steps: ``exp.num_steps``, the number of timesteps visited, one NFE each (config
        default 50, README example 100, ``sample_batch.sh`` 1000). invsolve's default: 1000.
    :param lam: ``grad_term_weight``, the weight lambda of the diffusion regulariser (config and
        README: 0.25; ``sample_batch.sh`` passes 1.0).
    :param lr: Adam learning rate (config: 0.1; README example and ``sample_test.sh``: 0.5 for
        Gaussian/nonlinear deblurring, phase retrieval, HDR and JPEG, 0.25 for inpainting).
    :param weighting: ``denoise_term_weight`` as a function of ``1/SNR^{1/2} = sigma_t``: linear
        (config), sqrt, square, log, trunc_linear, power2over3 or const.
    :param obs_weight: ``obs_weight`` ``v`` of ``mean(r^2) / 2`` with ``r`` in model units
        (config: 1; the official loss does not use sigma_y).
    :param init: ``"pinv"`` (official ``initialize``: the pseudo-inverse ``H^+ y``; nonlinear
        physics start from zeros) or ``"zeros"`` (InverseBench's re-implementation).
    :param sigma_x0: jitter ``x0_pred = mu + sigma_x0 * n`` (config: 0; ``sample_test.sh``
        noiseless inpainting: 1e-4).
    :param cg_iters: conjugate-gradient steps of the pseudo-inverse where no exact one exists
        (decomposable physics and small dense problems are exact; ``linalg.LinearPart``).
    :param cg_tol: relative residual at which that CG solve stops (default 1e-6, as before issue 14).
    :param gram_max: largest per-sample measurement dimension for which the pseudo-inverse is exact
        through an eigendecomposition of ``M M^T`` (``LinearPart``'s ``gram`` backend; 8-view CT on
        64x64: 728), built once per operator and reused; 0: CG (the pre-issue-14 solver). Default 1024.
    """

    steps: int = 1000
    lam: float = 0.25
    lr: float = 0.1
    weighting: str = "linear"
    obs_weight: float = 1.0
    init: str = "pinv"
    sigma_x0: float = 0.0
    cg_iters: int = 50
    cg_tol: float = 1e-6
    gram_max: int = GRAM_MAX

    PRESETS = {
        # official sample_test.sh reddiff lines (with lam 0.25 from the config): sr4 uses the
        # config's lr 0.1; deblur_gauss, phase_retrieval (and hdr, jpeg, deblur_nl) lr 0.5;
        # noiseless in2_20ff inpainting lr 0.25 and sigma_x0 1e-4
        "sr4": dict(),
        "deblur": dict(lr=0.5),
        "phase-retrieval": dict(lr=0.5),
        "inpainting": dict(lr=0.25, sigma_x0=1e-4),
        # invsolve's 8-view CT on ct-phantom64 (no official CT setting): lam 1.0 as in
        # sample_batch.sh, chosen among lr 0.1/0.25/0.5 x lam 0.25/1.0 on training-distribution
        # phantoms (seed 123, 200 steps), see docs/samplers.md
        "ct-sparse8": dict(steps=200, lam=1.0),
    }

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.init not in ("pinv", "zeros"):
            raise ConfigError(f"unknown init {self.init!r}; choose 'pinv' or 'zeros'")
        if self.sigma_x0 < 0:
            raise ConfigError(f"sigma_x0 must be >= 0, got {self.sigma_x0}")

    def run(self, prior, problem, x_shape, generator, callback=None):
        sigmas = sigma_grid("uniform", self.steps, prior)[:-1].tolist()  # the official grid, without the final 0
        mu = self._init(problem, x_shape).detach().requires_grad_(True)
        optimizer = torch.optim.Adam([mu], lr=self.lr, betas=(0.9, 0.99), weight_decay=0.0)
        for i, sigma in enumerate(sigmas):
            noise_x0 = randn(x_shape, generator, dtype=mu.dtype) if self.sigma_x0 > 0 else None
            eps = randn(x_shape, generator, dtype=mu.dtype)
            with torch.enable_grad():
                x0_pred = mu if noise_x0 is None else mu + self.sigma_x0 * noise_x0
                with torch.no_grad():
                    x_t = x0_pred + sigma * eps
                    denoised = prior(x_t, sigma)
                    eps_hat = noise_estimate(x_t, denoised, sigma)
                w = self.lam * snr_weight(self.weighting, sigma)
                loss = (w * _per_sample_mean((eps_hat - eps) * x0_pred).sum()
                        + self.obs_weight * 0.5 * _per_sample_mean(_abs2(problem.scale * problem.residual(x0_pred))).sum())
                optimizer.zero_grad()
                loss.backward()
            evaluated = x0_pred.detach().clone()  # the official output; Adam updates mu in place
            optimizer.step()
            report(callback, i, len(sigmas), sigma, mu.detach(), denoised)
        return evaluated

    def _init(self, problem, x_shape):
        dtype = problem.dtype  # float32, or float64 for float64 physics (fit_physics)
        if self.init == "zeros" or not problem.is_linear:
            return torch.zeros(x_shape, dtype=dtype)
        zero = torch.zeros(x_shape, dtype=dtype)
        with torch.no_grad():
            lin = LinearPart(problem, x_shape, iters=self.cg_iters, tol=self.cg_tol, gram_max=self.gram_max)
            return lin.pinv(problem.residual(zero)).to(dtype)


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).mean(1)


def _abs2(r: torch.Tensor) -> torch.Tensor:
    return r.abs() ** 2 if r.is_complex() else r ** 2
