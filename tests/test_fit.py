"""The prior-fit check flags real anatomy under the phantom prior and passes held-out phantoms
(the validation table of docs/reconstruct.md; benchmarks/fit/validate.py measures all of it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import invsolve as iv
import operators as ops
from invsolve.errors import DataError
from invsolve.fit import WARN_DB, prior_fit

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "fit"))
from validate import image_sets  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    return iv.load_prior("ct-phantom64"), image_sets()


def test_clean_images(setup):
    prior, sets = setup
    verdicts = {name: prior_fit(prior, x) for name, x in sets.items()}
    for name, result in verdicts.items():
        expected = "phantoms" in name
        assert result["fits"] == expected, (name, result["gain_db"])
        assert (result["gain_db"] >= WARN_DB) == expected
    assert "invsolve train" in verdicts["real CT slice (CT_small.dcm)"]["message"]


def test_fbp_of_8_views(setup):
    prior, sets = setup
    physics = ops.make("ct", img_size=64, views=8)
    for name in ("4 held-out phantoms", "real CT slice (CT_small.dcm)", "real brain slice (anatomical.nii, middle)"):
        x = sets[name]
        clean = physics.A(x)
        y = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
        assert prior_fit(prior, physics.fbp(y).clamp(0, 1))["fits"] == ("phantoms" in name), name


def test_bad_images_are_refused(setup):
    prior, _ = setup
    with pytest.raises(DataError, match="shape"):
        prior_fit(prior, torch.zeros(1, 1, 32, 32))
    with pytest.raises(DataError, match="NaN"):
        prior_fit(prior, torch.full((1, 1, 64, 64), float("nan")))
