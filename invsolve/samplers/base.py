"""Sampler contract: hyperparameters, the ``Posterior`` result, the registry and ``sample``.

Every sampler is a frozen dataclass of hyperparameters whose ``run(prior, problem,
x_shape, generator, callback)`` returns model-space samples and its NFE; ``sample``
turns that into a ``Posterior`` in physical units. Samplers see the state
``x = x0 + sigma * eps`` and the denoiser ``D(x, sigma)`` only (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import torch

_SAMPLERS: dict[str, type] = {}

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass
class Posterior:
    """Posterior samples in physical units.

    ``samples`` has shape (n_samples, B, *x_shape): ``samples[j]`` is the j-th draw for
    every one of the B measurements; ``mean`` and ``std`` (B, *x_shape) are taken over
    draws (``std`` is 0 for one draw). ``nfe`` counts denoiser evaluations per sample.
    """

    samples: torch.Tensor
    nfe: int
    seconds: float
    method: str = ""
    config: dict = dataclasses.field(default_factory=dict)

    @property
    def mean(self) -> torch.Tensor:
        return self.samples.mean(0)

    @property
    def std(self) -> torch.Tensor:
        if self.samples.shape[0] < 2:
            return torch.zeros_like(self.samples[0])
        return self.samples.std(0)


def register(name: str):
    """Class decorator adding a sampler to the registry under ``name``."""
    def wrap(cls):
        if name in _SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        cls.name = name
        _SAMPLERS[name] = cls
        return cls
    return wrap


def names() -> list[str]:
    return sorted(_SAMPLERS)


def get(name: str) -> type:
    if name not in _SAMPLERS:
        raise KeyError(f"unknown sampler {name!r}; available: {', '.join(names())}")
    return _SAMPLERS[name]


def configure(name: str, preset: str | None = None, **overrides):
    """Build the sampler ``name`` from its defaults, an optional named preset and overrides."""
    cls = get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    params = {}
    if preset is not None:
        presets = getattr(cls, "PRESETS", {})
        if preset not in presets:
            raise KeyError(f"sampler {name!r} has no preset {preset!r}; presets: {', '.join(sorted(presets)) or 'none'}")
        params.update(presets[preset])
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"{name} got unknown hyperparameters {sorted(unknown)}; valid ones: {sorted(fields)}")
    params.update(overrides)
    return cls(**params)


def nfe_overrides(name: str, nfe: int) -> dict:
    """Hyperparameter overrides giving sampler ``name`` about ``nfe`` denoiser evaluations.

    A sampler whose NFE is not its ``steps`` field defines ``for_nfe(nfe) -> dict``
    (e.g. DAPS splits the budget into annealing levels x ODE steps).
    """
    cls = get(name)
    for_nfe = getattr(cls, "for_nfe", None)
    return dict(for_nfe(nfe)) if for_nfe is not None else {"steps": int(nfe)}


def sample(name: str, prior, problem, n_samples: int = 1, generator: Generator = None,
           preset: str | None = None, callback: Callable[[dict], None] | None = None, **overrides) -> Posterior:
    """Draw ``n_samples`` posterior samples for every measurement of ``problem``.

    ``generator`` is one ``torch.Generator`` for the whole batch, or a list of
    ``n_samples`` generators, one per draw (then draws do not depend on each other's
    randomness). ``callback`` receives ``{"step", "steps", "sigma", "x", "denoised"}``.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not isinstance(generator, (torch.Generator, type(None))) and len(generator) != n_samples:
        raise ValueError(f"got {len(generator)} generators for n_samples={n_samples}; pass one per draw or a single one")
    sampler = configure(name, preset, **overrides)
    from ..priors.latent import LatentPrior

    if isinstance(prior, LatentPrior):  # sample latents; the problem sees them through the decoder
        problem = prior.compose(problem)
    x_shape = problem.x_shape or tuple(prior.shape)
    start = time.perf_counter()
    x, nfe = sampler.run(prior, problem, (n_samples * problem.batch, *x_shape), generator, callback)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        samples = problem.to_physical(x.detach())
    samples = samples.reshape(n_samples, problem.batch, *samples.shape[1:])
    return Posterior(samples, nfe, seconds, method=name, config=dataclasses.asdict(sampler))


def randn(shape: Sequence[int], generator: Generator, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal noise; with a list of generators, draw j's rows come from generator j only.

    ``device`` defaults to the generator's device (a CUDA generator draws on its GPU)."""
    if generator is None or isinstance(generator, torch.Generator):
        device = device if device is not None or generator is None else generator.device
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    per = shape[0] // len(generator)
    return torch.cat([torch.randn((per, *shape[1:]), generator=g, dtype=dtype,
                                  device=device if device is not None else g.device) for g in generator])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM grid (Karras et al. 2022, eq. 5) of ``steps`` noise levels, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho = 1 / rho
    sigmas = (sigma_max ** inv_rho + ramp * (sigma_min ** inv_rho - sigma_max ** inv_rho)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def ddpm_sigmas(steps: int, sigma_min: float, sigma_max: float, timesteps: int = 1000) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of the linear-beta DDPM schedule (1e-4..0.02 over
    ``timesteps``), respaced evenly to ``steps`` levels as guided-diffusion does, clipped to the
    prior's range, then 0."""
    from ..priors.adapters import DDPMSchedule

    all_sigmas = DDPMSchedule(timesteps=timesteps).sigmas
    idx = torch.linspace(timesteps - 1, 0, steps).round().long()
    sigmas = all_sigmas[idx].clamp(sigma_min, sigma_max)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def sigma_grid(schedule: str, steps: int, prior, sigma_max: float | None = None,
               sigma_min: float | None = None) -> torch.Tensor:
    """Decreasing noise levels ending in 0 for ``schedule`` in {"karras", "ddpm"}, within the prior's range."""
    lo = max(sigma_min or prior.sigma_min, prior.sigma_min)
    hi = min(sigma_max or prior.sigma_max, prior.sigma_max)
    if schedule == "karras":
        return karras_sigmas(steps, lo, hi)
    if schedule == "ddpm":
        return ddpm_sigmas(steps, lo, hi)
    raise ValueError(f"unknown schedule {schedule!r}; choose 'karras' or 'ddpm'")


def ancestral_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float,
                   noise: torch.Tensor) -> torch.Tensor:
    """Draw from q(x_next | x, x0 = denoised): the DDPM posterior step written in VE coordinates.

    mean ``x0 + (s'^2 / s^2)(x - x0)``, variance ``s'^2 (s^2 - s'^2) / s^2``; with VP
    rescaling this is DDPM's ancestral step with the posterior variance beta-tilde.
    """
    ratio = (sigma_next / sigma) ** 2
    std = sigma_next * math.sqrt(max(0.0, 1 - ratio))
    return denoised + ratio * (x - denoised) + std * noise


def model_clip(prior, problem):
    """A function clamping model-space values to the prior's physical range (or None)."""
    rng = getattr(prior.card, "physical_range", None)
    if rng is None:
        return None
    lo, hi = sorted(problem.to_model(torch.tensor(v, dtype=torch.float64)).item() for v in rng)
    return lambda x: x.clamp(lo, hi)
