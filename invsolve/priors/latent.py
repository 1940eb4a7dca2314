"""Latent priors: a prior over the latents of an autoencoder, seen through its decoder.

A latent diffusion or flow model (Stable Diffusion 3 in FlowDPS, LDMs in PSLD/LatentDAPS) is a
prior over latents ``z``; images are ``decoder(z)``. ``LatentPrior`` is such a prior: samplers
run on latents exactly as on images (its ``D(z, sigma)`` is the latent model's denoiser and its
card's ``shape`` is the latent shape), and ``model_problem(problem)`` returns the same inverse
problem seen from latent space, ``y = A(decode(z)) + n``. ``invsolve.sample`` asks every prior
for that view, so

    post = iv.sample("flowdps", latent_prior, problem, ...)

returns decoded samples in the physical units (and shape) of the image. The composed physics
is nonlinear (the decoder is), so samplers that need only ``forward``/``residual`` (DPS, DAPS,
FlowDPS) work on latents, and linear-only samplers raise ``PhysicsError`` (a ``TypeError``): the
latent variant composes the problem instead of copying a sampler loop.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from deepinv.physics import Physics

from ..problem import ModelProblem, Problem, UnitMap
from .base import Prior


class LatentPrior(Prior):
    """A prior over latents together with the decoder mapping latents to images.

    :param prior: the prior over latents (any ``Prior``: diffusion or flow, 2D or 3D); its card's
        ``shape`` is the latent shape and its ``D`` is used unchanged.
    :param decoder: callable (e.g. a VAE decoder ``nn.Module``) mapping a batch of latents
        ``(B, *latent_shape)`` to images ``(B, *image_shape)`` in the decoder's output range; it
        must be differentiable (gradient-based samplers back-propagate through it).
    :param encoder: optional inverse map images -> latents (same ranges); needed only where a
        sampler maps an image into latent space (``to_model``).
    :param scale, offset: the decoder's output range in physical units,
        ``decoder_output = scale * x_physical + offset`` (e.g. an SD VAE's [-1, 1] for [0, 1] images:
        scale 2, offset -1).
    :param image_shape: shape of one decoded image (default: found by decoding one zero latent).
    """

    def __init__(self, prior: Prior, decoder: Callable[[torch.Tensor], torch.Tensor],
                 encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 scale: float = 1.0, offset: float = 0.0, image_shape: tuple[int, ...] | None = None):
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must be an invsolve Prior over latents, got {type(prior).__name__}")
        if isinstance(prior, LatentPrior):
            raise TypeError("prior is already a LatentPrior; compose the decoders into one callable instead")
        if not callable(decoder):
            raise TypeError(f"decoder must be callable (latents -> images), got {type(decoder).__name__}")
        card = dataclasses.replace(prior.card, name=f"latent:{prior.card.name}", scale=1.0, offset=0.0,
                                   physical_range=None,
                                   metadata={**prior.card.metadata, "latent": True})
        super().__init__(prior, card)
        self.decoder = decoder
        self.encoder = encoder
        self.image_map = UnitMap(float(scale), float(offset))  # decoder output = scale * x_physical + offset
        self._image_shape = tuple(image_shape) if image_shape is not None else None

    @property
    def latent_prior(self) -> Prior:
        return self.denoiser

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one decoded image (decodes one zero latent the first time if not given)."""
        if self._image_shape is None:
            with torch.no_grad():
                self._image_shape = tuple(self.decoder(torch.zeros(1, *self.shape)).shape[1:])
        return self._image_shape

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in physical units."""
        return self.image_map.to_physical(self.decoder(z))

    def encode(self, x_physical: torch.Tensor) -> torch.Tensor:
        """Images in physical units -> latents (needs the encoder)."""
        if self.encoder is None:
            raise TypeError("this LatentPrior has no encoder; pass encoder=... to map images into latent space")
        return self.encoder(self.image_map.to_model(x_physical))

    def _view(self, problem: Problem) -> "LatentProblem":
        """``problem`` seen from latent space: ``y = A(decode(z)) + n``."""
        return LatentProblem(problem, self)

    def compose(self, problem: Problem | ModelProblem) -> "LatentProblem":  # the earlier name
        return self.model_problem(problem)

    def __repr__(self) -> str:
        return f"LatentPrior({self.latent_prior!r}, image_shape={self._image_shape})"


class DecodedPhysics(Physics):
    """``A(decode(z))``: image physics composed with a latent decoder (nonlinear)."""

    def __init__(self, image_physics: Physics, latent_prior: LatentPrior):
        super().__init__()
        self.image_physics = image_physics
        self._latent_prior = [latent_prior]  # not a submodule: the prior is not part of the physics

    def A(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.image_physics.A(self._latent_prior[0].decode(z), **kwargs)


class LatentProblem(ModelProblem):
    """A ``Problem`` seen from a ``LatentPrior``'s latent space.

    ``forward(z) = A(decode(z))`` with the image physics (``physics`` is that composition, a
    nonlinear ``DecodedPhysics``); ``to_physical`` decodes (so samplers and ``invsolve.sample``
    return images), ``to_model`` encodes (needs the encoder). The measurement, ``sigma_y`` and the
    image physics come from ``problem``; the image's physical <-> decoder map is the latent prior's.
    """

    def __init__(self, problem: Problem, latent_prior: LatentPrior):
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be an invsolve Problem, got {type(problem).__name__}")
        super().__init__(problem, UnitMap(), latent_prior.shape, prior=latent_prior)
        self.image_problem = problem
        self.latent_prior = latent_prior
        self._physics = DecodedPhysics(problem.physics, latent_prior)

    physics = property(lambda self: self._physics)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.latent_prior.image_shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.physics.A(z)

    def to_physical(self, z: torch.Tensor) -> torch.Tensor:
        return self.latent_prior.decode(z)

    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.latent_prior.encode(x_physical)
