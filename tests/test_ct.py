import math

import pytest
import torch
from deepinv.physics import LinearPhysics

import operators as ops
from operators.ct import ParallelBeamCT
from operators.testing import assert_operator, check_operator


@pytest.mark.parametrize("method", ["auto", "grid"])
@pytest.mark.parametrize("shape", [(3, 2, 24, 20), (2, 1, 3, 24, 20)])
def test_ct_contract_float64(shape, method):
    physics = ops.make("ct", img_size=(24, 20), views=7, n_detectors=41, detector_spacing=0.8, method=method)
    report = assert_operator(physics, torch.zeros(shape, dtype=torch.float64))
    assert report.errors["adjointness"] < 1e-13


def test_ct_adjoint_float32_and_is_deepinv_physics():
    physics = ops.make("ct-sparse8", img_size=32)
    assert isinstance(physics, LinearPhysics)
    assert physics.sinogram_shape == (8, math.ceil(32 * math.sqrt(2)))
    torch.manual_seed(0)  # deepinv draws its probe from the global RNG: make the check independent of test order
    assert physics.adjointness_test(img_size=(1, 32, 32)) < 1e-5  # deepinv's own check


def test_line_integral_of_disk_matches_chord_length():
    physics = ParallelBeamCT(img_size=64, views=6)
    c = torch.arange(64, dtype=torch.float64) + 0.5 - 32
    xx, yy = torch.meshgrid(c, c, indexing="xy")
    disk = ((xx ** 2 + yy ** 2) <= 20 ** 2).double()[None, None]
    sino = physics.A(disk)[0, 0]
    s = (torch.arange(physics.n_detectors, dtype=torch.float64) - (physics.n_detectors - 1) / 2)
    chord = 2 * torch.sqrt((20 ** 2 - s ** 2).clamp_min(0))
    inside = s.abs() < 17
    assert torch.allclose(sino[:, inside], chord[inside].expand(6, -1), rtol=0.03, atol=0.3)


def test_fbp_inverts_smooth_object_with_many_views():
    physics = ParallelBeamCT(img_size=64, views=180)
    c = torch.arange(64, dtype=torch.float64) + 0.5 - 32
    xx, yy = torch.meshgrid(c, c, indexing="xy")
    blob = torch.exp(-((xx - 5) ** 2 + (yy + 3) ** 2) / 72.0)[None, None]
    recon = physics.fbp(physics.A(blob))
    assert float((recon - blob).norm() / blob.norm()) < 0.02


def test_ct_wrong_shape_is_a_clear_error():
    physics = ops.make("ct", img_size=32, views=4)
    with pytest.raises(ValueError, match="expects images of shape"):
        physics.A(torch.zeros(1, 1, 31, 32))
    with pytest.raises(ValueError, match="sinograms have shape"):
        physics.A_adjoint(torch.zeros(1, 1, 5, 46))


def test_registry_names_and_unknown():
    assert {"ct", "ct-sparse8"} <= set(ops.names())
    with pytest.raises(KeyError, match="unknown operator"):
        ops.make("no-such-operator")


def test_checks_catch_a_wrong_adjoint():
    physics = ops.make("ct", img_size=16, views=3)
    broken = LinearPhysics(A=physics.A, A_adjoint=lambda y: 1.1 * physics.A_adjoint(y))
    report = check_operator(broken, torch.zeros(2, 1, 16, 16, dtype=torch.float64))
    assert "adjointness" in report.failed and "vjp_vs_adjoint" in report.failed
    with pytest.raises(AssertionError, match="adjointness"):
        assert_operator(broken, torch.zeros(2, 1, 16, 16, dtype=torch.float64))


