"""Seeded two-valued permeability fields: the training data of a Darcy field prior and its held-out set.

The fields of the Darcy benchmark of the neural-operator literature (FNO, Li et al. 2021, the data
script ``gen_darcy``): a Gaussian random field ``psi ~ N(0, (-Laplacian + tau^2)^(-alpha))`` with
Neumann boundary conditions, ``alpha = 2``, ``tau = 3``, thresholded at zero; the permeability is 12
where ``psi >= 0`` and 3 elsewhere. In image units (what a prior learns) a field is ``x = 1`` where
``psi >= 0`` and 0 elsewhere, so ``operators.darcy.DarcyFlow``'s ``a = a_min + (a_max - a_min) x``
with its defaults 3 / 12 is exactly FNO's permeability.

The field is sampled in the cosine basis, which is what Neumann conditions mean: coefficients
``xi_k tau^(alpha - 1) (pi^2 |k|^2 + tau^2)^(-alpha / 2)`` (the constant mode set to 0), an inverse
DCT (``scipy.fft.idctn``; FNO uses MATLAB's ``idct2``). One seed per field: training seeds are drawn
from the training loop's ``torch.Generator`` in ``[0, 2**31)``, held-out fields use the seeds
``HELDOUT_FIELD_SEED + i`` at and above ``2**31``, so the two sets never share a field.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.fft import idctn

ALPHA, TAU = 2.0, 3.0
"""FNO's Darcy field parameters (smoothness and length scale of the random field)."""
HELDOUT_FIELD_SEED = 2 ** 31
"""First seed of the held-out fields (training seeds are below it)."""


def fields_from_seeds(seeds, size: int, alpha: float = ALPHA, tau: float = TAU) -> torch.Tensor:
    """Two-valued fields of the given seeds, (n, 1, size, size) float32 in {0, 1}."""
    k = np.arange(size, dtype=np.float64)
    k1, k2 = np.meshgrid(k, k, indexing="ij")
    std = tau ** (alpha - 1) * (math.pi ** 2 * (k1 ** 2 + k2 ** 2) + tau ** 2) ** (-alpha / 2)
    std[0, 0] = 0.0  # FNO removes the mean mode
    out = []
    for seed in seeds:
        xi = torch.randn((size, size), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        psi = idctn(xi.numpy() * std, type=2, norm="ortho")
        out.append(torch.from_numpy((psi >= 0).astype(np.float32)))
    return torch.stack(out)[:, None]


def random_fields(n: int, size: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` training fields, seeds drawn from ``generator`` in ``[0, 2**31)``."""
    seeds = torch.randint(0, HELDOUT_FIELD_SEED, (n,), generator=generator)
    return fields_from_seeds(seeds.tolist(), size)


def heldout_fields(n: int, size: int = 64) -> torch.Tensor:
    """The first ``n`` held-out fields (seeds ``HELDOUT_FIELD_SEED + i``, never used in training)."""
    return fields_from_seeds(range(HELDOUT_FIELD_SEED, HELDOUT_FIELD_SEED + n), size)
