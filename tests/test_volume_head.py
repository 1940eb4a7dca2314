"""benchmarks/volume/head.py (real head volume, issue 12): volume preparation, problems and the results writer."""

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

VOLUME = Path(__file__).parents[1] / "benchmarks" / "volume"


@pytest.fixture(scope="module")
def head():
    saved = sys.modules.pop("run", None)  # head.py imports benchmarks/volume/run.py as ``run``
    sys.path.insert(0, str(VOLUME))
    try:
        spec = importlib.util.spec_from_file_location("volume_head", VOLUME / "head.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(VOLUME))
        sys.modules.pop("run", None)
        if saved is not None:
            sys.modules["run"] = saved


@pytest.mark.parametrize("name", ["example4d", "anatomical"])
def test_head_volume_is_prior_sized_and_in_range(head, name):
    truth, info = head.head_volume(name, depth=6)
    assert truth.shape == (1, 1, 6, 64, 64) and truth.dtype == torch.float32
    assert float(truth.min()) >= 0.0 and float(truth.max()) <= 1.0 and float(truth.std()) > 0.1
    assert info["slices"] == 6 and len(info["spacing_mm_zyx"]) == 3


def test_problems_shapes(head):
    truth = head.tune_volume(depth=4)
    assert truth.shape == (1, 1, 4, 64, 64)
    physics, y, real = head.make_problem("mri4x", truth, "x.nii", noise_seed=1)
    assert y.shape == (1, 2, 4, 64, 64) and real.A_adjoint(y).shape == truth.shape
    mask = physics.mask[0, 0]
    assert mask.shape == (1, 64, 64)  # one column mask, broadcast over every slice
    assert abs(float(mask[0].mean()) - 0.25) < 0.05  # 4x
    physics, y, _ = head.make_problem("zsr2", truth, "x.nii", noise_seed=1)
    assert y.shape == (1, 1, 2, 64, 64)
    for estimate in head.baselines("zsr2", physics, y, 4).values():
        assert estimate.shape == truth.shape


def test_results_sections_keep_the_rest(head, tmp_path, monkeypatch):
    run = sys.modules["run"]
    monkeypatch.setattr(run, "HERE", tmp_path)
    (tmp_path / "results.md").write_text("# top\n\n| a |\n")
    (tmp_path / "results.csv").write_text("method,nfe\nfbp,0\n")  # the legacy (CT) layout: no section column
    row = {"method": "m", "nfe": 1, "seconds": 2.0, "psnr_axial": 30.0, "config": {}}
    run.write([row], None, "results", "first", section="head-a", title="A")
    run.write([{**row, "method": "n"}], None, "results", "second", section="head-b", title="B")
    run.write([{**row, "psnr_axial": 31.0}], None, "results", "again", section="head-a", title="A")
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# top\n\n| a |\n") and text.count("## A") == 1 and "again" in text and "first" not in text
    assert text.index("## A") < text.index("## B") and "31.000" in text
    run.write_markdown("results", "# new top")
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# new top\n") and "## A" in text and "## B" in text
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["section"], r["method"]) for r in rows] == [("ct-phantom", "fbp"), ("head-b", "n"), ("head-a", "m")]


def test_tpdm_aux_axis_accepts_a_name():
    from invsolve.samplers.base import configure

    assert configure("tpdm", None, aux_axis="axial").aux_axis == "axial"  # str | int: was refused as "not an integer"
    assert configure("tpdm", None, aux_axis=1).aux_axis == 1
