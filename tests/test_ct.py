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
    recon = physics.A_dagger(physics.A(blob))
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
