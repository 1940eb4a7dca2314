"""A small convolutional autoencoder: the first stage of invsolve's own latent priors.

``Autoencoder(in_channels, latent_channels, channels)`` maps images ``(B, C, H, W)`` in model space
to latents ``(B, latent_channels, H / f, W / f)`` with ``f = 2 ** (len(channels) - 1)`` and back.
Written here (not taken from diffusers' ``AutoencoderKL``) for the same reason as ``unet.UNet``:
the field's autoencoders have tens of millions of parameters and could not be trained on a 2-core
CPU; this one follows the same design (residual blocks with GroupNorm and SiLU, strided-convolution
downsampling, nearest-neighbour upsampling) at a few hundred thousand.

It is deterministic (an AE, not a VAE): trained with ``||decode(encode(x)) - x||^2`` plus a small
penalty ``beta * mean(z^2)`` on the raw latents that keeps their scale bounded (the role the KL term
plays in Stable Diffusion's VAE, whose latents are likewise only weakly regularised). After training,
``latent_scale`` (a buffer, SD's ``scaling_factor``) is set to one over the raw latents' standard
deviation on training images, so ``encode`` returns latents of unit variance, the scale the latent
diffusion or flow stage is trained at; ``decode`` takes latents at that scale.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from .unet import _norm


class Block(nn.Module):
    """Residual block ``x + conv(silu(norm(conv(silu(norm(x))))))`` (no noise embedding)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm0, self.conv0 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1, self.conv1 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        return self.skip(x) + self.conv1(F.silu(self.norm1(h)))


class Autoencoder(nn.Module):
    """``encode``: images (model space) -> latents at unit scale; ``decode``: latents -> images.

    :param channels: widths per resolution, finest first; each further level halves the size.
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.config = dict(in_channels=in_channels, latent_channels=latent_channels, channels=list(channels))
        self.factor = 2 ** (len(channels) - 1)
        self.register_buffer("latent_scale", torch.ones(()))
        enc, c_prev = [nn.Conv2d(in_channels, channels[0], 3, padding=1)], channels[0]
        for level, c in enumerate(channels):
            enc.append(Block(c_prev, c))
            c_prev = c
            if level < len(channels) - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        enc += [_norm(c_prev), nn.SiLU(), nn.Conv2d(c_prev, latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(latent_channels, c_prev, 3, padding=1)]
        for level in reversed(range(len(channels))):
            dec.append(Block(c_prev, channels[level]))
            c_prev = channels[level]
            if level:  # upsample, then narrow to the finer level's width
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_prev, channels[level - 1], 3, padding=1)]
                c_prev = channels[level - 1]
        dec += [_norm(c_prev), nn.SiLU(), nn.Conv2d(c_prev, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise DataError(f"autoencoder {what} must be (B, {channels}, H, W), got {tuple(x.shape)}")

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Latents before ``latent_scale`` (what the reconstruction loss and its penalty see)."""
        self._check(x, self.config["in_channels"], "input")
        if any(s % self.factor for s in x.shape[2:]):
            raise DataError(f"autoencoder input size {tuple(x.shape[2:])} must be divisible by {self.factor}")
        return self.encoder(x)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z, self.config["latent_channels"], "latents")
        return self.decoder(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_raw(x) * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(z / self.latent_scale)


class Encoder(nn.Module):
    """``autoencoder.encode`` as a module (the ``encoder`` callable of a ``LatentPrior``)."""

    def __init__(self, autoencoder: Autoencoder):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x)


class Decoder(nn.Module):
    """``autoencoder.decode`` as a module (the ``decoder`` callable of a ``LatentPrior``)."""

    def __init__(self, autoencoder: Autoencoder):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z)
