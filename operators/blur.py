"""Gaussian blur on deepinv's ``Blur``, 2D or 3D.

``deblur-gauss61`` is the DPS/DAPS definition: a 61x61 Gaussian kernel of standard deviation
3.0 px, normalised to sum 1, applied with reflect padding (the official code pads with
``ReflectionPad2d``). In 3D the default kernel is ``2 * ceil(4 std) + 1`` voxels per axis
(25 for std 3: the 61-tap kernel's values beyond 4 std are below 4e-4 of its peak).
"""

from __future__ import annotations

import math

from deepinv.physics import Blur


class GaussianBlur(Blur):
    """deepinv ``Blur`` that casts its kernel to the input's dtype (so float64 checks work)
    and rejects inputs that are not (B, C, H, W) or (B, C, D, H, W)."""

    def _convolve(self, table, x):
        if x.dim() - 2 not in table:
            raise ValueError(f"blur expects (B, C, H, W) or (B, C, D, H, W) tensors, got shape {tuple(x.shape)}")
        if x.dim() != self.filter.dim():
            raise ValueError(f"this blur has a {self.filter.dim() - 2}D kernel but got a {x.dim() - 2}D input; "
                             "build it with the matching dims=")
        return table[x.dim() - 2](x, filter=self.filter.to(x.dtype), padding=self.padding)

    def A(self, x, **kwargs):
        return self._convolve(self.conv, x)

    def A_adjoint(self, y, **kwargs):
        return self._convolve(self.conv_transpose, y)


def make_gaussian_blur(std: float = 3.0, kernel_size: int | None = None, dims: int = 2, padding: str = "reflect"):
    from deepinv.physics.functional.blur import gaussian_blur

    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if kernel_size is None:
        kernel_size = 61 if dims == 2 else 2 * math.ceil(4 * std) + 1
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    kernel = gaussian_blur(psf_size=(kernel_size,) * dims, sigma=(float(std),) * dims)
    return GaussianBlur(filter=kernel / kernel.sum(), padding=padding)
