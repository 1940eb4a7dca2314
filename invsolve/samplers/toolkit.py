"""Sampler primitives: noise grids, steps, the guided denoiser, noise, callbacks, model-space solves.

Every sampler file is a short loop over these (the pattern of the primitives block of
k-diffusion's ``sampling.py``). All of them work in invsolve's VE coordinates: the state is
``x = x0 + sigma * eps`` in the prior's model space and ``D(x, sigma) ~ E[x0 | x]``; ``problem`` is
the model-space view of the user's ``Problem`` (``invsolve.problem.ModelProblem``). Derivations of
the grids and steps are in docs/samplers.md.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable, Sequence

import torch
from deepinv.physics import DecomposablePhysics, LinearPhysics

from operators.errors import ConfigError, PhysicsError
from operators.linalg import TVState, admm_tv_step, cg, least_squares, rowdot
from operators.resolution import AveragePooling

from ..priors.adapters import DDPMSchedule
from .spectral import structured_svd

Generator = torch.Generator | Sequence[torch.Generator] | None

# ---- noise-level grids: decreasing sigmas ending in 0 ----------------------------------------------


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM grid (Karras et al. 2022, eq. 5) of ``steps`` levels from ``sigma_max`` to ``sigma_min``, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho = 1 / rho
    sigmas = (sigma_max ** inv_rho + ramp * (sigma_min ** inv_rho - sigma_max ** inv_rho)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def _ddpm_levels(t: torch.Tensor, sigma_min: float, sigma_max: float, timesteps: int) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of the linear-beta DDPM schedule (1e-4..0.02 over
    ``timesteps``) at the timesteps ``t``, clipped to [sigma_min, sigma_max], then 0."""
    sigmas = DDPMSchedule(timesteps=timesteps).sigmas[t].clamp(sigma_min, sigma_max)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def ddpm_sigmas(steps: int, sigma_min: float, sigma_max: float, timesteps: int = 1000) -> torch.Tensor:
    """DDPM levels respaced evenly, t = round(linspace(T - 1, 0, steps)) (guided-diffusion's respacing)."""
    return _ddpm_levels(torch.linspace(timesteps - 1, 0, steps).round().long(), sigma_min, sigma_max, timesteps)


def uniform_ddpm_sigmas(steps: int, sigma_min: float, sigma_max: float, timesteps: int = 1000) -> torch.Tensor:
    """DDIM's uniform skip (RED-diff ``get_timesteps``): t = (steps - 1) k, ..., k, 0 with
    k = T // steps. For ``steps`` dividing T this is ``reversed(range(0, T, k))``; otherwise it keeps
    exactly ``steps`` levels (that range would have one more)."""
    if not 1 <= steps <= timesteps:
        raise ConfigError(f"steps must be in [1, {timesteps}], got {steps}")
    return _ddpm_levels(torch.arange(steps - 1, -1, -1) * (timesteps // steps), sigma_min, sigma_max, timesteps)


def quad_ddpm_sigmas(steps: int, sigma_min: float, sigma_max: float, timesteps: int = 1000) -> torch.Tensor:
    """DiffPIR's ``skip_type='quad'``: t = T - 1 - floor(sqrt(linspace(0, T^2, steps))), the last at
    t = 0. Dense near t = 0, coarse at high noise."""
    seq = torch.linspace(0, float(timesteps) ** 2, steps, dtype=torch.float64).sqrt().floor().long()
    seq[-1] = timesteps - 1
    return _ddpm_levels((timesteps - 1) - seq, sigma_min, sigma_max, timesteps)


def geometric_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """score_sde's VE grid ``sigma_min (sigma_max / sigma_min)^t``, ``t`` evenly from 1 down to 0
    (``steps`` levels from ``sigma_max`` to ``sigma_min``; DiffusionMBIR, TPDM), then 0."""
    t = torch.linspace(1, 0, steps, dtype=torch.float64)
    return torch.cat([sigma_min * (sigma_max / sigma_min) ** t, torch.zeros(1, dtype=torch.float64)])


GRIDS = {"karras": karras_sigmas, "ddpm": ddpm_sigmas, "uniform": uniform_ddpm_sigmas, "quad": quad_ddpm_sigmas,
         "geometric": geometric_sigmas}


def sigma_grid(schedule: str, steps: int, prior, sigma_max: float | None = None,
               sigma_min: float | None = None) -> torch.Tensor:
    """The grid ``schedule`` (one of ``GRIDS``) of ``steps`` levels within the prior's range, then 0."""
    if schedule not in GRIDS:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(GRIDS)}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    lo = max(sigma_min or prior.sigma_min, prior.sigma_min)
    hi = min(sigma_max or prior.sigma_max, prior.sigma_max)
    return GRIDS[schedule](steps, lo, hi)


def annealing_sigmas(levels: int, sigma_min: float, sigma_max: float) -> list[float]:
    """DAPS's annealing grid: the first ``levels`` of ``levels + 1`` poly-7 levels from
    ``sigma_max`` to ``sigma_min`` (official ``Scheduler.discretize`` drops the last one), then 0."""
    return karras_sigmas(levels + 1, sigma_min, sigma_max)[:levels].tolist() + [0.0]


SD3_U_MIN = 3.0 * 1e-3 / (1 + 2.0 * 1e-3)  # smallest unshifted time of SD3's scheduler (shift 3 at init)


def shifted_times(steps: int, shift: float, t_max: float, t_min: float, u_min: float = SD3_U_MIN) -> torch.Tensor:
    """SD3's shifted flow-time grid (``z_t = (1 - t) x0 + t eps``): ``steps`` times from ``t_max`` down, then 0.

    ``u`` runs evenly from ``unshift(t_max)`` to ``max(u_min, unshift(t_min))`` and is mapped to
    ``t = shift u / (1 + (shift - 1) u)`` (diffusers ``FlowMatchEulerDiscreteScheduler``).
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ConfigError(f"shift must be > 0, got {shift}")

    def unshift(t):
        return t / (shift - (shift - 1) * t)

    u_hi = unshift(t_max)
    u_lo = min(max(u_min, unshift(t_min)), u_hi)
    u = torch.linspace(u_hi, u_lo, steps, dtype=torch.float64)
    t = shift * u / (1 + (shift - 1) * u)
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


# ---- steps ------------------------------------------------------------------------------------------


def noise_estimate(x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """Tweedie's noise direction ``(x - x0) / sigma`` of the state ``x = x0 + sigma eps``."""
    return (x - x0) / sigma


def ancestral_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float,
                   noise: torch.Tensor) -> torch.Tensor:
    """Draw from q(x_next | x, x0 = denoised): the DDPM posterior step in VE coordinates.

    mean ``x0 + (s'^2 / s^2)(x - x0)``, variance ``s'^2 (s^2 - s'^2) / s^2``; with VP rescaling this
    is DDPM's ancestral step with the posterior variance beta-tilde.
    """
    ratio = (sigma_next / sigma) ** 2
    std = sigma_next * math.sqrt(max(0.0, 1 - ratio))
    return denoised + ratio * (x - denoised) + std * noise


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, target: torch.Tensor, sigma: float, sigma_next: float,
              eta: float, noise: torch.Tensor) -> torch.Tensor:
    """DDIM step sigma -> sigma_next towards ``target`` (a possibly guided clean estimate) along the
    noise direction of the unconditional ``denoised``; ``eta = 1``: DDPM's ancestral variance,
    ``eta = 0``: deterministic."""
    if sigma_next <= 0:
        return target
    c1 = eta * sigma_next * math.sqrt(max(0.0, 1 - (sigma_next / sigma) ** 2))
    c2 = math.sqrt(max(0.0, sigma_next ** 2 - c1 ** 2))
    return target + c2 * (x - denoised) / sigma + c1 * noise


