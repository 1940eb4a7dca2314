"""Measurement noise models: thin, seeded wrappers over deepinv's noise models.

Every model is a ``deepinv.physics.NoiseModel`` (so ``physics.noise_model = model`` or a
physics constructor's ``noise_model=model`` works as in deepinv) and draws from a
``torch.Generator`` given at construction (``generator=``, or ``seed=`` for a fresh one); without
either it uses torch's global generator, as deepinv does. All parameters are in the physical
units of the clean measurement ``y = A(x)``.

- ``Gaussian(sigma)``: ``y + sigma n``, ``n ~ N(0, I)`` (deepinv ``GaussianNoise``).
- ``Poisson(gain)``: ``gain * Poisson(y / gain)``: mean ``y``, variance ``gain * y``
  (deepinv ``PoissonNoise`` with ``normalize=True``); ``y`` must be non-negative.
- ``LogPoisson(I0, mu, min_count)``: low-dose CT, post-log. ``y`` is a line integral in the
  units of the CT operator (pixel lengths times image values) and ``mu`` the attenuation per
  unit of ``y``; the detector counts ``N ~ Poisson(I0 exp(-mu y))`` photons and the measurement is
  ``-log(max(N, min_count) / I0) / mu``, again in the units of ``y``. deepinv's
  ``LogPoissonNoise`` is the same model with ``N0 = I0`` but takes ``log(0) = -inf`` for zero
  counts; here zero counts are replaced by ``min_count`` (LoDoPaB-CT uses 0.1, see ``lodopab``).
"""

from __future__ import annotations

import math

import torch
from deepinv.physics import GaussianNoise, LogPoissonNoise, PoissonNoise

from .errors import ConfigError, UnknownOptionError

# LoDoPaB-CT (Leuschner et al., Sci. Data 2021; github.com/jleuschn/dival, dival/datasets/lodopab_dataset.py
# and dival/util/constants.py): 4096 photons per detector pixel, zero counts replaced by 0.1,
# images normalised by MU_MAX = 81.35858 / m on a 0.26 m field of view.
LODOPAB_I0 = 4096.0
LODOPAB_MIN_COUNT = 0.1
LODOPAB_MU_MAX = 81.35858
LODOPAB_FOV_M = 0.26


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise UnknownOptionError("give either generator= or seed=, not both")
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return generator


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive number, got {value}")
    return value


class Gaussian(GaussianNoise):
    """Additive white Gaussian noise of standard deviation ``sigma`` (units of ``y``)."""

    def __init__(self, sigma: float = 0.01, generator: torch.Generator | None = None, seed: int | None = None):
        if float(sigma) < 0:
            raise ConfigError(f"sigma must be >= 0, got {sigma}")
        super().__init__(sigma=float(sigma), rng=_generator(generator, seed))


class Poisson(PoissonNoise):
    """``gain * Poisson(y / gain)``: shot noise with mean ``y`` and variance ``gain * y``.

    ``clip_positive=True`` clips negative ``y`` to 0 (e.g. blur with negative ringing) instead of
    raising.
    """

    def __init__(self, gain: float = 1.0, clip_positive: bool = False, generator: torch.Generator | None = None,
                 seed: int | None = None):
        super().__init__(gain=_positive("gain", gain), normalize=True, clip_positive=clip_positive,
                         rng=_generator(generator, seed))


class LogPoisson(LogPoissonNoise):
    """Post-log low-dose CT noise ``-log(max(Poisson(I0 exp(-mu y)), min_count) / I0) / mu``.

    :param I0: incident photons per detector bin (unattenuated); larger means less noise.
    :param mu: attenuation per unit of ``y`` (``mu * y`` is the optical depth). For the CT
        operator (unit pixels) with images in LoDoPaB's normalised units, ``mu = 81.35858 * 0.26 / W``
        for a W-pixel-wide image (see ``LogPoisson.lodopab``).
    :param min_count: replacement for zero counts (keeps the logarithm finite).
    """

    def __init__(self, I0: float = 1e4, mu: float = 1 / 50, min_count: float = 1.0,
                 generator: torch.Generator | None = None, seed: int | None = None):
        super().__init__(N0=_positive("I0", I0), mu=_positive("mu", mu), rng=_generator(generator, seed))
        self.min_count = _positive("min_count", min_count)

    @property
    def I0(self) -> torch.Tensor:
        return self.N0

    @classmethod
    def lodopab(cls, img_width: int, generator: torch.Generator | None = None, seed: int | None = None):
        """LoDoPaB-CT's dose and scaling for a ``img_width``-pixel image in [0, 1] (normalised by
        mu(3071 HU) = 81.35858 / m on a 0.26 m field of view): ``I0 = 4096``, ``min_count = 0.1``."""
        return cls(I0=LODOPAB_I0, mu=LODOPAB_MU_MAX * LODOPAB_FOV_M / int(img_width), min_count=LODOPAB_MIN_COUNT,
                   generator=generator, seed=seed)

    def forward(self, x: torch.Tensor, seed: int | None = None, **kwargs) -> torch.Tensor:
        self.rng_manual_seed(seed)
        self.to(x.device)
        mu, I0 = self.mu.to(x.dtype), self.N0.to(x.dtype)
        counts = torch.poisson(I0 * torch.exp(-mu * x), generator=self.rng)
        return -torch.log(counts.clamp_min(self.min_count) / I0) / mu

    def variance(self, y: torch.Tensor) -> torch.Tensor:
        """Delta-method variance of the post-log measurement, ``exp(mu y) / (I0 mu^2)``."""
        mu, I0 = self.mu.to(y.dtype), self.N0.to(y.dtype)
        return torch.exp(mu * y) / (I0 * mu ** 2)
