"""Cartesian MRI in fastMRI's conventions: single- and multi-coil (SENSE), 2D images and 3D volumes.

Conventions (fastMRI, facebookresearch/fastMRI ``fastmri/fftc.py``, ``coil_combine.py``,
``data/transforms.py``; deepinv ``physics/mri.py``):

- complex images and k-space as two real channels: images (B, 2, H, W) or volumes
  (B, 2, D, H, W); single-coil k-space has the image's shape, multi-coil k-space is
  (B, 2, N, H, W) / (B, 2, N, D, H, W) with N coils (deepinv's layout);
- centred orthonormal FFT: ``fftshift(fftn(ifftshift(x), norm="ortho"))``, so ``A^H`` of a
  fully sampled single coil is the exact inverse; RSS = sqrt(sum over coils of |x|^2);
  ``center_crop`` takes fastMRI's centre (start ``(n - s) // 2``);
- the readout direction is H (rows, always fully sampled); masks keep whole k-space columns
  (phase encodes, W), as fastMRI's mask functions do;
- volumes (D, H, W): ``three_d=True`` is a 3D acquisition, a 3D FFT over (D, H, W) with a
  mask over the (kz, ky) = (D, W) plane (e.g. Poisson-disc); ``three_d=False`` is a multi-slice
  acquisition, a 2D FFT of every slice over (H, W), with one column mask for all slices
  (or a mask per slice of shape (D, 1, W) / (D, H, W)).

The multi-coil operator (``SenseMRI``) folds the FFT shifts into the coil maps and the mask:
for an axis of length n and c = n // 2 the centred DFT is
``Y[k] = sum_m x[m] w^((k - c)(m - c)) = w^(c^2) w^(-kc) sum_m w^(km) (w^(-cm) x[m])`` with
``w = exp(-2 pi i / n)``, i.e. a plain FFT between two diagonal phases (+-1 checkerboards for
even n). ``A x = M' F (S' x)`` with ``S' = phase * S`` and ``M' = M * phase * w^(c^2)`` costs one
complex multiply, one FFT and one mask multiply per coil, with no shift copies (see
``benchmarks/operators/sense.md``). ``A_dagger`` is CG-SENSE (Pruessmann et al., "SENSE:
sensitivity encoding for fast MRI", MRM 42:952-962, 1999; "Advances in sensitivity encoding
with arbitrary k-space trajectories", MRM 46:638-651, 2001): conjugate gradients on
``(A^H A + lambda I) x = A^H y``, as ``sigpy.mri.app.SenseRecon`` (mikgroup/sigpy) solves it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from deepinv.physics import MRI, MultiCoilMRI

from .coils import as_complex_kspace, birdcage_maps, estimate_coil_maps  # noqa: F401 (public re-export)
from .masks import create_mask_for_mask_type, poisson_disc_mask
from .linalg import cg

# --------------------------------------------------------------------------------------------
# fastMRI helpers


def fftc(x: torch.Tensor, dim: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """fastMRI's centred orthonormal FFT of a complex tensor over ``dim``."""
    dim = tuple(dim)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dim), dim=dim, norm="ortho"), dim=dim)


def ifftc(x: torch.Tensor, dim: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """fastMRI's centred orthonormal inverse FFT of a complex tensor over ``dim``."""
    dim = tuple(dim)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=dim), dim=dim, norm="ortho"), dim=dim)


