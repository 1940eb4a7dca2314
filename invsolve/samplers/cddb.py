"""I2SB and CDDB: sampling a bridge prior from the reconstruction of ``y`` to a clean image.

I2SB -- G.-H. Liu et al., "I2SB: Image-to-Image Schrodinger Bridge", ICML 2023; official code
https://github.com/NVlabs/I2SB (``i2sb/diffusion.py::ddpm_sampling``, ``i2sb/runner.py``).
CDDB -- H. Chung, J. Kim, J. C. Ye, "Direct Diffusion Bridge using Data Consistency for Inverse
Problems", NeurIPS 2023; official code https://github.com/HJ-harry/CDDB (``i2sb/diffusion.py``,
``sample.py``).

Both run on a ``BridgePrior`` (``invsolve.priors.bridge``; ``invsolve train --objective bridge``).
Update rule (model space; ``t_0 = 0 < t_1 < ... < t_K = 999`` the official ``space_indices``, K = steps, one
network evaluation each: the official ``--nfe``):

    x = x1 = to_model(bridge_start(physics, y))              (FBP for CT, else A_dagger y)
    for k = K .. 1:  n, m = t_k, t_{k-1}
        x0_hat = prior(x, n)                                 (clamped to the data range with clip_denoised)
        CDDB only:  x0_hat <- x0_hat - step' grad_{x0_hat} ||s (y - A to_physical(x0_hat))||^2
        x = a x0_hat + b x + c z,   (a, b, c) of p(x_m | x0, x_n)  (no noise at m = 0 or with ot_ode)

The official CDDB step is ``mu * step * g`` on ``x`` after the posterior step, ``mu`` the coefficient of
``x0_hat``: the same as stepping ``x0_hat`` by ``step * g`` first, as written above. ``g`` is taken at
``x0_hat`` (not through the network: "CDDB", not "CDDB-deep"), on the squared residual in model units
(``s`` the prior's physical -> model scale; the official images and measurements are both in [-1, 1]).

Where invsolve differs: ``step' = step / max(1, ||A||^2)`` (``||A||^2`` by power iteration, ``operators.linalg``, once
per run). The official operators (pooling and bicubic super-resolution, blurs) have ``||A|| <= 1``, where
this is the official step; a sparse-view CT projector has ``||A||^2`` in the hundreds, where the official
step diverges. The bridge's degradation is checked against the problem's operator (a bridge is trained
for one operator): a different operator is a ``ConfigError``, a different noise level a warning.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from operators import linalg
from operators.errors import ConfigError

from ..priors.bridge import bridge_physics, bridge_start
from .base import register
from .toolkit import model_clip, randn, report

PROBE_TOLERANCE = 1e-4


def check_bridge_operator(prior, problem, name: str) -> None:
    """The problem's operator must be the one the bridge was trained for (compared on a seeded probe)."""
    trained = bridge_physics(prior.card)
    probe = torch.rand((1, *prior.image_shape), generator=torch.Generator().manual_seed(0))
    try:
        a, b = trained.A(probe), problem.physics.A(probe.to(problem.y.dtype))
        same = a.shape == b.shape and float((a - b.to(a.dtype)).norm() / a.norm().clamp_min(1e-30)) < PROBE_TOLERANCE
    except (RuntimeError, ValueError, TypeError):
        same = False
    info = prior.card.metadata["bridge"]
    if not same:
        raise ConfigError(f"{name}: prior {prior.card.name!r} is a bridge for {info['operator']} {info.get('params', {})}; "
                          f"the problem's operator ({type(problem.physics).__name__}) differs. Train a bridge for it "
                          "(invsolve train --objective bridge --bridge-operator NAME) or use a diffusion sampler")
    sigma_y = getattr(problem.problem, "sigma_y", None)
    if sigma_y is not None and abs(float(sigma_y) - prior.sigma_y) > 0.25 * max(prior.sigma_y, 1e-12):
        warnings.warn(f"{name}: prior {prior.card.name!r} was trained at sigma_y {prior.sigma_y:g}, the problem has "
                      f"sigma_y {float(sigma_y):g}: expect a worse reconstruction", stacklevel=3)


