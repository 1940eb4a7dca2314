"""Classical reconstructions of fastMRI volumes, scored like fastMRI's baselines.

``reconstruct(method, volume, mask)`` reconstructs every selected slice of a ``FastMRIVolume``
from its k-space under a (W,) column mask and returns magnitude images (slices, h, w) at the
target size (``volume.target_size``), ready for ``invsolve.fastmri.metrics``:

- ``zero-filled``: ``rss(ifft2c(M y))`` centre-cropped (``fastmri_examples/zero_filled``:
  single-coil files take the magnitude, multi-coil the RSS over coils; as there, a crop wider than
  the image height falls back to ``(H, H)``, fastMRI's "FLAIR 203" rule);
- ``sense``: CG-SENSE (Pruessmann et al., MRM 2001) with ``operators.mri.SenseMRI.A_dagger``:
  conjugate gradients on ``(A^H A + tikhonov I) x = A^H y`` from zero, ``max_iter`` iterations;
- ``l1-wavelet``: ``min_x ||M F S x - y||^2 / 2 + lamda ||W x||_1`` (Daubechies-4 wavelets),
  FISTA, via ``sigpy.mri.app.L1WaveletRecon`` (Lustig, Donoho & Pauly, MRM 2007; mikgroup/sigpy);
  needs the ``mri`` extra;
- ``tv``: ``min_x ||A x - y||^2 / 2 + lam TV(x)`` (isotropic TV of the real and imaginary parts),
  FISTA with deepinv's TV proximal step, via ``invsolve.baselines.tv``.

Coil maps (multi-coil files), unless given: ``coil_maps="auto"`` uses ESPIRiT (Uecker et al.,
MRM 2014; ``operators.coils.estimate_coil_maps``, sigpy) on the autocalibration (ACS) lines when
the mask's fully sampled centre band has at least ``2 * kernel_width`` (12) columns (fastMRI's
320-column brain data: 26 at 4x, 13 at 8x), otherwise low-resolution maps ``L_n / rss(L)`` with
``L_n`` the coil images of the ACS band alone (the initial estimate of fastMRI's VarNet
sensitivity model), e.g. for small synthetic data. ``"espirit"`` / ``"lowres"`` force one.
Single-coil files use a single map of ones.

Scale: each slice's k-space is divided by the 99.5th percentile of its zero-filled image (cropped),
so the regularisation weights (``lamda``, ``lam``, ``tikhonov``) are relative to an image of
unit intensity and work across fastMRI's arbitrary units; the result is scaled back.
"""

from __future__ import annotations

import numpy as np
import torch

from operators.coils import calibration_slices, estimate_coil_maps
from operators.mri import SenseMRI, center_crop, ifftc

from ..baselines import tv
from ..errors import ConfigError, DataError, UnknownOptionError
from .masks import acs_band

METHODS = ("zero-filled", "sense", "l1-wavelet", "tv")
"""Baseline names (the benchmark's ``--methods`` accepts these)."""

DEFAULTS: dict[str, dict] = {
    "zero-filled": {},
    "sense": {"max_iter": 10, "tol": 1e-6, "tikhonov": 0.0},
    "l1-wavelet": {"lamda": 0.001, "max_iter": 100, "wave_name": "db4"},
    "tv": {"lam": 0.01, "iterations": 200, "prox_iterations": 20},
}
"""Method options and their defaults (weights relative to a unit-intensity image; chosen on the
synthetic set's training split at 4x and 8x by ``benchmarks/fastmri/tune.py``, table in
``benchmarks/fastmri/tune_baselines.md``); every method but ``zero-filled``
also takes the coil-map options ``MAP_OPTIONS``."""

MAP_OPTIONS = {"coil_maps": "auto", "calib_width": 24, "kernel_width": 6, "thresh": 0.02, "crop": 0.95}
"""``coil_maps``: ``auto``, ``espirit`` or ``lowres``; the rest are ESPIRiT's (``calib_width`` is
capped at the ACS band's width)."""

SCALE_PERCENTILE = 99.5


# ------------------------------------------------------------------------------------------
# helpers


def _ifftc(x: torch.Tensor) -> torch.Tensor:
    return ifftc(x)


def crop_size(volume, height: int) -> tuple[int, int]:
    """fastMRI's crop: the target size, or ``(H, H)`` when the target is wider than the image height."""
    h, w = volume.target_size
    if height < w:
        return height, height
    return h, w


def _crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return center_crop(x, size)


