"""Inpainting presets on deepinv's ``Inpainting``: box and random masks, 2D or 3D, seeded.

- box: a centred box of side ``round(box_fraction * size)`` on every spatial axis (the DPS/DAPS
  box is 128 of 256, i.e. ``box_fraction = 0.5``) is removed;
- random: each pixel (voxel) is missing independently with probability ``missing``
  (DAPS: 0.7), drawn from ``torch.Generator().manual_seed(seed)``.
The mask has shape (1, *spatial) and is shared by every channel.
"""

from __future__ import annotations

import torch
from deepinv.physics import Inpainting

from .errors import ConfigError


def box_mask(spatial: tuple[int, ...], box_fraction: float = 0.5) -> torch.Tensor:
    if not 0 < box_fraction < 1:
        raise ConfigError(f"box_fraction must be in (0, 1), got {box_fraction}")
    mask = torch.ones(1, *spatial)
    index = [slice(None)]
    for n in spatial:
        side = round(box_fraction * n)
        start = (n - side) // 2
        index.append(slice(start, start + side))
    mask[tuple(index)] = 0
    return mask


def random_mask(spatial: tuple[int, ...], missing: float = 0.7, seed: int = 0) -> torch.Tensor:
    if not 0 <= missing < 1:
        raise ConfigError(f"missing must be in [0, 1), got {missing}")
    draw = torch.rand(1, *spatial, generator=torch.Generator().manual_seed(seed))
    return (draw >= missing).float()


def make_inpainting(img_size: int | tuple[int, ...] = 256, kind: str = "box", channels: int = 1, dims: int = 2,
                    box_fraction: float = 0.5, missing: float = 0.7, seed: int = 0):
    """deepinv ``Inpainting`` with a ``box`` or ``random`` mask; ``img_size`` is the spatial size."""
    spatial = (img_size,) * dims if isinstance(img_size, int) else tuple(img_size)
    if kind == "box":
        mask = box_mask(spatial, box_fraction)
    elif kind == "random":
        mask = random_mask(spatial, missing, seed)
    else:
        raise ConfigError(f"unknown inpainting kind {kind!r}; choose 'box' or 'random'")
    return Inpainting(img_size=(channels, *spatial), mask=mask)
