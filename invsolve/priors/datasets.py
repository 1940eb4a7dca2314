"""Training data for ``invsolve train``: 2D images and 2D slices of the user's scans.

Sources (``--data``):

- ``ellipses``: seeded random-ellipse CT phantoms (``invsolve.phantoms``), fresh every step;
- ``motion-kernels``: seeded ``motionblur`` kernels of ``size`` x ``size`` divided by their peak
  (``invsolve.kernels``), fresh every step: the kernel prior of BlindDPS;
- ``darcy-fields``: seeded two-valued permeability fields (``invsolve.fields``, FNO's Darcy data),
  fresh every step: the field prior of the Darcy inverse problem;
- a folder, file or glob of **images** (PNG, JPEG, TIFF, ...; Pillow), **NIfTI** volumes
  (``.nii``/``.nii.gz``; nibabel), **DICOM** series (pydicom) or **fastMRI HDF5** files (h5py);
- ``mni152``: the MRI brain recipe on nilearn's offline MNI152 2009a templates (T1, grey- and
  white-matter maps), validated on different brains (nibabel's ``anatomical.nii`` and ``example4d.nii.gz``).

Every file source goes through the same pipeline, once, at start-up (the slices are kept in memory):

1. read a *unit*: an image file, a NIfTI file, a DICOM series, or a fastMRI file;
2. normalise the unit's intensities to [0, 1] as a whole (so slices of one volume keep their
   relative contrast): with ``window=(lo, hi)`` (e.g. a CT HU window) ``clip((v - lo) / (hi - lo), 0, 1)``,
   else ``clip((v - p_lo) / (p_hi - p_lo), 0, 1)`` with the unit's ``percentiles`` (default 0.5 and 99.5);
   8/16-bit images are divided by 255 / 65535 instead (unless a window is given); complex data are
   divided by ``p_hi`` of the magnitude and their magnitude clipped to 1 (channels: real, imaginary);
3. cut 2D slices (NIfTI along ``slice_axis`` after reorientation to RAS, DICOM/fastMRI slices as
   stored), dropping those whose fraction of pixels above 0.05 is below ``min_foreground``;
4. centre-crop each slice to a square of its shorter side, then resize to ``size`` x ``size``
   (``area`` averaging when shrinking, bilinear when enlarging).

Units, never slices, are split between training and validation: a seeded permutation of the units
puts ``round(val_fraction * units)`` of them (at least one) in validation, so no volume has slices
on both sides. Sampling draws slice indices and augmentations from the ``torch.Generator`` the
training loop passes in, so a run is reproducible from its seed and resumes exactly.

Augmentations (``augment``): ``flip`` (left-right), ``vflip`` (up-down), ``rotate`` (uniform
+-10 degrees), ``scale`` (zoom 0.9-1.1), ``gamma`` (``x ** g``, ``ln g ~ U(-0.3, 0.3)``, magnitude
only), ``intensity`` (multiply by U(0.9, 1.1), clipped to the physical range). Rotation and zoom
resample bilinearly with zero padding.
"""

from __future__ import annotations

import dataclasses
import functools
import glob as globlib
import hashlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Callable

import h5py
import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..errors import ConfigError, DataError, InvsolveError
from ..fastmri.reader import checked_dataset
from ..fields import ALPHA, HELDOUT_FIELD_SEED, TAU, heldout_fields, random_fields
from ..kernels import HELDOUT_KERNEL_SEED, INTENSITY, heldout_motion_kernels, random_motion_kernels
from ..phantoms import random_ellipses

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
HDF5_SUFFIXES = (".h5", ".hdf5")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
FORMATS = ("auto", "images", "nifti", "dicom", "fastmri")
AUGMENTATIONS = ("flip", "vflip", "rotate", "scale", "gamma", "intensity")
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
VALIDATION_SEED = 2_000_003
"""Seed of the ellipse validation phantoms (distinct from training seed 0 and held-out seed 1_000_003)."""
MNI152_FOV_MM = (64.0, 192.0)
"""Field of view of the mni152 training crops (log-uniform), in mm; the held-out brains are seen at 64 and 192 mm."""


@dataclasses.dataclass
class TrainingData:
    """What the training loop needs from a data source.

    ``sample(batch, generator)`` returns (batch, channels, size, size) in physical units;
    ``validation`` is a fixed (N, channels, size, size) tensor or None; ``scale``/``offset`` map
    physical units to model space (``x_model = scale * x + offset``).
    """

    sample: Callable[[int, torch.Generator], torch.Tensor]
    validation: torch.Tensor | None
    channels: int
    scale: float
    offset: float
    physical_range: tuple[float, float]
    summary: str
    description: dict
    fingerprint: str | None = None
    """Identifies the training files (names and sizes); a resumed run refuses other files."""
    slices: torch.Tensor | None = None
    """The training slices before augmentation, for sources with a finite set: (N, C, size, size) for
    files, the 1 mm template slices (N, 1, 233, 197) that ``mni152`` cuts its crops from."""


