import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import invsolve as iv
from invsolve.priors.train_config import ema_decay_at
from invsolve.priors.training import TrainConfig, train

TINY = dict(name="tiny-test", size=16, channels=(8, 16), attention=(), batch=4, warmup=2, checkpoint_every=1)


def test_resumed_training_equals_uninterrupted(tmp_path):
    straight = train(TrainConfig(steps=4, **TINY), tmp_path / "a", progress=False)
    first = train(TrainConfig(steps=2, **TINY), tmp_path / "b", progress=False)
    assert first is not None
    resumed = train(TrainConfig(steps=4, **TINY), tmp_path / "b", progress=False)
    wa, wb = load_file(str(straight / "weights.safetensors")), load_file(str(resumed / "weights.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    card = json.loads((resumed / "card.json").read_text())
    assert card["metadata"]["training"]["steps"] == 4


def test_run_dir_with_other_configuration_is_refused(tmp_path):
    train(TrainConfig(steps=1, **TINY), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train(TrainConfig(steps=2, **{**TINY, "lr": 0.5}), tmp_path / "run", progress=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prior")
    return train(TrainConfig(steps=1, **TINY), folder, progress=False)


def test_load_prior_round_trip(exported):
    prior = iv.load_prior(exported)
    assert prior.card.name == "tiny-test" and prior.shape == (1, 16, 16)
    x = torch.randn(2, 1, 16, 16)
    out = prior(x, 0.5)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(prior.to_physical(prior.to_model(x)), x)


def _copy(exported, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("card.json", "weights.safetensors"):
        (folder / name).write_bytes((exported / name).read_bytes())
    return folder


def test_missing_and_unexpected_keys_are_listed(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    state = load_file(str(folder / "weights.safetensors"))
    state.pop("stem.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "weights.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): stem.weight.*unexpected keys \(1\): extra.weight"):
        iv.load_prior(folder, verify=False)


def test_checksum_mismatch_and_corrupt_file(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    data = bytearray((folder / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        iv.load_prior(folder)
    (folder / "weights.safetensors").write_bytes(bytes(data[:100]))
    with pytest.raises(ValueError, match="not a readable safetensors"):
        iv.load_prior(folder, verify=False)


def test_unknown_prior_name_lists_known():
    with pytest.raises(FileNotFoundError, match="no prior named"):
        iv.load_prior("no-such-prior")


def test_flow_objective_exports_a_flow_prior_whose_denoiser_follows_the_velocity(tmp_path):
    out = train(TrainConfig(steps=2, objective="flow", **TINY), tmp_path / "flow", progress=False)
    prior = iv.load_prior(out)
    assert prior.card.kind == "flow" and prior.card.parameterization == "flow-velocity"
    net = prior.denoiser.net
    x, sigma = torch.randn(2, 1, 16, 16), 0.7
    t = sigma / (1 + sigma)
    x_t = x / (1 + sigma)
    expected = x_t - t * net(x_t, torch.full((2,), t))
    torch.testing.assert_close(prior(x, sigma), expected)
    with pytest.raises(ValueError, match="objective"):
        train(TrainConfig(steps=1, objective="score", **TINY), tmp_path / "bad", progress=False)


def test_cli_info_and_list_show_the_card(capsys):
    from invsolve.cli import main

    assert main(["info", "ct-phantom64"]) == 0
    out = capsys.readouterr().out
    assert "diffusion (edm)" in out and "1590113 parameters" in out and "sha256" in out
    assert main(["list", "priors"]) == 0
    assert "ct-phantom64\tdiffusion/edm\t1x64x64" in capsys.readouterr().out
    assert main(["info", "no-such-prior"]) == 2
    assert "no prior named" in capsys.readouterr().err


def test_run_written_by_an_older_version_resumes(tmp_path):
    """config.json of a run started before newer options existed lacks their keys (and JSON has
    no tuples): it must resume with the defaults, not be refused as a different configuration."""
    run = tmp_path / "run"
    train(TrainConfig(steps=1, **TINY), run, progress=False)
    config = json.loads((run / "config.json").read_text())
    newer = [k for k in ("objective", "augment", "percentiles", "val_sigmas") if k in config]
    for key in newer:
        del config[key]
    (run / "config.json").write_text(json.dumps(config))
    assert newer, "no newer key to drop: update this test"
    assert train(TrainConfig(steps=2, **TINY), run, progress=False) is not None


def test_ema_rampup_follows_edm_and_reaches_the_plain_decay():
    assert ema_decay_at(0.999, 0.05, 0) == 0.0  # the first update copies the weights (EDM: beta 0 at nimg 0)
    assert ema_decay_at(0.999, 0.05, 20) == pytest.approx(0.5)  # half-life 0.05 * 20 = 1 step
    assert ema_decay_at(0.999, 0.0, 5) == 0.999  # ramp-up off: the plain EMA
    k = int(math.log(0.5) / math.log(0.999) / 0.05) + 1  # first step whose ramped half-life passes 0.999's
    assert ema_decay_at(0.999, 0.05, k) == 0.999  # exactly the decay once the ramp passes its half-life
    assert ema_decay_at(0.999, 0.05, k - 40) < 0.999
    with pytest.raises(ValueError, match="ema_rampup"):
        TrainConfig(ema_rampup=-1.0, **TINY).validate()


def test_ema_rampup_changes_the_export_and_legacy_runs_resume_as_plain_ema(tmp_path):
    """A run folder recorded before ``ema_rampup`` existed ran a plain EMA: it resumes only with
    ``ema_rampup=0`` (its recorded behaviour), and the ramp-up changes the exported weights."""
    ramped = train(TrainConfig(steps=2, **TINY), tmp_path / "a", progress=False)
    plain = train(TrainConfig(steps=2, ema_rampup=0.0, **TINY), tmp_path / "b", progress=False)
    wa, wb = load_file(str(ramped / "weights.safetensors")), load_file(str(plain / "weights.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    run = tmp_path / "legacy"
    train(TrainConfig(steps=1, ema_rampup=0.0, **TINY), run, progress=False)
    config = json.loads((run / "config.json").read_text())
    del config["ema_rampup"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="ema_rampup"):
        train(TrainConfig(steps=2, **TINY), run, progress=False)
    assert train(TrainConfig(steps=2, ema_rampup=0.0, **TINY), run, progress=False) is not None
