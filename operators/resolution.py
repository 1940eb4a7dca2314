"""Super-resolution: bicubic (DPS/DAPS ``Resizer``) and average-pool (DDRM SVD) downsampling, 2D or 3D.

- ``sr-bicubic`` / ``sr4-bicubic``: the ``Resizer(in_shape, 1 / factor)`` of DPS
  (github.com/DPS2022/diffusion-posterior-sampling ``util/resizer.py``, vendored unchanged by DAPS
  as ``forward_operator/resizer.py``; a port of Assaf Shocher's MATLAB-``imresize`` resizer):
  along each resized axis, output sample ``i`` (0-based) sits at input coordinate
  ``c_i = (i + 1/2) s - 1/2 - (m s - n) / 2`` (n input, ``m = ceil(n / s)`` output samples,
  factor s), and takes the antialiased Keys cubic (a = -1/2) weights ``cubic((c_i - j) / s)``
  over input samples j, normalised to sum 1, with indices outside [0, n) mirrored half-sample
  symmetrically (x[-1] = x[0], period 2n). Each axis is a dense (m x n) matrix ``M``; the operator
  applies them one axis after another (a Kronecker product), so ``A^T`` applies ``M^T`` and the
  exact Moore-Penrose pseudo-inverse applies ``pinv(M)`` per axis (``pinv(M1 (x) M2) =
  pinv(M1) (x) pinv(M2)``).
- ``sr-avgpool`` / ``sr4-avgpool``: the mean over s x s (x s) blocks, the ``SuperResolution``
  H-function of DDRM (github.com/bahjat-kawar/ddrm ``functions/svd_replacement.py``: one row of
  ``1 / s^2`` per block), used by DDNM, RED-Diff and FlowDPS. ``A A^T = s^-k I`` (k resized
  axes), so ``A^+ = s^k A^T`` = copy each measured value over its block (nearest-neighbour
  upsampling), exactly what DDRM's SVD gives.

In 3D, ``axes`` picks the spatial axes that are downsampled: ``None`` (default) all of them
(isotropic ``s^3`` reduction, the volumetric analogue of the 2D benchmark), ``(1, 2)`` in-plane
only (H, W of (D, H, W); slices kept), ``(0,)`` through-plane only (thick slices). Axis numbers
count spatial axes only: 0 is D in 3D, H in 2D.

Why not deepinv's classes. ``deepinv.physics.Downsampling(filter="bicubic")`` convolves with a
4s-tap cubic and keeps ``x[::s]``: its sampling grid is offset from imresize's (output i centred
at ``s i + (s - 1) / 2``) and its boundary handling is not the symmetric mirror, so it differs from
the DPS operator even away from the edges (about 0.07 on [0, 1] images at s = 4).
``deepinv.physics.DownsamplingMatlab`` computes the DPS ``A`` on sizes divisible by the factor (we
check this in the tests) but is 2D only, takes its adjoint by autograd on every call, has no exact
pseudo-inverse, and places the grid differently when the size is not divisible. For average
pooling, ``Downsampling(filter=box, padding="valid")`` gives the same ``A`` in 2D, but not in 3D
or per axis, and its ``A_dagger`` falls back on an iterative least-squares solve; the block mean
and its exact pseudo-inverse are two reshapes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from deepinv.physics import LinearPhysics

from .errors import ConfigError, DataError


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -1/2 (MATLAB ``imresize``'s ``cubic``)."""
    ax = np.abs(x)
    return np.where(ax <= 1, 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1,
                    np.where(ax <= 2, -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2, 0.0))


