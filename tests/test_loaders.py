"""Checkpoint loaders: each real layout is rebuilt from the same architecture with random weights,
saved as the official code saves it, loaded with ``iv.load_prior`` and checked against the formula
applied to the raw network; corrupted, truncated, mismatched and code-executing files are refused."""

import json
import math
import pickle

import pytest
import torch
from torch.nn import functional as F

import invsolve as iv
from invsolve.priors.checkpoints import adm, score_sde
from invsolve.priors.checkpoints.io import CorruptCheckpointError, UnsafeCheckpointError
from invsolve.priors.checkpoints.songunet import build_songunet

GEN = torch.Generator().manual_seed(0)


def randomise(module, seed=0, scale=0.2):
    """Random values for every parameter (official inits zero some layers, which would hide mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def col(v, x):
    return torch.as_tensor(v, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


# ----------------------------------------------------------------------------- ADM (guided-diffusion)

def test_official_adm_configurations_have_the_official_parameter_counts():
    for config, count in adm.OFFICIAL_PARAMETERS.items():
        official = adm.build_official(config)  # deepinv DiffUNet on the meta device: no memory
        assert sum(p.numel() for p in official.parameters()) == count
        with torch.device("meta"):
            ours = adm.GuidedDiffusionUNet(**adm._normalise_config(adm.OFFICIAL[config]))
        theirs = {k: v.shape for k, v in official.state_dict().items() if k not in adm.DIFFUNET_BUFFERS}
        assert {k: v.shape for k, v in ours.state_dict().items()} == theirs
    assert adm.OFFICIAL_PARAMETERS == {"ffhq256": 93_563_910, "imagenet256-uncond": 552_814_086}


ADM_TINY = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                num_head_channels=32, learn_sigma=True, resblock_updown=True, in_channels=3)


@pytest.fixture(scope="module")
def adm_file(tmp_path_factory):
    net = randomise(adm.GuidedDiffusionUNet(**adm._normalise_config(ADM_TINY)), seed=1, scale=0.05).eval()
    path = tmp_path_factory.mktemp("adm") / "tiny_adm.pt"
    torch.save(net.state_dict(), path)  # guided-diffusion files are plain state dicts
    return path, net


def test_adm_denoiser_is_vp_eps_of_the_raw_network_without_variance_channels(adm_file):
    path, net = adm_file
    prior = iv.load_prior(path, config=ADM_TINY)
    assert prior.card.parameterization == "vp-eps" and prior.card.shape == (3, 16, 16)
    assert (prior.card.scale, prior.card.offset) == (2.0, -1.0)
    schedule = iv.priors.DDPMSchedule()
    k = 417  # sigma exactly on the discrete schedule: t(sigma) = k
    sigma = float(schedule.sigmas[k])
    x = torch.randn(2, 3, 16, 16, generator=GEN)
    with torch.no_grad():
        out = net(x / math.sqrt(1 + sigma ** 2), torch.full((2,), float(k)))
        assert out.shape[1] == 6  # [eps, learned variance]
        expected = x - sigma * out[:, :3]
        torch.testing.assert_close(prior(x, sigma), expected, rtol=1e-4, atol=1e-4)


def test_adm_mismatched_file_lists_keys(adm_file, tmp_path):
    path, net = adm_file
    state = dict(net.state_dict())
    state.pop("out.2.weight")
    state["input_blocks.0.0.weight"] = torch.zeros(32, 4, 3, 3)
    state["label_emb.bogus"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"missing keys \(1\): out.2.weight.*unexpected keys \(1\): label_emb.bogus"
                                         r".*wrong shapes \(1\): input_blocks.0.0.weight"):
        iv.load_prior(bad, format="adm", config=ADM_TINY)


# ----------------------------------------------------------------------------- score_sde NCSN++ (AAPM layout)

SDE_TINY = dict(image_size=16, num_channels=1, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def _fir(x):
    k = torch.outer(torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([1.0, 3.0, 3.0, 1.0])).to(x.dtype)
    return (k / k.sum()).expand(x.shape[1], 1, 4, 4)


def _down(x):  # score_sde downsample_2d: pad (1, 1), FIR, every 2nd sample
    return F.conv2d(F.pad(x, (1, 1, 1, 1)), _fir(x), stride=2, groups=x.shape[1])


def _up(x):  # score_sde upsample_2d: zero insertion, pad (2, 1), FIR with gain 4
    b, c, h, w = x.shape
    z = x.new_zeros(b, c, 2 * h, 2 * w)
    z[..., ::2, ::2] = x
    return F.conv2d(F.pad(z, (2, 1, 2, 1)), 4 * _fir(x), groups=c)


def score_sde_reference(p, cfg, x, sigma):
    """Independent transcription of score_sde NCSNpp.forward (fourier, biggan, progressive_input 'residual',
    progressive 'none', skip_rescale) over score_sde-named weights ``all_modules.N.*``."""
    counter = iter(range(10_000))

    def nxt():
        return f"all_modules.{next(counter)}"

    def gn(h, n):
        return F.group_norm(h, min(h.shape[1] // 4, 32), p[n + ".weight"], p[n + ".bias"], eps=1e-6)

    def conv(h, n, stride=1, pad=None):
        w = p[n + ".weight"]
        return F.conv2d(h, w, p[n + ".bias"], stride=stride, padding=w.shape[-1] // 2 if pad is None else pad)

    def res(h, m, up=False, down=False):
        y = F.silu(gn(h, m + ".GroupNorm_0"))
        if up:
            y, h = _up(y), _up(h)
        elif down:
            y, h = _down(y), _down(h)
        y = conv(y, m + ".Conv_0") + F.linear(F.silu(temb), p[m + ".Dense_0.weight"], p[m + ".Dense_0.bias"])[..., None, None]
        y = conv(F.silu(gn(y, m + ".GroupNorm_1")), m + ".Conv_1")
        if m + ".Conv_2.weight" in p:
            h = conv(h, m + ".Conv_2")
        return (h + y) / math.sqrt(2)

    def nin(h, n):
        return torch.einsum("bchw,cd->bdhw", h, p[n + ".W"]) + p[n + ".b"][:, None, None]

    def attn(h, m):
        b, c, hh, ww = h.shape
        y = gn(h, m + ".GroupNorm_0")
        q, k, v = (nin(y, f"{m}.NIN_{j}") for j in range(3))
        w = torch.einsum("bchw,bcij->bhwij", q, k) * c ** -0.5
        w = F.softmax(w.reshape(b, hh, ww, -1), dim=-1).reshape(b, hh, ww, hh, ww)
        return (h + nin(torch.einsum("bhwij,bcij->bchw", w, v), m + ".NIN_3")) / math.sqrt(2)

    proj = torch.log(sigma)[:, None] * p[nxt() + ".W"][None] * 2 * math.pi
    temb = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
    m = nxt()
    temb = F.linear(temb, p[m + ".weight"], p[m + ".bias"])
    m = nxt()
    temb = F.linear(F.silu(temb), p[m + ".weight"], p[m + ".bias"])
    x = 2 * x - 1  # data.centered = False
    pyramid, hs, levels = x, [conv(x, nxt())], len(cfg["ch_mult"])
    for level in range(levels):
        for _ in range(cfg["num_res_blocks"]):
            h = res(hs[-1], nxt())
            if h.shape[-1] in cfg["attn_resolutions"]:
                h = attn(h, nxt())
            hs.append(h)
        if level != levels - 1:
            h = res(hs[-1], nxt(), down=True)
            m = nxt() + ".Conv2d_0"  # conv_downsample_2d: pad 2, FIR, conv stride 2
            pyramid = conv(F.conv2d(F.pad(pyramid, (2, 2, 2, 2)), _fir(pyramid), groups=pyramid.shape[1]), m, 2, 0)
            pyramid = h = (pyramid + h) / math.sqrt(2)
            hs.append(h)
    h = res(hs[-1], nxt())
    h = res(attn(h, nxt()), nxt())
    for level in reversed(range(levels)):
        for _ in range(cfg["num_res_blocks"] + 1):
            h = res(torch.cat([h, hs.pop()], dim=1), nxt())
        if h.shape[-1] in cfg["attn_resolutions"]:
            h = attn(h, nxt())
        if level:
            h = res(h, nxt(), up=True)
    h = conv(F.silu(gn(h, nxt())), nxt())
    return h / sigma[:, None, None, None]


def score_sde_checkpoint(seed_model=2, seed_ema=3, num_scales=50):
    """A checkpoint in the layout of run_lib.py / utils.save_checkpoint (AAPM checkpoint_185.pth)."""
    cfg = score_sde.normalise_config(SDE_TINY)
    shapes = score_sde.expected_shapes(cfg, build_songunet(score_sde.songunet_config(cfg)).state_dict())

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return {k: torch.randn(s, generator=g) * (16.0 if k == "all_modules.0.W" else 0.15) for k, s in shapes.items()}

    model, ema = draw(seed_model), draw(seed_ema)
    ema["all_modules.0.W"] = model["all_modules.0.W"]  # not trainable: not in the EMA
    trainable = [k for k in shapes if score_sde.trainable(k)]
    sigmas = torch.exp(torch.linspace(math.log(378.0), math.log(0.01), num_scales, dtype=torch.float64))
    params = [torch.nn.Parameter(model[k].clone()) for k in trainable]
    opt = torch.optim.Adam(params, lr=2e-4)
    sum((q ** 2).sum() for q in params).backward()
    opt.step()
    state = {"module." + k: v for k, v in model.items()}
    state["module.sigmas"] = sigmas
    ckpt = {"optimizer": opt.state_dict(), "model": state,
            "ema": {"decay": 0.999, "num_updates": 185, "shadow_params": [ema[k] for k in trainable]}, "step": 185000}
    return ckpt, cfg, model, ema


@pytest.fixture(scope="module")
def sde_file(tmp_path_factory):
    ckpt, cfg, model, ema = score_sde_checkpoint()
    path = tmp_path_factory.mktemp("sde") / "checkpoint_185.pth"
    torch.save(ckpt, path)
    return path, cfg, model, ema, ckpt


def test_score_sde_selects_ema_and_matches_score_sde_forward(sde_file):
    path, cfg, model, ema, _ = sde_file
    prior = iv.load_prior(path, config=SDE_TINY)  # format detected: score_sde
    card = prior.card
    assert card.parameterization == "ve-score" and card.metadata["weights"] == "ema"
    assert (card.sigma_min, card.sigma_max) == pytest.approx((0.01, 378.0))
    assert card.shape == (1, 16, 16) and (card.scale, card.offset) == (1.0, 0.0)
    x = torch.rand(2, 1, 16, 16, generator=GEN)
    sigma = torch.tensor([0.05, 3.0])
    noisy = x + col(sigma, x) * torch.randn(x.shape, generator=GEN)
    with torch.no_grad():
        expected = noisy + col(sigma, x) ** 2 * score_sde_reference(ema, cfg, noisy, sigma)
        raw = noisy + col(sigma, x) ** 2 * score_sde_reference(model, cfg, noisy, sigma)
        got = prior(noisy, sigma)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (got - raw).abs().max() > 1e-2  # the EMA, not the training weights, was loaded
    with torch.no_grad():
        torch.testing.assert_close(iv.load_prior(path, config=SDE_TINY, ema=False)(noisy, sigma), raw, rtol=1e-4, atol=1e-4)


def test_score_sde_aapm_configuration_builds_on_meta():
    cfg = score_sde.normalise_config("aapm256")
    assert (cfg["sigma_min"], cfg["sigma_max"], cfg["nf"], cfg["ch_mult"]) == (0.01, 378.0, 128, (1, 2, 2, 2))
    net = build_songunet(score_sde.songunet_config(cfg), meta=True)
    table = score_sde.parameter_table(cfg, net.state_dict())
    assert len(score_sde.module_plan(cfg)) == 1 + max(int(s.split(".")[1]) for s, _, _ in table)
    assert sum(p.numel() for p in net.parameters()) == 61_433_473  # deepinv keeps the Fourier W as a buffer
    shapes = score_sde.expected_shapes(cfg, net.state_dict())
    assert sum(math.prod(s) for s in shapes.values()) == 61_433_473 + 128  # score_sde's parameters(), W included


def test_score_sde_mismatches_are_listed(sde_file, tmp_path):
    path, _, _, _, ckpt = sde_file
    with pytest.raises(ValueError, match="wrong shapes"):
        iv.load_prior(path, config={**SDE_TINY, "nf": 64})
    short = dict(ckpt, ema=dict(ckpt["ema"], shadow_params=ckpt["ema"]["shadow_params"][:-1]))
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="EMA holds"):
        iv.load_prior(tmp_path / "short.pth", config=SDE_TINY)
    torch.save({k: v for k, v in ckpt.items() if k != "ema"}, tmp_path / "noema.pth")
    with pytest.raises(ValueError, match="no EMA weights.*ema=False"):
        iv.load_prior(tmp_path / "noema.pth", format="score_sde", config=SDE_TINY)
    with pytest.raises(NotImplementedError, match="progressive"):
        iv.load_prior(path, config={**SDE_TINY, "progressive": "output_skip"})
    with pytest.raises(ValueError, match="sigma table spans"):
        iv.load_prior(path, config={**SDE_TINY, "sigma_max": 100.0})


# ----------------------------------------------------------------------------- EDM SongUNet

EDM_TINY = dict(img_resolution=16, in_channels=2, model_channels=32, channel_mult=(1, 2), num_blocks=1,
                attn_resolutions=(8,), augment_dim=9)


@pytest.mark.parametrize("architecture,suffix", [("ncsnpp", ".pt"), ("ddpmpp", ".safetensors")])
def test_edm_state_dict_is_edm_preconditioned(tmp_path, architecture, suffix):
    from safetensors.torch import save_file

    net = randomise(build_songunet({**EDM_TINY, "architecture": architecture}), seed=4, scale=0.1)
    state = {"model." + k: v.contiguous() for k, v in net.state_dict().items()}  # EDMPrecond.state_dict()
    path = tmp_path / f"edm{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    prior = iv.load_prior(path)  # format and configuration read off the file
    assert prior.card.parameterization == "edm" and prior.card.metadata["config"]["architecture"] == architecture
    assert prior.card.metadata["config"]["augment_dim"] == 9
    x = torch.randn(3, 2, 16, 16, generator=GEN)
    sigma = torch.tensor([0.01, 0.7, 20.0])
    s, sd = col(sigma, x), 0.5
    with torch.no_grad():
        f = net.forward_unet(x / torch.sqrt(s ** 2 + sd ** 2), sigma.log() / 4)
        expected = sd ** 2 / (s ** 2 + sd ** 2) * x + s * sd / torch.sqrt(s ** 2 + sd ** 2) * f
        torch.testing.assert_close(prior(x, sigma), expected, rtol=1e-4, atol=1e-4)


def test_group_norms_follow_the_official_grouping():
    net = build_songunet({**EDM_TINY, "architecture": "ncsnpp"})
    groups = {m.num_channels: m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups[32] == 8 and groups[64] == 16 and groups[96] == 24


# ----------------------------------------------------------------------------- diffusers

@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def write_index(folder, components):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "Pipeline", **components}))


def tiny_unet(diffusers, out_channels):
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=out_channels, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    return randomise(unet, seed=5, scale=0.05).eval()


def test_diffusers_unet_pipeline_is_vp_eps_with_scheduler_betas(diffusers, tmp_path):
    unet = tiny_unet(diffusers, out_channels=2)  # learned variance
    folder = tmp_path / "ddpm-tiny"
    write_index(folder, {"unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]})
    unet.save_pretrained(folder / "unet")
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    sched.save_pretrained(folder / "scheduler")
    prior = iv.load_prior(folder)
    assert prior.card.metadata["format"] == "diffusers-unet" and prior.card.parameterization == "vp-eps"
    abar = sched.alphas_cumprod.double()
    k = 300
    sigma = float(torch.sqrt((1 - abar[k]) / abar[k]))
    x = torch.randn(2, 1, 16, 16, generator=GEN)
    with torch.no_grad():
        eps = unet(x / math.sqrt(1 + sigma ** 2), torch.full((2,), float(k))).sample[:, :1]
        torch.testing.assert_close(prior(x, sigma), x - sigma * eps, rtol=1e-4, atol=1e-4)
    assert prior.card.sigma_max == pytest.approx(float(torch.sqrt((1 - abar[-1]) / abar[-1])))


def test_diffusers_bare_unet_needs_a_scheduler_and_reads_v_prediction(diffusers, tmp_path):
    unet = tiny_unet(diffusers, out_channels=1)
    unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="scheduler="):
        iv.load_prior(tmp_path / "unet")
    prior = iv.load_prior(tmp_path / "unet", scheduler={"prediction_type": "v_prediction"})
    assert prior.card.parameterization == "vp-v"
    abar = iv.priors.DDPMSchedule().alphas_cumprod  # diffusers' default betas = DDPM's linear 1e-4 .. 0.02
    k = 120
    sigma = float(torch.sqrt((1 - abar[k]) / abar[k]))
    alpha = 1 / math.sqrt(1 + sigma ** 2)
    x = torch.randn(2, 1, 16, 16, generator=GEN)
    with torch.no_grad():
        v = unet(alpha * x, torch.full((2,), float(k))).sample
        torch.testing.assert_close(prior(x, sigma), alpha * alpha * x - sigma * alpha * v, rtol=1e-4, atol=1e-4)


def test_diffusers_missing_weight_is_listed(diffusers, tmp_path):
    from safetensors.torch import load_file, save_file

    unet = tiny_unet(diffusers, out_channels=1)
    unet.save_pretrained(tmp_path / "unet")
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("conv_out.weight")
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"missing keys \(1\): conv_out.weight"):
        iv.load_prior(tmp_path / "unet", scheduler={})


@pytest.fixture(scope="module")
def sd3_folder(diffusers, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3") / "sd3-tiny"
    write_index(folder, {"transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
                         "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]})
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                                  norm_num_groups=4, sample_size=16, scaling_factor=1.5305, shift_factor=0.0609)
    randomise(transformer, seed=6, scale=0.05).eval()
    randomise(vae, seed=7, scale=0.05).eval()
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(folder / "scheduler")
    return folder, transformer, vae


def test_sd3_pipeline_is_a_latent_flow_prior(sd3_folder):
    folder, transformer, vae = sd3_folder
    embeds, pooled = torch.randn(1, 5, 16, generator=GEN), torch.randn(1, 8, generator=GEN)
    prior = iv.load_prior(folder, prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    assert isinstance(prior, iv.priors.LatentPrior)
    inner = prior.latent_prior
    assert inner.card.kind == "flow" and inner.card.parameterization == "flow-velocity" and inner.shape == (4, 8, 8)
    assert prior.image_shape == (3, 16, 16)
    z = torch.randn(2, 4, 8, 8, generator=GEN)
    sigma = 1.5
    t = sigma / (1 + sigma)
    with torch.no_grad():
        z_t = z / (1 + sigma)
        v = transformer(hidden_states=z_t, encoder_hidden_states=embeds.expand(2, -1, -1),
                        pooled_projections=pooled.expand(2, -1), timestep=torch.full((2,), 1000 * t)).sample
        torch.testing.assert_close(prior(z, sigma), z_t - t * v, rtol=1e-4, atol=1e-4)
        image = (vae.decode(z / 1.5305 + 0.0609).sample + 1) / 2
        torch.testing.assert_close(prior.decode(z), image, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="text-conditioned"):
        iv.load_prior(folder)
    import operators as ops

    physics = ops.make("inpainting", img_size=16, channels=3)  # FlowDPS on the loaded latent prior, 3 steps
    truth = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    post = iv.sample("flowdps", prior, iv.Problem(physics, physics.A(truth), sigma_y=0.05),
                     generator=torch.Generator().manual_seed(9), steps=3, dc_iters=1)
    assert post.samples.shape[-3:] == (3, 16, 16) and torch.isfinite(post.samples).all()
    assert iv.load_prior(folder, zero_conditioning=True).latent_prior.card.metadata["conditioning"] == "zeros"


# ----------------------------------------------------------------------------- safety and errors

class WritesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('code ran')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("layout", ["edm.pkl", "torch.pt"])
def test_pickle_that_executes_code_is_refused(tmp_path, layout):
    target = tmp_path / "pwned.txt"
    path = tmp_path / layout
    payload = {"ema": WritesAFile(target)}
    if layout.endswith(".pkl"):
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(UnsafeCheckpointError, match="never executes pickled code") as info:
        iv.load_prior(path)
    assert not target.exists()
    if layout.endswith(".pkl"):
        assert "state_dict()" in str(info.value) and "format='edm'" in str(info.value)


def test_truncated_corrupted_and_unknown_files(tmp_path, adm_file):
    path, _ = adm_file
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupted"):
        iv.load_prior(tmp_path / "trunc.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupted"):
        iv.load_prior(tmp_path / "junk.safetensors")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown architecture"):
        iv.load_prior(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="sha256"):
        iv.load_prior(path, config=ADM_TINY, sha256="0" * 64)
    with pytest.raises(TypeError, match="does not take option"):
        iv.load_prior(path, config=ADM_TINY, ema=True)


def test_nan_weights_are_refused(tmp_path, adm_file):
    _, net = adm_file
    state = dict(net.state_dict())
    state["out.2.bias"] = torch.full_like(state["out.2.bias"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="NaN"):
        iv.load_prior(tmp_path / "nan.pt", config=ADM_TINY)


def test_sha256_option_is_checked_and_recorded(adm_file):
    from invsolve.priors.checkpoints.io import sha256

    path, _ = adm_file
    digest = sha256(path)
    assert iv.load_prior(path, config=ADM_TINY, sha256=digest.upper()).card.metadata["sha256"] == digest


def test_download_happens_only_when_asked(tmp_path, adm_file, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    path, _ = adm_file
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append((repo_id, filename, revision))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    missing = tmp_path / "not-here.pt"
    with pytest.raises(FileNotFoundError, match="download=True"):
        iv.load_prior(missing, repo_id="someone/adm", filename="tiny_adm.pt", config=ADM_TINY)
    with pytest.raises(FileNotFoundError, match="download=True"):
        iv.load_prior(missing, config=ADM_TINY)
    assert calls == []
    prior = iv.load_prior(missing, repo_id="someone/adm", filename="tiny_adm.pt", revision="abc", download=True,
                          config=ADM_TINY)
    assert calls == [("someone/adm", "tiny_adm.pt", "abc")] and prior.card.metadata["format"] == "adm"


def test_cli_info_loads_a_checkpoint_and_downloads_only_with_the_flag(tmp_path, adm_file, monkeypatch, capsys):
    import json

    from invsolve.cli import main

    huggingface_hub = pytest.importorskip("huggingface_hub")
    path, _ = adm_file
    config = ["--option", "config=" + json.dumps(ADM_TINY)]
    assert main(["info", str(path), *config]) == 0
    out = capsys.readouterr().out
    assert "diffusion (vp-eps)" in out and "(3, 16, 16)" in out and "parameters loaded" in out
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, revision=None, cache_dir=None: calls.append(repo_id) or str(path))
    hub = ["--repo-id", "someone/adm", "--filename", "tiny_adm.pt", *config]
    assert main(["info", *hub]) == 2
    assert "--download" in capsys.readouterr().err and calls == []
    assert main(["info", *hub, "--download"]) == 0 and calls == ["someone/adm"]
    assert main(["info", str(path), "--option", "no_such_option=1"]) == 2
    assert "does not take option" in capsys.readouterr().err
