"""Sampler contract: hyperparameters, the ``Posterior`` result, the registry, NFE counting and ``sample``.

Every sampler is a frozen dataclass of hyperparameters whose ``run(prior, problem, x_shape,
generator, callback)`` returns model-space samples (or ``(samples, extras)``: other estimated
quantities, e.g. BlindDPS's kernels); ``problem`` is the prior's model-space view
of the user's problem (``Prior.model_problem``). ``sample`` counts the denoiser calls (the NFE)
and turns the samples into a ``Posterior`` in physical units. Samplers see the state
``x = x0 + sigma * eps`` and the denoiser ``D(x, sigma)`` only; their shared steps are in
``toolkit.py``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from typing import Callable

import torch

from operators.errors import ConfigError, PhysicsError, UnknownNameError, UnknownOptionError, closest_first

from .toolkit import Generator, StateShape

_SAMPLERS: dict[str, type] = {}


@dataclasses.dataclass
class Posterior:
    """Posterior samples in physical units.

    ``samples`` has shape (n_samples, B, *x_shape): ``samples[j]`` is the j-th draw for
    every one of the B measurements; ``mean`` and ``std`` (B, *x_shape) are taken over
    draws (``std`` is 0 for one draw). ``nfe`` counts denoiser evaluations per posterior sample:
    a call on ``K`` particles per sample (SMC) counts ``K``.
    """

    samples: torch.Tensor
    nfe: int | float
    seconds: float
    method: str = ""
    config: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)
    """Other quantities a sampler estimates with the image, each (n_samples, B, ...) like ``samples``
    (BlindDPS: ``"kernels"``)."""

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


def names(bridge: bool | None = None) -> list[str]:
    """Names of every registered sampler, sorted; ``bridge=True`` only those of bridge priors (I2SB,
    CDDB), ``bridge=False`` only those of diffusion and flow priors."""
    return sorted(n for n, cls in _SAMPLERS.items() if bridge is None or getattr(cls, "bridge", False) == bridge)


def get(name: str) -> type:
    """The sampler class registered as ``name``; an ``UnknownNameError`` lists the names, closest first."""
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
    check_values(cls, name, params)
    return cls(**params)


# integer counts that must be >= 1 (other integer hyperparameters must be >= 0); a sampler class may
# widen or narrow these with a ``COUNT_MINIMUM`` dict of its own
COUNT_MINIMUM = {"steps": 1, "levels": 1, "particles": 1, "ode_steps": 1, "dense_max": 1}


def check_values(cls, name: str, params: dict) -> None:
    """The generic checks of every sampler's hyperparameters (before its own ``__post_init__``):
    numbers finite, integer counts integers within range, flags booleans. A ``ConfigError`` naming
    the sampler and the field; integral floats given for integer counts (``steps=10.0``) become ints."""
    hints = typing.get_type_hints(cls)
    minimum = {**COUNT_MINIMUM, **getattr(cls, "COUNT_MINIMUM", {})}
    for f in dataclasses.fields(cls):
        if f.name not in params:
            continue
        value, hint = params[f.name], hints.get(f.name)
        allowed = set(typing.get_args(hint)) or {hint}
        if value is None and type(None) in allowed:
            continue
        if allowed <= {bool, type(None)}:
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: hyperparameter {f.name} must be true or false, got {value!r}")
        elif int in allowed and float not in allowed:
            if str in allowed and isinstance(value, str):  # e.g. tpdm's aux_axis: "coronal" or 1
                continue
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = params[f.name] = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}: hyperparameter {f.name} must be an integer, got {value!r}")
            low = minimum.get(f.name, 0)
            if value < low:
                raise ConfigError(f"{name}: hyperparameter {f.name} must be >= {low}, got {value}")
        elif float in allowed:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if str in allowed and isinstance(value, str):
                    continue
                raise ConfigError(f"{name}: hyperparameter {f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name}: hyperparameter {f.name} must be finite, got {value}")


def nfe_overrides(name: str, nfe: int, particles: int | None = None) -> dict:
    """Hyperparameter overrides giving sampler ``name`` about ``nfe`` denoiser evaluations.

    A sampler whose NFE is not its ``steps`` field defines ``for_nfe(nfe) -> dict``
    (e.g. DAPS splits the budget into annealing levels x ODE steps). A particle sampler
    (a ``particles`` field; every step evaluates every particle) keeps its particle count ``K``
    (``particles``, default the sampler's default, e.g. a preset's) while the budget allows ``MIN_PARTICLE_STEPS`` steps of them, and takes
    ``nfe // K`` steps; below that it keeps ``min(nfe, MIN_PARTICLE_STEPS)`` steps and cuts the
    particles to ``nfe // steps`` (at least 1), so a small budget never becomes a single step.
    """
    cls = get(name)
    for_nfe = getattr(cls, "for_nfe", None)
    if for_nfe is not None:
        return dict(for_nfe(nfe))
    nfe = max(1, int(nfe))
    if not hasattr(cls, "particles"):
        return {"steps": nfe}
    particles = int(particles if particles is not None else cls.particles)
    steps = max(nfe // particles, min(nfe, MIN_PARTICLE_STEPS))
    return {"steps": steps, "particles": max(1, min(particles, nfe // steps))}


# the fewest steps a particle sampler's budget buys before its particles are cut (nfe_overrides)
MIN_PARTICLE_STEPS = 20


def per_row(evaluated: int, rows: int) -> int | float:
    """Evaluated rows per state row: an int when it divides evenly."""
    q, r = divmod(evaluated, rows)
    return q if r == 0 else evaluated / rows


class CountingPrior:
    """``prior`` with a count of its denoiser evaluations: the one place NFE is counted.

    ``calls`` counts evaluated rows divided by ``rows`` (the number of posterior-sample rows of
    the state): a call on the whole batch of samples counts 1, a call on ``K`` particles per sample
    counts ``K``. Other attributes are the prior's."""

    def __init__(self, prior, rows: int = 1):
        self.prior = prior
        self.rows = rows
        self.evaluated = 0
        # a float32 network prior meets a float64 state (float64 physics) in float32, cast in and out
        dtypes = [t.dtype for t in (*prior.parameters(), *prior.buffers()) if t.is_floating_point()] \
            if isinstance(prior, torch.nn.Module) else []
        self.net_dtype = dtypes[0] if dtypes and all(d == dtypes[0] for d in dtypes) else None

    @property
    def calls(self) -> int | float:
        return per_row(self.evaluated, self.rows)

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        self.evaluated += x.shape[0]
        if x.dtype == torch.float64 and self.net_dtype is not None and self.net_dtype != torch.float64:
            return self.prior(x.to(self.net_dtype), sigma, **kwargs).to(x.dtype)
        return self.prior(x, sigma, **kwargs)  # kwargs: e.g. a slice-wise prior's axis (TPDM)

    def __getattr__(self, name):
        return getattr(self.prior, name)


