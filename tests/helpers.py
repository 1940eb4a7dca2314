"""Shared test fixtures: a Gaussian-mixture benchmark and tiny priors."""

import torch
from deepinv.physics import LinearPhysics, Physics

import invsolve as iv


def mixture(d=16, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    root = torch.randn(k, d, d, generator=g, dtype=torch.float64) / d ** 0.5
    covs = 0.5 * root @ root.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2][:k], dtype=torch.float64)
    return iv.GaussianMixture(means, covs, weights / weights.sum())


def latent_mixture(d=16, k=12, seed=0):
    """A ``k``-dimensional latent mixture (``mixture(k)``) behind a random linear decoder to ``d`` pixels
    (singular values between 0.5 and 2, a bias): a latent prior with an exact image-space posterior."""
    from invsolve.priors.latent_mixture import LinearDecoderMixture

    g = torch.Generator().manual_seed(seed + 100)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    weight = q @ torch.diag(torch.linspace(0.5, 2.0, k, dtype=torch.float64)) @ r
    return LinearDecoderMixture(mixture(d=k, seed=seed), weight, 0.5 * torch.randn(d, generator=g, dtype=torch.float64))


def matrix_physics(matrix):
    return LinearPhysics(A=lambda x: x.to(matrix.dtype) @ matrix.T, A_adjoint=lambda y: y.to(matrix.dtype) @ matrix)


def linear_problems(d=16, seed=1):
    """The two exactness problems: keep every other coordinate, and a random Gaussian matrix."""
    mask = torch.zeros(d, dtype=torch.float64)
    mask[::2] = 1
    gauss = torch.randn(d // 2, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / d ** 0.5
    return {"inpainting": matrix_physics(torch.diag(mask)[mask.bool()]), "gaussian": matrix_physics(gauss)}


def measure(gm, physics, sigma_y, seed=5):
    x_true = gm.sample(1, torch.Generator().manual_seed(seed))
    clean = physics.A(x_true)
    y = clean + sigma_y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=clean.dtype)
    return iv.Problem(physics, y, sigma_y=sigma_y)


def check_exactness(method, name, sigma_y, ratio=0.25, mean=0.25, nfe=None, n=1000, label=None, prior=None,
                    **overrides):
    """The exactness criterion on ``linear_problems()[name]`` at ``sigma_y``: sliced-Wasserstein
    ratio <= ``ratio`` (skipped for ``None``) and posterior-mean error <= ``mean`` times the
    prior-mean error; ``nfe``, when given, is the NFE the sampler must report; ``prior``: another exact
    prior over 16 values (default ``mixture()``, e.g. ``latent_mixture()``). Returns the report."""
    from invsolve.exactness import exactness_report

    gm = mixture() if prior is None else prior
    problem = measure(gm, linear_problems()[name], sigma_y)
    report = exactness_report(method, gm, problem, n=n, **overrides)
    print(f"\n{label or method} exactness {name} sigma_y={sigma_y}: {report}")
    if nfe is not None:
        assert report["nfe"] == nfe
    if ratio is not None:
        assert report["ratio"] <= ratio
    assert report["mean_error"] <= mean * report["prior_mean_error"]
    return report


