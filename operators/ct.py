"""Computed tomography: the shared ray-transform core and the 2D parallel-beam projector.

Written here instead of using ``deepinv.physics.Tomography`` because that class ties
the detector to the image width and builds its sampling grids in float32, so it cannot
offer a free detector size or an adjoint exact to float64 precision; these projectors
are deepinv ``LinearPhysics`` all the same, so deepinv's solvers accept them.

Geometry (pixel units; the image has H x W unit pixels centred on the origin):

- ``x`` runs along columns, ``y`` along rows: pixel (row i, column j) has its centre at
  ``(j + 1/2 - W/2, i + 1/2 - H/2)``, so row 0 is at the most negative ``y``;
- view ``theta`` integrates along the lines ``x cos(theta) + y sin(theta) = s``, i.e. along
  the direction ``(-sin theta, cos theta)``;
- the detector has ``n_detectors`` bins of width ``detector_spacing`` centred on s = 0
  (default: ``ceil(sqrt(H^2 + W^2))``, the image diagonal); bin k sits at
  ``s = (k - (n_detectors - 1) / 2) * detector_spacing``;
- the sinogram has shape (..., views, n_detectors).

This is astra-toolbox's ``parallel`` geometry on a vertically flipped image (astra's ``y``
axis points towards row 0): see ``operators/astra_backend.py``.

Line integrals (``RayTransform``, shared with the fan beam of ``operators/fanbeam.py``): every
ray is a straight line given by a point and a direction. By default each ray is sampled by
Joseph's method (Joseph, IEEE TMI 1982): once per image row if the ray is closer to vertical,
once per image column otherwise, with linear interpolation between the two nearest pixels of
that row (column) and a path length of ``1 / |cos|`` of the ray's angle to the stepping axis.
This is the model of astra's ``linear`` parallel-beam CPU projector (astra has none for fan beam).
With ``samples_per_pixel=q`` the ray is instead sampled every ``1/q`` pixels with bilinear
interpolation (the model of invsolve <= 0.1). Two evaluation methods give the same operator
(``method=``, chosen by ``"auto"`` and stated in the repr):

- ``"sparse"``: the matrix of A (interpolation weights times path lengths, float64, built once with
  numpy/scipy at the first call of a dtype and device) is stored as two CSR matrices, A and its
  transpose, so both directions are gathers (``torch`` sparse-CSR times dense: MKL on the CPU,
  cuSPARSE on CUDA) and cost about the same. Exact transposes of each other by construction.
- ``"grid"``: A by ``grid_sample``, A^T by ``grid_sample``'s own backward kernel (the one autograd
  uses: a scatter, 3-4x the forward's time), no stored matrix; any leading dimensions (batch,
  channels, slices of a volume) are projected ``slice_chunk`` slices at a time, with views in chunks
  of at most ``max_points`` interpolation points (counted over the slices of a chunk) per
  ``grid_sample`` call, so memory beyond the input and output stays bounded.

``"auto"`` takes ``"sparse"`` when its two matrices fit in ``sparse_bytes`` (float32 size, default
512 MiB: 256x256 with 180 views takes about 340 MB) and ``"grid"`` otherwise. In both,
``<A x, y> = <x, A^T y>`` holds to the rounding of the dtype, and A and its adjoint are each
other's autograd backward, so both are differentiable to any order (and ``torch.func`` works).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from scipy import sparse
from deepinv.physics import LinearPhysics
from torch.nn import functional as F

from .linalg import least_squares

METHODS = ("auto", "sparse", "grid")
SPARSE_DTYPES = (torch.float32, torch.float64)


def ramp_kernel(size: int, spacing: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """Spatial band-limited ramp (Ram-Lak) kernel of Kak & Slaney (1988, eq. 61), length
    ``size`` in FFT order (index n and n - size are the same tap)."""
    n = torch.cat([torch.arange(0, size // 2 + 1), torch.arange(-(size // 2) + 1, 0)]).to(dtype)
    h = torch.zeros(size, dtype=dtype)
    h[0] = 1 / (4 * spacing ** 2)
    odd = n.remainder(2) == 1
    h[odd] = -1 / (math.pi * n[odd] * spacing) ** 2
    return h


def filter_size(n_detectors: int) -> int:
    """FFT length of the ramp filter: a power of two >= 2 n_detectors (and >= 64)."""
    return max(64, 2 ** math.ceil(math.log2(2 * n_detectors)))


def window_response(response: torch.Tensor, window: str) -> torch.Tensor:
    """Multiply a filter frequency response (FFT order) by an FBP window."""
    freq = torch.fft.fftfreq(response.shape[0], dtype=response.dtype)  # cycles per sample, in [-0.5, 0.5)
    if window == "shepp-logan":
        return response * torch.sinc(freq)
    if window == "cosine":
        return response * torch.cos(math.pi * freq)
    if window == "hann":
        return response * (0.5 + 0.5 * torch.cos(2 * math.pi * freq))
    if window != "ram-lak":
        raise ValueError(f"unknown FBP window {window!r}; choose ram-lak, shepp-logan, cosine or hann")
    return response


def ramp_filter(n_detectors: int, detector_spacing: float = 1.0, window: str = "ram-lak",
                dtype=torch.float64) -> torch.Tensor:
    """Frequency response (length P, a power of two >= 2n) of the band-limited ramp filter.

    Built from the spatial Ram-Lak kernel of Kak & Slaney (1988, eq. 61), which avoids
    the DC offset of a sampled ``|w|``; ``window`` in {"ram-lak", "shepp-logan", "cosine",
    "hann"} multiplies it in frequency.
    """
    h = ramp_kernel(filter_size(n_detectors), detector_spacing, dtype)
    return window_response(torch.fft.fft(h).real * detector_spacing, window)


def apply_filter(y: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Linear (zero-padded) convolution of each row of ``y`` (last axis) with a filter given by
    its frequency response in FFT order."""
    response = response.to(device=y.device, dtype=y.dtype)
    size = response.shape[0]
    spectrum = torch.fft.fft(F.pad(y, (0, size - y.shape[-1])), dim=-1) * response
    return torch.fft.ifft(spectrum, dim=-1).real[..., : y.shape[-1]].to(y.dtype)


