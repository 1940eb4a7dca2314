"""Sampler primitives: noise grids, steps, the guided denoiser, noise, callbacks, model-space solves.

Every sampler file is a short loop over these (the pattern of the primitives block of
k-diffusion's ``sampling.py``). All of them work in invsolve's VE coordinates: the state is
``x = x0 + sigma * eps`` in the prior's model space and ``D(x, sigma) ~ E[x0 | x]``; ``problem`` is
the model-space view of the user's ``Problem`` (``invsolve.problem.ModelProblem``). Derivations of
the grids and steps are in docs/samplers.md.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from deepinv.physics import DecomposablePhysics

from operators.errors import ConfigError
from operators.linalg import cg, least_squares

from ..priors.adapters import DDPMSchedule

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


GRIDS = {"karras": karras_sigmas, "ddpm": ddpm_sigmas, "uniform": uniform_ddpm_sigmas, "quad": quad_ddpm_sigmas}


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


# ---- guidance and data terms ----------------------------------------------------------------------


def residual_norm(problem, x0: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Sum over the batch of each sample's ``||y - A(x0)||`` (``l2``) or its square (``l2sq``)."""
    r = problem.residual(x0).reshape(x0.shape[0], -1)
    if r.is_complex():
        r = torch.view_as_real(r).reshape(r.shape[0], -1)
    sq = r.pow(2).sum(1)
    if norm == "l2":
        return sq.sqrt().sum()
    if norm == "l2sq":
        return sq.sum()
    raise ConfigError(f"norm must be 'l2' or 'l2sq', got {norm!r}")


def guided_denoise(prior, problem, x: torch.Tensor, sigma: float, norm: str = "l2", clip=None, loss=None):
    """``(x0_hat, grad_x loss(x0_hat))`` with ``x0_hat = D(x, sigma)``: the gradient through the
    denoiser shared by DPS-type samplers, per sample.

    ``loss`` maps the denoised batch to a scalar summing per-sample terms; by default
    ``residual_norm(problem, x0_hat, norm)`` (DPS). ``<v, x0_hat>`` with a fixed ``v`` gives a
    vector-Jacobian product through the denoiser (ΠGDM).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        denoised = prior(x, sigma)
        if clip is not None:
            denoised = clip(denoised)
        value = residual_norm(problem, denoised, norm) if loss is None else loss(denoised)
        (grad,) = torch.autograd.grad(value, x)
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


def model_clip(prior, problem):
    """A function clamping model-space values to the prior's physical range (or None)."""
    rng = getattr(prior.card, "physical_range", None)
    if rng is None:
        return None
    lo, hi = sorted(problem.to_model(torch.tensor(v, dtype=torch.float64)).item() for v in rng)
    return lambda x: x.clamp(lo, hi)


# ---- noise and callbacks ----------------------------------------------------------------------------


