"""Shared test fixtures: a Gaussian-mixture benchmark and tiny priors."""

import torch
from deepinv.physics import LinearPhysics

import invsolve as iv


def mixture(d=16, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    root = torch.randn(k, d, d, generator=g, dtype=torch.float64) / d ** 0.5
    covs = 0.5 * root @ root.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2][:k], dtype=torch.float64)
    return iv.GaussianMixture(means, covs, weights / weights.sum())


def matrix_physics(matrix):
    return LinearPhysics(A=lambda x: x.to(matrix.dtype) @ matrix.T, A_adjoint=lambda y: y.to(matrix.dtype) @ matrix)


def linear_problems(d=16, seed=1):
    """The two exactness problems: keep every other coordinate, and a random Gaussian matrix."""
    mask = torch.zeros(d, dtype=torch.float64)
    mask[::2] = 1
    gauss = torch.randn(d // 2, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / d ** 0.5
    return {"inpainting": matrix_physics(torch.diag(mask)[mask.bool()]), "gaussian": matrix_physics(gauss)}


def measure(gm, physics, sigma_y, seed=5):
    x_true = gm.sample(1, torch.Generator().manual_seed(seed))
    clean = physics.A(x_true)
    y = clean + sigma_y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=clean.dtype)
    return iv.Problem(physics, y, sigma_y=sigma_y)
