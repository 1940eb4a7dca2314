"""I2SB bridge priors and the samplers I2SB and CDDB (issue 16): schedule, training, loading, sampling, errors.

The quality figures (CDDB against I2SB, DPS and PiGDM on 8-view CT) are in benchmarks/cddb/results.md;
here a tiny bridge trained in the test checks the machinery, and the bridge's math is checked exactly.
"""

from __future__ import annotations

import pytest
import torch

import invsolve as iv
import operators as ops
from invsolve.phantoms import heldout_phantoms
from invsolve.priors.bridge import BridgePrior, BridgeSchedule, bridge_start
from invsolve.priors.train_config import TrainConfig
from invsolve.priors.training import bridge_loss, train
from operators.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py

SIGMA_Y = 0.1


def test_schedule_is_the_official_symmetric_one():
    s = BridgeSchedule()
    assert s.n == 1000 and s.std_fwd[0] == pytest.approx(0.01) and s.std_bwd[-1] == pytest.approx(0.01)
    assert torch.allclose(s.std_fwd, s.std_bwd.flip(0))  # symmetric betas
    mu0, mu1, std = s.marginal_coefficients(torch.tensor([0, 999]))
    assert mu0[0] > 0.999 and mu1[1] > 0.999 and torch.allclose(mu0 + mu1, torch.ones(2, dtype=torch.float64))
    assert s.steps(10) == [0, 100, 200, 300, 400, 500, 599, 699, 799, 899, 999]  # space_indices (round half even)
    assert s.steps(1) == [0, 999]
    with pytest.raises(ConfigError):
        s.steps(1000)


@pytest.mark.parametrize("m,n", [(0, 999), (100, 200), (598, 599), (0, 1)])
def test_posterior_step_is_the_gaussian_product(m, n):
    """From x_n = x0 + sigma_f(n) e, the step x_m = a x0 + b x_n + c z has mean x0 and std sigma_f(m)."""
    s = BridgeSchedule()
    a, b, c = s.posterior_coefficients(m, n)
    assert a + b == pytest.approx(1.0, abs=1e-12)
    assert b ** 2 * float(s.std_fwd[n]) ** 2 + c ** 2 == pytest.approx(float(s.std_fwd[m]) ** 2, rel=1e-9)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridge")
    config = TrainConfig(name="tiny-bridge", objective="bridge", size=32, channels=(16, 32), attention=(1,),
                         batch=4, steps=30, warmup=5, checkpoint_every=10, bridge_operator="ct-sparse8",
                         bridge_sigma_y=SIGMA_Y)
    with torch.random.fork_rng():
        out = train(config, root / "run", root / "out", progress=False, evaluate=False)
    return iv.load_prior(out)


def ct_problem(prior, n=2, views=8):
    physics = ops.make("ct", img_size=32, views=views)
    x = heldout_phantoms(n, 32)
    y = physics.A(x)
    y = y + SIGMA_Y * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    return physics, x, iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)


def test_trained_bridge_loads_with_its_degradation(bridge):
    assert isinstance(bridge, BridgePrior) and bridge.card.kind == "bridge"
    info = bridge.card.metadata["bridge"]
    assert info["operator"] == "ct-sparse8" and info["params"] == {"img_size": 32} and info["sigma_y"] == SIGMA_Y
    assert info["start"] == "fbp(y)" and info["steps"] == 1000


