"""Fourier phase retrieval ``y = |F pad(x)|`` with oversampling, 2D or 3D (nonlinear).

Definition (DPS, Chung et al., ICLR 2023, github.com/DPS2022/diffusion-posterior-sampling,
``guided_diffusion/measurements.py::PhaseRetrievalOperator`` with ``util/img_utils.py::fft2_m``;
DAPS, Zhang et al., CVPR 2025, github.com/zhangbingliang2019/DAPS,
``forward_operator/__init__.py::PhaseRetrieval``):

1. zero-pad every spatial axis by ``pad`` pixels on both sides;
2. take the centred orthonormal FFT of each channel, ``fftshift(fftn(ifftshift(.), norm="ortho"))``
   over the spatial axes (fastMRI's ``fft2c``; the 3D form uses the last three axes);
3. keep the amplitude ``|.|`` (not the intensity ``|.|^2`` of deepinv's ``PhaseRetrieval``).

Padding. Both codes compute ``pad = int(oversample / 8 * resolution)`` per side; DPS fixes
``resolution = 256`` whatever the image size, DAPS passes the image resolution. At 256 x 256 and
``oversample = 2.0`` (the benchmark setting) both give 64 pixels, so the measurement is 384 x 384.
invsolve follows DAPS: ``pad = int(oversample / 8 * n)`` for each spatial axis of length ``n``
(``n / 4`` per side for ``oversample = 2``); pass ``pad=64`` to reproduce DPS's fixed padding at
another size. Despite its name, ``oversample = 2`` makes each axis ``1.5 n`` long.

Value range. DPS applies the operator to images in [-1, 1]; DAPS first maps them to [0, 1]
(``x * 0.5 + 0.5``). Operators in invsolve act on physical units (the problem maps the prior's
model space to them), so with images in [0, 1] this operator is DAPS's.

Gradient. ``|z|`` is not differentiable where ``z = 0``. The vector-Jacobian product used here
(``A_vjp``, and autograd through ``A``, which agree) takes the minimum-norm subgradient there:
``J^T v = P^T Re(F^H (sgn(z) v))`` with ``sgn(0) = 0``, so gradients stay finite (never NaN, as
they would be with ``sqrt(re^2 + im^2)``). Away from zeros of ``z`` (almost every point) this is
the exact derivative.
"""

from __future__ import annotations

from typing import Sequence

import torch
from deepinv.physics import Physics
from torch.nn import functional as F

from .errors import ConfigError, DataError


def centred_fft(z: torch.Tensor, dims: int) -> torch.Tensor:
    """Centred orthonormal FFT over the last ``dims`` axes (fastMRI ``fft2c`` for dims = 2)."""
    axes = tuple(range(-dims, 0))
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(z, dim=axes), dim=axes, norm="ortho"), dim=axes)


def centred_ifft(k: torch.Tensor, dims: int) -> torch.Tensor:
    """Inverse (and adjoint) of ``centred_fft``."""
    axes = tuple(range(-dims, 0))
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(k, dim=axes), dim=axes, norm="ortho"), dim=axes)


def dps_padding(size: int, oversample: float) -> int:
    """Padding per side, ``int(oversample / 8 * size)`` (DAPS; DPS uses size = 256 always)."""
    return int((oversample / 8.0) * size)


