"""A latent prior with an exact posterior: a Gaussian mixture in latent space behind a linear decoder.

With latents ``z ~ sum_k w_k N(mu_k, Sigma_k)`` (dimension ``k``) and the affine decoder
``x = W z + b`` (``W``: d x k), images are the mixture ``sum_k w_k N(W mu_k + b, W Sigma_k W^T)``
(singular when ``k < d``), and for ``y = A x + n`` with linear ``A`` the measurement is affine in
``z``: ``y = (A W) z + A b + n``. The latent posterior is ``GaussianMixture.affine_posterior`` of that
affine map, and the image posterior its push-forward through the decoder. So latent samplers (FlowDPS,
ReSample, D-Flow, FLAIR) can be checked against an exact answer in image space, as
``exactness_report`` does for pixel priors: ``sample``, ``mean`` and ``posterior`` are the image-space
ones, while ``D`` (what samplers call) is the latent mixture's exact denoiser.
"""

from __future__ import annotations

import torch
from deepinv.physics import LinearPhysics

from ..errors import ConfigError, PhysicsError
from .gaussian_mixture import GaussianMixture
from .latent import LatentPrior


class LinearDecoder(torch.nn.Module):
    """``x = W z + b`` on flattened latents, reshaped to ``image_shape``; ``encode`` is least squares."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, latent_shape, image_shape):
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float64)
        d, k = weight.shape
        bias = torch.zeros(d, dtype=torch.float64) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
        if bias.shape != (d,):
            raise ConfigError(f"bias must have {d} values (the decoder's output dimension), got {tuple(bias.shape)}")
        if torch.linalg.matrix_rank(weight) < k:
            raise ConfigError(f"the decoder matrix ({d} x {k}) must have full column rank {k}")
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.latent_shape, self.image_shape = tuple(latent_shape), tuple(image_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.reshape(z.shape[0], -1) @ self.weight.to(z.dtype).T + self.bias.to(z.dtype)
        return x.reshape(z.shape[0], *self.image_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The least-squares latent ``argmin_z ||W z + b - x||`` (exact on the decoder's range)."""
        flat = (x.reshape(x.shape[0], -1).to(torch.float64) - self.bias)
        z = torch.linalg.lstsq(self.weight, flat.T).solution.T
        return z.to(x.dtype).reshape(x.shape[0], *self.latent_shape)


class LinearDecoderMixture(LatentPrior):
    """``GaussianMixture`` latents behind a ``LinearDecoder``: a ``LatentPrior`` with exact image-space
    ``sample``, ``mean`` and ``posterior``.

    :param latent: the latent mixture (its card's shape is the latent shape).
    :param weight: (d, k) decoder matrix of full column rank; ``bias``: (d,) or None.
    :param image_shape: shape of one decoded image (default ``(d,)``).
    """

    def __init__(self, latent: GaussianMixture, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 image_shape: tuple[int, ...] | None = None):
        if not isinstance(latent, GaussianMixture):
            raise ConfigError(f"latent must be a GaussianMixture, got {type(latent).__name__}")
        weight = torch.as_tensor(weight, dtype=torch.float64)
        if weight.ndim != 2 or weight.shape[1] != latent.dim:
            raise ConfigError(f"weight must be (d, {latent.dim}) for {latent.dim} latent dimensions, "
                              f"got {tuple(weight.shape)}")
        image_shape = tuple(image_shape) if image_shape is not None else (weight.shape[0],)
        decoder = LinearDecoder(weight, bias, latent.shape, image_shape)
        super().__init__(latent, decoder, encoder=decoder.encode, image_shape=image_shape)
        self.linear_decoder = decoder

    def image_mixture(self) -> GaussianMixture:
        """The prior over images: ``sum_k w_k N(W mu_k + b, W Sigma_k W^T)``."""
        return self._push(self.latent_prior)

    def _push(self, gm: GaussianMixture) -> GaussianMixture:
        W, b = self.linear_decoder.weight, self.linear_decoder.bias
        return GaussianMixture(gm.means @ W.T + b, W @ gm.covs @ W.T, gm.weights, shape=self.image_shape,
                               name=f"{gm.card.name}-decoded")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.latent_prior.sample(n, generator)
        return self.linear_decoder(z)

    def mean(self) -> torch.Tensor:
        return self.linear_decoder(self.latent_prior.mean()[None])[0]

    def latent_posterior(self, problem) -> GaussianMixture:
        """The exact posterior over latents: the measurement is affine in ``z`` when ``A`` is linear."""
        view = self.model_problem(problem)
        if not isinstance(view.image_problem.physics, LinearPhysics):
            raise PhysicsError("the exact posterior of a linear-decoder mixture needs linear image physics "
                               f"(a deepinv LinearPhysics), got {type(view.image_problem.physics).__name__}")
        return self.latent_prior.affine_posterior(view)

    def posterior(self, problem) -> GaussianMixture:
        """The exact posterior over images (the latent posterior pushed through the decoder)."""
        return self._push(self.latent_posterior(problem))
