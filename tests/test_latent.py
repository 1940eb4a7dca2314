import pytest
import torch

import invsolve as iv
import operators as ops
from invsolve.priors import LatentPrior, LatentProblem, Prior, PriorCard
from invsolve.priors.adapters import make_denoiser
from invsolve.priors.unet import UNet

from helpers import matrix_physics, mixture


def tiny_decoder(seed=0):
    """A random decoder 4 x 8 x 8 latents -> 1 x 16 x 16 images (transposed conv + tanh)."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.ConvTranspose2d(4, 1, kernel_size=2, stride=2)
    with torch.no_grad():
        conv.weight.copy_(0.5 * torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=g))
    return torch.nn.Sequential(conv, torch.nn.Tanh()).requires_grad_(False)


def tiny_latent_flow_prior(shape=(4, 8, 8)):
    with torch.random.fork_rng():  # deterministic random weights without touching the global stream
        torch.manual_seed(1)
        net = UNet(in_channels=shape[0], channels=(8, 16), attention=(), emb_dim=16, dims=2)
        torch.nn.init.normal_(net.head.weight, std=0.05)
    card = PriorCard(name="tiny-latent-flow", kind="flow", parameterization="flow-velocity", shape=shape,
                     sigma_min=0.002, sigma_max=80.0)
    return Prior(make_denoiser("flow-velocity", net.eval().requires_grad_(False)), card)


def latent_setup(batch=2):
    prior = LatentPrior(tiny_latent_flow_prior(), tiny_decoder(), scale=2.0, offset=-1.0)
    physics = ops.make("inpainting", img_size=16)
    truth = torch.rand(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    return prior, iv.Problem(physics, physics.A(truth), sigma_y=0.01)


def test_latent_prior_card_and_maps():
    prior, problem = latent_setup()
    assert prior.shape == (4, 8, 8) and prior.image_shape == (1, 16, 16)
    assert prior.card.kind == "flow" and prior.card.metadata["latent"]
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    image = prior.decode(z)
    torch.testing.assert_close(image, (prior.decoder(z) + 1) / 2)
    torch.testing.assert_close(prior(z, 1.0), prior.latent_prior(z, 1.0))  # D is the latent model's
    lp = prior.compose(problem)
    assert isinstance(lp, LatentProblem) and prior.compose(lp) is lp
    assert lp.x_shape == (4, 8, 8) and lp.image_shape == (1, 16, 16) and not lp.is_linear
    z2 = torch.cat([z[:2], z[:2]])
    torch.testing.assert_close(lp.forward(z2), problem.physics.A(prior.decode(z2)))
    torch.testing.assert_close(lp.residual(z2), problem.tiled_y(4) - problem.physics.A(prior.decode(z2)))
    torch.testing.assert_close(lp.to_physical(z), image)
    with pytest.raises(TypeError, match="encoder"):
        lp.to_model(image)
    with pytest.raises(TypeError, match="not linear"):
        lp.adjoint(problem.y)


def test_encoder_maps_images_into_latent_space():
    prior = LatentPrior(tiny_latent_flow_prior(), lambda z: z.mean(1, keepdim=True), encoder=lambda x: x.expand(-1, 4, -1, -1),
                        scale=2.0, offset=-1.0)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior.decode(prior.encode(x)), x)


@pytest.mark.parametrize("method", ["flowdps", "dps"])
def test_sample_returns_decoded_images_in_physical_units(method):
    prior, problem = latent_setup()
    post = iv.sample(method, prior, problem, n_samples=2, generator=torch.Generator().manual_seed(0), steps=4)
    assert post.samples.shape == (2, 2, 1, 16, 16) and post.mean.shape == (2, 1, 16, 16)
    assert torch.isfinite(post.samples).all() and post.nfe == 4
    assert post.samples.min() >= 0 and post.samples.max() <= 1  # tanh decoder, [-1, 1] -> [0, 1]


def test_linear_only_sampler_rejects_latent_prior():
    prior, problem = latent_setup()
    linear_only = [n for n in ("mcg",) if n in iv.samplers.names()]
    if not linear_only:
        pytest.skip("no linear-only sampler registered")
    with pytest.raises(TypeError, match="linear"):
        iv.sample(linear_only[0], prior, problem, n_samples=1, generator=torch.Generator().manual_seed(0), steps=2)


def test_latent_run_equals_explicitly_composed_linear_problem():
    """With a linear decoder W z + b, sampling the latent prior through the decoder must equal
    sampling the same latent prior against the explicit physics A W (shifted measurement)."""
    gm = mixture(d=8, k=2)
    g = torch.Generator().manual_seed(3)
    W = torch.randn(12, 8, generator=g, dtype=torch.float64) / 8 ** 0.5
    b = 0.1 * torch.randn(12, generator=g, dtype=torch.float64)
    A = torch.randn(6, 12, generator=g, dtype=torch.float64) / 12 ** 0.5
    prior = LatentPrior(gm, lambda z: z.to(W.dtype) @ W.T + b)
    truth = gm.sample(1, torch.Generator().manual_seed(4))
    y = (truth @ W.T + b) @ A.T + 0.05 * torch.randn(1, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    latent = iv.sample("flowdps", prior, iv.Problem(matrix_physics(A), y, sigma_y=0.05), n_samples=4,
                       generator=torch.Generator().manual_seed(0), steps=20)
    direct = iv.sample("flowdps", gm, iv.Problem(matrix_physics(A @ W), y - b @ A.T, sigma_y=0.05), n_samples=4,
                       generator=torch.Generator().manual_seed(0), steps=20)
    torch.testing.assert_close(latent.samples, direct.samples.to(W.dtype) @ W.T + b, rtol=1e-5, atol=1e-5)
