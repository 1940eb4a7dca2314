"""Latent and flow solvers (issue 17): ReSample, D-Flow, FLAIR, and latent FlowDPS, checked against
exact posteriors through a linear decoder (``invsolve.priors.latent_mixture``).

The bounds are the measured figures at these settings plus a margin (full table:
``benchmarks/exactness/latent.md``); none of the three new solvers is a consistent posterior sampler
(each fits ``y`` by optimisation; ``sigma_y`` enters none of them), so a bound is what
the faithful method achieves, not the suite's 0.25. Measured (seed 0, sigma_y 0.1, ``latent_mixture()``: 12 latents -> 16 pixels;
inpainting / gaussian; posterior-mean error as a fraction of the prior mean's in brackets):
FLAIR 0.020 / 0.022 (0.011 / 0.011; 500 draws), FlowDPS 0.21 / 0.38 (0.083 / 0.37; 500), ReSample
at 100 steps 0.022 / 0.052 (0.014 / 0.059; 200), D-Flow with 2 L-BFGS calls 0.080 / 0.053
(0.012 / 0.032; 40 draws, floor 0.025). Low ratios hide overconfidence: D-Flow's coverage of the
exact posterior on inpainting is 0.08 and ReSample's 0.46 (exact: about 0.95).
"""

from __future__ import annotations

import pytest
import torch

import invsolve as iv
from invsolve.priors.latent_mixture import LinearDecoderMixture
from invsolve.samplers.flair import calibrate
from operators.errors import ConfigError

from helpers import assert_batched_equals_single, check_exactness, latent_mixture, linear_problems, measure, mixture

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- the exact latent test prior ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inpainting", "gaussian"])
def test_latent_posterior_pushed_through_the_decoder_is_the_image_mixtures_posterior(name):
    lm = latent_mixture()
    problem = measure(lm, linear_problems()[name], 0.1)
    pushed = lm.posterior(problem)
    direct = lm.image_mixture().posterior(problem)  # Kalman form on the singular image mixture
    for a, b in ((pushed.weights, direct.weights), (pushed.means, direct.means), (pushed.covs, direct.covs)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_decoder_encoder_sample_and_mean():
    lm = latent_mixture()
    z = lm.latent_prior.sample(5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(lm.encode(lm.decode(z)), z, rtol=1e-9, atol=1e-9)
    draws = lm.sample(20000, torch.Generator().manual_seed(1))
    assert draws.shape == (20000, 16)
    assert (draws.mean(0) - lm.mean()).norm() < 0.05 * lm.mean().norm()
    with pytest.raises(ConfigError, match="full column rank"):
        LinearDecoderMixture(mixture(d=8), torch.zeros(16, 8))
    with pytest.raises(ConfigError, match=r"weight must be \(d, 8\)"):
        LinearDecoderMixture(mixture(d=8), torch.randn(16, 7, dtype=torch.float64))


# ---- exactness through the decoder ------------------------------------------------------------------

LATENT_BOUNDS = {
    # sampler: (overrides, draws, {problem: (ratio, mean error / prior's)}); measured figures in the docstring
    "flair": ({}, 500, {"inpainting": (0.04, 0.03), "gaussian": (0.04, 0.03)}),
    "flowdps": ({}, 500, {"inpainting": (0.3, 0.15), "gaussian": (0.45, 0.45)}),
    "resample": (dict(steps=100), 200, {"inpainting": (0.05, 0.04), "gaussian": (0.08, 0.1)}),
    "dflow": (dict(iterations=2), 40, {"inpainting": (0.13, 0.05), "gaussian": (0.1, 0.08)}),
}


@pytest.mark.parametrize("name", ["inpainting", "gaussian"])
@pytest.mark.parametrize("method", list(LATENT_BOUNDS))
def test_latent_solver_exactness_through_a_linear_decoder(method, name):
    overrides, n, bounds = LATENT_BOUNDS[method]
    ratio, mean = bounds[name]
    check_exactness(method, name, 0.1, ratio=ratio, mean=mean, n=n, prior=latent_mixture(),
                    label=f"{method} (latent)", **overrides)


# ---- batching, determinism, fallbacks, errors ---------------------------------------------------------

SMALL = {"resample": dict(steps=20, interval=5, travel=2, pixel_iters=50, latent_iters=50),
         "dflow": dict(iterations=1, lbfgs_iters=5), "flair": dict(steps=20)}


@pytest.mark.parametrize("method", list(SMALL))
def test_batch_equals_separate_runs(method):
    assert_batched_equals_single(method, tol=1e-5, **SMALL[method])


@pytest.mark.parametrize("method", list(SMALL))
def test_same_seed_same_samples_on_the_latent_prior(method):
    lm = latent_mixture()
    problem = measure(lm, linear_problems()["gaussian"], 0.1)
    a, b, c = (iv.sample(method, lm, problem, n_samples=2, generator=torch.Generator().manual_seed(s), **SMALL[method])
               for s in (1, 1, 2))
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert a.samples.shape == (2, 1, 16) and torch.isfinite(a.samples).all()


@pytest.mark.parametrize("method", list(SMALL))
def test_a_latent_prior_without_an_encoder_still_runs(method):
    lm = latent_mixture()
    no_encoder = iv.priors.LatentPrior(lm.latent_prior, lm.linear_decoder)
    problem = measure(lm, linear_problems()["inpainting"], 0.1)
    post = iv.sample(method, no_encoder, problem, n_samples=2, generator=torch.Generator().manual_seed(0),
                     **SMALL[method])
    assert torch.isfinite(post.samples).all()
    # it still fits the data better than the prior mean does
    fit = (problem.physics.A(post.samples.mean(0)) - problem.y).norm()
    assert fit < (problem.physics.A(lm.mean()[None]) - problem.y).norm()


def test_flair_calibration_weights_follow_the_velocity_error():
    gm = mixture()
    table = calibrate(gm, gm.sample(400, torch.Generator().manual_seed(0)), n_times=20,
                      generator=torch.Generator().manual_seed(1))
    assert len(table) == 20 and abs(sum(table) / 20 - 1) < 1e-9 and min(table) > 0
    flair = iv.samplers.configure("flair", reg_table=table)
    assert flair.weight(1.0) == pytest.approx(table[0]) and flair.weight(0.0) == pytest.approx(table[-1])
    assert flair.weight(1 - 0.5 / 19) == pytest.approx(0.5 * (table[0] + table[1]))


@pytest.mark.parametrize("method, overrides, match", [
    ("dflow", dict(init="least-squares"), "init"),
    ("dflow", dict(alpha=1.5), "alpha"),
    ("flair", dict(t_min=1.0), "t_min"),
    ("flair", dict(reg_table=(1.0,)), "reg_table"),
    ("resample", dict(interval=0), "interval"),
])
def test_bad_settings_are_config_errors(method, overrides, match):
    with pytest.raises(ConfigError, match=match):
        iv.samplers.configure(method, **overrides)


def test_gradient_free_physics_is_refused_with_the_derivative_free_alternative():
    from operators.blackbox import black_box
    from operators.errors import PhysicsError

    lm = latent_mixture()
    problem = measure(lm, linear_problems()["gaussian"], 0.1)
    boxed = iv.Problem(black_box(problem.physics), problem.y, sigma_y=0.1)
    for method in SMALL:
        with pytest.raises(PhysicsError, match="enkg"):
            iv.sample(method, lm, boxed, **SMALL[method])
