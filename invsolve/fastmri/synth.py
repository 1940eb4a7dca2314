"""Synthetic fastMRI-layout multi-coil files from real brain volumes that ship with Python packages.

fastMRI k-space cannot be redistributed, and no raw k-space ships in any package, so the default
benchmark data is *simulated* k-space of *real* brain images, written in fastMRI's multicoil
layout (``reader.py``), so that every tool reads it exactly as a real fastMRI download:

- **training split** (``multicoil_train/``): axial slabs of the MNI152 2009a T1 template
  (nilearn, 1 mm, ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``), each volume a slab at a
  random height, field of view (64-192 mm, log-uniform, as the shipped mri prior's crops),
  in-plane rotation (+-10 deg) and left-right flip;
- **held-out split** (``multicoil_val/``) from *different* brains: nibabel's test data
  ``anatomical.nii`` (a real T1, 2 mm, a 64 mm crop around the ventricles, as the prior's held-out
  validation) and ``example4d.nii.gz`` (a real whole-brain EPI, 2 mm, 192 mm field of view; its
  two time points), alternating; volumes past the first of each source are rotated/flipped variants;
- **test split** (``multicoil_test/``, optional): held-out brains in the test/challenge layout:
  undersampled k-space, ``mask`` (W,) bool, attrs ``acceleration`` and ``num_low_frequency``,
  no target; the mask is fastMRI's, seeded with the file name.

Per volume: intensities mapped to [0, 1] by the source volume's 0.5 / 99.5 percentiles, times
``intensity`` (fastMRI data are in arbitrary small units, ~1e-4 - 1e-3); a smooth random phase
(quadratic polynomial, up to ~1 rad); the image placed at the centre of a readout field of view
``oversampling`` times larger (fastMRI's 640-row k-space for 320-row images); simulated birdcage
coil maps (``operators.coils.birdcage_maps``, RSS-normalised, coils at ``coil_radius`` times the
object's half-size); ``kspace = fftc(maps * image) + noise`` (complex Gaussian, std ``noise``
times ``intensity`` per sample); ``reconstruction_rss`` = centre crop (size x size) of the RSS of
the fully sampled coil images (fastMRI's definition: the target carries the noise as real targets
do). attrs ``max``/``norm`` of the target volume, ``acquisition`` (``AXT1``; ``AXEPI`` for the EPI
source), ``patient_id`` (a hash). The ISMRMRD header gives encoded size (oversampling*size, size,
1), recon size (size, size, 1) and ``kspace_encoding_step_1`` centre ``size // 2``, maximum
``size - 1`` (no zero-padded columns).

Files are written atomically (a hidden temporary beside the final name, then renamed) and never
replaced without ``force``; ``synth.json`` records the parameters and sources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Sequence

import h5py
import nibabel as nib
import numpy as np
from scipy import ndimage

from operators.coils import birdcage_maps

from ..errors import ConfigError
from .masks import file_mask

SPLITS = {"train": "multicoil_train", "val": "multicoil_val", "test": "multicoil_test"}
TRAIN_FOV_MM = (64.0, 192.0)


COMPLETE_MARKER = ".synth-complete"  # written last: a set without it was interrupted


def is_complete(root, parameters: dict | None = None) -> bool:
    """Whether ``root`` holds a finished ``synthesize`` set (its completion marker, written last, and
    every volume its manifest lists), made with ``parameters`` (a subset of ``synth.json``'s) when given."""
    root = Path(root)
    try:
        manifest = json.loads((root / "synth.json").read_text())
        marker = json.loads((root / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("volumes") != len(manifest.get("volumes", ())):
        return False
    if parameters and any(manifest.get("parameters", {}).get(k) != v for k, v in parameters.items()):
        return False
    return all((root / v["file"]).is_file() for v in manifest.get("volumes", ()))


@dataclasses.dataclass
class SynthSet:
    """What ``synthesize`` wrote: the root, the files of each split and the manifest."""

    root: Path
    splits: dict[str, list[Path]]
    manifest: Path
    kspace_shape: tuple[int, ...]
    target_shape: tuple[int, ...]

    def __str__(self) -> str:
        counts = ", ".join(f"{len(files)} {split}" for split, files in self.splits.items())
        return (f"{counts} volumes; k-space {'x'.join(map(str, self.kspace_shape))} (slices, coils, H, W), "
                f"targets {'x'.join(map(str, self.target_shape))}")


# ------------------------------------------------------------------------------------------
# fastMRI file layout


def ismrmrd_header(encoding_size: Sequence[int], recon_size: Sequence[int], center: int, maximum: int,
                   num_slices: int = 1, fov_mm: Sequence[float] | None = None, coils: int = 1,
                   vendor: str = "invsolve synthetic") -> str:
    """A minimal ISMRMRD XML header with what fastMRI reads: encoded and recon matrix sizes
    (x = readout, y = phase encodes, z) and ``kspace_encoding_step_1`` limits (``center``,
    ``maximum``: the acquired columns are ``enc_y // 2 - center`` ... ``+ maximum + 1``)."""
    ex, ey, ez = (int(v) for v in encoding_size)
    rx, ry, rz = (int(v) for v in recon_size)
    fx, fy, fz = (float(v) for v in (fov_mm or (ex, ey, 5.0)))
    rfx, rfy = fx * rx / ex, fy * ry / ey

    def limit(name, lo, hi, mid):
        return f"      <{name}><minimum>{lo}</minimum><maximum>{hi}</maximum><center>{mid}</center></{name}>\n"

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        f"  <acquisitionSystemInformation><systemVendor>{vendor}</systemVendor>"
        f"<receiverChannels>{int(coils)}</receiverChannels></acquisitionSystemInformation>\n"
        "  <experimentalConditions><H1resonanceFrequency_Hz>127729000</H1resonanceFrequency_Hz>"
        "</experimentalConditions>\n"
        "  <encoding>\n"
        f"    <encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>{ez}</z></matrixSize>"
        f"<fieldOfView_mm><x>{fx:g}</x><y>{fy:g}</y><z>{fz:g}</z></fieldOfView_mm></encodedSpace>\n"
        f"    <reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>{rz}</z></matrixSize>"
        f"<fieldOfView_mm><x>{rfx:g}</x><y>{rfy:g}</y><z>{fz:g}</z></fieldOfView_mm></reconSpace>\n"
        "    <encodingLimits>\n"
        + limit("kspace_encoding_step_1", 0, int(maximum), int(center))
        + limit("kspace_encoding_step_2", 0, 0, 0)
        + limit("average", 0, 0, 0)
        + limit("slice", 0, max(0, int(num_slices) - 1), max(0, int(num_slices) - 1) // 2)
        + limit("contrast", 0, 0, 0)
        + limit("phase", 0, 0, 0)
        + limit("repetition", 0, 0, 0)
        + limit("set", 0, 0, 0)
        + limit("segment", 0, 0, 0)
        + "    </encodingLimits>\n"
        "    <trajectory>cartesian</trajectory>\n"
        "  </encoding>\n"
        "</ismrmrdHeader>\n")


def write_fastmri_file(path, kspace: np.ndarray, header: str, attrs: dict, target: np.ndarray | None = None,
                       target_key: str = "reconstruction_rss", mask: np.ndarray | None = None,
                       force: bool = False, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write one file in fastMRI's layout, atomically (hidden temporary, then rename).

    :param kspace: complex (slices, [coils,] H, W), stored as complex64.
    :param header: ISMRMRD XML (``ismrmrd_header``).
    :param attrs: file attrs (``acquisition``, ``max``, ``norm``, ``patient_id``; test files:
        ``acceleration``, ``num_low_frequency``).
    :param target: (slices, h, w) stored as float32 under ``target_key``.
    :param mask: (W,) stored as bool (test/challenge layout).
    :param extra: further datasets (e.g. ``reconstruction_esc`` of single-coil files).
    :raises FileExistsError: the file exists and ``force`` is false.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=np.asarray(kspace, dtype=np.complex64))
            f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode("utf-8")))
            if target is not None:
                f.create_dataset(target_key, data=np.asarray(target, dtype=np.float32))
            if mask is not None:
                f.create_dataset("mask", data=np.asarray(mask).reshape(-1).astype(bool))
            for name, data in (extra or {}).items():
                f.create_dataset(name, data=data)
            for name, value in attrs.items():
                f.attrs[name] = value
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------------------
# source brains


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"synthetic fastMRI data needs the {package} package (it ships the brain volumes): "
                          f"pip install {package}")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package}")
    return path


