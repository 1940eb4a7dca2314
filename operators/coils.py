"""Coil sensitivity maps for multi-coil MRI: simulated birdcage maps and ESPIRiT estimates.

- ``birdcage_maps`` simulates the sensitivities of a birdcage coil in torch (no sigpy needed):
  the same model and the same numbers as ``sigpy.mri.birdcage_maps`` (mikgroup/sigpy,
  ``sigpy/mri/sim.py``), which deepinv's ``MultiCoilMRI(coil_maps=N)`` also uses.
- ``estimate_coil_maps`` estimates maps from the fully sampled k-space centre with ESPIRiT
  (Uecker et al., "ESPIRiT - an eigenvalue approach to autocalibrating parallel MRI",
  MRM 71:990-1001, 2014) through ``sigpy.mri.app.EspiritCalib`` (needs the ``mri`` extra).

Shapes follow deepinv: k-space (B, 2, N, H, W) or (B, 2, N, D, H, W) with real and imaginary
parts in channel 1, or complex (B, N, ...); maps are complex (B, N, ...).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError, DataError


def birdcage_maps(shape: Sequence[int], radius: float = 1.5, coils_per_ring: int = 8,
                  dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Simulated birdcage sensitivities of shape (N, H, W) or (N, D, H, W), RSS-normalised to 1.

    Coil ``c`` sits on a circle of relative radius ``radius`` (1 = the image edge) at angle
    ``2 pi c / N`` (2D) or ``2 pi c / coils_per_ring`` in ring ``floor(c / coils_per_ring)``
    (3D, rings centred along the first axis). Its sensitivity at a pixel is ``exp(i phi) / r``
    with ``r`` the distance to the coil in coordinates where the image spans [-1, 1) per axis
    and ``phi`` the pixel's azimuth about the coil minus the coil's angle. Then every map is
    divided by the root-sum-of-squares over coils. Same model and values as
    ``sigpy.mri.birdcage_maps(shape, r=radius, nzz=coils_per_ring)`` (tested).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ConfigError(f"birdcage_maps needs a shape (N, H, W) or (N, D, H, W), got {shape}")
    n_coils, *spatial = shape
    c = torch.arange(n_coils, dtype=torch.float64)
    per_ring = n_coils if len(spatial) == 2 else coils_per_ring
    angle = c * (2 * math.pi / per_ring)
    ring = torch.floor(c / per_ring)
    grid = [(torch.arange(n, dtype=torch.float64) - n / 2) / (n / 2) for n in spatial]
    coords = torch.meshgrid(*grid, indexing="ij")  # (z,) y, x
    view = (n_coils,) + (1,) * len(spatial)
    dx = coords[-1] - (radius * torch.cos(angle)).reshape(view)
    dy = coords[-2] - (radius * torch.sin(angle)).reshape(view)
    dist_sq = dx ** 2 + dy ** 2
    coil_phase = -angle
    if len(spatial) == 3:
        dz = coords[0] - (ring - 0.5 * (math.ceil(n_coils / per_ring) - 1)).reshape(view)
        dist_sq = dist_sq + dz ** 2
        coil_phase = -(c + ring) * (2 * math.pi / per_ring)
    phase = torch.atan2(dx, -dy) + coil_phase.reshape(view)
    maps = torch.polar(dist_sq.rsqrt(), phase)
    maps = maps / maps.abs().square().sum(0).sqrt()
    return maps.to(dtype)


def as_complex_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """Complex (B, N, ...) view of k-space given as complex (B, N, ...) or deepinv's real
    (B, 2, N, ...) layout."""
    if kspace.is_complex():
        return kspace
    if kspace.ndim < 4 or kspace.shape[1] != 2:
        raise DataError(f"k-space must be complex (B, N, ...) or real (B, 2, N, ...) with real and imaginary "
                        f"parts in dimension 1; got a real tensor of shape {tuple(kspace.shape)}")
    return torch.view_as_complex(kspace.movedim(1, -1).contiguous())


def calibration_slices(spatial: Sequence[int], calib_width: int) -> tuple[slice, ...]:
    """Centre ``calib_width`` samples of every axis, as ``sigpy.resize`` takes them
    (start ``n // 2 - calib_width // 2``, i.e. around fastMRI's k-space centre ``n // 2``)."""
    out = []
    for n in spatial:
        if calib_width > n:
            raise ConfigError(f"calib_width {calib_width} exceeds the k-space size {n}")
        start = n // 2 - calib_width // 2
        out.append(slice(start, start + calib_width))
    return tuple(out)


def estimate_coil_maps(kspace: torch.Tensor, calib_width: int = 24, thresh: float = 0.02, kernel_width: int = 6,
                       crop: float = 0.95, max_iter: int = 100, three_d: bool = False) -> torch.Tensor:
    """ESPIRiT coil maps from the fully sampled centre of (possibly undersampled) k-space.

    :param kspace: k-space in the centred fastMRI convention, (B, 2, N, H, W) / (B, 2, N, D, H, W)
        real (deepinv layout) or (B, N, ...) complex, zeros where not sampled.
    :param calib_width: width of the (square or cubic) calibration region at the k-space centre;
        it must be fully sampled (for fastMRI column masks: at most the number of centre
        columns, e.g. ``round(0.08 * W)`` at 4x), otherwise a ``ValueError`` says so.
    :param thresh: singular values of the calibration matrix kept above ``thresh * max``.
    :param kernel_width: ESPIRiT kernel width.
    :param crop: maps are zeroed where the largest eigenvalue is below ``crop`` (outside the object).
    :param max_iter: power iterations per pixel.
    :param three_d: for volumes, ``True`` calibrates once on the 3D k-space (3D FFT
        acquisition); ``False`` calibrates each slice's 2D k-space (FFT over H, W only).
    :returns: complex maps (B, N, ...) in the complex dtype of ``kspace``; at each pixel inside
        the object ``sum_n |S_n|^2 = 1`` and the phase is relative to coil 0 (sigpy's choice).

    Runs ``sigpy.mri.app.EspiritCalib`` on the CPU, one (B, slice) at a time, without autograd.
    """
    try:
        from sigpy.mri.app import EspiritCalib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("ESPIRiT coil maps need sigpy: pip install 'invsolve[mri]'") from err

    ksp = as_complex_kspace(kspace).detach()
    if ksp.ndim not in (4, 5):
        raise DataError(f"k-space must have 2 or 3 spatial dimensions after (B, N); got shape {tuple(ksp.shape)}")
    if three_d and ksp.ndim != 5:
        raise DataError("three_d=True needs volume k-space (B, 2, N, D, H, W)")
    calib_ndim = 3 if three_d else 2
    spatial = ksp.shape[-calib_ndim:]
    leading = (slice(None),) * (ksp.ndim - calib_ndim)  # batch, coils (and slices)
    region = leading + calibration_slices(spatial, calib_width)
    sampled = (ksp[region] != 0).any(dim=1)  # (B, [D,] c, c[, c])
    if not bool(sampled.all()):
        fraction = float(sampled.float().mean())
        raise DataError(f"the {calib_width}-wide calibration region at the k-space centre is not fully sampled "
                        f"({fraction:.0%} of it is); lower calib_width to the number of fully sampled centre "
                        f"lines (e.g. round(center_fraction * W)) or sample a larger centre")
    dtype_np = np.complex128 if ksp.dtype == torch.complex128 else np.complex64
    data = ksp.cpu().numpy().astype(dtype_np)
    maps = np.zeros_like(data)
    for b in range(data.shape[0]):
        if three_d or data.ndim == 4:
            maps[b] = _espirit(EspiritCalib, data[b], calib_width, thresh, kernel_width, crop, max_iter)
        else:  # slice by slice: (N, D, H, W) -> per slice (N, H, W)
            for d in range(data.shape[2]):
                maps[b, :, d] = _espirit(EspiritCalib, data[b, :, d], calib_width, thresh, kernel_width, crop, max_iter)
    return torch.from_numpy(maps).to(device=kspace.device)


def _espirit(app, ksp: np.ndarray, calib_width, thresh, kernel_width, crop, max_iter) -> np.ndarray:
    return app(ksp, calib_width=calib_width, thresh=thresh, kernel_width=kernel_width, crop=crop,
               max_iter=max_iter, show_pbar=False).run()
