"""A small noise-conditioned UNet for invsolve's own priors.

Written here rather than taken from deepinv because deepinv's diffusion UNets
(``DiffUNet``, ``NCSNpp``) come in fixed ADM/NCSN++ configurations of tens of millions
of parameters, far too slow to train on a 2-core CPU; this one is a few hundred
thousand parameters and follows the same design (residual blocks with GroupNorm,
SiLU and a scale-shift noise embedding, skip connections, optional self-attention).

The network is only the raw function ``F(x_in, c_noise)``; the preconditioning that
turns it into a denoiser lives in ``invsolve.priors.adapters``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, DataError


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class FourierEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise conditioning ``c_noise``."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(half) / half), persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = 100.0 * c_noise[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dims: int):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.norm0, self.conv0 = _norm(c_in), conv(c_in, c_out, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * c_out)
        self.norm1, self.conv1 = _norm(c_out), conv(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb).reshape(emb.shape[0], -1, *([1] * (x.ndim - 2))).chunk(2, dim=1)
        h = F.silu(self.norm1(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv1(h)


class Attention(nn.Module):
    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.heads = heads
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)
        q, k, v = self.qkv(tokens).reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).reshape(b, -1, c)
        return x + self.out(h).transpose(1, 2).reshape(x.shape)


class UNet(nn.Module):
    """UNet ``F(x, c_noise)`` for 2D (``dims=2``) or 3D (``dims=3``) inputs.

    ``channels`` lists the width at each resolution (each level halves the size), and
    ``attention`` lists the level indices that get a self-attention layer.
    The spatial size must be divisible by ``2 ** (len(channels) - 1)``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int | None = None,
                 channels: tuple[int, ...] = (32, 64, 64), attention: tuple[int, ...] = (2,),
                 emb_dim: int = 128, dims: int = 2):
        super().__init__()
        if dims not in (2, 3):
            raise ConfigError(f"dims must be 2 or 3, got {dims}")
        self.config = dict(in_channels=in_channels, out_channels=out_channels or in_channels,
                           channels=list(channels), attention=list(attention), emb_dim=emb_dim, dims=dims)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.levels = len(channels)
        self.embed = FourierEmbedding(emb_dim)
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = conv(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        c_prev = channels[0]
        for level, c in enumerate(channels):
            self.down.append(ResBlock(c_prev, c, emb_dim, dims))
            self.down_attn.append(Attention(c) if level in attention else nn.Identity())
            c_prev = c
        self.mid = ResBlock(c_prev, c_prev, emb_dim, dims)
        self.mid_attn = Attention(c_prev)
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for level in reversed(range(self.levels)):
            c = channels[level]
            self.up.append(ResBlock(c_prev + c, c, emb_dim, dims))
            self.up_attn.append(Attention(c) if level in attention else nn.Identity())
            c_prev = c
        self.head_norm = _norm(c_prev)
        self.head = conv(c_prev, out_channels or in_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.pool = F.avg_pool2d if dims == 2 else F.avg_pool3d

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if any(s % factor for s in x.shape[2:]):
            raise DataError(f"UNet input size {tuple(x.shape[2:])} must be divisible by {factor}")
        emb = self.emb_mlp(self.embed(c_noise.reshape(-1).expand(x.shape[0]).to(x.dtype)))
        h = self.stem(x)
        skips = []
        for level, (block, attn) in enumerate(zip(self.down, self.down_attn)):
            h = attn(block(h, emb))
            skips.append(h)
            if level < self.levels - 1:
                h = self.pool(h, 2)
        h = self.mid_attn(self.mid(h, emb))
        for i, (block, attn) in enumerate(zip(self.up, self.up_attn)):
            skip = skips.pop()
            if h.shape[2:] != skip.shape[2:]:
                h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = attn(block(torch.cat([h, skip], dim=1), emb))
        return self.head(F.silu(self.head_norm(h)))
