"""The NCSN++ / DDPM++ UNet ("SongUNet") shared by the score_sde and EDM loaders.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations"
(https://github.com/yang-song/score_sde_pytorch, ``models/ncsnpp.py``), re-implemented by Karras
et al. 2022 as ``SongUNet`` (https://github.com/NVlabs/edm, ``training/networks.py``) and ported
to deepinv as :class:`deepinv.models.NCSNpp` with EDM's parameter names. invsolve builds that
deepinv class and uses only its raw network ``forward_unet(x, c_noise)``; preconditioning lives in
``invsolve.priors.adapters``.

One correction is applied to the deepinv network: deepinv's blocks use ``torch.nn.GroupNorm``
with 32 groups, whereas both official codes use ``min(32, channels // 4)`` groups (EDM's
``GroupNorm(min_channels_per_group=4)``; score_sde's ``min(in_ch // 4, 32)``). The two agree
when every layer has at least 128 channels (all official checkpoints); :func:`build_songunet`
sets ``num_groups = min(32, channels // 4)`` on every group norm so smaller networks match too.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from deepinv.models import NCSNpp
from torch import nn

from ...errors import CheckpointError, ConfigError

ARCHITECTURES = ("ncsnpp", "ddpmpp")  # deepinv NCSNpp model_type "ncsn" / "ddpm"
CONFIG_KEYS = {"architecture", "img_resolution", "in_channels", "out_channels", "model_channels", "channel_mult",
               "channel_mult_emb", "num_blocks", "attn_resolutions", "augment_dim"}


def fix_group_norms(net: nn.Module) -> None:
    """Use the official ``min(32, channels // 4)`` groups in every ``GroupNorm`` (see module docstring)."""
    for module in net.modules():
        if isinstance(module, nn.GroupNorm):
            groups = min(32, module.num_channels // 4)
            if groups < 1 or module.num_channels % groups:
                raise ConfigError(f"GroupNorm over {module.num_channels} channels cannot use min(32, C//4) = {groups} groups")
            module.num_groups = groups


def build_songunet(config: dict[str, Any], meta: bool = False) -> nn.Module:
    """deepinv ``NCSNpp`` for a SongUNet ``config`` (keys of :data:`CONFIG_KEYS`), in eval mode."""
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ConfigError(f"unknown SongUNet config keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    cfg = dict(config)
    arch = cfg.pop("architecture", "ncsnpp")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown SongUNet architecture {arch!r}; choose one of {ARCHITECTURES}")
    for key in ("img_resolution", "in_channels", "model_channels", "channel_mult", "num_blocks"):
        if key not in cfg:
            raise ConfigError(f"a SongUNet config needs {key!r} (given: {sorted(config)})")
    cfg.setdefault("out_channels", cfg["in_channels"])
    cfg.setdefault("attn_resolutions", (16,))
    cfg.setdefault("augment_dim", 0)
    cfg["channel_mult"] = tuple(cfg["channel_mult"])
    cfg["attn_resolutions"] = tuple(cfg["attn_resolutions"])
    kwargs = dict(model_type="ncsn" if arch == "ncsnpp" else "ddpm", label_dim=0, dropout=0.0, pretrained=None, **cfg)
    if meta:
        with torch.device("meta"):
            net = NCSNpp(**kwargs)
    else:
        net = NCSNpp(**kwargs)
    fix_group_norms(net)
    return net.eval().requires_grad_(False)


def infer_config(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """A SongUNet config read off the names and shapes of an EDM/deepinv state dict (no ``model.`` prefix).

    Strict loading afterwards checks every key and shape, so a wrong guess cannot pass silently.
    """
    convs = [k for k in state if re.fullmatch(r"enc\.(\d+)x\1_conv\.weight", k)]
    if len(convs) != 1:
        raise CheckpointError(f"{source}: not a SongUNet (NCSN++/DDPM++) state dict: expected one 'enc.RxR_conv.weight', "
                              f"found {convs or 'none'}; pass config={{...}}")
    if any(k.startswith("map_label") for k in state):
        raise CheckpointError(f"{source} is a class-conditional network (it holds map_label.*); invsolve loads "
                              "unconditional ones")
    resolution = int(convs[0].split(".")[1].split("x")[0])
    model_channels, in_channels = state[convs[0]].shape[:2]
    levels: dict[int, dict[int, int]] = {}
    for key in state:
        m = re.fullmatch(r"enc\.(\d+)x\1_block(\d+)\.conv1\.weight", key)
        if m:
            levels.setdefault(int(m.group(1)), {})[int(m.group(2))] = state[key].shape[0]
    if not levels:
        raise CheckpointError(f"{source}: no encoder blocks 'enc.RxR_blockN' found; pass config={{...}}")
    resolutions = sorted(levels, reverse=True)
    num_blocks = len(levels[resolutions[0]])
    channel_mult = []
    for res in resolutions:
        width = levels[res][max(levels[res])]
        if width % model_channels:
            raise CheckpointError(f"{source}: width {width} at {res}x{res} is not a multiple of {model_channels}")
        channel_mult.append(width // model_channels)
    attn = sorted({int(m.group(1)) for k in state
                   if (m := re.fullmatch(r"enc\.(\d+)x\1_block\d+\.qkv\.weight", k))}, reverse=True)
    out_key = f"dec.{resolution}x{resolution}_aux_conv.weight"
    if out_key not in state:
        raise CheckpointError(f"{source}: missing {out_key}; not a SongUNet with a standard decoder; pass config={{...}}")
    config = dict(architecture="ncsnpp" if "map_noise.freqs" in state else "ddpmpp", img_resolution=resolution,
                  in_channels=int(in_channels), out_channels=int(state[out_key].shape[0]),
                  model_channels=int(model_channels), channel_mult=tuple(channel_mult), num_blocks=num_blocks,
                  attn_resolutions=tuple(attn),
                  channel_mult_emb=int(state["map_layer1.weight"].shape[0]) // int(model_channels)
                  if "map_layer1.weight" in state else 4,
                  augment_dim=int(state["map_augment.weight"].shape[1]) if "map_augment.weight" in state else 0)
    return config


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
