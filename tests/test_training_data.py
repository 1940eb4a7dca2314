"""`invsolve train` on the user's scans: PNG folders, NIfTI volumes, DICOM series, fastMRI HDF5.

Every file here is written into tmp_path (tiny synthetic images; DICOM built from pydicom's shipped
CT_small.dcm); nothing is downloaded.
"""

import copy
import json

import numpy as np
import pytest
import torch

from invsolve.priors import datasets
from invsolve.priors.training import TrainConfig, train


@pytest.fixture(autouse=True)
def _hygiene(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NILEARN_DATA", str(tmp_path / "nilearn"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))


TINY = dict(size=16, channels=(8, 16), attention=(), batch=4, warmup=2, checkpoint_every=1, val_every=2,
            val_images=8, val_fraction=0.34)


# ---------------------------------------------------------------------------------------------
# writers of tiny synthetic files


def write_pngs(folder, n=4, shape=(20, 24)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = []
    for i in range(n):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img{i}.png")
        arrays.append(array)
    big = (rng.integers(0, 65536, shape)).astype(np.uint16)
    Image.fromarray(big).save(folder / "deep16.png")
    return arrays, big


def write_niftis(folder, n=3, shape=(12, 10, 5)):
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    volumes = []
    for i in range(n):
        volume = np.random.default_rng(10 + i).normal(100 * (i + 1), 20, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), str(folder / f"vol{i}.nii.gz"))
        volumes.append(volume)
    return volumes


def write_dicom_series(folder, series=(3, 2, 2), side=16):
    """Series of CT slices from pydicom's CT_small.dcm; pixel k of series s is stored as ``1000 + 100 s + 10 k``
    plus a ramp, written in reverse position order so reading must sort them."""
    import pydicom
    from pydicom.data import get_testdata_file

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    stored = {}
    ramp = np.arange(side * side, dtype=np.int16).reshape(side, side)
    for s, count in enumerate(series):
        uid = f"1.2.826.0.1.3680043.8.498.{s + 1}"
        stored[uid] = []
        for k in range(count):
            ds = copy.deepcopy(template)
            pixels = (1000 + 100 * s + 10 * k + ramp).astype(np.int16)
            ds.Rows, ds.Columns = side, side
            ds.PixelData = pixels.tobytes()
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = f"{uid}.{k + 1}"
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
            ds.InstanceNumber = count - k  # reverse of the spatial order
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.save_as(folder / f"s{s}_{count - 1 - k:02d}.dcm")
            stored[uid].append(pixels)
    return stored


def fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def brain_like(n, h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    out = []
    for _ in range(n):
        image = (xx ** 2 / rng.uniform(0.4, 0.8) + yy ** 2 / rng.uniform(0.4, 0.8) < 1) * rng.uniform(0.5, 1.0)
        out.append(image + 0.1 * rng.random((h, w)))
    return np.stack(out)


def write_fastmri(folder, n=3, slices=2, coils=4, shape=(24, 20), target=(16, 16), single_coil=False, rss=True):
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    h, w = shape
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    angles = np.linspace(0, 2 * np.pi, coils, endpoint=False)
    maps = np.stack([np.exp(-((xx - 0.8 * np.cos(a)) ** 2 + (yy - 0.8 * np.sin(a)) ** 2)) * np.exp(1j * a) for a in angles])
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    images = []
    for i in range(n):
        x = brain_like(slices, h, w, 20 + i) * np.exp(1j * 0.3 * xx)  # smooth phase
        kspace = fft2c(x) if single_coil else fft2c(x[:, None] * maps[None])
        with h5py.File(folder / f"file{i}.h5", "w") as f:
            f.create_dataset("kspace", data=kspace.astype(np.complex64))
            if rss:
                f.create_dataset("reconstruction_rss", data=datasets._centre_crop(np.abs(x), target).astype(np.float32))
            f.attrs["acquisition"] = "AXT1"
        images.append(x)
    return images


# ---------------------------------------------------------------------------------------------
# readers: values, normalisation, orientation


def test_png_folder_reads_8_and_16_bit_and_normalises(tmp_path):
    arrays, big = write_pngs(tmp_path / "png")
    unit = datasets.read_image(tmp_path / "png" / "img1.png")
    assert unit.slices.shape == (1, 1, 20, 24)
    torch.testing.assert_close(unit.slices[0, 0], torch.from_numpy(arrays[1] / 255.0).float())
    deep = datasets.read_image(tmp_path / "png" / "deep16.png")
    torch.testing.assert_close(deep.slices[0, 0], torch.from_numpy(big / 65535.0).float())
    fmt, files = datasets.find_files(str(tmp_path / "png"))
    assert fmt == "images" and len(files) == 5
    windowed = datasets.read_image(tmp_path / "png" / "img1.png", window=(0, 100))
    assert windowed.slices.max() == 1 and torch.equal(windowed.slices[0, 0] == 1, torch.from_numpy(arrays[1] >= 100))


def test_nifti_is_reoriented_to_ras_and_normalised_per_volume(tmp_path):
    import nibabel as nib

    volume = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([-1.0, 1.0, 1.0, 1.0])), str(tmp_path / "las.nii"))  # x runs right->left
    unit = datasets.read_nifti(tmp_path / "las.nii")
    ras = volume[::-1]  # reoriented to x left->right
    lo, hi = np.percentile(volume, [0.5, 99.5])
    expected = np.clip((ras - lo) / (hi - lo), 0, 1)
    assert unit.slices.shape == (4, 1, 5, 6)  # axial slices: rows = y (anterior at the top), columns = x
    for k in range(4):
        np.testing.assert_allclose(unit.slices[k, 0].numpy(), expected[:, ::-1, k].T, rtol=1e-5, atol=1e-6)
    sagittal = datasets.read_nifti(tmp_path / "las.nii", "sagittal")
    assert sagittal.slices.shape == (6, 1, 4, 5)
    with pytest.raises(ValueError, match="slice_axis"):
        datasets.read_nifti(tmp_path / "las.nii", "oblique")