def pf_ode_euler(prior, x: torch.Tensor, sigma: float, sigma_end: float, steps: int) -> torch.Tensor:
    """Euler steps of the probability-flow ODE ``dx/ds = (x - D(x, s)) / s`` from ``sigma`` to
    ``sigma_end`` over ``steps + 1`` poly-7 levels: ``steps`` denoiser calls; returns the state at
    ``sigma_end`` (not a final denoising)."""
    grid = karras_sigmas(steps + 1, sigma_end, sigma)[:-1].tolist()
    for s, s_next in zip(grid[:-1], grid[1:]):
        x = x + (s_next - s) * (x - prior(x, s)) / s
    return x


def flow_velocity(prior, z: torch.Tensor, t: float) -> torch.Tensor:
    """``v(z, t) = (z - x0_hat) / t`` of the flow ``z_t = (1 - t) x0 + t eps`` through the prior's ``D``."""
    return (z - prior(z / (1 - t), t / (1 - t))) / t


def flow_midpoint(prior, z: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One midpoint step of ``dz/dt = v(z, t)`` from ``t`` to ``t_next`` (either direction): 2 NFE."""
    h = t_next - t
    half = z + 0.5 * h * flow_velocity(prior, z, t)
    return z + h * flow_velocity(prior, half, t + 0.5 * h)


def eta_ddim_step(target: torch.Tensor, eps_hat: torch.Tensor, sigma_next: float, eta: float,
                  noise: torch.Tensor) -> torch.Tensor:
    """DDS's / DDNM's "eta-DDIM" re-noising ``x' = target + sigma' (eta z + sqrt(1 - eta^2) eps_hat)``
    (VE form of ``sqrt(abar') x0 + sqrt(1 - abar') (eta z + sqrt(1 - eta^2) eps)``); not the
    standard DDIM eta of ``ddim_step``. Returns ``target`` for ``sigma_next = 0``."""
    if sigma_next <= 0:
        return target
    return target + sigma_next * (eta * noise + math.sqrt(max(0.0, 1 - eta ** 2)) * eps_hat)


def score(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """VE score ``(D(x, sigma) - x) / sigma^2`` from a denoised estimate."""
    return (denoised - x) / sigma ** 2


def reverse_diffusion_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float,
                           noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """score_sde's VE ``ReverseDiffusionPredictor``: ``mean = x + (s^2 - s'^2) score``,
    ``x' = mean + sqrt(s^2 - s'^2) z``; returns ``(x', mean)``. To ``sigma_next = 0`` the mean is
    ``denoised`` and no noise is added."""
    var = sigma ** 2 - sigma_next ** 2
    mean = x + var * score(x, denoised, sigma)
    return (mean + math.sqrt(max(var, 0.0)) * noise if sigma_next > 0 else mean), mean


def langevin_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, snr: float,
                  noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """score_sde's VE ``LangevinCorrector`` (one step): ``eps = 2 (snr ||z|| / ||score||)^2`` per
    sample, ``mean = x + eps score``, ``x' = mean + sqrt(2 eps) z``; returns ``(x', mean)``. The
    official code averages the norms over its batch (a chunk of slices); here each sample (a whole
    volume) has its own step."""
    g = score(x, denoised, sigma)
    shape = (-1, *([1] * (x.ndim - 1)))
    g_norm = g.reshape(g.shape[0], -1).norm(dim=1).clamp_min(1e-12)
    z_norm = noise.reshape(noise.shape[0], -1).norm(dim=1)
    eps = (2 * (snr * z_norm / g_norm) ** 2).reshape(shape)
    mean = x + eps * g
    return mean + (2 * eps).sqrt() * noise, mean


# ---- guidance and data terms ----------------------------------------------------------------------


def residual_norm(problem, x0: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Sum over the batch of each sample's ``||y - A(x0)||`` (``l2``) or its square (``l2sq``)."""
    return norm_of_residual(problem.residual(x0), norm)