def coil_kspace(volume) -> torch.Tensor:
    """Complex k-space (slices, coils, H, W) of a volume (single-coil files: one coil)."""
    kspace = torch.from_numpy(np.ascontiguousarray(volume.kspace))
    if not kspace.is_complex():
        raise DataError(f"{volume.fname}: k-space must be complex, got {kspace.dtype}")
    if kspace.ndim == 3:
        kspace = kspace[:, None]
    if kspace.ndim != 4:
        raise DataError(f"{volume.fname}: k-space must be (slices, [coils,] H, W), got {tuple(kspace.shape)}")
    return kspace.to(torch.complex64)


def _mask_tensor(volume, mask) -> torch.Tensor:
    width = volume.kspace.shape[-1]
    if mask is None:
        if volume.mask is None:
            raise DataError(f"{volume.fname} is fully sampled: give the mask, e.g. "
                            f"invsolve.fastmri.masks.volume_mask(volume, 'equispaced_fraction', 4)")
        mask = volume.mask
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float32)).reshape(-1)
    if mask.numel() != width:
        raise DataError(f"the mask has {mask.numel()} columns; {volume.fname} has {width} k-space columns")
    return mask


def zero_filled(measured: torch.Tensor) -> torch.Tensor:
    """RSS magnitude (slices, H, W) of the zero-filled coil images of (slices, coils, H, W) k-space."""
    return _ifftc(measured).abs().square().sum(1).sqrt()