def test_dicom_series_sorted_rescaled_windowed_and_grouped(tmp_path):
    stored = write_dicom_series(tmp_path / "dcm")
    _, files = datasets.find_files(str(tmp_path / "dcm"))
    units = datasets.read_dicom_series(files, window=(-1024.0, 1024.0))
    assert [u.slices.shape[0] for u in units] == [3, 2, 2]
    for unit, pixels in zip(units, stored.values()):
        for k, stored_pixels in enumerate(pixels):  # sorted along the slice normal despite reversed numbers
            hu = stored_pixels.astype(np.float64) - 1024
            np.testing.assert_allclose(unit.slices[k, 0].numpy(), np.clip((hu + 1024) / 2048, 0, 1), rtol=1e-6)


def test_fastmri_magnitude_complex_and_multicoil(tmp_path):
    images = write_fastmri(tmp_path / "single", n=1, single_coil=True, rss=False)
    unit = datasets.read_fastmri(tmp_path / "single" / "file0.h5", "complex")
    x = images[0]
    peak = np.percentile(np.abs(x), 99.5)
    expected = x / peak / np.maximum(np.abs(x) / peak, 1)
    assert unit.slices.shape == (2, 2, 24, 20)
    np.testing.assert_allclose(unit.slices[:, 0].numpy(), expected.real, atol=1e-5)
    np.testing.assert_allclose(unit.slices[:, 1].numpy(), expected.imag, atol=1e-5)

    images = write_fastmri(tmp_path / "multi", n=1)
    x = images[0]
    magnitude = datasets.read_fastmri(tmp_path / "multi" / "file0.h5", "magnitude")  # the stored RSS target
    target = datasets._centre_crop(np.abs(x), (16, 16))
    np.testing.assert_allclose(magnitude.slices[:, 0].numpy(), datasets.normalize(target), atol=1e-5)
    combined = datasets.read_fastmri(tmp_path / "multi" / "file0.h5", "complex").slices
    assert combined.shape == (2, 2, 16, 16)  # cropped to the RSS target's size
    modulus = combined.norm(dim=1).numpy()
    scale = np.percentile(target, 99.5)
    # coil combination with maps estimated from the k-space centre recovers |x| to within a few percent
    assert np.abs(modulus - np.minimum(target / scale, 1)).mean() < 0.03

    write_fastmri(tmp_path / "norss", n=1, rss=False)
    rss = datasets.read_fastmri(tmp_path / "norss" / "file0.h5", "magnitude").slices
    np.testing.assert_allclose(rss[:, 0].numpy(), datasets.normalize(np.abs(x)), atol=1e-4)  # maps have sum |S|^2 = 1


# ---------------------------------------------------------------------------------------------
# split by file, augmentation


def _rows(t):
    return {tuple(row) for row in t.reshape(t.shape[0], -1).numpy().round(5).tolist()}


