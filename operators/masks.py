"""MRI undersampling masks.

Cartesian masks reproduce fastMRI's mask functions (``fastmri/data/subsample.py``,
facebookresearch/fastMRI) draw for draw: the same ``numpy.random.RandomState`` calls in the
same order, so the same shape, centre fraction, acceleration and seed give the same columns.
Like fastMRI, a mask function keeps one random state across calls, and a per-call ``seed``
temporarily reseeds it (fastMRI's data module passes ``seed = tuple(map(ord, filename))``, so
every slice of a volume shares its mask: ``fastmri_seed(filename)``).

Written here rather than imported because ``fastmri`` pulls PyTorch Lightning and a pinned
torchvision; the tests compare these functions with fastMRI's formulas.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError


@contextlib.contextmanager
def _temp_seed(rng: np.random.RandomState, seed):
    if seed is None:
        yield
        return
    state = rng.get_state()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.set_state(state)


def fastmri_seed(filename: str) -> tuple[int, ...]:
    """The per-volume seed fastMRI's ``SliceDataset`` uses: ``tuple(map(ord, filename))``."""
    return tuple(map(ord, filename))


class MaskFunc:
    """Base of fastMRI's column masks: a fully sampled centre plus an acceleration pattern.

    :param center_fractions: fractions of low-frequency columns kept (one is chosen per call).
    :param accelerations: accelerations (paired with ``center_fractions`` unless
        ``allow_any_combination``).
    :param seed: seed of the function's random state.
    """

    def __init__(self, center_fractions: Sequence[float], accelerations: Sequence[float],
                 allow_any_combination: bool = False, seed=None):
        if len(center_fractions) != len(accelerations) and not allow_any_combination:
            raise ConfigError("give as many center_fractions as accelerations, or allow_any_combination=True")
        self.center_fractions = list(center_fractions)
        self.accelerations = list(accelerations)
        self.allow_any_combination = allow_any_combination
        self.rng = np.random.RandomState(seed)

    def __call__(self, shape: Sequence[int], offset: int | None = None, seed=None) -> tuple[torch.Tensor, int]:
        """Mask of shape ``[1] * (len(shape) - 2) + [num_cols, 1]`` for k-space of ``shape``
        (..., rows, cols, 2) as in fastMRI, and the number of low-frequency columns."""
        if len(shape) < 3:
            raise ConfigError("shape must have at least 3 dimensions (fastMRI layout: ..., rows, cols, 2)")
        with _temp_seed(self.rng, seed):
            center, accel, num_low = self.sample_mask(shape, offset)
        return torch.max(center, accel), num_low

    def sample_mask(self, shape, offset):
        num_cols = shape[-2]
        center_fraction, acceleration = self.choose_acceleration()
        num_low = round(num_cols * center_fraction)
        center = self.reshape_mask(self.calculate_center_mask(shape, num_low), shape)
        accel = self.reshape_mask(self.calculate_acceleration_mask(num_cols, acceleration, offset, num_low), shape)
        return center, accel, num_low

    @staticmethod
    def reshape_mask(mask: np.ndarray, shape) -> torch.Tensor:
        mask_shape = [1 for _ in shape]
        mask_shape[-2] = shape[-2]
        return torch.from_numpy(mask.reshape(*mask_shape).astype(np.float32))

    @staticmethod
    def calculate_center_mask(shape, num_low: int) -> np.ndarray:
        num_cols = shape[-2]
        mask = np.zeros(num_cols, dtype=np.float32)
        pad = (num_cols - num_low + 1) // 2
        mask[pad:pad + num_low] = 1
        return mask

    def choose_acceleration(self):
        if self.allow_any_combination:
            return self.rng.choice(self.center_fractions), self.rng.choice(self.accelerations)
        choice = self.rng.randint(len(self.center_fractions))
        return self.center_fractions[choice], self.accelerations[choice]

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low):  # pragma: no cover
        raise NotImplementedError


class RandomMaskFunc(MaskFunc):
    """Each outer column kept with probability ``(N / R - n_low) / (N - n_low)`` (fastMRI knee leaderboard)."""

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low):
        prob = (num_cols / acceleration - num_low) / (num_cols - num_low)
        return self.rng.uniform(size=num_cols) < prob


class EquiSpacedMaskFunc(MaskFunc):
    """Every ``R``-th column from a random offset in [0, R)."""

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low):
        if offset is None:
            offset = self.rng.randint(0, high=round(acceleration))
        mask = np.zeros(num_cols, dtype=np.float32)
        mask[offset::acceleration] = 1
        return mask


class EquispacedMaskFractionFunc(MaskFunc):
    """Equispaced columns at the adjusted spacing that makes the overall fraction exactly 1/R
    (fastMRI brain leaderboard)."""

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low):
        adjusted = (acceleration * (num_low - num_cols)) / (num_low * acceleration - num_cols)
        if offset is None:
            offset = self.rng.randint(0, high=round(adjusted))
        mask = np.zeros(num_cols, dtype=np.float32)
        samples = np.around(np.arange(offset, num_cols - 1, adjusted)).astype(np.uint)
        mask[samples] = 1.0
        return mask


MASK_FUNCS = {"random": RandomMaskFunc, "equispaced": EquiSpacedMaskFunc,
              "equispaced_fraction": EquispacedMaskFractionFunc}


def create_mask_for_mask_type(mask_type: str, center_fractions, accelerations, seed=None) -> MaskFunc:
    """fastMRI's ``create_mask_for_mask_type`` for ``random``, ``equispaced``, ``equispaced_fraction``."""
    if mask_type not in MASK_FUNCS:
        raise ConfigError(f"unknown mask type {mask_type!r}; choose one of {sorted(MASK_FUNCS)}")
    return MASK_FUNCS[mask_type](center_fractions, accelerations, seed=seed)


def poisson_disc_mask(shape: tuple[int, int], acceleration: float, calib: tuple[int, int] = (24, 24),
                      seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """2D variable-density Poisson-disc mask (sigpy's ``poisson``; needs the ``mri`` extra)."""
    try:
        import sigpy.mri
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Poisson-disc masks need sigpy: pip install 'invsolve[mri]'") from err
    mask = sigpy.mri.poisson(tuple(shape), accel=acceleration, calib=calib, seed=seed, dtype=np.float32)
    return torch.from_numpy(np.abs(mask).astype(np.float32)).to(dtype)
