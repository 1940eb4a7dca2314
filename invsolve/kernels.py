"""Seeded motion-blur kernels: the training data of the kernel prior of BlindDPS and its held-out set.

A kernel is ``operators.blur.motion_kernel(size, intensity, seed)`` (the ``motionblur`` package's
kernel, the one DPS, DAPS and BlindDPS draw their motion blur from), one seed per kernel. Training
seeds are drawn from the ``torch.Generator`` of the training loop in ``[0, 2**31)``; the held-out
kernels use seeds ``HELDOUT_KERNEL_SEED + i`` at and above ``2**31``, so the two sets never share a
kernel.

Two units, as for any other prior (``physical_range`` and the card's map):

- *image units* (what the prior learns and ``random_motion_kernels`` returns): the kernel divided
  by its peak, values in [0, 1];
- *blur units* (what a blur operator applies): the kernel normalised to sum 1 (``as_blur``).
"""

from __future__ import annotations

import torch

from operators.blur import motion_kernel

INTENSITY = 0.5
"""``motionblur`` intensity of the kernels (the DPS / DAPS / BlindDPS default)."""
HELDOUT_KERNEL_SEED = 2 ** 31
"""First seed of the held-out kernels (training seeds are below it)."""


def kernels_from_seeds(seeds, size: int, intensity: float = INTENSITY) -> torch.Tensor:
    """Motion kernels of the given seeds, (n, 1, size, size) float32, each divided by its peak."""
    ks = [motion_kernel(size, intensity, seed=int(s)) for s in seeds]
    out = torch.stack([k / k.max() for k in ks]).to(torch.float32)
    return out[:, None]


def random_motion_kernels(n: int, size: int = 16, generator: torch.Generator | None = None,
                          intensity: float = INTENSITY) -> torch.Tensor:
    """``n`` training kernels (peak 1), seeds drawn from ``generator`` in ``[0, 2**31)``."""
    seeds = torch.randint(0, HELDOUT_KERNEL_SEED, (n,), generator=generator)
    return kernels_from_seeds(seeds.tolist(), size, intensity)


def heldout_motion_kernels(n: int, size: int = 16, intensity: float = INTENSITY) -> torch.Tensor:
    """The first ``n`` held-out kernels (peak 1; seeds ``HELDOUT_KERNEL_SEED + i``, never used in training)."""
    return kernels_from_seeds(range(HELDOUT_KERNEL_SEED, HELDOUT_KERNEL_SEED + n), size, intensity)


def as_blur(kernels: torch.Tensor) -> torch.Tensor:
    """Image-unit kernels (B, 1, h, w) -> blur kernels: negatives clipped to 0, each normalised to sum 1."""
    k = kernels.clamp(min=0)
    return k / k.sum(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(k.dtype).tiny)