def _axial_slices(path: Path, frame: int | None = None) -> tuple[np.ndarray, float]:
    """Axial slices (n, rows, cols) of a NIfTI volume in [0, 1] (0.5 / 99.5 percentiles), anterior
    at the top; and the in-plane voxel size in mm."""
    image = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(image.dataobj, dtype=np.float64)
    if data.ndim == 4:
        data = data[..., 0 if frame is None else frame]
    lo, hi = np.percentile(data, (0.5, 99.5))
    data = np.clip((data - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    slices = np.flip(np.transpose(data, (2, 1, 0)), axis=1)  # (z, y, x), anterior at the top
    return np.ascontiguousarray(slices), float(image.header.get_zooms()[0])


def _brain_box(slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground slice range and in-plane centre (row, col) of the foreground."""
    foreground = slices > 0.1
    per_slice = foreground.mean(axis=(1, 2))
    keep = np.flatnonzero(per_slice >= max(0.15 * per_slice.max(), 1e-6))
    rows, cols = np.nonzero(foreground.any(axis=0))
    return keep, np.array([(rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2])


def _resample(slices: np.ndarray, centre: np.ndarray, fov_px: float, size: int, angle: float,
              flip: bool) -> np.ndarray:
    """(n, size, size) bilinear resampling of a square ``fov_px`` field of view about ``centre``
    (row, col), rotated by ``angle`` (radians), optionally flipped left-right; Gaussian
    pre-filter against aliasing when shrinking."""
    step = fov_px / size
    sigma = 0.5 * math.sqrt(max(step * step - 1.0, 0.0))
    cos, sin = math.cos(angle), math.sin(angle)
    matrix = step * np.array([[cos, -sin], [sin, cos]])
    if flip:
        matrix = matrix @ np.diag([1.0, -1.0])
    out_centre = np.array([(size - 1) / 2, (size - 1) / 2])
    offset = centre - matrix @ out_centre
    out = np.empty((slices.shape[0], size, size))
    for k, image in enumerate(slices):
        if sigma > 0:
            image = ndimage.gaussian_filter(image, sigma)
        out[k] = ndimage.affine_transform(image, matrix, offset=offset, output_shape=(size, size), order=1,
                                          mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


def _slab(keep: np.ndarray, n_total: int, slices: int, step: int, rng: np.random.Generator | None) -> np.ndarray:
    """``slices`` slice indices ``step`` apart inside the foreground range (random start, or centred)."""
    span = (slices - 1) * step
    lo, hi = int(keep.min()), int(keep.max())
    if hi - lo < span:  # not enough brain: centre the slab on the volume, clipped
        lo, hi = 0, n_total - 1
        step = max(1, min(step, (n_total - 1) // max(slices - 1, 1)))
        span = (slices - 1) * step
        if span > hi:
            raise ConfigError(f"the source volume has {n_total} slices; ask for at most {n_total} slices per volume")
    start = lo + (hi - lo - span) // 2 if rng is None else int(rng.integers(lo, hi - span + 1))
    return start + step * np.arange(slices)


def _train_images(index: int, size: int, slices: int, seed: int, mni) -> np.ndarray:
    volume, voxel_mm, keep, centre = mni
    rng = np.random.default_rng([seed, 0, index])
    z = _slab(keep, volume.shape[0], slices, 4, rng)  # 4 mm apart, as fastMRI's brain slices
    fov_mm = math.exp(rng.uniform(*np.log(TRAIN_FOV_MM)))
    shift = rng.uniform(-1, 1, size=2) * max(0.0, 70.0 - fov_mm / 2) / voxel_mm
    angle, flip = math.radians(rng.uniform(-10, 10)), bool(rng.integers(2))
    return _resample(volume[z], centre + shift, fov_mm / voxel_mm, size, angle, flip)


def _val_sources() -> list[dict]:
    anatomical = _package_file("nibabel", "tests", "data", "anatomical.nii")
    epi = _package_file("nibabel", "tests", "data", "example4d.nii.gz")
    return [{"name": "nibabel/tests/data/anatomical.nii", "path": anatomical, "frame": None, "fov_mm": 64.0,
             "acquisition": "AXT1"},
            {"name": "nibabel/tests/data/example4d.nii.gz", "path": epi, "frame": 0, "fov_mm": 192.0,
             "acquisition": "AXEPI"}]


def _heldout_images(index: int, split_code: int, size: int, slices: int, seed: int, cache: dict) -> tuple[np.ndarray, dict]:
    sources = _val_sources()
    source = sources[index % len(sources)]
    variant = index // len(sources)
    frame = None if source["frame"] is None else variant % 2
    key = (source["name"], frame)
    if key not in cache:
        volume, voxel_mm = _axial_slices(source["path"], frame)
        cache[key] = (volume, voxel_mm, *_brain_box(volume))
    volume, voxel_mm, keep, centre = cache[key]
    rng = np.random.default_rng([seed, split_code, index])
    z = _slab(keep, volume.shape[0], slices, 1, None)
    if variant == 0 and split_code == 1:
        angle, flip = 0.0, False
    else:
        angle, flip = math.radians(rng.uniform(-10, 10)), bool(rng.integers(2))
    images = _resample(volume[z], centre, source["fov_mm"] / voxel_mm, size, angle, flip)
    return images, {"source": source["name"], "frame": frame, "angle_deg": round(math.degrees(angle), 3),
                    "flip": flip, "fov_mm": source["fov_mm"], "acquisition": source["acquisition"]}


# ------------------------------------------------------------------------------------------
# acquisition


def _fftc(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _ifftc(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def coil_maps(coils: int, size: int, oversampling: int, coil_radius: float = 1.5) -> np.ndarray:
    """(coils, oversampling * size, size) birdcage maps over the k-space image grid, the coils
    at ``coil_radius`` times the object's half-size (the object fills the centre size x size)."""
    full = oversampling * size
    maps = birdcage_maps((coils, full, full), radius=coil_radius / oversampling).numpy()
    left = (full - size) // 2
    return np.ascontiguousarray(maps[:, :, left:left + size])


def acquire(images: np.ndarray, maps: np.ndarray, noise: float, rng: np.random.Generator,
            phase_amplitude: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Fully sampled multi-coil k-space (n, coils, H, W) and its RSS target (n, h, w) of
    magnitude images (n, h, w) placed at the centre of the maps' (H, W) grid."""
    n, h, w = images.shape
    full_h, full_w = maps.shape[-2:]
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    coefficients = rng.uniform(-1, 1, size=(n, 6)) * phase_amplitude * np.array([1, 0.5, 0.5, 0.25, 0.25, 0.25])
    basis = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y])
    phase = np.einsum("nk,kij->nij", coefficients, basis)
    grid = np.zeros((n, full_h, full_w), dtype=np.complex128)
    top, left = (full_h - h) // 2, (full_w - w) // 2
    grid[:, top:top + h, left:left + w] = images * np.exp(1j * phase)
    kspace = _fftc(grid[:, None] * maps[None])
    if noise > 0:
        kspace = kspace + (noise / math.sqrt(2)) * (rng.standard_normal(kspace.shape)
                                                     + 1j * rng.standard_normal(kspace.shape))
    rss = np.sqrt((np.abs(_ifftc(kspace)) ** 2).sum(axis=1))
    target = rss[:, top:top + h, left:left + w]
    return kspace.astype(np.complex64), target.astype(np.float32)


# ------------------------------------------------------------------------------------------
# the data set


def synthesize(out_dir, n_train: int = 8, n_val: int = 4, coils: int = 8, size: int = 64, seed: int = 0,
               force: bool = False, n_test: int = 0, slices: int = 10, oversampling: int = 2,
               noise: float = 0.003, intensity: float = 1e-3, coil_radius: float = 1.5,
               test_acceleration: int = 4, test_mask_type: str = "equispaced_fraction") -> SynthSet:
    """Write synthetic fastMRI-layout multicoil files under ``out_dir`` (see the module docstring).

    :param out_dir: root; files go to ``multicoil_train/``, ``multicoil_val/`` (held out: other
        brains) and ``multicoil_test/`` (test layout), plus ``synth.json``.
    :param n_train, n_val, n_test: volumes per split.
    :param coils: simulated birdcage coils.
    :param size: target size (size x size); k-space is (oversampling * size) x size.
    :param seed: seed of every random choice (same seed, same files).
    :param force: replace existing files (otherwise a ``FileExistsError`` before anything is written).
    :param slices: slices per volume (fastMRI brain volumes have ~16).
    :param oversampling: readout oversampling (fastMRI: 2, 640 rows for 320-row targets).
    :param noise: k-space noise std per complex sample, relative to ``intensity``.
    :param intensity: image scale (a brain at 1 maps to ``intensity``).
    :param coil_radius: coil distance from the centre, in object half-sizes.
    :param test_acceleration, test_mask_type: undersampling of the test split.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    if coils < 1 or size < 8 or slices < 1 or oversampling < 1:
        raise ConfigError(f"need coils >= 1, size >= 8, slices >= 1, oversampling >= 1; got coils={coils}, "
                          f"size={size}, slices={slices}, oversampling={oversampling}")
    root = Path(out_dir)
    plan = []  # (split, index, path-to-be)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(count):
            plan.append((split, i))
    names = {}
    # file names need the acquisition, known from the source
    for split, i in plan:
        acquisition = "AXT1" if split == "train" else _val_acquisition(i)
        names[(split, i)] = root / SPLITS[split] / f"file_brain_{acquisition}_synth{split}_{i:04d}.h5"
    existing = [p for p in names.values() if p.exists()]
    if existing and not force:
        state = ("a finished set" if is_complete(root) else
                 f"an unfinished set (no {COMPLETE_MARKER}: an earlier run was interrupted)")
        raise FileExistsError(f"{len(existing)} synthetic files exist already in {root}, {state} (e.g. {existing[0]}); "
                              "pass force=True (--force) to write them again")
    if (root / COMPLETE_MARKER).exists():
        os.remove(root / COMPLETE_MARKER)  # rewritten last, once every file is in place again

    full_h = oversampling * size
    maps = coil_maps(coils, size, oversampling, coil_radius)
    header = ismrmrd_header((full_h, size, 1), (size, size, 1), center=size // 2, maximum=size - 1,
                            num_slices=slices, coils=coils)
    mni = None
    cache: dict = {}
    written: dict[str, list[Path]] = {split: [] for split in SPLITS}
    records = []
    for split, i in plan:
        path = names[(split, i)]
        split_code = {"train": 0, "val": 1, "test": 2}[split]
        if split == "train":
            if mni is None:
                volume, voxel_mm = _axial_slices(_package_file(
                    "nilearn", "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
                mni = (volume, voxel_mm, *_brain_box(volume))
            images = _train_images(i, size, slices, seed, mni)
            info = {"source": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                    "acquisition": "AXT1"}
        else:
            images, info = _heldout_images(i, split_code, size, slices, seed, cache)
        rng = np.random.default_rng([seed, split_code, i, 1])
        kspace, target = acquire(images * intensity, maps, noise * intensity, rng)
        attrs = {"acquisition": info["acquisition"], "max": float(target.max()), "norm": float(np.linalg.norm(target)),
                 "patient_id": hashlib.sha256(f"invsolve-synth|{split}|{i}|{seed}|{info['source']}".encode()).hexdigest()}
        mask = None
        if split == "test":
            columns, num_low = file_mask(path.name, size, test_acceleration, test_mask_type)
            mask = columns > 0
            kspace = kspace * mask.astype(np.complex64)
            attrs.update(acceleration=int(test_acceleration), num_low_frequency=num_low)
            target = None
        write_fastmri_file(path, kspace, header, attrs, target=target, mask=mask, force=force)
        written[split].append(path)
        records.append({"file": path.relative_to(root).as_posix(), "split": split, **info})
    parameters = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "coils": coils, "size": size, "seed": seed,
                  "slices": slices, "oversampling": oversampling, "noise": noise, "intensity": intensity,
                  "coil_radius": coil_radius, "test_acceleration": test_acceleration, "test_mask_type": test_mask_type}
    manifest = root / "synth.json"
    _write_json(manifest, {"generator": "invsolve.fastmri.synth.synthesize", "parameters": parameters,
                           "layout": "fastMRI multicoil: kspace (slices, coils, H, W) complex64, reconstruction_rss "
                                     "(slices, h, w) float32, ismrmrd_header, attrs acquisition/max/norm/patient_id",
                           "volumes": records})
    _write_json(root / COMPLETE_MARKER, {"volumes": len(records), "parameters": parameters})
    return SynthSet(root=root, splits={s: files for s, files in written.items() if files or s != "test"},
                    manifest=manifest, kspace_shape=(slices, coils, full_h, size), target_shape=(slices, size, size))


def _val_acquisition(index: int) -> str:
    return ("AXT1", "AXEPI")[index % 2]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
