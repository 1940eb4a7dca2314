"""A projection radiograph: each detector pixel sums the image along one axis (one
parallel-beam view), then the detector blurs the profile. A tutorial plug-in for invsolve."""

import torch
from deepinv.physics import LinearPhysics


class Radiograph(LinearPhysics):
    """``y = K (sum over axis of x)``: line sums of unit-length pixels along ``axis`` (rows by
    default), then a 3-tap detector blur ``K = [w, 1 - 2w, w]`` with zero boundaries.

    Images ``(B, C, H, W)`` give profiles ``(B, C, W)``; volumes ``(B, C, D, H, W)`` give one
    profile per slice, ``(B, C, D, W)``. ``length`` is the number of pixels along ``axis``.
    """

    def __init__(self, length: int, axis: int = -2, detector_blur: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        if axis >= 0:
            raise ValueError(f"axis counts from the end (-1: columns, -2: rows), got {axis}")
        if not 0.0 <= detector_blur < 0.5:
            raise ValueError(f"detector_blur must be in [0, 0.5), got {detector_blur}")
        self.length, self.axis, self.w = length, axis, detector_blur

    def detector(self, profile: torch.Tensor) -> torch.Tensor:
        """``K``: symmetric, so it is its own adjoint."""
        padded = torch.nn.functional.pad(profile, (1, 1))
        return self.w * padded[..., :-2] + (1 - 2 * self.w) * profile + self.w * padded[..., 2:]

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if x.shape[self.axis] != self.length:
            raise ValueError(f"expected {self.length} pixels along axis {self.axis}, got shape {tuple(x.shape)}")
        return self.detector(x.sum(dim=self.axis))

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        back = self.detector(y).unsqueeze(self.axis)
        shape = list(back.shape)
        shape[self.axis] = self.length
        return back.expand(shape).contiguous()


def make_radiograph(img_size: int = 64, axis: int = -2, detector_blur: float = 0.25) -> Radiograph:
    """The factory that ``operators.make("radiograph", ...)`` calls."""
    return Radiograph(length=img_size, axis=axis, detector_blur=detector_blur)
