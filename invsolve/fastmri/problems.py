"""Posterior-sampling problems for fastMRI volumes: measured k-space, per-file mask, coil maps, prior grid.

For the selected slices of one file and one mask, ``build_problem`` returns an ``invsolve.Problem``
whose physics is ``operators.mri.SenseMRI`` (multi-coil files, and single-coil files with a
magnitude prior) or ``operators.mri.SingleCoilMRI`` (single-coil files with a complex prior),
composed with the embedding of the prior's images into the k-space image grid:

- **mask**: ``invsolve.fastmri.masks.volume_mask``: the file's own ``mask`` (test/challenge
  files), or fastMRI's mask function for the mask type and acceleration with fastMRI's centre
  fraction (0.08 at 4x, 0.04 at 8x), seeded with ``tuple(map(ord, filename))`` as fastMRI's
  ``SliceDataset`` does, so every slice of a volume shares its mask; columns outside the acquired
  band given by the header's k-space padding are zeroed, as fastMRI's VarNet transform does.
- **coil maps** from the fully sampled centre columns only (measurement-derived, no target):
  ``S_n = L_n / sqrt(sum_n |L_n|^2)`` (``invsolve.fastmri.baselines.lowres_maps``) with ``L_n`` the coil images of the centre columns (the
  initial estimate of fastMRI's VarNet sensitivity network, ``SensitivityModel``, before its
  U-Net). The maps carry the object's low-resolution phase, so the image they combine to is
  close to real and non-negative, what a magnitude prior generates. Single-coil files get the
  phase map ``L / |L|`` as their one "coil".
- **scale**: k-space is divided by the 99.5th percentile of the zero-filled RSS magnitude of the
  selected slices (cropped to the target size), putting the image near the prior's [0, 1] range
  (``invsolve train`` normalises training volumes by their 99.5th percentile too);
  reconstructions are multiplied back before scoring.
- **grid**: a prior of the k-space image size (H, W) reconstructs the whole field of view; a
  prior of the target size (h, w) (e.g. 320 x 320 for 640 x 368 k-space) reconstructs the centre
  crop, zero outside (the readout oversampling region is empty in fastMRI data).
  One-channel priors are real images (imaginary part 0), two-channel priors complex.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from deepinv.physics import LinearPhysics

from operators.mri import SenseMRI, SingleCoilMRI, center_crop, ifftc

from ..errors import ConfigError, DataError
from ..problem import real_to_complex
from .baselines import SCALE_PERCENTILE, coil_kspace, lowres_maps
from .masks import volume_mask  # noqa: F401 (the benchmark's mask: fastMRI's, seeded per file)


class EmbeddedMRI(LinearPhysics):
    """``A x = MRI(E x)``: ``E`` puts the prior's (B, C, h, w) images (C = 1 real, C = 2 complex)
    at the centre of the (B, 2, H, W) k-space image grid, zero elsewhere; ``A^H = E^T MRI^H``.

    ``MRI`` is ``SenseMRI`` with per-slice coil maps (S, N, H, W), or ``SingleCoilMRI`` when
    ``coil_maps`` is ``None``. A batch of ``k * S`` images (k posterior draws, sample-major as
    ``Problem`` orders them) meets the maps tiled k times (one operator per k, built on first use).
    """

    def __init__(self, coil_maps: torch.Tensor | None, mask: torch.Tensor, channels: int, crop: tuple[int, int],
                 full: tuple[int, int], device="cpu"):
        super().__init__(img_size=(channels, *crop), device=device)
        if channels not in (1, 2):
            raise ConfigError(f"MRI priors have 1 (magnitude/real) or 2 (complex) channels, got {channels}")
        self.channels = int(channels)
        self.crop = tuple(int(s) for s in crop)
        self.full = tuple(int(s) for s in full)
        self.top = (self.full[0] - self.crop[0]) // 2
        self.left = (self.full[1] - self.crop[1]) // 2
        self.coil_maps = coil_maps
        self.mask = mask.reshape(1, -1)
        self._target_device = device
        self._operators: dict[int, torch.nn.Module] = {}

    def mri(self, batch: int):
        """The MRI operator for a batch of ``batch`` images."""
        slices = 1 if self.coil_maps is None else self.coil_maps.shape[0]
        if batch % slices:
            raise DataError(f"a batch of {batch} images does not divide into {slices} slices")
        k = batch // slices
        if k not in self._operators:
            if self.coil_maps is None:
                op = SingleCoilMRI(mask=self.mask, img_size=self.full, device=self._target_device)
            else:
                maps = self.coil_maps.repeat(k, *([1] * (self.coil_maps.ndim - 1)))
                op = SenseMRI(maps, mask=self.mask, img_size=self.full, device=self._target_device)
            self._operators[k] = op.to(self._target_device)
        return self._operators[k]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = real_to_complex(x)  # the library's one real -> complex embedding (invsolve.problem)
        if self.crop == self.full:
            return x
        out = x.new_zeros((*x.shape[:2], *self.full))
        out[..., self.top:self.top + self.crop[0], self.left:self.left + self.crop[1]] = x
        return out

    def restrict(self, z: torch.Tensor) -> torch.Tensor:
        z = z[..., self.top:self.top + self.crop[0], self.left:self.left + self.crop[1]]
        return z[:, :1] if self.channels == 1 else z

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.mri(x.shape[0]).A(self.embed(x))

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.restrict(self.mri(y.shape[0]).A_adjoint(y))


@dataclasses.dataclass
class MRIProblemParts:
    physics: EmbeddedMRI
    y: torch.Tensor          # (S, 2, N, H, W) or (S, 2, H, W), divided by ``scale``
    scale: float
    mask: torch.Tensor       # (W,)
    target_size: tuple[int, int]
    grid: tuple[int, int]    # the prior's image size


def target_size(volume) -> tuple[int, int]:
    if volume.target is not None:
        return tuple(int(s) for s in np.asarray(volume.target).shape[-2:])
    recon = getattr(volume, "recon_size", None)
    if recon is not None:
        return int(recon[0]), int(recon[1])
    raise DataError(f"{volume.fname} has no target and no reconstruction size")


def build_parts(volume, mask: torch.Tensor, prior_shape: tuple[int, ...], device="cpu") -> MRIProblemParts:
    """Physics, scaled measurement and scale of ``volume`` under ``mask`` for a prior of ``prior_shape``."""
    kspace = coil_kspace(volume)
    full = tuple(kspace.shape[-2:])
    crop = target_size(volume)
    channels, *grid = prior_shape
    grid = tuple(grid)
    if len(grid) != 2:
        raise ConfigError(f"the fastMRI benchmark needs a 2D prior (C, H, W); this one generates {tuple(prior_shape)}")
    if grid != full and grid != crop:
        raise ConfigError(f"the prior generates {grid[0]}x{grid[1]} images but {volume.fname} has k-space images of "
                          f"{full[0]}x{full[1]} and {crop[0]}x{crop[1]} targets; use a prior of one of those sizes "
                          f"(invsolve train --data DIR --size ...)")
    if any(c > f for c, f in zip(grid, full)):
        raise ConfigError(f"prior images {grid} are larger than the k-space grid {full}")
    measured = kspace * mask.to(kspace.real.dtype)  # train/val files are fully sampled; test files are zero there already
    maps = lowres_maps(measured, mask)
    zero_filled = center_crop(ifftc(measured).abs().square().sum(1).sqrt(), crop)
    scale = float(np.percentile(zero_filled.numpy(), SCALE_PERCENTILE))
    if not scale > 0:
        raise DataError(f"{volume.fname}: the zero-filled image of the selected slices is zero")
    multicoil = kspace.shape[1] > 1 or getattr(volume, "is_multicoil", False)
    if multicoil or channels == 1:
        physics = EmbeddedMRI(maps.to(device), mask.to(device), channels, grid, full, device=device)
        y = torch.view_as_real(measured / scale).movedim(-1, 1)  # (S, 2, N, H, W)
    else:
        physics = EmbeddedMRI(None, mask.to(device), channels, grid, full, device=device)
        y = torch.view_as_real(measured[:, 0] / scale).movedim(-1, 1)  # (S, 2, H, W)
    return MRIProblemParts(physics, y.contiguous().to(device), scale, mask, crop, grid)


def posterior_images(parts: MRIProblemParts, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, std, per_draw)`` magnitude images in the file's units from posterior draws
    (n, S, C, h, w) of the problem ``parts`` (physical, scaled): the magnitude of the posterior
    mean and of each draw, centre-cropped to the target size, multiplied back by ``parts.scale``;
    ``std`` is the per-pixel std of the draws' magnitudes (zero for one draw). Shapes (S, h, w),
    (S, h, w), (n, S, h, w). What the fastMRI runner scores and ``invsolve reconstruct`` writes."""
    mean = magnitude(draws.mean(0))
    per_draw = magnitude(draws)
    if parts.grid != parts.target_size:
        mean, per_draw = center_crop(mean, parts.target_size), center_crop(per_draw, parts.target_size)
    std = per_draw.std(0) if draws.shape[0] > 1 else torch.zeros_like(mean)
    return mean * parts.scale, std * parts.scale, per_draw * parts.scale


def magnitude(x: torch.Tensor) -> torch.Tensor:
    """|x| of (..., C, H, W) physical images (C = 1 real, C = 2 complex) -> (..., H, W)."""
    return x[..., 0, :, :].abs() if x.shape[-3] == 1 else x.square().sum(-3).sqrt()
