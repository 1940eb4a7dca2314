"""Gaussian and motion blur on deepinv's ``Blur``, 2D or 3D.

Both follow the DPS/DAPS operators (Chung et al., ICLR 2023, github.com/DPS2022/diffusion-posterior-sampling
``util/img_utils.py::Blurkernel``; Zhang et al., CVPR 2025, github.com/zhangbingliang2019/DAPS
``forward_operator/__init__.py``): the image is padded with ``ReflectionPad2d(k // 2)`` and
cross-correlated with the kernel by ``nn.Conv2d``. deepinv's ``Blur`` computes a true convolution
with reflect padding, so ``physics.filter`` holds the point-spread function (the official kernel
flipped on every axis) and ``physics.A`` equals the official ``conv(x)`` to rounding.

- Gaussian (``deblur-gauss61``): the official kernel is ``scipy.ndimage.gaussian_filter`` of a
  centred delta in a 61x61 window with ``sigma = 3.0`` (scipy's default ``truncate = 4``, so
  only the central 25x25 taps are non-zero); we build it with the same scipy call. In 3D the
  default window is the truncation support, ``2 int(4 std + 0.5) + 1`` voxels per axis (25 for
  std 3), which holds every non-zero tap of the same separable Gaussian.
- Motion (``deblur-motion61``): the kernel of LeviBorodenko's ``motionblur`` package
  (github.com/LeviBorodenko/motionblur, ``Kernel(size=(61, 61), intensity=0.5).kernelMatrix``),
  which DPS and DAPS vendor unchanged; see :func:`motion_kernel`. In 3D the 2D kernel blurs every
  slice (D, H, W -> in-plane H, W), see :func:`make_motion_blur`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from deepinv.physics import Blur
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter

from .errors import ConfigError, DataError


class KernelBlur(Blur):
    """deepinv ``Blur`` that casts its kernel to the input's dtype (so float64 checks work),
    rejects inputs that are not (B, C, H, W) or (B, C, D, H, W), and explains reflect padding's
    size limit instead of failing inside ``F.pad``."""

    def _convolve(self, table, x):
        if x.dim() - 2 not in table:
            raise DataError(f"blur expects (B, C, H, W) or (B, C, D, H, W) tensors, got shape {tuple(x.shape)}")
        if x.dim() != self.filter.dim():
            raise DataError(f"this blur has a {self.filter.dim() - 2}D kernel but got a {x.dim() - 2}D input; "
                            "build it with the matching dims=")
        if self.padding == "reflect":
            for n, k in zip(x.shape[2:], self.filter.shape[2:]):
                if n <= k // 2:
                    raise DataError(f"reflect padding needs every axis longer than half the kernel "
                                    f"(kernel {tuple(self.filter.shape[2:])}, input {tuple(x.shape[2:])}); "
                                    "use a larger input, a smaller kernel_size or padding='circular'")
        kernel = self.filter.to(x.dtype)
        if x.dim() == 5 and kernel.shape[2] == 1:
            # an in-plane (1, kh, kw) kernel blurs each slice in 2D (deepinv's 3D transpose
            # mishandles a depth-1 kernel with padding, and 2D is cheaper)
            b, c, d, h, w = x.shape
            out = table[2](x.transpose(1, 2).reshape(b * d, c, h, w), filter=kernel[:, :, 0], padding=self.padding)
            return out.reshape(b, d, c, *out.shape[-2:]).transpose(1, 2)
        return table[x.dim() - 2](x, filter=kernel, padding=self.padding)

    def A(self, x, **kwargs):
        self.update_parameters(**kwargs)  # deepinv's Blur lets A(x, filter=...) replace the kernel
        return self._convolve(self.conv, x)

    def A_adjoint(self, y, **kwargs):
        self.update_parameters(**kwargs)
        return self._convolve(self.conv_transpose, y)


class GaussianBlur(KernelBlur):
    """Blur with a Gaussian kernel (see :func:`make_gaussian_blur`)."""


class MotionBlur(KernelBlur):
    """Blur with a ``motionblur`` kernel (see :func:`make_motion_blur`)."""


def gaussian_kernel(std: float, kernel_size: int, dims: int = 2, truncate: float = 4.0) -> torch.Tensor:
    """The DPS/DAPS Gaussian kernel: ``scipy.ndimage.gaussian_filter`` of a centred delta in a
    ``kernel_size ** dims`` window (reflect mode, taps beyond ``int(truncate * std + 0.5)`` are 0).
    Returns float64 of shape ``(kernel_size,) * dims``."""
    delta = np.zeros((kernel_size,) * dims)
    delta[(kernel_size // 2,) * dims] = 1.0
    return torch.from_numpy(gaussian_filter(delta, sigma=float(std), truncate=truncate))


def make_gaussian_blur(std: float = 3.0, kernel_size: int | None = None, dims: int = 2, padding: str = "reflect",
                       truncate: float = 4.0):
    """Gaussian blur; ``kernel_size`` defaults to 61 in 2D (DPS/DAPS) and to the truncation
    support ``2 int(truncate std + 0.5) + 1`` in 3D."""
    if dims not in (2, 3):
        raise ConfigError(f"dims must be 2 or 3, got {dims}")
    if std <= 0:
        raise ConfigError(f"std must be positive, got {std}")
    if kernel_size is None:
        kernel_size = 61 if dims == 2 else 2 * int(truncate * std + 0.5) + 1
    if kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be odd, got {kernel_size}")
    kernel = gaussian_kernel(std, kernel_size, dims, truncate)
    return GaussianBlur(filter=kernel[None, None], padding=padding)


# ---------------------------------------------------------------------------------------------
# Motion blur: LeviBorodenko/motionblur (commit 5781378), reproduced from its algorithm.
# ---------------------------------------------------------------------------------------------

_EPS = 0.1  # motionblur's "eps": added to the step-length factor and to the angle range


def _motion_path(rng: np.random.RandomState, width2: int, height2: int, intensity: float) -> list[tuple[float, float]]:
    """The random camera path of ``motionblur.Kernel._createPath`` on the 2x super-sampled canvas
    (``width2`` x ``height2``), as (x, y) points. Draws from ``rng`` in the package's order:

    1. path length ``L = 0.75 diag (U(0,1) + U(0, intensity^2))``; step lengths
       ``Beta(1, 30) (1 - intensity + 0.1) diag`` (a step >= L is redrawn) until their sum >= L;
    2. maximal angle ``U(0, intensity pi)``, sign-flip probability ``Beta(2, 20)``, first angle
       ``U(-max, max)``, then per step ``|angle| ~ Triangular(0, intensity max, max + 0.1)`` with
       the previous angle's sign, flipped when ``U(0,1) <`` the flip probability;
    3. path = cumulative sum of ``step e^{i angle}``, centred on its mean point, rotated by
       ``U(0, pi)`` and moved to the canvas centre.
    Sums are sequential, as in the package, so the points agree to the last bit.
    """
    diagonal = (width2 ** 2 + height2 ** 2) ** 0.5
    max_length = 0.75 * diagonal * (rng.uniform() + rng.uniform(0, intensity ** 2))
    steps, total = [], 0.0
    while total < max_length:
        step = rng.beta(1, 30) * (1 - intensity + _EPS) * diagonal
        if step < max_length:
            steps.append(step)
            total = total + step

    max_angle = rng.uniform(0, intensity * math.pi)
    flip_probability = rng.beta(2, 20)
    angles = [rng.uniform(low=-max_angle, high=max_angle)]
    while len(angles) < len(steps):
        angle = rng.triangular(0, intensity * max_angle, max_angle + _EPS)
        sign = np.sign(angles[-1])
        angles.append(angle * -sign if rng.uniform() < flip_probability else angle * sign)

    points = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    mean = 0
    for p in points:  # sequential, like the package's builtin sum()
        mean = mean + p
    mean = mean / len(steps)
    points = points - mean
    points = points * np.exp(1j * rng.uniform(0, math.pi))
    points = points + (width2 + 1j * height2) / 2
    return [(p.real, p.imag) for p in points]


def motion_kernel(kernel_size: int | tuple[int, int] = 61, intensity: float = 0.5, seed: int = 0,
                  index: int = 0) -> torch.Tensor:
    """The ``motionblur`` kernel, float64 of shape (height, width), normalised to sum 1.

    Equals ``np.random.seed(seed)`` followed by ``index + 1`` calls of
    ``Kernel(size=(width, height), intensity=intensity).kernelMatrix`` (the last one returned):
    the package draws from numpy's global stream; here the same draws come from a private
    ``numpy.random.RandomState(seed)`` (the legacy generator behind ``np.random.seed``, whose
    streams numpy keeps fixed), so nothing global is touched. ``index`` skips earlier kernels:
    DPS and DAPS build a throw-away kernel inside ``Blurkernel`` before the one they use, so the
    kernel of a DAPS run with seed ``s`` is ``motion_kernel(61, 0.5, seed=s, index=1)``.

    The path (:func:`_motion_path`) is drawn as a 1-px-per-150-px-of-diagonal line on a black
    canvas twice the kernel size, blurred with ``ImageFilter.GaussianBlur(int(0.01 diag))``,
    resized to the kernel size with Lanczos and read as 8-bit grey. These steps use Pillow, the
    rasteriser the package itself uses (a Pillow dependency of torchvision), so the 8-bit kernel
    is identical; we checked Pillow 9.2 (DPS's pin) and 13.0 give the same kernels.
    """
    height, width = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if height < 1 or width < 1:
        raise ConfigError(f"kernel_size must be positive, got {kernel_size}")
    if not 0 <= intensity <= 1:
        raise ConfigError(f"intensity must be in [0, 1], got {intensity}")
    if index < 0:
        raise ConfigError(f"index must be >= 0, got {index}")
    width2, height2 = 2 * width, 2 * height
    diagonal = (width2 ** 2 + height2 ** 2) ** 0.5
    rng = np.random.RandomState(seed)
    for _ in range(index + 1):
        path = _motion_path(rng, width2, height2, float(intensity))

    canvas = Image.new("L", (width2, height2))
    # the package draws int(diag / 150) px wide: 0 (an all-zero kernel, NaN after its normalisation)
    # below 54 x 54; we draw 1 px there so small kernels work, and match the package from 54 up
    ImageDraw.Draw(canvas).line(path, fill=255, width=max(1, int(diagonal / 150)))
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=int(diagonal * 0.01)))
    canvas = canvas.resize((width, height), resample=Image.LANCZOS)
    kernel = torch.from_numpy(np.asarray(canvas, dtype=np.float64).copy())
    return kernel / kernel.sum()


def make_motion_blur(kernel_size: int | tuple[int, int] = 61, intensity: float = 0.5, seed: int = 0, index: int = 0,
                     dims: int = 2, padding: str = "reflect"):
    """Motion blur with :func:`motion_kernel` (odd sizes), DPS/DAPS conventions (reflect padding,
    cross-correlation with the package's kernel).

    ``dims=3`` blurs each slice of a (B, C, D, H, W) volume with the same 2D kernel (a filter of
    shape (1, kh, kw)): motion blur is a 2D camera or in-plane patient motion, and the 2D kernel is
    the benchmark definition users compare against; a random 3D trajectory has no reference
    definition to reproduce.
    """
    if dims not in (2, 3):
        raise ConfigError(f"dims must be 2 or 3, got {dims}")
    kernel = motion_kernel(kernel_size, intensity, seed, index)
    if any(n % 2 == 0 for n in kernel.shape):
        raise ConfigError(f"kernel_size must be odd (the official reflect-pad + conv keeps the size only then), "
                          f"got {kernel_size}")
    psf = kernel.flip(-2, -1)  # nn.Conv2d cross-correlates with the kernel; deepinv's Blur convolves
    return MotionBlur(filter=psf.reshape((1, 1) + (1,) * (dims - 2) + tuple(psf.shape)), padding=padding)


def deblur_motion61(seed: int = 42, index: int = 1, dims: int = 2, padding: str = "reflect"):
    """``deblur-motion61``: 61x61 motion kernel, intensity 0.5 (DPS/DAPS ``motion_deblur`` configs);
    the defaults reproduce the kernel of DAPS's ``posterior_sample.py`` at its default seed 42."""
    return make_motion_blur(61, 0.5, seed=seed, index=index, dims=dims, padding=padding)
