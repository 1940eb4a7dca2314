"""fastMRI's per-file masks for a volume: every slice of a file shares one column mask.

fastMRI's data transforms call the mask function with ``seed = tuple(map(ord, fname))``
(``fastmri/data/transforms.py``; ``fname`` is the file *name*, e.g. ``file1000001.h5``), so a
volume's mask depends only on its file name, the number of k-space columns, the mask type,
the acceleration and the centre fraction; the VarNet transform also zeroes the mask outside the
acquired band ``padding_left:padding_right`` of the ISMRMRD header. The mask functions are
``operators.masks`` (fastMRI's, draw for draw); test/challenge files carry their own ``mask``.
"""

from __future__ import annotations

import numpy as np

from operators.masks import create_mask_for_mask_type, fastmri_seed

from ..errors import ConfigError

CENTER_FRACTIONS = {4: 0.08, 8: 0.04}
"""fastMRI's pairing of accelerations and centre fractions (leaderboard and ``subsample.py`` defaults)."""


def fastmri_center_fraction(acceleration: float) -> float:
    """fastMRI's centre fraction for ``acceleration`` (0.08 at 4x, 0.04 at 8x)."""
    if float(acceleration) not in CENTER_FRACTIONS:
        raise ConfigError(f"no fastMRI centre fraction for acceleration {acceleration:g} (fastMRI pairs 4x/0.08 and "
                          "8x/0.04); give center_fraction")
    return CENTER_FRACTIONS[int(acceleration)]


def file_mask(fname: str, width: int, acceleration: float, mask_type: str = "equispaced_fraction",
              center_fraction: float | None = None,
              padding: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """fastMRI's (W,) float32 column mask of file ``fname`` and its number of low-frequency columns.

    :param fname: the file name (not the path): the seed is ``tuple(map(ord, fname))``.
    :param width: k-space columns W.
    :param acceleration: 4, 8, ... (an int for ``equispaced``).
    :param mask_type: ``random`` (knee leaderboard), ``equispaced_fraction`` (brain leaderboard)
        or ``equispaced`` (``operators.masks.MASK_FUNCS``).
    :param center_fraction: default fastMRI's pairing (``fastmri_center_fraction``).
    :param padding: ``(padding_left, padding_right)``: columns outside are zeroed (VarNet).
    """
    fraction = fastmri_center_fraction(acceleration) if center_fraction is None else float(center_fraction)
    accel = int(acceleration) if float(acceleration).is_integer() else float(acceleration)
    func = create_mask_for_mask_type(mask_type, [fraction], [accel])
    columns, num_low = func((1, 1, int(width), 2), seed=fastmri_seed(fname))
    mask = columns.numpy().reshape(-1).astype(np.float32)
    if padding is not None:
        left, right = (int(p) for p in padding)
        if 0 <= left < right <= width and (left, right) != (0, width):
            mask[:left] = 0
            mask[right:] = 0
    return mask, int(num_low)


def volume_mask(volume, mask_type: str = "equispaced_fraction", acceleration: float | None = None,
                center_fraction: float | None = None, zero_padding: bool = True) -> np.ndarray:
    """(W,) float32 mask of a ``FastMRIVolume``: its own mask (test/challenge files), or
    ``file_mask`` seeded with its file name (every slice shares it).

    :param acceleration: required for train/val files; for test files it must match the file's.
    :param zero_padding: zero the columns outside the header's acquired band (fastMRI's VarNet).
    """
    width = int(volume.kspace.shape[-1])
    if volume.mask is not None:
        if acceleration is not None and volume.acceleration is not None and \
                float(acceleration) != float(volume.acceleration):
            raise ConfigError(f"{volume.fname} is undersampled at {volume.acceleration:g}x with its own mask; it "
                              f"cannot be reconstructed at {float(acceleration):g}x")
        return np.asarray(volume.mask, dtype=np.float32).reshape(-1)
    if acceleration is None:
        raise ConfigError(f"{volume.fname} is fully sampled: give an acceleration (fastMRI: 4 or 8)")
    padding = (volume.padding_left, volume.padding_right) if zero_padding else None
    mask, _ = file_mask(volume.fname, width, acceleration, mask_type, center_fraction, padding)
    return mask


def acs_band(mask) -> tuple[int, int]:
    """``(left, right)``: the contiguous run of sampled columns through the centre column
    ``W // 2`` (the autocalibration lines); ``mask[left:right]`` are all sampled."""
    columns = np.asarray(mask).reshape(-1) > 0
    centre = columns.size // 2
    if not columns[centre]:
        raise ConfigError("the mask does not sample the k-space centre column W // 2: no autocalibration lines")
    left, right = centre, centre + 1
    while left > 0 and columns[left - 1]:
        left -= 1
    while right < columns.size and columns[right]:
        right += 1
    return left, right


def sampled_columns(kspace) -> np.ndarray:
    """(W,) float32 mask of the k-space columns holding any non-zero sample (over slices, coils and
    rows): the mask of an undersampled file that does not store one."""
    data = np.asarray(kspace)
    return (np.abs(data).reshape(-1, data.shape[-1]).max(0) > 0).astype(np.float32)
