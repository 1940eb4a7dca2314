"""How a prior's images meet the physics (``invsolve.problem.fit_physics``, issue 13): magnitude
priors on complex MRI physics, a prior / measurement of the wrong size, float64 user physics,
and the generic hyperparameter checks of ``invsolve.samplers.base.configure``."""

import math

import pytest
import torch
from deepinv.physics import LinearPhysics

import invsolve as iv
import operators as ops
from invsolve.errors import ConfigError, DataError, UnknownOptionError
from invsolve.problem import LinearRealImagePhysics, real_image_physics

from helpers import mixture, tiny_prior

SMALL = {  # a few steps each (NFE small); the 3D-only samplers are covered by tests/test_volume.py
    "dps": dict(steps=3), "mcg": dict(steps=3, noise_aware=False, schedule="karras"), "reddiff": dict(steps=4),
    "daps": dict(levels=3, ode_steps=1, mc_steps=2), "flowdps": dict(steps=3), "diffpir": dict(steps=3),
    "pigdm": dict(steps=3), "dmps": dict(steps=3), "mcgdiff": dict(steps=3, particles=2),
    "fps": dict(steps=3, particles=2), "tds": dict(steps=3, particles=2), "ddrm": dict(steps=3),
    "ddnm": dict(steps=3), "dds": dict(steps=3),
}


def raw_matrix_physics(matrix):
    """A user's dense float64 matrix as deepinv physics, with no dtype handling of its own."""
    return LinearPhysics(A=lambda x: x @ matrix.T, A_adjoint=lambda y: y @ matrix)