def as_kind(gm, parameterization):
    """The mixture ``gm`` behind a real adapter: ``"ve-score"`` (a VE diffusion prior) or
    ``"flow-velocity"`` (a rectified-flow prior), so samplers can be checked per prior kind
    against the same exact posterior."""
    from invsolve.priors import Prior, PriorCard
    from invsolve.priors.adapters import make_denoiser

    def col(v, x):
        return torch.as_tensor(v, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    if parameterization == "ve-score":
        def net(x, sigma):
            s = col(sigma, x)
            return (gm(x, s.reshape(-1)) - x) / s ** 2
        kind = "diffusion"
    elif parameterization == "flow-velocity":
        def net(x_t, t):
            t = col(t, x_t)
            s = t / (1 - t)
            x = x_t * (1 + s)
            x0 = gm(x, s.reshape(-1))
            return (x - x0) / s - x0
        kind = "flow"
    else:
        raise ValueError(parameterization)
    card = PriorCard(name=f"gm-{parameterization}", kind=kind, parameterization=parameterization,
                     shape=tuple(gm.shape), sigma_min=gm.sigma_min, sigma_max=gm.sigma_max)
    prior = Prior(make_denoiser(parameterization, net), card)
    prior.posterior, prior.sample, prior.mean = gm.posterior, gm.sample, gm.mean
    return prior


def tiny_prior(shape, dims=2):
    """A random (untrained) tiny UNet behind the EDM adapter, data range [0, 1] -> [-1, 1]."""
    from invsolve.priors import Prior, PriorCard
    from invsolve.priors.adapters import EDMDenoiser
    from invsolve.priors.unet import UNet

    net = UNet(in_channels=shape[0], channels=(8, 16), attention=(), emb_dim=16, dims=dims)
    torch.nn.init.normal_(net.head.weight, std=0.05)  # random, not the zero init
    card = PriorCard(name="tiny", kind="diffusion", parameterization="edm", shape=shape, scale=2.0, offset=-1.0,
                     physical_range=(0.0, 1.0))
    return Prior(EDMDenoiser(net.eval().requires_grad_(False)), card)


def smoke_operator(name, shape, dims):
    """A small ``ct`` / ``inpainting`` / ``gaussian-blur`` operator for a sample ``shape`` (2D or 3D)."""
    import operators as ops

    if name == "ct":
        return ops.make("ct", img_size=shape[-1], views=4)  # slice-wise on volumes
    if name == "inpainting":
        return ops.make("inpainting", img_size=tuple(shape[1:]), kind="random", missing=0.5, dims=dims)
    return ops.make("gaussian-blur", std=1.0, kernel_size=5, dims=dims)


def smoke_problem(shape, dims, operator):
    """``(prior, physics, truth, problem)``: a tiny random prior and two seeded truths measured
    through ``smoke_operator`` with sigma_y = 0.01, for the samplers' 2D/3D smoke tests."""
    import invsolve as iv

    prior = tiny_prior(shape, dims)
    physics = smoke_operator(operator, shape, dims)
    truth = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    return prior, physics, truth, iv.Problem(physics, physics.A(truth), sigma_y=0.01, prior=prior)


def assert_batched_equals_single(method, tol=1e-5, **overrides):
    """Three draws taken together equal the same draws taken one at a time with the same
    per-draw generators (Gaussian-matrix problem, sigma_y 0.1)."""
    import invsolve as iv

    gm = mixture()
    problem = measure(gm, linear_problems()["gaussian"], 0.1)
    gens = lambda: [torch.Generator().manual_seed(10 + j) for j in range(3)]  # noqa: E731
    together = iv.sample(method, gm, problem, n_samples=3, generator=gens(), **overrides)
    alone = [iv.sample(method, gm, problem, n_samples=1, generator=[g], **overrides).samples[0] for g in gens()]
    torch.testing.assert_close(together.samples, torch.stack(alone), rtol=tol, atol=tol)


def assert_prior_kinds_agree(method, tol=1e-3, **overrides):
    """The mixture behind the flow-velocity and VE-score adapters gives the plain mixture's samples."""
    import invsolve as iv

    gm = mixture()
    problem = measure(gm, linear_problems()["gaussian"], 0.1)
    plain = iv.sample(method, gm, problem, generator=torch.Generator().manual_seed(3), **overrides)
    for kind in ("flow-velocity", "ve-score"):
        other = iv.sample(method, as_kind(gm, kind), problem, generator=torch.Generator().manual_seed(3), **overrides)
        torch.testing.assert_close(other.samples, plain.samples, rtol=tol, atol=tol)


class Tanh(Physics):
    """A nonlinear forward model, ``A(x) = tanh(x)``."""

    def A(self, x, **kwargs):
        return torch.tanh(x)


def tanh_problem():
    """(mixture in d = 8, its sample, the problem y = tanh(sample) at sigma_y = 0.01)."""
    gm = mixture(d=8, k=2)
    truth = gm.sample(1, torch.Generator().manual_seed(0))
    return gm, truth, iv.Problem(Tanh(), torch.tanh(truth), sigma_y=0.01)


def run_smoke(method, shape, dims, operator, nfe, callbacks, **overrides):
    """3 draws of ``method`` on ``smoke_problem``: shapes, finite samples, reported NFE and one
    callback per step. Returns (problem, truth, posterior, callback payloads)."""
    prior, _, truth, problem = smoke_problem(shape, dims, operator)
    seen = []
    post = iv.sample(method, prior, problem, n_samples=3, generator=torch.Generator().manual_seed(0),
                     callback=seen.append, **overrides)
    assert post.samples.shape == (3, 2, *shape)
    assert post.mean.shape == truth.shape and post.std.shape == truth.shape
    assert torch.isfinite(post.samples).all() and post.nfe == nfe and post.seconds > 0
    assert [s["step"] for s in seen] == list(range(callbacks))
    return problem, truth, post, seen
