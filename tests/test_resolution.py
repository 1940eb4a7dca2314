"""Super-resolution operators in operators/resolution.py.

tests/data/dps_resizer.json holds outputs of DPS's util/resizer.py (run unmodified, float32, as in
DPS/DAPS) on the closed-form input below.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import operators as ops
from operators.resolution import AveragePooling, BicubicDownsampling
from operators.testing import assert_operator, check_operator

RECORDED = json.loads((Path(__file__).parent / "data" / "dps_resizer.json").read_text())["cases"]


def closed_form_image(shape):
    """x[c, i, j(, k)] = sin(0.37 i + 0.11 c) cos(0.23 j) + 0.05 (i + 2 j (+ 3 k)) / max(shape)."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    x = torch.sin(0.37 * grids[1] + 0.11 * grids[0]) * torch.cos(0.23 * grids[2])
    return x + 0.05 * sum((k + 1) * g for k, g in enumerate(grids[1:])) / max(shape)


def dense(physics, shape):
    """The operator's matrix, column by column."""
    n = torch.Size(shape).numel()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])
    return physics.A(basis).reshape(n, -1).T


@pytest.mark.parametrize("case", RECORDED, ids=lambda c: f"{c['spatial']}-x{c['factor']}-axes{c['axes']}")
def test_bicubic_equals_dps_resizer(case):
    physics = BicubicDownsampling(tuple(case["spatial"]), case["factor"], axes=case["axes"])
    x = closed_form_image([case["channels"], *case["spatial"]])[None]
    y = physics.A(x)
    expected = torch.tensor(case["output"], dtype=torch.float64).reshape(1, *case["output_shape"])
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=0, atol=2e-6)  # DPS runs in float32


def test_bicubic_equals_deepinv_matlab_imresize_and_torch_antialias_inside():
    from deepinv.physics.functional import imresize_matlab

    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = ops.make("sr4-bicubic", img_size=(32, 24)).A(x)
    # MATLAB imresize (symmetric padding) equals the DPS Resizer on sizes divisible by the factor
    matlab = imresize_matlab(x.clone(), scale=1 / 4, antialiasing=True, kernel="cubic", padding_type="reflect")
    torch.testing.assert_close(y, matlab, rtol=0, atol=1e-12)
    # torch's antialiased bicubic uses the same kernel but renormalises at the border instead of mirroring
    torch_aa = F.interpolate(x, size=(8, 6), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch_aa[..., 2:-2, 2:-2], rtol=0, atol=1e-6)
    assert (y - torch_aa).abs().max() > 1e-3


@pytest.mark.parametrize("name,params,shape", [
    ("sr4-bicubic", {"img_size": (32, 24)}, (2, 2, 32, 24)),
    ("sr4-bicubic", {"img_size": (12, 16, 8)}, (2, 1, 12, 16, 8)),
    ("sr-bicubic", {"img_size": (5, 18, 12), "factor": 3, "axes": (1, 2)}, (2, 1, 5, 18, 12)),
    ("sr4-avgpool", {}, (2, 2, 32, 24)),
    ("sr4-avgpool", {"dims": 3}, (2, 1, 8, 16, 12)),
    ("sr-avgpool", {"factor": 2, "dims": 3, "axes": (0,)}, (2, 1, 8, 6, 5)),
])
def test_contract_and_pseudo_inverse_on_the_range(name, params, shape):
    physics = ops.make(name, **params)
    assert_operator(physics, torch.zeros(shape, dtype=torch.float64), pinv_tol=1e-10)
    assert check_operator(physics, torch.zeros(shape, dtype=torch.float32), pinv_tol=1e-5).ok


@pytest.mark.parametrize("physics,shape", [
    (BicubicDownsampling((12, 10), 2), (1, 1, 12, 10)),
    (BicubicDownsampling((6, 9, 8), 3, axes=(1, 2)), (1, 1, 6, 9, 8)),
    (BicubicDownsampling((7, 13), 4), (1, 1, 7, 13)),
    (AveragePooling(2, dims=3), (1, 1, 4, 6, 2)),
    (AveragePooling(4, axes=(1,)), (1, 1, 3, 8)),
])
def test_pseudo_inverse_is_the_moore_penrose_inverse(physics, shape):
    matrix = dense(physics, shape)
    y = torch.randn((1, 1) + tuple(physics.A(torch.zeros(shape, dtype=torch.float64)).shape[2:]),
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = (torch.linalg.pinv(matrix) @ y.reshape(-1)).reshape(shape)
    torch.testing.assert_close(physics.A_dagger(y), expected, rtol=1e-10, atol=1e-10)


def test_avgpool_is_block_mean_and_its_pinv_copies_blocks():
    g = torch.Generator().manual_seed(2)
    x2, x3 = torch.rand(2, 3, 16, 12, generator=g), torch.rand(1, 2, 8, 4, 12, generator=g)
    torch.testing.assert_close(ops.make("sr4-avgpool").A(x2), F.avg_pool2d(x2, 4))
    torch.testing.assert_close(ops.make("sr4-avgpool", dims=3).A(x3), F.avg_pool3d(x3, 4))
    inplane = ops.make("sr-avgpool", factor=2, dims=3, axes=(1, 2))
    torch.testing.assert_close(inplane.A(x3), F.avg_pool3d(x3, (1, 2, 2)))
    y = torch.rand(2, 3, 4, 3, generator=g)
    torch.testing.assert_close(ops.make("sr4-avgpool").A_dagger(y), F.interpolate(y, scale_factor=4, mode="nearest"))


def test_bicubic_preserves_constants_and_default_preset_is_256_to_64():
    physics = ops.make("sr4-bicubic")
    assert physics.img_size == (256, 256) and physics.out_size == (64, 64)
    ones = torch.ones(1, 1, 256, 256, dtype=torch.float64)
    torch.testing.assert_close(physics.A(ones), torch.ones(1, 1, 64, 64, dtype=torch.float64), rtol=0, atol=1e-14)


def test_clear_errors():
    with pytest.raises(ValueError, match="img_size"):
        ops.make("sr4-bicubic", img_size=32).A(torch.zeros(1, 1, 32, 24))
    with pytest.raises(ValueError, match="divisible"):
        ops.make("sr4-avgpool").A(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="positive integer"):
        ops.make("sr-bicubic", factor=2.5)
    with pytest.raises(ValueError, match="axes"):
        ops.make("sr-avgpool", dims=2, axes=(2,))
    with pytest.raises(ValueError, match="dims"):
        ops.make("sr-bicubic", img_size=(8, 8), dims=3)
    with pytest.raises(ValueError, match="3D"):
        ops.make("sr4-avgpool", dims=3).A(torch.zeros(1, 1, 8, 8))
