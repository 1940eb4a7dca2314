"""Sampler contract: hyperparameters, the ``Posterior`` result, the registry, NFE counting and ``sample``.

Every sampler is a frozen dataclass of hyperparameters whose ``run(prior, problem, x_shape,
generator, callback)`` returns model-space samples; ``problem`` is the prior's model-space view
of the user's problem (``Prior.model_problem``). ``sample`` counts the denoiser calls (the NFE)
and turns the samples into a ``Posterior`` in physical units. Samplers see the state
``x = x0 + sigma * eps`` and the denoiser ``D(x, sigma)`` only; their shared steps are in
``toolkit.py``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from operators.errors import ConfigError, UnknownNameError, UnknownOptionError, closest_first

from .toolkit import Generator

_SAMPLERS: dict[str, type] = {}


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
            raise ConfigError(f"sampler {name!r} is already registered")
        cls.name = name
        _SAMPLERS[name] = cls
        return cls
    return wrap


def names() -> list[str]:
    return sorted(_SAMPLERS)


def get(name: str) -> type:
    if name not in _SAMPLERS:
        raise UnknownNameError(f"unknown sampler {name!r}; available: {closest_first(str(name), names())}")
    return _SAMPLERS[name]


def configure(name: str, preset: str | None = None, **overrides):
    """Build the sampler ``name`` from its defaults, an optional named preset and overrides."""
    cls = get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    params = {}
    if preset is not None:
        presets = getattr(cls, "PRESETS", {})
        if preset not in presets:
            raise UnknownNameError(f"sampler {name!r} has no preset {preset!r}; presets: "
                                   f"{closest_first(str(preset), presets) or 'none'}")
        params.update(presets[preset])
    unknown = set(overrides) - fields
    if unknown:
        raise UnknownOptionError(f"{name} got unknown hyperparameters {sorted(unknown)}; valid ones: "
                                 f"{closest_first(sorted(unknown)[0], fields)}")
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


class CountingPrior:
    """``prior`` with a count of its denoiser calls: the one place NFE is counted.

    Every call evaluates the whole batch of posterior samples at once, so ``calls`` is the number
    of denoiser evaluations per sample. Other attributes are the prior's."""

    def __init__(self, prior):
        self.prior = prior
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.prior(x, sigma, **kwargs)  # kwargs: e.g. a slice-wise prior's axis (TPDM)

    def __getattr__(self, name):
        return getattr(self.prior, name)


def sample(name: str, prior, problem, n_samples: int = 1, generator: Generator = None,
           preset: str | None = None, callback: Callable[[dict], None] | None = None, **overrides) -> Posterior:
    """Draw ``n_samples`` posterior samples for every measurement of ``problem``.

    ``generator`` is one ``torch.Generator`` for the whole batch, or a list of
    ``n_samples`` generators, one per draw (then draws do not depend on each other's
    randomness). ``callback`` receives ``{"step", "steps", "sigma", "x", "denoised"}``.
    """
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples must be an integer >= 1, got {n_samples}")
    if not isinstance(generator, (torch.Generator, type(None))) and len(generator) != n_samples:
        raise ConfigError(f"got {len(generator)} generators for n_samples={n_samples}; pass one per draw or a single one")
    sampler = configure(name, preset, **overrides)
    view = prior.model_problem(problem)
    counted = CountingPrior(prior)
    start = time.perf_counter()
    x = sampler.run(counted, view, (n_samples * view.batch, *view.x_shape), generator, callback)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        samples = view.to_physical(x.detach())
    samples = samples.reshape(n_samples, view.batch, *samples.shape[1:])
    return Posterior(samples, counted.calls, seconds, method=name, config=dataclasses.asdict(sampler))