def test_bridge_loss_is_the_i2sb_label_loss(bridge):
    x0, x1 = torch.rand(3, 1, 32, 32) * 2 - 1, torch.rand(3, 1, 32, 32) * 2 - 1
    loss = bridge_loss(bridge, x0, x1, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws: t, then the bridge noise
    s = bridge.schedule
    t = torch.randint(0, s.n, (3,), generator=g)
    xt = s.marginal(t, x0, x1, torch.randn(x0.shape, generator=g))
    std = s.std_fwd[t].float().reshape(-1, 1, 1, 1)
    label = (xt - x0) / std
    expected = ((bridge.net(xt, t.float() / s.n) - label) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["i2sb", "cddb"])
def test_bridge_samplers_are_deterministic_batched_and_count_nfe(bridge, name):
    _, _, problem = ct_problem(bridge)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    a = iv.sample(name, bridge, problem, n_samples=2, steps=4, generator=gens())
    b = iv.sample(name, bridge, problem, n_samples=2, steps=4, generator=gens())
    assert torch.equal(a.samples, b.samples) and a.samples.shape == (2, 2, 1, 32, 32) and a.nfe == 4
    solo = iv.sample(name, bridge, problem, n_samples=1, steps=4, generator=[torch.Generator().manual_seed(1)])
    assert torch.allclose(solo.samples[0], a.samples[1], atol=1e-5)  # draw j depends on generator j only
    ode = iv.sample(name, bridge, problem, n_samples=2, steps=4, ot_ode=True, generator=gens())
    assert torch.equal(ode.samples[0], ode.samples[1])  # no posterior noise: the draws coincide


def test_cddb_fits_the_data_better_than_i2sb(bridge):
    """CDDB's data-consistency step lowers ||A x - y|| against I2SB's from the same noise."""
    physics, _, problem = ct_problem(bridge)
    gens = lambda: [torch.Generator().manual_seed(0)]  # noqa: E731
    runs = {name: iv.sample(name, bridge, problem, steps=5, generator=gens()).mean for name in ("i2sb", "cddb")}
    residual = {k: float((physics.A(v) - problem.y).norm()) for k, v in runs.items()}
    assert residual["cddb"] < 0.9 * residual["i2sb"], residual
    start = bridge_start(physics, problem.y)
    assert start.shape == (2, 1, 32, 32)


def test_bridges_and_denoiser_samplers_refuse_each_other(bridge):
    _, _, problem = ct_problem(bridge)
    with pytest.raises(ConfigError, match="bridge.*cddb or i2sb"):
        iv.sample("dps", bridge, problem, steps=2)
    pixel = iv.load_prior("ct-phantom64")
    physics64 = ops.make("ct-sparse8", img_size=64)
    y64 = physics64.A(heldout_phantoms(1))
    with pytest.raises(ConfigError, match="cddb.*needs a bridge prior"):
        iv.sample("cddb", pixel, iv.Problem(physics64, y64, sigma_y=SIGMA_Y, prior=pixel), steps=2)
    _, _, other = ct_problem(bridge, views=16)  # not the operator the bridge was trained for
    with pytest.raises(ConfigError, match="bridge for ct-sparse8.*differs"):
        iv.sample("i2sb", bridge, other, steps=2)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        iv.sample("i2sb", bridge, problem, steps=0)
    with pytest.warns(UserWarning, match="sigma_y"):
        noisy = iv.Problem(problem.physics, problem.y, sigma_y=1.0, prior=bridge)
        iv.sample("i2sb", bridge, noisy, steps=2)
    with pytest.raises(ConfigError, match="bridge"):
        TrainConfig(name="x", objective="bridge", latent_channels=4).validate()


def test_shipped_bridge_reconstructs_held_out_phantoms():
    """ct-phantom64-bridge-sparse8 with CDDB's ct-sparse8 preset (20 NFE) on 2 held-out phantoms: far above
    the FBP it starts from (benchmarks/cddb: 26.3 dB against FBP 18.4 on 4 phantoms)."""
    prior = iv.load_prior("ct-phantom64-bridge-sparse8")
    assert isinstance(prior, BridgePrior) and prior.card.metadata["bridge"]["operator"] == "ct-sparse8"
    assert prior.card.metadata["evaluation"]["images"] >= 8
    physics = ops.make("ct-sparse8", img_size=64)
    x = heldout_phantoms(2)
    y = physics.A(x) + SIGMA_Y * torch.randn(physics.A(x).shape, generator=torch.Generator().manual_seed(1))
    post = iv.sample("cddb", prior, iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior), preset="ct-sparse8",
                     generator=torch.Generator().manual_seed(0))
    assert post.nfe == 20
    fbp = iv.metrics.psnr(x, bridge_start(physics, y).clamp(0, 1), 1.0)
    assert iv.metrics.psnr(x, post.mean.clamp(0, 1), 1.0) > fbp + 5.0
