"""``invsolve reconstruct`` / ``iv.reconstruct`` on users' files: formats, reproduction, the fit check,
and the error path (one line, exit status 2, nothing written or lost)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import invsolve as iv
import operators as ops
from invsolve.cli import main
from invsolve.phantoms import heldout_phantoms
from invsolve.io import MARKER

FAST = ["--steps", "3", "--samples", "2", "--quiet"]
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


@pytest.fixture()
def phantom(tmp_path):
    path = tmp_path / "phantom.npy"
    np.save(path, heldout_phantoms(1)[0, 0].numpy())
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_simulate_writes_outputs_and_record_reproduces_bit_identically(tmp_path, phantom, capsys, single_thread):
    out = tmp_path / "recon"
    # 25 steps: the fewest at which the default DPS preset is expected to beat FBP on a held-out phantom
    # (3-10 steps of the spanned rule fall below FBP on 8-view CT: docs/samplers.md, DPS guidance)
    code, _, err = run(capsys, "reconstruct", phantom, "--simulate", "ct-sparse8", "--sigma-y", "0.1", "--out", out,
                       "--steps", "25", "--samples", "2", "--quiet")
    assert code == 0, err
    assert {"mean.npy", "std.npy", "reconstruction.png", "record.json", MARKER} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "record.json").read_text())
    assert record["nfe"] == 25 and record["fit"]["fits"]
    assert record["metrics"]["psnr_mean"] > record["metrics"]["psnr_classical"] + 2
    assert record["config"]["operator_params"] == {} and record["input"]["window"][1] > record["input"]["window"][0]
    again = tmp_path / "again"
    code, _, err = run(capsys, "reconstruct", "--config", out / "record.json", "--out", again, "--quiet")
    assert code == 0, err
    assert np.array_equal(np.load(out / "mean.npy"), np.load(again / "mean.npy"))
    assert np.array_equal(np.load(out / "std.npy"), np.load(again / "std.npy"))
    # --force replaces invsolve's own folder
    code, _, err = run(capsys, "reconstruct", phantom, "--simulate", "ct-sparse8", "--out", out, "--force", *FAST)
    assert code == 0, err


def test_nifti_volume_keeps_affine_and_the_fit_check_flags_a_real_brain(tmp_path, capsys, single_thread):
    out = tmp_path / "brain"
    code, _, err = run(capsys, "reconstruct", ANATOMICAL, "--simulate", "ct-sparse8", "--resize", "--out", out,
                       "--steps", "2", "--samples", "1", "--quiet")
    assert code == 0, err
    assert "warning: the data looks out of the distribution" in err and "invsolve train" in err
    mean = nib.load(out / "mean.nii.gz")
    source = nib.load(ANATOMICAL)
    assert mean.shape == source.shape[:3] and np.allclose(mean.affine, source.affine)
    record = json.loads((out / "record.json").read_text())
    assert not record["fit"]["fits"] and record["fit"]["gain_db"] < -0.75


def test_dicom_slice_gives_nifti_with_its_geometry(tmp_path, capsys, single_thread):
    from pydicom.data import get_testdata_file

    out = tmp_path / "ct"
    code, _, err = run(capsys, "reconstruct", get_testdata_file("CT_small.dcm"), "--simulate", "ct-sparse8",
                       "--resize", "--out", out, "--window", "-1000", "1000", *FAST)
    assert code == 0, err
    mean = nib.load(out / "mean.nii.gz")
    assert mean.shape[:2] == (128, 128)
    assert abs(abs(mean.affine[0, 0]) - 0.661468) < 1e-3  # PixelSpacing of CT_small.dcm
    assert "out of the distribution" in err  # real anatomy under the phantom prior
    record = json.loads((out / "record.json").read_text())
    assert record["input"]["window"] == [-1000.0, 1000.0]


def test_png_and_measured_sinogram(tmp_path, capsys, single_thread):
    from skimage.io import imsave

    png = tmp_path / "phantom.png"
    imsave(png, (heldout_phantoms(1)[0, 0].numpy() * 255).astype(np.uint8), check_contrast=False)
    code, _, err = run(capsys, "reconstruct", png, "--simulate", "inpaint-random70", "--out", tmp_path / "a", *FAST)
    assert code == 0, err
    assert np.load(tmp_path / "a" / "mean.npy").shape == (64, 64)
    # measured data: a sinogram of the 8-view operator
    physics = ops.make("ct-sparse8", img_size=64)
    sino = physics.A(heldout_phantoms(1)) + 0.1 * torch.randn(physics.A(heldout_phantoms(1)).shape,
                                                              generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "sino.npy", sino[0].numpy())
    code, _, err = run(capsys, "reconstruct", tmp_path / "sino.npy", "--operator", "ct-sparse8", "--sigma-y", "0.1",
                       "--out", tmp_path / "b", *FAST)
    assert code == 0, err
    record = json.loads((tmp_path / "b" / "record.json").read_text())
    assert "metrics" not in record and record["fit"]["fits"]
    # a sinogram of the wrong geometry names the operator and the --set to fix it
    code, _, err = run(capsys, "reconstruct", tmp_path / "sino.npy", "--operator", "ct", "--set", "views=16",
                       "--sigma-y", "0.1", "--out", tmp_path / "c", *FAST)
    assert code == 2 and "--set" in err and "Traceback" not in err and not (tmp_path / "c").exists()


def test_python_parity(phantom, single_thread):
    post, record = iv.reconstruct(phantom, simulate="ct-sparse8", sigma_y=0.1, steps=3, samples=2)
    assert post.samples.shape == (2, 1, 1, 64, 64) and record["nfe"] == 3 and "outputs" not in record


def test_batch_size_gives_the_same_draws(phantom, single_thread):
    whole, _ = iv.reconstruct(phantom, simulate="ct-sparse8", sigma_y=0.1, steps=3, samples=3)
    chunked, record = iv.reconstruct(phantom, simulate="ct-sparse8", sigma_y=0.1, steps=3, samples=3, batch_size=2)
    torch.testing.assert_close(chunked.samples, whole.samples, rtol=0, atol=1e-6)
    assert record["config"]["batch_size"] == 2 and record["nfe"] == 3


BAD = {
    "missing input": (["reconstruct", "{tmp}/nothere.png", "--simulate", "ct"], "does not exist"),
    "corrupt nifti": (["reconstruct", "{tmp}/bad.nii", "--simulate", "ct"], "bad.nii"),
    "unknown sampler": (["reconstruct", "{phantom}", "--simulate", "ct", "--sampler", "dsp"], "unknown --sampler 'dsp'; available:"),
    "operator typo": (["reconstruct", "{phantom}", "--simulate", "ct", "--set", "view=8"], "its parameters: views"),
    "size mismatch": (["reconstruct", "{tmp}/big.npy", "--simulate", "ct"], "--resize"),
    "no sigma with --operator": (["reconstruct", "{phantom}", "--operator", "ct"], "--sigma-y"),
    "both modes": (["reconstruct", "{phantom}", "--operator", "ct", "--simulate", "ct"], "not allowed"),
    "nan input": (["reconstruct", "{tmp}/nan.npy", "--simulate", "ct"], "NaN"),
    "negative steps": (["reconstruct", "{phantom}", "--simulate", "ct", "--steps", "-1"], "--steps"),
    "zero batch size": (["reconstruct", "{phantom}", "--simulate", "ct", "--batch-size", "0"], "--batch-size"),
    "text batch size in a run file": (["reconstruct", "--config", "{tmp}/batch.json"],
                                      "--batch-size must be an integer >= 1, got 'four'"),
    "unknown config field": (["reconstruct", "--config", "{tmp}/run.json"], "unknown field 'sampeler'; fields: sampler"),
    "out is a file": (["reconstruct", "{phantom}", "--simulate", "ct", "--out", "{tmp}/file.txt", "--force"], "is a file"),
    "force over user folder": (["reconstruct", "{phantom}", "--simulate", "ct", "--out", "{tmp}/mine", "--force"],
                               "did not write"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_are_one_line_exit_2_and_lose_nothing(case, tmp_path, phantom, capsys, single_thread):
    (tmp_path / "bad.nii").write_bytes(b"not a nifti file")
    np.save(tmp_path / "big.npy", np.random.default_rng(0).random((80, 80)))
    np.save(tmp_path / "nan.npy", np.full((64, 64), np.nan))
    (tmp_path / "run.json").write_text(json.dumps({"input": str(phantom), "simulate": "ct", "sampeler": "dps"}))
    (tmp_path / "batch.json").write_text(json.dumps({"input": str(phantom), "simulate": "ct", "batch_size": "four"}))
    (tmp_path / "file.txt").write_text("keep me")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv, expected = BAD[case]
    argv = [a.format(tmp=tmp_path, phantom=phantom) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = run(capsys, *argv, *FAST)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("invsolve: error:") and expected in lines[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing lost
    assert (tmp_path / "file.txt").read_text() == "keep me" and (tmp_path / "mine" / "precious.txt").exists()


# ---- fastMRI files and PNG output ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fastmri_file(tmp_path_factory):
    from invsolve.fastmri.synth import synthesize

    made = synthesize(tmp_path_factory.mktemp("fastmri"), n_train=0, n_val=1, coils=2, size=64, slices=2, seed=0)
    return made.splits["val"][0]


def test_fastmri_file_reconstructs_scores_and_reproduces(tmp_path, fastmri_file, capsys, single_thread):
    out = tmp_path / "fm"
    code, _, err = run(capsys, "reconstruct", fastmri_file, "--set", "acceleration=4", "--out", out, *FAST)
    assert code == 0, err
    assert {"mean.nii.gz", "std.nii.gz", "reconstruction.png", "record.json"} <= {p.name for p in out.iterdir()}
    mean = nib.load(out / "mean.nii.gz")
    assert mean.shape == (64, 64) and np.array_equal(mean.affine, np.eye(4))
    record = json.loads((out / "record.json").read_text())
    config = record["config"]
    assert config["prior"] == "mri-brain64" and "mri-brain64" in record["prior_default"]
    assert config["slice"] == 1 and record["input"]["slices"] == 2 and record["sigma_y"] == 0.01
    assert record["mask"]["source"].startswith("fastMRI equispaced_fraction 4x") and record["physics"]["mri"] == "SenseMRI"
    assert record["metrics"]["target"] == "reconstruction_rss" and np.isfinite(record["metrics"]["psnr"])
    again = tmp_path / "again"
    code, _, err = run(capsys, "reconstruct", "--config", out / "record.json", "--out", again, "--quiet")
    assert code == 0, err
    for name in ("mean.nii.gz", "std.nii.gz"):
        assert np.array_equal(nib.load(out / name).get_fdata(), nib.load(again / name).get_fdata())
    # no mask given: the file's sampled columns (fully sampled here), slice 0
    code, _, err = run(capsys, "reconstruct", fastmri_file, "--slice", "0", "--out", tmp_path / "full", "--no-fit-check",
                       "--steps", "1", "--samples", "1", "--quiet")
    assert code == 0, err
    record = json.loads((tmp_path / "full" / "record.json").read_text())
    assert record["mask"]["acceleration"] == 1 and record["config"]["slice"] == 0


@pytest.mark.parametrize("argv, expected", [(["--slice", "99"], "--slice 99 is out of range"),
                                            (["--operator", "mri-4x-equispaced"], "drop --simulate/--operator"),
                                            (["--set", "accel=4"], "--set accel: fastMRI input takes acceleration")])
def test_fastmri_errors_are_one_line_exit_2(tmp_path, fastmri_file, capsys, argv, expected):
    code, _, err = run(capsys, "reconstruct", fastmri_file, *argv, "--out", tmp_path / "x", *FAST)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert "2 slices" in lines[0] or "--slice" not in argv
    assert not (tmp_path / "x").exists()


def test_png_input_writes_an_8bit_png_mean(tmp_path, capsys, single_thread):
    from skimage.io import imread, imsave

    png = tmp_path / "phantom.png"
    imsave(png, (heldout_phantoms(1)[0, 0].numpy() * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "p"
    code, _, err = run(capsys, "reconstruct", png, "--simulate", "inpaint-random70", "--out", out, "--no-fit-check", *FAST)
    assert code == 0, err
    image, mean = imread(out / "mean.png"), np.load(out / "mean.npy")
    assert image.dtype == np.uint8 and image.shape == (64, 64) and (out / "std.npy").exists()
    assert np.array_equal(image, np.clip(np.round(mean), 0, 255).astype(np.uint8))  # 8-bit input: its 0..255 range
