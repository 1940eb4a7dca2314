"""Cartesian MRI: single coil and SENSE, 2D and 3D, fastMRI conventions, CG-SENSE, ESPIRiT, sigpy cross-checks."""

import numpy as np
import pytest
import torch

import operators as ops
from operators.coils import birdcage_maps, estimate_coil_maps
from operators.linalg import cg
from operators.mri import (SenseMRI, SingleCoilMRI, cartesian_mask, center_crop, centering_phases,
                           fftc, ifftc, make_mri, rss, uniform1d_columns)
from operators.testing import assert_operator


def crandn(*shape, generator, dtype=torch.complex128):
    real = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return torch.complex(real, torch.randn(*shape, generator=generator, dtype=torch.float64)).to(dtype)


def as_channels(z):
    return torch.view_as_real(z).movedim(-1, 1)


def as_complex(t):
    return torch.view_as_complex(t.movedim(1, -1).contiguous())


# (img_size, three_d, mask shape): 2D even/odd, 3D FFT with a (kz, ky) mask, per-slice volumes
GEOMETRIES = [((16, 20), False, (20,)), ((15, 21), False, (15, 21)), ((6, 16, 20), True, (6, 1, 20)),
              ((5, 15, 9), True, (5, 1, 9)), ((4, 16, 20), False, (1, 16, 20)), ((3, 9, 7), False, (3, 1, 7))]
IDS = ["2d-even", "2d-odd", "3d-even", "3d-odd", "slices-even", "slices-odd-per-slice-mask"]


