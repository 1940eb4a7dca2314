"""benchmarks/frontier/run.py (quality-per-NFE frontier): a tiny run writes its cache, tables and plots,
and a second run over the same cache computes nothing (resumption) and rewrites no cell.

Tiny settings: one cheap sampler (pigdm) at NFE 2 and 3, the exactness suite on 20 samples and the
inpainting task on 1 held-out phantom x 2 samples, the TV weight given (its grid search is the slow
part of the real benchmark and is not what is tested here).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "frontier" / "run.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("frontier_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_results_and_resumes(frontier, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    try:
        check_quick_run(frontier, tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(threads)  # main() sets 1 thread (--threads default)


def check_quick_run(frontier, tmp_path, monkeypatch):
    monkeypatch.setattr(frontier.phantom, "choose_tv_lambda", lambda task, size, seed: (0.03, {0.03: 0.0}))
    argv = ["--quick", "--samplers", "pigdm", "--tasks", "exactness", "inpainting", "--nfe", "2", "3",
            "--exact-samples", "20", "--out", str(tmp_path)]
    # 4 exactness problems x 2 budgets, 2 baselines + 2 budgets on inpainting
    assert frontier.main(argv) == 8 + 2 + 2
    cache = tmp_path / "cache" / "phantoms1-samples2-exact20-seed0"
    cells = sorted(p.name for p in cache.glob("*.json"))
    assert len(cells) == 12 and "inpainting__pigdm__nfe3.json" in cells
    cell = json.loads((cache / "inpainting__pigdm__nfe2.json").read_text())
    assert cell["nfe"] == 2 and 0 <= cell["calibration"] <= 1 and cell["seconds"] > 0 and cell["torch_threads"] == 1
    for name in ("results.md", "results.csv", "inpainting.png", "exactness-gaussian-0.1.png"):
        assert (tmp_path / "quick" / name).stat().st_size > 0
    report = (tmp_path / "quick" / "results.md").read_text()
    assert "## inpainting" in report and "noise floor" in report.lower() and "| not run" not in report
    assert not list(cache.glob("*.tmp"))
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.json")}
    assert frontier.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.json")} == before
