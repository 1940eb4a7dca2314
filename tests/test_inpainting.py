import pytest
import torch

import operators as ops
from operators.testing import assert_operator


@pytest.mark.parametrize("name", ["inpaint-box", "inpaint-random70"])
@pytest.mark.parametrize("dims", [2, 3])
def test_inpainting_presets_contract(name, dims):
    size = (16, 12) if dims == 2 else (6, 16, 12)
    physics = ops.make(name, img_size=size, dims=dims, channels=2)
    assert_operator(physics, torch.zeros(2, 2, *size, dtype=torch.float64))


def test_box_and_random_fractions():
    box = ops.make("inpaint-box", img_size=256)
    assert int((box.mask == 0).sum()) == 128 * 128
    assert box.mask[0, 0, 128, 128] == 0 and box.mask[0, 0, 10, 10] == 1
    rand = ops.make("inpaint-random70", img_size=256, seed=3)
    assert abs(float((rand.mask == 0).float().mean()) - 0.7) < 0.01
    assert torch.equal(rand.mask, ops.make("inpaint-random70", img_size=256, seed=3).mask)
    with pytest.raises(TypeError, match="fixes"):
        ops.make("inpaint-box", kind="random")
