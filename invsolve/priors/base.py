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

from ..problem import ModelProblem, Problem, UnitMap
from operators.errors import ConfigError


@dataclasses.dataclass
class PriorCard:
    """What a sampler and a user need to know about a prior.

    ``scale`` and ``offset`` give the affine map from physical units to model space,
    ``x_model = scale * x_physical + offset`` (e.g. [0, 1] attenuation -> [-1, 1]:
    scale 2, offset -1). ``shape`` is (channels, *spatial) of one sample.
    """

    name: str
    kind: str  # "diffusion" | "flow" | "exact"
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
    def from_dict(cls, data: dict[str, Any]) -> "PriorCard":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"prior card has unknown fields {sorted(unknown)}; known fields: {sorted(names)}")
        data = dict(data)
        data["shape"] = tuple(data["shape"])
        if data.get("physical_range") is not None:
            data["physical_range"] = tuple(data["physical_range"])
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
        return self._view(problem)

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
