import pytest
import torch

import invsolve as iv
import operators as ops
from invsolve.samplers.flowdps import FlowDPS
from invsolve.samplers.toolkit import shifted_times

from helpers import tanh_problem, check_exactness, as_kind, linear_problems, measure, mixture, tiny_prior, assert_batched_equals_single


@pytest.mark.parametrize("sigma_y", [0.01, 0.1])
@pytest.mark.parametrize("name", ["inpainting", "gaussian"])
def test_flowdps_defaults_approach_exact_posterior(name, sigma_y):
    check_exactness("flowdps", name, sigma_y, nfe=28, label="FlowDPS")


@pytest.mark.parametrize("kind", ["flow-velocity", "ve-score"])
def test_flow_and_diffusion_priors_give_the_same_samples_as_the_mixture(kind):
    """The same mixture behind a rectified-flow (velocity) and a VE diffusion (score) adapter."""
    gm = mixture()
    problem = measure(gm, linear_problems()["gaussian"], 0.1)
    plain = iv.sample("flowdps", gm, problem, n_samples=64, generator=torch.Generator().manual_seed(0))
    other = iv.sample("flowdps", as_kind(gm, kind), problem, n_samples=64,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(other.samples, plain.samples, rtol=1e-2, atol=1e-2)  # float32 rounding only


def test_batched_draws_equal_single_draws_with_same_generators():
    assert_batched_equals_single("flowdps", tol=1e-5, steps=20)


def test_time_grid_is_sd3_shifted_schedule():
    # diffusers FlowMatchEulerDiscreteScheduler (SD3: shift 3 at construction, FlowDPS sets 4, 28 steps)
    u_min = 3 * 1e-3 / (1 + 2 * 1e-3)
    u = torch.linspace(1.0, u_min, 28, dtype=torch.float64)
    official = torch.cat([4 * u / (1 + 3 * u), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(shifted_times(28, 4.0, 1.0, 0.0), official)
    assert abs(official[-2].item() - 0.0118694) < 1e-6  # diffusers 0.30.1 gives timesteps[-1] / 1000 = 0.0119
    gm = mixture()  # sigma in [0.002, 80]: the grid starts at t = 80 / 81 and stays above sigma_min
    t = FlowDPS().times(gm)
    assert len(t) == 29 and abs(t[0].item() - 80 / 81) < 1e-12 and t[-1] == 0
    assert (t[:-1] > 0.002 / 1.002).all() and (t.diff() < 0).all()


def test_guidance_reduces_residual_for_nonlinear_physics():
    gm, truth, problem = tanh_problem()
    guided = iv.sample("flowdps", gm, problem, n_samples=64, generator=torch.Generator().manual_seed(1))
    free = iv.sample("flowdps", gm, problem, n_samples=64, generator=torch.Generator().manual_seed(1), step_size=0.0)
    res = lambda p: float((torch.tanh(p.samples[:, 0]) - torch.tanh(truth)).norm(dim=-1).mean())  # noqa: E731
    assert res(guided) < 0.5 * res(free)
    with pytest.raises(TypeError, match="loss='residual'"):
        iv.sample("flowdps", gm, problem, loss="adjoint", steps=2)


@pytest.mark.parametrize("loss", ["adjoint", "pinv"])
def test_official_losses_on_linear_problems(loss):
    check_exactness("flowdps", "inpainting", 0.01, ratio=None, n=200, loss=loss)


@pytest.mark.parametrize("shape,dims", [((1, 16, 16), 2), ((1, 4, 16, 16), 3)])
@pytest.mark.parametrize("operator", ["ct", "inpainting", "gaussian-blur"])
def test_flowdps_smoke_2d_and_3d(shape, dims, operator):
    if operator == "ct":
        physics = ops.make("ct", img_size=16, views=4)
    elif operator == "inpainting":
        physics = ops.make("inpainting", img_size=shape[1:])
    else:
        physics = ops.make("gaussian-blur", std=1.0, kernel_size=5, dims=dims)
    prior = tiny_prior(shape, dims)
    truth = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    problem = iv.Problem(physics, physics.A(truth), sigma_y=0.01, prior=prior)
    steps = []
    post = iv.sample("flowdps", prior, problem, n_samples=2, generator=torch.Generator().manual_seed(0), steps=4,
                     callback=steps.append)
    assert post.samples.shape == (2, 2, *shape)
    assert torch.isfinite(post.samples).all() and post.nfe == 4 and [s["step"] for s in steps] == [0, 1, 2, 3]


def test_presets_and_errors():
    assert {"sr12", "deblur", "ct-sparse8"} <= set(FlowDPS.PRESETS)
    assert iv.samplers.configure("flowdps", "deblur").loss == "adjoint"
    assert iv.samplers.configure("flowdps", "sr12").loss == "pinv"
    gm = mixture()
    problem = measure(gm, linear_problems()["gaussian"], 0.1)
    with pytest.raises(ValueError, match="loss must be"):
        iv.sample("flowdps", gm, problem, loss="l1", steps=2)
