"""Motion blur (and the exact DPS/DAPS Gaussian kernel) in operators/blur.py.

Reference kernels in tests/data/motionblur_kernels.json were recorded by running
LeviBorodenko/motionblur's motionblur.py unmodified (Pillow 9.2.0, the DPS pin; Pillow 13.0
gave identical kernels) after ``np.random.seed(seed)``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import operators as ops
from operators.blur import _motion_path, motion_kernel
from operators.testing import assert_operator, check_operator

RECORDED = json.loads((Path(__file__).parent / "data" / "motionblur_kernels.json").read_text())["cases"]


def recorded_kernel(case) -> torch.Tensor:
    h, w = case["kernel_size"]
    image = torch.zeros(h * w, dtype=torch.float64)
    image[case["nonzero_index"]] = torch.tensor(case["nonzero_uint8"], dtype=torch.float64)
    return (image / image.sum()).reshape(h, w)


@pytest.mark.parametrize("case", RECORDED, ids=lambda c: f"{c['motionblur_size']}-{c['intensity']}-s{c['seed']}-i{c['index']}")
def test_kernel_equals_motionblur_package(case):
    kernel = motion_kernel(tuple(case["kernel_size"]), case["intensity"], seed=case["seed"], index=case["index"])
    assert kernel.dtype == torch.float64 and tuple(kernel.shape) == tuple(case["kernel_size"])
    torch.testing.assert_close(kernel, recorded_kernel(case), rtol=0, atol=1e-15)


def test_deblur_motion61_is_the_daps_kernel_and_matches_the_official_conv():
    physics = ops.make("deblur-motion61")
    daps = next(c for c in RECORDED if c["motionblur_size"] == [61, 61] and c["seed"] == 42 and c["index"] == 1)
    kernel = recorded_kernel(daps)
    assert tuple(physics.filter.shape) == (1, 1, 61, 61)
    torch.testing.assert_close(physics.filter[0, 0].flip(-2, -1), kernel, rtol=0, atol=0)
    torch.testing.assert_close(float(physics.filter.sum()), 1.0, rtol=1e-12, atol=0)
    # DPS/DAPS Blurkernel: nn.ReflectionPad2d(30) then a grouped nn.Conv2d (cross-correlation) with the kernel
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    official = F.conv2d(F.pad(x, (30, 30, 30, 30), mode="reflect"), kernel.expand(3, 1, 61, 61), groups=3)
    torch.testing.assert_close(physics.A(x), official, rtol=1e-12, atol=1e-12)


def test_seeds_are_explicit_reproducible_and_leave_numpy_alone():
    state = np.random.get_state()[1].copy()
    a = motion_kernel(55, 0.5, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)
    torch.testing.assert_close(a, motion_kernel(55, 0.5, seed=3), rtol=0, atol=0)
    assert not torch.equal(a, motion_kernel(55, 0.5, seed=4))
    assert not torch.equal(a, motion_kernel(55, 0.5, seed=3, index=1))
    generic = ops.make("motion-blur", kernel_size=55, intensity=0.5, seed=3)
    torch.testing.assert_close(generic.filter[0, 0].flip(-2, -1), a, rtol=0, atol=0)


def test_intensity_zero_is_a_straight_path_and_intensity_lengthens_the_blur():
    for seed in range(3):
        points = np.array(_motion_path(np.random.RandomState(seed), 122, 122, 0.0))
        steps = np.diff(points, axis=0)
        cross = steps[:-1, 0] * steps[1:, 1] - steps[:-1, 1] * steps[1:, 0]
        assert np.abs(cross).max() < 1e-9 * (np.linalg.norm(steps, axis=1).max() ** 2)

    def spread(k):  # trace of the kernel's covariance (px^2)
        grids = torch.meshgrid(*[torch.arange(n, dtype=k.dtype) for n in k.shape], indexing="ij")
        return sum((k * (g - (k * g).sum()) ** 2).sum() for g in grids)

    mean_spread = [sum(spread(motion_kernel(61, i, seed=s)) for s in range(6)) / 6 for i in (0.0, 0.5, 1.0)]
    assert mean_spread[0] < mean_spread[1] < mean_spread[2]


def test_small_kernels_work_where_the_package_draws_nothing():
    kernel = motion_kernel(21, 0.5, seed=0)  # the package draws a 0-px line below 54x54 (NaN kernel)
    assert torch.isfinite(kernel).all() and (kernel > 0).sum() > 5
    torch.testing.assert_close(float(kernel.sum()), 1.0, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dims,shape", [(2, (2, 2, 40, 36)), (3, (2, 1, 2, 36, 32))])
def test_motion_blur_contract(dims, shape):
    physics = ops.make("deblur-motion61", dims=dims)
    assert_operator(physics, torch.zeros(shape, dtype=torch.float64))
    assert check_operator(physics, torch.zeros(shape, dtype=torch.float32)).ok


def test_3d_blurs_every_slice_with_the_2d_kernel():
    flat, volume = ops.make("motion-blur", kernel_size=15, seed=1), ops.make("motion-blur", kernel_size=15, seed=1, dims=3)
    assert tuple(volume.filter.shape) == (1, 1, 1, 15, 15)
    x = torch.rand(1, 2, 4, 20, 18, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.stack([flat.A(x[:, :, d]) for d in range(4)], dim=2)
    torch.testing.assert_close(volume.A(x), expected, rtol=1e-12, atol=1e-12)
    ones = torch.ones(1, 1, 3, 20, 18)
    torch.testing.assert_close(volume.A(ones), ones, rtol=1e-5, atol=1e-5)


def test_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        ops.make("motion-blur", kernel_size=20)
    with pytest.raises(ValueError, match="intensity"):
        ops.make("motion-blur", intensity=1.5)
    with pytest.raises(ValueError, match="dims"):
        ops.make("motion-blur", dims=4)
    with pytest.raises(ValueError, match="half the kernel"):
        ops.make("deblur-motion61").A(torch.zeros(1, 1, 30, 64))
    with pytest.raises(TypeError, match="fixes"):
        ops.make("sr4-bicubic", factor=2)


def test_gaussian_kernel_is_the_dps_scipy_delta_response():
    # DPS/DAPS: scipy.ndimage.gaussian_filter(delta_61x61, sigma=3.0), truncate 4 -> radius 12
    t = torch.arange(-12, 13, dtype=torch.float64)
    g = torch.exp(-t ** 2 / 18)
    g = g / g.sum()
    expected = torch.zeros(61, 61, dtype=torch.float64)
    expected[18:43, 18:43] = g[:, None] * g[None, :]
    torch.testing.assert_close(ops.make("deblur-gauss61").filter[0, 0], expected, rtol=0, atol=1e-15)
    volume = ops.make("deblur-gauss61", dims=3).filter[0, 0]
    assert tuple(volume.shape) == (25, 25, 25)
    torch.testing.assert_close(volume, g[:, None, None] * g[None, :, None] * g[None, None, :], rtol=0, atol=1e-15)
