"""Black-box physics (issue 16): ``operators.blackbox.BlackBox`` and the two black-box operators,
Beer-Lambert transmission CT through astra and steady Darcy flow; gradient samplers refuse them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import invsolve as iv
import operators as ops
from operators.blackbox import BlackBox, black_box
from operators.darcy import solve_darcy
from operators.errors import ConfigError, DataError, PhysicsError
from invsolve.phantoms import heldout_phantoms

from helpers import linear_problems, measure, mixture


def test_numpy_black_box_per_sample_and_batched_agree_and_count():
    def square_sum(x):  # one sample (1, 4, 4) -> (3,)
        return np.array([x.sum(), (x ** 2).sum(), x.max()])

    per = BlackBox(square_sum)
    batched = BlackBox(lambda x: np.stack([square_sum(s) for s in x]), batched=True)
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a, b = per.A(x), batched.A(x)
    assert a.shape == (3, 3) and a.dtype == x.dtype and torch.equal(a, b)
    assert per.forward_evaluations == 3
    per.reset_count()
    assert per.forward_evaluations == 0


def test_black_box_refuses_gradients_with_a_clear_error():
    box = black_box(linear_problems()["gaussian"])
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    with pytest.raises(PhysicsError, match="black-box.*no gradient.*enkg"):
        box.A(x).sum().backward()
    with pytest.raises(PhysicsError, match="no vector-Jacobian"):
        box.A_vjp(x, torch.ones(2, 8, dtype=torch.float64))


def test_black_box_bad_inputs():
    with pytest.raises(ConfigError, match="callable"):
        BlackBox(3)
    with pytest.raises(ConfigError, match="backend"):
        BlackBox(lambda x: x, backend="jax")
    with pytest.raises(DataError, match="non-finite"):
        BlackBox(lambda x: x * np.nan).A(torch.ones(1, 2))
    with pytest.raises(DataError, match="returned 1 results for a batch of 2"):
        BlackBox(lambda x: x[:1], backend="torch", batched=True).A(torch.ones(2, 2))


@pytest.mark.parametrize("sampler", ["dps", "ddnm", "daps", "mcgdiff"])
def test_gradient_samplers_refuse_a_black_box_naming_enkg(sampler):
    gm = mixture()
    problem = measure(gm, linear_problems()["inpainting"], 0.1)
    boxed = iv.Problem(black_box(problem.physics), problem.y, sigma_y=0.1)
    with pytest.raises(PhysicsError, match=f"'{sampler}' needs gradients.*black box.*enkg"):
        iv.sample(sampler, gm, boxed, n_samples=2, generator=torch.Generator().manual_seed(0),
                  **iv.samplers.nfe_overrides(sampler, 3))


def test_transmission_ct_astra_black_box_matches_the_torch_twin():
    x = heldout_phantoms(2)
    astra_box, torch_twin = ops.make("ct-transmission"), ops.make("ct-transmission-torch")
    t_box, t_twin = astra_box.A(x), torch_twin.A(x)
    assert t_box.shape == t_twin.shape == (2, 1, 32, 91)
    assert float((t_box - t_twin).abs().max() / t_twin.abs().max()) < 1e-4
    assert 0 < float(t_twin.min()) and float(t_twin.max()) <= 1
    # Poisson counts: seeded, unbiased, with the stated standard deviation
    c1 = astra_box.counts(x, torch.Generator().manual_seed(3))
    c2 = astra_box.counts(x, torch.Generator().manual_seed(3))
    assert torch.equal(c1, c2)
    assert abs(float((c1 - t_box).mean())) < 3 * astra_box.noise_std(x) / c1.numel() ** 0.5
    assert float((c1 - t_box).std()) == pytest.approx(astra_box.noise_std(x), rel=0.1)
    with pytest.raises(ConfigError, match="I0"):
        ops.make("ct-transmission-torch", I0=0)


def test_transmission_ct_classical_reconstruction_inverts_the_log():
    twin = ops.make("ct-transmission-torch", views=90, I0=1e8)
    x = heldout_phantoms(1)
    recon = twin.A_dagger(twin.A(x))
    assert float((recon - x).norm() / x.norm()) < 0.2


def test_darcy_constant_field_matches_the_poisson_solution():
    # -a Laplace u = 1 on the unit square, u = 0 on the boundary: max u = 0.0736713... / a (series solution)
    # (measured: -7.7e-4 at n = 32, -1.9e-4 at 64: second order in the cell size)
    errors = []
    for n in (32, 64):
        u = solve_darcy(np.full((n, n), 3.0))
        errors.append(abs(u.max() * 3.0 / 0.0736713 - 1))
        assert errors[-1] < 1.0 / n ** 2
    assert 3.5 < errors[0] / errors[1] < 4.5
    # higher permeability, lower pressure; symmetric field, symmetric solution
    a = np.full((32, 32), 3.0)
    a[8:24, 8:24] = 12.0
    u = solve_darcy(a)
    assert u.max() < solve_darcy(np.full((32, 32), 3.0)).max()
    assert np.allclose(u, u.T) and np.allclose(u, u[::-1])


def test_darcy_operator_reads_sensors_and_refuses_bad_fields():
    darcy = ops.make("darcy", img_size=32, sensors=8)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    u = darcy.A(x)
    assert u.shape == (2, 1, 8, 8) and bool((u > 0).all())
    assert darcy.forward_evaluations == 2
    with pytest.raises(DataError, match="expects fields"):
        darcy.A(torch.rand(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="a_min"):
        ops.make("darcy", a_min=5, a_max=2)
    with pytest.raises(ConfigError, match="sensors"):
        ops.make("darcy", img_size=8, sensors=9)
