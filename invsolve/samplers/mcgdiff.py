"""MCGdiff: Monte Carlo guided diffusion, a particle filter in the SVD basis of linear physics.

Paper: G. Cardoso, Y. Janati El Idrissi, S. Le Corff, E. Moulines, "Monte Carlo guided
Denoising Diffusion models for Bayesian linear inverse problems", ICLR 2024.
Official code: https://github.com/gabrielvc/mcg_diff (``mcg_diff/particle_filter.py::mcg_diff``,
``mcg_diff/utils.py``); the EDM-framework port in InverseBench (``algo/mcgdiff.py``).

Update rule (invsolve's VE coordinates; ``M = U diag(s) V^T`` the exact SVD of the linear part of
``forward(x) = M x + c``, spectral coordinates ``xb = V^T x``, pseudo-observations
``yt_i = (U^T (y - c))_i / s_i`` on the seen coordinates ``s_i != 0``):

    tau_i    = sigma_y / |s_i|: yt_i has the law of coordinate i of the forward process at level tau_i,
               so coordinate i is conditioned ("pinned") at the grid level k_i nearest to tau_i
    g_k(xb_i) = N(xb_i; yt_i, w_ki),  w_ki = sigma_k^2 - tau_i^2 + kappa (1 + tau_i^2),  for k <= k_i
    x0_hat   = D(x_k, sigma_k);   mu = DDIM(eta) mean towards x0_hat, v = its variance (eta = 1: ancestral)
    log w   += sum_{i: k+1 <= k_i} [ log N(yt_i; mub_i, v + w_{k+1,i}) - log g_k(xb_i) ]   (fully adapted)
    resample (systematic) where ESS < ess_threshold * particles
    xb'_i    = mub_i + K_i (yt_i - mub_i) + sqrt(K_i w_{k+1,i}) z_i,  K_i = v / (v + w_{k+1,i})   (k+1 <= k_i)
    xb'_i    = mub_i + sqrt(v) z_i                                   (other coordinates, and the rest of x)

starting from the product of N(0, sigma_0^2 I) with the level-0 potentials; the last step returns
x0_hat; one particle per posterior sample is drawn from the final weights. At its pin level the
potential is a near-delta (width ``kappa``) and is kept as a path weight, so with exact ``D``
the final particles target ``p(x0 | yt)``, the posterior.

Differences from the official code: VE coordinates throughout (its VP potential
``N(x; sqrt(abar_t / abar_tau) yt, 1 - (1 - kappa) abar_t / abar_tau)`` is exactly ``g_k`` here);
by default the grid levels nearest to the distinct ``tau_i`` are moved onto them
(``snap_grid``; official: ``tau_i`` snapped to the nearest timestep, a bias of order the grid
spacing); systematic resampling when the ESS falls below ``ess_threshold * particles`` (default 1:
whenever the weights are not uniform; official: multinomial at every step); the weights are
accumulated in log space. Derivation and measured convergence: docs/samplers.md, SMC samplers.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from operators.errors import PhysicsError

from .base import register
from .toolkit import (StateShape, LinearPart, denoise, draw_one, ess, heaviest, model_clip, particle_noise,
                      report, resample_if, select, sigma_grid, to_groups)


def _snap(sigmas: list[float], taus: list[float]) -> list[float]:
    """Move the grid level nearest (in log sigma) to each pin level ``tau`` onto it, one ``tau`` per
    level (the largest first claims it), never beyond the first or last nonzero level; the grid stays
    decreasing because a level only moves within half a cell of its neighbours."""
    levels = sigmas[:-1]
    logs = [math.log(s) for s in levels]
    claimed = set()
    out = list(levels)
    for tau in sorted(taus, reverse=True):
        if not levels[-1] < tau < levels[0]:
            continue
        k = min(range(len(levels)), key=lambda j: abs(logs[j] - math.log(tau)))
        if k not in claimed:
            claimed.add(k)
            out[k] = tau
    return out + [0.0]


@register("mcgdiff")
@dataclasses.dataclass(frozen=True)
class MCGdiff:
    """MCGdiff (Cardoso et al., ICLR 2024): particle filter for linear physics with Gaussian noise.

    Needs an exact SVD of the operator (``LinearPart``'s spectral methods: deepinv decomposable
    physics such as inpainting and Cartesian MRI, average pooling, separable or circular blur and
    bicubic SR at any size, or any real linear physics of at most ``dense_max`` unknowns per
    sample); other physics raises ``PhysicsError`` (use ``fps`` or ``tds``). NFE = ``steps * particles``
    (each step evaluates every particle).

    :param steps: noise levels (InverseBench ``mcgdiff``: 200, poly-7; official: 100 DDIM steps).
    :param particles: particles per posterior sample (official and InverseBench: 64).
    :param eta: DDIM eta of the prior transition (official: 1, the ancestral step).
    :param kappa: width of the pinning potential (official: 1e-4).
    :param schedule: noise grid (``"karras"``: InverseBench's poly-7; ``"uniform"``: official DDIM skip).
    :param snap_grid: move the grid levels nearest to the pin levels ``tau_i`` onto them (invsolve).
    :param ess_threshold: resample a group when its ESS < ``ess_threshold * particles`` (1: almost every step).
    :param clip_denoised: clamp ``x0_hat`` to the prior's data range (official: output clipped to [-1, 1]).
    :param dense_max: largest per-sample dimension factored densely for physics without a closed-form SVD.
    :param sigma_max: start level (default: the prior's maximum).
    """

    steps: int = 200
    particles: int = 64
    eta: float = 1.0
    kappa: float = 1e-4
    schedule: str = "karras"
    snap_grid: bool = True
    ess_threshold: float = 1.0
    clip_denoised: bool = True
    dense_max: int = 1024
    sigma_max: float | None = None

    PRESETS = {
        # invsolve (the official scripts run 64 particles x 100 steps): 70 % random inpainting on
        # ct-phantom64 within a 200-NFE budget (steps x particles), the better of 50 x 4 / 25 x 8 on
        # training phantoms, benchmarks/phantom/tune_new.md
        "inpainting": dict(steps=25, particles=8),
    }

    def run(self, prior, problem, x_shape, generator, callback=None):
        lin = LinearPart(problem, x_shape, dense_max=self.dense_max, who="MCGdiff")
        reason = lin.spectral_unavailable()
        if reason is not None:
            raise PhysicsError(f"MCGdiff works in the SVD basis of linear physics and needs an exact SVD: {reason}. "
                               "Use 'fps' or 'tds', which need no SVD.")
        n, n_part = x_shape[0], self.particles
        rows = StateShape((n * n_part, *x_shape[1:]), problem.dtype)  # the state dtype (float64 physics)
        clip = model_clip(prior, problem) if self.clip_denoised else None
        probe = torch.zeros((1, *x_shape[1:]), dtype=problem.dtype)
        with torch.no_grad():
            yt = lin.y_spectral(n, probe)                       # (N, *spectral)
            s = lin.singular_values(yt).abs()                   # (1, *spectral)
        seen = s > 0
        tau = torch.where(seen, problem.sigma_y / torch.where(seen, s, torch.ones_like(s)), torch.zeros_like(s))
        sigmas = sigma_grid(self.schedule, self.steps, prior, sigma_max=self.sigma_max).tolist()
        if self.snap_grid and problem.sigma_y > 0:
            sigmas = _snap(sigmas, torch.unique(tau[seen].to(torch.float64)).tolist())
        levels = torch.tensor(sigmas[:-1], dtype=torch.float64)
        # pin level k_i of each seen coordinate (nearest level in log sigma; clipped to the grid)
        log_tau = torch.where(seen, tau.clamp_min(1e-30), torch.ones_like(tau)).to(torch.float64).log()
        dist = (log_tau[..., None] - levels.log()).abs()
        pin = torch.where(seen, dist.argmin(-1), torch.full_like(seen, -1, dtype=torch.long))
        tau_hat = levels[pin.clamp_min(0)].to(yt.real.dtype)  # the level each coordinate is pinned at
        yt = yt.repeat(n_part, *([1] * (yt.ndim - 1)))     # particle-major rows, like the state

        def potential_var(k):
            return sigmas[k] ** 2 - tau_hat ** 2 + self.kappa * (1 + tau_hat ** 2)

        def propose(mu, v, k):
            """Draw from N(mu, v I) times the level-k potentials on the coordinates still active."""
            z = particle_noise(rows, n_part, generator)
            mb, zb = lin.to_spectral(mu), lin.to_spectral(z)
            active = pin >= k
            w = potential_var(k).clamp_min(1e-30)
            gain = v / (v + w)
            cond = mb + gain * (yt - mb) + (gain * w).sqrt() * zb
            free = mb + math.sqrt(v) * zb
            spec = torch.where(active, cond, free)
            return lin.null_part(mu + math.sqrt(v) * z) + lin.from_spectral(spec, mu)

        def quad(a, b, var, mask):
            """Per row: sum over the masked coordinates of -(a - b)^2 / (2 var)."""
            d2 = (a - b).abs() ** 2  # complex (circulant) coordinates: |a - b|^2, see spectral.CirculantSVD
            q = torch.where(mask, -d2 / (2 * var), torch.zeros_like(d2))
            return q.reshape(q.shape[0], -1).sum(1).to(torch.float64)

        x = propose(torch.zeros(rows), sigmas[0] ** 2, 0)
        logw = torch.zeros(n, n_part, dtype=torch.float64)
        steps = len(sigmas) - 1
        for k in range(steps):
            sigma, sigma_next = sigmas[k], sigmas[k + 1]
            with torch.no_grad():
                denoised = denoise(prior, x, sigma, clip)
                c1 = self.eta * sigma_next * math.sqrt(max(0.0, 1 - (sigma_next / sigma) ** 2))
                c2 = math.sqrt(max(0.0, sigma_next ** 2 - c1 ** 2))
                mu, v = denoised + c2 * (x - denoised) / sigma, c1 ** 2
                if sigma_next > 0:
                    nxt = pin >= k + 1  # coordinates conditioned at the next level
                    if bool(nxt.any()):
                        w_next, w_now = potential_var(k + 1), potential_var(k)
                        gain = quad(yt, lin.to_spectral(mu), v + w_next, nxt) - quad(lin.to_spectral(x), yt, w_now, nxt)
                        logw = logw + to_groups(gain, n_part)
                report(callback, k, steps, sigma, heaviest(x, logw), heaviest(denoised, logw), ess=ess(logw), particles=x)
                idx, logw = resample_if(logw, self.ess_threshold, generator)
                mu = select(mu, idx)
                x = propose(mu, v, k + 1) if sigma_next > 0 else mu
        pick = draw_one(logw, generator)
        return to_groups(x, n_part)[torch.arange(n), pick].detach()