class FourierPhaseRetrieval(Physics):
    """``y = |F pad(x)|`` for images (B, C, H, W) or volumes (B, C, D, H, W).

    :param img_size: spatial size ``n``, ``(H, W)`` or ``(D, H, W)``; ``None`` accepts any size
        (the padding is then computed from each input's shape).
    :param oversample: DPS/DAPS oversampling parameter; ``pad = int(oversample / 8 * n)`` per side.
    :param pad: explicit padding per side (an int, or one per spatial axis); overrides ``oversample``.
    :param dims: 2 or 3 spatial axes (default: ``len(img_size)`` for a tuple, otherwise 2).
    :param complex_input: if True, ``x`` is complex in deepinv's convention, (B, 2, ...) holding the
        real and imaginary parts, and ``y`` has one channel; otherwise every channel of a real ``x``
        is transformed on its own.
    :param noise_model: any deepinv noise model (e.g. ``operators.noise.Gaussian``), applied by
        ``physics(x)``; ``A`` is always noiseless.
    """

    def __init__(self, img_size: int | Sequence[int] | None = None, oversample: float = 2.0,
                 pad: int | Sequence[int] | None = None, dims: int | None = None,
                 complex_input: bool = False, **kwargs):
        super().__init__(**kwargs)
        if img_size is not None and not isinstance(img_size, int):
            img_size = tuple(int(n) for n in img_size)
            if dims is not None and dims != len(img_size):
                raise ConfigError(f"img_size {img_size} has {len(img_size)} axes but dims={dims}")
            dims = len(img_size)
        dims = 2 if dims is None else int(dims)
        if dims not in (2, 3):
            raise ConfigError(f"phase retrieval supports 2 or 3 spatial dims, got dims={dims}")
        if isinstance(img_size, int):
            img_size = (img_size,) * dims
        if oversample < 0:
            raise ConfigError(f"oversample must be >= 0, got {oversample}")
        if pad is not None:
            pad = (int(pad),) * dims if isinstance(pad, int) else tuple(int(p) for p in pad)
            if len(pad) != dims or min(pad) < 0:
                raise ConfigError(f"pad must be a non-negative int or {dims} of them, got {pad}")
        self.img_size = img_size
        self.oversample = float(oversample)
        self.pad = pad
        self.dims = dims
        self.complex_input = bool(complex_input)

    def padding(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Padding per side of each spatial axis for an input of spatial shape ``spatial``."""
        return self.pad if self.pad is not None else tuple(dps_padding(n, self.oversample) for n in spatial)

    def measurement_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple(n + 2 * p for n, p in zip(spatial, self.padding(spatial)))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != self.dims + 2:
            raise DataError(f"{self.dims}D phase retrieval expects (B, C, {'D, ' if self.dims == 3 else ''}H, W) "
                            f"inputs, got shape {tuple(x.shape)}; build it with dims={x.ndim - 2} for this input")
        if x.is_complex():
            raise DataError("pass complex images as 2 real channels (real, imaginary) with complex_input=True")
        if self.img_size is not None and tuple(x.shape[2:]) != self.img_size:
            raise DataError(f"this operator was built for spatial size {self.img_size}, got {tuple(x.shape[2:])}")
        if self.complex_input and x.shape[1] != 2:
            raise DataError(f"complex_input=True expects 2 channels (real, imaginary), got {x.shape[1]}")

    def _pad(self, z: torch.Tensor) -> torch.Tensor:
        widths = []
        for p in reversed(self.padding(z.shape[2:])):  # F.pad lists the last axis first
            widths += [p, p]
        return F.pad(z, widths)

    def _as_complex(self, x: torch.Tensor) -> torch.Tensor:
        if self.complex_input:
            return torch.complex(x[:, :1], x[:, 1:])
        return x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """The complex measurement ``F pad(x)`` before the modulus."""
        self._check(x)
        return centred_fft(self._pad(self._as_complex(x)), self.dims)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.spectrum(x).abs()

    def A_vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J(x)^T v = P^T Re(F^H (sgn(F P x) v))`` (``sgn(0) = 0``: minimum-norm subgradient)."""
        z = self.spectrum(x)
        if v.shape != z.shape:
            raise DataError(f"v must have the measurement shape {tuple(z.shape)}, got {tuple(v.shape)}")
        back = centred_ifft(torch.sgn(z) * v.to(z.dtype), self.dims)
        crop = tuple(slice(p, p + n) for p, n in zip(self.padding(x.shape[2:]), x.shape[2:]))
        back = back[(slice(None), slice(None)) + crop]
        if self.complex_input:
            return torch.cat([back.real, back.imag], dim=1)
        return back.real

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        raise NotImplementedError("Fourier phase retrieval has no pseudo-inverse in invsolve; reconstruct with a "
                                  "sampler (iv.sample) or give your own initial guess")
