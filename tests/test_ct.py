import math

import pytest
import torch
from deepinv.physics import LinearPhysics

import operators as ops
from operators.ct import ParallelBeamCT
from operators.testing import assert_operator, check_operator


@pytest.mark.parametrize("shape", [(3, 2, 24, 20), (2, 1, 3, 24, 20)])
def test_ct_contract_float64(shape):
    physics = ops.make("ct", img_size=(24, 20), views=7, n_detectors=41, detector_spacing=0.8)
    report = assert_operator(physics, torch.zeros(shape, dtype=torch.float64))
    assert report.errors["adjointness"] < 1e-13


def test_ct_adjoint_float32_and_is_deepinv_physics():
    physics = ops.make("ct-sparse8", img_size=32)
    assert isinstance(physics, LinearPhysics)
    assert physics.sinogram_shape == (8, math.ceil(32 * math.sqrt(2)))
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
    reference = ParallelBeamCT(img_size=(12, 10), views=5, slice_chunk=1000, max_points=10 ** 9)
    expected_y = reference.A(volume)
    expected_x = reference.A_adjoint(expected_y)
    # each slice on its own equals the stacked result
    assert torch.allclose(expected_y[1, 0, 7], reference.A(volume[1:2, 0, 7:8])[0, 0], atol=1e-13)

    chunked = ParallelBeamCT(img_size=(12, 10), views=5, slice_chunk=4, max_points=3000)
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
