"""Compare a sampler's output with the exact posterior of a Gaussian-mixture problem.

Figures (all on ``n`` samples, sliced-Wasserstein with 256 fixed random directions):

- ``ratio``: SW(sampler, exact) / SW(prior, exact), the tests' criterion (<= 0.25);
- ``floor``: SW(exact, second exact set) / SW(prior, exact), the noise floor of ``ratio``;
- ``mean_error``: ||mean(sampler) - exact posterior mean||, and ``prior_mean_error`` the same for the prior mean;
- ``coverage``: fraction of coordinates of exact posterior draws inside the sampler's mean +- 2 std.
"""

from __future__ import annotations

import torch

from operators.blackbox import black_box as as_black_box

from .metrics import sliced_wasserstein
from .problem import Problem
from .samplers import sample


def exactness_report(method: str, prior, problem, n: int = 1000, seed: int = 0, black_box: bool = False,
                     **overrides) -> dict:
    """The figures above for ``method`` on ``problem``; ``black_box``: the sampler sees the operator only as
    a function (``operators.blackbox.black_box``: no gradient, no adjoint), the exact posterior its matrix."""
    exact_post = prior.posterior(problem)
    exact = exact_post.sample(n, torch.Generator().manual_seed(seed + 1))
    exact2 = exact_post.sample(n, torch.Generator().manual_seed(seed + 2))
    prior_draws = prior.sample(n, torch.Generator().manual_seed(seed + 3))
    if black_box:
        problem = Problem(as_black_box(problem.physics), problem.y, sigma_y=problem.sigma_y)
    post = sample(method, prior, problem, n_samples=n, generator=torch.Generator().manual_seed(seed), **overrides)
    draws = post.samples[:, 0].to(torch.float64)

    def sw(a, b):
        return sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(seed + 4))

    base = sw(prior_draws, exact)
    exact_mean = exact_post.mean().reshape(-1)
    mean, std = draws.reshape(n, -1).mean(0), draws.reshape(n, -1).std(0)
    inside = ((exact.reshape(n, -1) - mean).abs() <= 2 * std).double().mean()
    return {"method": method, "nfe": post.nfe, "seconds": post.seconds,
            "ratio": sw(draws, exact) / base, "floor": sw(exact2, exact) / base,
            "mean_error": float((mean - exact_mean).norm()),
            "prior_mean_error": float((prior.mean().reshape(-1) - exact_mean).norm()),
            "coverage": float(inside)}