def lowres_maps(measured: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``L_n / sqrt(sum_n |L_n|^2)``, ``L_n`` the coil images of the ACS band alone (slices, coils, H, W)."""
    left, right = acs_band(mask.numpy())
    band = torch.zeros_like(mask)
    band[left:right] = 1
    low = _ifftc(measured * band)
    return low / low.abs().square().sum(1, keepdim=True).sqrt().clamp_min(eps)


def espirit_maps(measured: torch.Tensor, mask: torch.Tensor, calib_width: int = 24, kernel_width: int = 6,
                 thresh: float = 0.02, crop: float = 0.95) -> torch.Tensor:
    """ESPIRiT maps (slices, coils, H, W) per slice from the ACS band (``calib_width`` capped so
    that the square calibration region at the centre lies inside the band)."""
    left, right = acs_band(mask.numpy())
    width = mask.numel()
    calib = min(int(calib_width), right - left, measured.shape[-2])
    while calib > 0:
        columns = calibration_slices((width,), calib)[0]
        if left <= columns.start and columns.stop <= right:
            break
        calib -= 1
    if calib <= kernel_width:
        raise ConfigError(f"ESPIRiT needs more than kernel_width={kernel_width} fully sampled centre columns; the mask "
                          f"has {right - left}: use coil_maps='lowres' or a lower kernel_width")
    return estimate_coil_maps(measured, calib_width=calib, kernel_width=kernel_width, thresh=thresh, crop=crop)


def estimate_maps(measured: torch.Tensor, mask: torch.Tensor, coil_maps: str = "auto", calib_width: int = 24,
                  kernel_width: int = 6, thresh: float = 0.02, crop: float = 0.95) -> torch.Tensor:
    """Coil maps (slices, coils, H, W) from undersampled k-space: ``auto``, ``espirit`` or ``lowres``."""
    if measured.shape[1] == 1:
        return torch.ones_like(measured)
    if coil_maps not in ("auto", "espirit", "lowres"):
        raise ConfigError(f"coil_maps must be 'auto', 'espirit' or 'lowres', got {coil_maps!r}")
    if coil_maps == "auto":
        left, right = acs_band(mask.numpy())
        coil_maps = "espirit" if right - left >= 2 * kernel_width else "lowres"
    if coil_maps == "lowres":
        return lowres_maps(measured, mask)
    return espirit_maps(measured, mask, calib_width, kernel_width, thresh, crop)


def _maps_tensor(maps, shape: tuple[int, ...]) -> torch.Tensor:
    maps = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
    if not maps.is_complex():
        raise DataError("coil maps must be complex (slices, coils, H, W) or (coils, H, W)")
    if maps.ndim == 3:
        maps = maps.unsqueeze(0).expand(shape[0], *maps.shape)
    if tuple(maps.shape) != tuple(shape):
        raise DataError(f"coil maps of shape {tuple(maps.shape)} do not fit k-space {tuple(shape)}")
    return maps.to(torch.complex64)


# ------------------------------------------------------------------------------------------
# the methods (complex images (S, H, W) from scaled k-space)


def _sense(y, maps, mask, max_iter, tol, tikhonov):
    height, width = y.shape[-2:]
    physics = SenseMRI(maps, mask=mask, img_size=(height, width), max_iter=int(max_iter), tol=float(tol),
                       tikhonov=float(tikhonov))
    x = physics.A_dagger(torch.view_as_real(y).movedim(-1, 1).contiguous())
    return torch.view_as_complex(x.movedim(1, -1).contiguous())


def _tv(y, maps, mask, lam, iterations, prox_iterations):
    height, width = y.shape[-2:]
    physics = SenseMRI(maps, mask=mask, img_size=(height, width))
    y_real = torch.view_as_real(y).movedim(-1, 1).contiguous()
    x = tv(physics, y_real, lam=float(lam), iterations=int(iterations), x_init=physics.A_adjoint(y_real),
           bounds=None, prox_iterations=int(prox_iterations))
    return torch.view_as_complex(x.movedim(1, -1).contiguous())


def _l1_wavelet(y, maps, mask, lamda, max_iter, wave_name):
    try:
        from sigpy.mri.app import L1WaveletRecon
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the l1-wavelet baseline runs sigpy's L1WaveletRecon: pip install 'invsolve[mri]'") from err
    height, width = y.shape[-2:]
    weights = np.ascontiguousarray(np.broadcast_to(mask.numpy()[None, :], (height, width)))
    out = []
    caller_state = np.random.get_state()
    try:
        for k in range(y.shape[0]):
            # sigpy's step size comes from a power iteration (sigpy.app.MaxEig) started at
            # sigpy.util.randn, which draws from numpy's global RNG: give it a fixed start per slice
            # (same input, same output) and hand the caller's RNG state back untouched
            np.random.seed(L1_WAVELET_POWER_SEED)
            app = L1WaveletRecon(y[k].numpy(), maps[k].numpy(), float(lamda), weights=weights, wave_name=wave_name,
                                 max_iter=int(max_iter), show_pbar=False)
            out.append(torch.from_numpy(np.asarray(app.run())))
    finally:
        np.random.set_state(caller_state)
    return torch.stack(out)


L1_WAVELET_POWER_SEED = 0


# ------------------------------------------------------------------------------------------
# entry point


def resolve_options(method: str, **options) -> dict:
    """All options of a baseline: its ``DEFAULTS`` (and ``MAP_OPTIONS``) updated by ``options``;
    an unknown method or option raises."""
    if method not in METHODS:
        raise ConfigError(f"unknown baseline {method!r}; choose one of {', '.join(METHODS)}")
    allowed = {**DEFAULTS[method], **(MAP_OPTIONS if method != "zero-filled" else {})}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UnknownOptionError(f"unknown options {unknown} for {method}; it takes {sorted(allowed) or 'none'}")
    return {**allowed, **options}


def reconstruct(method: str, volume, mask=None, maps=None, **options) -> np.ndarray:
    """Reconstruct the selected slices of ``volume`` with a classical method.

    :param method: one of ``METHODS``.
    :param volume: a ``FastMRIVolume`` (``reader.read_volume``).
    :param mask: (W,) column mask (``masks.volume_mask``: fastMRI's, seeded per file); ``None``
        for test/challenge files uses the file's own mask.
    :param maps: complex coil maps (slices, coils, H, W) or (coils, H, W); ``None`` estimates
        them (``coil_maps`` option).
    :param options: the method's options (``DEFAULTS``) and ``MAP_OPTIONS``; unknown names raise.
    :returns: float32 magnitude images (slices, h, w) at the target size.
    """
    settings = resolve_options(method, **options)
    kspace = coil_kspace(volume)
    mask_t = _mask_tensor(volume, mask)
    measured = kspace * mask_t
    size = crop_size(volume, kspace.shape[-2])
    with torch.no_grad():
        zf = zero_filled(measured)
        if method == "zero-filled":
            return _crop(zf, size).numpy().astype(np.float32)
        scale = torch.quantile(_crop(zf, size).reshape(zf.shape[0], -1).double(), SCALE_PERCENTILE / 100, dim=1)
        if not bool((scale > 0).all()):
            raise DataError(f"{volume.fname}: a selected slice has an all-zero zero-filled image")
        scale = scale.float().reshape(-1, 1, 1, 1)
        y = measured / scale
        if maps is None:
            coil_maps = estimate_maps(y, mask_t, settings["coil_maps"], settings["calib_width"],
                                      settings["kernel_width"], settings["thresh"], settings["crop"])
        else:
            coil_maps = _maps_tensor(maps, tuple(y.shape))
        if method == "sense":
            images = _sense(y, coil_maps, mask_t, settings["max_iter"], settings["tol"], settings["tikhonov"])
        elif method == "tv":
            images = _tv(y, coil_maps, mask_t, settings["lam"], settings["iterations"], settings["prox_iterations"])
        else:
            images = _l1_wavelet(y, coil_maps, mask_t, settings["lamda"], settings["max_iter"],
                                 settings["wave_name"])
        magnitude = images.abs() * scale.reshape(-1, 1, 1)
    return _crop(magnitude, size).numpy().astype(np.float32)