def angles_from_views(views: int | Sequence[float], angular_range: tuple[float, float]) -> torch.Tensor:
    """View angles in degrees (float64): ``views`` uniform over ``angular_range`` (end excluded)
    for an int, else the given sequence."""
    if isinstance(views, int):
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        start, end = angular_range
        return start + (end - start) * torch.arange(views, dtype=torch.float64) / views
    angles = torch.as_tensor(list(views), dtype=torch.float64)
    if angles.ndim != 1 or len(angles) == 0:
        raise ValueError("views must be an int or a non-empty 1D sequence of angles in degrees")
    return angles


def pixel_backprojection(q: torch.Tensor, img_shape: tuple[int, int], angles: torch.Tensor, coordinate,
                         first: float, step: float, max_points: int = 2 ** 22) -> torch.Tensor:
    """Pixel-driven back-projection ``sum_v w_v(p) q_v(u_v(p))`` of sinograms ``q`` (..., views, bins).

    ``coordinate(beta, px, py)`` gives, for view angles ``beta`` (radians, (views, 1)) and pixel
    centres ``px, py`` ((1, H W), pixel units), the detector coordinate ``u`` of each pixel and its
    weight ``w`` (``None`` for 1); bin k sits at ``first + k step``. ``q_v`` is interpolated
    linearly between bins and is zero outside the detector. Used by the FBPs; not an adjoint.
    """
    height, width = img_shape
    views, bins = q.shape[-2:]
    sinos = q.reshape(1, -1, views, bins)
    n, dtype, device = sinos.shape[1], q.dtype, q.device
    xs = torch.arange(width, dtype=torch.float64, device=device) + 0.5 - width / 2
    ys = torch.arange(height, dtype=torch.float64, device=device) + 0.5 - height / 2
    py, px = (t.reshape(1, -1) for t in torch.meshgrid(ys, xs, indexing="ij"))
    beta = torch.deg2rad(angles.to(device=device, dtype=torch.float64))[:, None]
    out = torch.zeros(1, n, height * width, dtype=dtype, device=device)
    chunk = max(1, max_points // (height * width * n))
    for v0 in range(0, views, chunk):
        position, weight = coordinate(beta[v0:v0 + chunk], px, py)
        index = (position - first) / step                                   # continuous bin index
        view = torch.arange(v0, v0 + index.shape[0], dtype=torch.float64, device=device)[:, None]
        grid = torch.stack([(2 * index + 1) / bins - 1, ((2 * view + 1) / views - 1).expand_as(index)], -1)
        values = F.grid_sample(sinos, grid[None].to(dtype), mode="bilinear", padding_mode="zeros",
                               align_corners=False)                         # (1, n, chunk, H W)
        out += (values if weight is None else values * weight.to(dtype)).sum(2)
    return out.reshape(*q.shape[:-2], height, width)


def angular_span(angles: torch.Tensor, default: float) -> float:
    """Angle covered by uniformly spaced views (radians): (last - first) * V / (V - 1)."""
    views = len(angles)
    return default if views == 1 else float(torch.deg2rad(angles[-1] - angles[0])) * views / (views - 1)


def _image_shape(img_size: int | Sequence[int]) -> tuple[int, int]:
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(int(n) for n in img_size)
    if height < 2 or width < 2:
        raise ValueError(f"img_size must be at least 2x2, got {(height, width)}")
    return height, width


def _snap(pos):
    """Coordinates within 1e-9 pixel of an integer, set to it (numpy)."""

    near = np.rint(pos)
    return np.where(np.abs(pos - near) < 1e-9, near, pos)


def _joseph_entries(start, step, weight, rows, index, height, width):
    """Pixel indices and weights (numpy, (views, rays, samples, 2); weight 0 where a pixel is outside
    the image) of Joseph's rays: sample t lies on row (column) t and interpolates linearly between
    the two pixels of that row (column) around it. ``start``/``step`` in pixel coordinates."""

    across = np.where(rows, start[..., 0], start[..., 1])[..., None]   # coordinate across the stepping axis
    slope = np.where(rows, step[..., 0], step[..., 1])[..., None]
    position = _snap(across + index * slope)                            # (v, r, s)
    base = np.floor(position)
    frac = position - base
    base = base.astype(np.int64)
    w = weight[..., None]
    value = np.empty(position.shape + (2,))
    value[..., 0] = (1 - frac) * w
    value[..., 1] = frac * w
    tap = np.empty(position.shape + (2,), dtype=np.int64)
    tap[..., 0] = base
    tap[..., 1] = base + 1
    row_mode = rows[..., None, None]
    size_across = np.where(row_mode, width, height)
    t = index.astype(np.int64)[:, None]
    inside = (tap >= 0) & (tap < size_across) & (t < np.where(row_mode, height, width))
    value[~inside] = 0
    pixel = np.where(row_mode, t * width + tap, tap * width + t)
    return pixel, value


def _bilinear_entries(start, step, weight, index, height, width):
    """Pixel indices and weights (numpy, (views, rays, samples, 4)) of rays sampled at any points:
    bilinear interpolation between the four pixels around each sample, 0 outside the image."""

    pos = _snap(start[:, :, None, :] + index[None, None, :, None] * step[:, :, None, :])   # (v, r, s, 2)
    base = np.floor(pos)
    frac = pos - base
    base = base.astype(np.int64)
    corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    corner = base[..., None, :] + corners                                                  # (v, r, s, 4, 2)
    value = np.where(corners.astype(bool), frac[..., None, :], 1 - frac[..., None, :]).prod(-1) * weight[..., None, None]
    inside = (corner[..., 0] >= 0) & (corner[..., 0] < width) & (corner[..., 1] >= 0) & (corner[..., 1] < height)
    value[~inside] = 0
    return corner[..., 1] * width + corner[..., 0], value


class _Project(torch.autograd.Function):
    """``A x`` with ``A^T`` as its backward (and vice versa below): exact and cheap gradients.

    Written in the ``setup_context`` form with a ``vmap`` rule, so ``torch.func`` transforms
    (``vjp``, ``jacrev``, ``vmap``) work on the CT operators: ``op`` folds any leading dimensions into
    its stack of slices, so a vmapped dimension is moved to the front and projected with the rest."""

    @staticmethod
    def forward(x, op):
        return op._project(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return _Backproject.apply(grad, ctx.op), None

    @staticmethod
    def vmap(info, in_dims, x, op):
        return _Project.apply(x.movedim(in_dims[0], 0), op), 0


class _Backproject(torch.autograd.Function):
    @staticmethod
    def forward(y, op):
        return op._backproject(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return _Project.apply(grad, ctx.op), None

    @staticmethod
    def vmap(info, in_dims, y, op):
        return _Backproject.apply(y.movedim(in_dims[0], 0), op), 0


class LeastSquaresDagger:
    """``A_dagger`` as deepinv defines it, the least-squares solution of ``A x = y``, for the CT
    operators (whose FBP / FDK are ``fbp()`` / ``fdk()``, not ``A_dagger``).

    Conjugate gradients on the normal equations ``A^T A x = A^T y`` from 0
    (``operators.linalg.least_squares``), each batch element on its own: the iterates stay in the
    range of ``A^T``, so the limit is the minimum-norm least-squares solution, and every step
    lowers ``||A x - y||``. It stops at ``max_iter`` iterations or when ``||A^T (A x - y)|| <=
    tol ||A^T y||`` (defaults: the operator's ``max_iter`` and ``tol``, deepinv's 50 and 1e-4
    unless given at construction). CT's normal equations are ill-conditioned, so this is a
    truncated solve (``||A x - y|| / ||y||`` about 1e-2 after 50 iterations on 16x16 to 64x64
    sparse-view problems; more iterations go further). Unlike deepinv's generic ``A_dagger`` it
    keeps no state between calls and gives a batch the same result as its elements one by one.
    """

    def A_dagger(self, y: torch.Tensor, max_iter: int | None = None, tol: float | None = None,
                 **kwargs) -> torch.Tensor:
        return least_squares(self.A, self.A_adjoint, y, iters=int(self.max_iter if max_iter is None else max_iter),
                             tol=float(self.tol if tol is None else tol))


class RayTransform(LeastSquaresDagger, LinearPhysics):
    """Line integrals of 2D slices along given rays, with the exact adjoint (shared core).

    :param img_shape: (H, W) of one slice.
    :param points: (views, rays, 2) one point (x, y) of every ray, in pixel units.
    :param directions: (views, rays, 2) direction of every ray (any length).
    :param samples_per_pixel: ``None`` for Joseph's method (one linear interpolation per row or
        column crossed); a number ``q`` for bilinear samples every ``1/q`` pixels along the ray.
    :param slice_chunk: slices projected together (memory bound for volumes).
    :param max_points: interpolation points per ``grid_sample`` call, counted over the slices of
        the chunk (views are chunked to fit; at least one view per call).
    :param grid_cache_bytes: keep the sample grid of a dtype after the first call when it fits in
        this many bytes (default 256 MiB: 134 MB for 256x256 with 180 views in float32); larger
        grids are rebuilt chunk by chunk at every call (``method="grid"`` only).
    :param method: how ``A`` and ``A^T`` are evaluated. ``"sparse"``: the matrix of ``A`` is built
        once (at the first call of a dtype and device) and stored as two CSR matrices, ``A`` and
        ``A^T``, so both directions are gathers (sparse matrix times dense); ``"grid"``:
        ``grid_sample`` for ``A`` and its backward kernel (a scatter, 2.5-3.5x slower) for
        ``A^T``, with no stored matrix; ``"auto"`` (default): ``"sparse"`` when the two matrices
        take at most ``sparse_bytes`` in float32, else ``"grid"``. The choice is in ``repr``.
    :param sparse_bytes: memory bound of the ``"auto"`` choice (default 512 MiB: 256x256 with
        180 views takes about 340 MB).
    """

    def __init__(self, img_shape: tuple[int, int], points: torch.Tensor, directions: torch.Tensor,
                 samples_per_pixel: float | None = None, slice_chunk: int = 16, max_points: int = 2 ** 22,
                 grid_cache_bytes: int = 2 ** 28, method: str = "auto", sparse_bytes: int = 2 ** 29, **kwargs):
        super().__init__(**kwargs)
        self._grid_cache: dict = {}
        self._sparse_cache: dict = {}
        self.grid_cache_bytes = int(grid_cache_bytes)
        if slice_chunk < 1 or max_points < 1:
            raise ValueError(f"slice_chunk and max_points must be >= 1, got {slice_chunk}, {max_points}")
        if method not in METHODS:
            raise ValueError(f"unknown CT method {method!r}; choose one of {METHODS}")
        self.img_shape = tuple(img_shape)
        self.slice_chunk = int(slice_chunk)
        self.max_points = int(max_points)
        self.samples_per_pixel = samples_per_pixel
        height, width = self.img_shape
        points = points.to(torch.float64)
        directions = directions.to(torch.float64)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        dx, dy = directions[..., 0], directions[..., 1]
        if samples_per_pixel is None:
            # Joseph: step one row (|dy| >= |dx|) or one column per sample, starting at the first
            rows = dy.abs() >= dx.abs()
            along = torch.where(rows, dy, dx)                             # component on the stepping axis
            first = torch.where(rows, 0.5 - height / 2, 0.5 - width / 2)  # first row / column centre
            coord = torch.where(rows, points[..., 1], points[..., 0])
            start = points + ((first - coord) / along)[..., None] * directions
            step = directions / along[..., None]
            weight = 1.0 / along.abs()
            n_samples = max(height, width)
            self.register_buffer("ray_rows", rows, persistent=False)
        else:
            if not samples_per_pixel > 0:
                raise ValueError(f"samples_per_pixel must be positive or None, got {samples_per_pixel}")
            dt = 1.0 / float(samples_per_pixel)
            half_length = 0.5 * math.hypot(height, width) + 1.0
            n_samples = 2 * math.ceil(half_length / dt) + 1
            middle = points - (points * directions).sum(-1, keepdim=True) * directions  # closest to the origin
            start = middle - (n_samples - 1) / 2 * dt * directions
            step = dt * directions
            weight = torch.full_like(dx, dt)
        scale = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)  # grid_sample coordinates
        self.n_samples = int(n_samples)
        self.register_buffer("ray_start", start * scale, persistent=False)
        self.register_buffer("ray_step", step * scale, persistent=False)
        self.register_buffer("ray_weight", weight, persistent=False)
        self.register_buffer("sample_index", torch.arange(self.n_samples, dtype=torch.float64), persistent=False)
        self.sparse_entries = self._count_entries()
        self.sparse_bytes = int(sparse_bytes)
        self.requested_method = method
        self.method = method if method != "auto" else (
            "sparse" if self.sparse_matrix_bytes(torch.float32) <= self.sparse_bytes else "grid")

    # ---- shapes -----------------------------------------------------------------------------
    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return tuple(self.ray_weight.shape)

    def _check_image(self, x: torch.Tensor) -> None:
        if x.ndim < 3 or tuple(x.shape[-2:]) != self.img_shape:
            raise ValueError(f"{type(self).__name__} expects images of shape (B, C, {self.img_shape[0]}, "
                             f"{self.img_shape[1]}) (or (B, C, D, H, W) volumes), got {tuple(x.shape)}")

    def _check_sinogram(self, y: torch.Tensor) -> None:
        views, rays = self.sinogram_shape
        if y.ndim < 3 or tuple(y.shape[-2:]) != (views, rays):
            raise ValueError(f"{type(self).__name__} sinograms have shape (B, C, {views}, {rays}) "
                             f"(or (B, C, D, {views}, {rays})), got {tuple(y.shape)}")

    def extra_repr(self) -> str:
        views, rays = self.sinogram_shape
        model = "joseph" if self.samples_per_pixel is None else f"sampled({self.samples_per_pixel:g}/pixel)"
        size = self.sparse_matrix_bytes(torch.float32) / 1e6
        if self.requested_method == "auto":
            why = "<=" if self.method == "sparse" else ">"
            choice = f"method=sparse (auto: {size:.0f} MB {why} sparse_bytes={self.sparse_bytes / 2 ** 20:.0f} MiB)" \
                if self.method == "sparse" else \
                f"method=grid (auto: sparse matrices {size:.0f} MB {why} sparse_bytes={self.sparse_bytes / 2 ** 20:.0f} MiB)"
        else:
            choice = f"method={self.method} (requested)"
        return f"img_shape={self.img_shape}, sinogram_shape=({views}, {rays}), model={model}, {choice}"

    # ---- public operator --------------------------------------------------------------------
    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self._check_image(x)
        return _Project.apply(x, self)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        self._check_sinogram(y)
        return _Backproject.apply(y, self)

    # ---- core -------------------------------------------------------------------------------
    def _chunks(self, n_slices: int):
        views, rays = self.sinogram_shape
        slice_chunk = min(self.slice_chunk, n_slices)
        view_chunk = max(1, self.max_points // (rays * self.n_samples * slice_chunk))
        return slice_chunk, view_chunk

    def _make_grid(self, v0: int, v1: int, dtype) -> torch.Tensor:
        start = self.ray_start[v0:v1, :, None, :].to(dtype)
        step = self.ray_step[v0:v1, :, None, :].to(dtype)
        index = self.sample_index.to(dtype)[None, None, :, None]
        return torch.addcmul(start, index, step)

    def _grid(self, v0: int, v1: int, dtype) -> torch.Tensor:
        """Sample points of views v0..v1-1, (1, (v1 - v0) * rays, samples, 2) in grid_sample units.

        The whole grid is kept for the next calls when it fits in ``grid_cache_bytes`` (it costs
        about as much to build as to interpolate), else built chunk by chunk."""
        views, rays = self.sinogram_shape
        key = (dtype, self.ray_start.device)
        grid = self._grid_cache.get(key)
        if grid is None and views * rays * self.n_samples * 2 * torch.finfo(dtype).bits // 8 <= self.grid_cache_bytes:
            grid = self._grid_cache[key] = self._make_grid(0, views, dtype)
        grid = grid[v0:v1] if grid is not None else self._make_grid(v0, v1, dtype)
        return grid.reshape(1, -1, self.n_samples, 2)

    def _apply(self, fn, *args, **kwargs):
        self._grid_cache = {}  # .to(), .double(), ...: rebuild from the moved buffers
        self._sparse_cache = {}
        return super()._apply(fn, *args, **kwargs)

    # ---- sparse matrix form ------------------------------------------------------------------
    def _pixel_rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and step of every ray's samples in pixel coordinates (column, row): the coordinates
        ``grid_sample`` (align_corners=False) computes from the grid, in float64."""
        height, width = self.img_shape
        half = torch.tensor([width / 2, height / 2], dtype=torch.float64, device=self.ray_start.device)
        return self.ray_start * half + (half - 0.5), self.ray_step * half

    def _count_entries(self) -> int:
        """Upper bound on the non-zeros of the matrix of ``A``: samples with at least one
        interpolation neighbour inside the image, times 2 (Joseph) or 4 (bilinear) neighbours."""
        start, step = self._pixel_rays()
        lo = torch.zeros(start.shape[:-1], dtype=torch.float64, device=start.device)
        hi = torch.full_like(lo, self.n_samples - 1)
        for axis, size in ((0, self.img_shape[1]), (1, self.img_shape[0])):
            p, d = start[..., axis], step[..., axis]
            moving = d != 0
            safe = torch.where(moving, d, torch.ones_like(d))
            t1, t2 = (-1 - p) / safe, (size - p) / safe  # open interval of t with -1 < p + t d < size
            first = torch.where(moving, torch.minimum(t1, t2).floor() + 1, torch.zeros_like(p))
            last = torch.where(moving, torch.maximum(t1, t2).ceil() - 1, torch.full_like(p, self.n_samples - 1))
            inside = moving | ((p > -1) & (p < size))
            lo = torch.maximum(lo, first)
            hi = torch.where(inside, torch.minimum(hi, last), torch.full_like(hi, -1.0))
        samples = int((hi - lo + 1).clamp_min(0).sum())
        return samples * (2 if self.samples_per_pixel is None else 4)

    def sparse_matrix_bytes(self, dtype=torch.float32) -> int:
        """Memory of the ``"sparse"`` method's two CSR matrices (A and A^T) in ``dtype`` (an upper
        bound: int32 indices, ``sparse_entries`` non-zeros each)."""
        views, rays = self.sinogram_shape
        itemsize = torch.finfo(dtype).bits // 8
        return 2 * self.sparse_entries * (itemsize + 4) + 4 * (views * rays + self.img_shape[0] * self.img_shape[1] + 2)

    def _build_sparse(self):
        """The matrix of ``A`` (rows: view-major rays, columns: row-major pixels) in float64 on the
        CPU, as CSR arrays of A and of A^T (numpy: indptr, indices, data).

        The same sums as ``grid_sample``: bilinear weights of the (up to) four pixels around each
        sample, zero outside the image, times the ray's weight. Coordinates within 1e-9 pixel of
        an integer are snapped to it, so Joseph's samples (on a row or column centre by
        construction) have two neighbours, not four with weights of ~1e-16. Built with numpy one
        or a few views at a time (arrays that stay in cache)."""

        height, width = self.img_shape
        views, rays = self.sinogram_shape
        start, step = (t.cpu().numpy() for t in self._pixel_rays())
        weight = self.ray_weight.cpu().numpy()
        index = self.sample_index.cpu().numpy()
        joseph = self.samples_per_pixel is None
        rows = self.ray_rows.cpu().numpy() if joseph else None
        taps = 2 if joseph else 4
        view_chunk = max(1, 2 ** 17 // (rays * self.n_samples * taps))
        cols, vals, counts = [], [], []
        for v0 in range(0, views, view_chunk):
            v1 = min(views, v0 + view_chunk)
            if joseph:
                pixel, value = _joseph_entries(start[v0:v1], step[v0:v1], weight[v0:v1], rows[v0:v1], index,
                                               height, width)
            else:
                pixel, value = _bilinear_entries(start[v0:v1], step[v0:v1], weight[v0:v1], index, height, width)
            keep = value != 0
            cols.append(pixel[keep])
            vals.append(value[keep])
            counts.append(keep.reshape(-1, self.n_samples * taps).sum(1))
        indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
        index_dtype = np.int32 if indptr[-1] < 2 ** 31 else np.int64
        matrix = sparse.csr_matrix((np.concatenate(vals), np.concatenate(cols).astype(index_dtype),
                                    indptr.astype(index_dtype)), shape=(views * rays, height * width))
        transpose = matrix.T.tocsr()
        return ((matrix.indptr, matrix.indices, matrix.data), (transpose.indptr, transpose.indices, transpose.data))

    def _sparse(self, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR matrices (A, A^T) in ``dtype`` on ``device``, built at the first call of that dtype
        and device; the cache holds their component tensors (plain tensors: the operator can still
        be deep-copied and pickled), from which the CSR tensors are views."""
        if dtype not in SPARSE_DTYPES:
            raise TypeError(f"method='sparse' works in float32 and float64, got {dtype}; use method='grid'")
        device = torch.device(device)
        key = (dtype, device)
        if key not in self._sparse_cache:
            same_values = [k for k in self._sparse_cache if k[0] == torch.float64]
            if same_values:  # the float64 matrices rounded: the values the build would give
                parts = [tuple(t.to(device) for t in part[:2]) + (part[2].to(device, dtype),)
                         for part in self._sparse_cache[same_values[0]]]
            else:
                parts = [(torch.from_numpy(indptr).to(device), torch.from_numpy(indices).to(device),
                          torch.from_numpy(data).to(device, dtype)) for indptr, indices, data in self._build_sparse()]
            self._sparse_cache[key] = parts

        pixels, (views, rays) = self.img_shape[0] * self.img_shape[1], self.sinogram_shape
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
            return tuple(torch.sparse_csr_tensor(*part, shape, check_invariants=False)
                         for part, shape in zip(self._sparse_cache[key], ((views * rays, pixels), (pixels, views * rays))))

    def _uses_sparse(self, t: torch.Tensor) -> bool:
        return self.method == "sparse" and (self.requested_method == "sparse" or t.dtype in SPARSE_DTYPES)

    def _sparse_apply(self, t: torch.Tensor, transpose: bool) -> torch.Tensor:
        views, rays = self.sinogram_shape
        in_shape, out_shape = ((views, rays), self.img_shape) if transpose else (self.img_shape, (views, rays))
        matrix = self._sparse(t.dtype, t.device)[1 if transpose else 0]
        flat = t.reshape(-1, in_shape[0] * in_shape[1])
        out = (matrix @ flat.t()).t()
        return out.reshape(*t.shape[:-2], *out_shape).contiguous()

    # ---- grid_sample form --------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_sparse(x):
            return self._sparse_apply(x, transpose=False)
        views, rays = self.sinogram_shape
        slices = x.reshape(-1, *self.img_shape)
        n = slices.shape[0]
        out = x.new_empty(n, views, rays)
        weight = self.ray_weight.to(x.dtype)
        slice_chunk, view_chunk = self._chunks(n)
        for s0 in range(0, n, slice_chunk):
            block = slices[s0:s0 + slice_chunk].unsqueeze(0)
            for v0 in range(0, views, view_chunk):
                v1 = min(views, v0 + view_chunk)
                samples = F.grid_sample(block, self._grid(v0, v1, x.dtype), mode="bilinear",
                                        padding_mode="zeros", align_corners=False)
                out[s0:s0 + slice_chunk, v0:v1] = samples.sum(-1).view(-1, v1 - v0, rays) * weight[v0:v1]
        return out.reshape(*x.shape[:-2], views, rays)

    def _backproject(self, y: torch.Tensor) -> torch.Tensor:
        if self._uses_sparse(y):
            return self._sparse_apply(y, transpose=True)
        views, rays = self.sinogram_shape
        sinos = y.reshape(-1, views, rays)
        n = sinos.shape[0]
        out = y.new_empty(n, *self.img_shape)
        weight = self.ray_weight.to(y.dtype)
        slice_chunk, view_chunk = self._chunks(n)
        for s0 in range(0, n, slice_chunk):
            block = sinos[s0:s0 + slice_chunk]
            shape = (1, block.shape[0], *self.img_shape)
            acc = y.new_zeros(shape)
            for v0 in range(0, views, view_chunk):
                v1 = min(views, v0 + view_chunk)
                grad = (block[:, v0:v1] * weight[v0:v1]).reshape(1, block.shape[0], -1, 1)
                grad = grad.expand(-1, -1, -1, self.n_samples)
                # the transpose of grid_sample (its backward kernel, input gradient only)
                acc += torch.ops.aten.grid_sampler_2d_backward(grad, acc, self._grid(v0, v1, y.dtype),
                                                               0, 0, False, [True, False])[0]
            out[s0:s0 + slice_chunk] = acc[0]
        return out.reshape(*y.shape[:-2], *self.img_shape)


class ParallelBeamCT(RayTransform):
    """2D parallel-beam CT ``y = A x`` for images (B, C, H, W) or stacks of slices (..., H, W).

    :param img_size: H or (H, W) of one slice.
    :param views: number of views uniformly spread over ``angular_range`` (end excluded), or
        an explicit sequence of angles in degrees.
    :param n_detectors: detector bins (default: the image diagonal, rounded up).
    :param detector_spacing: bin width in pixels.
    :param angular_range: (start, end) in degrees for an integer ``views``.
    :param samples_per_pixel: ``None`` (default) for Joseph's method, or a number of bilinear
        samples per pixel length along each ray.
    :param fbp_window: window of the FBP ramp filter.
    :param slice_chunk: slices of a volume projected together (bounds memory).
    :param max_points: interpolation points (times slices) per ``grid_sample`` call (bounds memory).
    :param method: ``"auto"`` (default), ``"sparse"`` or ``"grid"``, with ``sparse_bytes``: see
        ``RayTransform`` (passed on with the other keyword arguments).
    """

    def __init__(self, img_size: int | Sequence[int] = 64, views: int | Sequence[float] = 180,
                 n_detectors: int | None = None, detector_spacing: float = 1.0,
                 angular_range: tuple[float, float] = (0.0, 180.0), samples_per_pixel: float | None = None,
                 fbp_window: str = "ram-lak", slice_chunk: int = 16, max_points: int = 2 ** 22, **kwargs):
        height, width = _image_shape(img_size)
        angles = angles_from_views(views, angular_range)
        n_detectors = int(n_detectors or math.ceil(math.hypot(height, width)))
        if n_detectors < 1 or not detector_spacing > 0:
            raise ValueError(f"need n_detectors >= 1 and detector_spacing > 0, got {n_detectors}, {detector_spacing}")
        theta = torch.deg2rad(angles)
        s = (torch.arange(n_detectors, dtype=torch.float64) - (n_detectors - 1) / 2) * detector_spacing
        normal = torch.stack([torch.cos(theta), torch.sin(theta)], -1)[:, None, :]     # detector axis
        direction = torch.stack([-torch.sin(theta), torch.cos(theta)], -1)[:, None, :]  # along the ray
        points = s[None, :, None] * normal
        super().__init__((height, width), points, direction.expand_as(points), samples_per_pixel=samples_per_pixel,
                         slice_chunk=slice_chunk, max_points=max_points, **kwargs)
        self.n_detectors = n_detectors
        self.detector_spacing = float(detector_spacing)
        self.fbp_window = fbp_window
        self.register_buffer("angles", angles)
        self.register_buffer("filter_response", ramp_filter(self.n_detectors, self.detector_spacing, fbp_window),
                             persistent=False)

    @property
    def views(self) -> int:
        return len(self.angles)

    def filter_sinogram(self, y: torch.Tensor) -> torch.Tensor:
        """Ramp-filter each projection along the detector axis (zero-padded linear convolution)."""
        return apply_filter(y, self.filter_response)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """Filtered back-projection (exact inverse in the continuum for full 180-degree sampling):
        ramp filter, then pixel-driven back-projection with linear interpolation on the detector."""
        self._check_sinogram(y)

        def coordinate(beta, px, py):
            return torch.cos(beta) * px + torch.sin(beta) * py, None

        first = -(self.n_detectors - 1) / 2 * self.detector_spacing
        back = pixel_backprojection(self.filter_sinogram(y), self.img_shape, self.angles, coordinate, first,
                                    self.detector_spacing, self.max_points)
        return back * (angular_span(self.angles, math.pi) / self.views)
