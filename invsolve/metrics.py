"""Image metrics (PSNR, SSIM, NMSE) and distances between sample sets.

PSNR and SSIM follow scikit-image's definitions (``peak_signal_noise_ratio``,
``structural_similarity`` with its default 7x7 uniform window and K1 = 0.01, K2 = 0.03),
which are also the definitions fastMRI's evaluation uses.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

from .errors import DataError


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def psnr(target, estimate, data_range: float | None = None) -> float:
    """``10 log10(data_range^2 / MSE)``; ``data_range`` defaults to ``target.max()`` (fastMRI)."""
    t, e = _numpy(target), _numpy(estimate)
    if t.shape != e.shape:
        raise DataError(f"shapes differ: target {t.shape} vs estimate {e.shape}")
    rng = float(t.max()) if data_range is None else float(data_range)
    mse = float(np.mean((t - e) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(rng ** 2 / mse)


def nmse(target, estimate) -> float:
    """``||target - estimate||^2 / ||target||^2``."""
    t, e = _numpy(target), _numpy(estimate)
    return float(np.sum((t - e) ** 2) / np.sum(t ** 2))


def ssim(target, estimate, data_range: float | None = None) -> float:
    """Mean SSIM of 2D images; leading dimensions (batch, channel, slices) are averaged over."""
    t, e = _numpy(target), _numpy(estimate)
    if t.shape != e.shape:
        raise DataError(f"shapes differ: target {t.shape} vs estimate {e.shape}")
    rng = float(t.max()) if data_range is None else float(data_range)
    t2, e2 = t.reshape(-1, *t.shape[-2:]), e.reshape(-1, *e.shape[-2:])
    return float(np.mean([structural_similarity(a, b, data_range=rng) for a, b in zip(t2, e2)]))


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between two equally sized sample sets (rows are samples).

    ``sqrt(mean over random unit directions u of W2^2(<a, u>, <b, u>))``; each 1D W2 is
    computed exactly from sorted projections.
    """
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        raise DataError(f"sample sets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    u = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ u, dim=0)
    pb, _ = torch.sort(b @ u, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())
