"""fastMRI mask functions reproduced column for column (reference columns recorded from fastmri==0.3.0)."""

import json
from pathlib import Path

import pytest
import torch

from operators.masks import create_mask_for_mask_type, fastmri_seed

CASES = json.loads((Path(__file__).parent / "data" / "fastmri_masks.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['kind']}-{c['shape'][2]}-{c['accelerations']}-{c['filename']}")
def test_masks_equal_fastmri(case):
    mask_func = create_mask_for_mask_type(case["kind"], case["center_fractions"], case["accelerations"], seed=case["init_seed"])
    seed = None if case["filename"] is None else fastmri_seed(case["filename"])
    mask, num_low = mask_func(case["shape"], seed=seed)
    assert mask.shape == (1, 1, case["shape"][2], 1)
    assert torch.nonzero(mask.reshape(-1)).reshape(-1).tolist() == case["columns"]
    assert num_low == case["num_low"]
    mask, num_low = mask_func(case["shape"])
    assert torch.nonzero(mask.reshape(-1)).reshape(-1).tolist() == case["columns_next"]


def test_per_file_seed_gives_the_same_mask_for_every_slice():
    mask_func = create_mask_for_mask_type("random", [0.08], [4])
    seed = fastmri_seed("file_brain_AXT2_200_2000019.h5")
    first, _ = mask_func((1, 640, 368, 2), seed=seed)
    mask_func((1, 640, 368, 2))  # state moves on between slices
    again, _ = mask_func((1, 640, 368, 2), seed=seed)
    assert torch.equal(first, again)


@pytest.mark.parametrize("acc,cf", [(4, 0.08), (8, 0.04)])
def test_equispaced_fraction_samples_one_in_r_columns(acc, cf):
    for seed in range(5):
        mask, _ = create_mask_for_mask_type("equispaced_fraction", [cf], [acc], seed=seed)((1, 640, 368, 2))
        assert abs(int(mask.sum()) - 368 / acc) <= 2


def test_unknown_mask_type():
    with pytest.raises(ValueError, match="unknown mask type"):
        create_mask_for_mask_type("gaussian", [0.08], [4])


@pytest.mark.parametrize("name,coils", [("mri-4x-equispaced", None), ("mri-8x-random", None), ("mri", "maps")])
def test_mri_operators_contract(name, coils):
    import operators as ops
    from operators.testing import assert_operator

    params = {"img_size": (16, 20)}
    if coils:
        g = torch.Generator().manual_seed(0)
        params["coils"] = torch.complex(torch.randn(3, 16, 20, generator=g), torch.randn(3, 16, 20, generator=g))
    physics = ops.make(name, **params)
    assert_operator(physics, torch.zeros(2, 2, 16, 20, dtype=torch.float64))
    mask = physics.mask.reshape(-1, 16, 20)[0]
    assert torch.equal(mask, mask[:1].expand(16, 20))  # whole columns (phase-encoding lines)
