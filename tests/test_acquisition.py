"""Active Diffusion Subsampling (issue 16): column scores, the growing mask, determinism, errors.

The benefit over fixed masks is measured in ``benchmarks/ads/`` (held-out brains, the shipped
``mri-brain64`` prior); here the mechanism is checked on a tiny random prior, where the chosen
columns mean nothing but the bookkeeping must be exact.
"""

from __future__ import annotations

import pytest
import torch

from invsolve.acquisition import acs_columns, active_sample, column_scores
from operators.errors import ConfigError, DataError
from operators.mri import SingleCoilMRI

from helpers import tiny_prior

H = W = 16


def _prior():
    with torch.random.fork_rng():  # the same random network every call, the global RNG untouched
        torch.manual_seed(0)
        return tiny_prior((1, H, W))


def _particles_differing_at(columns, J=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 2, H, W, generator=g).expand(J, -1, -1, -1).clone()
    for c, scale in columns.items():
        base[..., c] += scale * torch.randn(J, 2, H, generator=g)
    return base


@pytest.mark.parametrize("strategy", ["variance", "entropy"])
def test_the_column_where_particles_disagree_most_scores_highest(strategy):
    kspace = _particles_differing_at({3: 1.0, 11: 3.0})
    measured = torch.zeros(W, dtype=torch.bool)
    scores = column_scores(kspace, measured, strategy)
    assert int(scores.argmax()) == 11
    assert scores[3] > scores[0]  # columns where all particles agree score lowest
    measured[11] = True
    scores = column_scores(kspace, measured, strategy)
    assert scores[11] == float("-inf") and int(scores.argmax()) == 3


def test_acs_columns_are_centred_like_fastmri():
    assert acs_columns(16, 4) == [6, 7, 8, 9]
    assert acs_columns(15, 3) == [6, 7, 8]
    with pytest.raises(ConfigError, match="acs"):
        acs_columns(16, 17)


def _full_kspace(seed=0):
    truth = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(seed))
    physics = SingleCoilMRI(mask=torch.ones(H, W), img_size=(H, W))
    return physics.A(torch.cat([truth, torch.zeros_like(truth)], dim=1))


def _run(strategy="variance", seed=1, lines=7, acs=3, **kw):
    prior = _prior()
    kw = dict(dict(steps=12, zeta=1.0), **kw)
    return active_sample(prior, _full_kspace(), (H, W), lines=lines, acs=acs, sigma_y=0.01, n_samples=3,
                         generator=torch.Generator().manual_seed(seed), strategy=strategy, **kw)


@pytest.mark.parametrize("strategy", ["variance", "entropy"])
def test_the_mask_grows_to_the_budget_with_the_acs_and_the_data_of_the_chosen_columns(strategy):
    calls = []
    out = _run(strategy, callback=lambda info: calls.append(int(info["step"])))
    assert out.mask.dtype == torch.bool and out.mask.shape == (W,)
    assert int(out.mask.sum()) == 7
    assert out.mask[acs_columns(W, 3)].all()
    chosen = [c for _, c in out.order]
    assert len(chosen) == 4 and len(set(chosen)) == 4 and not set(chosen) & set(acs_columns(W, 3))
    assert set(chosen) | set(acs_columns(W, 3)) == set(torch.nonzero(out.mask).flatten().tolist())
    steps = [s for s, _ in out.order]
    assert steps == sorted(steps) and 0 <= steps[0] and steps[-1] < 12 // 2  # inside [start, stop) x steps
    assert calls == list(range(len(calls))) and len(calls) > 0  # the user's callback still runs every step
    assert out.posterior.samples.shape == (3, 1, 1, H, W) and torch.isfinite(out.posterior.samples).all()


def test_same_seed_same_mask_and_samples_other_seed_other_draws():
    a, b, c = _run(seed=1), _run(seed=1), _run(seed=2)
    assert torch.equal(a.mask, b.mask) and a.order == b.order
    assert torch.equal(a.posterior.samples, b.posterior.samples)
    assert not torch.equal(a.posterior.samples, c.posterior.samples)


def test_acs_only_budget_acquires_nothing():
    out = _run(lines=3, acs=3)
    assert out.order == [] and int(out.mask.sum()) == 3


def test_a_scanner_callable_is_asked_only_for_the_columns_it_measures():
    full = _full_kspace()
    asked = []

    def scanner(column):
        asked.append(column)
        return full[..., column]

    out = active_sample(_prior(), scanner, (H, W), lines=6, acs=2, sigma_y=0.01, n_samples=2,
                        generator=torch.Generator().manual_seed(0), steps=10, zeta=1.0)
    assert sorted(asked) == sorted(torch.nonzero(out.mask).flatten().tolist())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sampler="ddrm"), ConfigError, "active_sample runs"),
    (dict(strategy="random"), ConfigError, "strategy"),
    (dict(lines=2, acs=3), ConfigError, "acs <= lines"),
    (dict(lines=17), ConfigError, "lines"),
    (dict(start=0.6, stop=0.5), ConfigError, "start"),
])
def test_bad_settings_are_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        _run(**kwargs)


def test_wrong_kspace_shapes_are_data_errors():
    prior = _prior()
    with pytest.raises(DataError, match="full k-space"):
        active_sample(prior, torch.zeros(1, 2, H, W + 1), (H, W), lines=6, acs=2, sigma_y=0.01, steps=10)
    with pytest.raises(DataError, match=r"acquire\(\d+\) must return"):
        active_sample(prior, lambda c: torch.zeros(2, H), (H, W), lines=6, acs=2, sigma_y=0.01, steps=10)
