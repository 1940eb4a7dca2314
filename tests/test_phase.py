import numpy as np
import pytest
import torch
from deepinv.physics import LinearPhysics, Physics

import operators as ops
from operators.noise import Gaussian
from operators.phase import FourierPhaseRetrieval, dps_padding
from operators.testing import check_operator


def reference_dps(x: np.ndarray, pad: int) -> np.ndarray:
    """DPS/DAPS by the formula, in numpy: zero-pad, fastMRI fft2c (ortho, centred), amplitude."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(pad, pad), (pad, pad)])
    axes = (-2, -1)
    return np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(padded, axes=axes), axes=axes, norm="ortho"), axes=axes))


def test_preset_matches_dps_definition_at_256():
    physics = ops.make("phase-retrieval-os2", img_size=256)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = physics.A(x)
    assert y.shape == (1, 3, 384, 384)  # 64 pixels of padding per side
    np.testing.assert_allclose(y.numpy(), reference_dps(x.numpy(), 64), rtol=1e-10, atol=1e-12)
    assert not isinstance(physics, LinearPhysics) and isinstance(physics, Physics)


def test_padding_rule():
    assert dps_padding(256, 2.0) == 64
    assert dps_padding(100, 2.0) == 25 and dps_padding(64, 1.0) == 8 and dps_padding(10, 2.0) == 2
    physics = ops.make("phase-retrieval-os2")
    assert physics.padding((24, 40)) == (6, 10)
    assert physics.A(torch.zeros(1, 1, 24, 40)).shape == (1, 1, 36, 60)
    dps_fixed = ops.make("phase-retrieval", pad=64)  # DPS's code: 64 whatever the size
    assert dps_fixed.A(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 160, 160)
    volume = ops.make("phase-retrieval", dims=3, pad=(1, 2, 3))
    assert volume.A(torch.zeros(2, 1, 4, 5, 6)).shape == (2, 1, 6, 9, 12)


def test_parseval_and_invariances():
    physics = FourierPhaseRetrieval(oversample=2.0)
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    x[..., 8:24, 10:22] = torch.rand(16, 12, generator=g, dtype=torch.float64)
    y = physics.A(x)
    torch.testing.assert_close(y.norm(), x.norm(), rtol=1e-12, atol=0)  # orthonormal FFT
    # translation inside the field of view and the twin image (point reflection) keep |F|
    torch.testing.assert_close(physics.A(torch.roll(x, (3, -5), dims=(-2, -1))), y, rtol=1e-9, atol=1e-12)
    twin = torch.roll(torch.flip(x, dims=(-2, -1)), (1, 1), dims=(-2, -1))
    assert float((physics.A(twin) - y).abs().max()) < 1e-12
    # a different object does change the measurement
    assert float((physics.A(x + 0.1 * torch.roll(x, 2, -1)) - y).abs().max()) > 1e-3


def test_3d_is_a_3d_fft():
    physics = ops.make("phase-retrieval-os2", img_size=(8, 8, 8))
    x = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    padded = np.pad(x.numpy(), [(0, 0), (0, 0)] + [(2, 2)] * 3)
    axes = (-3, -2, -1)
    expected = np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(padded, axes=axes), axes=axes, norm="ortho"), axes=axes))
    np.testing.assert_allclose(physics.A(x).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_complex_input_in_deepinv_channel_convention():
    physics = ops.make("phase-retrieval", complex_input=True, pad=3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 10, 12, generator=g, dtype=torch.float64)
    z = np.pad((x[:, 0] + 1j * x[:, 1]).numpy()[:, None], [(0, 0), (0, 0), (3, 3), (3, 3)])
    expected = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(z, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))
    np.testing.assert_allclose(physics.A(x).numpy(), expected, rtol=1e-10, atol=1e-12)
    report = check_operator(physics, torch.zeros(2, 2, 10, 12, dtype=torch.float64))
    assert report.ok and report.errors["taylor"] < 0.1, report


def test_gradient_is_finite_where_the_spectrum_vanishes():
    physics = ops.make("phase-retrieval-os2")
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)  # F pad(x) = 0 everywhere
    y_target = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    loss = ((physics.A(x) - y_target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) == 0.0  # minimum-norm subgradient
    vjp = physics.A_vjp(x.detach(), y_target)
    assert torch.isfinite(vjp).all()
    # at a generic point the explicit A_vjp is autograd's vjp
    point = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    leaf = point.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(physics.A(leaf), leaf, grad_outputs=y_target.expand(2, 1, 12, 12))
    torch.testing.assert_close(physics.A_vjp(point, y_target.expand(2, 1, 12, 12)), auto, rtol=1e-12, atol=1e-12)


def test_checks_catch_a_wrong_vjp():
    class DroppedPhase(FourierPhaseRetrieval):
        def A_vjp(self, x, v):  # forgets the sgn(z) factor
            back = torch.fft.ifftn(v.to(torch.complex128), dim=(-2, -1), norm="ortho")
            p = self.padding(x.shape[2:])
            return back.real[..., p[0]:p[0] + x.shape[-2], p[1]:p[1] + x.shape[-1]]

    report = check_operator(DroppedPhase(), torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    assert "vjp_vs_autograd" in report.failed and "taylor" not in report.failed


def test_noise_model_and_clear_errors():
    physics = ops.make("phase-retrieval-os2", img_size=16, noise_model=Gaussian(0.5, seed=0))
    x = torch.rand(1, 1, 16, 16)
    assert float((physics(x) - physics.A(x)).std()) == pytest.approx(0.5, rel=0.1)
    with pytest.raises(ValueError, match="built for spatial size"):
        physics.A(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="dims=3"):
        physics.A(torch.zeros(1, 1, 4, 16, 16))
    with pytest.raises(ValueError, match="2 channels"):
        ops.make("phase-retrieval", complex_input=True).A(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="complex_input=True"):
        ops.make("phase-retrieval").A(torch.zeros(1, 1, 8, 8, dtype=torch.complex64))
    with pytest.raises(TypeError, match="fixes"):
        ops.make("phase-retrieval-os2", oversample=1.0)
    with pytest.raises(NotImplementedError, match="no pseudo-inverse"):
        physics.A_dagger(physics.A(x))
