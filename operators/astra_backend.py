"""astra-toolbox backends: 2D parallel and fan beam on the CPU, 3D cone beam on a CUDA GPU.

astra-toolbox (van Aarle et al., Opt. Express 2016; https://github.com/astra-toolbox/astra-toolbox)
is imported lazily; install it with ``pip install invsolve[astra]``.

**2D (``AstraCT``, CPU).** Wraps a torch geometry (``operators.ct.ParallelBeamCT`` or
``operators.fanbeam.FanBeamCT`` with a flat detector) and projects with astra's CPU projectors
(``parallel``: "linear", "strip", "line"; ``fanflat``: "line_fanflat", "strip_fanflat") through
``astra.OpTomo`` (FP/BP algorithms on arrays linked without copies). Conventions are aligned so
that the two backends compute the same thing:

- astra's volume has ``x`` along columns and ``y`` pointing *up* (row 0 at ``y = +H/2``); ours has
  row 0 at ``y = -H/2``. The image is flipped vertically on its way into astra (and the
  back-projection on its way out); with that flip astra's ``parallel`` angle ``theta`` integrates
  along ``x cos theta + y sin theta = s`` and its ``fanflat`` source sits at ``-SO (-sin theta,
  cos theta)`` with the detector axis ``(cos theta, sin theta)`` -- exactly our angles, detector
  order and distances, so angles are passed unchanged (in radians).
- astra's parallel ``linear`` projector is Joseph's method, the torch default: the two agree to
  float32 rounding (3e-6 relative). ``strip`` / ``strip_fanflat`` integrate the image over each
  bin's strip divided by the bin width: they differ from Joseph's model by the detector aperture,
  0.1-0.2 % on smooth images and 0.6-0.9 % on a 48x48 Shepp-Logan phantom. ``line`` /
  ``line_fanflat`` (intersection lengths with square pixels) differ by up to 1.4 % on smooth
  images and 3 % on the phantom; astra has no CPU Joseph projector for fan beam, so the fan-beam
  default is ``strip_fanflat``.
- astra works in float32 on the CPU, one slice at a time (its 2D CPU code is single-threaded);
  inputs of any dtype/device are converted and the result is returned in the input's dtype and
  device. Forward and back-projection are each other's autograd backward, so the operator is
  differentiable; astra's BP is the transpose of its FP to float32 rounding.
- ``A_dagger`` is the least-squares solution (``operators.ct.LeastSquaresDagger``, CG on the normal
  equations with astra's FP/BP); ``fbp`` is the torch geometry's FBP (same geometry, in torch).

**3D cone beam (``ConeBeamCT``, CUDA only).** astra's 3D code runs only on a GPU and aborts the
whole Python process when none is usable, so ``ConeBeamCT`` checks ``astra.use_cuda()`` (a 2D-safe
query) before touching any 3D function and raises a ``RuntimeError`` otherwise. ``fdk`` is
astra's FDK (``FDK_CUDA``); ``A_dagger`` is the least-squares solution, as for the 2D operators.

**Backend switch.** ``make_ct`` and ``make_fanbeam`` (the registry's ``ct`` and ``ct-fan``) build the
torch geometry and return it (``backend="torch"``) or ``AstraCT`` on it (``backend="astra"``):
this module imports ``operators.ct`` and ``operators.fanbeam``, never the other way round.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from deepinv.physics import LinearPhysics

from .ct import LeastSquaresDagger, ParallelBeamCT, angles_from_views
from .ct import _Backproject, _Project  # A and A^T as each other's autograd backward, via op._project/_backproject
from .fanbeam import FanBeamCT

PARALLEL_PROJECTORS = ("linear", "strip", "line")
FAN_PROJECTORS = ("line_fanflat", "strip_fanflat")


def import_astra():
    """``import astra`` with an error naming the extra to install."""
    try:
        import astra
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("backend='astra' needs astra-toolbox: pip install invsolve[astra] "
                          "(or pip install astra-toolbox)") from err
    return astra


def cuda_available() -> bool:
    """Whether astra can use a CUDA GPU. Uses only ``astra.use_cuda()``, which is safe without a
    GPU (unlike astra's 3D functions, which abort the process)."""
    astra = import_astra()
    try:
        return bool(astra.use_cuda())
    except Exception:  # pragma: no cover - defensive
        return False


class AstraCT(LeastSquaresDagger, LinearPhysics):
    """2D CT projected by astra-toolbox's CPU projectors, on the geometry of a torch CT operator.

    :param geometry: a ``ParallelBeamCT`` or a flat-detector ``FanBeamCT``: image size, angles,
        detector and distances are read from it, and its FBP is this operator's ``fbp``.
    :param projector: astra projector type: "linear" (default; Joseph, the torch model), "strip"
        or "line" for parallel beam; "strip_fanflat" or "line_fanflat" for fan beam ("strip" and
        "line" are accepted for fan beam and mapped to these).
    """

    def __init__(self, geometry: LinearPhysics, projector: str | None = None, **kwargs):
        super().__init__(**kwargs)
        astra = import_astra()
        self.geometry = geometry
        self.img_shape = tuple(geometry.img_shape)
        self.sinogram_shape = tuple(geometry.sinogram_shape)
        angles = torch.deg2rad(geometry.angles).numpy()
        if isinstance(geometry, FanBeamCT):
            projector = projector or "strip_fanflat"
            if geometry.detector != "flat":
                raise ValueError("astra has no 2D curved-detector (equiangular) fan-beam geometry; use "
                                 "detector='flat' with backend='astra', or backend='torch' for 'curved'")
            projector = {"line": "line_fanflat", "strip": "strip_fanflat"}.get(projector, projector)
            if projector not in FAN_PROJECTORS:
                raise ValueError(f"astra's fan-beam CPU projectors are {FAN_PROJECTORS} (astra has no CPU "
                                 f"Joseph/'linear' fan-beam projector), got {projector!r}")
            self.proj_geom = astra.create_proj_geom("fanflat", geometry.detector_spacing, geometry.n_detectors, angles,
                                                    geometry.source_distance, geometry.detector_distance)
        elif isinstance(geometry, ParallelBeamCT):
            projector = projector or "linear"
            if projector not in PARALLEL_PROJECTORS:
                raise ValueError(f"astra parallel-beam CPU projectors are {PARALLEL_PROJECTORS}, got {projector!r}")
            self.proj_geom = astra.create_proj_geom("parallel", geometry.detector_spacing, geometry.n_detectors, angles)
        else:
            raise TypeError(f"AstraCT needs a ParallelBeamCT or FanBeamCT geometry, got {type(geometry).__name__}")
        self.projector = projector
        self.vol_geom = astra.create_vol_geom(*self.img_shape)  # rows = H, columns = W, unit pixels, centred

    def _operator(self):
        astra = import_astra()
        projector_id = astra.create_projector(self.projector, self.proj_geom, self.vol_geom)
        return astra, projector_id, astra.OpTomo(projector_id)

    def _run(self, stack: torch.Tensor, forward: bool) -> torch.Tensor:
        in_shape, out_shape = (self.img_shape, self.sinogram_shape) if forward else (self.sinogram_shape, self.img_shape)
        data = stack.detach().to("cpu", torch.float32).reshape(-1, *in_shape)
        if forward:
            data = data.flip(-2)  # astra's row 0 is at the top (y = +H/2)
        data = np.ascontiguousarray(data.numpy())
        out = np.zeros((data.shape[0], *out_shape), dtype=np.float32)
        astra, projector_id, op = self._operator()
        try:
            for i in range(data.shape[0]):
                (op.FP if forward else op.BP)(data[i], out=out[i])
        finally:
            astra.projector.delete(projector_id)
        result = torch.from_numpy(out)
        if not forward:
            result = result.flip(-2)
        return result.to(device=stack.device, dtype=stack.dtype).reshape(*stack.shape[:-2], *out_shape)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, forward=True)

    def _backproject(self, y: torch.Tensor) -> torch.Tensor:
        return self._run(y, forward=False)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.geometry._check_image(x)
        return _Project.apply(x, self)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        self.geometry._check_sinogram(y)
        return _Backproject.apply(y, self)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """The torch geometry's FBP (same geometry, computed in torch)."""
        return self.geometry.fbp(y)


