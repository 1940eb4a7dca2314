"""EDM networks (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

Official code: https://github.com/NVlabs/edm (``training/networks.py``: ``EDMPrecond`` around a
``SongUNet``). Its released ``.pkl`` snapshots are pickles of EDM's own Python classes: loading
them executes code, so invsolve refuses them (``checkpoints.io.pickle_refusal`` says how to export
a plain state dict once, in EDM's environment, from a trusted file). invsolve loads that state dict:
``net.model.state_dict()`` (SongUNet keys ``map_noise.freqs``, ``enc.64x64_conv.weight``, ...), or
``net.state_dict()`` of ``EDMPrecond`` (the same keys prefixed ``model.``), saved with ``torch.save``
or as safetensors; also deepinv ``NCSNpp`` state dicts, which keep EDM's names.

The network is ``deepinv.models.NCSNpp`` (EDM's SongUNet ported, parameter names unchanged) with the
official group-norm grouping (``songunet.fix_group_norms``). Its configuration is read off the
state dict (``songunet.infer_config``) unless ``config=`` gives it; every key and shape is then
checked. Preconditioning is ``EDMPrecond``'s: ``D = c_skip x + c_out F(c_in x, ln(sigma)/4)``
(invsolve ``edm`` adapter), model space [-1, 1] (EDM's ``dataset_tool`` images / 127.5 - 1).
Only unconditional networks are loaded (class-conditional ones hold ``map_label``); EDM's
``DhariwalUNet`` (ImageNet-64, class-conditional) is not supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ..adapters import make_denoiser
from ..base import Prior, PriorCard
from .io import check_finite, load_state_strict, tensors_only
from .songunet import build_songunet, infer_config, parameter_count


def strip_precond(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``EDMPrecond`` state dicts hold the UNet under ``model.``; drop the prefix if every key has it."""
    if state and all(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items()}
    return state


def is_edm_state(state: Any) -> bool:
    if not isinstance(state, dict):
        return False
    keys = set(strip_precond(state))
    return "map_layer0.weight" in keys and any(str(k).startswith("enc.") for k in keys)


class SongUNetRaw(nn.Module):
    """``F(x_in, c_noise)``: the raw SongUNet (what EDMPrecond calls ``self.model``)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.unet.forward_unet(x_in, c_noise.reshape(-1).to(x_in.dtype).expand(x_in.shape[0]))


def load_edm(state: dict[str, torch.Tensor], source: Path, config: dict[str, Any] | None = None,
             sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
             name: str | None = None) -> Prior:
    state = strip_precond(tensors_only(state, str(source)))
    if config is None:
        config = infer_config(state, str(source))
        inferred = True
    else:
        if not isinstance(config, dict):
            raise ConfigError("EDM config must be a dict of SongUNet arguments (architecture, img_resolution, "
                              "in_channels, model_channels, channel_mult, num_blocks, attn_resolutions, augment_dim)")
        inferred = False
    check_finite(state, str(source))
    net = build_songunet(config, meta=True)
    load_state_strict(net, state, str(source), assign=True,
                      what=f"EDM SongUNet {'inferred from its keys' if inferred else 'of the config given'} {config}")
    leftover = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{source}: tensors not set by the file: {', '.join(leftover[:10])}")
    channels, size = int(config["in_channels"]), int(config["img_resolution"])
    card = PriorCard(
        name=name or source.stem, kind="diffusion", parameterization="edm", shape=(channels, size, size),
        scale=2.0, offset=-1.0, sigma_min=float(sigma_min), sigma_max=float(sigma_max), sigma_data=float(sigma_data),
        physical_range=(0.0, 1.0),
        description=f"EDM {config.get('architecture', 'ncsnpp')} SongUNet, EDM preconditioning",
        metadata={"format": "edm", "source": str(source), "architecture": "EDM SongUNet -> deepinv.models.NCSNpp",
                  "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                  "parameters": parameter_count(net)},
    )
    return Prior(make_denoiser("edm", SongUNetRaw(net), sigma_data=sigma_data), card)
