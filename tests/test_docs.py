"""Every bash and Python snippet of docs/reconstruct.md runs as written (in a fresh folder, offline)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parents[1] / "docs" / "reconstruct.md"
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", DOC.read_text(), re.S)


def test_the_guide_has_snippets():
    assert sum(kind == "bash" for kind, _ in BLOCKS) >= 4 and any(kind == "python" for kind, _ in BLOCKS)


def test_reconstruct_guide_runs(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"))
    for i, (kind, code) in enumerate(BLOCKS):
        command = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"docs/reconstruct.md snippet {i} failed:\n{code}\n{run.stderr[-3000:]}"
        if "np.array_equal" in code:
            assert run.stdout.strip().endswith("True"), run.stdout
    assert (tmp_path / "ct-slice" / "mean.nii.gz").exists() and (tmp_path / "brain" / "record.json").exists()