def _setup(img_size, three_d, mask_shape, coils=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = crandn(coils, *img_size, generator=g)
    mask = (torch.rand(mask_shape, generator=g) < 0.5).float()
    return g, maps, mask


def test_centering_phases_turn_fft_into_fftc():
    g = torch.Generator().manual_seed(1)
    for sizes in [(8,), (7,), (6, 9), (5, 4, 3)]:
        x = crandn(*sizes, generator=g)
        phase, constant = centering_phases(sizes)
        dims = tuple(range(-len(sizes), 0))
        folded = constant * phase * torch.fft.fftn(phase * x, dim=dims, norm="ortho")
        assert torch.allclose(folded, fftc(x, dims), atol=1e-12)


@pytest.mark.parametrize("img_size,three_d,mask_shape", GEOMETRIES, ids=IDS)
def test_sense_forward_is_mask_fftc_coils(img_size, three_d, mask_shape):
    g, maps, mask = _setup(img_size, three_d, mask_shape)
    physics = SenseMRI(maps, mask=mask, img_size=img_size, three_d=three_d)
    x = crandn(2, *img_size, generator=g)
    dims = tuple(range(-(3 if three_d else 2), 0))
    expected = fftc(x[:, None] * maps, dims) * mask
    y = physics.A(as_channels(x))
    assert y.shape == (2, 2, 3) + img_size and y.dtype == torch.float64
    assert torch.allclose(as_complex(y), expected, atol=1e-12)
    expected_adjoint = (ifftc(expected * mask, dims) * maps.conj()).sum(1)
    assert torch.allclose(as_complex(physics.A_adjoint(y)), expected_adjoint, atol=1e-12)


@pytest.mark.parametrize("img_size,three_d,mask_shape", GEOMETRIES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contracts_single_and_multi_coil(img_size, three_d, mask_shape, dtype):
    _, maps, mask = _setup(img_size, three_d, mask_shape)
    x = torch.zeros(2, 2, *img_size, dtype=dtype)
    assert_operator(SenseMRI(maps.to(torch.complex64), mask=mask, img_size=img_size, three_d=three_d, max_iter=5), x)
    assert_operator(SingleCoilMRI(mask=mask, img_size=img_size, three_d=three_d), x)


def test_adjointness_float64_is_exact():
    from operators.testing import adjointness

    g, maps, mask = _setup((6, 16, 20), True, (6, 1, 20))
    single = SingleCoilMRI(mask=mask, img_size=(6, 16, 20), three_d=True)
    for physics in [SenseMRI(maps, mask=mask, three_d=True), single]:
        assert adjointness(physics, torch.zeros(2, 2, 6, 16, 20, dtype=torch.float64), g) < 1e-14


def test_dtype_follows_input():
    _, maps, mask = _setup((8, 10), False, (10,))
    physics = SenseMRI(maps.to(torch.complex64), mask=mask, max_iter=5)
    for dtype in (torch.float32, torch.float64):
        y = physics.A(torch.randn(1, 2, 8, 10, dtype=dtype))
        assert y.dtype == dtype and physics.A_adjoint(y).dtype == dtype and physics.A_dagger(y).dtype == dtype


def test_fully_sampled_is_unitary_with_rss_normalised_maps():
    maps = birdcage_maps((4, 12, 10), dtype=torch.complex128)  # sum_n |S_n|^2 = 1
    x = as_channels(crandn(1, 12, 10, generator=torch.Generator().manual_seed(2)))
    assert torch.allclose(SenseMRI(maps).A_adjoint_A(x), x, atol=1e-12)
    single = SingleCoilMRI(img_size=(12, 10))
    assert torch.allclose(single.A_adjoint(single.A(x)), x, atol=1e-12)


def test_rss_adjoint_and_helpers_follow_fastmri():
    g, maps, mask = _setup((12, 10), False, (10,))
    physics = SenseMRI(maps, mask=mask)
    y = physics.A(as_channels(crandn(1, 12, 10, generator=g)))
    coil_images = ifftc(as_complex(y), (-2, -1))
    expected = coil_images.abs().square().sum(1).sqrt()
    assert torch.allclose(physics.A_adjoint(y, rss=True)[:, 0], expected, atol=1e-12)
    assert torch.allclose(rss(coil_images), expected) and torch.allclose(rss(as_channels(coil_images))[:, 0], expected)
    t = torch.arange(7 * 6).reshape(7, 6)
    assert torch.equal(center_crop(t, (4, 3)), t[1:5, 1:4])  # start (n - s) // 2, as fastMRI
    assert torch.equal(center_crop(t, (3,)), t[:, 1:4])
    with pytest.raises(ValueError, match="does not fit"):
        center_crop(t, (8, 3))


def test_cg_solves_normal_equations_and_inverts_on_the_range():
    g = torch.Generator().manual_seed(3)
    maps = birdcage_maps((8, 24, 20), dtype=torch.complex128)
    mask = cartesian_mask((24, 20), "equispaced", 2, 0.2, seed=0)
    physics = SenseMRI(maps, mask=mask, max_iter=200, tol=1e-10)
    x_true = as_channels(crandn(2, 24, 20, generator=g))
    y = physics.A(x_true)
    x = physics.A_dagger(y)
    assert torch.allclose(x, x_true, atol=1e-7)  # 8 coils at R = 2: A^H A is invertible
    assert float((physics.A(x) - y).norm() / y.norm()) < 1e-9
    # Tikhonov: (A^H A + lambda I) x = A^H y
    x_reg = physics.A_dagger(y, tikhonov=0.3)
    residual = physics.A_adjoint_A(x_reg) + 0.3 * x_reg - physics.A_adjoint(y)
    assert float(residual.norm() / physics.A_adjoint(y).norm()) < 1e-9
    # tolerance and iteration cap are honoured
    info = {}
    cg(physics.normal_complex, physics.adjoint_complex(as_complex(y)), tol=1e-3, iters=50, info=info)
    assert info["iterations"] < 50 and bool((info["relative_residual"] <= 1e-3).all())
    cg(physics.normal_complex, physics.adjoint_complex(as_complex(y)), tol=0.0, iters=3, info=info)
    assert info["iterations"] == 3
    # prox_l2: (A^H A + I / gamma) x = A^H y + z / gamma
    z = as_channels(crandn(2, 24, 20, generator=g))
    x_prox = physics.prox_l2(z, y, torch.tensor([0.5, 2.0], dtype=torch.float64))
    gamma = torch.tensor([0.5, 2.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    residual = physics.A_adjoint_A(x_prox) + x_prox / gamma - physics.A_adjoint(y) - z / gamma
    assert float(residual.norm() / physics.A_adjoint(y).norm()) < 1e-8


def test_cg_freezes_converged_batch_elements_and_handles_zero():
    maps = birdcage_maps((4, 8, 8), dtype=torch.complex128)
    physics = SenseMRI(maps, mask=cartesian_mask((8, 8), "equispaced", 2, 0.25))
    y = physics.A(as_channels(crandn(2, 8, 8, generator=torch.Generator().manual_seed(4))))
    y[1] = 0
    x = physics.A_dagger(y)
    assert torch.isfinite(x).all() and torch.equal(x[1], torch.zeros_like(x[1]))


def test_make_mri_shapes_and_masks():
    physics = make_mri(img_size=(4, 16, 20), coils=3, mask_type="equispaced_fraction", acceleration=4,
                       center_fraction=0.2)
    assert isinstance(physics, SenseMRI) and physics.coil_maps.shape == (1, 3, 4, 16, 20)
    assert physics.mask.shape == (1, 2, 1, 16, 20)  # one column mask for every slice
    assert physics.A(torch.zeros(1, 2, 4, 16, 20)).shape == (1, 2, 3, 4, 16, 20)
    single = make_mri(img_size=(4, 16, 20), mask_type="random", acceleration=4, center_fraction=0.2)
    assert isinstance(single, SingleCoilMRI) and single.A(torch.zeros(1, 2, 4, 16, 20)).shape == (1, 2, 4, 16, 20)
    with pytest.raises(ValueError, match="three_d"):
        make_mri(img_size=(16, 20), three_d=True)
    with pytest.raises(ValueError, match=r"shape \(B, 2"):
        physics.A(torch.zeros(1, 1, 4, 16, 20))
    with pytest.raises(ValueError, match="complex"):
        SenseMRI(torch.ones(3, 8, 8), img_size=(8, 8))
    with pytest.raises(ValueError, match="does not"):
        SenseMRI(birdcage_maps((3, 8, 8)), mask=torch.ones(9))


def test_poisson_masks_2d_and_3d():
    pytest.importorskip("sigpy")
    p2 = make_mri(img_size=(32, 32), mask_type="poisson", acceleration=4, calib=(8, 8))
    plane = p2.mask[0, 0]
    assert plane.shape == (32, 32) and plane[12:20, 12:20].all() and 2.5 < plane.numel() / plane.sum() < 6
    p3 = make_mri(img_size=(16, 8, 24), coils=2, mask_type="poisson", acceleration=3, calib=(6, 6), three_d=True)
    assert p3.mask.shape == (1, 2, 16, 1, 24)  # over (kz, ky); readout H fully sampled
    assert p3.A(torch.randn(1, 2, 16, 8, 24)).shape == (1, 2, 2, 16, 8, 24)


def test_uniform1d_columns_follow_diffusionmbir():
    mask = uniform1d_columns(240, 2, 0.15, seed=5)
    assert mask[102:138].all()  # 36 centre columns from 240 // 2 - 18
    np.random.seed(5)
    drawn = np.random.choice(240, 84)  # the official draw after np.random.seed(5)
    expected = torch.zeros(240)
    expected[torch.from_numpy(drawn)] = 1
    expected[102:138] = 1
    assert torch.equal(mask, expected)
    physics = ops.make("mri-3d-2x-uniform1d", img_size=(3, 24, 24))
    assert isinstance(physics, SingleCoilMRI) and physics.mask.shape == (1, 2, 1, 24, 24)
    with pytest.raises(ValueError, match="volumes"):
        ops.make("mri-3d-2x-uniform1d", img_size=(24, 24))


def test_presets_accept_volumes():
    for name in ("mri-4x-equispaced", "mri-8x-random"):
        physics = ops.make(name, img_size=(2, 16, 40))
        assert_operator(physics, torch.zeros(2, 2, 2, 16, 40, dtype=torch.float64))


# ---------------------------------------------------------------------------------- sigpy


def test_birdcage_maps_equal_sigpy():
    sim = pytest.importorskip("sigpy.mri.sim")
    for shape in [(8, 20, 24), (5, 9, 7), (12, 4, 10, 12)]:
        ours = birdcage_maps(shape, dtype=torch.complex128)
        assert np.abs(ours.numpy() - sim.birdcage_maps(shape)).max() < 1e-12
        assert torch.allclose(ours.abs().square().sum(0), torch.ones(shape[1:], dtype=torch.float64))


@pytest.mark.parametrize("img_size,three_d", [((20, 24), False), ((15, 21), False), ((6, 10, 12), True)])
def test_sense_equals_sigpy_sense_linop(img_size, three_d):
    sigpy_mri = pytest.importorskip("sigpy.mri")
    maps = birdcage_maps((5,) + img_size, dtype=torch.complex128)
    g = torch.Generator().manual_seed(6)
    mask = (torch.rand((img_size[0], 1, img_size[-1]) if three_d else img_size[-1:], generator=g) < 0.4).float()
    physics = SenseMRI(maps, mask=mask, img_size=img_size, three_d=three_d)
    linop = sigpy_mri.linop.Sense(maps.numpy(), weights=np.broadcast_to(mask.numpy(), img_size).copy())
    x = crandn(*img_size, generator=g)
    y_sigpy = linop(x.numpy())
    y = as_complex(physics.A(as_channels(x[None])))[0].numpy()
    assert np.abs(y - y_sigpy).max() <= 1e-12 * np.abs(y_sigpy).max()
    back = as_complex(physics.A_adjoint(as_channels(torch.from_numpy(y_sigpy)[None])))[0].numpy()
    assert np.abs(back - linop.H(y_sigpy)).max() <= 1e-12 * np.abs(back).max()


@pytest.mark.parametrize("lamda", [0.0, 0.05])
def test_cg_sense_agrees_with_sigpy_sense_recon(lamda):
    """Same algorithm from the same start: the iterates agree to 1e-10 (float64) after 25 iterations."""
    app = pytest.importorskip("sigpy.mri.app")
    maps = birdcage_maps((6, 32, 28), dtype=torch.complex128)
    mask = cartesian_mask((32, 28), "random", 4, 0.2, seed=1)
    physics = SenseMRI(maps, mask=mask, max_iter=25, tol=0.0, tikhonov=lamda)
    g = torch.Generator().manual_seed(7)
    noise = 0.05 * as_channels(crandn(1, 6, 32, 28, generator=g)) * mask
    y = physics.A(as_channels(crandn(1, 32, 28, generator=g))) + noise
    ours = as_complex(physics.A_dagger(y))[0].numpy()
    theirs = app.SenseRecon(as_complex(y)[0].numpy(), maps.numpy(), lamda=lamda, weights=mask.numpy(), max_iter=25,
                            show_pbar=False).run()
    assert np.linalg.norm(ours - theirs) <= 1e-10 * np.linalg.norm(theirs)


def _phantom(height, width, dtype=torch.complex128):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height, dtype=torch.float64),
                            torch.linspace(-1, 1, width, dtype=torch.float64), indexing="ij")
    ellipse = ((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1).double()
    body = ellipse * (1 + 0.5 * (((yy - 0.2) / 0.3) ** 2 + (xx / 0.25) ** 2 < 1))
    return (body * torch.exp(1j * (0.6 * xx + 0.3 * yy))).to(dtype)


def test_espirit_recovers_maps_up_to_phase_and_the_image():
    pytest.importorskip("sigpy")
    maps = birdcage_maps((6, 40, 36), dtype=torch.complex128)
    image = _phantom(40, 36)
    mask = cartesian_mask((40, 36), "equispaced", 3, 16 / 36, seed=0)  # 16 fully sampled centre columns
    physics = SenseMRI(maps, mask=mask)
    kspace = physics.A(as_channels(image[None]))
    estimated = estimate_coil_maps(kspace, calib_width=14)
    assert estimated.shape == (1, 6, 40, 36) and estimated.dtype == torch.complex128
    support = image.abs() > 0
    inner = (estimated[0] * maps.conj()).sum(0).abs()
    collinear = inner / (estimated[0].abs().square().sum(0).sqrt() * maps.abs().square().sum(0).sqrt())
    assert float(collinear[support].min()) > 0.999  # same maps up to a per-pixel phase
    assert float((estimated[0].abs() - maps.abs())[:, support].abs().max()) < 0.03
    # SENSE with the estimated maps recovers the image magnitude (= RSS of the coil images)
    full = SenseMRI(estimated[0])
    coil_kspace = SenseMRI(maps).A(as_channels(image[None]))
    combined = as_complex(full.A_adjoint(coil_kspace))[0]
    target = full.A_adjoint(coil_kspace, rss=True)[0, 0]
    assert torch.allclose(combined.abs()[support], target[support], rtol=1e-3, atol=1e-3)
    assert torch.allclose(target, image.abs(), atol=1e-12)


def test_espirit_per_slice_and_calibration_check():
    pytest.importorskip("sigpy")
    maps = birdcage_maps((4, 2, 24, 24), dtype=torch.complex64)
    image = torch.stack([_phantom(24, 24), 0.5 * _phantom(24, 24)]).to(torch.complex64)
    mask = cartesian_mask((24, 24), "equispaced", 2, 0.5, seed=0)
    physics = SenseMRI(maps, mask=mask, img_size=(2, 24, 24))  # per-slice FFT
    kspace = physics.A(as_channels(image[None]))
    maps_volume = estimate_coil_maps(kspace, calib_width=10)
    assert maps_volume.shape == (1, 4, 2, 24, 24) and maps_volume.dtype == torch.complex64
    slice_one = estimate_coil_maps(kspace[:, :, :, 1], calib_width=10)
    assert torch.allclose(maps_volume[:, :, 1], slice_one)
    with pytest.raises(ValueError, match="not fully sampled"):
        estimate_coil_maps(kspace, calib_width=16)
