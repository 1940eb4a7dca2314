"""Computed tomography: 2D parallel-beam projector with a matched adjoint and FBP.

Written here instead of using ``deepinv.physics.Tomography`` because that class ties
the detector to the image width and builds its sampling grids in float32, so it cannot
offer a free detector size or an adjoint exact to float64 precision; this projector
is a deepinv ``LinearPhysics`` all the same, so deepinv's solvers accept it.

Geometry (same as astra's ``parallel`` with unit pixels):

- the image has H x W unit pixels centred on the origin; ``x`` runs along columns and
  ``y`` along rows;
- view ``theta`` integrates along the lines ``x cos(theta) + y sin(theta) = s``;
- the detector has ``n_detectors`` bins of width ``detector_spacing`` centred on s = 0
  (default: ``ceil(sqrt(H^2 + W^2))``, the image diagonal);
- the sinogram has shape (..., views, n_detectors).

The forward model samples each ray every ``1 / samples_per_pixel`` pixels with bilinear
interpolation and sums (a Joseph-type line integral in pixel units). The adjoint is the
exact transpose of that sum, computed by autograd through ``grid_sample``, so
``<A x, y> = <x, A^T y>`` holds to the rounding of the dtype. Any leading dimensions
(batch, channels, slices of a volume) are folded together and projected slice by slice.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from deepinv.physics import LinearPhysics
from torch.nn import functional as F


def ramp_filter(n_detectors: int, detector_spacing: float = 1.0, window: str = "ram-lak",
                dtype=torch.float64) -> torch.Tensor:
    """Frequency response (length P, a power of two >= 2n) of the band-limited ramp filter.

    Built from the spatial Ram-Lak kernel of Kak & Slaney (1988, eq. 61), which avoids
    the DC offset of a sampled ``|w|``; ``window`` in {"ram-lak", "shepp-logan", "cosine",
    "hann"} multiplies it in frequency.
    """
    size = max(64, 2 ** math.ceil(math.log2(2 * n_detectors)))
    n = torch.cat([torch.arange(0, size // 2 + 1), torch.arange(-(size // 2) + 1, 0)]).to(dtype)
    h = torch.zeros(size, dtype=dtype)
    h[0] = 1 / (4 * detector_spacing ** 2)
    odd = n.remainder(2) == 1
    h[odd] = -1 / (math.pi * n[odd] * detector_spacing) ** 2
    response = torch.fft.fft(h).real * detector_spacing
    freq = torch.fft.fftfreq(size, dtype=dtype)  # cycles per sample, in [-0.5, 0.5)
    if window == "shepp-logan":
        response = response * torch.sinc(freq)
    elif window == "cosine":
        response = response * torch.cos(math.pi * freq)
    elif window == "hann":
        response = response * (0.5 + 0.5 * torch.cos(2 * math.pi * freq))
    elif window != "ram-lak":
        raise ValueError(f"unknown FBP window {window!r}; choose ram-lak, shepp-logan, cosine or hann")
    return response


class ParallelBeamCT(LinearPhysics):
    """2D parallel-beam CT ``y = A x`` for images (B, C, H, W) or stacks of slices (..., H, W).

    :param img_size: H or (H, W) of one slice.
    :param views: number of views uniformly spread over ``angular_range`` (end excluded), or
        an explicit sequence of angles in degrees.
    :param n_detectors: detector bins (default: the image diagonal, rounded up).
    :param detector_spacing: bin width in pixels.
    :param angular_range: (start, end) in degrees for an integer ``views``.
    :param samples_per_pixel: ray samples per pixel length (accuracy of the line integral).
    :param fbp_window: window of the FBP ramp filter.
    """

    def __init__(self, img_size: int | Sequence[int] = 64, views: int | Sequence[float] = 180,
                 n_detectors: int | None = None, detector_spacing: float = 1.0,
                 angular_range: tuple[float, float] = (0.0, 180.0), samples_per_pixel: float = 2.0,
                 fbp_window: str = "ram-lak", max_points: int = 2 ** 22, **kwargs):
        super().__init__(**kwargs)
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if height < 2 or width < 2:
            raise ValueError(f"img_size must be at least 2x2, got {(height, width)}")
        if isinstance(views, int):
            if views < 1:
                raise ValueError(f"views must be >= 1, got {views}")
            start, end = angular_range
            angles = start + (end - start) * torch.arange(views, dtype=torch.float64) / views
        else:
            angles = torch.as_tensor(list(views), dtype=torch.float64)
            if angles.ndim != 1 or len(angles) == 0:
                raise ValueError("views must be an int or a non-empty 1D sequence of angles in degrees")
        self.img_shape = (height, width)
        self.n_detectors = int(n_detectors or math.ceil(math.hypot(height, width)))
        self.detector_spacing = float(detector_spacing)
        self.fbp_window = fbp_window
        self.max_points = int(max_points)
        theta = torch.deg2rad(angles)
        self.register_buffer("angles", angles)

        # ray sample points (views, detectors, samples, 2) in grid_sample's normalized coordinates
        dt = 1.0 / samples_per_pixel
        half_length = 0.5 * math.hypot(height, width) + 1.0
        n_samples = 2 * math.ceil(half_length / dt) + 1
        t = (torch.arange(n_samples, dtype=torch.float64) - (n_samples - 1) / 2) * dt
        s = (torch.arange(self.n_detectors, dtype=torch.float64) - (self.n_detectors - 1) / 2) * self.detector_spacing
        cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        px = s[None, :, None] * cos - t[None, None, :] * sin
        py = s[None, :, None] * sin + t[None, None, :] * cos
        grid = torch.stack([2 * px / width, 2 * py / height], dim=-1)
        self.register_buffer("grid", grid.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("grid64", grid, persistent=False)
        self.dt = dt
        self.register_buffer("filter_response", ramp_filter(self.n_detectors, self.detector_spacing, fbp_window),
                             persistent=False)

    @property
    def views(self) -> int:
        return len(self.angles)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.views, self.n_detectors)

    def _check_image(self, x: torch.Tensor) -> None:
        if x.ndim < 3 or tuple(x.shape[-2:]) != self.img_shape:
            raise ValueError(f"CT expects images of shape (B, C, {self.img_shape[0]}, {self.img_shape[1]}) "
                             f"(or (B, C, D, H, W) volumes), got {tuple(x.shape)}")

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self._check_image(x)
        lead = x.shape[:-2]
        slices = x.reshape(1, -1, *self.img_shape)
        grid = (self.grid64 if x.dtype == torch.float64 else self.grid).to(x.dtype)
        views, det, samples, _ = grid.shape
        chunk = max(1, self.max_points // (det * samples))
        out = []
        for v0 in range(0, views, chunk):
            g = grid[v0:v0 + chunk].reshape(1, -1, samples, 2)
            proj = F.grid_sample(slices, g, mode="bilinear", padding_mode="zeros", align_corners=False)
            out.append(proj.sum(-1).reshape(slices.shape[1], -1, det))
        return (torch.cat(out, dim=1) * self.dt).reshape(*lead, views, det)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        if y.ndim < 3 or tuple(y.shape[-2:]) != self.sinogram_shape:
            raise ValueError(f"CT sinograms have shape (B, C, {self.views}, {self.n_detectors}), got {tuple(y.shape)}")
        # A is linear, so A^T y is the vector-Jacobian product of A at any point (here 0).
        x = torch.zeros(*y.shape[:-2], *self.img_shape, dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (adjoint,) = torch.autograd.grad(self.A(x), x, grad_outputs=y, create_graph=y.requires_grad)
        return adjoint

    def filter_sinogram(self, y: torch.Tensor) -> torch.Tensor:
        """Ramp-filter each projection along the detector axis (zero-padded linear convolution)."""
        response = self.filter_response.to(device=y.device)
        size = response.shape[0]
        spectrum = torch.fft.fft(F.pad(y, (0, size - y.shape[-1])), dim=-1) * response.to(y.dtype)
        return torch.fft.ifft(spectrum, dim=-1).real[..., : y.shape[-1]].to(y.dtype)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """Filtered back-projection (exact inverse in the continuum for full 180-degree sampling)."""
        span = math.pi if self.views == 1 else float(torch.deg2rad(self.angles[-1] - self.angles[0])) * self.views / (self.views - 1)
        return self.A_adjoint(self.filter_sinogram(y)) * (span / self.views)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Pseudo-inverse used by invsolve: FBP (see ``fbp``)."""
        return self.fbp(y)
