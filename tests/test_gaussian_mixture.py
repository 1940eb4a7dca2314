import math

import pytest
import torch

import invsolve as iv
from invsolve.metrics import sliced_wasserstein

from helpers import linear_problems, measure, mixture


def log_density(gm, x, sigma):
    """log p_sigma(x) of the mixture, written directly with MultivariateNormal."""
    comps = [torch.distributions.MultivariateNormal(m, c + sigma ** 2 * torch.eye(gm.dim, dtype=torch.float64))
             for m, c in zip(gm.means, gm.covs)]
    logs = torch.stack([w.log() + comp.log_prob(x) for w, comp in zip(gm.weights, comps)])
    return torch.logsumexp(logs, 0)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_denoiser_is_tweedie_of_the_density(sigma):
    gm = mixture()
    x = gm.sample(5, torch.Generator().manual_seed(0)) + sigma * torch.randn(5, 16, dtype=torch.float64)
    x.requires_grad_(True)
    (score,) = torch.autograd.grad(log_density(gm, x, sigma).sum(), x)
    torch.testing.assert_close(gm(x, sigma), x + sigma ** 2 * score, rtol=1e-8, atol=1e-8)


def test_posterior_of_one_gaussian_matches_information_form():
    d = 6
    g = torch.Generator().manual_seed(3)
    root = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = root @ root.T + 0.1 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    gm = iv.GaussianMixture(mean[None], cov[None])
    physics = linear_problems(d)["gaussian"]
    problem = measure(gm, physics, 0.2)
    post = gm.posterior(problem)
    M = physics.A(torch.eye(d, dtype=torch.float64)).T
    precision = torch.linalg.inv(cov) + M.T @ M / 0.04
    expected_cov = torch.linalg.inv(precision)
    expected_mean = expected_cov @ (torch.linalg.solve(cov, mean) + M.T @ problem.y[0] / 0.04)
    torch.testing.assert_close(post.covs[0], expected_cov, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(post.means[0], expected_mean, rtol=1e-8, atol=1e-10)


def test_posterior_weights_match_bayes_rule_by_importance_sampling():
    gm = mixture(d=4, k=3, seed=2)
    physics = linear_problems(4)["gaussian"]
    problem = measure(gm, physics, 0.5)
    post = gm.posterior(problem)
    x = gm.sample(200_000, torch.Generator().manual_seed(0))
    log_lik = -0.5 * ((problem.y - physics.A(x)) ** 2).sum(1) / 0.25
    w = torch.softmax(log_lik, 0)
    est_mean = (w[:, None] * x).sum(0)
    assert float((est_mean - post.mean()).norm()) < 0.05 * (1 + float(post.mean().norm()))


def test_sampling_moments():
    gm = mixture(d=5, k=2)
    x = gm.sample(100_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), gm.mean(), atol=0.03, rtol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="weights"):
        iv.GaussianMixture(torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3), torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="means must be"):
        iv.GaussianMixture(torch.zeros(3), torch.eye(3))


def test_sliced_wasserstein_basics():
    a = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(a, a) == 0
    shifted = sliced_wasserstein(a, a + 1.0, generator=torch.Generator().manual_seed(0))
    assert math.isclose(shifted, math.sqrt(8 / 8), rel_tol=0.2)  # E[(u.1)^2] = 1 for unit u in 8 dims -> 1