def norm_of_residual(r: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Sum over the batch of each sample's ``||r||`` (``l2``) or ``||r||^2`` (``l2sq``)."""
    sq = squared_norms(r)
    if norm == "l2":
        return sq.sqrt().sum()
    if norm == "l2sq":
        return sq.sum()
    raise ConfigError(f"norm must be 'l2' or 'l2sq', got {norm!r}")


def denoise(prior, x: torch.Tensor, sigma: float, clip=None) -> torch.Tensor:
    """``x0_hat = D(x, sigma)``, clamped by ``clip`` (``model_clip``) when given."""
    denoised = prior(x, sigma)
    return denoised if clip is None else clip(denoised)


def guided_denoise(prior, problem, x: torch.Tensor, sigma: float, norm: str = "l2", clip=None, loss=None,
                   with_residual: bool = False):
    """``(x0_hat, grad_x loss(x0_hat))`` with ``x0_hat = D(x, sigma)``: the gradient through the
    denoiser shared by DPS-type samplers, per sample.

    ``loss`` maps the denoised batch to a scalar summing per-sample terms; by default
    ``residual_norm(problem, x0_hat, norm)`` (DPS). ``<v, x0_hat>`` with a fixed ``v`` gives a
    vector-Jacobian product through the denoiser (ΠGDM). ``with_residual`` (default loss only):
    also return ``r = y - forward(x0_hat)``, detached, so a step rule that needs it
    (``guidance_weight``) does not run the operator again.
    """
    if with_residual and loss is not None:
        raise ValueError("with_residual needs the default loss")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        denoised = denoise(prior, x, sigma, clip)
        if loss is None:
            r = problem.residual(denoised)
            value = norm_of_residual(r, norm)
        else:
            value = loss(denoised)
        (grad,) = torch.autograd.grad(value, x)
    if with_residual:
        return denoised.detach(), grad, r.detach()
    return denoised.detach(), grad


def data_grad(problem, x: torch.Tensor) -> torch.Tensor:
    """``grad_x ||y - A(x)||^2`` per sample: ``-2 M^T r`` for linear physics, autograd otherwise."""
    if problem.is_linear:
        grad = -2 * problem.adjoint(problem.residual(x))
        if grad.is_complex() and not x.is_complex():
            grad = grad.real
        return grad.to(x.dtype)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(residual_norm(problem, x, "l2sq"), x)
    return grad


# ---- hard data consistency by optimisation (ReSample, FLAIR, D-Flow) ------------------------------


def image_physics(problem):
    """The physics acting on images in physical units: a latent problem's image physics (the one its
    decoder's output meets), else the problem's own."""
    physics = problem.physics
    return getattr(physics, "image_physics", physics)


def squared_norms(r: torch.Tensor) -> torch.Tensor:
    """Per row ``||r_j||^2`` of a residual batch (complex entries as real and imaginary parts)."""
    r = r.reshape(r.shape[0], -1)
    if r.is_complex():
        r = torch.view_as_real(r).reshape(r.shape[0], -1)
    return r.pow(2).sum(1)


def measured_image(problem, x_shape, kind: str = "pinv") -> torch.Tensor | None:
    """The model-space image of ``A^+ y`` (``kind="pinv"``) or ``A^T y`` (``"adjoint"``) for a batch of shape
    ``x_shape`` (formed once per measurement, encoded for a latent prior, then tiled sample-major); None
    where it cannot be formed: nonlinear image physics, or a latent prior without an encoder."""
    physics = image_physics(problem)
    latent = getattr(problem, "latent_prior", None)
    if not isinstance(physics, LinearPhysics) or latent is not None and latent.encoder is None:
        return None
    with torch.no_grad():
        x = physics.A_dagger(problem.y) if kind == "pinv" else physics.A_adjoint(problem.y)
        z = problem.to_model((x.real if x.is_complex() else x).to(x_shape.dtype))
    return z.repeat(x_shape[0] // z.shape[0], *([1] * (z.ndim - 1))).reshape(x_shape)


def adamw_fit(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, lr: float, iters: int,
              tol: float = 0.0, patience: int | None = None, weight_decay: float = 0.01,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """Minimise ``loss(x) -> (N,)`` (one value per sample) from ``x`` by AdamW, each sample on its own.

    Written out (torch.optim.AdamW's update, decoupled weight decay) because every sample must stop
    on its own: a sample whose loss falls below ``tol``, or (``patience``) has not improved on its best
    for ``patience`` iterations, is frozen at its best iterate, so a batch gives what separate runs
    would (torch's optimisers step the whole tensor or nothing). Returns the best iterate per sample."""
    x = x.detach().clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    best, best_loss = x.clone(), torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
    since = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    step = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    shape = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(iters):
        with torch.enable_grad():
            leaf = x.requires_grad_(True)
            value = loss(leaf)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        x = x.detach()
        value = value.detach().to(torch.float64)
        better = active & (value < best_loss)
        best[better], best_loss[better] = x[better], value[better]
        since = torch.where(better, 0, since + active.long())
        active &= value >= tol
        if patience is not None:
            active &= since < patience
        if not active.any():
            break
        a = active.view(shape).to(x.dtype)
        step = step + active.to(x.dtype)
        m = torch.where(a.bool(), betas[0] * m + (1 - betas[0]) * grad, m)
        v = torch.where(a.bool(), betas[1] * v + (1 - betas[1]) * grad * grad, v)
        bc1, bc2 = (1 - betas[0] ** step.clamp_min(1)).view(shape), (1 - betas[1] ** step.clamp_min(1)).view(shape)
        update = lr * weight_decay * x + lr * (m / bc1) / ((v / bc2).sqrt() + eps)
        x = x - a * update
    with torch.no_grad():
        final = loss(x).to(torch.float64)
    better = final < best_loss
    best[better] = x[better]
    return best


# ---- guidance weights that do not depend on the number of steps ---------------------------------

WEIGHT_RULES = ("spanned", "per-step")


def ddpm_steps_spanned(sigma: float, sigma_next: float, timesteps: int = 1000) -> float:
    """How many steps of the official ``timesteps``-step linear-beta DDPM grid the step
    ``sigma -> sigma_next`` stands for: ``(sigma^2 - sigma_next^2) / (beta(t) (1 + sigma^2))`` with
    ``t = t(sigma)``, since one DDPM step at ``sigma_k`` is ``sigma_k^2 - sigma_{k-1}^2 = beta_k (1 +
    sigma_k^2)``. Exactly 1 (to rounding) for every step of the 1000-step grid; about 1000 / steps on
    a respaced one; it follows the density of any other grid (Karras, uniform)."""
    sched = DDPMSchedule(timesteps=timesteps)
    t = float(sched.t(torch.tensor(sigma, dtype=torch.float64)))
    beta = 1e-4 + t / (timesteps - 1) * (0.02 - 1e-4)
    return (sigma ** 2 - sigma_next ** 2) / (beta * (1 + sigma ** 2))


def check_weight_rule(who: str, field: str, rule: str, weight) -> None:
    """``ConfigError`` unless ``rule`` is one of ``WEIGHT_RULES`` and ``weight`` a number or ``"auto"``."""
    if rule not in WEIGHT_RULES:
        raise ConfigError(f"{who}: {field}_rule must be one of {', '.join(WEIGHT_RULES)}, got {rule!r}")
    if isinstance(weight, str) and weight != "auto":
        raise ConfigError(f"{who}: {field} must be a number or 'auto', got {weight!r}")


def polyak_weight(problem, denoised: torch.Tensor, grad: torch.Tensor, fraction: float, norm: str = "l2",
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample guidance weight of the automatic rule (``zeta="auto"``): the Polyak step
    ``fraction * max(f - f*, 0) / ||g||^2`` for ``f = ||r||`` (``norm="l2"``, ``f* = sigma_y sqrt(m)``)
    or ``f = ||r||^2`` (``"l2sq"``, ``f* = m sigma_y^2``), with ``r = y - forward(x0_hat)`` (``m`` its
    real entries) and ``g = grad_x f``: the step along ``-g`` that brings the linearised residual
    down to the noise level in one step (``fraction = 1``) and never below it. It is invariant to
    rescaling the operator and ``y`` together, so it needs no tuning per operator.
    ``residual``: ``r`` when the caller has it (e.g. BlindDPS's ``y - k * x0_hat``), else ``problem.residual``.
    Shape ``(N, 1, ..., 1)``, broadcastable against ``grad``."""
    with torch.no_grad():
        r = (problem.residual(denoised) if residual is None else residual).reshape(denoised.shape[0], -1)
        r = torch.view_as_real(r).reshape(r.shape[0], -1) if r.is_complex() else r
        sq, m = r.pow(2).sum(1), r.shape[1]
        s2 = float(problem.sigma_y) ** 2
        excess = (sq.sqrt() - math.sqrt(s2 * m) if norm == "l2" else sq - s2 * m).clamp(min=0)
        g2 = grad.reshape(grad.shape[0], -1).pow(2).sum(1)
        weight = fraction * excess / g2.clamp(min=torch.finfo(g2.dtype).tiny)
    return weight.to(grad.dtype).reshape(-1, *([1] * (grad.dim() - 1)))


def guidance_weight(problem, denoised: torch.Tensor, grad: torch.Tensor, weight, rule: str, sigma: float,
                    sigma_next: float, vp_scaling: bool = True, norm: str = "l2", fraction: float = 1.0,
                    unit: float = 1.0, cap: float = 1.0, residual: torch.Tensor | None = None):
    """The multiplier ``w`` of a DPS-type step ``x <- x - w * grad`` (DPS's zeta, MCG's alpha).

    - ``weight="auto"``: the per-sample Polyak step ``polyak_weight`` (``fraction`` of it);
    - ``rule="per-step"``: ``weight * unit * v`` at every step (the official codes' rule), with
      ``v = sqrt((1 + sigma^2)(1 + sigma_next^2))`` when ``vp_scaling`` (official VP weights);
    - ``rule="spanned"``: the same times ``ddpm_steps_spanned(sigma, sigma_next)``, the official
      1000-step DDPM steps this step stands for (1 on that grid), capped per sample at ``cap`` times
      the Polyak step, so a coarse grid takes the official total guidance without stepping past the
      noise level (``cap < 1``: a damped step, for where the linearisation through the denoiser is poor).
    """
    if weight == "auto":
        return polyak_weight(problem, denoised, grad, fraction, norm, residual)
    w = weight * unit * (math.sqrt((1 + sigma ** 2) * (1 + sigma_next ** 2)) if vp_scaling else 1.0)
    if rule == "per-step":
        return w
    w *= ddpm_steps_spanned(sigma, sigma_next)
    return polyak_weight(problem, denoised, grad, cap, norm, residual).clamp(max=w)


def model_clip(prior, problem):
    """A function clamping model-space values to the prior's physical range (or None)."""
    rng = getattr(prior.card, "physical_range", None)
    if rng is None:
        return None
    lo, hi = sorted(problem.to_model(torch.tensor(v, dtype=torch.float64)).item() for v in rng)
    return lambda x: x.clamp(lo, hi)


def tv_dims(prior, x: torch.Tensor) -> tuple[int, ...]:
    """The dim of a batch of volumes (N, C, D, H, W) that TV-along-z couples: the slice axis of a
    slice-wise prior (``prior.slice_dim``), else the depth dim 2; none for 2D images."""
    if x.ndim != 5:
        return ()
    return (int(getattr(prior, "slice_dim", 2)),)


def admm_tv_data_step(problem, x: torch.Tensor, state: TVState, dims, lam: float, rho: float, cg_iters: int,
                      gamma: float = 0.0, anchor: torch.Tensor | None = None) -> torch.Tensor:
    """One ADMM-TV iteration (``operators.linalg.admm_tv_step``) on the model-space data term
    ``1/2 ||y - forward(x)||^2`` of a linear ``problem``, started at ``x``: the shared volume
    coupling of DDS and DiffusionMBIR (plain CG data consistency when ``lam = 0`` or no dims)."""
    real = not x.is_complex()

    def normal(v):
        out = problem.adjoint(problem.linear_forward(v))
        return (out.real if real and out.is_complex() else out).to(x.dtype)

    data = problem.adjoint(problem.residual(x))
    data = (data.real if real and data.is_complex() else data).to(x.dtype) + normal(x)
    return admm_tv_step(x, normal, data, state, dims, lam, rho, cg_iters, gamma=gamma, anchor=anchor)


# ---- noise and callbacks ----------------------------------------------------------------------------


class StateShape(tuple):
    """The model batch shape ``(N, *sample_shape)`` a sampler's ``run`` gets, carrying the state's
    ``dtype`` (float32, or the measurement's float64 where the physics needs it: ``fit_physics``)
    so that ``randn(x_shape, ...)`` draws the initial state in it."""

    def __new__(cls, shape, dtype=torch.float32):
        self = super().__new__(cls, tuple(int(n) for n in shape))
        self.dtype = dtype
        return self


def randn(shape: Sequence[int], generator: Generator, dtype=None, device=None) -> torch.Tensor:
    """Standard normal noise; with a list of generators, draw j's rows come from generator j only.

    ``dtype`` defaults to ``shape.dtype`` for a ``StateShape``, else float32; ``device`` defaults to
    the generator's device (a CUDA generator draws on its GPU)."""
    dtype = dtype if dtype is not None else getattr(shape, "dtype", torch.float32)
    if generator is None or isinstance(generator, torch.Generator):
        device = device if device is not None or generator is None else generator.device
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    per = shape[0] // len(generator)
    return torch.cat([torch.randn((per, *shape[1:]), generator=g, dtype=dtype,
                                  device=device if device is not None else g.device) for g in generator])


def step_noise(like: torch.Tensor, generator: Generator, sigma_next: float) -> torch.Tensor:
    """Fresh noise for a step to ``sigma_next``; zeros (no draw) for the final step to 0."""
    return randn(like.shape, generator, dtype=like.dtype) if sigma_next > 0 else torch.zeros_like(like)


def report(callback: Callable[[dict], None] | None, step: int, steps: int, sigma: float, x: torch.Tensor,
           denoised: torch.Tensor, **extra) -> None:
    """Send ``{"step", "steps", "sigma", "x", "denoised", **extra}`` to ``callback`` (if any)."""
    if callback is not None:
        callback({"step": step, "steps": steps, "sigma": sigma, "x": x, "denoised": denoised, **extra})


# ---- model-space linear algebra ---------------------------------------------------------------------

CG_ITERS = 100
CG_TOL = 1e-6
DENSE_MAX = 1024
GRAM_MAX = 1024  # the samplers' default ``gram_max`` (LinearPart's own default is 0: off)

# ``gram`` factorizations kept per physics object (weakly: dropped with the physics), keyed by the
# model sample shape, scale, dtype and device; a hit is checked by one forward call on a fixed probe
_GRAM_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class LinearPart:
    """The model-space linear part ``M`` of ``problem.forward`` (``forward(x) = M x + c``, with
    ``M v = problem.linear_forward(v)`` and ``M^T = problem.adjoint``), set up once per sampler run,
    with the solves that projection and closed-form-likelihood samplers need. The backend is chosen
    once:

    - ``"svd"``: a deepinv ``DecomposablePhysics`` (``A = U diag(s) V^*``: inpainting masks,
      Cartesian MRI, ...), exact closed forms;
    - ``"dense"``: real physics whose per-sample model dimension is at most ``dense_max``: ``M`` is
      assembled from ``d`` forward calls and factored by a thin SVD in float64, exact;
    - ``"gram"`` (only when ``gram_max > 0``): real physics that is neither of the above but whose
      per-sample measurement dimension ``m`` is at most ``gram_max`` (8-view CT: ``m = 728``):
      ``M M^T`` (m x m) is assembled from one batched adjoint call on the ``m`` measurement basis
      vectors and eigendecomposed in float64, so every solve below is exact through the identity
      ``(M^T M + rho I)^+ M^T = M^T (M M^T + rho I)^+`` and costs no operator call beyond the one
      adjoint of ``pinv`` (``solve_measurement`` none). Eigenvalues below ``m eps lambda_max`` (float32
      assembly: rays that miss the image, and the weakest ~1e-4 of the spectrum) are treated as outside
      the range of ``M``: ``pinv`` and ``likelihood_score`` give them nothing (the truncated operator's
      exact solves; a noise-free ``1 / sqrt(lambda)`` there would amplify the noise of ``y`` without
      bound), ``solve_measurement`` gives them ``1 / noise_var`` as the dense backend does outside the
      range. The factorization is kept per physics object (weakly) and reused by later runs on the
      same operator, after a one-call check on a fixed probe;
    - ``"cg"``: any other ``LinearPhysics`` (blur, large images): ``operators.linalg.cg`` with at most
      ``iters`` steps per solve, stopping at relative residual ``tol``, each posterior sample on its
      own. With ``warm_start`` a solve given a ``key`` starts from the previous solution of the same
      key (same shape), e.g. the previous diffusion step's; otherwise from 0.

    ``x_shape`` is the model batch shape ``(N, *sample_shape)``; the physics must act on each batch
    row alike (as every sampler assumes when it tiles ``y``). ``who`` names the sampler in the
    ``PhysicsError`` raised for nonlinear physics. ``cg_iterations`` counts the CG iterations run.
    """

    def __init__(self, problem, x_shape, iters: int = CG_ITERS, tol: float = CG_TOL, dense_max: int = DENSE_MAX,
                 who: str = "this sampler's closed-form data step", gram_max: int = 0, warm_start: bool = False):
        problem = problem.view()  # a Problem's model-space view (a view is its own)
        problem.require_linear(who)
        self.problem, self.iters, self.tol = problem, iters, tol
        self.warm_start = warm_start
        self._warm: dict = {}
        self.cg_iterations = 0
        self.sample_shape = tuple(x_shape[1:])
        self.backend = "cg"
        if isinstance(problem.physics, DecomposablePhysics):
            self.backend = "svd"
        elif math.prod(self.sample_shape) <= dense_max:
            self._assemble()
        if self.backend == "cg" and gram_max > 0:
            self._gram(gram_max)

    def _cached(self, kind: str, build):
        """``build(seen)`` once per physics object, sample shape, scale, dtype and device (``seen``: ``M``
        on a fixed probe), kept weakly with the physics and reused while ``M`` gives the same ``seen``."""
        problem = self.problem
        dtype = getattr(problem, "dtype", torch.float32)
        with torch.no_grad():
            probe = torch.randn((1, *self.sample_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
            seen = problem.linear_forward(probe)
        key = (kind, self.sample_shape, float(problem.scale), dtype, str(seen.device))
        try:
            store = _GRAM_CACHE.setdefault(problem.physics, {})
        except TypeError:  # physics that cannot be weakly referenced: no reuse across runs
            store = {}
        hit = store.get(key)
        if hit is not None and hit[0].shape == seen.shape and torch.equal(hit[0], seen):
            return hit[1]
        value = build(seen)
        store[key] = (seen, value)
        return value

    def _gram(self, gram_max: int) -> None:
        """Switch to the ``gram`` backend when ``M`` is real with at most ``gram_max`` measurements per sample."""
        def build(seen):
            if seen.is_complex() or seen[0].numel() > gram_max:
                return None
            m = seen[0].numel()
            basis = torch.eye(m, dtype=seen.dtype, device=seen.device).reshape(m, *seen.shape[1:])
            with torch.no_grad():
                rows = self.problem.adjoint(basis)  # row j of M is M^T e_j
            if rows.is_complex():
                return None
            rows = rows.reshape(m, -1).to(torch.float64)
            lam, Q = torch.linalg.eigh(rows @ rows.T)
            # numerically zero eigenvalues (rays missing the image, ...): the dense backend's cut-off, squared
            cut = float(lam.max()) * m * torch.finfo(seen.dtype).eps if lam.numel() else 0.0
            return Q, torch.where(lam > cut, lam, torch.zeros_like(lam))

        found = self._cached(f"gram{gram_max}", build)
        if found is not None:
            self.Q, self.lam = found
            self.backend = "gram"

    def _gram_apply(self, r: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """``Q diag(gain) Q^T r`` per row of the measurement-space ``r``, in ``r``'s dtype and shape."""
        out = ((self._rows(r) @ self.Q) * gain) @ self.Q.T
        return out.reshape(r.shape).to(r.dtype)

    def _start(self, key, like: torch.Tensor):
        """The warm start stored under ``key`` (None: start from 0)."""
        if not self.warm_start or key is None:
            return None
        x0 = self._warm.get(key)
        return x0 if x0 is not None and x0.shape == like.shape and x0.dtype == like.dtype else None

    def _cg(self, apply, b: torch.Tensor, key) -> torch.Tensor:
        """CG on ``apply(x) = b``, warm-started from slot ``key`` per row only where that start has a
        lower quadratic objective ``x^T apply(x) / 2 - b^T x`` than 0 (so a warm start never ends
        worse than the cold solve's monotone decrease from 0: DiffPIR's and DMPS's steps keep
        never increasing the residual they start from)."""
        info: dict = {}
        x0, r0 = self._start(key, b), None
        if x0 is not None:
            r0 = b - apply(x0)
            worse = rowdot(x0, b + r0) < 0  # objective at x0 = -<x0, b + r0> / 2 > 0
            x0 = torch.where(worse, torch.zeros_like(x0), x0)
            r0 = torch.where(worse, b, r0)
        out = cg(apply, b, x0=x0, iters=self.iters, tol=self.tol, info=info, r0=r0)
        self.cg_iterations += info["iterations"]
        if self.warm_start and key is not None:
            self._warm[key] = out
        return out

    def _assemble(self) -> None:
        d = math.prod(self.sample_shape)
        with torch.no_grad():
            basis = torch.eye(d, dtype=getattr(self.problem, "dtype", torch.float32)).reshape(d, *self.sample_shape)
            columns = self.problem.linear_forward(basis)
        if columns.is_complex():
            return
        M = columns.reshape(d, -1).T.to(torch.float64)  # (m, d)
        U, s, Vh = torch.linalg.svd(M, full_matrices=False)
        if s.numel():  # numerically zero singular values (numpy's pinv cut-off at the assembly precision)
            s = torch.where(s > s.max() * max(M.shape) * torch.finfo(columns.dtype).eps, s, torch.zeros_like(s))
        self.U, self.s, self.V = U, s, Vh.T
        self.backend = "dense"

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        """The decomposable physics' singular values ``s`` (its ``mask``); those of ``M`` are ``s / scale``."""
        mask = self.problem.physics.mask
        if not torch.is_tensor(mask):
            mask = torch.as_tensor(float(mask), dtype=like.real.dtype)
        return mask.to(device=like.device)

    @staticmethod
    def _rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1).to(torch.float64)

    def pinv(self, r: torch.Tensor, rho: float = 0.0, key=None) -> torch.Tensor:
        """``(M^T M + rho I)^+ M^T r`` per row of the measurement-space ``r`` (model space out);
        ``rho = 0``: the pseudo-inverse ``M^+ r`` (minimum-norm least squares). ``key``: the warm
        start slot of the ``cg`` backend (see the class docstring)."""
        if rho < 0:
            raise ConfigError(f"rho must be >= 0, got {rho}")
        if self.backend == "svd":
            physics = self.problem.physics
            s = self._mask(r) / self.problem.scale
            s2 = s.abs() ** 2
            inv = torch.where(s2 + rho > 1e-10, s.conj() / (s2 + rho).clamp_min(1e-10), torch.zeros_like(s))
            return physics.V(physics.U_adjoint(r) * inv)
        if self.backend == "gram":  # nothing along the modes treated as outside the range
            seen = self.lam > 0
            gain = torch.where(seen, 1 / torch.where(seen, self.lam + rho, torch.ones_like(self.lam)),
                               torch.zeros_like(self.lam))
            return self.problem.adjoint(self._gram_apply(r, gain))
        if self.backend == "cg":
            if key is None and not self.warm_start:  # the plain least-squares solve from 0
                info: dict = {}
                out = least_squares(self.problem.linear_forward, self.problem.adjoint, r, rho=rho,
                                    iters=self.iters, tol=self.tol, info=info)
                self.cg_iterations += info["iterations"]
                return out

            def normal(v):
                out = self.problem.adjoint(self.problem.linear_forward(v))
                return out + rho * v if rho else out

            return self._cg(normal, self.problem.adjoint(r), key)
        s = self.s
        gain = torch.where(s ** 2 + rho > 0, s / torch.where(s ** 2 + rho > 0, s ** 2 + rho, torch.ones_like(s)),
                           torch.zeros_like(s))
        out = ((self._rows(r) @ self.U) * gain) @ self.V.T
        return out.reshape(r.shape[0], *self.sample_shape)

    def solve_measurement(self, r: torch.Tensor, c: float, noise_var: float, key=None) -> torch.Tensor:
        """``(noise_var I + c M M^T)^-1 r`` for measurement-space ``r`` (one row per sample); with
        ``noise_var = 0``, ``(c M M^T)^+ r`` (zero on directions ``M`` does not reach). ``key``: the
        warm start slot of the ``cg`` backend."""
        if self.backend == "svd":
            physics = self.problem.physics
            ur = physics.U_adjoint(r)
            denom = noise_var + c * (self._mask(ur).abs() ** 2 / self.problem.scale ** 2)
            inv = torch.where(denom > 0, 1 / torch.where(denom > 0, denom, torch.ones_like(denom)),
                              torch.zeros_like(denom))
            return physics.U(ur * inv)
        if self.backend == "gram":
            denom = noise_var + c * self.lam
            inv = torch.where(denom > 0, 1 / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
            return self._gram_apply(r, inv)
        if self.backend == "cg":
            def apply(u):
                return noise_var * u + c * self.problem.linear_forward(self.problem.adjoint(u))

            return self._cg(apply, r, key)
        rows = self._rows(r)
        coef = rows @ self.U
        denom = noise_var + c * self.s ** 2
        inv = torch.where(denom > 0, 1 / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        out = (coef * inv) @ self.U.T
        if noise_var > 0:  # directions outside the range of M
            out = out + (rows - coef @ self.U.T) / noise_var
        return out.reshape(r.shape).to(r.dtype)

    def likelihood_score(self, x: torch.Tensor, c: float, noise_var: float, key=None) -> torch.Tensor:
        """``M^T (noise_var I + c M M^T)^-1 (y - forward(x))``: the gradient in ``x`` of
        ``log N(y; forward(x), noise_var I + c M M^T)`` (its covariance held fixed)."""
        if self.backend == "gram":  # nothing along the modes treated as outside the range
            denom = noise_var + c * self.lam
            ok = (self.lam > 0) & (denom > 0)
            inv = torch.where(ok, 1 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(denom))
            return self.problem.adjoint(self._gram_apply(self.problem.residual(x), inv)).to(x.dtype)
        u = self.solve_measurement(self.problem.residual(x), c, noise_var, key=key)
        return self.problem.adjoint(u).to(x.dtype)

    def project(self, x: torch.Tensor, target: torch.Tensor, rho: float = 0.0, key=None) -> torch.Tensor:
        """``x + (M^T M + rho I)^+ M^T (target - forward(x))``: for ``rho = 0`` the orthogonal
        projection of ``x`` onto ``{forward = target}`` (least squares when it is empty);
        ``target`` holds one row per row of ``x``."""
        return x + self.pinv(target - self.problem.forward(x), rho, key=key).to(x.dtype)

    # ---- spectral coordinates (an exact SVD of M), for per-singular-component samplers (DDRM, DDNM+, MCGdiff) ----
    #
    # ``M = U diag(s) V^T`` with orthonormal columns of ``U`` and ``V``: ``to_spectral(x) = V^T x``,
    # ``from_spectral(c) = V c``, ``singular_values`` the ``s`` of every spectral coordinate (0 where
    # ``M`` does not see it) and ``y_spectral = diag(s)^+ U^T (y - c)``. Where ``V`` has fewer columns
    # than the model dimension (``dense`` with fewer measurements than unknowns, average pooling) the
    # rest of the model space is ``null_part(x) = x - V V^T x``, on which ``M`` is zero. Available for
    # the ``svd`` backend (deepinv ``DecomposablePhysics`` whose ``V`` is orthonormal: inpainting,
    # Cartesian single-coil MRI), the ``dense`` backend, and invsolve's ``AveragePooling`` at any size
    # (``M M^T = f^-k / scale^2 I``: ``U = I``, ``V^T = M / s``). Any other ``M`` that acts on each
    # sample axis separately (separable blur with any boundary rule, bicubic downsampling) or is a
    # circular convolution (circular blur with any kernel, deepinv ``BlurFFT``, whose own real-FFT
    # ``V`` is not orthonormal in deepinv 0.5) gets the ``structured`` kind: Kronecker or FFT factors
    # probed from ``M`` (``spectral.py``; FFT coordinates are complex). ``spectral_unavailable()``
    # says why not otherwise (CT, reflect-padded motion blur beyond ``dense_max``).

    def spectral_unavailable(self) -> str | None:
        """``None`` when the exact spectral methods below apply, else the reason they do not."""
        if getattr(self, "_spectral_checked", False):
            return self._spectral_reason
        physics, reason = self.problem.physics, None
        self._spectral = self.backend
        if self.backend == "svd":
            g = torch.Generator().manual_seed(0)
            probe = torch.randn((1, *self.sample_shape), generator=g)
            spec = physics.V_adjoint(probe)
            mask = self._mask(spec)
            if spec.is_complex() or mask.is_complex():
                reason = f"{type(physics).__name__}'s singular vectors are complex"
            elif not (torch.allclose(spec.norm(), probe.norm(), rtol=1e-4)
                      and torch.allclose(physics.V(spec), probe, atol=1e-4 * float(probe.abs().max()))):
                reason = (f"{type(physics).__name__}'s V is not orthonormal (deepinv's BlurFFT keeps half of a "
                          "real FFT), so its mask is not the singular values of A")
        elif self.backend in ("cg", "gram") and isinstance(physics, AveragePooling):
            self._spectral = "pool"
            self._pool_s = (physics.factor ** -len(physics.axes)) ** 0.5 / abs(self.problem.scale)
        elif self.backend in ("cg", "gram"):
            reason = (f"{type(physics).__name__} has no exact SVD here: it is not a decomposable physics and its "
                      f"per-sample dimension {math.prod(self.sample_shape)} exceeds the dense limit")
        if reason is not None:  # a separable or circulant M still has one
            found, why = self._structured()
            reason = None if found else f"{reason}; it is {why}"
            if found:
                self._spectral = "structured"
        self._spectral_checked, self._spectral_reason = True, reason
        return reason

    def _structured(self) -> tuple[bool, str | None]:
        """Look for a Kronecker or circulant SVD of ``M`` (``spectral.structured_svd``), kept per physics
        object like the ``gram`` factorization (``_cached``)."""
        self._svd, why = self._cached("structured", lambda seen: structured_svd(
            self.problem.linear_forward, self.sample_shape, getattr(self.problem, "dtype", torch.float32), seen.device))
        return self._svd is not None, why

    def _require_spectral(self) -> str:
        reason = self.spectral_unavailable()
        if reason is not None:
            raise PhysicsError(f"no exact SVD of the operator: {reason}")
        return self._spectral

    def to_spectral(self, x: torch.Tensor) -> torch.Tensor:
        """``V^T x`` per row (``svd``: the physics' ``V_adjoint``, same shape; ``dense``: (N, r)
        float64; average pooling: measurement-shaped)."""
        kind = self._require_spectral()
        if kind == "svd":
            return self.problem.physics.V_adjoint(x)
        if kind == "dense":
            return self._rows(x) @ self.V
        if kind == "structured":
            return self._svd.to_spectral(x)
        return self.problem.linear_forward(x) / self._pool_s

    def from_spectral(self, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``V c`` in model space, shaped and typed like ``like``."""
        kind = self._require_spectral()
        if kind == "svd":
            out = self.problem.physics.V(c)
        elif kind == "dense":
            out = (c @ self.V.T).reshape(c.shape[0], *self.sample_shape)
        elif kind == "structured":
            out = self._svd.from_spectral(c)
        else:
            out = self.problem.adjoint(c) / self._pool_s
        return out.to(like.dtype)

    def singular_values(self, spectral: torch.Tensor) -> torch.Tensor:
        """The ``s`` of ``M`` for each spectral coordinate of ``spectral`` (broadcastable to it)."""
        kind = self._require_spectral()
        if kind == "svd":
            return (self._mask(spectral) / self.problem.scale).to(spectral.dtype).expand_as(spectral[:1])
        if kind == "dense":
            return self.s.reshape(1, -1)
        if kind == "structured":
            return self._svd.S
        return torch.full_like(spectral[:1], self._pool_s)

    def y_spectral(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """``diag(s)^+ U^T (y - c)`` for a model batch of ``batch`` rows (0 where ``s = 0``): the
        measurement as an unbiased estimate of ``V^T x`` on the seen coordinates; ``like`` gives the
        model dtype and device."""
        kind = self._require_spectral()
        r = self.problem.residual(torch.zeros((batch, *self.sample_shape), dtype=like.dtype, device=like.device))
        if kind == "svd":
            ur = self.problem.physics.U_adjoint(r)
        elif kind == "dense":
            ur = self._rows(r) @ self.U
        elif kind == "structured":
            ur = self._svd.measurement_spectral(r)
        else:
            ur = r.to(like.dtype)
        s = self.singular_values(ur)
        return torch.where(s != 0, ur / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(ur))

    def null_part(self, x: torch.Tensor) -> torch.Tensor:
        """``x - V V^T x``: the part of ``x`` outside the spectral coordinates (zeros for ``svd``,
        whose ``V`` is a full basis; its unseen coordinates are those with ``s = 0``)."""
        kind = self._require_spectral()
        if kind == "svd":
            return torch.zeros_like(x)
        if kind == "structured":
            return self._svd.null_part(x)
        return x - self.from_spectral(self.to_spectral(x), x)


# ---- sequential Monte Carlo: log weights and resampling --------------------------------------------
# Particles are grouped per posterior sample: log-weights have shape (n_groups, n_particles) and
# each group is normalized and resampled on its own. With a list of per-sample generators the
# groups are split evenly between them (group g belongs to generator g // (n_groups / len(list))),
# and every call draws the same numbers from each generator whatever the other groups do, so a
# batch of draws equals the same draws made one at a time.


def log_normalize(logw: torch.Tensor) -> torch.Tensor:
    """Log-weights normalized per group (last dimension): ``logw - logsumexp(logw)``; stable for
    any magnitude (log-weights of -1e4 are fine)."""
    return logw - torch.logsumexp(logw, dim=-1, keepdim=True)


def ess(logw: torch.Tensor) -> torch.Tensor:
    """Effective sample size ``1 / sum_p w_p^2`` of normalized weights, per group, from log-weights."""
    return torch.exp(-torch.logsumexp(2 * log_normalize(logw), dim=-1))


def group_uniforms(n_groups: int, count: int, generator: Generator, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n_groups, count)`` uniforms on [0, 1); with a list of generators, generator j draws the
    rows of its own groups only (``n_groups`` must be a multiple of the list's length)."""
    if generator is None or isinstance(generator, torch.Generator):
        device = device if device is not None or generator is None else generator.device
        return torch.rand((n_groups, count), generator=generator, dtype=dtype, device=device)
    if n_groups % len(generator):
        raise ConfigError(f"{n_groups} particle groups do not divide among {len(generator)} generators")
    per = n_groups // len(generator)
    return torch.cat([torch.rand((per, count), generator=g, dtype=dtype,
                                 device=device if device is not None else g.device) for g in generator])


def _inverse_cdf(logw: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Indices ``i`` with ``cdf[i-1] <= u < cdf[i]`` for each position ``u`` in [0, 1), per group."""
    cdf = torch.cumsum(log_normalize(logw.to(torch.float64)).exp(), dim=-1)
    cdf[..., -1] = 1.0  # rounding: the last bin always closes at 1
    idx = torch.searchsorted(cdf, positions.to(cdf.dtype).contiguous(), right=True)
    return idx.clamp_max(logw.shape[-1] - 1)


def systematic_resample(logw: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Systematic resampling (Kitagawa 1996): ancestor indices ``(n_groups, n_particles)`` for
    log-weights ``(n_groups, n_particles)``; one uniform ``u`` per group, positions ``(u + p) / P``.
    Particle ``p`` is copied ``floor(P w_p)`` or ``ceil(P w_p)`` times (unbiased counts)."""
    n_groups, n_particles = logw.shape
    u = group_uniforms(n_groups, 1, generator, device=logw.device)
    positions = (u + torch.arange(n_particles, dtype=torch.float64, device=logw.device)) / n_particles
    return _inverse_cdf(logw, positions)


def resample_if(logw: torch.Tensor, threshold: float, generator: Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Systematic resampling of the groups whose ESS is below ``threshold * n_particles``.

    Returns ``(indices, new_logw)``: resampled groups get their ancestors and uniform log-weights
    (``-log P``), the others the identity and their normalized log-weights. The uniforms are drawn
    for every group (used or not), so the generators advance alike whichever groups resample.
    ``threshold = 1``: resample whenever the weights are not uniform (TDS's default); 0: never.
    """
    n_groups, n_particles = logw.shape
    logw = log_normalize(logw)
    ancestors = systematic_resample(logw, generator)
    low = ess(logw) < threshold * n_particles
    identity = torch.arange(n_particles, device=logw.device).expand(n_groups, n_particles)
    indices = torch.where(low[:, None], ancestors, identity)
    new_logw = torch.where(low[:, None], torch.full_like(logw, -math.log(n_particles)), logw)
    return indices, new_logw


def draw_one(logw: torch.Tensor, generator: Generator) -> torch.Tensor:
    """One index per group drawn from its normalized weights (a single inverse-CDF draw), ``(n_groups,)``."""
    u = group_uniforms(logw.shape[0], 1, generator, device=logw.device)
    return _inverse_cdf(logw, u)[:, 0]


def to_groups(x: torch.Tensor, n_particles: int) -> torch.Tensor:
    """``(P * N, ...)`` particle-major rows (row ``p * N + g``: particle ``p`` of group ``g``, which
    keeps ``problem.tiled_y``'s sample-major matching) to ``(N, P, ...)``."""
    return x.reshape(n_particles, -1, *x.shape[1:]).transpose(0, 1)


def from_groups(x: torch.Tensor) -> torch.Tensor:
    """``(N, P, ...)`` back to the particle-major rows ``(P * N, ...)`` of ``to_groups``."""
    return x.transpose(0, 1).reshape(-1, *x.shape[2:])


def select(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Particle-major rows ``(P * N, ...)`` rearranged by per-group indices ``(N, P')``: particle
    ``p`` of group ``g`` becomes ``x``'s particle ``indices[g, p]`` of ``g``; returns ``(P' * N, ...)``."""
    grouped = to_groups(x, x.shape[0] // indices.shape[0])
    rows = torch.arange(indices.shape[0], device=x.device)[:, None]
    return from_groups(grouped[rows, indices.to(x.device)])


def particle_noise(shape: Sequence[int], n_particles: int, generator: Generator, dtype=None) -> torch.Tensor:
    """Standard normal noise for particle-major rows ``(P * N, ...)``; with a list of generators,
    generator j draws the particles of its own groups only (as ``randn`` does for samples)."""
    n = shape[0] // n_particles
    dtype = dtype if dtype is not None else getattr(shape, "dtype", torch.float32)
    return from_groups(randn((n * n_particles, *shape[1:]), generator, dtype).reshape(n, n_particles, *shape[1:]))


def heaviest(x: torch.Tensor, logw: torch.Tensor) -> torch.Tensor:
    """The particle of largest weight in each group: ``(P * N, ...)`` rows to ``(N, ...)`` (what SMC
    samplers report as the per-sample state and estimate, with every particle as ``particles``)."""
    return to_groups(x, logw.shape[1])[torch.arange(logw.shape[0], device=x.device), logw.argmax(1).to(x.device)]