def test_volume_slices_are_projected_in_bounded_chunks(monkeypatch):
    from torch.nn import functional as F

    volume = torch.rand(2, 1, 19, 12, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # the chunking of method="grid" (method="sparse" has no working set beyond its stored matrices)
    reference = ParallelBeamCT(img_size=(12, 10), views=5, slice_chunk=1000, max_points=10 ** 9, method="grid")
    expected_y = reference.A(volume)
    expected_x = reference.A_adjoint(expected_y)
    # each slice on its own equals the stacked result
    assert torch.allclose(expected_y[1, 0, 7], reference.A(volume[1:2, 0, 7:8])[0, 0], atol=1e-13)

    chunked = ParallelBeamCT(img_size=(12, 10), views=5, slice_chunk=4, max_points=3000, method="grid")
    calls, original = [], F.grid_sample
    monkeypatch.setattr(F, "grid_sample", lambda inp, grid, **kw: calls.append(inp.shape[1] * grid[0].numel() // 2)
                        or original(inp, grid, **kw))
    assert torch.allclose(chunked.A(volume), expected_y, atol=1e-13)
    assert len(calls) > 10 and max(calls) <= 3000  # slices x points per call stay bounded
    assert torch.allclose(chunked.A_adjoint(expected_y), expected_x, atol=1e-12)


def test_adjoint_kernel_equals_autograd_of_plain_grid_sample():
    from torch.nn import functional as F

    physics = ParallelBeamCT(img_size=(9, 13), views=[10, 80, 135], n_detectors=17, max_points=500)
    views, rays = physics.sinogram_shape
    x = torch.rand(3, 9, 13, dtype=torch.float64, requires_grad=True)
    grid = physics._grid(0, views, torch.float64)
    plain = F.grid_sample(x[None], grid, align_corners=False).sum(-1).view(3, views, rays) * physics.ray_weight
    assert torch.allclose(plain, physics.A(x.detach()), atol=1e-13)
    y = torch.rand(3, views, rays, dtype=torch.float64)
    (vjp,) = torch.autograd.grad(plain, x, y)
    assert torch.allclose(vjp, physics.A_adjoint(y), atol=1e-13)


def test_joseph_matches_sampled_model_and_legacy_mode_works():
    c = torch.arange(40, dtype=torch.float64) + 0.5 - 20
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    blob = torch.exp(-((xx - 3) ** 2 + (yy + 2) ** 2) / 40.0)[None, None]
    joseph = ParallelBeamCT(img_size=40, views=12)
    sampled = ParallelBeamCT(img_size=40, views=12, samples_per_pixel=4.0)
    assert float((joseph.A(blob) - sampled.A(blob)).norm() / sampled.A(blob).norm()) < 3e-3
    assert_operator(sampled, torch.zeros(2, 1, 40, 40, dtype=torch.float64))


def test_ct_double_backward_and_gradcheck():
    physics = ParallelBeamCT(img_size=(5, 6), views=3)
    x = torch.rand(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: physics.A(t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: physics.A(t) ** 2, (x,))
    y = torch.rand(1, 1, *physics.sinogram_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: physics.A_adjoint(t), (y,))


def test_ct_backend_arguments_are_checked():
    with pytest.raises(TypeError, match="backend='astra'"):
        ops.make("ct", img_size=16, projector="strip")
    with pytest.raises(ValueError, match="unknown CT backend"):
        ops.make("ct", img_size=16, backend="gpu")
    with pytest.raises(ValueError, match="slice_chunk"):
        ParallelBeamCT(img_size=16, slice_chunk=0)


# ---- evaluation methods: "sparse" (stored CSR matrices of A and A^T) and "grid" (grid_sample) --------
def _geometries():
    from operators.fanbeam import FanBeamCT

    return {
        "parallel": lambda **kw: ParallelBeamCT(img_size=(17, 14), views=9, n_detectors=27, detector_spacing=0.8, **kw),
        "parallel-sampled": lambda **kw: ParallelBeamCT(img_size=(12, 15), views=[0, 45, 100, 135], samples_per_pixel=2.5,
                                                        **kw),
        "fan-flat": lambda **kw: FanBeamCT(img_size=(16, 13), views=10, source_distance=25, detector_distance=12, **kw),
        "fan-curved": lambda **kw: FanBeamCT(img_size=14, views=8, source_distance=22, detector_distance=9,
                                             detector="curved", **kw),
    }


@pytest.mark.parametrize("geometry", list(_geometries()))
@pytest.mark.parametrize("method", ["sparse", "grid"])
def test_each_method_is_an_exact_adjoint_pair_in_float64(geometry, method):
    physics = _geometries()[geometry](method=method)
    assert physics.method == method
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, *physics.img_shape, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, *physics.sinogram_shape, generator=g, dtype=torch.float64)
    Ax, Aty = physics.A(x), physics.A_adjoint(y)
    assert float(((Ax * y).sum() - (x * Aty).sum()).abs() / (Ax.norm() * y.norm())) < 1e-14
    report = assert_operator(physics, torch.zeros(2, 1, *physics.img_shape, dtype=torch.float64))
    assert report.errors["adjointness"] < 1e-13 and report.errors["func_vjp"] < 1e-12


@pytest.mark.parametrize("geometry", list(_geometries()))
def test_sparse_and_grid_methods_agree(geometry):
    sparse, grid = _geometries()[geometry](method="sparse"), _geometries()[geometry](method="grid")
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 1, *sparse.img_shape, generator=g, dtype=torch.float64)
    y = torch.rand(3, 1, *sparse.sinogram_shape, generator=g, dtype=torch.float64)
    for a, b in ((sparse.A(x), grid.A(x)), (sparse.A_adjoint(y), grid.A_adjoint(y))):
        assert float((a - b).norm() / b.norm()) < 1e-13
    # float32: the same operator to float32 rounding
    x32, y32 = x.float(), y.float()
    assert float((sparse.A(x32) - grid.A(x32)).norm() / grid.A(x32).norm()) < 1e-6
    assert float((sparse.A_adjoint(y32) - grid.A_adjoint(y32)).norm() / grid.A_adjoint(y32).norm()) < 1e-6
    # the stored matrix has at most the number of non-zeros the auto choice counted
    assert sparse._sparse(torch.float64, "cpu")[0].values().numel() <= sparse.sparse_entries


def test_auto_method_choice_is_stated_in_repr():
    small = ParallelBeamCT(img_size=32, views=20)
    assert small.method == "sparse" and "method=sparse (auto:" in repr(small)
    assert small.sparse_matrix_bytes(torch.float32) <= small.sparse_bytes
    large = ParallelBeamCT(img_size=32, views=20, sparse_bytes=10_000)
    assert large.method == "grid" and "method=grid (auto:" in repr(large)
    forced = ops.make("ct-fan", img_size=16, views=4, method="grid")
    assert forced.method == "grid" and "method=grid (requested)" in repr(forced)
    with pytest.raises(ValueError, match="unknown CT method"):
        ParallelBeamCT(img_size=16, method="gpu")
    # 256x256, 180 views: about 340 MB of float32 matrices, under the default 512 MiB
    assert ParallelBeamCT(img_size=256, views=180).method == "sparse"
    assert ParallelBeamCT(img_size=512, views=360).method == "grid"


def test_sparse_matrices_are_built_once_and_follow_dtype_and_device_moves():
    physics = ParallelBeamCT(img_size=12, views=4)
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    y64 = physics.A(x)
    assert list(physics._sparse_cache) == [(torch.float64, torch.device("cpu"))]
    built = physics._sparse_cache[(torch.float64, torch.device("cpu"))][0][2]
    physics.A_adjoint(y64)
    assert physics._sparse_cache[(torch.float64, torch.device("cpu"))][0][2] is built  # not rebuilt
    assert torch.allclose(physics.A(x.float()), y64.float(), rtol=1e-6, atol=1e-6)  # float32 from the float64 values
    assert len(physics._sparse_cache) == 2
    physics.double()
    assert physics._sparse_cache == {}  # moved: rebuilt from the moved buffers at the next call
    with pytest.raises(TypeError, match="float32 and float64"):
        ParallelBeamCT(img_size=12, views=4, method="sparse").A(x.to(torch.bfloat16))
    assert ParallelBeamCT(img_size=12, views=4).A(x.to(torch.bfloat16)).dtype == torch.bfloat16  # auto: grid
