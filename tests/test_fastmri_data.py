"""fastMRI data side: reader, synthetic files, per-file masks, official metrics, classical baselines.

The official formulas are written out here from fastMRI's ``evaluate.py`` and scikit-image's
SSIM (7x7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, borders of 3 pixels dropped),
independently of ``invsolve.fastmri.metrics``.
"""

import math

import h5py
import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from invsolve.fastmri import baselines, metrics
from invsolve.fastmri.masks import acs_band, file_mask, volume_mask
from invsolve.fastmri.reader import list_volumes, parse_header, read_volume, select_slices
from invsolve.fastmri.synth import coil_maps, ismrmrd_header, synthesize, write_fastmri_file

SIZE, COILS, SLICES = 32, 8, 6

# ------------------------------------------------------------------------------------------
# official formulas, written independently


def official_ssim_2d(x, y, data_range):
    k1, k2, win = 0.01, 0.03, 7
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = win * win
    cov_norm = n / (n - 1)
    ux, uy = uniform_filter(x, win), uniform_filter(y, win)
    uxx, uyy, uxy = uniform_filter(x * x, win), uniform_filter(y * y, win), uniform_filter(x * y, win)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return s[pad:-pad, pad:-pad].mean()


def official_scores(gt, pred):
    width = gt.shape[-1]

    def crop(a):
        top, left = (a.shape[-2] - width) // 2, (a.shape[-1] - width) // 2
        return a[..., top:top + width, left:left + width]

    gt, pred = crop(gt).astype(np.float64), crop(pred).astype(np.float64)
    peak = gt.max()
    mse = np.mean((gt - pred) ** 2)
    return {"nmse": np.sum((gt - pred) ** 2) / np.sum(gt ** 2),
            "psnr": 10 * math.log10(peak ** 2 / mse) if mse > 0 else math.inf,
            "ssim": np.mean([official_ssim_2d(a, b, peak) for a, b in zip(gt, pred)])}


def assert_scores(got, want, rel=1e-6):
    for name in ("nmse", "psnr", "ssim"):
        if math.isinf(want[name]):
            assert math.isinf(got[name])
        else:
            assert got[name] == pytest.approx(want[name], rel=rel, abs=1e-12), name


# ------------------------------------------------------------------------------------------
# metrics


@pytest.mark.parametrize("shape_gt, shape_pred", [((3, 40, 40), (3, 40, 40)),   # same size
                                                  ((3, 40, 40), (3, 48, 52)),   # wider reconstruction
                                                  ((2, 44, 36), (2, 50, 40))])  # target taller than wide
def test_metrics_equal_official_formulas(shape_gt, shape_pred):
    rng = np.random.default_rng(0)
    gt = rng.gamma(2.0, 1e-4, size=shape_gt)
    pred_full = rng.gamma(2.0, 1e-4, size=shape_pred)
    top, left = (shape_pred[1] - shape_gt[1]) // 2, (shape_pred[2] - shape_gt[2]) // 2
    pred_full[:, top:top + shape_gt[1], left:left + shape_gt[2]] = gt + rng.normal(0, 3e-5, size=shape_gt)
    assert_scores(metrics.volume_metrics(gt, pred_full), official_scores(gt, pred_full))


def test_metrics_edge_cases():
    rng = np.random.default_rng(1)
    constant = np.full((2, 24, 24), 0.7)
    noisy = constant + rng.normal(0, 0.01, size=constant.shape)
    assert_scores(metrics.volume_metrics(constant, noisy), official_scores(constant, noisy))
    perfect = metrics.volume_metrics(constant, constant)
    assert perfect["nmse"] == 0 and math.isinf(perfect["psnr"]) and perfect["ssim"] == pytest.approx(1.0)
    # data range is the *volume's* maximum, also for a single slice's scores
    gt = rng.uniform(0, 1, size=(3, 20, 20))
    gt[0] *= 0.1
    pred = gt + rng.normal(0, 0.01, size=gt.shape)
    one = metrics.slice_metrics(gt[0], pred[0], data_range=gt.max())
    assert one["ssim"] == pytest.approx(official_ssim_2d(gt[0], pred[0], gt.max()), rel=1e-6)
    assert one["psnr"] == pytest.approx(10 * math.log10(gt.max() ** 2 / np.mean((gt[0] - pred[0]) ** 2)), rel=1e-6)
    # float32 volumes (fastMRI's files) agree with the float64 formulas to float32 accuracy
    got = metrics.volume_metrics(gt.astype(np.float32), pred.astype(np.float32))
    assert_scores(got, official_scores(gt.astype(np.float32), pred.astype(np.float32)), rel=1e-5)
    with pytest.raises(ValueError, match="centre-crop"):
        metrics.volume_metrics(np.ones((1, 30, 30)), np.ones((1, 20, 30)))


