"""Gaussian-mixture prior: exact denoiser at every sigma and exact linear-Gaussian posteriors.

With ``x0 ~ sum_k w_k N(mu_k, Sigma_k)`` and ``x = x0 + sigma eps``:

- ``p(x) = sum_k w_k N(x; mu_k, Sigma_k + sigma^2 I)``;
- ``E[x0 | x] = sum_k r_k(x) [mu_k + Sigma_k (Sigma_k + sigma^2 I)^-1 (x - mu_k)]`` with
  responsibilities ``r_k`` proportional to ``w_k N(x; mu_k, Sigma_k + sigma^2 I)``.

For ``y = M x0 + c + n``, ``n ~ N(0, sigma_y^2 I)`` the posterior is again a mixture, with
(Kalman form, valid for singular ``Sigma_k``) ``S_k = M Sigma_k M^T + sigma_y^2 I``,
``mu_k' = mu_k + Sigma_k M^T S_k^-1 (y - c - M mu_k)``,
``Sigma_k' = Sigma_k - Sigma_k M^T S_k^-1 M Sigma_k`` and
``w_k' ~ w_k N(y - c; M mu_k, S_k)``.
Everything is computed in float64 in the eigenbasis of each ``Sigma_k``.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, DataError, PhysicsError
from .base import Prior, PriorCard


class GaussianMixture(Prior):
    """Exact prior ``sum_k w_k N(mu_k, Sigma_k)`` over tensors of shape ``shape`` (default (d,))."""

    def __init__(self, means: torch.Tensor, covs: torch.Tensor, weights: torch.Tensor | None = None,
                 shape: tuple[int, ...] | None = None, name: str = "gaussian-mixture"):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if means.ndim != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ConfigError(f"means must be (K, d) and covs (K, d, d); got {tuple(means.shape)} and {tuple(covs.shape)}")
        k, d = means.shape
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any() or not torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64)):
            raise ConfigError("weights must be K non-negative numbers summing to 1")
        if not torch.allclose(covs, covs.transpose(1, 2)):
            raise ConfigError("covariances must be symmetric")
        shape = tuple(shape) if shape is not None else (d,)
        if math.prod(shape) != d:
            raise ConfigError(f"shape {shape} does not hold d={d} values")
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if (eigvals < -1e-10 * eigvals.abs().max()).any():
            raise ConfigError("covariances must be positive semi-definite")
        card = PriorCard(name=name, kind="exact", parameterization="exact", shape=shape,
                         sigma_min=0.002, sigma_max=80.0, description=f"{k}-component Gaussian mixture in dimension {d}")
        super().__init__(self._denoise, card)
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("weights", weights)
        self.register_buffer("eigvals", eigvals.clamp_min(0))
        self.register_buffer("eigvecs", eigvecs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])[:, None, None] ** 2
        z = torch.einsum("kdj,bkd->bkj", self.eigvecs, flat[:, None, :] - self.means[None])  # (B, K, d)
        var = self.eigvals[None] + s2  # (B, K, d)
        log_p = -0.5 * (z ** 2 / var + var.log()).sum(-1) + self.weights.log()[None]
        resp = torch.softmax(log_p, dim=1)  # (B, K)
        shrunk = torch.einsum("kdj,bkj->bkd", self.eigvecs, self.eigvals[None] / var * z)
        denoised = (resp[..., None] * (self.means[None] + shrunk)).sum(1)
        return denoised.to(x.dtype).reshape(x.shape)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (Tweedie)."""
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (self._denoise(x, sigma) - x) / s ** 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        root = self.eigvecs * self.eigvals.sqrt()[:, None, :]  # Sigma^(1/2) = U diag(sqrt(l))
        x = self.means[comp] + torch.einsum("nij,nj->ni", root[comp], eps)
        return x.reshape(n, *self.card.shape)

    def posterior(self, problem) -> "GaussianMixture":
        """Exact posterior mixture for a problem with linear physics and Gaussian noise (one measurement).

        The physics is applied (through ``problem.forward``, in model space) to the basis
        vectors to get its matrix ``M`` and offset ``c``; its cost is d forward calls.
        """
        problem = self.model_problem(problem)
        if not problem.is_linear:
            raise PhysicsError("the exact posterior needs linear physics (a deepinv LinearPhysics)")
        return self.affine_posterior(problem)

    def affine_posterior(self, problem) -> "GaussianMixture":
        """The posterior for a model-space ``problem`` whose ``forward`` is affine in ``x`` (not checked:
        ``posterior`` checks linear physics; a linear decoder composed with it is affine too)."""
        if problem.batch != 1:
            raise DataError(f"posterior() takes a problem with one measurement, got {problem.batch}")
        d = self.dim
        basis = torch.eye(d, dtype=torch.float64).reshape(d, *self.card.shape)
        zero = torch.zeros(1, *self.card.shape, dtype=torch.float64)
        with torch.no_grad():
            c = problem.forward(zero).reshape(-1).to(torch.float64)
            M = (problem.forward(basis).reshape(d, -1).to(torch.float64) - c).T  # (m, d)
        y = problem.y.reshape(-1).to(torch.float64) - c
        m = M.shape[0]
        S = M @ self.covs @ M.T + problem.sigma_y ** 2 * torch.eye(m, dtype=torch.float64)  # (K, m, m)
        L = torch.linalg.cholesky(S)
        innov = y[None] - self.means @ M.T  # (K, m)
        gain_t = torch.cholesky_solve(M @ self.covs, L)  # S^-1 M Sigma  (K, m, d)
        means = self.means + torch.einsum("kmd,km->kd", gain_t, innov)
        covs = self.covs - (self.covs @ M.T) @ gain_t
        covs = 0.5 * (covs + covs.transpose(1, 2))
        white = torch.linalg.solve_triangular(L, innov[..., None], upper=False)[..., 0]
        log_w = self.weights.log() - 0.5 * (white ** 2).sum(-1) - torch.diagonal(L, dim1=1, dim2=2).log().sum(-1)
        weights = torch.softmax(log_w, dim=0)
        return GaussianMixture(means, covs, weights, shape=self.card.shape, name=f"{self.card.name}-posterior")

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0).reshape(self.card.shape)
