"""One analytic Gaussian prior written in every native parameterization gives the same D(x, sigma)."""

import math

import pytest
import torch

from invsolve.priors.adapters import DDPMSchedule, make_denoiser

MU, S = 0.3, 0.7


def exact_denoiser(x, sigma):
    return MU + S ** 2 / (S ** 2 + sigma ** 2) * (x - MU)


def col(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1)))


SCHEDULE = DDPMSchedule()


def sigma_of_t(t):
    """Inverse of DDPMSchedule.t: log-linear interpolation of the discrete sigmas."""
    lo = t.floor().long().clamp(0, len(SCHEDULE.sigmas) - 2)
    w = (t.double() - lo)
    return torch.exp(SCHEDULE.log_sigmas[lo] * (1 - w) + SCHEDULE.log_sigmas[lo + 1] * w).to(t.dtype)


def vp_parts(x_vp, t):
    sigma = col(sigma_of_t(t), x_vp)
    alpha = 1 / torch.sqrt(1 + sigma ** 2)
    x = x_vp / alpha
    x0 = exact_denoiser(x, sigma)
    eps = (x - x0) / sigma
    return sigma, alpha, x0, eps


NETWORKS = {
    "vp-eps": lambda x_vp, t: vp_parts(x_vp, t)[3],
    "vp-x0": lambda x_vp, t: vp_parts(x_vp, t)[2],
    "vp-v": lambda x_vp, t: (lambda s, a, x0, e: a * e - s * a * x0)(*vp_parts(x_vp, t)),
    "ve-score": lambda x, sigma: (exact_denoiser(x, col(sigma, x)) - x) / col(sigma, x) ** 2,
    "flow-velocity": lambda x_t, t: (lambda s: (lambda x: (x - exact_denoiser(x, s)) / s - exact_denoiser(x, s))(x_t * (1 + s)))(col(t / (1 - t), x_t)),
}


def edm_net(x_in, c_noise):
    sigma = col(torch.exp(4 * c_noise), x_in)
    sd = 0.5
    x = x_in * torch.sqrt(sigma ** 2 + sd ** 2)
    c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
    c_out = sigma * sd / torch.sqrt(sigma ** 2 + sd ** 2)
    return (exact_denoiser(x, sigma) - c_skip * x) / c_out


NETWORKS["edm"] = edm_net


@pytest.mark.parametrize("parameterization", sorted(NETWORKS))
@pytest.mark.parametrize("sigma", [0.02, 0.3, 1.0, 7.0, 60.0])
def test_adapter_gives_exact_denoiser(parameterization, sigma):
    denoiser = make_denoiser(parameterization, NETWORKS[parameterization])
    x = torch.randn(3, 1, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(S ** 2 + sigma ** 2) + MU
    torch.testing.assert_close(denoiser(x, sigma), exact_denoiser(x, sigma), rtol=1e-9, atol=1e-9)


def test_per_sample_sigma_and_unknown_parameterization():
    denoiser = make_denoiser("ve-score", NETWORKS["ve-score"])
    x = torch.randn(3, 2, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(denoiser(x, sigma), exact_denoiser(x, sigma[:, None]))
    with pytest.raises(ValueError, match="unknown parameterization"):
        make_denoiser("eps", NETWORKS["ve-score"])


def test_deepinv_denoiser_is_the_prior_in_deepinv_convention():
    """deepinv's samplers call their [0, 1] denoiser through MinusOneOneDenoiserWrapper on a [-1, 1]
    state; for a prior whose model space is [-1, 1] (scale 2, offset -1) that must give D itself,
    and the wrapper must also work inside a deepinv sampler (DiffPIR) and through torch.func (PiGDM)."""
    import deepinv as dinv

    import invsolve as iv
    import operators as ops
    from invsolve.priors.adapters import DeepinvDenoiser

    prior = iv.load_prior("ct-phantom64")
    assert (prior.card.scale, prior.card.offset) == (2.0, -1.0)
    wrapped = DeepinvDenoiser(prior)
    through = dinv.models.MinusOneOneDenoiserWrapper(wrapped)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, *prior.shape), generator=g) * 2 - 1
    with torch.no_grad():
        for sigma in (0.05, 0.5, 5.0):
            z = x + sigma * torch.randn(x.shape, generator=g)
            torch.testing.assert_close(through(z, torch.tensor(sigma)), prior(z, sigma), atol=1e-5, rtol=1e-5)
        # per-sample sigma, in physical units
        s = torch.tensor([0.1, 0.3])
        out = wrapped((x + 1) / 2, s)
        for i in range(2):
            ref = (prior(x[i:i + 1], 2 * float(s[i])) + 1) / 2
            torch.testing.assert_close(out[i:i + 1], ref, atol=1e-5, rtol=1e-5)
    # torch.func, as deepinv's PiGDMDataFidelity uses it
    out, vjp = torch.func.vjp(lambda v: wrapped(v, torch.tensor(0.2)), (x[:1] + 1) / 2)
    (g1,) = vjp(torch.ones_like(out))
    assert torch.isfinite(g1).all() and g1.abs().sum() > 0
    physics = ops.make("ct-sparse8", img_size=64)
    physics.noise_model = dinv.physics.GaussianNoise(sigma=0.1)
    truth = (x[:1] + 1) / 2
    y = physics.A(truth)
    torch.manual_seed(0)
    xhat = dinv.sampling.DiffPIR(wrapped, dinv.optim.L2(), sigma=0.1, max_iter=3)(y, physics)
    assert xhat.shape == truth.shape and torch.isfinite(xhat).all()
