import json

import pytest

from invsolve.cli import main
from invsolve.priors.training import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    config = TrainConfig(name="tiny-demo", size=16, channels=(8, 16), attention=(), batch=4, warmup=2, steps=2)
    return train(config, tmp_path_factory.mktemp("tiny-demo"), progress=False)


def test_demo_writes_outputs_and_never_overwrites(tiny_prior, tmp_path, capsys):
    out = tmp_path / "demo-out"
    args = ["demo", "--prior", str(tiny_prior), "--out", str(out), "--phantoms", "2", "--samples", "2",
            "--steps", "3", "--quiet"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| DPS mean |" in table and "| FBP |" in table and "| TV |" in table
    for name in ("demo.png", "metrics.json", "table.md", "truth.nii.gz", "fbp.nii.gz", "tv.nii.gz",
                 "dps_mean.nii.gz", "dps_std.nii.gz", "dps_samples.nii.gz", "sinogram.nii.gz"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {s["method"] for s in metrics["summary"]} == {"FBP", "TV", "DPS mean"}
    assert metrics["summary"][2]["nfe"] == 3

    before = (out / "metrics.json").read_text()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    assert main(args + ["--force", "--seed", "1"]) == 0
    assert (out / "metrics.json").read_text() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-out")]


def test_demo_unknown_prior_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--prior", "nope", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "no prior named" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_full_demo_dps_beats_fbp_by_5db(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    summary = {s["method"]: s for s in json.loads((out / "metrics.json").read_text())["summary"]}
    assert summary["DPS mean"]["psnr_heldout"] >= summary["FBP"]["psnr_heldout"] + 5.0