class ConeBeamCT(LeastSquaresDagger, LinearPhysics):
    """3D cone-beam CT through astra-toolbox's CUDA code (``cone`` geometry), FDK as ``fdk``.

    Volumes (B, C, D, H, W) (D slices along astra's z, H rows, W columns, unit voxels centred on
    the origin) give projections (B, C, views, det_rows, det_cols). astra's conventions apply:
    at angle ``theta`` the source is at ``SO (sin theta, -cos theta, 0)`` in astra's volume frame
    (``y`` up the rows, ``z`` along the slices) and the flat detector at distance ``OD`` on the
    other side, its rows along ``z``. Needs a CUDA GPU and astra's CUDA build; raises
    ``RuntimeError`` at construction otherwise (checked before any 3D astra call, since astra's
    3D calls abort the process without a GPU).

    :param img_size: (D, H, W) or an int for a cube.
    :param views: number of views over ``angular_range`` (end excluded) or angles in degrees.
    :param source_distance, detector_distance: in voxels (defaults 2 max and 1 max of the size).
    :param det_rows, det_cols: detector size (default: enough for the magnified volume).
    :param det_spacing: (row, column) spacing on the detector (default: the magnification).
    :param filter_type: FDK filter (astra's ``FilterType`` option, e.g. "ram-lak", "hann").
    """

    def __init__(self, img_size: int | Sequence[int] = 64, views: int | Sequence[float] = 360,
                 source_distance: float | None = None, detector_distance: float | None = None,
                 det_rows: int | None = None, det_cols: int | None = None,
                 det_spacing: float | tuple[float, float] | None = None,
                 angular_range: tuple[float, float] = (0.0, 360.0), filter_type: str = "ram-lak", **kwargs):
        super().__init__(**kwargs)
        astra = import_astra()
        if not cuda_available():
            raise RuntimeError("3D cone-beam CT needs a CUDA GPU and astra-toolbox's CUDA build "
                               "(astra.use_cuda() is False here); astra's 3D code has no CPU version and "
                               "aborts the Python process without a GPU. Use the 2D operators "
                               "(make('ct'), make('ct-fan')) or slice-wise 3D parallel beam on the CPU.")
        depth, height, width = (img_size,) * 3 if isinstance(img_size, int) else tuple(int(n) for n in img_size)
        size = max(depth, height, width)
        self.source_distance = float(source_distance if source_distance is not None else 2 * size)
        self.detector_distance = float(detector_distance if detector_distance is not None else size)
        magnification = (self.source_distance + self.detector_distance) / self.source_distance
        if det_spacing is None:
            det_spacing = (magnification, magnification)
        elif not isinstance(det_spacing, (tuple, list)):
            det_spacing = (float(det_spacing), float(det_spacing))
        radius = 0.5 * math.hypot(height, width)
        if not self.source_distance > radius:
            raise ValueError(f"source_distance must exceed the volume's radius ({radius:.2f} voxels)")
        scale = (self.source_distance + self.detector_distance) / (self.source_distance - radius)
        self.det_rows = int(det_rows or 2 * math.ceil(0.5 * depth * scale / det_spacing[0]) + 1)
        self.det_cols = int(det_cols or 2 * math.ceil(radius * magnification / math.sqrt(
            1 - (radius / self.source_distance) ** 2) / det_spacing[1]) + 1)
        self.det_spacing = tuple(float(s) for s in det_spacing)
        self.filter_type = filter_type
        self.img_shape = (depth, height, width)
        angles = angles_from_views(views, angular_range)
        self.register_buffer("angles", angles)
        self.vol_geom = astra.create_vol_geom(height, width, depth)  # rows, columns, slices
        self.proj_geom = astra.create_proj_geom("cone", self.det_spacing[1], self.det_spacing[0], self.det_rows,
                                                self.det_cols, torch.deg2rad(angles).numpy(),
                                                self.source_distance, self.detector_distance)

    @property
    def views(self) -> int:
        return len(self.angles)

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        return (self.views, self.det_rows, self.det_cols)

    def _volumes(self, x: torch.Tensor, shape) -> np.ndarray:
        if x.ndim < 4 or tuple(x.shape[-3:]) != tuple(shape):
            raise ValueError(f"ConeBeamCT expects (B, C, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        return np.ascontiguousarray(x.detach().to("cpu", torch.float32).reshape(-1, *shape).numpy())

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        astra = import_astra()
        volumes = self._volumes(x, self.img_shape)
        out = []
        for volume in volumes:
            data_id, proj = astra.create_sino3d_gpu(volume, self.proj_geom, self.vol_geom)
            astra.data3d.delete(data_id)
            out.append(np.transpose(proj, (1, 0, 2)))  # astra: (det_rows, views, det_cols)
        result = torch.from_numpy(np.stack(out))
        return result.to(device=x.device, dtype=x.dtype).reshape(*x.shape[:-3], *self.projection_shape)

    def _astra_projections(self, y: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(self._volumes(y, self.projection_shape), (0, 2, 1, 3)))

    def _backproject(self, y: torch.Tensor) -> torch.Tensor:
        astra = import_astra()
        out = []
        for proj in self._astra_projections(y):
            data_id, volume = astra.create_backprojection3d_gpu(proj, self.proj_geom, self.vol_geom)
            astra.data3d.delete(data_id)
            out.append(volume)
        result = torch.from_numpy(np.stack(out))
        return result.to(device=y.device, dtype=y.dtype).reshape(*y.shape[:-3], *self.img_shape)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return _Project.apply(x, self)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return _Backproject.apply(y, self)

    def fdk(self, y: torch.Tensor) -> torch.Tensor:
        """Feldkamp-Davis-Kress reconstruction (astra ``FDK_CUDA``)."""
        astra = import_astra()
        out = []
        for proj in self._astra_projections(y):
            proj_id = astra.data3d.create("-sino", self.proj_geom, proj)
            vol_id = astra.data3d.create("-vol", self.vol_geom, 0)
            cfg = astra.astra_dict("FDK_CUDA")
            cfg["ProjectionDataId"], cfg["ReconstructionDataId"] = proj_id, vol_id
            cfg["option"] = {"FilterType": self.filter_type}
            alg_id = astra.algorithm.create(cfg)
            try:
                astra.algorithm.run(alg_id)
                out.append(astra.data3d.get(vol_id))
            finally:
                astra.algorithm.delete(alg_id)
                astra.data3d.delete([proj_id, vol_id])
        result = torch.from_numpy(np.stack(out))
        return result.to(device=y.device, dtype=y.dtype).reshape(*y.shape[:-3], *self.img_shape)


def _with_backend(geometry_class, backend: str, projector: str | None, params: dict) -> LinearPhysics:
    """The one backend switch of the CT factories: ``geometry_class(**params)`` itself (torch) or
    ``AstraCT`` on it (astra; ``projector=None`` takes ``AstraCT``'s default for the geometry)."""
    if backend == "torch":
        if projector is not None:
            raise TypeError("projector= chooses an astra projector; pass backend='astra' with it")
        return geometry_class(**params)
    if backend == "astra":
        geometry = geometry_class(**params)  # noise_model= (operators.noise) stays on the operator returned
        return AstraCT(geometry, projector=projector, noise_model=geometry.noise_model)
    raise ValueError(f"unknown CT backend {backend!r}; choose 'torch' or 'astra'")


def make_ct(backend: str = "torch", projector: str | None = None, **params) -> LinearPhysics:
    """2D parallel-beam CT: ``ParallelBeamCT(**params)`` (``backend="torch"``) or the same geometry
    projected by astra-toolbox's CPU ``projector`` ("linear" by default, "strip" or "line";
    ``backend="astra"``, needs ``pip install invsolve[astra]``)."""
    return _with_backend(ParallelBeamCT, backend, projector, params)


def make_fanbeam(backend: str = "torch", projector: str | None = None, **params) -> LinearPhysics:
    """2D fan-beam CT: ``FanBeamCT(**params)`` (``backend="torch"``) or the same geometry projected
    by astra-toolbox's CPU ``projector`` ("strip_fanflat" by default, or "line_fanflat"; flat
    detector only; ``backend="astra"``, needs ``pip install invsolve[astra]``)."""
    return _with_backend(FanBeamCT, backend, projector, params)
