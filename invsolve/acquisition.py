"""Active Diffusion Subsampling (ADS): choose Cartesian MRI lines during posterior sampling.

Paper: O. Nolan, T. S. W. Stevens, W. L. van Nierop, R. J. G. van Sloun, "Active Diffusion
Subsampling", 2024 (project page active-diffusion-subsampling.github.io).
Official code: https://github.com/active-diffusion-subsampling/ads (``ActiveSampler.py``,
``ddim.py::active_sampling``, ``guidance/pixel_guidance.py``).

Rule (the official loop, invsolve's samplers): ``n_samples`` posterior samples ("particles") of one
slice share one column mask, starting from the ``acs`` centre columns. A guided sampler (DPS by
default) runs as usual; at evenly spaced steps inside ``[start, stop) x steps`` the acquisition
callback takes the particles' denoised estimates ``x0_j``, their full k-space ``Y_j = F x0_j``, and
scores every column ``l`` not yet measured:

    variance (default):  s(l) = sum over rows and re/im of Var_j Y_j[:, l]
    entropy:             s(l) = -sum_i log sum_j exp(-||Y_i[:, l] - Y_j[:, l]||^2 / (2 s^2))

(the Gaussian-mixture entropy estimate with kernel width ``s``, default the median of the positive
pairwise distances over the unmeasured columns), acquires the best column (``acquire(column)`` returns its k-space), adds it to the mask
and the measurement, and sampling continues with the new data. ``lines`` columns are measured in
the end; the chosen mask and the order of acquisition are returned with the posterior.

Differences from the official code: any invsolve sampler that reads the physics at every step
(``SAMPLERS``; not the ones that factorise the operator once), invsolve's DPS presets instead of
its Keras DDIM; the entropy surrogate uses the standard negative exponent (the official code's
``column_entropy`` has a positive one) and a scale-free kernel width; noise in the k-space is
allowed (official: noiseless); no final hard data-consistency step.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from operators.errors import ConfigError, DataError
from operators.mri import SingleCoilMRI

from .problem import Problem
from .samplers import Posterior, configure, sample

STRATEGIES = ("variance", "entropy")
SAMPLERS = ("dps", "daps")  # re-evaluate the physics at every step, so a growing mask takes effect


def acs_columns(width: int, acs: int) -> list[int]:
    """The ``acs`` centre columns of a ``width``-column k-space (fastMRI's centring)."""
    if not 0 <= acs <= width:
        raise ConfigError(f"acs must be in [0, {width}] columns, got {acs}")
    start = (width - acs + 1) // 2
    return list(range(start, start + acs))


def column_scores(kspace: torch.Tensor, measured: torch.Tensor, strategy: str = "variance",
                  sigma: float | None = None) -> torch.Tensor:
    """Score per column of particles' k-space ``kspace`` (J, 2, H, W); measured columns get -inf."""
    J, W = kspace.shape[0], kspace.shape[-1]
    cols = kspace.double().permute(3, 0, 1, 2).reshape(W, J, -1)  # (W, J, 2H)
    if strategy == "variance":
        score = cols.var(dim=1, unbiased=False).sum(-1)
    elif strategy == "entropy":
        d2 = torch.cdist(cols, cols).square()  # (W, J, J)
        if sigma is None:
            off = d2[~measured][:, ~torch.eye(J, dtype=torch.bool)]
            off = off[off > 0]  # columns where all particles agree carry no scale
            sigma = float(off.sqrt().median()) if off.numel() else 1.0
        sigma = max(sigma, 1e-12)
        score = -torch.logsumexp(-d2 / (2 * sigma ** 2), dim=2).sum(1)
    else:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return score.masked_fill(measured, float("-inf"))


@dataclasses.dataclass
class ActivePosterior:
    """The posterior of an active acquisition, with the mask it chose.

    ``mask``: (W,) bool, the measured columns; ``order``: ``(step, column)`` for every acquired
    column after the ACS; ``posterior``: the sampler's ``Posterior`` (samples of the last data)."""

    posterior: Posterior
    mask: torch.Tensor
    order: list[tuple[int, int]]


class ColumnAcquisition:
    """The sampler callback that grows the mask of ``physics`` (a ``SingleCoilMRI``) and the measurement
    of ``problem``; see the module docstring. ``acquire(column) -> (1, 2, H)`` returns one column of k-space."""

    def __init__(self, problem: Problem, physics: SingleCoilMRI, acquire: Callable[[int], torch.Tensor],
                 schedule: dict[int, int], strategy: str = "variance", sigma: float | None = None,
                 callback: Callable[[dict], None] | None = None):
        """``schedule``: step -> number of columns to acquire after that step."""
        self.problem, self.physics, self.acquire, self.schedule = problem, physics, acquire, dict(schedule)
        self.strategy, self.sigma, self.callback = strategy, sigma, callback
        self.mask = physics.mask[0, 0, 0].bool().clone()  # columns: the mask is the same on every row
        self.order: list[tuple[int, int]] = []

    def particles_kspace(self, denoised: torch.Tensor) -> torch.Tensor:
        view = self.problem.view()
        x = view.to_physical(denoised.detach())
        if x.shape[1] == 1:  # a real-image prior sees complex physics through its real channel
            x = torch.cat([x, torch.zeros_like(x)], dim=1)
        return self.physics.A(x.to(torch.float32), mask=torch.ones_like(self.physics.mask))

    def __call__(self, info: dict) -> None:
        count = min(self.schedule.get(int(info["step"]), 0), int((~self.mask).sum()))
        if count:
            scores = column_scores(self.particles_kspace(info["denoised"]), self.mask, self.strategy, self.sigma)
            for column in scores.topk(count).indices.tolist():
                self.add(column)
                self.order.append((int(info["step"]), column))
        if self.callback is not None:
            self.callback(info)

    def add(self, column: int) -> None:
        values = self.acquire(column)
        H = self.problem.y.shape[-2]
        if values.shape != (1, 2, H):
            raise DataError(f"acquire({column}) must return one k-space column of shape (1, 2, {H}), "
                            f"got {tuple(values.shape)}")
        self.mask[column] = True
        mask = self.mask.to(self.physics.mask.dtype).expand(*self.physics.mask.shape[-2:])
        self.physics.update_parameters(mask=mask)
        y = self.problem.y.clone()
        y[..., column] = values.to(y.dtype)
        self.problem.y = y


def active_sample(prior, acquire: Callable[[int], torch.Tensor] | torch.Tensor, img_size: tuple[int, int],
                  lines: int, acs: int, sigma_y: float, sampler: str = "dps", preset: str | None = None,
                  n_samples: int = 8, generator=None, start: float = 0.05, stop: float = 0.5,
                  strategy: str = "variance", sigma: float | None = None, callback=None, **overrides) -> ActivePosterior:
    """Reconstruct one single-coil Cartesian MRI slice while choosing which ``lines`` columns to measure.

    :param acquire: ``acquire(column) -> (1, 2, H)`` k-space of one column (a scanner, or a function of
        retrospective data), or the full k-space (1, 2, H, W) itself.
    :param img_size: (H, W).
    :param lines: columns measured in the end (ACS included): the acquisition budget.
    :param acs: centre columns measured before sampling starts.
    :param sigma_y: k-space noise level, as for ``iv.Problem``.
    :param sampler, preset, overrides: the posterior sampler (one of ``SAMPLERS``) and its settings.
    :param n_samples: posterior samples (particles) sharing the mask.
    :param start, stop: the acquisition window as fractions of the sampler's steps (official
        inference config: steps 50 to 500 of 1000).
    :param strategy, sigma: column score (``column_scores``).
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"active_sample runs {', '.join(SAMPLERS)} (samplers that read the physics at every step, "
                          f"so new lines take effect); got {sampler!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    H, W = (int(n) for n in img_size)
    if not acs <= lines <= W:
        raise ConfigError(f"need acs <= lines <= {W} columns, got acs={acs}, lines={lines}")
    if not 0 <= start < stop <= 1:
        raise ConfigError(f"need 0 <= start < stop <= 1, got start={start}, stop={stop}")
    if torch.is_tensor(acquire):
        full = acquire
        if full.shape != (1, 2, H, W):
            raise DataError(f"the full k-space must have shape (1, 2, {H}, {W}), got {tuple(full.shape)}")
        acquire = lambda column: full[..., column]  # noqa: E731
    mask = torch.zeros(H, W)
    mask[:, acs_columns(W, acs)] = 1
    physics = SingleCoilMRI(mask=mask, img_size=(H, W))
    y = torch.zeros(1, 2, H, W)
    problem = Problem(physics, y, sigma_y=sigma_y, prior=prior)
    steps = getattr(configure(sampler, preset, **overrides), "steps", None)
    if steps is None:
        raise ConfigError(f"active_sample needs a sampler with a 'steps' field; {sampler!r} has none")
    first, last = int(start * steps), max(int(stop * steps), int(start * steps) + 1)
    schedule: dict[int, int] = {}
    for k in range(lines - acs):  # evenly over the window; several per step when the window is short
        step = first + (k * (last - first)) // (lines - acs)
        schedule[step] = schedule.get(step, 0) + 1
    acquisition = ColumnAcquisition(problem, physics, acquire, schedule, strategy, sigma, callback)
    for column in acs_columns(W, acs):
        acquisition.add(column)
    post = sample(sampler, prior, problem, n_samples=n_samples, generator=generator, preset=preset,
                  callback=acquisition, **overrides)
    return ActivePosterior(post, acquisition.mask.clone(), acquisition.order)
