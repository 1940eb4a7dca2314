"""Issue 12: slice-wise priors, the 3D samplers (dds, diffusionmbir, tpdm), ADMM-TV, volume I/O, 3D phantoms."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import invsolve as iv
import invsolve.io as vio
import operators as ops
from invsolve.errors import ConfigError, DataError
from invsolve.priors import Prior, PriorCard
from invsolve.priors.slicewise import SliceWisePrior
from operators.linalg import TVState, admm_tv_step, forward_diff, forward_diff_adjoint, soft_threshold, tv_objective

from helpers import tiny_prior

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE2D = (1, 16, 16)


def volumes(n=2, depth=8, seed=0):
    return torch.randn(n, 1, depth, 16, 16, generator=torch.Generator().manual_seed(seed))


def per_slice_loop(prior2d, x, sigma, dim=2):
    """The reference: the 2D prior on every slice of every volume, one at a time."""
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        for s in range(x.shape[dim]):
            index = [n, slice(None)] + [slice(None)] * 3
            index[dim] = s
            sig = sigma[n:n + 1] if torch.is_tensor(sigma) else sigma
            out[tuple(index)] = prior2d(x[tuple(index)][None], sig)[0]
    return out


class PixelPrior(Prior):
    """A batch-size-invariant 2D 'denoiser' (elementwise), so chunking can be checked bit for bit."""

    def __init__(self):
        super().__init__(lambda x, s: torch.tanh(x) / (1 + torch.as_tensor(s).reshape(-1, 1, 1, 1) ** 2),
                         PriorCard(name="pixel", kind="diffusion", parameterization="x0", shape=SHAPE2D,
                                   scale=2.0, offset=-1.0))


# ---- slice-wise prior --------------------------------------------------------------------------------


@pytest.mark.parametrize("axis,dim", [("axial", 2), ("coronal", 3), ("sagittal", 4)])
def test_slicewise_chunk1_equals_per_slice_loop_exactly(axis, dim):
    prior2d = tiny_prior(SHAPE2D)
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    prior = SliceWisePrior(prior2d, axis, chunk=1, depth=16)
    assert prior.slice_dim == dim
    assert torch.equal(prior(x, 0.7), per_slice_loop(prior2d, x, 0.7, dim))


def test_slicewise_chunk_size_does_not_change_results():
    x = volumes()
    sigma = torch.tensor([0.3, 1.5])
    # bit-identical with a batch-size-invariant 2D prior: the chunking itself is exact
    outs = [SliceWisePrior(PixelPrior(), chunk=c, depth=8)(x, sigma) for c in (1, 3, 5, 16, "auto")]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert torch.equal(outs[0], per_slice_loop(PixelPrior(), x, sigma))
    # the UNet's own convolutions/GEMMs round differently per batch size on CPU: equal to float32 rounding
    prior2d = tiny_prior(SHAPE2D)
    ref = SliceWisePrior(prior2d, chunk=1, depth=8)(x, sigma)
    for c in (3, 16, "auto"):
        torch.testing.assert_close(SliceWisePrior(prior2d, chunk=c, depth=8)(x, sigma), ref, rtol=0, atol=1e-6)


def test_slicewise_gradient_equals_unchunked():
    prior2d = tiny_prior(SHAPE2D)
    x = volumes()

    def unchunked(t):
        s = t.movedim(2, 1).reshape(-1, *SHAPE2D)
        return prior2d(s, 0.7).reshape(2, 8, *SHAPE2D).movedim(1, 2)

    xg = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((unchunked(xg) ** 2).sum(), xg)
    for chunk in (1, 3):
        prior = SliceWisePrior(prior2d, chunk=chunk, depth=8)
        (g,) = torch.autograd.grad((prior(xg, 0.7) ** 2).sum(), xg)
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    g_func = torch.func.grad(lambda t: (SliceWisePrior(prior2d, chunk=3, depth=8)(t, 0.7) ** 2).sum())(x)
    torch.testing.assert_close(g_func, ref, rtol=1e-5, atol=1e-6)


def test_slicewise_card_depth_and_errors():
    prior2d = tiny_prior(SHAPE2D)
    assert SliceWisePrior(prior2d, "coronal", depth=8).card.shape == (1, 16, 8, 16)
    assert SliceWisePrior(prior2d, 2).with_depth(5).card.shape == (1, 16, 16, 5)
    physics = ops.make("ct", img_size=16, views=4)
    y = physics.A(torch.rand(1, 1, 8, 16, 16))
    with pytest.raises(ConfigError, match="depth"):
        iv.sample("dds", SliceWisePrior(prior2d), iv.Problem(physics, y, 0.01), steps=2)
    with pytest.raises(ConfigError, match="axis"):
        SliceWisePrior(prior2d, "transverse")
    with pytest.raises(ConfigError, match="chunk"):
        SliceWisePrior(prior2d, chunk=0)
    with pytest.raises(DataError, match="volumes"):
        SliceWisePrior(prior2d, depth=8)(torch.zeros(1, 1, 16, 16), 1.0)


def test_slicewise_too_large_volume_fails_before_any_work():
    prior2d = tiny_prior(SHAPE2D)
    calls = []
    counted = Prior(lambda x, s: calls.append(x.shape[0]) or prior2d(x, s), prior2d.card)
    per_slice = SliceWisePrior(counted, depth=8).per_slice_bytes(SHAPE2D, 0)
    calls.clear()
    volume_bytes = 2 * 8 * 16 * 16 * 4 * 4
    limit = 2 * (volume_bytes + 2 * per_slice)  # room for 2 slices at memory_fraction 0.5
    physics = ops.make("ct", img_size=16, views=4)
    problem = iv.Problem(physics, physics.A(torch.rand(2, 1, 8, 16, 16)), 0.01)
    tight = SliceWisePrior(counted, chunk=6, depth=8, memory_limit=limit)
    tight._per_slice = {k: per_slice for k in [((1, 16, 16), 0, torch.float32, "cpu")]}
    with pytest.raises(ConfigError, match="chunk=6"):
        iv.sample("dds", tight, problem, steps=2)
    assert calls == [], "the 2D prior was called before the memory check"
    auto = SliceWisePrior(counted, chunk="auto", depth=8, memory_limit=limit)
    auto._per_slice = dict(tight._per_slice)
    assert auto.plan((2, 1, 8, 16, 16)) == 2


def test_slicewise_with_dps_runs():
    prior = SliceWisePrior(tiny_prior(SHAPE2D), chunk=5, depth=8)
    physics = ops.make("ct", img_size=16, views=4)
    truth = torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    problem = iv.Problem(physics, physics.A(truth), sigma_y=0.01, prior=prior)
    post = iv.sample("dps", prior, problem, n_samples=2, generator=torch.Generator().manual_seed(0), steps=3)
    assert post.samples.shape == (2, 1, 1, 8, 16, 16) and torch.isfinite(post.samples).all() and post.nfe == 3


def test_slicewise_ray_workers_identical_to_one_process():
    ray = pytest.importorskip("ray")
    prior2d = iv.load_prior("ct-phantom64")  # shipped with the package, so Ray's workers can unpickle it
    x = torch.randn(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 2.0])
    local = SliceWisePrior(prior2d, "axial", chunk=2, depth=3)
    physics = ops.make("ct", img_size=64, views=4)
    problem = iv.Problem(physics, physics.A(torch.rand(1, 1, 3, 64, 64, generator=torch.Generator().manual_seed(1))),
                         sigma_y=0.05)
    run = lambda p: iv.sample("dds", p, problem, generator=torch.Generator().manual_seed(0), steps=2,  # noqa: E731
                              tv_z=0.5).samples
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        remote = SliceWisePrior(prior2d, "axial", chunk=2, depth=3, workers=2)
        assert torch.equal(remote(x, sigma), local(x, sigma))
        xg = x.clone().requires_grad_(True)
        (g_remote,) = torch.autograd.grad(remote(xg, sigma).square().sum(), xg)
        xg = x.clone().requires_grad_(True)
        (g_local,) = torch.autograd.grad(local(xg, sigma).square().sum(), xg)
        assert torch.equal(g_remote, g_local)
        assert torch.equal(run(remote), run(local))  # a whole sampler run: chunks remote, CG/ADMM here
        remote.close()
    finally:
        ray.shutdown()


def test_slicewise_workers_without_ray_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"invsolve\[distributed\]"):
        SliceWisePrior(tiny_prior(SHAPE2D), workers=2)
    with pytest.raises(ConfigError, match="workers"):
        SliceWisePrior(tiny_prior(SHAPE2D), workers=0)
    with pytest.raises(ConfigError, match="address"):
        SliceWisePrior(tiny_prior(SHAPE2D), address="ray://head:10001")


# ---- ADMM-TV ----------------------------------------------------------------------------------------


def test_forward_diff_adjoint_and_soft_threshold():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(2, 1, 5, 4, 3, generator=g), torch.randn(2, 1, 5, 4, 3, generator=g)
    for d in (2, 3, 4):
        torch.testing.assert_close((forward_diff(x, d) * r).sum(), (x * forward_diff_adjoint(r, d)).sum())
    assert torch.equal(soft_threshold(torch.tensor([-2.0, -0.5, 0.2, 3.0]), 1.0), torch.tensor([-1.0, 0.0, 0.0, 2.0]))


def test_admm_tv_steps_reduce_the_objective():
    physics = ops.make("ct", img_size=16, views=4)
    truth = torch.zeros(1, 1, 8, 16, 16)
    truth[:, :, 2:6, 4:12, 4:12] = 1.0
    y = physics.A(truth)

    def normal(v):
        return physics.A_adjoint(physics.A(v))

    lam, rho, dims = 0.05, 1.0, (2,)
    x = torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))
    start = tv_objective(x, y - physics.A(x), dims, lam)
    state, values = TVState(), []
    for _ in range(30):
        x = admm_tv_step(x, normal, physics.A_adjoint(y), state, dims, lam, rho, cg_iters=5)
        values.append(float(tv_objective(x, y - physics.A(x), dims, lam)))
    assert values[0] < float(start) and values[-1] < 0.05 * float(start)
    # the x-update alone minimises its quadratic subproblem: never above its start
    w, u = state.w[2], state.u[2]
    sub = lambda v: 0.5 * (y - physics.A(v)).pow(2).sum() + rho / 2 * (forward_diff(v, 2) - w + u).pow(2).sum()  # noqa: E731
    x_new = admm_tv_step(x, normal, physics.A_adjoint(y), _copy(state), dims, lam, rho, cg_iters=3)
    assert sub(x_new) <= sub(x) + 1e-4


def _copy(state):
    new = TVState()
    new.w, new.u = dict(state.w), dict(state.u)
    return new


# ---- the 3D samplers ----------------------------------------------------------------------------------

SAMPLERS_3D = {"dds": dict(steps=4, tv_z=0.2, rho=1.0), "diffusionmbir": dict(steps=3, lam=0.2, rho=1.0),
               "tpdm": dict(steps=3, K=2.7, weight=0.1)}


def volume_problem(prior, sigma_y=0.01):
    physics = ops.make("ct", img_size=16, views=4)
    truth = torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    return iv.Problem(physics, physics.A(truth), sigma_y=sigma_y, prior=prior)


@pytest.mark.parametrize("name", sorted(SAMPLERS_3D))
def test_3d_sampler_smoke_and_determinism(name):
    prior = SliceWisePrior(tiny_prior(SHAPE2D), chunk=4, depth=8)
    problem = volume_problem(prior)
    seen = []
    runs = [iv.sample(name, prior, problem, n_samples=2, generator=torch.Generator().manual_seed(0),
                      callback=seen.append, **SAMPLERS_3D[name]) for _ in range(2)]
    assert runs[0].samples.shape == (2, 1, 1, 8, 16, 16) and torch.isfinite(runs[0].samples).all()
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert runs[0].nfe == {"dds": 4, "diffusionmbir": 5, "tpdm": 6}[name]
    other = iv.sample(name, prior, problem, n_samples=2, generator=torch.Generator().manual_seed(1), **SAMPLERS_3D[name])
    assert not torch.equal(other.samples, runs[0].samples)


def test_dds_2d_and_presets():
    prior = tiny_prior(SHAPE2D)
    physics = ops.make("ct", img_size=16, views=4)
    truth = torch.rand(1, *SHAPE2D, generator=torch.Generator().manual_seed(0))
    problem = iv.Problem(physics, physics.A(truth), sigma_y=0.0, prior=prior)
    post = iv.sample("dds", prior, problem, generator=torch.Generator().manual_seed(0), steps=5)
    assert post.samples.shape == (1, 1, *SHAPE2D) and post.nfe == 5
    # the final step returns the CG-corrected x0: it fits y better than the raw prior draw of 0 CG steps
    raw = iv.sample("dds", prior, problem, generator=torch.Generator().manual_seed(0), steps=5, cg_steps=0)
    res = lambda p: (problem.y - physics.A(p.samples[0])).norm()  # noqa: E731
    assert res(post) < res(raw)
    for name in ("dds", "diffusionmbir", "tpdm"):
        for preset in iv.samplers.get(name).PRESETS:
            iv.samplers.configure(name, preset)


def test_tpdm_turns_follow_k():
    tpdm = iv.samplers.configure("tpdm", steps=6, K=3)
    assert tpdm.turns() == [True, True, False, True, True, False]
    frac = iv.samplers.configure("tpdm", steps=4000, K=2.7).turns()
    assert abs((1 - np.mean(frac)) - 1 / 2.7) < 0.03
    assert frac == iv.samplers.configure("tpdm", steps=4000, K=2.7).turns()


def test_tpdm_uses_the_auxiliary_axis():
    prior2d = tiny_prior(SHAPE2D)
    seen = []

    class Spy(SliceWisePrior):
        def forward(self, x, sigma, axis=None):
            seen.append(axis)
            return super().forward(x, sigma, axis)

    prior = Spy(prior2d, "axial", chunk=8, depth=16)
    physics = ops.make("ct", img_size=16, views=4)
    problem = iv.Problem(physics, physics.A(torch.rand(1, 1, 16, 16, 16)), sigma_y=0.01, prior=prior)
    iv.sample("tpdm", prior, problem, generator=torch.Generator().manual_seed(0), steps=2, K=2)
    assert seen == [None, None, "coronal", "coronal"]


# ---- volume I/O ---------------------------------------------------------------------------------------


def nibabel_data(name):
    import nibabel

    return os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", name)


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz"])
def test_nifti_round_trip_keeps_affine_and_header(tmp_path, name):
    import nibabel as nib

    array, meta = vio.load_volume(nibabel_data(name))
    original = nib.load(nibabel_data(name))
    assert array.shape == original.shape[:3][::-1] + original.shape[3:] if array.ndim == 3 else True
    out = vio.save_volume_nifti(array, tmp_path / f"copy-{name}", meta)
    again, meta2 = vio.load_volume(out)
    assert np.array_equal(again, array) and again.dtype == array.dtype
    assert np.array_equal(meta2["affine"], original.affine)
    assert meta2["header"].binaryblock == original.header.binaryblock
    assert meta["orientation"] == ("L", "A", "S") and meta["spacing"][-1] == 2.0


def test_nifti_float_result_written_with_input_affine(tmp_path):
    array, meta = vio.load_volume(nibabel_data("anatomical.nii"))
    result = array.astype(np.float32) / 100
    again, meta2 = vio.load_volume(vio.save_volume_nifti(result, tmp_path / "result.nii.gz", meta))
    assert np.array_equal(again, result) and np.array_equal(meta2["affine"], meta["affine"])


def test_dicom_series_sorted_by_position_with_spacing_and_rescale(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rows, cols = template.Rows, template.Columns
    order = list(range(6))
    random.Random(0).shuffle(order)
    origin = np.array([-100.0, -80.0, 30.0])
    for file_index, k in enumerate(order):
        ds = template.copy()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = list(origin + [0.0, 0.0, 2.5 * k])
        ds.PixelSpacing = [0.7, 0.6]
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
        ds.InstanceNumber = file_index + 1  # deliberately not the spatial order
        ds.PixelData = np.full((rows, cols), 100 + k, dtype=np.int16).tobytes()
        ds.save_as(str(tmp_path / f"img{file_index:02d}.dcm"))
    (tmp_path / "notes.txt").write_text("not a DICOM file")
    volume, meta = vio.load_volume(tmp_path)
    assert volume.shape == (6, rows, cols)
    assert np.array_equal(volume[:, 0, 0], 2.0 * (100 + np.arange(6)) - 1024)
    assert meta["spacing"] == pytest.approx((2.5, 0.7, 0.6))
    assert np.allclose(meta["affine"][:3, 3], [100.0, 80.0, 30.0])  # LPS -> RAS
    assert np.allclose(np.diag(meta["affine"])[:3], [-0.6, -0.7, 2.5])


def test_resample_inplane_round_trip():
    array, meta = vio.load_volume(nibabel_data("anatomical.nii"))
    small, meta_small = vio.resample_inplane(array.astype(np.float32), 64, meta)
    assert small.shape == (array.shape[0], 64, 64)
    # the physical extent of the slice is kept: new spacing x new size = old spacing x old size
    assert meta_small["spacing"][1] * 64 == pytest.approx(meta["spacing"][1] * array.shape[1])
    back, meta_back = vio.restore_inplane(small, array.shape[1:], meta_small)
    assert back.shape == array.shape and np.allclose(meta_back["affine"], meta["affine"])


# ---- 3D phantoms --------------------------------------------------------------------------------------


def test_random_ellipsoids_seeded_and_in_family():
    from invsolve.phantoms import heldout_volumes, random_ellipses, random_ellipsoids

    a = random_ellipsoids(1, 32, torch.Generator().manual_seed(5))
    b = random_ellipsoids(1, 32, torch.Generator().manual_seed(5))
    assert a.shape == (1, 1, 32, 32, 32) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(heldout_volumes(1, 32), a)
    mid = a[0, 0, 12:20]  # central axial slices: body with tissue values like the 2D family
    flat = random_ellipses(8, 32)
    assert 0.3 < (mid > 0).float().mean() / (flat > 0).float().mean() < 1.7
