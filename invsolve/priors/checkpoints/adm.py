"""guided-diffusion ADM UNets (Dhariwal & Nichol 2021), eps-prediction with learned variance.

Checkpoints: ``ffhq_10m.pt`` (FFHQ 256x256; DPS, DAPS, RED-Diff, MCG, DiffPIR) and OpenAI's
``256x256_diffusion_uncond.pt`` (ImageNet 256x256 unconditional; DPS "imagenet", RED-Diff, DDRM),
both plain ``state_dict`` files of ``guided_diffusion.unet.UNetModel``
(https://github.com/openai/guided-diffusion, ``script_util.create_model``). The two official
architectures are exactly ``deepinv.models.DiffUNet(large_model=False / True)``, which keeps
guided-diffusion's parameter names; other configurations (``config={...}``, guided-diffusion's
``create_model`` arguments) are built by :class:`GuidedDiffusionUNet` from the same deepinv blocks.

The network predicts ``[eps, v]`` (``learn_sigma``: 2C output channels); the prior keeps the first
C (eps) and uses the linear-beta 1000-step DDPM schedule (1e-4 .. 0.02) with unscaled timesteps
(``rescale_timesteps=False`` in DPS/DAPS and OpenAI's flags), through the ``vp-eps`` adapter.
Model space is [-1, 1]; physical units are [0, 1] (card scale 2, offset -1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from deepinv.models import DiffUNet
from deepinv.models.diffunet import (AttentionBlock, Downsample, ResBlock, TimestepEmbedSequential, Upsample,
                                     normalization, timestep_embedding, zero_module)
from torch import nn

from ...errors import CheckpointError, ConfigError
from ..adapters import DDPMSchedule, make_denoiser
from ..base import Prior, PriorCard
from .io import load_state_strict

# guided-diffusion create_model arguments of the two official checkpoints.
OFFICIAL = {
    "ffhq256": dict(image_size=256, num_channels=128, num_res_blocks=1, channel_mult=(1, 1, 2, 2, 4, 4),
                    attention_resolutions="16", num_heads=4, num_head_channels=64, learn_sigma=True,
                    use_scale_shift_norm=True, resblock_updown=True, in_channels=3),
    "imagenet256-uncond": dict(image_size=256, num_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
                               attention_resolutions="32,16,8", num_heads=4, num_head_channels=64, learn_sigma=True,
                               use_scale_shift_norm=True, resblock_updown=True, in_channels=3),
}
OFFICIAL_PARAMETERS = {"ffhq256": 93_563_910, "imagenet256-uncond": 552_814_086}
# DiffUNet registers these two schedule buffers; guided-diffusion files do not hold them.
DIFFUNET_BUFFERS = ("sqrt_1m_alphas_cumprod", "sqrt_alphas_cumprod")

CONFIG_KEYS = {"image_size", "num_channels", "num_res_blocks", "channel_mult", "attention_resolutions", "num_heads",
               "num_head_channels", "num_heads_upsample", "learn_sigma", "use_scale_shift_norm", "resblock_updown",
               "use_new_attention_order", "in_channels", "dropout"}


def is_adm_state(state: dict) -> bool:
    return "input_blocks.0.0.weight" in state and "time_embed.0.weight" in state and "out.2.weight" in state


def _normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ConfigError(f"unknown ADM config keys {sorted(unknown)}; known (guided-diffusion create_model "
                          f"arguments): {sorted(CONFIG_KEYS)}")
    cfg = dict(in_channels=3, num_heads=4, num_head_channels=-1, num_heads_upsample=-1, learn_sigma=True,
               use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False, dropout=0.0,
               attention_resolutions="16", channel_mult="")
    cfg.update(config)
    if "image_size" not in cfg or "num_channels" not in cfg or "num_res_blocks" not in cfg:
        raise ConfigError("an ADM config needs at least image_size, num_channels and num_res_blocks")
    mult = cfg["channel_mult"]
    if mult in ("", None):  # guided-diffusion's defaults by image size
        defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
        if cfg["image_size"] not in defaults:
            raise ConfigError(f"no default channel_mult for image_size {cfg['image_size']}; pass channel_mult")
        mult = defaults[cfg["image_size"]]
    elif isinstance(mult, str):
        mult = tuple(float(m) if "." in m else int(m) for m in mult.split(","))
    cfg["channel_mult"] = tuple(mult)
    att = cfg["attention_resolutions"]
    if isinstance(att, str):
        att = tuple(int(a) for a in att.split(",") if a)
    cfg["attention_resolutions"] = tuple(att)
    return cfg


class GuidedDiffusionUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (unconditional) for any ``create_model`` configuration.

    Built from ``deepinv.models.diffunet`` blocks in guided-diffusion's order, so parameter names
    and shapes are guided-diffusion's (checked against ``DiffUNet`` for the two official configs).
    ``forward(x, t)`` returns all output channels (``[eps, v]`` when ``learn_sigma``).
    """

    def __init__(self, image_size: int, num_channels: int, num_res_blocks: int, channel_mult=(1, 1, 2, 2, 4, 4),
                 attention_resolutions=(16,), num_heads: int = 4, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, learn_sigma: bool = True, use_scale_shift_norm: bool = True,
                 resblock_updown: bool = False, use_new_attention_order: bool = False, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        self.config = dict(image_size=image_size, num_channels=num_channels, num_res_blocks=num_res_blocks,
                           channel_mult=tuple(channel_mult), attention_resolutions=tuple(attention_resolutions),
                           num_heads=num_heads, num_head_channels=num_head_channels,
                           num_heads_upsample=num_heads_upsample, learn_sigma=learn_sigma,
                           use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
                           use_new_attention_order=use_new_attention_order, in_channels=in_channels, dropout=dropout)
        out_channels = in_channels * (2 if learn_sigma else 1)
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        attention_ds = {image_size // int(r) for r in attention_resolutions}
        self.model_channels = num_channels
        emb = num_channels * 4
        res = dict(dropout=dropout, dims=2, use_checkpoint=False, use_scale_shift_norm=use_scale_shift_norm)
        attn = dict(use_checkpoint=False, num_head_channels=num_head_channels,
                    use_new_attention_order=use_new_attention_order)
        self.time_embed = nn.Sequential(nn.Linear(num_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = input_ch = int(channel_mult[0] * num_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb, out_channels=int(mult * num_channels), **res)]
                ch = int(mult * num_channels)
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, **attn))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (ResBlock(ch, emb, out_channels=ch, down=True, **res) if resblock_updown
                        else Downsample(ch, True, dims=2, out_channels=ch))
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb, **res), AttentionBlock(ch, num_heads=num_heads, **attn),
                                                    ResBlock(ch, emb, **res))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, out_channels=int(num_channels * mult), **res)]
                ch = int(num_channels * mult)
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads=heads_up, **attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb, out_channels=ch, up=True, **res) if resblock_updown
                                  else Upsample(ch, True, dims=2, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class ADMEps(nn.Module):
    """``eps(x_vp, t)``: the first ``channels`` outputs of an ADM UNet (drops the learned-variance channels)."""

    def __init__(self, unet: nn.Module, channels: int):
        super().__init__()
        self.unet = unet
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0])
        out = self.unet.forward_diffusion(x, t) if isinstance(self.unet, DiffUNet) else self.unet(x, t)
        return out[:, : self.channels]