def bicubic_matrix(n: int, factor: int) -> torch.Tensor:
    """The (ceil(n / factor) x n) matrix of the DPS ``Resizer`` downscaling one axis by ``factor``
    (antialiased cubic, normalised weights, half-sample symmetric boundary), float64."""
    s = _check_factor(factor)
    m = -(-n // s)
    centres = (np.arange(m) + 0.5) * s - 0.5 - (m * s - n) / 2
    first = np.floor(centres - 2 * s).astype(np.int64)
    taps = first[:, None] + np.arange(4 * s + 2)[None, :]  # every j with |c_i - j| <= 2s
    weights = _cubic((centres[:, None] - taps) / s)
    weights /= weights.sum(axis=1, keepdims=True)
    period = taps % (2 * n)
    mirrored = np.where(period < n, period, 2 * n - 1 - period)
    matrix = np.zeros((m, n))
    np.add.at(matrix, (np.repeat(np.arange(m), taps.shape[1]), mirrored.reshape(-1)), weights.reshape(-1))
    return torch.from_numpy(matrix)


def _spatial_size(img_size: int | Sequence[int], dims: int | None) -> tuple[int, ...]:
    if isinstance(img_size, int):
        return (img_size,) * (2 if dims is None else dims)
    img_size = tuple(int(n) for n in img_size)
    if dims is not None and dims != len(img_size):
        raise ConfigError(f"img_size {img_size} has {len(img_size)} axes but dims={dims}")
    return img_size


def _resized_axes(axes: Sequence[int] | None, dims: int) -> tuple[int, ...]:
    if dims not in (2, 3):
        raise ConfigError(f"dims must be 2 or 3, got {dims}")
    axes = tuple(range(dims)) if axes is None else tuple(sorted(set(int(a) for a in axes)))
    if not axes or any(a < 0 or a >= dims for a in axes):
        raise ConfigError(f"axes must be spatial axis numbers in 0..{dims - 1} (0 = D in 3D, H in 2D), got {axes}")
    return axes


def _check_factor(factor) -> int:
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ConfigError(f"factor must be a positive integer, got {factor}")
    return int(factor)


def _along(x: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """Multiply every line of ``x`` along ``axis`` by ``matrix`` (out x in)."""
    return torch.movedim(torch.movedim(x, axis, -1) @ matrix.to(x.dtype).T, -1, axis)


class BicubicDownsampling(LinearPhysics):
    """DPS/DAPS bicubic downsampling ``y = Resizer(x)`` as a linear operator with exact adjoint
    and pseudo-inverse; inputs (B, C, *img_size)."""

    def __init__(self, img_size: int | Sequence[int] = 256, factor: int = 4, dims: int | None = None,
                 axes: Sequence[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.img_size = _spatial_size(img_size, dims)
        self.factor = _check_factor(factor)
        self.axes = _resized_axes(axes, len(self.img_size))
        self.out_size = tuple(-(-n // self.factor) if k in self.axes else n for k, n in enumerate(self.img_size))
        for k in self.axes:
            matrix = bicubic_matrix(self.img_size[k], self.factor)
            self.register_buffer(f"matrix{k}", matrix)
            self.register_buffer(f"pinv{k}", torch.linalg.pinv(matrix))

    def _check(self, x: torch.Tensor, size: tuple[int, ...], what: str) -> None:
        if x.dim() != 2 + len(size) or tuple(x.shape[2:]) != size:
            raise DataError(f"this operator expects {what} of shape (B, C, {', '.join(map(str, size))}), "
                            f"got {tuple(x.shape)}; build it with img_size={self.img_size if what == 'images' else size}")

    def _resize(self, x: torch.Tensor, name: str, transpose: bool = False) -> torch.Tensor:
        for k in self.axes:
            matrix = getattr(self, f"{name}{k}")
            x = _along(x, matrix.T if transpose else matrix, 2 + k)
        return x

    def A(self, x, **kwargs):
        self._check(x, self.img_size, "images")
        return self._resize(x, "matrix")

    def A_adjoint(self, y, **kwargs):
        self._check(y, self.out_size, "measurements")
        return self._resize(y, "matrix", transpose=True)

    def A_dagger(self, y, **kwargs):
        """Exact Moore-Penrose pseudo-inverse (minimum-norm least squares), per-axis ``pinv(M)``."""
        self._check(y, self.out_size, "measurements")
        return self._resize(y, "pinv")


class AveragePooling(LinearPhysics):
    """Mean over ``factor``-sized blocks along the resized axes (DDRM ``SuperResolution``), with
    exact adjoint and pseudo-inverse; inputs (B, C, H, W) or (B, C, D, H, W), each resized axis
    divisible by ``factor``. ``img_size`` is optional (checked when given)."""

    def __init__(self, factor: int = 4, dims: int | None = None, axes: Sequence[int] | None = None,
                 img_size: int | Sequence[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.factor = _check_factor(factor)
        self.img_size = None if img_size is None else _spatial_size(img_size, dims)
        self.dims = len(self.img_size) if self.img_size is not None else (2 if dims is None else dims)
        self.axes = _resized_axes(axes, self.dims)
        if self.img_size is not None:
            self._check_input(torch.empty((1, 1) + self.img_size, device="meta"))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 + self.dims:
            raise DataError(f"this operator expects {self.dims}D inputs (B, C, {'D, ' if self.dims == 3 else ''}H, W), "
                            f"got shape {tuple(x.shape)}; build it with dims={x.dim() - 2}")
        if self.img_size is not None and tuple(x.shape[2:]) != self.img_size:
            raise DataError(f"this operator was built for img_size={self.img_size}, got shape {tuple(x.shape)}")
        bad = [x.shape[2 + k] for k in self.axes if x.shape[2 + k] % self.factor]
        if bad:
            raise DataError(f"average pooling by {self.factor} needs every resized axis divisible by {self.factor}, "
                            f"got spatial shape {tuple(x.shape[2:])}; crop or pad the input first")

    def _check_measurement(self, y: torch.Tensor) -> None:
        if y.dim() != 2 + self.dims:
            raise DataError(f"this operator expects {self.dims}D measurements, got shape {tuple(y.shape)}")

    def A(self, x, **kwargs):
        self._check_input(x)
        for k in self.axes:
            ax = 2 + k
            x = x.unflatten(ax, (x.shape[ax] // self.factor, self.factor)).mean(dim=ax + 1)
        return x

    def _replicate(self, y: torch.Tensor) -> torch.Tensor:
        for k in self.axes:
            y = y.repeat_interleave(self.factor, dim=2 + k)
        return y

    def A_adjoint(self, y, **kwargs):
        self._check_measurement(y)
        return self._replicate(y) / self.factor ** len(self.axes)

    def A_dagger(self, y, **kwargs):
        """Exact pseudo-inverse ``s^k A^T``: each value copied over its block."""
        self._check_measurement(y)
        return self._replicate(y)