def randn(shape: Sequence[int], generator: Generator, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal noise; with a list of generators, draw j's rows come from generator j only.

    ``device`` defaults to the generator's device (a CUDA generator draws on its GPU)."""
    if generator is None or isinstance(generator, torch.Generator):
        device = device if device is not None or generator is None else generator.device
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    per = shape[0] // len(generator)
    return torch.cat([torch.randn((per, *shape[1:]), generator=g, dtype=dtype,
                                  device=device if device is not None else g.device) for g in generator])


def step_noise(like: torch.Tensor, generator: Generator, sigma_next: float) -> torch.Tensor:
    """Fresh noise for a step to ``sigma_next``; zeros (no draw) for the final step to 0."""
    return randn(like.shape, generator) if sigma_next > 0 else torch.zeros_like(like)


def report(callback: Callable[[dict], None] | None, step: int, steps: int, sigma: float, x: torch.Tensor,
           denoised: torch.Tensor, **extra) -> None:
    """Send ``{"step", "steps", "sigma", "x", "denoised", **extra}`` to ``callback`` (if any)."""
    if callback is not None:
        callback({"step": step, "steps": steps, "sigma": sigma, "x": x, "denoised": denoised, **extra})


# ---- model-space linear algebra ---------------------------------------------------------------------

CG_ITERS = 100
CG_TOL = 1e-6
DENSE_MAX = 1024


class LinearPart:
    """The model-space linear part ``M`` of ``problem.forward`` (``forward(x) = M x + c``, with
    ``M v = problem.linear_forward(v)`` and ``M^T = problem.adjoint``), set up once per sampler run,
    with the solves that projection and closed-form-likelihood samplers need. The backend is chosen
    once:

    - ``"svd"``: a deepinv ``DecomposablePhysics`` (``A = U diag(s) V^*``: inpainting masks,
      Cartesian MRI, ...), exact closed forms;
    - ``"dense"``: real physics whose per-sample model dimension is at most ``dense_max``: ``M`` is
      assembled from ``d`` forward calls and factored by a thin SVD in float64, exact;
    - ``"cg"``: any other ``LinearPhysics`` (CT, blur, large images): ``operators.linalg.cg`` with
      ``iters`` steps per solve, each posterior sample on its own.

    ``x_shape`` is the model batch shape ``(N, *sample_shape)``; the physics must act on each batch
    row alike (as every sampler assumes when it tiles ``y``). ``who`` names the sampler in the
    ``PhysicsError`` raised for nonlinear physics.
    """

    def __init__(self, problem, x_shape, iters: int = CG_ITERS, tol: float = CG_TOL, dense_max: int = DENSE_MAX,
                 who: str = "this sampler's closed-form data step"):
        problem = problem.view()  # a Problem's model-space view (a view is its own)
        problem.require_linear(who)
        self.problem, self.iters, self.tol = problem, iters, tol
        self.sample_shape = tuple(x_shape[1:])
        self.backend = "cg"
        if isinstance(problem.physics, DecomposablePhysics):
            self.backend = "svd"
        elif math.prod(self.sample_shape) <= dense_max:
            self._assemble()

    def _assemble(self) -> None:
        d = math.prod(self.sample_shape)
        with torch.no_grad():
            basis = torch.eye(d).reshape(d, *self.sample_shape)
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

    def pinv(self, r: torch.Tensor, rho: float = 0.0) -> torch.Tensor:
        """``(M^T M + rho I)^+ M^T r`` per row of the measurement-space ``r`` (model space out);
        ``rho = 0``: the pseudo-inverse ``M^+ r`` (minimum-norm least squares)."""
        if rho < 0:
            raise ConfigError(f"rho must be >= 0, got {rho}")
        if self.backend == "svd":
            physics = self.problem.physics
            s = self._mask(r) / self.problem.scale
            s2 = s.abs() ** 2
            inv = torch.where(s2 + rho > 1e-10, s.conj() / (s2 + rho).clamp_min(1e-10), torch.zeros_like(s))
            return physics.V(physics.U_adjoint(r) * inv)
        if self.backend == "cg":
            return least_squares(self.problem.linear_forward, self.problem.adjoint, r, rho=rho,
                                 iters=self.iters, tol=self.tol)
        s = self.s
        gain = torch.where(s ** 2 + rho > 0, s / torch.where(s ** 2 + rho > 0, s ** 2 + rho, torch.ones_like(s)),
                           torch.zeros_like(s))
        out = ((self._rows(r) @ self.U) * gain) @ self.V.T
        return out.reshape(r.shape[0], *self.sample_shape)

    def solve_measurement(self, r: torch.Tensor, c: float, noise_var: float) -> torch.Tensor:
        """``(noise_var I + c M M^T)^-1 r`` for measurement-space ``r`` (one row per sample); with
        ``noise_var = 0``, ``(c M M^T)^+ r`` (zero on directions ``M`` does not reach)."""
        if self.backend == "svd":
            physics = self.problem.physics
            ur = physics.U_adjoint(r)
            denom = noise_var + c * (self._mask(ur).abs() ** 2 / self.problem.scale ** 2)
            inv = torch.where(denom > 0, 1 / torch.where(denom > 0, denom, torch.ones_like(denom)),
                              torch.zeros_like(denom))
            return physics.U(ur * inv)
        if self.backend == "cg":
            def apply(u):
                return noise_var * u + c * self.problem.linear_forward(self.problem.adjoint(u))

            return cg(apply, r, iters=self.iters, tol=self.tol)
        rows = self._rows(r)
        coef = rows @ self.U
        denom = noise_var + c * self.s ** 2
        inv = torch.where(denom > 0, 1 / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        out = (coef * inv) @ self.U.T
        if noise_var > 0:  # directions outside the range of M
            out = out + (rows - coef @ self.U.T) / noise_var
        return out.reshape(r.shape).to(r.dtype)

    def likelihood_score(self, x: torch.Tensor, c: float, noise_var: float) -> torch.Tensor:
        """``M^T (noise_var I + c M M^T)^-1 (y - forward(x))``: the gradient in ``x`` of
        ``log N(y; forward(x), noise_var I + c M M^T)`` (its covariance held fixed)."""
        u = self.solve_measurement(self.problem.residual(x), c, noise_var)
        return self.problem.adjoint(u).to(x.dtype)

    def project(self, x: torch.Tensor, target: torch.Tensor, rho: float = 0.0) -> torch.Tensor:
        """``x + (M^T M + rho I)^+ M^T (target - forward(x))``: for ``rho = 0`` the orthogonal
        projection of ``x`` onto ``{forward = target}`` (least squares when it is empty);
        ``target`` holds one row per row of ``x``."""
        return x + self.pinv(target - self.problem.forward(x), rho).to(x.dtype)