def require_physics_access(name: str, sampler, view) -> None:
    """``PhysicsError`` when the physics is a black box (``operators.blackbox.BlackBox``: forward
    evaluations only) and the sampler needs more (gradients, adjoints, an SVD): every sampler but
    the ``derivative_free`` ones."""
    black = any(getattr(p, "black_box", False) for p in (view.physics, view.problem.physics))
    if black and not getattr(type(sampler), "derivative_free", False):
        free = sorted(n for n in names() if getattr(get(n), "derivative_free", False))
        raise PhysicsError(f"sampler {name!r} needs gradients or adjoints of the forward model, and "
                           f"{type(view.problem.physics).__name__} is a black box (forward evaluations only); "
                           f"use a derivative-free sampler: {', '.join(free)}")


def require_prior_kind(name: str, sampler, prior) -> None:
    """``ConfigError`` unless a bridge sampler (``bridge = True``: I2SB, CDDB) gets a bridge prior and every
    other sampler a denoiser prior: a bridge's ``x0_hat(x_t, t)`` is not a denoiser ``D(x, sigma)``."""
    card = getattr(prior, "card", None)
    is_bridge = getattr(card, "kind", None) == "bridge"
    wants_bridge = getattr(type(sampler), "bridge", False)
    if is_bridge and not wants_bridge:
        bridges = names(bridge=True)
        raise ConfigError(f"prior {card.name!r} is an I2SB bridge, not a diffusion or flow prior: sample it with "
                          f"{' or '.join(bridges)}, not {name!r}")
    if wants_bridge and not is_bridge:
        raise ConfigError(f"sampler {name!r} needs a bridge prior (invsolve train --objective bridge, e.g. "
                          f"ct-phantom64-bridge-sparse8); prior {getattr(card, 'name', type(prior).__name__)!r} is a "
                          f"{getattr(card, 'kind', 'different')} prior")


