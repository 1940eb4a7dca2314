"""Transmission CT (Beer-Lambert): the detected fraction of photons ``T = exp(-mu P x)``, Poisson counts.

Physics: a monochromatic beam of ``I0`` photons per detector bin crosses the object; the expected
count behind it is ``I0 exp(-mu (P x))`` with ``P`` the parallel-beam line-integral projector
(``operators.ct.ParallelBeamCT`` geometry: views over [0, 180), detector = image diagonal) and
``mu`` the attenuation per unit of image value per pixel length. The operator returns the
transmission ``T = exp(-mu P x)`` (counts / I0, in [0, 1]); ``counts(x, generator)`` draws the
Poisson measurement ``N ~ Poisson(I0 T) / I0`` and ``noise_std(x)`` is its standard deviation
``sqrt(T / I0)``. Low dose = small ``I0``: the noise is signal-dependent and the log-transform
``-log(N) / mu`` that makes it linear is biased where few photons arrive (photon starvation), which
is why a method that uses the nonlinear model directly is of interest.

Two forms of the same model:

- ``transmission_ct(...)`` (registry ``ct-transmission``): a ``BlackBox`` around astra-toolbox's
  CPU projector (``AstraCT``'s "linear" projector, Joseph's method). It is never differentiated,
  as a simulator or a vendor's code would be: only derivative-free samplers (EnKG) run on it.
- ``BeerLambert`` (registry ``ct-transmission-torch``): the same formula on the torch projector,
  differentiable through autograd, so DPS-type samplers can be compared where gradients exist.

The two agree to astra's float32 rounding (4e-5 relative on held-out phantoms, tested to 1e-4).
``A_dagger`` of both is the classical reconstruction: least squares of the log-transformed data.
"""

from __future__ import annotations

import torch
from deepinv.physics import Physics

from .astra_backend import make_ct  # imports astra itself only when an astra projector is built
from .blackbox import BlackBox
from .ct import ParallelBeamCT
from .errors import ConfigError

DEFAULTS = dict(img_size=64, views=32, mu=0.05, I0=1e4)


def _check(mu: float, I0: float) -> None:
    if not mu > 0:
        raise ConfigError(f"mu (attenuation per image unit and pixel) must be > 0, got {mu}")
    if not I0 > 0:
        raise ConfigError(f"I0 (photons per detector bin) must be > 0, got {I0}")


class _Counts:
    """The measurement model shared by both forms: Poisson counts and their standard deviation."""

    def counts(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A Poisson measurement ``Poisson(I0 T(x)) / I0`` (seeded by ``generator``)."""
        with torch.no_grad():
            t = self.A(x).double()
        return (torch.poisson(self.I0 * t, generator=generator) / self.I0).to(x.dtype)

    def log_transform(self, t: torch.Tensor, floor: float | None = None) -> torch.Tensor:
        """The line integrals ``-log(max(t, floor)) / mu`` (``floor`` default ``0.5 / I0``: half a photon)."""
        return -torch.log(t.clamp(min=floor if floor is not None else 0.5 / self.I0)) / self.mu

    def noise_std(self, x: torch.Tensor) -> float:
        """The mean Poisson standard deviation ``sqrt(T / I0)`` over the bins: the ``sigma_y`` to state."""
        with torch.no_grad():
            return float((self.A(x).double() / self.I0).sqrt().mean())


class BeerLambert(_Counts, Physics):
    """``T = exp(-mu P x)`` on the torch parallel-beam projector (differentiable).

    :param img_size: image size ``n`` (n x n).
    :param views: projection angles, uniform over [0, 180) degrees.
    :param mu: attenuation per unit image value and pixel length (0.05: a [0, 1] phantom 64 pixels
        across transmits about exp(-1.5) through its centre).
    :param I0: photons per detector bin (1e4: low dose).
    :param ct_params: other ``ParallelBeamCT`` parameters (``n_detectors``, ...).
    """

    def __init__(self, img_size: int = DEFAULTS["img_size"], views: int = DEFAULTS["views"], mu: float = DEFAULTS["mu"],
                 I0: float = DEFAULTS["I0"], **ct_params):
        _check(mu, I0)
        super().__init__()
        self.projector = ParallelBeamCT(img_size=img_size, views=views, **ct_params)
        self.mu, self.I0 = float(mu), float(I0)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.exp(-self.mu * self.projector.A(x))

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.projector.A_dagger(self.log_transform(y))

    def __repr__(self) -> str:
        return f"BeerLambert(views={self.projector.views}, mu={self.mu}, I0={self.I0:g})"


class TransmissionCT(_Counts, BlackBox):
    """``T = exp(-mu P x)`` with ``P`` astra-toolbox's CPU parallel-beam projector, as a black box
    (no gradient, no adjoint). Parameters as ``BeerLambert``; ``projector``: astra's 2D parallel
    projector ("linear", the default, "strip" or "line")."""

    def __init__(self, img_size: int = DEFAULTS["img_size"], views: int = DEFAULTS["views"], mu: float = DEFAULTS["mu"],
                 I0: float = DEFAULTS["I0"], projector: str | None = None, **ct_params):
        _check(mu, I0)
        astra_ct = make_ct(backend="astra", projector=projector, img_size=img_size, views=views, **ct_params)

        def beer_lambert(x: torch.Tensor) -> torch.Tensor:
            return torch.exp(-float(mu) * astra_ct.A(x))

        super().__init__(beer_lambert, backend="torch", batched=True, name="ct-transmission (astra)")
        self.mu, self.I0, self.astra_ct = float(mu), float(I0), astra_ct

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """The classical reconstruction: least squares (astra CG) of the log-transformed data."""
        return self.astra_ct.A_dagger(self.log_transform(y))

    def __repr__(self) -> str:
        return f"TransmissionCT(astra, views={self.astra_ct.geometry.views}, mu={self.mu}, I0={self.I0:g})"


def transmission_ct(**params) -> TransmissionCT:
    """Transmission CT through astra's CPU projector, as a black box (``TransmissionCT``)."""
    return TransmissionCT(**params)

