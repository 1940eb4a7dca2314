"""Cartesian MRI with fastMRI masks, on deepinv's ``MRI`` and ``MultiCoilMRI``.

deepinv's operators already follow fastMRI's conventions (centred orthonormal 2D FFT,
complex images as 2 real channels (B, 2, H, W)); this module builds them with column masks
drawn exactly as fastMRI draws them (``operators.masks``), expanded over the readout
(row) direction.
"""

from __future__ import annotations

import torch


def cartesian_mask(img_size: tuple[int, int], mask_type: str = "equispaced_fraction", acceleration: float = 4,
                   center_fraction: float | None = None, seed: int | tuple[int, ...] = 0) -> torch.Tensor:
    """(H, W) mask of fastMRI columns for images of ``img_size``; ``center_fraction`` defaults to
    fastMRI's pairing (0.08 for 4x, 0.04 for 8x)."""
    from .masks import create_mask_for_mask_type

    height, width = img_size
    if center_fraction is None:
        defaults = {4: 0.08, 8: 0.04}
        if acceleration not in defaults:
            raise ValueError(f"give center_fraction for acceleration {acceleration} (fastMRI pairs 4x/0.08, 8x/0.04)")
        center_fraction = defaults[acceleration]
    mask_func = create_mask_for_mask_type(mask_type, [center_fraction], [acceleration], seed=seed)
    columns, _ = mask_func((1, height, width, 2))
    return columns.reshape(1, width).expand(height, width).clone()


def make_mri(img_size: int | tuple[int, int] = 320, coils: int | torch.Tensor | None = None,
             mask: torch.Tensor | None = None, mask_type: str = "equispaced_fraction", acceleration: float = 4,
             center_fraction: float | None = None, seed: int | tuple[int, ...] = 0):
    """Single-coil (``coils=None``) or multi-coil Cartesian MRI.

    ``coils`` is a number of simulated birdcage coils or a complex tensor (N, H, W) of coil maps.
    Without ``mask``, a fastMRI mask of ``mask_type`` / ``acceleration`` is drawn with ``seed``.
    """
    from deepinv.physics import MRI, MultiCoilMRI

    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if mask is None:
        mask = cartesian_mask(size, mask_type, acceleration, center_fraction, seed)
    if coils is None:
        return MRI(mask=mask, img_size=size)
    try:
        return MultiCoilMRI(mask=mask, coil_maps=coils, img_size=size)
    except ImportError as err:
        raise ImportError("simulated coil maps need sigpy: pip install 'invsolve[mri]', or pass coil maps") from err
