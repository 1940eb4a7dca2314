"""fastMRI's evaluation, exactly: per-volume NMSE, PSNR and SSIM, then mean +- 2 std over volumes.

Follows ``fastmri/evaluate.py`` (facebookresearch/fastMRI):

- both the target and the reconstruction are centre-cropped to ``(w, w)`` with ``w`` the
  target's width (``transforms.center_crop``: start ``(n - s) // 2``; a ``ValueError`` when the
  crop does not fit, as fastMRI's "Invalid shapes.");
- ``NMSE = ||gt - pred||^2 / ||gt||^2`` over the whole volume (``np.linalg.norm``);
- ``PSNR = skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=gt.max())`` over the
  whole volume (the volume's maximum, not each slice's);
- ``SSIM`` = mean over slices of ``skimage.metrics.structural_similarity(gt[i], pred[i],
  data_range=gt.max())`` (skimage's defaults: 7 x 7 uniform window, K1 = 0.01, K2 = 0.03,
  sample covariance), again with the volume's maximum;
- the aggregate is ``runstats.Statistics`` over volumes: the mean and ``stddev()``, whose default
  is the *sample* standard deviation (``ddof = 1``); fastMRI prints ``mean +/- 2 * stddev``.
  With a single volume fastMRI's ``stddev()`` divides by zero; here the std is ``nan``.

Arrays are passed to scikit-image in their own dtype (fastMRI's targets are float32, and skimage
then computes SSIM in float32), so scores match ``evaluate.py`` run on the same arrays.
``invsolve.metrics`` has the same formulas for single images (in float64).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ..errors import DataError

METRICS = ("nmse", "psnr", "ssim")


def _array(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise DataError("fastMRI metrics compare magnitude images; take the magnitude first")
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def center_crop(data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """fastMRI's ``transforms.center_crop`` of the last two axes (start ``(n - s) // 2``)."""
    h, w = (int(s) for s in shape)
    if not (0 < h <= data.shape[-2] and 0 < w <= data.shape[-1]):
        raise DataError(f"cannot centre-crop images of {data.shape[-2]}x{data.shape[-1]} to {h}x{w} (fastMRI: "
                        "'Invalid shapes.'); the reconstruction must be at least the target's width in both axes")
    top, left = (data.shape[-2] - h) // 2, (data.shape[-1] - w) // 2
    return data[..., top:top + h, left:left + w]


def crop_to_target_width(target, recon) -> tuple[np.ndarray, np.ndarray]:
    """Both volumes cropped to ``(w, w)``, ``w`` the target's width (``evaluate.py``)."""
    target, recon = _array(target), _array(recon)
    width = target.shape[-1]
    return center_crop(target, (width, width)), center_crop(recon, (width, width))


def _check(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.ndim != 3:
        raise DataError(f"fastMRI metrics take volumes (slices, h, w); got a target of shape {gt.shape}")
    if gt.shape != pred.shape:
        raise DataError(f"target {gt.shape} and reconstruction {pred.shape} differ in shape")


def mse(gt, pred) -> float:
    """``mean((gt - pred)^2)``."""
    gt, pred = _array(gt), _array(pred)
    return float(np.mean((gt - pred) ** 2))


def nmse(gt, pred) -> float:
    """``||gt - pred||^2 / ||gt||^2`` over the volume (fastMRI's ``nmse``)."""
    gt, pred = _array(gt), _array(pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def psnr(gt, pred, maxval: float | None = None) -> float:
    """skimage PSNR of the volume with ``data_range = gt.max()`` (fastMRI's ``psnr``); ``inf``
    for a perfect reconstruction."""
    gt, pred = _array(gt), _array(pred)
    data_range = gt.max() if maxval is None else maxval
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(gt, pred, data_range=data_range))


def ssim(gt, pred, maxval: float | None = None) -> float:
    """Mean over slices of skimage SSIM with ``data_range = gt.max()`` of the volume (fastMRI's ``ssim``)."""
    gt, pred = _array(gt), _array(pred)
    _check(gt, pred)
    data_range = gt.max() if maxval is None else maxval
    total = 0.0
    for index in range(gt.shape[0]):
        total = total + structural_similarity(gt[index], pred[index], data_range=data_range)
    return float(total / gt.shape[0])


def volume_metrics(target, recon, data_range: float | None = None, crop: bool = True) -> dict[str, float]:
    """fastMRI's scores of one volume: ``{"nmse", "psnr", "ssim", "mse"}``.

    :param target, recon: (slices, h, w) magnitude volumes (numpy or torch); a 2D image counts
        as one slice.
    :param data_range: default the target volume's maximum (fastMRI); pass it to score a subset
        of slices with the whole volume's range.
    :param crop: centre-crop both to the target's width first, as ``evaluate.py`` does.
    """
    target, recon = _array(target), _array(recon)
    if target.ndim == 2:
        target = target[None]
        if recon.ndim == 2:
            recon = recon[None]
    if crop:
        target, recon = crop_to_target_width(target, recon)
    _check(target, recon)
    maxval = target.max() if data_range is None else data_range
    return {"nmse": nmse(target, recon), "psnr": psnr(target, recon, maxval), "ssim": ssim(target, recon, maxval),
            "mse": mse(target, recon)}


def slice_metrics(target, recon, data_range: float | None = None) -> dict[str, float]:
    """The same scores for one slice (h, w) (``data_range``: usually the volume's maximum)."""
    target, recon = _array(target), _array(recon)
    if target.ndim != 2:
        raise DataError(f"slice_metrics takes one slice (h, w); got {target.shape}")
    return volume_metrics(target[None], recon[None], data_range=data_range, crop=False)


def aggregate(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "std", "two_std", "n"}`` over volumes as fastMRI reports them: runstats' mean
    and sample standard deviation (``ddof = 1``); ``std`` is ``nan`` for fewer than two volumes."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        raise DataError("no values to aggregate")
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return {"mean": mean, "std": std, "two_std": 2 * std, "n": int(v.size)}


def evaluate(pairs: Iterable[tuple]) -> dict[str, dict[str, float]]:
    """fastMRI's ``evaluate``: ``pairs`` of (target, reconstruction) volumes -> per metric the
    ``aggregate`` of the per-volume scores (``{"nmse": {"mean", "std", "two_std", "n"}, ...}``)."""
    scores = [volume_metrics(target, recon) for target, recon in pairs]
    if not scores:
        raise DataError("no volumes to evaluate")
    return {name: aggregate(s[name] for s in scores) for name in ("mse", *METRICS)}


def format_aggregate(summary: dict[str, dict[str, float]]) -> str:
    """``"NMSE = 0.01234 +/- 0.002 PSNR = ..."`` as fastMRI prints (4 significant digits, sorted names)."""
    return " ".join(f"{name.upper()} = {summary[name]['mean']:.4g} +/- {summary[name]['two_std']:.4g}"
                    for name in sorted(summary))
