"""2D fan-beam CT with a flat or curved (equiangular) detector, and fan-beam FBP.

Geometry (pixel units, same image axes as ``operators/ct.py``: x along columns, y along rows,
row 0 at the most negative y). At view angle ``beta`` the central ray runs along
``d = (-sin beta, cos beta)`` and the detector axis is ``e = (cos beta, sin beta)``, the same
directions as the parallel beam's view ``beta``:

- the source sits at ``-source_distance * d``;
- a **flat** detector is the line through ``detector_distance * d`` along ``e``; bin k is centred
  at ``u_k = (k - (n_detectors - 1) / 2) * detector_spacing`` along ``e``;
- a **curved** (equiangular) detector is the arc of radius ``source_distance + detector_distance``
  centred on the source; bin k is at fan angle ``gamma_k = u_k / (source_distance +
  detector_distance)`` (``detector_spacing`` is the arc length of a bin), measured from ``d``
  towards ``e``.

As ``source_distance`` grows the fan beam tends to ``ParallelBeamCT`` with the same angles. This
is astra-toolbox's ``fanflat`` geometry on a vertically flipped image (``operators/astra_backend.py``).
Line integrals use the shared ray-transform core (``operators.ct.RayTransform``): Joseph's method
by default, adjoint exact to rounding, stored sparse matrices or ``grid_sample`` (``method=``). Every line is integrated across the whole image, so the
image must lie between source and detector; the source must be outside the image's circumscribed
circle.

FBP (``fbp``; ``A_dagger`` is the least-squares solve of ``operators.ct.LeastSquaresDagger``) is
the rebinning-free fan-beam filtered back-projection of Kak & Slaney, *Principles of Computerized
Tomographic Imaging* (1988), section 3.4: for the flat detector, cosine pre-weighting
``D / sqrt(D^2 + s^2)`` on the detector rescaled to the origin, ramp filtering (factor 1/2 for a
full turn) and back-projection weighted by ``1 / U^2``; for the curved detector, pre-weighting
``D cos(gamma)``, the modified kernel ``(gamma / sin gamma)^2 h / 2`` and weight ``1 / L^2``. It
assumes views uniform over a full 360 degrees (no Parker weights for short scans). The back-projection is pixel-driven (linear interpolation on the detector).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .ct import RayTransform, _image_shape, angles_from_views, angular_span, apply_filter, filter_size, \
    pixel_backprojection, ramp_filter, ramp_kernel, window_response


class FanBeamCT(RayTransform):
    """2D fan-beam CT ``y = A x`` for images (B, C, H, W) or stacks of slices (..., H, W).

    :param img_size: H or (H, W) of one slice.
    :param views: number of views uniform over ``angular_range`` (end excluded) or a sequence of
        angles in degrees.
    :param source_distance: source to rotation centre, in pixels (default 2 max(H, W)).
    :param detector_distance: rotation centre to detector (centre), in pixels (default max(H, W)).
    :param detector: "flat" or "curved" (equiangular, centred on the source).
    :param n_detectors: detector bins (default: enough to see the image's circumscribed circle).
    :param detector_spacing: bin width on the detector in pixels, arc length for "curved"
        (default: the magnification, i.e. one pixel at the rotation centre).
    :param angular_range: (start, end) in degrees for an integer ``views``.
    :param samples_per_pixel: ``None`` for Joseph's method, or bilinear samples per pixel length.
    :param fbp_window: window of the FBP ramp filter ("ram-lak", "shepp-logan", "cosine", "hann").
    :param slice_chunk: slices of a volume projected together (bounds memory).
    :param max_points: interpolation points per ``grid_sample`` call (bounds memory).
    :param method: ``"auto"`` (default), ``"sparse"`` or ``"grid"``, with ``sparse_bytes``: see
        ``operators.ct.RayTransform`` (passed on with the other keyword arguments).
    """

    def __init__(self, img_size: int | Sequence[int] = 64, views: int | Sequence[float] = 360,
                 source_distance: float | None = None, detector_distance: float | None = None,
                 detector: str = "flat", n_detectors: int | None = None, detector_spacing: float | None = None,
                 angular_range: tuple[float, float] = (0.0, 360.0), samples_per_pixel: float | None = None,
                 fbp_window: str = "ram-lak", slice_chunk: int = 16, max_points: int = 2 ** 22, **kwargs):
        height, width = _image_shape(img_size)
        if detector not in ("flat", "curved"):
            raise ValueError(f"detector must be 'flat' or 'curved', got {detector!r}")
        source_distance = float(source_distance if source_distance is not None else 2 * max(height, width))
        detector_distance = float(detector_distance if detector_distance is not None else max(height, width))
        radius = 0.5 * math.hypot(height, width)
        if not source_distance > radius:
            raise ValueError(f"source_distance ({source_distance}) must exceed the radius of the image's "
                             f"circumscribed circle ({radius:.2f} pixels)")
        if detector_distance < 0:
            raise ValueError(f"detector_distance must be >= 0, got {detector_distance}")
        span = source_distance + detector_distance
        spacing = float(detector_spacing if detector_spacing is not None else span / source_distance)
        if not spacing > 0:
            raise ValueError(f"detector_spacing must be positive, got {spacing}")
        half_fan = math.asin(radius / source_distance)
        if n_detectors is None:
            half_width = span * math.tan(half_fan) if detector == "flat" else span * half_fan
            n_detectors = 2 * math.ceil(half_width / spacing) + 1
        n_detectors = int(n_detectors)
        if n_detectors < 1:
            raise ValueError(f"n_detectors must be >= 1, got {n_detectors}")
        angles = angles_from_views(views, angular_range)

        beta = torch.deg2rad(angles)[:, None]
        d = torch.stack([-torch.sin(beta), torch.cos(beta)], -1)      # (views, 1, 2) central ray
        e = torch.stack([torch.cos(beta), torch.sin(beta)], -1)       # (views, 1, 2) detector axis
        u = ((torch.arange(n_detectors, dtype=torch.float64) - (n_detectors - 1) / 2) * spacing)[None, :, None]
        if detector == "flat":
            directions = span * d + u * e
        else:
            gamma = u / span
            directions = torch.cos(gamma) * d + torch.sin(gamma) * e
        source = (-source_distance * d).expand_as(directions)
        super().__init__((height, width), source, directions, samples_per_pixel=samples_per_pixel,
                         slice_chunk=slice_chunk, max_points=max_points, **kwargs)
        self.source_distance = source_distance
        self.detector_distance = detector_distance
        self.detector = detector
        self.n_detectors = n_detectors
        self.detector_spacing = spacing
        self.fbp_window = fbp_window
        self.register_buffer("angles", angles)
        self.register_buffer("filter_response", self._fbp_filter(), persistent=False)

    @property
    def views(self) -> int:
        return len(self.angles)

    # ---- FBP --------------------------------------------------------------------------------
    def _fbp_filter(self) -> torch.Tensor:
        """Frequency response of the fan-beam ramp filter, including the 1/2 of a full turn."""
        if self.detector == "flat":
            virtual_spacing = self.detector_spacing * self.source_distance / (self.source_distance + self.detector_distance)
            return 0.5 * ramp_filter(self.n_detectors, virtual_spacing, self.fbp_window)
        alpha = self.detector_spacing / (self.source_distance + self.detector_distance)  # bin angle
        size = filter_size(self.n_detectors)
        h = ramp_kernel(size, alpha)
        n = torch.cat([torch.arange(0, size // 2 + 1), torch.arange(-(size // 2) + 1, 0)]).to(torch.float64)
        gamma = n * alpha
        ratio = torch.where(n == 0, torch.ones_like(gamma), gamma / torch.sin(gamma))
        return window_response(torch.fft.fft(0.5 * ratio ** 2 * h).real * alpha, self.fbp_window)

    def _detector_positions(self) -> torch.Tensor:
        """u_k (flat, on the virtual detector through the origin) or gamma_k (curved)."""
        k = torch.arange(self.n_detectors, dtype=torch.float64) - (self.n_detectors - 1) / 2
        if self.detector == "flat":
            return k * self.detector_spacing * self.source_distance / (self.source_distance + self.detector_distance)
        return k * self.detector_spacing / (self.source_distance + self.detector_distance)

    def filter_sinogram(self, y: torch.Tensor) -> torch.Tensor:
        """Pre-weight (cosine) and ramp-filter each projection along the detector axis."""
        self._check_sinogram(y)
        position = self._detector_positions().to(device=y.device)
        D = self.source_distance
        if self.detector == "flat":
            weight = D / torch.sqrt(D ** 2 + position ** 2)
        else:
            weight = D * torch.cos(position)
        return apply_filter(y * weight.to(y.dtype), self.filter_response)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """Fan-beam filtered back-projection (Kak & Slaney 1988, sec. 3.4), full-turn scans."""
        D, flat = self.source_distance, self.detector == "flat"

        def coordinate(beta, px, py):
            along = D - torch.sin(beta) * px + torch.cos(beta) * py    # source-to-pixel distance along d
            across = torch.cos(beta) * px + torch.sin(beta) * py       # p . e
            if flat:
                return D * across / along, (D / along) ** 2             # virtual-detector s', 1 / U^2
            return torch.atan2(across, along), 1.0 / (along ** 2 + across ** 2)  # gamma', 1 / L^2

        position = self._detector_positions()
        step = float(position[1] - position[0]) if len(position) > 1 else 1.0
        back = pixel_backprojection(self.filter_sinogram(y), self.img_shape, self.angles, coordinate,
                                    float(position[0]), step, self.max_points)
        return back * (angular_span(self.angles, 2 * math.pi) / self.views)
