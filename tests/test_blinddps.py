"""BlindDPS (issue 16): the kernel data, the shipped kernel prior, joint sampling, determinism, error paths.

The quality figures (BlindDPS against DPS with the true kernel and with a Gaussian guess) are in
benchmarks/blind/results.md; here a short run checks that the estimated kernel moves towards the true one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import invsolve as iv
import operators as ops
from invsolve.kernels import HELDOUT_KERNEL_SEED, as_blur, heldout_motion_kernels, kernels_from_seeds, random_motion_kernels
from invsolve.phantoms import heldout_phantoms
from invsolve.samplers.blinddps import convolve
from operators.blur import KernelBlur
from operators.errors import ConfigError, PhysicsError

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py

SIGMA_Y = 0.02


def test_kernels_are_seeded_peak_one_and_held_out_apart():
    k = random_motion_kernels(6, 16, torch.Generator().manual_seed(0))
    again = random_motion_kernels(6, 16, torch.Generator().manual_seed(0))
    assert k.shape == (6, 1, 16, 16) and torch.equal(k, again)
    assert torch.allclose(k.amax(dim=(-2, -1)), torch.ones(6, 1)) and (k >= 0).all()
    held = heldout_motion_kernels(3, 16)
    assert torch.equal(held, kernels_from_seeds(range(HELDOUT_KERNEL_SEED, HELDOUT_KERNEL_SEED + 3), 16))
    assert not any(torch.equal(h, t) for h in held for t in k)
    blur = as_blur(held)
    assert torch.allclose(blur.sum(dim=(-2, -1)), torch.ones(3, 1), atol=1e-6)


def test_convolve_matches_the_blur_operator():
    x = heldout_phantoms(2)
    k = as_blur(heldout_motion_kernels(2, 16))
    for padding in ("reflect", "circular"):
        for i in range(2):
            physics = KernelBlur(filter=k[i:i + 1], padding=padding)
            assert torch.allclose(convolve(x[i:i + 1], k[i:i + 1], padding), physics.A(x[i:i + 1]), atol=1e-6)


def blind_problem(n: int = 1, guess: torch.Tensor | None = None):
    prior = iv.load_prior("ct-phantom64")
    x = heldout_phantoms(n)
    k = as_blur(heldout_motion_kernels(n, 16))
    y = convolve(x, k, "reflect")
    y = y + SIGMA_Y * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    guess = as_blur(torch.ones(1, 1, 16, 16)) if guess is None else guess
    physics = KernelBlur(filter=guess, padding="reflect")
    return prior, physics, iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior), x, k


def test_shipped_kernel_prior_loads_and_beats_tv_on_held_out_kernels():
    prior = iv.load_prior("kernel-motion16")
    assert tuple(prior.shape) == (1, 16, 16)
    evaluation = prior.card.metadata["evaluation"]
    assert "heldout_motion_kernels" in evaluation["data"]["source"] and evaluation["images"] >= 8
    assert evaluation["gain_db"] > 0, "the kernel prior denoises held-out kernels no better than TV"


def test_blinddps_is_deterministic_returns_kernels_and_leaves_the_physics_alone():
    prior, physics, problem, _, _ = blind_problem()
    before = physics.filter.clone()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    a = iv.sample("blinddps", prior, problem, n_samples=2, steps=4, schedule="karras", generator=gens())
    b = iv.sample("blinddps", prior, problem, n_samples=2, steps=4, schedule="karras", generator=gens())
    assert torch.equal(a.samples, b.samples) and torch.equal(a.extras["kernels"], b.extras["kernels"])
    assert a.samples.shape == (2, 1, 1, 64, 64) and a.extras["kernels"].shape == (2, 1, 1, 16, 16)
    assert torch.allclose(a.extras["kernels"].sum(dim=(-2, -1)), torch.ones(2, 1, 1), atol=1e-5)
    assert (a.extras["kernels"] >= 0).all() and a.nfe == 4
    assert torch.equal(physics.filter, before), "blinddps modified the problem's blur kernel"
    # draw j depends on generator j only (to rounding: a batched convolution sums in another order)
    solo = iv.sample("blinddps", prior, problem, n_samples=1, steps=4, schedule="karras",
                     generator=[torch.Generator().manual_seed(1)])
    assert torch.allclose(solo.samples[0], a.samples[1], atol=1e-5)
    assert torch.allclose(solo.extras["kernels"][0], a.extras["kernels"][1], atol=1e-5)


def test_blinddps_refuses_other_physics_and_bad_settings():
    prior = iv.load_prior("ct-phantom64")
    x = heldout_phantoms(1)
    ct = ops.make("ct", img_size=64, views=8)
    problem = iv.Problem(ct, ct.A(x), sigma_y=0.1, prior=prior)
    with pytest.raises(PhysicsError, match="blinddps.*Blur"):
        iv.sample("blinddps", prior, problem, steps=2)
    with pytest.raises(ConfigError, match="kernel_reg"):
        iv.samplers.configure("blinddps", kernel_reg_ord=3)
    with pytest.raises(ConfigError, match="kernel_reg"):
        iv.samplers.configure("blinddps", kernel_reg=-1.0)
    _, _, blur_problem, _, _ = blind_problem()
    with pytest.raises(ConfigError, match="kernel_prior .*1-channel 2D pixel prior"):
        iv.sample("blinddps", prior, blur_problem, steps=2, kernel_prior="ct-phantom64-latent")


def test_blinddps_kernel_moves_towards_the_truth():
    """The blind-deblur16 preset at 50 steps (not its 200: the spanned rule keeps it valid) brings the
    estimated kernel closer to the true one than a flat kernel is (relative L2), on a held-out phantom."""
    prior, _, problem, x, k = blind_problem()
    post = iv.sample("blinddps", prior, problem, n_samples=2, preset="blind-deblur16", steps=50,
                     generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    flat = as_blur(torch.ones_like(k))
    err = lambda est: float((est - k).norm() / k.norm())  # noqa: E731
    est = post.extras["kernels"].mean(0)
    assert err(est) < 0.8 * err(flat), (err(est), err(flat))


def test_reconstruct_writes_the_estimated_kernel(tmp_path):
    """`invsolve reconstruct --sampler blinddps` writes the posterior-mean kernel beside the image."""

    from invsolve.cli import main

    np.save(tmp_path / "x.npy", heldout_phantoms(1)[0, 0].numpy())
    out = tmp_path / "out"
    code = main(["reconstruct", str(tmp_path / "x.npy"), "--simulate", "deblur-motion61", "--sampler", "blinddps",
                 "--samples", "2", "--steps", "3", "--threads", "1", "--out", str(out), "--quiet"])
    assert code == 0
    kernel = np.load(out / "kernels_mean.npy")
    assert kernel.shape == (16, 16) and abs(kernel.sum() - 1) < 1e-5 and (kernel >= 0).all()
    assert "kernels_mean.npy" in json.loads((out / "record.json").read_text())["outputs"]
