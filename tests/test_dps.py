import pytest
import torch

import invsolve as iv
import operators as ops

from helpers import tanh_problem, check_exactness, linear_problems, measure, mixture, tiny_prior, assert_batched_equals_single


@pytest.mark.parametrize("sigma_y", [0.01, 0.1])
@pytest.mark.parametrize("name", ["inpainting", "gaussian"])
def test_dps_defaults_approach_exact_posterior(name, sigma_y):
    check_exactness("dps", name, sigma_y, label="DPS")


def test_batched_draws_equal_single_draws_with_same_generators():
    assert_batched_equals_single("dps", tol=1e-5, steps=50)


@pytest.mark.parametrize("shape,dims", [((1, 16, 16), 2), ((1, 4, 16, 16), 3)])
def test_dps_smoke_2d_and_3d_ct(shape, dims):
    prior = tiny_prior(shape, dims)
    physics = ops.make("ct", img_size=16, views=4)
    truth = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    problem = iv.Problem(physics, physics.A(truth), sigma_y=0.01, prior=prior)
    post = iv.sample("dps", prior, problem, n_samples=3, generator=torch.Generator().manual_seed(0), steps=5)
    assert post.samples.shape == (3, 2, *shape)
    assert post.mean.shape == truth.shape and post.std.shape == truth.shape
    assert torch.isfinite(post.samples).all() and post.nfe == 5 and post.seconds > 0


def test_dps_guidance_fits_nonlinear_physics():
    gm, truth, problem = tanh_problem()
    guided = iv.sample("dps", gm, problem, n_samples=64, generator=torch.Generator().manual_seed(1), steps=200)
    free = iv.sample("dps", gm, problem, n_samples=64, generator=torch.Generator().manual_seed(1), steps=200, zeta=0.0)
    res = lambda p: float((torch.tanh(p.samples[:, 0]) - torch.tanh(truth)).norm(dim=-1).mean())  # noqa: E731
    assert res(guided) < 0.5 * res(free)


def test_unknown_sampler_and_hyperparameter_errors():
    gm = mixture()
    problem = measure(gm, linear_problems()["gaussian"], 0.1)
    with pytest.raises(KeyError, match="unknown sampler"):
        iv.sample("nope", gm, problem)
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        iv.sample("dps", gm, problem, zeta_prime=1.0)
    with pytest.raises(KeyError, match="no preset"):
        iv.sample("dps", gm, problem, preset="mri")
    assert "dps" in iv.samplers.names()


def test_nan_measurement_is_rejected():
    physics = ops.make("ct", img_size=16, views=2)
    y = torch.full((1, 1, 2, physics.n_detectors), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        iv.Problem(physics, y, sigma_y=0.1)
