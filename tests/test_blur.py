import pytest
import torch

import operators as ops
from operators.testing import assert_operator


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 64, 48)), (3, (2, 1, 14, 28, 26))])
def test_gaussian_blur_contract(dims, shape):
    physics = ops.make("deblur-gauss61", dims=dims)
    assert_operator(physics, torch.zeros(shape, dtype=torch.float64))


def test_blur_preserves_constants_and_kernel_definition():
    physics = ops.make("deblur-gauss61")
    assert tuple(physics.filter.shape[-2:]) == (61, 61)
    torch.testing.assert_close(float(physics.filter.sum()), 1.0, rtol=1e-6, atol=0)
    ones = torch.ones(1, 1, 32, 32)
    torch.testing.assert_close(physics.A(ones), ones, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        ops.make("gaussian-blur", kernel_size=10)
