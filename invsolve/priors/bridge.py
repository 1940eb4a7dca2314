"""I2SB bridge priors: a network that carries a degraded image ``x1`` to its clean image ``x0``.

Paper: G.-H. Liu, A. Vahdat, D.-A. Huang, E. A. Theodorou, W. Nie, A. Anandkumar, "I2SB: Image-to-Image
Schrodinger Bridge", ICML 2023. Official code: https://github.com/NVlabs/I2SB (``i2sb/diffusion.py``,
``i2sb/runner.py``); CDDB (``invsolve.samplers.cddb``) samples the same models.

Schedule (official): ``beta = linspace(sqrt(1e-4), sqrt(beta_max / N), N)^2`` with ``N = 1000``,
``beta_max = 0.3``, its first half kept and mirrored (symmetric); ``sigma_f(t)^2 = sum_{s<=t} beta_s``,
``sigma_b(t)^2 = sum_{s>=t} beta_s``. The bridge marginal given both ends is

    q(x_t | x0, x1) = N(mu0 x0 + mu1 x1, sigma_sb^2),   mu0 = sb^2 / (sf^2 + sb^2),  mu1 = sf^2 / (sf^2 + sb^2),
                                                         sigma_sb^2 = sf^2 sb^2 / (sf^2 + sb^2),

the network ``F(x_t, t)`` is trained on ``||F - (x_t - x0) / sigma_f(t)||^2`` with ``t ~ U{0..N-1}`` and
predicts ``x0_hat = x_t - sigma_f(t) F(x_t, t)``; one reverse step from ``n`` to ``m < n`` is the Gaussian
``p(x_m | x0_hat, x_n)`` (``posterior_step``). All in the prior's model space ([-1, 1] images).

A bridge is trained for one degradation. Here ``x1 = bridge_start(physics, y)``: the FBP of ``y`` for CT
operators that have one, else ``A_dagger(y)`` (deepinv's least squares) -- the classical reconstruction
a user has, as I2SB's super-resolution bridges start from the pseudo-inverse image. The card's
``metadata.bridge`` records the operator (``ops.make`` name and parameters) and its noise ``sigma_y``.
"""

from __future__ import annotations

import torch

import operators as ops

from .. import baselines
from ..errors import ConfigError
from .base import Prior, PriorCard

N_STEPS = 1000
BETA_MAX = 0.3


class BridgeSchedule:
    """The I2SB noise schedule: ``sigma_f``, ``sigma_b`` on the official 1000-step grid (float64)."""

    def __init__(self, n: int = N_STEPS, beta_max: float = BETA_MAX):
        betas = torch.linspace(1e-4 ** 0.5, (beta_max / n) ** 0.5, n, dtype=torch.float64) ** 2
        betas = torch.cat([betas[: n // 2], betas[: n // 2].flip(0)])  # symmetric (official make_beta_schedule)
        self.n, self.beta_max = betas.numel(), beta_max
        self.std_fwd = betas.cumsum(0).sqrt()
        self.std_bwd = betas.flip(0).cumsum(0).flip(0).sqrt()

    def marginal_coefficients(self, t: torch.Tensor):
        """``(mu0, mu1, sigma_sb)`` of ``q(x_t | x0, x1)`` at integer steps ``t`` (float64)."""
        sf2, sb2 = self.std_fwd[t] ** 2, self.std_bwd[t] ** 2
        return sb2 / (sf2 + sb2), sf2 / (sf2 + sb2), (sf2 * sb2 / (sf2 + sb2)).sqrt()

    def marginal(self, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw of ``x_t ~ q(x_t | x0, x1)`` given standard normal ``noise`` (one step per row)."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        mu0, mu1, std = (c.to(x0.dtype).reshape(shape) for c in self.marginal_coefficients(t))
        return mu0 * x0 + mu1 * x1 + std * noise

    def posterior_coefficients(self, m: int, n: int) -> tuple[float, float, float]:
        """``(a, b, std)`` of ``p(x_m | x0, x_n) = N(a x0 + b x_n, std^2)``, ``m < n`` (official ``p_posterior``)."""
        if not 0 <= m < n < self.n:
            raise ConfigError(f"bridge steps must satisfy 0 <= m < n < {self.n}, got m={m}, n={n}")
        s_m2 = float(self.std_fwd[m]) ** 2
        delta2 = float(self.std_fwd[n]) ** 2 - s_m2
        return delta2 / (s_m2 + delta2), s_m2 / (s_m2 + delta2), (s_m2 * delta2 / (s_m2 + delta2)) ** 0.5

    def steps(self, nfe: int) -> list[int]:
        """``nfe + 1`` step indices evenly spaced over ``[0, N - 1]`` (official ``space_indices``), ascending."""
        if nfe < 1:
            raise ConfigError(f"a bridge needs at least 1 step, got {nfe}")
        if nfe >= self.n:
            raise ConfigError(f"a bridge of {self.n} steps takes at most {self.n - 1} NFE, got {nfe}")
        stride = (self.n - 1) / nfe
        return [round(i * stride) for i in range(nfe + 1)]


def start_method(physics) -> str:
    """How ``bridge_start`` reconstructs for ``physics``: ``"fbp"`` where the operator has one, else ``"least_squares"``."""
    return "fbp" if callable(getattr(physics, "fbp", None)) else "least_squares"


def bridge_start(physics, y: torch.Tensor) -> torch.Tensor:
    """``x1`` of the bridge in physical units: ``baselines.fbp`` or ``baselines.least_squares`` (``start_method``)."""
    with torch.no_grad():
        return getattr(baselines, start_method(physics))(physics, y)


def bridge_physics(card: PriorCard):
    """The operator a bridge card was trained for (``metadata.bridge``: ``operator``, ``params``)."""
    info = card.metadata.get("bridge") or {}
    if "operator" not in info:
        raise ConfigError(f"prior {card.name!r} is a bridge without metadata.bridge.operator in its card")
    return ops.make(info["operator"], **info.get("params", {}))


class BridgePrior(Prior):
    """An I2SB bridge network as a prior: ``prior(x_t, t)`` is ``x0_hat`` (model space), ``t`` an integer step.

    Only the bridge samplers (``"i2sb"``, ``"cddb"``) use it; the other samplers refuse it, since
    ``x0_hat`` is not a denoiser ``D(x, sigma)`` of Gaussian noise.
    """

    def __init__(self, net: torch.nn.Module, card: PriorCard):
        super().__init__(self.predict_x0, card)
        info = card.metadata.get("bridge") or {}
        self.schedule = BridgeSchedule(info.get("steps", N_STEPS), info.get("beta_max", BETA_MAX))
        self.net = net

    def predict_x0(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).expand(x.shape[0])
        std = self.schedule.std_fwd[t].to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        return x - std * self.net(x, t.to(x.dtype) / self.schedule.n)

    @property
    def sigma_y(self) -> float:
        return float(self.card.metadata["bridge"]["sigma_y"])
