"""Latent priors trained by ``invsolve train --latent-channels``: the autoencoder stage, then the prior on
its latents; one folder that ``load_prior`` returns as a ``LatentPrior`` (issue 17)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import invsolve as iv
import operators as ops
from invsolve.errors import CheckpointError, ConfigError
from invsolve.priors.autoencoder import Autoencoder
from invsolve.priors.latent import LatentPrior
from invsolve.priors.training import TrainConfig, train

TINY = dict(name="tiny-latent", objective="flow", size=16, channels=(8, 16), attention=(), batch=4, warmup=2,
            checkpoint_every=1, latent_channels=2, ae_channels=(4, 8), ae_steps=3, steps=3, val_every=2,
            val_images=4)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return train(TrainConfig(**TINY), tmp_path_factory.mktemp("latent"), progress=False)


def _weights(folder):
    return {**load_file(str(folder / "weights.safetensors")),
            **{f"ae.{k}": v for k, v in load_file(str(folder / "autoencoder.safetensors")).items()}}


def test_autoencoder_shapes_and_scale():
    ae = Autoencoder(1, 4, (8, 16, 32))
    x = torch.randn(3, 1, 32, 32)
    z = ae.encode(x)
    assert z.shape == (3, 4, 8, 8) and ae.decode(z).shape == x.shape
    ae.latent_scale.fill_(2.0)
    torch.testing.assert_close(ae.encode(x), 2 * ae.encode_raw(x))
    with pytest.raises(ValueError, match="divisible by 4"):
        ae.encode(torch.randn(1, 1, 30, 30))


def test_resumed_latent_training_equals_uninterrupted(tmp_path):
    straight = train(TrainConfig(**TINY), tmp_path / "a", progress=False, evaluate=False)
    run = tmp_path / "b"
    stops = 0
    while train(TrainConfig(**TINY), run, progress=False, max_seconds=1e-9, evaluate=False) is None:
        stops += 1  # every call stops after one step: through the autoencoder stage and the prior's
        assert stops < 20
    assert stops >= TINY["ae_steps"] + TINY["steps"] - 2
    wa, wb = _weights(straight), _weights(run)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_exported_folder_loads_as_a_latent_prior_with_both_recipes(exported):
    prior = iv.load_prior(exported)
    assert isinstance(prior, LatentPrior) and prior.card.name == "tiny-latent"
    assert prior.shape == (2, 8, 8) and prior.image_shape == (1, 16, 16)
    card = json.loads((exported / "card.json").read_text())
    meta = card["metadata"]
    assert meta["recipe"]["latent_channels"] == 2 and meta["recipe"]["ae_steps"] == 3
    ae = meta["autoencoder"]
    assert ae["training"]["steps"] == 3 and ae["training"]["latent_scale"] > 0
    assert (ae["image_scale"], ae["image_offset"]) == (2.0, -1.0)
    evaluation = meta["evaluation"]
    assert {"prior_psnr_db", "tv_psnr_db", "gain_db", "autoencoder_psnr_db", "latent_sigma"} <= set(evaluation)
    x = torch.rand(2, 1, 16, 16)
    assert prior.decode(prior.encode(x)).shape == x.shape


def test_samplers_run_on_the_trained_latent_prior_and_return_images(exported):
    prior = iv.load_prior(exported)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    physics = ops.make("inpainting", img_size=16)
    problem = iv.Problem(physics, physics.A(x), sigma_y=0.05)
    for name, options in (("flowdps", {"steps": 4}), ("dps", {"steps": 4})):
        a = iv.sample(name, prior, problem, n_samples=2, generator=torch.Generator().manual_seed(3), **options)
        b = iv.sample(name, prior, problem, n_samples=2, generator=torch.Generator().manual_seed(3), **options)
        assert a.samples.shape[-3:] == (1, 16, 16) and a.samples.shape[0] == 2
        torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)


def test_damaged_autoencoder_file_is_named(exported, tmp_path):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    path = folder / "autoencoder.safetensors"
    state = load_file(str(path))
    key = next(iter(state))
    state[key] = state[key] + 1
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="autoencoder.safetensors does not match the sha256"):
        iv.load_prior(folder)
    iv.load_prior(folder, verify=False)  # verify=False loads the changed weights
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="autoencoder.safetensors"):
        iv.load_prior(folder, verify=False)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="autoencoder.safetensors"):
        iv.load_prior(folder)
    card = json.loads((folder / "card.json").read_text())
    card["metadata"]["autoencoder"]["architecture"] = "someone.else.VAE"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="metadata.autoencoder.architecture"):
        iv.load_prior(folder)


@pytest.mark.parametrize("overrides, field", [
    ({"size": 18}, "size"), ({"ae_channels": (4, 8, 8, 8, 8, 8)}, "size"), ({"channels": (8, 16, 16, 16, 16)}, "latent size"),
    ({"ae_beta": -1.0}, "ae_beta"), ({"ae_steps": 0}, "ae_steps"), ({"ae_channels": ()}, "ae_channels"),
    ({"latent_channels": -1}, "latent_channels"),
])
def test_bad_latent_config_is_refused_before_any_work(tmp_path, overrides, field):
    with pytest.raises(ConfigError, match=field):
        train(TrainConfig(**{**TINY, **overrides}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