def bridge_sample(prior, problem, x_shape, generator, n_steps: int, clip_denoised: bool, ot_ode: bool,
                  step: float | None, name: str, callback=None) -> torch.Tensor:
    """The I2SB reverse chain from ``x1``; with ``step`` (CDDB) a data-consistency step on every ``x0_hat``."""
    check_bridge_operator(prior, problem, name)
    schedule = prior.schedule
    grid = schedule.steps(n_steps)
    y = problem.tiled_y(x_shape[0])
    x = problem.to_model(bridge_start(problem.physics, y).to(x_shape.dtype))
    if tuple(x.shape) != tuple(x_shape):
        raise ConfigError(f"{name}: the reconstruction of y has shape {tuple(x.shape[1:])}, the bridge "
                          f"generates {tuple(x_shape[1:])}")
    clip = model_clip(prior, problem) if clip_denoised else None
    if step is not None:
        step_eff = step / max(1.0, linalg.operator_norm_sq(problem.physics, problem.physics.A_adjoint(y[:1]), iters=50,
                                                           tol=1e-4))
    for k in range(len(grid) - 1, 0, -1):
        n, m = grid[k], grid[k - 1]
        with torch.no_grad():
            x0 = prior(x, n)
            x0 = x0 if clip is None else clip(x0)
        if step is not None:
            with torch.enable_grad():
                x0 = x0.detach().requires_grad_(True)
                loss = ((problem.scale * problem.residual(x0)) ** 2).sum()
                grad, = torch.autograd.grad(loss, x0)
            x0 = (x0 - step_eff * grad).detach()
        a, b, c = schedule.posterior_coefficients(m, n)
        x = a * x0 + b * x
        if m > 0 and not ot_ode:
            x = x + c * randn(x.shape, generator, dtype=x.dtype)
        report(callback, len(grid) - 1 - k, len(grid) - 1, float(schedule.std_fwd[m]), x, x0)
    return x.detach()


@register("i2sb")
@dataclasses.dataclass(frozen=True)
class I2SB:
    """I2SB (Liu et al., ICML 2023): the bridge's reverse chain alone, no use of ``y`` beyond ``x1``.

    :param steps: bridge steps, one network evaluation each (the official ``--nfe``; ``scripts/sample.sh``: 100).
    :param clip_denoised: clamp ``x0_hat`` to the data range (official ``--clip-denoise``).
    :param ot_ode: drop the posterior noise (I2SB's OT-ODE variant).
    """

    steps: int = 100
    clip_denoised: bool = True
    ot_ode: bool = False

    bridge = True
    PRESETS = {"ct-sparse8": dict(steps=20)}

    def run(self, prior, problem, x_shape, generator, callback=None):
        return bridge_sample(prior, problem, x_shape, generator, self.steps, self.clip_denoised, self.ot_ode,
                             None, self.name, callback)


@register("cddb")
@dataclasses.dataclass(frozen=True)
class CDDB(I2SB):
    """CDDB (Chung, Kim, Ye, NeurIPS 2023): I2SB with a data-consistency gradient step on each ``x0_hat``.

    :param step: step size of the data-consistency gradient (official default 1.0; see the module
        docstring for its normalisation by ``||A||^2``).
    """

    step: float = 1.0

    PRESETS = {"ct-sparse8": dict(steps=20)}

    def __post_init__(self):
        if not self.step >= 0:
            raise ConfigError(f"cddb: step must be >= 0, got {self.step!r}")

    def run(self, prior, problem, x_shape, generator, callback=None):
        problem.require_linear("cddb")
        return bridge_sample(prior, problem, x_shape, generator, self.steps, self.clip_denoised, self.ot_ode,
                             self.step, self.name, callback)