def official_name(state: dict[str, torch.Tensor]) -> str | None:
    """``"ffhq256"`` / ``"imagenet256-uncond"`` from the width of the first convolution, else None."""
    width = state["input_blocks.0.0.weight"].shape[0]
    return {128: "ffhq256", 256: "imagenet256-uncond"}.get(int(width))


def build_official(name: str, in_channels: int = 3) -> nn.Module:
    """``deepinv.models.DiffUNet`` of the official configuration, on the meta device (no memory)."""
    with torch.device("meta"):
        return DiffUNet(in_channels=in_channels, out_channels=in_channels, large_model=name == "imagenet256-uncond",
                        pretrained=None)


def load_adm(state: dict[str, torch.Tensor], source: Path, config: str | dict | None = None,
             name: str | None = None) -> Prior:
    if "label_emb.weight" in state:
        raise CheckpointError(f"{source} is a class-conditional ADM (it holds label_emb.weight); invsolve loads the "
                              "unconditional ones (e.g. 256x256_diffusion_uncond.pt, ffhq_10m.pt)")
    if config is None:
        config = official_name(state)
        if config is None:
            raise CheckpointError(f"{source}: ADM UNet of width {state['input_blocks.0.0.weight'].shape[0]} is not one of "
                                  f"the official configurations {sorted(OFFICIAL)}; pass config={{...}} with "
                                  "guided-diffusion's create_model arguments (image_size, num_channels, num_res_blocks, ...)")
    if isinstance(config, str):
        if config not in OFFICIAL:
            raise ConfigError(f"unknown ADM configuration {config!r}; choose one of {sorted(OFFICIAL)} or pass a dict")
        cfg = _normalise_config(OFFICIAL[config])
        net = build_official(config, cfg["in_channels"])
        load_state_strict(net, state, str(source), ignore_missing=DIFFUNET_BUFFERS, assign=True,
                          what=f"the guided-diffusion ADM architecture {config!r}")
        schedule_buffers = net.get_alpha_prod()
        net.register_buffer("sqrt_1m_alphas_cumprod", schedule_buffers[-2])
        net.register_buffer("sqrt_alphas_cumprod", schedule_buffers[-1])
        label = config
    else:
        cfg = _normalise_config(config)
        with torch.device("meta"):
            net = GuidedDiffusionUNet(**cfg)
        load_state_strict(net, state, str(source), assign=True, what="the guided-diffusion ADM configuration given")
        label = "custom"
    net.eval().requires_grad_(False)
    channels = cfg["in_channels"]
    schedule = DDPMSchedule()  # linear betas 1e-4 .. 0.02, 1000 steps
    size = cfg["image_size"]
    card = PriorCard(
        name=name or source.stem, kind="diffusion", parameterization="vp-eps", shape=(channels, size, size),
        scale=2.0, offset=-1.0, sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max,
        physical_range=(0.0, 1.0),
        description=f"guided-diffusion ADM UNet ({label}), eps-prediction, linear-beta 1000-step DDPM schedule",
        metadata={"format": "adm", "source": str(source), "architecture": "guided_diffusion.unet.UNetModel",
                  "config": label if label != "custom" else {k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in cfg.items()},
                  "network": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                  "parameters": sum(p.numel() for p in net.parameters()),
                  "schedule": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "timesteps": 1000}},
    )
    return Prior(make_denoiser("vp-eps", ADMEps(net, channels), schedule=schedule), card)