def rss(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Root-sum-of-squares coil combination ``sqrt(sum_n |x_n|^2)`` (fastMRI's ``rss_complex``).

    ``x`` is complex with coils along ``dim`` (default 1, i.e. (B, N, ...)) and the result drops
    that axis; or real in deepinv's layout (B, 2, N, ...) with coils along ``dim`` (default 2),
    and the result is the magnitude image (B, 1, ...).
    """
    if x.is_complex():
        return x.abs().square().sum(dim=1 if dim is None else dim).sqrt()
    if x.ndim < 4 or x.shape[1] != 2:
        raise ValueError(f"rss expects complex (B, N, ...) or real (B, 2, N, ...) coil images; got {tuple(x.shape)}")
    return x.square().sum(dim=1, keepdim=True).sum(dim=2 if dim is None else dim).sqrt()


_rss = rss  # for methods whose ``rss`` argument shadows the function


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centre crop of the trailing ``len(shape)`` axes, as fastMRI's ``center_crop``
    (start ``(n - s) // 2`` on each axis; fastMRI targets are 320 x 320)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) > x.ndim:
        raise ValueError(f"cannot crop {len(shape)} axes of a {x.ndim}-D tensor")
    index = [slice(None)] * (x.ndim - len(shape))
    for n, s in zip(x.shape[x.ndim - len(shape):], shape):
        if not 0 < s <= n:
            raise ValueError(f"crop size {shape} does not fit the tensor's trailing shape "
                             f"{tuple(x.shape[-len(shape):])}")
        start = (n - s) // 2
        index.append(slice(start, start + s))
    return x[tuple(index)]


# --------------------------------------------------------------------------------------------
# masks


def cartesian_mask(img_size: tuple[int, int], mask_type: str = "equispaced_fraction", acceleration: float = 4,
                   center_fraction: float | None = None, seed: int | tuple[int, ...] = 0) -> torch.Tensor:
    """(H, W) mask of fastMRI columns for images of ``img_size``; ``center_fraction`` defaults to
    fastMRI's pairing (0.08 for 4x, 0.04 for 8x). ``mask_type="uniform1d"`` gives
    DiffusionMBIR's mask instead (``uniform1d_columns``)."""
    height, width = img_size
    if mask_type == "uniform1d":
        if center_fraction is None:
            raise ValueError("give center_fraction for uniform1d masks (DiffusionMBIR uses 0.15)")
        columns = uniform1d_columns(width, acceleration, center_fraction, seed)
        return columns.reshape(1, width).expand(height, width).clone()
    if center_fraction is None:
        defaults = {4: 0.08, 8: 0.04}
        if acceleration not in defaults:
            raise ValueError(f"give center_fraction for acceleration {acceleration} (fastMRI pairs 4x/0.08, 8x/0.04)")
        center_fraction = defaults[acceleration]
    mask_func = create_mask_for_mask_type(mask_type, [center_fraction], [acceleration], seed=seed)
    columns, _ = mask_func((1, height, width, 2))
    return columns.reshape(1, width).expand(height, width).clone()


def uniform1d_columns(width: int, acceleration: float, center_fraction: float, seed: int = 0) -> torch.Tensor:
    """(W,) column mask of DiffusionMBIR / score-MRI's ``get_mask(type="uniform1d")``
    (HJ-harry/DiffusionMBIR ``utils.py``): ``int(W / R) - int(W * cf)`` columns drawn uniformly
    *with replacement* (``np.random.choice``), plus the ``int(W * cf)`` centre columns from
    ``W // 2 - int(W * cf) // 2``. The official script draws from numpy's global state; here
    from ``RandomState(seed)``, i.e. the columns the official code draws after ``np.random.seed(seed)``.
    """
    n_samples = width // acceleration
    n_center = int(width * center_fraction)
    if n_samples - n_center < 0:
        raise ValueError(f"acceleration {acceleration} keeps fewer columns than the centre ({n_center})")
    mask = torch.zeros(width)
    columns = np.random.RandomState(seed).choice(width, int(n_samples - n_center))
    mask[torch.from_numpy(columns)] = 1
    start = width // 2 - n_center // 2
    mask[start:start + n_center] = 1
    return mask


# --------------------------------------------------------------------------------------------
# layouts and the folded centred FFT


def _spatial_size(img_size) -> tuple[int, ...]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) not in (2, 3) or min(size) < 1:
        raise ValueError(f"img_size must be H, (H, W) or (D, H, W); got {img_size}")
    return size


def _broadcasts_to(shape, target) -> bool:
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


def _mask_layout(mask, spatial: tuple[int, ...]) -> torch.Tensor:
    """Real mask (B, 2, ...) broadcastable to (B, 2, *spatial) from a mask broadcastable to
    ``spatial`` (e.g. (H, W), (1, H, W) for every slice, (D, 1, W) over (kz, ky)), or deepinv's
    (C, *spatial) / (B, C, *spatial) layouts with C in {1, 2}."""
    mask = torch.as_tensor(mask)
    if mask.is_complex():
        raise ValueError("the sampling mask must be real (0/1 or weights), not complex")
    if not mask.is_floating_point():
        mask = mask.float()
    n = len(spatial)
    if mask.ndim <= n:
        mask = mask.reshape((1, 1) + (1,) * (n - mask.ndim) + tuple(mask.shape))
    elif mask.ndim == n + 1:
        mask = mask.unsqueeze(0)
    elif mask.ndim != n + 2:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of spatial size {spatial}: give a "
                         f"mask broadcastable to {spatial}, or (B, C, *{spatial}) with C = 1 or 2")
    if mask.shape[1] == 1:
        mask = torch.cat([mask, mask], dim=1)
    if mask.shape[1] != 2 or not _broadcasts_to(mask.shape[2:], spatial):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to (B, 2, *{spatial})")
    return mask


