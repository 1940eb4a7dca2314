"""Every bash and Python snippet of docs/reconstruct.md, and every ```bash block of docs/cli.md, runs as
written (in a fresh folder, offline)."""

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


CLI_DOC = DOC.with_name("cli.md")
CLI_BLOCKS = re.findall(r"```bash\n(.*?)```", CLI_DOC.read_text(), re.S)  # ```text blocks are long runs, not run


def test_cli_reference_covers_every_command():
    text = CLI_DOC.read_text()
    for command in ("demo", "reconstruct", "train", "evaluate", "info", "list", "bench fastmri", "bench report",
                    "fastmri synth"):
        assert f"`invsolve {command}" in text, command
    assert "--debug" in text and "| 2 |" in text and "| 130 |" in text
    assert len(CLI_BLOCKS) >= 8


def test_cli_reference_examples_run(tmp_path):
    """Every ```bash block of docs/cli.md, in order, in one fresh folder."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"), INVSOLVE_CACHE=str(tmp_path / "cache"))
    for i, code in enumerate(CLI_BLOCKS):
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, f"docs/cli.md snippet {i} failed:\n{code}\n{run.stderr[-3000:]}"
