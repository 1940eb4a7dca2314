import math

import pytest
import torch
from deepinv.physics import GaussianNoise, LogPoissonNoise, NoiseModel, PoissonNoise

import operators as ops
from operators import noise


def test_gaussian_sigma_in_units_of_y_seeded_and_dtype():
    y = torch.full((20000,), 3.0, dtype=torch.float64)
    model = noise.Gaussian(0.2, seed=0)
    assert isinstance(model, GaussianNoise)
    a = model(y)
    assert a.dtype == torch.float64
    assert float((a - y).std()) == pytest.approx(0.2, rel=0.03) and abs(float((a - y).mean())) < 0.01
    torch.testing.assert_close(noise.Gaussian(0.2, generator=torch.Generator().manual_seed(0))(y), a)
    b = model(y)  # the generator moves on ...
    assert not torch.equal(a, b)
    model.reset_rng()  # ... and deepinv's reset_rng rewinds it
    torch.testing.assert_close(model(y), a)
    with pytest.raises(TypeError, match="not both"):
        noise.Gaussian(0.1, generator=torch.Generator(), seed=1)
    with pytest.raises(ValueError, match="sigma"):
        noise.Gaussian(-1.0)


def test_poisson_mean_and_variance():
    y = torch.full((40000,), 2.0, dtype=torch.float64)
    model = noise.Poisson(gain=0.05, seed=1)
    assert isinstance(model, PoissonNoise)
    out = model(y)
    assert float(out.mean()) == pytest.approx(2.0, rel=0.01)
    assert float(out.var()) == pytest.approx(0.05 * 2.0, rel=0.05)
    assert torch.allclose(out / 0.05, (out / 0.05).round())  # counts times the gain
    with pytest.raises(ValueError, match="non-negative"):
        model(torch.tensor([-1.0]))
    assert float(noise.Poisson(1.0, clip_positive=True, seed=0)(torch.tensor([-1.0]))) == 0.0
    with pytest.raises(ValueError, match="gain"):
        noise.Poisson(0.0)


def test_log_poisson_is_deepinvs_model_with_zero_counts_clamped():
    g_seed = 7
    y = torch.linspace(0.0, 100.0, 500, dtype=torch.float64).reshape(1, 1, 20, 25)
    ours = noise.LogPoisson(I0=1e4, mu=0.02, generator=torch.Generator().manual_seed(g_seed))
    theirs = LogPoissonNoise(N0=1e4, mu=0.02, rng=torch.Generator().manual_seed(g_seed))
    assert isinstance(ours, LogPoissonNoise) and float(ours.I0) == 1e4
    torch.testing.assert_close(ours(y), theirs(y))  # no zero counts at these attenuations
    # where deepinv's log(0) gives inf, the clamp gives -log(min_count / I0) / mu
    opaque = torch.full((1000,), 1e3, dtype=torch.float64)
    assert torch.isinf(LogPoissonNoise(N0=1e4, mu=0.02, rng=torch.Generator().manual_seed(0))(opaque)).all()
    clamped = noise.LogPoisson(I0=1e4, mu=0.02, min_count=1.0, seed=0)(opaque)
    torch.testing.assert_close(clamped, torch.full_like(opaque, math.log(1e4) / 0.02))


def test_log_poisson_statistics_match_the_delta_method():
    y = torch.full((40000,), 50.0, dtype=torch.float64)
    model = noise.LogPoisson(I0=1e4, mu=0.02, seed=3)  # optical depth 1, about 3700 counts
    out = model(y)
    assert float(out.mean()) == pytest.approx(50.0, abs=0.1)
    assert float(out.var()) == pytest.approx(float(model.variance(y[:1])), rel=0.05)
    assert float(model.variance(y[:1])) == pytest.approx(math.e / (1e4 * 0.02 ** 2))


def test_lodopab_preset_constants():
    model = noise.LogPoisson.lodopab(362, seed=0)
    assert float(model.I0) == 4096 and model.min_count == 0.1
    assert float(model.mu) == pytest.approx(81.35858 * 0.26 / 362, rel=1e-6)


def test_ct_takes_a_noise_model_like_any_deepinv_physics():
    x = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ct = ops.make("ct", img_size=24, views=6, noise_model=noise.LogPoisson(I0=1e4, mu=0.05, seed=0))
    assert isinstance(ct.noise_model, NoiseModel)
    clean = ct.A(x)
    noisy = ct(x)
    assert noisy.shape == clean.shape and noisy.dtype == torch.float64
    residual = (noisy - clean) / ct.noise_model.variance(clean).sqrt()
    assert float(residual.std()) == pytest.approx(1.0, rel=0.15)  # the model's own noise level
    ct.noise_model.reset_rng()
    torch.testing.assert_close(ct(x), noisy)
    ct.noise_model = noise.Gaussian(0.1, seed=0)  # or set it afterwards, as in deepinv
    assert float((ct(x) - clean).std()) == pytest.approx(0.1, rel=0.15)


def test_astra_ct_keeps_the_noise_model():
    pytest.importorskip("astra")
    ct = ops.make("ct", backend="astra", img_size=16, views=4, noise_model=noise.Gaussian(0.5, seed=0))
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float((ct(x) - ct.A(x)).std()) == pytest.approx(0.5, rel=0.3)