def sample(name: str, prior, problem, n_samples: int = 1, generator: Generator = None,
           preset: str | None = None, callback: Callable[[dict], None] | None = None,
           batch_size: int | None = None, **overrides) -> Posterior:
    """Draw ``n_samples`` posterior samples for every measurement of ``problem``.

    ``generator`` is one ``torch.Generator`` for the whole batch, or a list of
    ``n_samples`` generators, one per draw (then draws do not depend on each other's
    randomness). ``callback`` receives ``{"step", "steps", "sigma", "x", "denoised"}``.

    ``batch_size``: run the sampler on at most this many draws at a time (each for every
    measurement), one run after the other; default all at once. Large batches can be slower per
    draw than small ones on CPU (docs/samplers.md, throughput) and need memory in proportion. With
    one generator per draw the samples are those of one batch, up to the rounding of the network's
    batched kernels (oneDNN rounds differently per batch size; bit-identical for a fixed
    ``batch_size``); with a single generator the runs draw from it in turn (same seed and
    ``batch_size``: same samples). With more than one run the callback's dicts also carry
    ``"draws": (first, end)``, the draws of that run, and ``"runs"``, their number.
    """
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples must be an integer >= 1, got {n_samples}")
    if not isinstance(generator, (torch.Generator, type(None))) and len(generator) != n_samples:
        raise ConfigError(f"got {len(generator)} generators for n_samples={n_samples}; pass one per draw or a single one")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be an integer >= 1 (draws per run) or None, got {batch_size!r}")
    sampler = configure(name, preset, **overrides)
    require_prior_kind(name, sampler, prior)
    view = prior.model_problem(problem)
    require_physics_access(name, sampler, view)
    size = n_samples if batch_size is None else min(batch_size, n_samples)
    runs = [(first, min(first + size, n_samples)) for first in range(0, n_samples, size)]
    xs, extras_list, evaluated, seconds = [], [], 0, 0.0
    for first, end in runs:
        gen = generator if isinstance(generator, (torch.Generator, type(None))) else list(generator[first:end])
        x_shape = StateShape(((end - first) * view.batch, *view.x_shape), dtype=view.dtype)
        counted = CountingPrior(prior, rows=x_shape[0])
        report_to = callback
        if callback is not None and len(runs) > 1:
            def report_to(info, draws=(first, end)):
                callback({**info, "draws": draws, "runs": len(runs)})
        start = time.perf_counter()
        x = sampler.run(counted, view, x_shape, gen, report_to)
        seconds += time.perf_counter() - start
        x, extras = x if isinstance(x, tuple) else (x, {})  # run may return (x, {name: (N, ...) tensor})
        xs.append(x.detach())
        extras_list.append(extras)
        evaluated += counted.evaluated
    x = torch.cat(xs)
    extras = {key: torch.cat([e[key] for e in extras_list]) for key in extras_list[0]}
    with torch.no_grad():
        samples = view.to_physical(x)
    samples = samples.reshape(n_samples, view.batch, *samples.shape[1:])
    extras = {key: value.reshape(n_samples, view.batch, *value.shape[1:]) for key, value in extras.items()}
    return Posterior(samples, per_row(evaluated, n_samples * view.batch), seconds, method=name, config=dataclasses.asdict(sampler), extras=extras)