@dataclasses.dataclass
class Unit:
    """One split unit (an image file, NIfTI file, DICOM series or fastMRI file) and its slices (n, C, H, W)."""

    name: str
    slices: torch.Tensor


# ----------------------------------------------------------------------------------------------
# intensities and geometry


def normalize(volume: np.ndarray, window: tuple[float, float] | None = None,
              percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map a real volume to [0, 1]: a fixed ``window`` (lo, hi) or the volume's own percentiles."""
    volume = np.asarray(volume, dtype=np.float64)
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
    else:
        lo, hi = (float(v) for v in np.percentile(volume, percentiles))
    if not hi > lo:
        hi = lo + 1.0  # constant volume: map it to 0 rather than divide by zero
    return np.clip((volume - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def normalize_complex(volume: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Divide a complex volume by the ``percentile`` of its magnitude and clip the magnitude to 1."""
    magnitude = np.abs(volume)
    peak = float(np.percentile(magnitude, percentile)) or 1.0
    volume = volume / peak
    magnitude = magnitude / peak
    return (volume / np.maximum(magnitude, 1.0)).astype(np.complex64)


def square_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop (..., H, W) to a square of the shorter side, then resize to (size, size)."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = images[..., top:top + side, left:left + side]
    lead = x.shape[:-2]
    x = x.reshape(-1, 1, side, side).float()
    if side > size:
        x = F.interpolate(x, size=(size, size), mode="area")
    elif side < size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.reshape(*lead, size, size)


def _foreground_filter(slices: torch.Tensor, min_foreground: float) -> torch.Tensor:
    if min_foreground <= 0:
        return slices
    magnitude = slices.abs().amax(dim=1)  # (n, H, W)
    keep = (magnitude > 0.05).float().mean(dim=(-2, -1)) >= min_foreground
    return slices[keep]


def _display_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """Slices of a RAS volume along ``axis`` as (n, rows, cols) for display.

    Rows run from the top down (superior or anterior at the top); columns follow the first
    remaining RAS axis (for axial slices: the patient's left on the image left, the neurological
    convention).
    """
    moved = np.moveaxis(volume, axis, 0)  # (n, a, b) with a, b the remaining RAS axes
    return np.ascontiguousarray(np.flip(np.swapaxes(moved, 1, 2), axis=1))


# ----------------------------------------------------------------------------------------------
# readers: each returns the units of one path, normalised, at native resolution


def read_image(path: Path, window=None, percentiles=(0.5, 99.5)) -> Unit:
    with Image.open(path) as image:
        if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
            image = image.convert("L")
        array = np.asarray(image)
    if array.ndim != 2:
        raise DataError(f"{path}: expected a grayscale image, got array shape {array.shape}")
    if window is not None:
        scaled = normalize(array, window)
    elif array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16 or image.mode.startswith("I;16"):
        scaled = array.astype(np.float32) / 65535.0
    elif array.dtype == bool:
        scaled = array.astype(np.float32)
    else:
        scaled = normalize(array, None, percentiles)
    return Unit(path.name, torch.from_numpy(np.ascontiguousarray(scaled))[None, None])


def read_nifti(path: Path, slice_axis: str = "axial", window=None, percentiles=(0.5, 99.5)) -> Unit:
    if slice_axis not in SLICE_AXES:
        raise ConfigError(f"slice_axis must be one of {sorted(SLICE_AXES)}, got {slice_axis!r}")
    image = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DataError(f"{path}: expected a 3D or 4D NIfTI volume, got shape {data.shape}")
    slices = []
    for t in range(data.shape[3]):  # each 3D volume of a 4D series is normalised on its own
        volume = normalize(data[..., t], window, percentiles)
        slices.append(_display_slices(volume, SLICE_AXES[slice_axis]))
    return Unit(path.name, torch.from_numpy(np.concatenate(slices))[:, None])


def read_dicom_series(paths: list[Path], window=None, percentiles=(0.5, 99.5)) -> list[Unit]:
    """Group DICOM files by SeriesInstanceUID; each series is one unit (slices sorted along the normal)."""
    try:
        import pydicom
    except ImportError as err:
        raise ImportError("DICOM training data needs pydicom: pip install invsolve[dicom]") from err
    series: dict[str, list] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path))
        except pydicom.errors.InvalidDicomError as err:
            raise DataError(f"{path} is not a DICOM file ({err}); remove it or choose --data-format") from err
        if "PixelData" not in ds:
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", path.parent)), []).append((path, ds))
    units = []
    for uid, items in sorted(series.items(), key=lambda kv: str(kv[1][0][0])):
        def position(item):
            ds = item[1]
            if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
                o = np.asarray(ds.ImageOrientationPatient, dtype=float)
                return float(np.dot(np.cross(o[:3], o[3:]), np.asarray(ds.ImagePositionPatient, dtype=float)))
            return float(ds.get("InstanceNumber", 0) or 0)

        items.sort(key=position)
        frames = []
        for path, ds in items:
            if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
                raise DataError(f"{path}: colour DICOM ({ds.SamplesPerPixel} samples per pixel); "
                                "invsolve trains on grayscale scans only")
            pixels = ds.pixel_array.astype(np.float64)
            pixels = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
            if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                pixels = pixels.max() - pixels
            frames.append(pixels.reshape(-1, *pixels.shape[-2:]))
        shapes = {f.shape[-2:] for f in frames}
        if len(shapes) > 1:
            raise DataError(f"DICOM series {uid} mixes image sizes {sorted(shapes)}")
        volume = normalize(np.concatenate(frames), window, percentiles)
        name = os.path.commonpath([str(p) for p, _ in items]) if len(items) > 1 else str(items[0][0])
        units.append(Unit(f"{Path(name).name} (series {uid[-12:]}, {len(items)} files)", torch.from_numpy(volume)[:, None]))
    return units


def centred_ifft2(kspace: np.ndarray) -> np.ndarray:
    """fastMRI's ``ifft2c``: ifftshift, orthonormal inverse FFT, fftshift over the last two axes."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), axes=axes, norm="ortho"), axes=axes)


def combine_coils(images: np.ndarray, centre_fraction: float = 0.08) -> np.ndarray:
    """Complex coil combination ``sum_c conj(S_c) x_c`` of (S, C, H, W) coil images.

    The sensitivities ``S_c = L_c / sqrt(sum_c |L_c|^2)`` come from low-resolution coil images
    ``L_c`` (the central ``centre_fraction`` of k-space in each direction), so the result has the
    RSS magnitude's weighting and the coils' smooth common phase.
    """
    h, w = images.shape[-2:]
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    mask = np.zeros((h, w), dtype=bool)
    rh, rw = max(2, round(h * centre_fraction / 2)), max(2, round(w * centre_fraction / 2))
    mask[h // 2 - rh:h // 2 + rh, w // 2 - rw:w // 2 + rw] = True
    low = centred_ifft2(kspace * mask)
    maps = low / np.maximum(np.sqrt((np.abs(low) ** 2).sum(axis=1, keepdims=True)), 1e-12)
    return (np.conj(maps) * images).sum(axis=1)


def _centre_crop(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = array.shape[-2:]
    ch, cw = min(h, shape[0]), min(w, shape[1])
    top, left = (h - ch) // 2, (w - cw) // 2
    return array[..., top:top + ch, left:left + cw]


def read_fastmri(path: Path, representation: str = "magnitude", percentiles=(0.5, 99.5)) -> Unit:
    """A fastMRI HDF5 file: ``reconstruction_rss`` (magnitude) or complex images from ``kspace``.

    Magnitude: the ``reconstruction_rss`` target, or, when the file has none, the root sum of
    squares over coils of the k-space images (centred orthonormal inverse FFT, fastMRI's
    ``ifft2c``). Complex: per-slice ``ifft2c`` of ``kspace`` ((S, H, W) single coil, or
    (S, C, H, W) combined by ``combine_coils``), centre-cropped to the RSS target's size when the
    file has one. k-space is read one slice at a time, so memory stays at one slice's worth.
    """
    if representation not in ("magnitude", "complex"):
        raise ConfigError(f"representation must be 'magnitude' or 'complex', got {representation!r}")
    with h5py.File(path, "r") as f:
        kspace, rss = checked_dataset(f, "kspace", path), checked_dataset(f, "reconstruction_rss", path)
        if kspace is None and rss is None:
            raise DataError(f"{path} has neither 'kspace' nor 'reconstruction_rss'; keys: {sorted(f.keys())}")
        target_shape = rss.shape[-2:] if rss is not None else None
        if representation == "magnitude" and rss is not None:
            return Unit(path.name, torch.from_numpy(normalize(rss[()], None, percentiles))[:, None])
        if kspace is None:
            raise DataError(f"{path} has no 'kspace': complex images need k-space (use --representation magnitude)")
        if kspace.ndim not in (3, 4) or kspace.dtype.kind != "c":
            raise DataError(f"{path}: 'kspace' must be complex (slices, H, W) or (slices, coils, H, W), "
                            f"got {kspace.dtype} {kspace.shape}")
        images = []
        for k in range(kspace.shape[0]):
            image = centred_ifft2(kspace[k])  # (H, W) or (C, H, W)
            if representation == "magnitude":
                image = np.sqrt((np.abs(image) ** 2).sum(axis=0)) if image.ndim == 3 else np.abs(image)
            else:
                image = combine_coils(image[None])[0] if image.ndim == 3 else image
                if target_shape is not None:
                    image = _centre_crop(image, target_shape)
            images.append(image)
    images = np.stack(images)
    if representation == "magnitude":
        return Unit(path.name, torch.from_numpy(normalize(images, None, percentiles))[:, None])
    images = normalize_complex(images, percentiles[1])
    return Unit(path.name, torch.from_numpy(np.stack([images.real, images.imag], axis=1).astype(np.float32)))


# ----------------------------------------------------------------------------------------------
# discovery and splitting


def _kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(HDF5_SUFFIXES):
        return "fastmri"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(IMAGE_SUFFIXES):
        return "images"
    return None


def find_files(data: str, data_format: str = "auto") -> tuple[str, list[Path]]:
    """Resolve ``data`` (a file, a folder searched recursively, or a glob) to (format, sorted files)."""
    if data_format not in FORMATS:
        raise ConfigError(f"data format must be one of {FORMATS}, got {data_format!r}")
    path = Path(data).expanduser()
    if any(ch in data for ch in "*?["):
        candidates = [Path(p) for p in globlib.glob(os.path.expanduser(data), recursive=True)]
    elif path.is_dir():
        candidates = [p for p in path.rglob("*")]
    elif path.is_file():
        candidates = [path]
    else:
        raise FileNotFoundError(f"training data {data!r} is neither 'ellipses', 'mni152', a file, a folder nor a glob "
                                "matching files")
    files = sorted(p for p in candidates if p.is_file() and not p.name.startswith("."))
    if data_format == "auto":
        kinds = {_kind_of(p) for p in files} - {None}
        if not kinds and files:
            kinds = {"dicom"}  # DICOM files often carry no suffix
        if len(kinds) != 1:
            raise ConfigError(f"cannot tell the format of {data!r} (found {sorted(kinds) or 'no known files'}); "
                              f"pass --data-format one of {FORMATS[1:]}")
        data_format = kinds.pop()
    if data_format == "dicom":
        chosen = [p for p in files if _kind_of(p) in ("dicom", None)]
    else:
        chosen = [p for p in files if _kind_of(p) == data_format]
    if not chosen:
        raise FileNotFoundError(f"no {data_format} files found in {data!r}")
    return data_format, chosen


def split_units(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``n`` units into (train indices, validation indices), sorted."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return list(range(n)), []
    if n < 2:
        raise ConfigError(f"a validation split needs at least 2 files/volumes, found {n}; "
                          "add files or pass --val-fraction 0 to train without validation")
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def _check_finite(unit: Unit, source) -> Unit:
    if not torch.isfinite(unit.slices).all():
        raise DataError(f"{source} holds NaN or infinite values; replace them (e.g. with 0) or remove the file "
                        "from the training data")
    return unit


def _checked(path: Path, what: str, reader, *args) -> Unit:
    """``reader(path, *args)`` with a ``DataError`` naming ``path`` when the file cannot be read
    (truncated, corrupt, not ``what``) or holds NaN/Inf values."""
    try:
        unit = reader(path, *args)
    except (InvsolveError, MemoryError):
        raise
    except Exception as err:  # PIL, nibabel, gzip, zlib and h5py each raise their own types for a bad file
        detail = str(err).splitlines()[0][:160] if str(err) else ""
        raise DataError(f"{path} cannot be read as {what} ({type(err).__name__}{': ' + detail if detail else ''}); "
                        "replace or remove the file") from None
    return _check_finite(unit, path)


def read_units(config) -> tuple[str, list[Unit]]:
    data_format, files = find_files(config.data, config.data_format)
    window = tuple(config.window) if config.window else None
    percentiles = tuple(config.percentiles)
    if config.representation == "complex" and data_format != "fastmri":
        raise ConfigError("--representation complex needs fastMRI k-space files (--data-format fastmri)")
    if data_format == "images":
        units = [_checked(p, "an image", read_image, window, percentiles) for p in files]
    elif data_format == "nifti":
        units = [_checked(p, "a NIfTI volume", read_nifti, config.slice_axis, window, percentiles) for p in files]
    elif data_format == "dicom":
        units = read_dicom_series(files, window, percentiles)
        for unit in units:
            _check_finite(unit, f"DICOM series {unit.name}")
    else:
        if window is not None:
            raise ConfigError("--window applies to CT-like real data, not to fastMRI files")
        units = [_checked(p, "a fastMRI HDF5 file", read_fastmri, config.representation, percentiles) for p in files]
    if not units:
        raise DataError(f"no images found in {config.data!r}")
    return data_format, units


# ----------------------------------------------------------------------------------------------
# sampling with augmentation


def affine_resample(images: torch.Tensor, out_size: int, angle: torch.Tensor, zoom: torch.Tensor,
                    centre: torch.Tensor | None = None, fov: torch.Tensor | None = None) -> torch.Tensor:
    """Resample (B, C, H, W) into (B, C, out, out): rotate by ``angle`` (rad), magnify by ``zoom``.

    The output covers a square of side ``fov`` source pixels (default: the shorter side) centred at
    ``centre`` (B, 2) = (x, y) source pixels from the image centre (default 0). Bilinear, zero padding.
    """
    b, _, h, w = images.shape
    fov = torch.full((b,), float(min(h, w))) if fov is None else fov
    half = fov / (2 * zoom)  # source pixels from the output centre to its edge
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * half * 2 / w, -sin * half * 2 / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * half * 2 / h, cos * half * 2 / h
    if centre is not None:
        theta[:, 0, 2], theta[:, 1, 2] = centre[:, 0] * 2 / w, centre[:, 1] * 2 / h
    grid = F.affine_grid(theta, (b, images.shape[1], out_size, out_size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(x: torch.Tensor, augment: tuple[str, ...], generator: torch.Generator, complex_data: bool,
                  physical_range: tuple[float, float]) -> torch.Tensor:
    """Apply the named intensity and flip augmentations to (B, C, H, W) in a fixed order."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)
    if "flip" in augment:
        x = torch.where(torch.rand(shape, generator=generator) < 0.5, x.flip(-1), x)
    if "vflip" in augment:
        x = torch.where(torch.rand(shape, generator=generator) < 0.5, x.flip(-2), x)
    if "gamma" in augment:
        if complex_data:
            raise ConfigError("the gamma augmentation applies to magnitude images only")
        gamma = torch.exp(0.3 * (2 * torch.rand(shape, generator=generator) - 1))
        x = x.clamp_min(0) ** gamma
    if "intensity" in augment:
        x = (x * (0.9 + 0.2 * torch.rand(shape, generator=generator))).clamp(*physical_range)
    return x


def check_augment(augment) -> tuple[str, ...]:
    augment = tuple(augment)
    unknown = sorted(set(augment) - set(AUGMENTATIONS))
    if unknown:
        raise ConfigError(f"unknown augmentations {unknown}; choose from {AUGMENTATIONS}")
    return augment


def _geometry(b: int, augment: tuple[str, ...], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    angle = (2 * torch.rand(b, generator=generator) - 1) * math.radians(10) if "rotate" in augment else torch.zeros(b)
    zoom = 0.9 + 0.2 * torch.rand(b, generator=generator) if "scale" in augment else torch.ones(b)
    return angle, zoom


def slices_sampler(train: torch.Tensor, augment: tuple[str, ...], complex_data: bool,
                   physical_range: tuple[float, float]) -> Callable[[int, torch.Generator], torch.Tensor]:
    """Uniform draws from ``train`` (N, C, S, S) with augmentation, all from ``generator``."""
    geometric = "rotate" in augment or "scale" in augment

    def sample(batch: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(train.shape[0], (batch,), generator=generator)
        x = train[idx]
        if geometric:
            angle, zoom = _geometry(batch, augment, generator)
            x = affine_resample(x, x.shape[-1], angle, zoom)
        return augment_batch(x, augment, generator, complex_data, physical_range)

    return sample


def _validation_subset(val: torch.Tensor, n: int) -> torch.Tensor:
    if val.shape[0] <= n:
        return val
    idx = torch.linspace(0, val.shape[0] - 1, n).round().long()
    return val[idx]


def _names(units: list[Unit], idx: list[int], limit: int = 50) -> list[str]:
    names = [units[i].name for i in idx]
    return names if len(names) <= limit else names[:limit] + [f"... {len(names) - limit} more"]


def file_data(config) -> TrainingData:
    augment = check_augment(config.augment)
    complex_data = config.representation == "complex"
    data_format, units = read_units(config)
    units = [Unit(u.name, _foreground_filter(square_resize(u.slices, config.size), config.min_foreground)) for u in units]
    train_idx, val_idx = split_units(len(units), config.val_fraction, config.seed)
    train = torch.cat([units[i].slices for i in train_idx])
    if train.shape[0] == 0:
        raise DataError("no training slices left (lower --min-foreground?)")
    val = torch.cat([units[i].slices for i in val_idx]) if val_idx else None
    physical_range = (-1.0, 1.0) if complex_data else (0.0, 1.0)
    window = list(config.window) if config.window else None
    if complex_data:
        norm = (f"per file: complex images divided by the {config.percentiles[1]} percentile of the magnitude, "
                "magnitude clipped to 1; channels (real, imaginary)")
    elif window is not None:
        norm = f"fixed window {window} (after DICOM rescale slope/intercept) mapped to [0, 1], clipped"
    elif data_format == "images":
        norm = "8-bit / 16-bit pixel values divided by 255 / 65535 (other types: per-image percentiles)"
    else:
        norm = f"per volume: percentiles {list(config.percentiles)} mapped to [0, 1], clipped"
    description = {
        "source": config.data, "format": data_format, "representation": config.representation,
        "slice_axis": config.slice_axis if data_format == "nifti" else None,
        "normalisation": norm, "resize": f"centre crop to square, then resize to {config.size}x{config.size}",
        "min_foreground": config.min_foreground, "augment": list(augment),
        "split": {"unit": "file" if data_format != "dicom" else "DICOM series", "seed": config.seed,
                  "val_fraction": config.val_fraction},
        "train": {"units": len(train_idx), "slices": int(train.shape[0]), "files": _names(units, train_idx)},
        "validation": {"units": len(val_idx), "slices": 0 if val is None else int(val.shape[0]),
                       "files": _names(units, val_idx)},
        "physical_range": list(physical_range),
    }
    _, files = find_files(config.data, config.data_format)
    listing = "\n".join(f"{p.resolve()}\t{p.stat().st_size}" for p in files)
    fingerprint = hashlib.sha256(listing.encode()).hexdigest()
    what = "complex (real, imaginary)" if complex_data else "magnitude"
    summary = f"{what} slices of {len(train_idx)} {data_format} {'series' if data_format == 'dicom' else 'files'} from {config.data}"
    return TrainingData(sample=slices_sampler(train, augment, complex_data, physical_range),
                        validation=None if val is None else _validation_subset(val, config.val_images),
                        channels=2 if complex_data else 1, scale=1.0 if complex_data else 2.0,
                        offset=0.0 if complex_data else -1.0, physical_range=physical_range,
                        summary=summary, description=description, fingerprint=fingerprint, slices=train)


# ----------------------------------------------------------------------------------------------
# built-in sources


def ellipse_data(config) -> TrainingData:
    if config.representation != "magnitude" or tuple(config.augment):
        raise ConfigError("the ellipses source takes no --augment and no --representation complex")

    def sample(batch, generator):
        return random_ellipses(batch, config.size, generator)

    validation = random_ellipses(config.val_images, config.size, torch.Generator().manual_seed(VALIDATION_SEED)) \
        if config.val_images > 0 else None
    return TrainingData(sample=sample, validation=validation, channels=1, scale=2.0, offset=-1.0,
                        physical_range=(0.0, 1.0), summary="random-ellipse CT phantoms",
                        description={"source": "invsolve.phantoms.random_ellipses", "seed": config.seed,
                                     "physical_range": [0.0, 1.0],
                                     "note": "fresh phantoms every step (no finite training set)",
                                     "validation": {"source": "random_ellipses", "seed": VALIDATION_SEED,
                                                    "slices": config.val_images}})


@dataclasses.dataclass(frozen=True)
class GeneratedSource:
    """A ``--data`` source drawn fresh every step from seeded generators (no files, no finite set).

    ``train(n, size, generator)`` draws training images (seeds below ``2**31``), ``heldout(n, size)``
    the held-out ones (seeds from ``2**31``, never drawn in training); both in [0, 1], one channel.
    """

    train: Callable
    heldout: Callable
    summary: str
    units: str
    heldout_seed: int
    details: dict

    @staticmethod
    def label(fn: Callable) -> str:
        return f"{fn.__module__}.{fn.__name__}"


GENERATED_SOURCES = {
    "motion-kernels": GeneratedSource(
        random_motion_kernels, heldout_motion_kernels,
        f"motion-blur kernels (motionblur, intensity {INTENSITY})", "kernel / peak", HELDOUT_KERNEL_SEED,
        {"intensity": INTENSITY, "units": "kernel divided by its peak (a blur uses it normalised to sum 1)"}),
    "darcy-fields": GeneratedSource(
        random_fields, heldout_fields,
        f"two-valued Darcy permeability fields (thresholded GRF, alpha {ALPHA:g}, tau {TAU:g})", "field indicator",
        HELDOUT_FIELD_SEED, {"alpha": ALPHA, "tau": TAU, "units": "1 where the field is high (a = 12), 0 where low (a = 3)"}),
}
"""The generated ``--data`` sources: each is its generator's training stream and its held-out set."""


def generated_data(config) -> TrainingData:
    """A ``GENERATED_SOURCES`` source: [0, 1] -> [-1, 1] in model space, validated on the validation seed."""
    source = GENERATED_SOURCES[config.data]
    if config.representation != "magnitude" or tuple(config.augment):
        raise ConfigError(f"the {config.data} source takes no --augment and no --representation complex")

    def sample(batch, generator):
        return source.train(batch, config.size, generator)

    validation = source.train(config.val_images, config.size, torch.Generator().manual_seed(VALIDATION_SEED)) \
        if config.val_images > 0 else None  # as the ellipses: the held-out draws stay for the evaluation alone
    return TrainingData(sample=sample, validation=validation, channels=1, scale=2.0, offset=-1.0,
                        physical_range=(0.0, 1.0), summary=source.summary,
                        description={"source": source.label(source.train), "seed": config.seed, **source.details,
                                     "physical_range": [0.0, 1.0],
                                     "note": "fresh draws every step (no finite training set)",
                                     "validation": {"source": source.train.__name__, "seed": VALIDATION_SEED,
                                                    "slices": config.val_images}})


BUILTIN_SOURCES = ("ellipses", "mni152", *GENERATED_SOURCES)
"""``--data`` names that are generated or shipped, not files (each has its own held-out set)."""


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {package} package is needed for this data source: pip install {package}")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package}")
    return path


MNI152_FILES = tuple(f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm"))


def mni152_volumes(percentiles=(0.5, 99.5)) -> list[Unit]:
    """nilearn's MNI152 2009a T1, grey- and white-matter templates (1 mm), as axial slices in [0, 1].

    Read once per process and percentiles (cached; callers must not modify the tensors in place).
    """
    return list(_mni152_volumes(tuple(float(p) for p in percentiles)))


@functools.lru_cache(maxsize=1)
def _mni152_volumes(percentiles: tuple[float, float]) -> tuple[Unit, ...]:
    return tuple(read_nifti(_package_file("nilearn", "datasets", "data", name), "axial", None, percentiles)
                 for name in MNI152_FILES)


HELDOUT_BRAINS = {
    "anatomical.nii": "a real T1 brain, 33 x 41 x 25 voxels of 2 mm (a crop around the ventricles); "
                      "all 25 axial slices, central 64 mm field of view",
    "example4d.nii.gz": "a real EPI (T2*-weighted) series, 128 x 96 x 24 voxels of 2 x 2 x 2.2 mm, 2 volumes; "
                        "axial slices of their mean with at least 15% foreground, central 192 mm field of view",
}
"""The held-out brains of the ``mni152`` prior (nibabel's test data); never used in training."""


def brain_heldout_sets(size: int = 64, percentiles=(0.5, 99.5)) -> dict[str, torch.Tensor]:
    """Held-out brains for the ``mni152`` prior, each as (n, 1, size, size) in [0, 1].

    Two real scans of individual brains (``HELDOUT_BRAINS``; not templates, and not the MNI152
    files the prior trains on), normalised
    like the training volumes (per-volume percentiles): ``anatomical.nii`` centre-cropped to 64 mm
    (32 voxels) and ``example4d.nii.gz`` (mean of its two volumes) centre-cropped to a 192 mm
    square (96 voxels), both resized to ``size`` x ``size``.
    """
    anatomical = read_nifti(_package_file("nibabel", "tests", "data", "anatomical.nii"), "axial", None, percentiles)
    path = _package_file("nibabel", "tests", "data", "example4d.nii.gz")
    image = nib.as_closest_canonical(nib.load(str(path)))
    mean = np.asarray(image.dataobj, dtype=np.float32).mean(axis=-1)
    epi = torch.from_numpy(_display_slices(normalize(mean, None, percentiles), SLICE_AXES["axial"]))[:, None]
    epi = _foreground_filter(epi, 0.15)
    return {"anatomical.nii": square_resize(_centre_crop(anatomical.slices, (32, 32)), size),
            "example4d.nii.gz": square_resize(epi, size)}


def brain_heldout(size: int = 64, percentiles=(0.5, 99.5)) -> torch.Tensor:
    """All held-out brain slices of ``brain_heldout_sets``, concatenated in its order."""
    return torch.cat(list(brain_heldout_sets(size, percentiles).values()))


def mni152_data(config) -> TrainingData:
    """Random crops of MNI152 axial slices; validation on the held-out brains (``brain_heldout``).

    Each draw: a training slice (T1, GM or WM map; slices with less than ``max(min_foreground, 0.15)``
    foreground dropped), a field of view log-uniform in ``MNI152_FOV_MM`` (64 mm, the held-out scale,
    up to a whole 192 mm slice), a centre that keeps small crops inside the brain, the geometric
    augmentations (rotation, zoom) folded into one bilinear resampling to ``size`` x ``size``, then
    the flip and intensity augmentations.
    """
    if config.representation != "magnitude":
        raise ConfigError("the mni152 source is magnitude only")
    augment = check_augment(config.augment)
    units = mni152_volumes(tuple(config.percentiles))
    min_fg = max(config.min_foreground, 0.15)
    slices = torch.cat([_foreground_filter(u.slices, min_fg) for u in units])  # (N, 1, H, W), 1 mm pixels
    foreground = slices[:, 0] > 0.05
    h, w = slices.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32)[None, :, None]
    cols = torch.arange(w, dtype=torch.float32)[None, None, :]
    big = torch.finfo(torch.float32).max
    ys = torch.stack([torch.where(foreground, rows, big).amin((1, 2)), torch.where(foreground, rows, -big).amax((1, 2))], 1)
    xs = torch.stack([torch.where(foreground, cols, big).amin((1, 2)), torch.where(foreground, cols, -big).amax((1, 2))], 1)
    bbox_centre = torch.stack([xs.mean(1) - (w - 1) / 2, ys.mean(1) - (h - 1) / 2], 1)  # pixels from the image centre
    bbox_half = torch.stack([(xs[:, 1] - xs[:, 0]) / 2, (ys[:, 1] - ys[:, 0]) / 2], 1)
    lo, hi = (math.log(v) for v in MNI152_FOV_MM)
    physical_range = (0.0, 1.0)

    def sample(batch: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(slices.shape[0], (batch,), generator=generator)
        fov = torch.exp(lo + (hi - lo) * torch.rand(batch, generator=generator))
        slack = (bbox_half[idx] - fov[:, None] / 2).clamp_min(0)
        centre = bbox_centre[idx] + slack * (2 * torch.rand(batch, 2, generator=generator) - 1)
        angle, zoom = _geometry(batch, augment, generator)
        x = affine_resample(slices[idx], config.size, angle, zoom, centre=centre, fov=fov)
        return augment_batch(x, augment, generator, False, physical_range)

    validation = brain_heldout(config.size, tuple(config.percentiles)) if config.val_images > 0 else None
    description = {
        "source": "mni152", "files": [f"nilearn/datasets/data/{n}" for n in MNI152_FILES],
        "normalisation": f"per volume: percentiles {list(config.percentiles)} mapped to [0, 1], clipped",
        "slices": {"train": int(slices.shape[0]), "axis": "axial", "min_foreground": min_fg},
        "crops": f"field of view log-uniform in {list(MNI152_FOV_MM)} mm, resampled to {config.size}x{config.size}",
        "augment": list(augment),
        "validation": {"source": {f"nibabel/tests/data/{k}": v for k, v in HELDOUT_BRAINS.items()},
                       "slices": None if validation is None else int(validation.shape[0]),
                       "note": "different brains, never used in training; monitoring only (no model selection)"},
        "physical_range": [0.0, 1.0],
    }
    return TrainingData(sample=sample, validation=validation, channels=1, scale=2.0, offset=-1.0,
                        physical_range=physical_range,
                        summary="crops of axial MNI152 T1/GM/WM template slices (nilearn)", description=description,
                        slices=slices)


def build(config) -> TrainingData:
    """The ``TrainingData`` of a ``TrainConfig``'s ``data`` (``BUILTIN_SOURCES`` or files)."""
    if config.representation not in ("magnitude", "complex"):
        raise ConfigError(f"representation must be 'magnitude' or 'complex', got {config.representation!r}")
    if config.data == "ellipses":
        return ellipse_data(config)
    if config.data == "mni152":
        return mni152_data(config)
    if config.data in GENERATED_SOURCES:
        return generated_data(config)
    return file_data(config)
