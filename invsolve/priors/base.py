"""The ``Prior`` contract: a denoiser ``D(x, sigma)`` in model space plus its card.

The prior also owns the view of a problem in its model space (``model_problem``): the affine
``UnitMap`` of its card for pixel priors (``invsolve.priors.latent`` overrides it with the decoder).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import torch
from torch import nn

import math

from ..problem import ModelProblem, Problem, UnitMap, fit_physics
from operators.errors import CheckpointError, ConfigError
from .adapters import PARAMETERIZATIONS

KINDS = ("diffusion", "flow", "exact", "bridge")


@dataclasses.dataclass
class PriorCard:
    """What a sampler and a user need to know about a prior.

    ``scale`` and ``offset`` give the affine map from physical units to model space,
    ``x_model = scale * x_physical + offset`` (e.g. [0, 1] attenuation -> [-1, 1]:
    scale 2, offset -1). ``shape`` is (channels, *spatial) of one sample.
    """

    name: str
    kind: str  # "diffusion" | "flow" | "exact" | "bridge"
    parameterization: str
    shape: tuple[int, ...]
    scale: float = 1.0
    offset: float = 0.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    physical_range: tuple[float, float] | None = None
    description: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def unit_map(self) -> UnitMap:
        """``x_model = scale * x_physical + offset``."""
        return UnitMap(self.scale, self.offset)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "PriorCard":
        """A card from its JSON form, checked field by field: a ``CheckpointError`` naming the field
        (and ``source``, the card's file, when given) for a missing, unknown or ill-typed field."""
        where = f"prior card {source}" if source else "prior card"

        def bad(field: str, why: str):
            return CheckpointError(f"{where}: field {field!r} {why}; fix the card or export the prior again")

        if not isinstance(data, dict):
            raise CheckpointError(f"{where} is not a JSON object (found {type(data).__name__}); "
                                  "fix the card or export the prior again")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CheckpointError(f"{where} has unknown fields {sorted(unknown)}; known fields: {sorted(names)}")
        missing = [k for k in ("name", "kind", "parameterization", "shape") if k not in data]
        if missing:
            raise CheckpointError(f"{where} lacks the field(s) {missing}; fix the card or export the prior again")
        data = dict(data)
        for field in ("name", "description"):
            if field in data and not isinstance(data[field], str):
                raise bad(field, f"must be a string, got {data[field]!r}")
        if data["kind"] not in KINDS:
            raise bad("kind", f"is {data['kind']!r}, not one of {list(KINDS)}")
        if data["parameterization"] not in PARAMETERIZATIONS + ("exact", "i2sb"):
            raise bad("parameterization", f"is {data['parameterization']!r}, not one of {list(PARAMETERIZATIONS)}")
        shape = data["shape"]
        if (not isinstance(shape, (list, tuple)) or not shape
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
            raise bad("shape", f"must be a list of positive integers (channels, *spatial), got {shape!r}")
        data["shape"] = tuple(shape)
        for field in ("scale", "offset", "sigma_min", "sigma_max", "sigma_data"):
            if field in data:
                value = data[field]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise bad(field, f"must be a finite number, got {value!r}")
                data[field] = float(value)
        if data.get("scale", 1.0) == 0:
            raise bad("scale", "is 0 (the map physical -> model space must be invertible)")
        for field in ("sigma_min", "sigma_max", "sigma_data"):
            if field in data and not data[field] > 0:
                raise bad(field, f"must be > 0, got {data[field]!r}")
        if not data.get("sigma_min", cls.sigma_min) < data.get("sigma_max", cls.sigma_max):
            raise bad("sigma_min", f"({data.get('sigma_min', cls.sigma_min)!r}) must be below sigma_max "
                                   f"({data.get('sigma_max', cls.sigma_max)!r})")
        if data.get("physical_range") is not None:
            pr = data["physical_range"]
            if (not isinstance(pr, (list, tuple)) or len(pr) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pr)
                    or not pr[0] < pr[1]):
                raise bad("physical_range", f"must be [lo, hi] with finite lo < hi, got {pr!r}")
            data["physical_range"] = tuple(float(v) for v in pr)
        if "metadata" in data and not isinstance(data["metadata"], dict):
            raise bad("metadata", f"must be a JSON object, got {type(data['metadata']).__name__}")
        return cls(**data)


class Prior(nn.Module):
    """A prior over images or volumes, seen by samplers only through ``D(x, sigma)``.

    ``denoiser`` maps ``(x, sigma)`` with ``x = x0 + sigma * eps`` in model space to an
    estimate of ``E[x0 | x]`` (see ``invsolve.priors.adapters``).
    """

    def __init__(self, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], card: PriorCard):
        super().__init__()
        self.denoiser = denoiser
        self.card = card

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.denoiser(x, sigma)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample of the model (for a ``LatentPrior``: one latent)."""
        return self.card.shape

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image in physical space: ``shape`` here, the decoded shape for a ``LatentPrior``."""
        return self.card.shape

    @property
    def sigma_min(self) -> float:
        return self.card.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.card.sigma_max

    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.card.unit_map.to_model(x_physical)

    def to_physical(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.card.unit_map.to_physical(x_model)

    def model_problem(self, problem: Problem | ModelProblem) -> ModelProblem:
        """``problem`` seen from this prior's model space (what samplers run on); idempotent.
        The view itself is ``_view``'s."""
        if isinstance(problem, ModelProblem):
            if problem.prior is not self:
                raise ConfigError("this problem is already seen from another prior's model space; "
                                  "pass the physical iv.Problem instead")
            return problem
        check_problem_prior(problem, self)
        cached = problem.cached_view(self)
        if cached is not None:
            return cached
        view = self._view(problem)
        if view.fit is None and view.x_shape is not None:
            # one probe A call: a 1-channel prior on complex physics sees it through the real channel,
            # the state dtype follows what the physics takes, shapes are checked (problem.fit_physics)
            view.fit = fit_physics(view.physics, view.x_shape, problem.y, who=f"prior {self.card.name!r}")
        return problem.cache_view(self, view)

    def _view(self, problem: Problem) -> ModelProblem:
        """The card's affine map, or the problem's own ``scale``/``offset`` where it was given one."""
        return ModelProblem(problem, problem.unit_map or self.card.unit_map, self.shape, prior=self)

    def __repr__(self) -> str:
        c = self.card
        return (f"Prior({c.name!r}, kind={c.kind}, parameterization={c.parameterization}, shape={c.shape}, "
                f"sigma=[{c.sigma_min:g}, {c.sigma_max:g}])")


def check_problem_prior(problem: Problem, prior: Prior) -> None:
    """A ``ConfigError`` when ``problem`` was built for a prior other than ``prior``."""
    own = problem.prior
    if own is not None and own is not prior and own.card != prior.card:
        raise ConfigError(f"the problem was built with prior {own.card.name!r} but is sampled with "
                          f"{prior.card.name!r}; pass the same prior to iv.Problem(..., prior=...) and iv.sample")