@pytest.mark.parametrize("kind", ["images", "nifti", "dicom", "fastmri"])
def test_split_is_by_file(tmp_path, kind):
    folder = tmp_path / kind
    {"images": lambda: write_pngs(folder, n=5), "nifti": lambda: write_niftis(folder, n=4),
     "dicom": lambda: write_dicom_series(folder, series=(3, 2, 2, 2)), "fastmri": lambda: write_fastmri(folder, n=4)}[kind]()
    config = TrainConfig(data=str(folder), size=16, val_fraction=0.25, val_images=1000)
    data = datasets.build(config)
    _, units = datasets.read_units(config)
    per_unit = [_rows(datasets.square_resize(u.slices, 16)) for u in units]
    train_rows, val_rows = _rows(data.slices), _rows(data.validation)
    assert train_rows and val_rows and not train_rows & val_rows
    for rows in per_unit:  # every file's slices on one side only
        assert rows <= train_rows or rows <= val_rows
    assert set().union(*per_unit) == train_rows | val_rows
    n_val = max(1, round(0.25 * len(units)))
    assert data.description["validation"]["units"] == n_val and data.description["train"]["units"] == len(units) - n_val
    assert data.validation.min() >= -1 and data.validation.max() <= 1
    again = datasets.build(config)
    assert torch.equal(again.validation, data.validation)  # the split is seeded
    other = datasets.build(TrainConfig(**{**config.__dict__, "seed": 5}))
    assert data.description["validation"]["files"] != other.description["validation"]["files"] or len(units) < 3


def test_split_needs_two_files_and_unknown_formats_are_refused(tmp_path):
    write_pngs(tmp_path / "one", n=1)
    (tmp_path / "one" / "deep16.png").unlink()
    with pytest.raises(ValueError, match="at least 2"):
        datasets.build(TrainConfig(data=str(tmp_path / "one"), size=16))
    assert datasets.build(TrainConfig(data=str(tmp_path / "one"), size=16, val_fraction=0)).validation is None
    with pytest.raises(FileNotFoundError, match="neither"):
        datasets.build(TrainConfig(data=str(tmp_path / "missing"), size=16))
    with pytest.raises(ValueError, match="complex"):
        datasets.build(TrainConfig(data=str(tmp_path / "one"), size=16, representation="complex", val_fraction=0))
    with pytest.raises(ValueError, match="unknown augmentations"):
        datasets.build(TrainConfig(data=str(tmp_path / "one"), size=16, augment=("shear",), val_fraction=0))


def test_augmentation_is_reproducible_from_the_generator():
    train_slices = torch.rand(6, 1, 16, 16)
    all_aug = datasets.slices_sampler(train_slices, datasets.AUGMENTATIONS, False, (0.0, 1.0))
    a = all_aug(8, torch.Generator().manual_seed(3))
    b = all_aug(8, torch.Generator().manual_seed(3))
    c = all_aug(8, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 1, 16, 16) and a.min() >= 0 and a.max() <= 1
    plain = datasets.slices_sampler(train_slices, (), False, (0.0, 1.0))(8, torch.Generator().manual_seed(3))
    assert not torch.equal(a, plain)
    flips = datasets.slices_sampler(train_slices, ("flip",), False, (0.0, 1.0))(64, torch.Generator().manual_seed(1))
    candidates = torch.cat([train_slices, train_slices.flip(-1)])
    distance = (flips[:, None] - candidates[None]).abs().amax(dim=(2, 3, 4)).amin(1)
    assert distance.max() == 0  # every draw is a training slice or its mirror image
    generator = torch.Generator().manual_seed(0)
    all_aug(4, generator)
    state = generator.get_state()
    d1 = all_aug(4, generator)
    generator.set_state(state)
    assert torch.equal(all_aug(4, generator), d1)  # the generator state is all a resumed run needs