def test_aggregate_is_runstats_mean_and_sample_std():
    values = [0.3, 0.5, 0.9, 0.4]
    mean, m2 = 0.0, 0.0  # Welford, as runstats.Statistics
    for k, v in enumerate(values, 1):
        delta = v - mean
        mean += delta / k
        m2 += delta * (v - mean)
    out = metrics.aggregate(values)
    assert out["mean"] == pytest.approx(mean, rel=1e-12)
    assert out["std"] == pytest.approx(math.sqrt(m2 / (len(values) - 1)), rel=1e-12)  # ddof = 1
    assert out["two_std"] == pytest.approx(2 * out["std"]) and out["n"] == 4
    assert math.isnan(metrics.aggregate([1.0])["std"])
    summary = metrics.evaluate([(np.ones((1, 16, 16)), np.full((1, 16, 16), 0.9))] * 2)
    assert summary["psnr"]["mean"] == pytest.approx(20.0) and summary["psnr"]["std"] == 0


# ------------------------------------------------------------------------------------------
# synthetic files and the reader


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri-data")
    made = synthesize(root, n_train=0, n_val=2, n_test=1, coils=COILS, size=SIZE, slices=SLICES, seed=3)
    return root, made


def test_synthetic_files_have_fastmri_layout(data):
    root, made = data
    assert [p.parent.name for p in made.splits["val"]] == ["multicoil_val"] * 2
    with h5py.File(made.splits["val"][0], "r") as f:
        assert f["kspace"].dtype == np.complex64 and f["kspace"].shape == (SLICES, COILS, 2 * SIZE, SIZE)
        assert f["reconstruction_rss"].dtype == np.float32 and f["reconstruction_rss"].shape == (SLICES, SIZE, SIZE)
        assert set(f.attrs) >= {"acquisition", "max", "norm", "patient_id"}
        assert f.attrs["max"] == pytest.approx(float(f["reconstruction_rss"][()].max()))
        header = parse_header(f["ismrmrd_header"][()])
    assert header == {"encoding_size": (2 * SIZE, SIZE, 1), "recon_size": (SIZE, SIZE, 1), "padding_left": 0,
                      "padding_right": SIZE}
    with h5py.File(made.splits["test"][0], "r") as f:
        assert "reconstruction_rss" not in f and f["mask"].dtype == bool and f["mask"].shape == (SIZE,)
        assert f.attrs["acceleration"] == 4 and f.attrs["num_low_frequency"] == round(SIZE * 0.08)


