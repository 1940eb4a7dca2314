"""Reading and writing images and volumes: NIfTI (nibabel), NPY, PNG. Writes are atomic."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .errors import DataError


def _atomic(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` then move the result onto ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix="".join(path.suffixes))
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_nifti(array, path: str | Path, affine: np.ndarray | None = None, spacing: tuple[float, ...] | None = None) -> Path:
    """Save a 2D image or 3D volume (indexed [z,] y, x) as NIfTI-1 with the given affine.

    Without ``affine``, a diagonal affine of ``spacing`` (default 1 mm) is used. Arrays are
    stored in NIfTI's (x, y, z) axis order.
    """
    data = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    data = np.squeeze(data)
    if data.ndim not in (2, 3):
        raise DataError(f"save_nifti takes a 2D image or 3D volume, got shape {data.shape}")
    data = np.ascontiguousarray(data.T.astype(np.float32))  # (z, y, x) -> (x, y, z)
    if affine is None:
        affine = np.diag(list(spacing or (1.0,) * 3)[:3] + [1.0]) if data.ndim == 3 else np.diag(list(spacing or (1.0, 1.0))[:2] + [1.0, 1.0])
    image = nib.Nifti1Image(data, affine)
    return _atomic(Path(path), lambda tmp: nib.save(image, str(tmp)))


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (array indexed [z,] y, x, affine) of a NIfTI file."""
    image = nib.load(str(path))
    return np.asarray(image.dataobj, dtype=np.float32).T, image.affine


def save_npy(array, path: str | Path) -> Path:
    data = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    return _atomic(Path(path), lambda tmp: np.save(tmp, data))


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (format from the suffix)."""
    path = Path(path)
    return _atomic(path, lambda tmp: figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix[1:]))
