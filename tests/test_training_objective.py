"""The one denoising loss of ``invsolve.priors.training`` and what it replaced.

The flow objective is trained as ``lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2`` through the
``flow-velocity`` adapter; these tests check, for a fixed network, batch, t and noise, that it is
the rectified-flow loss ``||v(x_t, t) - (n - x0)||^2`` the trainer used before (computed inline
from the formula), term by term and in its gradient.
"""

import subprocess
import sys

import pytest
import torch

import invsolve as iv
from invsolve.errors import ConfigError
from invsolve.priors.evaluation import denoise_physical
from invsolve.priors.training import (FLOW_T_MIN, TrainConfig, denoising_loss, edm_objective, flow_objective,
                                      make_objective, train)
from invsolve.priors.unet import UNet

TINY = dict(name="tiny-test", size=16, channels=(8, 16), attention=(), batch=4, warmup=2, checkpoint_every=1)


def _net(dtype=torch.float32):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = UNet(in_channels=1, channels=(8, 16), attention=())
    # a trained-looking network: perturb the zero-initialised output layer so v is not ~0
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return net.to(dtype)


def _batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return (2 * torch.rand(6, 1, 16, 16, generator=g) - 1).to(dtype)


def _old_flow_loss(net, x0, t, noise):
    """The trainer's former flow loss: regress the raw velocity at x_t = (1 - t) x0 + t n."""
    x_t = (1 - t) * x0 + t * noise
    return ((net(x_t, t.reshape(-1)) - (noise - x0)) ** 2).mean(dim=(1, 2, 3))


def _new_flow_loss(net, x0, t, noise):
    objective = flow_objective()
    sigma = t / (1 - t)
    denoiser = objective.denoiser(net)
    return (objective.weight(sigma) * (denoiser(x0 + sigma * noise, sigma) - x0) ** 2).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_flow_denoising_loss_is_the_rectified_flow_loss(dtype, rtol):
    net, x0 = _net(dtype), _batch(dtype)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 0.99], dtype=dtype).reshape(-1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    old, new = _old_flow_loss(net, x0, t, noise), _new_flow_loss(net, x0, t, noise)
    assert (old > 0.1).all()  # a non-trivial loss at every t
    torch.testing.assert_close(new, old, rtol=rtol, atol=0)  # per sample: same weighting
    # same gradient, hence the same optimum and the same training steps
    g_old = torch.autograd.grad(old.mean(), list(net.parameters()))
    g_new = torch.autograd.grad(new.mean(), list(net.parameters()))
    scale = max(float(a.abs().max()) for a in g_old)  # some gradients are ~0 (rounding): compare on this scale
    for a, b in zip(g_old, g_new):
        torch.testing.assert_close(b, a, rtol=10 * rtol, atol=10 * rtol * scale)


def test_training_loss_draws_t_and_noise_as_the_old_flow_loss():
    """``denoising_loss`` with the flow objective draws t ~ U(0, 1), then n, from the generator,
    as the former trainer did, so the loss of a step is the former loss (float32 rounding)."""
    net, x0 = _net(), _batch()
    new = denoising_loss(flow_objective().denoiser(net), flow_objective(), x0, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.rand((x0.shape[0], 1, 1, 1), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert float(t.min()) > FLOW_T_MIN  # the floor is not active here
    old = _old_flow_loss(net, x0, t, noise).mean()
    torch.testing.assert_close(new, old, rtol=1e-5, atol=0)


def test_edm_denoising_loss_is_karras_weighted_d_loss():
    net, x0 = _net(), _batch()
    objective = edm_objective(-1.2, 1.2, 0.5)
    loss = denoising_loss(objective.denoiser(net), objective, x0, torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn((x0.shape[0], 1, 1, 1), generator=g))
    noise = torch.randn(x0.shape, generator=g)
    D = iv.priors.make_denoiser("edm", net, sigma_data=0.5)
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss, (weight * (D(x0 + sigma * noise, sigma) - x0) ** 2).mean(), rtol=0, atol=0)


def test_flow_t_floor_keeps_the_weight_finite():
    objective = flow_objective()
    sigma = objective.sample_sigma((4096, 1, 1, 1), torch.Generator().manual_seed(0))
    t = sigma / (1 + sigma)
    assert float(t.min()) >= FLOW_T_MIN * (1 - 1e-5) and float(t.max()) < 1
    assert torch.isfinite(objective.weight(sigma)).all()
    torch.testing.assert_close(objective.weight(sigma), 1 / t ** 2, rtol=1e-4, atol=0)


def test_objective_is_decided_once_from_the_config():
    flow, edm = make_objective(TrainConfig(objective="flow")), make_objective(TrainConfig())
    assert (flow.kind, flow.adapter) == ("flow", "flow-velocity")
    assert (edm.kind, edm.adapter, edm.adapter_options) == ("diffusion", "edm", {"sigma_data": 0.5})


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("batch", 0), ("checkpoint_every", 0), ("lr", float("nan")), ("lr", -1e-3), ("lr", float("inf")),
    ("warmup", -1), ("ema_decay", 1.0), ("sigma_data", 0.0), ("sigma_min", 0.0), ("size", 15), ("channels", ()),
    ("attention", (5,)), ("val_every", -1), ("val_sigmas", (0.1, -0.1)), ("val_fraction", 1.0), ("threads", 0),
    ("p_std", 0.0), ("percentiles", (99.5, 0.5)), ("objective", "score"),
])
def test_bad_config_numbers_are_refused_before_any_work(tmp_path, field, value):
    config = TrainConfig(**{"steps": 1, **TINY, field: value})
    with pytest.raises(ConfigError, match=field):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_warmup_zero_means_no_warmup(tmp_path):
    assert train(TrainConfig(steps=1, **{**TINY, "warmup": 0}), tmp_path / "run", progress=False,
                 evaluate=False) is not None


def test_denoise_physical_uses_the_card_map_of_a_shipped_prior():
    prior = iv.load_prior("ct-phantom64")
    y = torch.rand(2, *prior.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = denoise_physical(prior, y, 0.1)
        card = prior.card
        expected = (prior(card.scale * y + card.offset, card.scale * 0.1) - card.offset) / card.scale
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_evaluation_does_not_import_training():
    code = ("import sys, invsolve.priors.evaluation; "
            "assert 'invsolve.priors.training' not in sys.modules, 'evaluation imports training'")
    subprocess.run([sys.executable, "-c", code], check=True)
