"""``toolkit.LinearPart``'s issue-14 solvers: the exact ``gram`` backend (eigendecomposition of
``M M^T``, cached per operator), CG tolerance and warm starts.

- ``gram`` agrees with the exact ``dense`` backend on a small CT operator (pinv with and without
  ``rho``, ``solve_measurement`` with and without noise, ``project``, ``likelihood_score``);
- the factorization is built once per physics object and reused bit-identically (a new operator,
  or one whose output changed, gets its own);
- ``gram_max=0`` (LinearPart's default) leaves the backend ``cg``, the pre-issue-14 solver, and a
  keyed solve without warm start is bit-identical to ``linalg.least_squares``;
- a warm-started solve of the same system stops sooner and never starts worse than 0;
- DiffPIR, DMPS and PiGDM on CT give bit-identical samples run to run and with a cold or warm cache.
"""

from __future__ import annotations

import pytest
import torch

import invsolve as iv
import operators as ops
from invsolve.samplers import toolkit
from invsolve.samplers.toolkit import LinearPart
from operators.linalg import least_squares

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


def ct_problem(size=16, views=4, seed=0):
    physics = ops.make("ct", img_size=size, views=views)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((2, 1, size, size), generator=g)
    y = physics.A(x) + 0.05 * torch.randn(physics.A(x).shape, generator=g)
    return iv.Problem(physics, y, sigma_y=0.05, scale=2.0, offset=-1.0), physics


def test_gram_matches_the_dense_backend():
    problem, _ = ct_problem()
    shape = (2, 1, 16, 16)
    gram = LinearPart(problem, shape, dense_max=0, gram_max=4096)
    dense = LinearPart(problem, shape)
    assert (gram.backend, dense.backend) == ("gram", "dense")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    r = problem.residual(x)
    for rho in (0.0, 0.3):
        torch.testing.assert_close(gram.pinv(r, rho), dense.pinv(r, rho), rtol=1e-4, atol=1e-4, check_dtype=False)
    for c, nv in ((2.0, 0.01), (0.5, 0.0)):
        torch.testing.assert_close(gram.solve_measurement(r, c, nv), dense.solve_measurement(r, c, nv),
                                   rtol=1e-4, atol=1e-4, check_dtype=False)
    torch.testing.assert_close(gram.likelihood_score(x, 1.5, 0.02), dense.likelihood_score(x, 1.5, 0.02),
                               rtol=1e-4, atol=1e-4, check_dtype=False)
    target = problem.tiled_y(2)
    torch.testing.assert_close(gram.project(x, target), dense.project(x, target), rtol=1e-4, atol=1e-4, check_dtype=False)


def test_gram_factorization_is_cached_per_operator():
    problem, physics = ct_problem()
    shape = (2, 1, 16, 16)
    first = LinearPart(problem, shape, dense_max=0, gram_max=4096)
    calls = []
    adjoint = physics.A_adjoint
    physics.A_adjoint = lambda y, **kw: (calls.append(y.shape[0]), adjoint(y, **kw))[1]
    second = LinearPart(problem, shape, dense_max=0, gram_max=4096)
    assert calls == [] and second.Q is first.Q  # reused: no batched adjoint call
    r = problem.residual(torch.zeros(shape))
    assert torch.equal(first.solve_measurement(r, 1.0, 0.01), second.solve_measurement(r, 1.0, 0.01))
    other, _ = ct_problem(views=5)  # another operator: its own factorization
    assert LinearPart(other, shape, dense_max=0, gram_max=4096).Q.shape != first.Q.shape
    forward = physics.A
    physics.A = lambda x, **kw: 2 * forward(x, **kw)  # the same object, changed: the probe check rebuilds
    rebuilt = LinearPart(problem, shape, dense_max=0, gram_max=4096)
    assert rebuilt.Q is not first.Q and calls == [problem.tiled_y(2)[0].numel()]


def test_gram_is_off_by_default_and_keyed_cold_solves_equal_least_squares():
    problem, _ = ct_problem(size=40, views=4)  # 1600 unknowns: above dense_max
    shape = (2, 1, 40, 40)
    lin = LinearPart(problem, shape, iters=20)
    assert lin.backend == "cg"
    r = problem.residual(torch.zeros(shape))
    ref = least_squares(problem.linear_forward, problem.adjoint, r, rho=0.1, iters=20, tol=toolkit.CG_TOL)
    assert torch.equal(lin.pinv(r, 0.1, key="data"), ref)
    assert torch.equal(lin.pinv(r, 0.1), ref)


def test_warm_start_stops_sooner_and_never_starts_worse_than_zero():
    problem, _ = ct_problem(size=40, views=4)
    shape = (2, 1, 40, 40)
    lin = LinearPart(problem, shape, iters=200, tol=1e-3, warm_start=True)
    r = problem.residual(torch.zeros(shape))
    lin.pinv(r, 0.1, key="data")
    cold = lin.cg_iterations
    again = lin.pinv(r * 1.01, 0.1, key="data")
    assert lin.cg_iterations - cold < cold / 2
    fresh = LinearPart(problem, shape, iters=200, tol=1e-3)
    torch.testing.assert_close(again, fresh.pinv(r * 1.01, 0.1), rtol=5e-3, atol=5e-3 * float(again.abs().max()))
    # a start pointing the wrong way (objective above 0's) is dropped: the same as the cold solve
    lin._warm["data"] = -10 * again
    flipped = lin.pinv(r, 0.1, key="data")
    assert torch.equal(flipped, LinearPart(problem, shape, iters=200, tol=1e-3).pinv(r, 0.1))


class Shrink(torch.nn.Module):
    """A smooth stand-in denoiser on [-1, 1] images: D(x, sigma) = tanh(x / (1 + sigma^2))."""

    def forward(self, x, sigma):
        return torch.tanh(x / (1 + float(sigma) ** 2))


def tiny_prior():
    from invsolve.priors import Prior, PriorCard
    return Prior(Shrink(), PriorCard(name="shrink", kind="exact", parameterization="exact", shape=(1, 16, 16),
                                     sigma_min=0.01, sigma_max=80.0))


@pytest.mark.parametrize("name", ["diffpir", "dmps", "pigdm"])
def test_samplers_bit_identical_run_to_run_and_with_a_cold_cache(name):
    prior = tiny_prior()

    def run():
        problem, _ = ct_problem()  # a new operator object: a cold gram cache
        problem = iv.Problem(problem.physics, problem.y, sigma_y=0.05, scale=2.0, offset=-1.0)
        outs = []
        for _ in range(2):  # the second run reuses the cached factorization
            post = iv.sample(name, prior, problem, generator=torch.Generator().manual_seed(0), steps=6,
                             gram_max=4096)
            outs.append(post.samples)
        return outs

    a, b = run()
    c, _ = run()
    assert torch.equal(a, b) and torch.equal(a, c)
