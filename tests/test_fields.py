"""Darcy permeability fields (invsolve.fields) and the darcy-fields training source (issue 16)."""

from __future__ import annotations

import pytest
import torch

import invsolve as iv
import operators as ops
from invsolve.fields import HELDOUT_FIELD_SEED, fields_from_seeds, heldout_fields, random_fields
from invsolve.priors import datasets
from invsolve.priors.train_config import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


def test_fields_are_seeded_two_valued_and_held_out_apart():
    a = random_fields(6, 32, torch.Generator().manual_seed(0))
    b = random_fields(6, 32, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (6, 1, 32, 32) and a.dtype == torch.float32
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, random_fields(6, 32, torch.Generator().manual_seed(1)))
    held = heldout_fields(3, 32)
    assert torch.equal(held, fields_from_seeds(range(HELDOUT_FIELD_SEED, HELDOUT_FIELD_SEED + 3), 32))
    seeds = torch.randint(0, HELDOUT_FIELD_SEED, (1000,), generator=torch.Generator().manual_seed(0))
    assert int(seeds.max()) < HELDOUT_FIELD_SEED  # training seeds never reach the held-out ones


def test_fields_are_smooth_random_fields_thresholded_at_zero():
    """Zero-mean GRF thresholded at 0: about half the cells high on average, and large connected
    regions (a white-noise threshold would flip between neighbours half the time)."""
    f = random_fields(64, 64, torch.Generator().manual_seed(3))
    assert 0.35 < float(f.mean()) < 0.65
    flips = float((f[..., 1:, :] != f[..., :-1, :]).float().mean())
    assert flips < 0.1, flips


def test_fields_are_permeabilities_of_the_darcy_operator():
    box = ops.make("darcy")
    field = heldout_fields(1)
    a = box.permeability(field[0, 0].numpy())
    assert set(a.round(6).flatten().tolist()) <= {3.0, 12.0}  # FNO's two values
    readings = box.A(field)
    assert torch.isfinite(readings).all() and float(readings.abs().max()) > 0


@pytest.mark.parametrize("source", sorted(datasets.GENERATED_SOURCES))
def test_generated_sources_validate_on_training_seeds_and_keep_the_held_out_set_apart(source):
    gen = datasets.GENERATED_SOURCES[source]
    config = TrainConfig(name="t", data=source, size=16, val_images=4)
    data = datasets.build(config)
    assert data.physical_range == (0.0, 1.0) and (data.scale, data.offset) == (2.0, -1.0)
    assert data.validation.shape == (4, 1, 16, 16)
    assert not torch.equal(data.validation, gen.heldout(4, 16))  # validation is not the held-out set
    assert data.description["source"] == gen.label(gen.train)
    batch = data.sample(3, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 1, 16, 16) and float(batch.min()) >= 0 and float(batch.max()) <= 1
    with pytest.raises(Exception, match=source):
        datasets.build(TrainConfig(name="t", data=source, size=16, augment=("flip",)))


def test_shipped_field_prior_was_trained_on_darcy_fields_and_evaluated_on_held_out_ones():
    card = iv.load_prior("darcy-fields64").card
    assert card.shape == (1, 64, 64)
    assert card.metadata["recipe"]["data"] == "darcy-fields"
    evaluation = card.metadata["evaluation"]
    assert "heldout_fields" in evaluation["data"]["source"]
    assert evaluation["images"] >= 8
    assert evaluation["gain_db"] >= 1.0  # the shipping bar of tests/test_prior_quality.py