def float64_problem(d=16):
    gm = mixture(d=d)
    matrix = torch.randn(d // 2, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / d ** 0.5
    physics = raw_matrix_physics(matrix)
    x = gm.sample(1, torch.Generator().manual_seed(5))
    y = physics.A(x) + 0.1 * torch.randn(1, d // 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    return gm, physics, iv.Problem(physics, y, sigma_y=0.1)


# ---- class 4: float64 physics -------------------------------------------------------------------


@pytest.mark.parametrize("sampler", sorted(set(SMALL) & set(iv.samplers.names())))
def test_every_sampler_runs_float64_matrix_physics(sampler):
    gm, physics, problem = float64_problem()
    post = iv.sample(sampler, gm, problem, n_samples=2, generator=torch.Generator().manual_seed(0), **SMALL[sampler])
    assert post.samples.dtype == torch.float64 and post.samples.shape == (2, 1, 16)
    assert torch.isfinite(post.samples).all()
    assert gm.model_problem(problem).dtype == torch.float64


def test_float32_physics_keeps_float32_state():
    gm = mixture()
    physics = LinearPhysics(A=lambda x: x[:, ::2], A_adjoint=lambda y: torch.stack([y, torch.zeros_like(y)], -1).flatten(1))
    problem = iv.Problem(physics, torch.zeros(1, 8), sigma_y=0.1)
    assert gm.model_problem(problem).dtype == torch.float32
    post = iv.sample("dps", gm, problem, generator=torch.Generator().manual_seed(0), steps=3)
    assert post.samples.dtype == torch.float32


def test_float32_network_prior_on_float64_physics():
    """A float32 network prior meets the float64 state in float32 (cast in and out, one place)."""
    prior = tiny_prior((1, 8, 8))
    matrix = torch.randn(20, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 8
    physics = LinearPhysics(A=lambda x: x.flatten(1) @ matrix.T, A_adjoint=lambda y: (y @ matrix).reshape(-1, 1, 8, 8))
    y = physics.A(torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    problem = iv.Problem(physics, y, sigma_y=0.01, prior=prior)
    post = iv.sample("dps", prior, problem, generator=torch.Generator().manual_seed(0), steps=3)
    assert post.samples.dtype == torch.float64 and torch.isfinite(post.samples).all()


# ---- class 2: sizes -----------------------------------------------------------------------------


def test_prior_of_another_size_fails_early_naming_prior_and_shapes():
    prior = tiny_prior((1, 16, 16))
    physics = ops.make("ct", img_size=32, views=8)
    y = physics.A(torch.zeros(1, 1, 32, 32))
    with pytest.raises(DataError, match=r"prior 'tiny'.*\(1, 16, 16\)") as err:
        iv.Problem(physics, y, sigma_y=0.01, prior=prior)
    assert "\n" not in str(err.value)
    problem = iv.Problem(physics, y, sigma_y=0.01)  # without prior=: refused at sample() start
    with pytest.raises(DataError, match=r"prior 'tiny'"):
        iv.sample("dps", prior, problem, steps=2)


def test_measurement_of_the_wrong_shape_is_refused_at_sample_start():
    prior = tiny_prior((1, 16, 16))
    physics = ops.make("gaussian-blur", std=1.0, kernel_size=5)  # accepts any image size
    calls = []
    with pytest.raises(DataError, match=r"measurement y has shape \(1, 1, 20, 20\).*\(1, 1, 16, 16\)"):
        iv.sample("dps", prior, iv.Problem(physics, torch.zeros(1, 1, 20, 20), sigma_y=0.01), steps=2,
                  callback=calls.append)
    assert calls == []  # nothing sampled
    with pytest.raises(DataError, match="measurement y"):
        iv.Problem(physics, torch.zeros(2, 1, 20, 20), sigma_y=0.01, prior=prior)


def test_probe_runs_once_per_prior():
    gm = mixture()
    seen = []
    matrix = torch.eye(16, dtype=torch.float64)[::2]
    physics = LinearPhysics(A=lambda x: seen.append(x.shape) or x.to(matrix.dtype) @ matrix.T,
                            A_adjoint=lambda y: y @ matrix)
    problem = iv.Problem(physics, torch.zeros(1, 8, dtype=torch.float64), sigma_y=0.1, prior=gm)
    problem.to_model(torch.zeros(1, 16))
    assert gm.model_problem(problem) is gm.model_problem(problem) and len(seen) == 1


# ---- class 1: magnitude priors on complex physics -----------------------------------------------


def test_one_channel_prior_on_complex_mri_sees_the_real_channel():
    prior = tiny_prior((1, 16, 16))
    physics = ops.make("mri", img_size=16)
    truth = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = physics.A(torch.cat([truth, torch.zeros_like(truth)], 1))
    problem = iv.Problem(physics, y, sigma_y=0.01, prior=prior)
    view = prior.model_problem(problem)
    assert view.fit.adapter == "real-image" and isinstance(view.physics, LinearRealImagePhysics)
    torch.testing.assert_close(view.physics.A(truth), y)
    # the adapter's adjoint is the adjoint of its forward map
    u = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    lhs = (view.physics.A(u) * r).sum()
    rhs = (u * view.physics.A_adjoint(r)).sum()
    assert math.isclose(float(lhs), float(rhs), rel_tol=1e-4)
    for sampler, kw in (("dps", dict(steps=2)), ("pigdm", dict(steps=2)), ("daps", SMALL["daps"])):
        post = iv.sample(sampler, prior, problem, n_samples=2, generator=torch.Generator().manual_seed(0), **kw)
        assert post.samples.shape == (2, 1, 1, 16, 16) and torch.isfinite(post.samples).all()


def test_two_channel_prior_on_mri_is_not_adapted_and_one_channel_on_real_physics_neither():
    physics = ops.make("mri", img_size=16)
    y = physics.A(torch.zeros(1, 2, 16, 16))
    assert tiny_prior((2, 16, 16)).model_problem(iv.Problem(physics, y, sigma_y=0.01)).fit.adapter is None
    blur = ops.make("gaussian-blur", std=1.0, kernel_size=5)
    assert tiny_prior((1, 16, 16)).model_problem(iv.Problem(blur, torch.zeros(1, 1, 16, 16), sigma_y=0.01)).fit.adapter is None
    assert not isinstance(real_image_physics(ops.make("phase-retrieval", img_size=8))
                          if "phase-retrieval" in ops.names() else LinearPhysics(), LinearRealImagePhysics)


# ---- class 3: hyperparameter values -------------------------------------------------------------


@pytest.mark.parametrize("sampler,field,value,match", [
    ("dps", "zeta", float("nan"), "finite"),
    ("dps", "zeta", float("inf"), "finite"),
    ("dps", "steps", 0, ">= 1"),
    ("dps", "steps", -3, ">= 1"),
    ("dps", "steps", 2.5, "integer"),
    ("daps", "levels", 0, ">= 1"),
    ("daps", "mc_steps", -1, ">= 0"),
    ("daps", "lr", float("nan"), "finite"),
    ("mcgdiff", "particles", 0, ">= 1"),
    ("pigdm", "steps", "ten", "integer"),
    ("mcg", "noise_aware", 1, "true or false"),
])
def test_configure_refuses_bad_values_naming_sampler_and_field(sampler, field, value, match):
    with pytest.raises(ConfigError, match=rf"{sampler}: hyperparameter {field} must .*{match}"):
        iv.samplers.configure(sampler, **{field: value})


def test_configure_accepts_valid_values_and_integral_floats():
    assert iv.samplers.configure("dps", steps=10.0).steps == 10
    assert iv.samplers.configure("daps", mc_steps=0).mc_steps == 0
    for name in iv.samplers.names():  # every default and preset passes the generic checks
        iv.samplers.configure(name)
        for preset in getattr(iv.samplers.get(name), "PRESETS", {}):
            iv.samplers.configure(name, preset)
    with pytest.raises(UnknownOptionError, match="zeta"):
        iv.samplers.configure("dps", zetta=1.0)


def test_sample_with_nan_zeta_fails_before_sampling():
    gm, _, problem = float64_problem()
    with pytest.raises(ConfigError, match="dps: hyperparameter zeta must be finite"):
        iv.sample("dps", gm, problem, zeta=float("nan"))