def test_mni152_source_trains_on_templates_and_validates_on_other_brains():
    config = TrainConfig(data="mni152", size=16, augment=("flip", "rotate", "scale", "gamma", "intensity"))
    data = datasets.build(config)
    a = data.sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(a, data.sample(4, torch.Generator().manual_seed(0)))
    assert a.shape == (4, 1, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert data.slices.shape[-2:] == (233, 197)  # 1 mm template slices
    sets = datasets.brain_heldout_sets(16)
    assert set(sets) == {"anatomical.nii", "example4d.nii.gz"} and sets["anatomical.nii"].shape[0] == 25
    torch.testing.assert_close(data.validation, torch.cat(list(sets.values())))
    # the held-out brains are not MNI152 slices: no validation image is close to a training crop of the same scale
    templates = datasets.square_resize(data.slices, 16)
    gap = (data.validation[:, None] - templates[None]).abs().mean(dim=(2, 3, 4)).amin(1)
    assert gap.min() > 0.01


# ---------------------------------------------------------------------------------------------
# a 2-step training run on each source writes card + curve and resumes


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["images", "nifti", "dicom", "fastmri", "fastmri-complex", "mni152"])
def test_two_step_run_writes_card_and_curve_and_resumes(tmp_path, kind):
    folder = tmp_path / "data"
    extra = {}
    if kind == "images":
        write_pngs(folder, n=3)
    elif kind == "nifti":
        write_niftis(folder, n=3)
        extra = {"augment": ("flip", "rotate")}
    elif kind == "dicom":
        write_dicom_series(folder)
        extra = {"window": (-1024.0, 1024.0)}
    elif kind.startswith("fastmri"):
        write_fastmri(folder, n=3)
        extra = {"representation": "complex"} if kind == "fastmri-complex" else {}
    else:
        extra = {"augment": ("flip",)}
    data = "mni152" if kind == "mni152" else str(folder)
    base = dict(TINY, name=f"tiny-{kind}", data=data, **extra)
    out = tmp_path / "out"
    evaluate = kind in ("images", "fastmri-complex", "mni152")  # the held-out evaluation costs ~20 TV solves
    assert train(TrainConfig(steps=2, **base), tmp_path / "run", out, progress=False, evaluate=evaluate) == out
    card = json.loads((out / "card.json").read_text())
    meta = card["metadata"]
    assert meta["training"]["steps"] == 2 and meta["training"]["wall_seconds"] >= 0
    assert np.isfinite(meta["training"]["final_loss_mean_last_200"])
    assert meta["recipe"]["data"] == data and meta["data"]["physical_range"]
    assert card["shape"] == [2 if kind == "fastmri-complex" else 1, 16, 16]
    assert [row[0] for row in meta["validation"]["curve"]] == [2]
    if evaluate:
        evaluation = meta["evaluation"]
        assert {"prior_psnr_db", "tv_psnr_db", "gain_db"} <= set(evaluation) and evaluation["sigma"] == 0.1
        if kind == "mni152":
            assert set(evaluation["sets"]) == {"anatomical.nii", "example4d.nii.gz"}
        else:
            assert evaluation["images"] == meta["data"]["validation"]["slices"]
    assert _is_png(out / "validation.png") and _is_png(tmp_path / "run" / "validation.png")
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    # resume: one more step continues from the checkpoint, the curve keeps its first points
    train(TrainConfig(steps=3, **base), tmp_path / "run", out, progress=False, evaluate=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert int(state["step"]) == 3 and state["history"].shape == (3,)
    assert state["val"][:, 0].tolist() == [2.0, 3.0]
    assert json.loads((out / "card.json").read_text())["metadata"]["training"]["steps"] == 3


def test_resumed_file_run_equals_uninterrupted_and_refuses_changed_files(tmp_path):
    write_niftis(tmp_path / "data", n=3)
    base = dict(TINY, data=str(tmp_path / "data"), augment=("flip", "rotate", "intensity"))
    straight = train(TrainConfig(steps=3, **base), tmp_path / "a", progress=False, evaluate=False)
    train(TrainConfig(steps=1, **base), tmp_path / "b", progress=False, evaluate=False)
    resumed = train(TrainConfig(steps=3, **base), tmp_path / "b", progress=False, evaluate=False)
    from safetensors.torch import load_file

    wa, wb = load_file(str(straight / "weights.safetensors")), load_file(str(resumed / "weights.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    write_niftis(tmp_path / "data", n=4)  # a file more: the run must not silently train on other data
    with pytest.raises(ValueError, match="changed"):
        train(TrainConfig(steps=4, **base), tmp_path / "b", progress=False, evaluate=False)


def test_cli_train_on_pngs_then_evaluate_and_record(tmp_path, capsys):
    from invsolve.cli import main

    write_pngs(tmp_path / "png", n=3)
    out = tmp_path / "prior"
    args = ["train", "--name", "tiny-cli", "--data", str(tmp_path / "png"), "--size", "16", "--channels", "8", "16",
            "--attention", "--batch", "4", "--steps", "2", "--warmup", "2", "--val-every", "2", "--val-fraction", "0.34",
            "--augment", "flip", "--run-dir", str(tmp_path / "run"), "--out", str(out), "--quiet", "--no-evaluate"]
    assert main(args) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["metadata"]["recipe"]["augment"] == ["flip"] and "evaluation" not in card["metadata"]
    weights = (out / "weights.safetensors").read_bytes()
    assert main(["evaluate", str(out), "--write-card", "--tune", "2"]) == 0
    assert "held-out denoising at sigma 0.1" in capsys.readouterr().out
    card = json.loads((out / "card.json").read_text())
    assert card["metadata"]["evaluation"]["tune_requested"] == 2
    assert (out / "weights.safetensors").read_bytes() == weights
    args[args.index("flip")] = "vflip"  # another recipe in the same run folder is refused
    assert main(args) == 2
    assert "different configuration" in capsys.readouterr().err