def test_reader_parses_train_val_layout(data):
    from operators.mri import center_crop, ifftc, rss

    _, made = data
    path = made.splits["val"][1]
    volume = read_volume(path, slices="middle+1")
    assert volume.slice_indices == (2, 3, 4) and volume.num_slices == SLICES
    assert volume.is_multicoil and volume.challenge == "multicoil" and volume.target_key == "reconstruction_rss"
    assert volume.kspace.shape == (3, COILS, 2 * SIZE, SIZE) and volume.target.shape == (3, SIZE, SIZE)
    assert volume.recon_size == (SIZE, SIZE, 1) and (volume.padding_left, volume.padding_right) == (0, SIZE)
    assert volume.mask is None and not volume.is_test and volume.fname == path.name
    # the target is fastMRI's: centre crop of the RSS of the fully sampled coil images
    images = rss(ifftc(torch.from_numpy(volume.kspace)))
    np.testing.assert_allclose(center_crop(images, (SIZE, SIZE)).numpy(), volume.target, rtol=1e-4, atol=1e-9)
    # slice selections read the same rows
    every = read_volume(path)
    np.testing.assert_array_equal(read_volume(path, slices=[4, 0]).kspace, every.kspace[[4, 0]])
    np.testing.assert_array_equal(read_volume(path, slices="middle").target, every.target[[SLICES // 2]])
    assert read_volume(path, slices=-1).slice_indices == (SLICES - 1,)
    assert select_slices("middle+10", 5) == [0, 1, 2, 3, 4] and select_slices("1,3", 5) == [1, 3]
    with pytest.raises(ValueError, match="out of range"):
        read_volume(path, slices=[SLICES])
    with pytest.raises(ValueError, match="slices must be"):
        select_slices("middle*2", 5)


def test_reader_parses_test_layout_and_per_file_mask(data):
    _, made = data
    path = made.splits["test"][0]
    volume = read_volume(path, slices="all")
    assert volume.is_test and volume.target is None and volume.target_size == (SIZE, SIZE)
    assert volume.acceleration == 4 and volume.num_low_frequency == round(SIZE * 0.08)
    assert volume.mask.dtype == bool
    unsampled = ~volume.mask
    assert np.all(volume.kspace[..., unsampled] == 0) and np.any(volume.kspace[..., volume.mask] != 0)
    # the file's mask is fastMRI's, seeded with the file name
    np.testing.assert_array_equal(volume.mask, file_mask(path.name, SIZE, 4, "equispaced_fraction")[0] > 0)
    np.testing.assert_array_equal(volume_mask(volume, acceleration=4), volume.mask.astype(np.float32))
    with pytest.raises(ValueError, match="cannot be reconstructed at 8x"):
        volume_mask(volume, acceleration=8)


def fastmri_equispaced_fraction(fname, num_cols, acceleration, center_fraction):
    """fastMRI's EquispacedMaskFractionFunc with seed tuple(map(ord, fname)), from its formulas."""
    rng = np.random.RandomState(tuple(map(ord, fname)))
    rng.randint(1)  # choose_acceleration among one (center_fraction, acceleration) pair
    num_low = round(num_cols * center_fraction)
    mask = np.zeros(num_cols, dtype=np.float32)
    pad = (num_cols - num_low + 1) // 2
    mask[pad:pad + num_low] = 1
    adjusted = (acceleration * (num_low - num_cols)) / (num_low * acceleration - num_cols)
    offset = rng.randint(0, high=round(adjusted))
    mask[np.around(np.arange(offset, num_cols - 1, adjusted)).astype(np.uint)] = 1
    return mask


def test_volume_masks_are_fastmris_per_file(data):
    _, made = data
    paths = made.splits["val"]
    for acceleration, fraction in ((4, 0.08), (8, 0.04)):
        for path in paths:
            expected = fastmri_equispaced_fraction(path.name, SIZE, acceleration, fraction)
            for slices in ("all", "middle", [0, 5]):  # every slice selection shares the file's mask
                np.testing.assert_array_equal(volume_mask(read_volume(path, slices), "equispaced_fraction",
                                                          acceleration), expected)
        # the mask depends on the file name (offsets differ between files)
        offsets = {tuple(file_mask(f"file{i}.h5", SIZE, acceleration)[0]) for i in range(8)}
        assert len(offsets) > 1
    # a real fastMRI width (368 columns), with the header's padding zeroed as VarNet does
    mask, num_low = file_mask("file1000001.h5", 368, 4, "equispaced_fraction", padding=(18, 351))
    full, _ = file_mask("file1000001.h5", 368, 4, "equispaced_fraction")
    assert num_low == round(368 * 0.08)
    np.testing.assert_array_equal(full, fastmri_equispaced_fraction("file1000001.h5", 368, 4, 0.08))
    assert abs(full.sum() - 368 / 4) <= 1.5  # the adjusted spacing keeps a quarter of the columns
    assert mask[:18].sum() == 0 and mask[351:].sum() == 0 and np.array_equal(mask[18:351], full[18:351])
    left, right = acs_band(full)
    assert right - left >= num_low and full[left:right].all()


def test_reader_single_coil_padding_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal((4, 16, 24)) + 1j * rng.standard_normal((4, 16, 24))).astype(np.complex64)
    header = ismrmrd_header((16, 24, 1), (8, 8, 1), center=10, maximum=19)
    esc, rss_target = rng.random((4, 8, 8)), rng.random((4, 8, 8))
    path = write_fastmri_file(tmp_path / "file_knee.h5", kspace, header, {"acquisition": "CORPD_FBK"},
                              target=rss_target, extra={"reconstruction_esc": esc.astype(np.float32)})
    volume = read_volume(path, slices="middle")
    assert volume.challenge == "singlecoil" and not volume.is_multicoil and volume.num_coils == 1
    assert volume.target_key == "reconstruction_esc"  # fastMRI scores single coil against ESC
    np.testing.assert_allclose(volume.target[0], esc[2], rtol=1e-6)
    assert (volume.padding_left, volume.padding_right) == (24 // 2 - 10, 24 // 2 - 10 + 20)
    assert volume.attrs["acquisition"] == "CORPD_FBK"
    with pytest.raises(FileExistsError, match="force"):
        write_fastmri_file(path, kspace, header, {})
    # files that are not fastMRI's layout
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        read_volume(tmp_path / "notes.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["image"] = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="no 'kspace'"):
        read_volume(tmp_path / "other.h5")
    with h5py.File(tmp_path / "real.h5", "w") as f:
        f["kspace"] = np.zeros((2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="must be complex"):
        read_volume(tmp_path / "real.h5")
    broken = header.replace("<reconSpace>", "<reconSpaceX>").replace("</reconSpace>", "</reconSpaceX>")
    write_fastmri_file(tmp_path / "broken.h5", kspace, broken, {})
    with pytest.raises(ValueError, match="reconSpace"):
        read_volume(tmp_path / "broken.h5")
    # listing: sorted .h5 files, hidden temporaries skipped, nested splits pointed at
    (tmp_path / ".partial.h5.123.tmp").write_bytes(b"")
    assert [p.name for p in list_volumes(tmp_path)] == ["broken.h5", "file_knee.h5", "notes.h5", "other.h5",
                                                        "real.h5"]
    with pytest.raises(FileNotFoundError, match="multicoil_val"):
        list_volumes(_nested(tmp_path))


def _nested(tmp_path):
    root = tmp_path / "download"
    (root / "multicoil_val").mkdir(parents=True)
    (root / "multicoil_val" / "file.h5").write_bytes(b"")
    return root


def test_synthesize_never_overwrites_without_force(data):
    root, made = data
    before = made.splits["val"][0].read_bytes()
    with pytest.raises(FileExistsError, match="force"):
        synthesize(root, n_train=0, n_val=1, coils=COILS, size=SIZE, slices=SLICES, seed=3)
    assert made.splits["val"][0].read_bytes() == before
    again = synthesize(root, n_train=0, n_val=1, coils=COILS, size=SIZE, slices=SLICES, seed=3, force=True)
    with h5py.File(again.splits["val"][0], "r") as f, h5py.File(made.splits["val"][0], "r") as g:
        np.testing.assert_array_equal(f["kspace"][()], g["kspace"][()])  # same seed, same data


# ------------------------------------------------------------------------------------------
# baselines


def psnr_of(volume, recon):
    return metrics.volume_metrics(volume.target, recon)["psnr"]


def test_zero_filled_is_fastmris(data):
    from operators.mri import center_crop, ifftc

    _, made = data
    volume = read_volume(made.splits["val"][0], slices="middle+1")
    mask = volume_mask(volume, "equispaced_fraction", 4)
    recon = baselines.reconstruct("zero-filled", volume, mask)
    kspace = torch.from_numpy(volume.kspace) * torch.from_numpy(mask)
    expected = center_crop(ifftc(kspace).abs().square().sum(1).sqrt(), (SIZE, SIZE)).numpy()
    np.testing.assert_allclose(recon, expected, rtol=1e-6)
    assert recon.shape == volume.target.shape and recon.dtype == np.float32
    with pytest.raises(TypeError, match="unknown options"):
        baselines.reconstruct("sense", volume, mask, lamda=0.1)
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.reconstruct("grappa", volume, mask)
    with pytest.raises(ValueError, match="give the mask"):
        baselines.reconstruct("zero-filled", volume)
    # test files: the file's own mask
    test_volume = read_volume(made.splits["test"][0], slices="middle")
    assert baselines.reconstruct("zero-filled", test_volume).shape == (1, SIZE, SIZE)


@pytest.mark.parametrize("method", ["sense", "tv", "l1-wavelet"])
def test_baselines_improve_on_zero_filled(data, method):
    if method == "l1-wavelet":
        pytest.importorskip("sigpy")
    _, made = data
    volume = read_volume(made.splits["val"][0], slices="middle")
    mask = volume_mask(volume, "equispaced_fraction", 4)
    maps = coil_maps(COILS, SIZE, 2)  # the simulation's maps: tests the solver, not the calibration
    zero = psnr_of(volume, baselines.reconstruct("zero-filled", volume, mask))
    recon = baselines.reconstruct(method, volume, mask, maps=maps)
    assert recon.shape == volume.target.shape
    assert psnr_of(volume, recon) > zero + 1.0


def test_sense_with_espirit_maps_from_the_acs(data):
    pytest.importorskip("sigpy")
    _, made = data
    # the EPI brain has background inside the field of view, as acquisitions do (the anatomical.nii
    # crop fills it edge to edge, where calibration at the wrap-around edge is poor)
    volume = read_volume(made.splits["val"][1], slices="middle")
    assert volume.attrs["acquisition"] == "AXEPI"
    mask, num_low = file_mask(volume.fname, SIZE, 4, "equispaced", center_fraction=0.4)
    assert num_low >= 12  # "auto" calibrates with ESPIRiT
    zero = psnr_of(volume, baselines.reconstruct("zero-filled", volume, mask))
    sense = psnr_of(volume, baselines.reconstruct("sense", volume, mask))
    assert sense > zero + 1.0
    maps = baselines.estimate_maps(torch.from_numpy(volume.kspace * mask), torch.from_numpy(mask), "espirit",
                                   calib_width=num_low)
    assert maps.shape == volume.kspace.shape
    with pytest.raises(ValueError, match="kernel_width"):
        baselines.reconstruct("sense", volume, volume_mask(volume, "equispaced_fraction", 8), coil_maps="espirit")