def _maps_layout(coil_maps: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    if not torch.is_tensor(coil_maps) or not coil_maps.is_complex():
        raise ValueError("coil maps must be a complex tensor (N, *spatial) or (B, N, *spatial); "
                         "use operators.coils.birdcage_maps or estimate_coil_maps to make one")
    n = len(spatial)
    if coil_maps.ndim == n + 1:
        coil_maps = coil_maps.unsqueeze(0)
    if coil_maps.ndim != n + 2 or not _broadcasts_to(coil_maps.shape[2:], spatial):
        raise ValueError(f"coil maps of shape {tuple(coil_maps.shape)} do not fit images of spatial size {spatial}: "
                         f"give (N, *{spatial}) or (B, N, *{spatial})")
    return coil_maps


def centering_phases(sizes: Sequence[int]) -> tuple[torch.Tensor, complex]:
    """Phase ``p`` over ``sizes`` and constant ``g`` with ``fftc(x) = g * p * fftn(p * x)``.

    Per axis of length n, c = n // 2: ``p[m] = exp(2 pi i c m / n)``, ``g = exp(-2 pi i c^2 / n)``;
    for even n, ``p = (-1)^m`` and ``g = (-1)^c`` are real (returned as float64), otherwise complex128.
    """
    real = all(n % 2 == 0 for n in sizes)
    phase = torch.ones((), dtype=torch.float64 if real else torch.complex128)
    constant = 1.0 + 0.0j
    for n in sizes:
        c = n // 2
        m = torch.arange(n, dtype=torch.float64)
        if real:
            p = 1.0 - 2.0 * (m % 2)
        else:
            p = torch.polar(torch.ones(n, dtype=torch.float64), 2 * math.pi * ((c * m) % n) / n)
        phase = phase.unsqueeze(-1) * p
        constant *= complex(np.exp(-2j * math.pi * ((c * c) % n) / n))
    if real:
        constant = complex(round(constant.real), 0.0)
    return phase, constant


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return {torch.float32: torch.complex64, torch.float64: torch.complex128, torch.float16: torch.complex32,
            torch.complex64: torch.complex64, torch.complex128: torch.complex128}[dtype]


# --------------------------------------------------------------------------------------------
# operators


class SingleCoilMRI(MRI):
    """Single-coil Cartesian MRI ``y = M F x`` (deepinv ``MRI``), for images and volumes.

    :param mask: real mask broadcastable to ``img_size`` (or deepinv's (B, C, ...) layout);
        ``None`` samples everything.
    :param img_size: (H, W) or (D, H, W).
    :param three_d: for volumes, 3D FFT over (D, H, W) (``True``) or a 2D FFT per slice (``False``).

    ``A_dagger`` is the exact pseudo-inverse (zero-filled inverse FFT); ``A_adjoint(y, mag=True)``
    gives the magnitude image. Unlike deepinv's ``MRI`` it accepts volumes with per-slice 2D FFTs
    and masks that broadcast (e.g. one column mask for every slice).
    """

    def __init__(self, mask: torch.Tensor | None = None, img_size=(320, 320), three_d: bool = False,
                 device: torch.device | str = "cpu", **kwargs):
        spatial = _spatial_size(img_size)
        if three_d and len(spatial) != 3:
            raise ValueError("three_d=True needs a volume img_size (D, H, W)")
        self._spatial = spatial
        super().__init__(mask=torch.ones(spatial) if mask is None else mask, img_size=spatial, three_d=three_d,
                         device=device, **kwargs)
        self.img_size = (2,) + spatial

    def check_mask(self, mask: torch.Tensor | None = None, three_d: bool = False, **kwargs) -> torch.Tensor | None:
        return None if mask is None else _mask_layout(mask, self._spatial)

    def _check(self, t: torch.Tensor, what: str) -> None:
        if t.ndim != 2 + len(self._spatial) or t.shape[1] != 2 or tuple(t.shape[2:]) != self._spatial:
            raise ValueError(f"{what} must have shape (B, 2, *{self._spatial}) (real and imaginary channels); "
                             f"got {tuple(t.shape)}")

    def A(self, x: torch.Tensor, mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        self._check(x, "images")
        return super().A(x, mask, **kwargs)

    def A_adjoint(self, y: torch.Tensor, mask: torch.Tensor | None = None, mag: bool = False, crop: bool = False,
                  **kwargs) -> torch.Tensor:
        self._check(y, "k-space")
        x = super(MRI, self).A_adjoint(y, mask, **kwargs)
        if mag:
            x = x.square().sum(dim=1, keepdim=True).sqrt()
        return self.crop(x, crop=crop)


class SenseMRI(MultiCoilMRI):
    """Multi-coil Cartesian MRI (SENSE model) ``y_n = M F (S_n x)``, n = 1..N, for images and volumes.

    :param coil_maps: complex maps (N, *img_size) or (B, N, *img_size) (broadcastable, e.g.
        (N, 1, H, W) for the same maps on every slice), or an int N for simulated birdcage maps
        (``operators.coils.birdcage_maps``).
    :param mask: real mask broadcastable to ``img_size`` (or deepinv's (B, C, ...) layout);
        ``None`` samples everything.
    :param img_size: (H, W) or (D, H, W); default: from ``coil_maps`` (N, H, W), or (N, D, H, W)
        when ``three_d``.
    :param three_d: for volumes, a 3D FFT over (D, H, W) (``True``) or a 2D FFT per slice (``False``).
    :param max_iter, tol: CG iterations and relative residual of ``A_dagger``.
    :param tikhonov: ``lambda`` of ``A_dagger``: it minimises ``||A x - y||^2 / 2 + lambda ||x||^2 / 2``.

    Images (B, 2, *img_size) -> k-space (B, 2, N, *img_size), deepinv's layout; the maps are
    applied at the input's precision (float32 -> complex64, float64 -> complex128).
    """

    def __init__(self, coil_maps: torch.Tensor | int, mask: torch.Tensor | None = None, img_size=None,
                 three_d: bool = False, max_iter: int = 100, tol: float = 1e-6, tikhonov: float = 0.0,
                 device: torch.device | str = "cpu", **kwargs):
        if img_size is None:
            if isinstance(coil_maps, int):
                raise ValueError("give img_size with a number of simulated coils")
            if coil_maps.ndim == 3 or (three_d and coil_maps.ndim == 4):
                img_size = tuple(coil_maps.shape[1:])
            else:
                raise ValueError(f"give img_size: coil maps of shape {tuple(coil_maps.shape)} could be batched 2D "
                                 f"maps or 3D maps")
        spatial = _spatial_size(img_size)
        if three_d and len(spatial) != 3:
            raise ValueError("three_d=True needs a volume img_size (D, H, W)")
        if isinstance(coil_maps, int):
            coil_maps = birdcage_maps((coil_maps,) + spatial)
        self._spatial = spatial
        self.tikhonov = float(tikhonov)
        kwargs.setdefault("implicit_backward_solver", False)  # A_dagger / prox_l2 are our own CG
        super().__init__(mask=torch.ones(spatial) if mask is None else mask, coil_maps=coil_maps, img_size=spatial,
                         three_d=three_d, device=device, max_iter=max_iter, tol=tol, **kwargs)
        self.img_size = (2,) + spatial
        self._fft_dims = tuple(range(-(3 if three_d else 2), 0))
        self._refold()

    # layouts -----------------------------------------------------------------------------
    def check_mask(self, mask: torch.Tensor | None = None, three_d: bool = False, **kwargs) -> torch.Tensor | None:
        return None if mask is None else _mask_layout(mask, self._spatial)

    def check_coil_maps(self, coil_maps: torch.Tensor, three_d: bool = False) -> torch.Tensor:
        return _maps_layout(coil_maps, self._spatial)

    def update_parameters(self, mask: torch.Tensor | None = None, coil_maps: torch.Tensor | None = None, **kwargs):
        """Replace the mask and/or coil maps (same layouts as the constructor)."""
        mask = None if mask is None else self.check_mask(mask)
        coil_maps = None if coil_maps is None else self.check_coil_maps(coil_maps)
        super(MultiCoilMRI, self).update_parameters(mask=mask, coil_maps=coil_maps, **kwargs)
        if mask is not None or coil_maps is not None:
            self._refold()

    def _refold(self) -> None:
        """Fold the FFT-centring phases into the coil maps and the mask (see the module docstring)."""
        sizes = self._spatial[-len(self._fft_dims):]
        phase, constant = centering_phases(sizes)
        phase = phase.to(self.coil_maps.device)
        maps = self.coil_maps * phase.to(self.coil_maps.dtype if phase.is_complex() else self.coil_maps.real.dtype)
        mask = self.mask[:, :1]  # (B, 1, ...): broadcasts over coils
        if phase.is_complex():
            mask_folded = (mask.to(torch.complex128) * phase * constant).to(self.coil_maps.dtype)
        else:
            mask_folded = mask * phase.to(mask.dtype) * constant.real
        self.register_buffer("_maps_folded", maps, persistent=False)
        self.register_buffer("_maps_folded_conj", maps.conj().resolve_conj(), persistent=False)
        self.register_buffer("_mask_folded", mask_folded, persistent=False)
        self.register_buffer("_mask_folded_conj", mask_folded.conj().resolve_conj(), persistent=False)
        self.register_buffer("_mask_sq", mask.square(), persistent=False)

    def _to(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        t = getattr(self, name)
        target = dtype if t.is_complex() else _complex_dtype(dtype).to_real()
        return t if t.dtype == target else t.to(target)

    def _image_to_complex(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 + len(self._spatial) or x.shape[1] != 2 or tuple(x.shape[2:]) != self._spatial:
            raise ValueError(f"images must have shape (B, 2, *{self._spatial}) (real and imaginary channels); "
                             f"got {tuple(x.shape)}")
        return torch.view_as_complex(x.movedim(1, -1).contiguous())

    def _kspace_to_complex(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != 3 + len(self._spatial) or y.shape[1] != 2 or tuple(y.shape[3:]) != self._spatial:
            raise ValueError(f"k-space must have shape (B, 2, N, *{self._spatial}); got {tuple(y.shape)}")
        return torch.view_as_complex(y.movedim(1, -1).contiguous())  # free for our own A's output

    @staticmethod
    def _mul(t: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """``t * factor``, in place when the result has t's shape (t is a fresh FFT output)."""
        return t.mul_(factor) if _broadcasts_to(factor.shape, t.shape) else t * factor

    # complex core ----------------------------------------------------------------------
    def forward_complex(self, x: torch.Tensor) -> torch.Tensor:
        """``A`` on complex images (B, *img_size) -> complex k-space (B, N, *img_size)."""
        maps = self._to("_maps_folded", x.dtype)
        k = torch.fft.fftn(x.unsqueeze(1) * maps, dim=self._fft_dims, norm="ortho")
        return self._mul(k, self._to("_mask_folded", x.dtype))

    def adjoint_complex(self, y: torch.Tensor) -> torch.Tensor:
        """``A^H`` on complex k-space (B, N, *img_size) -> complex images (B, *img_size)."""
        images = torch.fft.ifftn(y * self._to("_mask_folded_conj", y.dtype), dim=self._fft_dims, norm="ortho")
        return self._mul(images, self._to("_maps_folded_conj", y.dtype)).sum(1)

    def normal_complex(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A`` on complex images (the centring phases of the mask cancel: ``|M'|^2 = M^2``)."""
        maps = self._to("_maps_folded", x.dtype)
        k = torch.fft.fftn(x.unsqueeze(1) * maps, dim=self._fft_dims, norm="ortho")
        images = torch.fft.ifftn(self._mul(k, self._to("_mask_sq", x.dtype)), dim=self._fft_dims, norm="ortho")
        return self._mul(images, self._to("_maps_folded_conj", x.dtype)).sum(1)

    # deepinv API ------------------------------------------------------------------------
    def A(self, x: torch.Tensor, mask: torch.Tensor | None = None, coil_maps: torch.Tensor | None = None,
          **kwargs) -> torch.Tensor:
        """Images (B, 2, *img_size) -> k-space (B, 2, N, *img_size)."""
        if mask is not None or coil_maps is not None:
            self.update_parameters(mask=mask, coil_maps=coil_maps)
        return torch.view_as_real(self.forward_complex(self._image_to_complex(x))).movedim(-1, 1)

    def A_adjoint(self, y: torch.Tensor, mask: torch.Tensor | None = None, coil_maps: torch.Tensor | None = None,
                  rss: bool = False, crop: bool = False, **kwargs) -> torch.Tensor:
        """k-space (B, 2, N, *img_size) -> images (B, 2, *img_size); with ``rss=True`` the RSS
        magnitude (B, 1, *img_size) of the zero-filled coil images instead (fastMRI's target)."""
        if mask is not None or coil_maps is not None:
            self.update_parameters(mask=mask, coil_maps=coil_maps)
        yc = self._kspace_to_complex(y)
        if rss:
            masked = yc * self._to("_mask_folded_conj", yc.dtype)
            coil_images = torch.fft.ifftn(masked, dim=self._fft_dims, norm="ortho")
            x = _rss(coil_images).unsqueeze(1)  # |phase| = 1: the RSS is that of ifftc(M y)
        else:
            x = torch.view_as_real(self.adjoint_complex(yc)).movedim(-1, 1)
        return self.crop(x, crop=crop)

    def A_adjoint_A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.view_as_real(self.normal_complex(self._image_to_complex(x))).movedim(-1, 1)

    def A_dagger(self, y: torch.Tensor, mask: torch.Tensor | None = None, coil_maps: torch.Tensor | None = None,
                 tol: float | None = None, max_iter: int | None = None, tikhonov: float | None = None,
                 x_init: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """CG-SENSE: conjugate gradients on ``(A^H A + lambda I) x = A^H y`` from ``x_init``
        (default 0, as sigpy's ``SenseRecon``), per batch element, to relative residual ``tol``
        or ``max_iter`` iterations (defaults from the constructor). Differentiable by unrolling."""
        if mask is not None or coil_maps is not None:
            self.update_parameters(mask=mask, coil_maps=coil_maps)
        lam = self.tikhonov if tikhonov is None else float(tikhonov)
        rhs = self.adjoint_complex(self._kspace_to_complex(y))
        x0 = None if x_init is None else self._image_to_complex(x_init)

        def normal(v):
            return self.normal_complex(v) + lam * v if lam else self.normal_complex(v)

        x = cg(normal, rhs, x0, tol=self.tol if tol is None else tol,
               iters=self.max_iter if max_iter is None else max_iter)
        return torch.view_as_real(x).movedim(-1, 1)

    def prox_l2(self, z: torch.Tensor, y: torch.Tensor, gamma, tol: float | None = None, max_iter: int | None = None,
                **kwargs) -> torch.Tensor:
        """``argmin_x ||A x - y||^2 / 2 + ||x - z||^2 / (2 gamma)``: CG on
        ``(A^H A + I / gamma) x = A^H y + z / gamma`` started from ``z``; ``gamma`` a float or a
        tensor with one value per batch element."""
        rhs = self.adjoint_complex(self._kspace_to_complex(y))
        zc = self._image_to_complex(z) if torch.is_tensor(z) else torch.full_like(rhs, 0 if z is None else z)
        inv_gamma = 1 / torch.as_tensor(gamma, dtype=rhs.real.dtype, device=rhs.device)
        if inv_gamma.ndim:
            inv_gamma = inv_gamma.reshape((-1,) + (1,) * (rhs.ndim - 1))
        x = cg(lambda v: self.normal_complex(v) + inv_gamma * v, rhs + inv_gamma * zc, zc,
               tol=self.tol if tol is None else tol, iters=self.max_iter if max_iter is None else max_iter)
        return torch.view_as_real(x).movedim(-1, 1)


def make_mri(img_size: int | tuple[int, ...] = 320, coils: int | torch.Tensor | None = None,
             mask: torch.Tensor | None = None, mask_type: str = "equispaced_fraction", acceleration: float = 4,
             center_fraction: float | None = None, seed: int | tuple[int, ...] = 0, three_d: bool = False,
             calib: tuple[int, int] = (24, 24), **kwargs):
    """Single-coil (``coils=None``) or multi-coil (SENSE) Cartesian MRI, 2D or 3D.

    :param img_size: H, (H, W) or (D, H, W) (a volume).
    :param coils: ``None`` (single coil), a number of simulated birdcage coils, or complex maps
        (N, *img_size) / (B, N, *img_size).
    :param mask: real mask broadcastable to ``img_size``; without it one is drawn:
        ``mask_type`` in ``random``, ``equispaced``, ``equispaced_fraction`` (fastMRI columns, with
        fastMRI's centre fractions 0.08 / 0.04 for 4x / 8x), ``uniform1d`` (DiffusionMBIR columns)
        or ``poisson`` (variable-density Poisson-disc via sigpy, ``calib`` fully sampled centre).
        Column masks keep whole columns of every slice (and every kz in 3D); ``poisson`` is over
        (ky, kx) = (H, W) for 2D and per-slice volumes and over (kz, ky) = (D, W) when ``three_d``.
    :param seed: mask seed (``operators.masks.fastmri_seed(filename)`` gives fastMRI's per-file mask).
    :param three_d: volumes only: 3D FFT (``True``) or per-slice 2D FFT (``False``).
    :param kwargs: passed to the operator (``SenseMRI``: ``max_iter``, ``tol``, ``tikhonov``;
        both: deepinv ``noise_model``).
    """
    spatial = _spatial_size(img_size)
    if mask is None:
        height, width = spatial[-2:]
        if mask_type == "poisson":
            if not isinstance(seed, (int, np.integer)):
                raise ValueError(f"Poisson-disc masks need an integer seed, got {seed!r}")

            if three_d:
                mask = poisson_disc_mask((spatial[0], width), acceleration, calib=calib, seed=int(seed)).unsqueeze(1)
            else:
                mask = poisson_disc_mask((height, width), acceleration, calib=calib, seed=int(seed))
        else:
            mask = cartesian_mask((height, width), mask_type, acceleration, center_fraction, seed)
    if coils is None:
        return SingleCoilMRI(mask=mask, img_size=spatial, three_d=three_d, **kwargs)
    return SenseMRI(coils, mask=mask, img_size=spatial, three_d=three_d, **kwargs)


def make_mri_volume(img_size: tuple[int, int, int] = (155, 240, 240), **params):
    """``make_mri`` for volumes (D, H, W) only (presets on volumes)."""
    if isinstance(img_size, int) or len(img_size) != 3:
        raise ValueError(f"this preset works on volumes: give img_size=(D, H, W), got {img_size}")
    return make_mri(img_size=img_size, **params)
