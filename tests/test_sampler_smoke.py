"""Smoke tests: every registered sampler x every registered operator (and preset), 2D and 3D.

A tiny random network (two convolutions behind the EDM adapter; behind the rectified-flow
adapter for FlowDPS) stands in for a trained prior, shaped like the operator's input (the
per-name sizes of ``CASES`` in tests/test_operator_contracts.py; MRI takes 2 channels, the real
and imaginary parts). Each sampler runs about 3 denoiser evaluations. Checked for every pair:

- finite samples (and callback states) of the right shape; the reported NFE equals the number of
  denoiser evaluations actually made per sample (counted by wrapping the prior) and the NFE the
  few-step settings ``SMALL`` should give;
- linear-only samplers raise ``TypeError`` for nonlinear physics (phase retrieval), and every sampler
  but the derivative-free ones (EnKG) a ``PhysicsError`` naming them for black-box physics;
- where the method guarantees it, the residual ``||y - A(x)||`` goes down:
  MCG's final projection onto the measurement (``noise_aware=False``: a hard projection onto
  ``y`` plus the current level's noise, so ``||y - A(x)|| <~ sigma_last ||M z||``), DiffPIR's final proximal
  data step and DMPS's final pseudo-likelihood step (both never increase the residual of the
  last denoised estimate they start from, even with truncated conjugate gradients), and
  RED-Diff's pseudo-inverse start (what one step returns) fits ``y`` far better than the
  data-free zero image (residual <= 5 %; exact for decomposable physics, CG otherwise).

Runs single-threaded (small tensors are much slower with threads on a shared machine).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from deepinv.physics import DecomposablePhysics

import invsolve as iv
import operators as ops
from invsolve.priors import Prior, PriorCard
from invsolve.priors.adapters import make_denoiser
from operators.errors import ConfigError, PhysicsError

from test_operator_contracts import CASES, FALLBACK

SAMPLERS = iv.samplers.names()
OPERATORS = ops.names()

SMALL_NFE = 3
# few-step overrides per sampler (its defaults otherwise) and the NFE they give; a sampler not
# listed gets ``nfe_overrides(name, SMALL_NFE)`` and is checked against its own denoiser count
SMALL = {
    "dps": (dict(steps=3), 3),
    "mcg": (dict(steps=3, noise_aware=False, schedule="karras"), 3),  # karras: last level sigma_min
    "reddiff": (dict(steps=4), 4),
    "daps": (dict(levels=3, ode_steps=1, mc_steps=2), 3),
    "flowdps": (dict(steps=3), 3),
    "diffpir": (dict(steps=3), 3),
    "pigdm": (dict(steps=3), 3),
    "dmps": (dict(steps=3), 3),
    # issue 15 SMC samplers: 2 particles per posterior sample (each step evaluates every particle)
    "mcgdiff": (dict(steps=3, particles=2), 6),
    "fps": (dict(steps=3, particles=2), 6),
    "tds": (dict(steps=3, particles=2), 6),
    # issue 16 EnKG: 4 members x (6 Euler steps + 2 updates x inner ODE steps 2+2+1+1+1 at levels 1..5)
    "enkg": (dict(steps=6, particles=4), 80),
    # issue 17 ReSample: 3 steps + time travel (2 + 1 evaluations) before its 2 hard data-consistency steps
    "resample": (dict(steps=3, interval=1, travel=1, pixel_iters=2, latent_iters=2), 6),
    # issue 16 BlindDPS: 3 steps of the image chain (the shipped kernel prior runs beside it)
    "blinddps": (dict(steps=3), 3),
}
# samplers that need linear physics (issue 6: MCG projects; DiffPIR, PiGDM, DMPS use closed forms;
# issue 15: DDRM works in the SVD basis, DDNM projects)
LINEAR_ONLY = {"mcg", "diffpir", "pigdm", "dmps", "ddrm", "ddnm", "dds", "diffusionmbir",  # issue 12: CG / ADMM-TV data steps
               "mcgdiff", "fps"}  # issue 15: MCGdiff in the SVD basis, FPS closed-form Gaussian products
# samplers that need an exact SVD of the operator (toolkit.LinearPart's spectral methods): they
# must raise a PhysicsError naming an alternative ('ddnm') for operators that have none here
SVD_ONLY = {"ddrm", "mcgdiff"}  # mcgdiff names 'fps' / 'tds'
# samplers that run on any physics
GENERAL = {"dps", "reddiff", "daps", "flowdps", "tpdm", "tds", "enkg", "resample", "dflow", "flair"}
# samplers that estimate the kernel of a 2D blur (issue 16): a PhysicsError naming them elsewhere
BLUR_ONLY = {"blinddps"}
SIGMA_Y = 0.01


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


class TinyNet(torch.nn.Module):
    """conv -> SiLU (+ noise embedding) -> conv, random weights from a seeded generator."""

    def __init__(self, channels: int, dims: int, width: int = 4, seed: int = 0):
        super().__init__()
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.inp = conv(channels, width, 3, padding=1)
        self.out = conv(width, channels, 3, padding=1)
        self.emb = torch.nn.Parameter(torch.zeros(width))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))

    def forward(self, x, c_noise):
        c = torch.as_tensor(c_noise, dtype=x.dtype).reshape(-1, 1, *([1] * (x.ndim - 2)))
        h = torch.nn.functional.silu(self.inp(x) + c * self.emb.reshape(1, -1, *([1] * (x.ndim - 2))))
        return self.out(h)


class Counter:
    """Wraps a denoiser and counts evaluated rows (one row = one sample's evaluation)."""

    def __init__(self, denoiser):
        self.denoiser, self.rows = denoiser, 0

    def __call__(self, x, sigma):
        self.rows += x.shape[0]
        return self.denoiser(x, sigma)


def tiny_prior(shape: tuple[int, ...], complex_valued: bool, flow: bool):
    dims = len(shape) - 1
    net = TinyNet(shape[0], dims).eval().requires_grad_(False)
    parameterization = "flow-velocity" if flow else "edm"
    counter = Counter(make_denoiser(parameterization, net))
    card = PriorCard(name="smoke", kind="flow" if flow else "diffusion", parameterization=parameterization,
                     shape=tuple(shape), scale=2.0, offset=-1.0,
                     physical_range=None if complex_valued else (0.0, 1.0))
    return Prior(counter, card), counter


def _case(name: str, dims: int):
    """The operator, its input shape (batch first) and the case row, or a skip reason."""
    case = CASES.get(name, FALLBACK)
    if dims == 2 and case.no_2d:
        return None, f"{name} has no 2D form: {case.no_2d}"
    if dims == 3 and (case.no_3d or case.too_large_3d):
        return None, f"{name} 3D not run: {case.no_3d or case.too_large_3d}"
    params = case.params if dims == 2 or case.params_3d is None else case.params_3d
    shape = case.shape if dims == 2 else case.shape_3d
    return (ops.make(name, **params), tuple(shape)), None


def _setup(sampler: str, operator: str, dims: int):
    made, skip = _case(operator, dims)
    if skip:
        pytest.skip(skip)
    physics, shape = made
    x_shape = shape[1:]
    complex_valued = operator.startswith("mri")
    prior, counter = tiny_prior(x_shape, complex_valued, flow=sampler == "flowdps")
    truth = torch.rand(1, *x_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = physics.A(truth)
    return physics, prior, counter, iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)


def _overrides(sampler: str) -> dict:
    return dict(SMALL[sampler][0]) if sampler in SMALL else iv.samplers.nfe_overrides(sampler, SMALL_NFE)


def _residual(problem, x_physical: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||y - A(x)||`` for physical-unit samples (n, B, *x_shape)."""
    x = x_physical.reshape(-1, *x_physical.shape[2:])
    with torch.no_grad():
        r = problem.residual(problem.to_model(x))
    return torch.view_as_real(r).flatten(1).norm(dim=1) if r.is_complex() else r.flatten(1).norm(dim=1)


def _is_2d_blur(physics) -> bool:
    from deepinv.physics import Blur

    return isinstance(physics, Blur) and physics.filter.dim() == 4


def _has_exact_svd(operator, physics, x_shape) -> bool:
    """A deepinv decomposable physics, average pooling, a separable operator (Gaussian blur, bicubic
    downsampling: a Kronecker SVD), a circular blur (an FFT SVD), or small enough for the dense SVD
    (``toolkit.DENSE_MAX`` unknowns per sample)."""
    from invsolve.samplers.toolkit import DENSE_MAX
    from operators.resolution import AveragePooling

    separable = operator in ("deblur-gauss61", "gaussian-blur", "sr-bicubic", "sr4-bicubic")
    circular = getattr(physics, "padding", None) == "circular"
    return (isinstance(physics, (DecomposablePhysics, AveragePooling)) or separable or circular
            or math.prod(x_shape) <= DENSE_MAX)


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_runs_on_operator(sampler, operator, dims):
    physics, prior, counter, problem = _setup(sampler, operator, dims)
    n = 2
    overrides = _overrides(sampler)
    if getattr(iv.samplers.get(sampler), "bridge", False):  # I2SB / CDDB: bridge priors only (tests/test_cddb.py)
        with pytest.raises(ConfigError, match="needs a bridge prior"):
            iv.sample(sampler, prior, problem, n_samples=n, generator=torch.Generator().manual_seed(1), **overrides)
        return
    if getattr(physics, "black_box", False) and not getattr(iv.samplers.get(sampler), "derivative_free", False):
        with pytest.raises(PhysicsError, match="black box.*enkg"):  # forward evaluations only (issue 16)
            iv.sample(sampler, prior, problem, n_samples=n, generator=torch.Generator().manual_seed(1), **overrides)
        return
    if sampler in BLUR_ONLY and not _is_2d_blur(physics):
        with pytest.raises(PhysicsError, match=f"{sampler}.*Blur"):
            iv.sample(sampler, prior, problem, n_samples=n, generator=torch.Generator().manual_seed(1), **overrides)
        return
    if not problem.is_linear:
        if sampler in LINEAR_ONLY:
            with pytest.raises(TypeError, match="linear"):
                iv.sample(sampler, prior, problem, n_samples=n, generator=torch.Generator().manual_seed(1), **overrides)
            return
        if sampler not in GENERAL:  # a newly registered sampler: either runs or refuses clearly
            try:
                iv.sample(sampler, prior, problem, n_samples=1, generator=torch.Generator().manual_seed(1), **overrides)
            except TypeError as err:
                assert "linear" in str(err), f"{sampler} raised an unclear TypeError for nonlinear physics: {err}"
                return
    if sampler in SVD_ONLY and not _has_exact_svd(operator, physics, prior.shape):
        with pytest.raises(PhysicsError, match="exact SVD.*'(ddnm|fps)'"):
            iv.sample(sampler, prior, problem, n_samples=n, generator=torch.Generator().manual_seed(1), **overrides)
        return
    steps = []
    post = iv.sample(sampler, prior, problem, n_samples=n, generator=torch.Generator().manual_seed(1),
                     callback=steps.append, **overrides)
    x_shape = tuple(prior.shape)
    assert post.samples.shape == (n, 1, *x_shape)
    assert torch.isfinite(post.samples).all(), f"{sampler} on {operator} ({dims}D) gave non-finite samples"
    per_sample = counter.rows / n  # denoiser rows per posterior sample (SMC: every particle counts)
    assert post.nfe == per_sample, f"{sampler} reports nfe={post.nfe} but evaluated D {per_sample} times per sample"
    if sampler in SMALL:
        assert post.nfe == SMALL[sampler][1], f"{sampler} with {overrides} should make {SMALL[sampler][1]} evaluations"
    assert steps and all(torch.isfinite(s["x"]).all() for s in steps), "callback missing or non-finite state"

    if not problem.is_linear:
        return
    res = _residual(problem, post.samples)
    last_denoised = problem.to_physical(steps[-1]["denoised"]).reshape(n, 1, *x_shape)
    res_denoised = _residual(problem, last_denoised)
    msg = f"{sampler} on {operator} ({dims}D): residual of the output {res.tolist()} vs the last estimate's"
    if sampler == "mcg":
        # noise_aware=False: every step ends with the projection onto the measurement at the
        # current noise level, {A(x) = y + sigma M z} (official q_sample(y, t)); so at the end
        # ||y - A(x)|| <= sigma_last ||M z|| (z ~ N(0, I)), bounded here with a wide margin.
        g = torch.Generator().manual_seed(2)
        z = torch.randn(8, *x_shape, generator=g)
        with torch.no_grad():
            mz = problem.linear_forward(z)
        mz = torch.view_as_real(mz) if mz.is_complex() else mz
        noise = 2 * steps[-1]["sigma"] * mz.flatten(1).norm(dim=1).max()
        if isinstance(physics, DecomposablePhysics):  # solved exactly
            bound = noise + 1e-4 * problem.y.flatten().abs().norm()
        else:  # conjugate gradients (or a dense SVD) from the guided estimate: never worse than it
            bound = noise + res_denoised
        assert (res <= bound).all(), f"{msg} {res_denoised.tolist()}: not projected onto y (bound {bound.tolist()})"
    elif sampler in ("diffpir", "dmps"):  # the last step is a data step started at the last estimate
        assert (res <= res_denoised * (1 + 1e-4) + 1e-5).all(), f"{msg} {res_denoised.tolist()} (data step)"
        assert (res < res_denoised).any(), f"{msg} {res_denoised.tolist()}: the data step did nothing"
    elif sampler == "reddiff":  # one step returns the start, the pseudo-inverse of y: it fits y
        start = iv.sample(sampler, prior, problem, n_samples=n, generator=torch.Generator().manual_seed(1),
                          **{**overrides, "steps": 1})
        res_start = _residual(problem, start.samples)
        res_zero = _residual(problem, problem.to_physical(torch.zeros(1, 1, *x_shape)))
        assert (res_start <= 0.05 * res_zero).all(), \
            f"reddiff on {operator} ({dims}D): pinv start residual {res_start.tolist()} vs zero image {res_zero.tolist()}"


def test_every_sampler_has_small_settings_or_for_nfe():
    """The few-step settings name real hyperparameters of registered samplers (keep SMALL in sync)."""
    assert set(SMALL) <= set(SAMPLERS), set(SMALL) - set(SAMPLERS)
    for name in SAMPLERS:
        fields = {f.name for f in dataclasses.fields(iv.samplers.get(name))}
        assert set(_overrides(name)) <= fields, (name, _overrides(name), fields)


@pytest.mark.parametrize("sampler", ["dps", "ddrm", "fps"])
def test_batch_size_runs_the_draws_in_chunks_with_the_same_samples(sampler):
    """``iv.sample(batch_size=k)`` runs at most k draws at a time: with one generator per draw the
    samples, NFE and extras equal one batch; with one generator they are reproducible; the callback
    says which draws each run holds."""
    physics, prior, counter, problem = _setup(sampler, "inpainting", 2)
    kw = _overrides(sampler)

    def gens():
        return [torch.Generator().manual_seed(10 + j) for j in range(5)]

    whole = iv.sample(sampler, prior, problem, n_samples=5, generator=gens(), **kw)
    seen = []
    chunked = iv.sample(sampler, prior, problem, n_samples=5, generator=gens(), batch_size=2,
                        callback=lambda info: seen.append(info["draws"]), **kw)
    torch.testing.assert_close(chunked.samples, whole.samples, rtol=0, atol=1e-6)
    assert chunked.nfe == whole.nfe and sorted(set(seen)) == [(0, 2), (2, 4), (4, 5)]
    one = [iv.sample(sampler, prior, problem, n_samples=3, generator=torch.Generator().manual_seed(4), batch_size=2,
                     **kw).samples for _ in range(2)]
    assert torch.equal(one[0], one[1])
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            iv.sample(sampler, prior, problem, n_samples=2, batch_size=bad, **kw)
