"""The operator tutorial of docs/operators.md, run for real: the plug-in package in
docs/tutorial/invsolve-radiograph is built and installed (into a temporary folder, no network),
found through the ``invsolve.operators`` entry point, checked with operators/testing.py, listed by
the CLI and used by a sampler. The docs show the package's files verbatim."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import invsolve as iv
import operators as ops
from operators.testing import assert_operator
from helpers import tiny_prior

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "docs" / "tutorial" / "invsolve-radiograph"
FILES = ("pyproject.toml", "invsolve_radiograph/__init__.py")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(PACKAGE)], check=True, timeout=300)
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    ops._REGISTRY.pop("radiograph", None)
    sys.modules.pop("invsolve_radiograph", None)


def test_docs_show_the_package_verbatim():
    docs = (ROOT / "docs" / "operators.md").read_text()
    for name in FILES:
        assert (PACKAGE / name).read_text().strip() in docs, f"docs/operators.md does not show {name} as it is"


def test_installed_plugin_is_registered_checked_and_sampled(installed):
    assert "radiograph" in ops.names()
    physics = ops.make("radiograph", img_size=16, detector_blur=0.25)
    for shape in [(2, 1, 16, 16), (2, 1, 3, 16, 16)]:
        assert_operator(physics, torch.zeros(shape, dtype=torch.float64))
    # a sampler reconstructs from it like from any built-in operator
    prior = tiny_prior((1, 16, 16), dims=2)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    problem = iv.Problem(physics, physics.A(x), sigma_y=0.05, prior=prior)
    posterior = iv.sample("dps", prior, problem, n_samples=2, generator=torch.Generator().manual_seed(1), steps=4)
    assert posterior.samples.shape == (2, 1, 1, 16, 16) and torch.isfinite(posterior.samples).all()


def test_cli_lists_the_plugin(installed):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "invsolve.cli", "list", "operators"], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert "radiograph" in out and "plug-in from invsolve_radiograph:make_radiograph" in out
