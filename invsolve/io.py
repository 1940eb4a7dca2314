"""Reading and writing images and volumes: NIfTI (nibabel), NPY, PNG. Writes are atomic."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .errors import ConfigError, DataError

MARKER = ".invsolve-output"  # written into every output folder; --force replaces only folders holding it


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


# ---- output folders: atomic, never replacing what invsolve did not write -------------------------


def check_output(out: str | Path, force: bool, flag: str = "--out") -> Path:
    """Check that the output folder ``out`` may be (re)placed, before any work is done: it does not
    exist, or ``force`` is given and it is a folder invsolve wrote (it holds ``MARKER``) or an empty
    one. A file, the current folder (or one above it) and a folder of other files are refused."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ConfigError(f"{flag} {out} is a file; give a folder name")
        if Path.cwd().resolve().is_relative_to(out.resolve()):
            raise ConfigError(f"{flag} {out} is the current folder (or holds it); give a new folder name")
        if not force:
            raise ConfigError(f"output folder {out} already exists; choose another with {flag} or pass --force to replace it")
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise ConfigError(f"--force refuses to replace {out}: it holds files invsolve did not write "
                              f"(no {MARKER} marker); choose another {flag}")
    return out


def prepare_output(out: str | Path, force: bool, flag: str = "--out") -> Path:
    """``check_output``, then a fresh temporary folder beside ``out`` (holding ``MARKER``) to write into."""
    out = check_output(out, force, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    (tmp / MARKER).write_text("written by invsolve; --force may replace this folder\n")
    return tmp


def finish_output(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder onto ``out`` (an earlier invsolve output is replaced)."""
    out = Path(out)
    if out.exists():
        backup = out.with_name(f".{out.name}-old-{os.getpid()}-{int(time.time())}")
        out.rename(backup)
        tmp.rename(out)
        shutil.rmtree(backup)
    else:
        tmp.rename(out)


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


# ---- volumes: NIfTI and DICOM series in, NIfTI out (issue 12) ---------------------------------------
#
# Volumes are arrays indexed (z, y, x) (NIfTI's (i, j, k) reversed; a 4D NIfTI gives (t, z, y, x)),
# the (D, H, W) of invsolve's volume operators and slice-wise priors. ``meta`` carries what is
# needed to write results back in the input's space: ``affine`` (voxel (i, j, k) -> RAS+ mm, as
# NIfTI), ``header`` (NIfTI inputs: the nibabel header, unchanged), ``spacing`` (z, y, x) in mm,
# ``orientation`` (axis codes such as ('L', 'A', 'S')) and the format.


def load_volume(path: str | Path) -> tuple[np.ndarray, dict]:
    """Load a NIfTI file (``.nii``, ``.nii.gz``) or a DICOM series folder as ``(array, meta)``.

    NIfTI: the stored values (nibabel's ``dataobj``: scaled by ``scl_slope``/``scl_inter`` where the
    header sets them, else the on-disk dtype unchanged), ``meta["affine"]`` and ``meta["header"]``
    exactly as in the file. DICOM: every DICOM file in the folder (pydicom, the ``dicom`` extra),
    sorted by ``ImagePositionPatient`` along the slice normal (row x column direction of
    ``ImageOrientationPatient``), ``RescaleSlope``/``RescaleIntercept`` applied (float32), spacing
    from ``PixelSpacing`` and the distance between consecutive slice positions.
    """
    path = Path(path)
    if path.is_dir():
        return _load_dicom_series(path)
    if not path.exists():
        raise DataError(f"volume file {path} does not exist")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        if data.ndim < 3:
            raise DataError(f"{path} holds a {data.ndim}D image; load_volume takes 3D (or 4D) NIfTI volumes")
        array = np.ascontiguousarray(np.moveaxis(data, [0, 1, 2], [2, 1, 0]) if data.ndim == 3 else data.T)
        zooms = image.header.get_zooms()
        meta = {"format": "nifti", "affine": image.affine.copy(), "header": image.header.copy(),
                "spacing": tuple(float(z) for z in zooms[:3][::-1]),
                "orientation": tuple(nib.aff2axcodes(image.affine)), "path": str(path)}
        return array, meta
    if name.endswith(".dcm"):
        raise DataError(f"{path} is one DICOM file; pass the folder of the series to load_volume")
    raise DataError(f"cannot tell the format of {path}: load_volume reads .nii/.nii.gz files and DICOM series folders")


def save_volume_nifti(array, path: str | Path, meta: dict | None = None) -> Path:
    """Write a volume indexed (z, y, x) (or (t, z, y, x)) as NIfTI, atomically, in the input's space:
    ``meta["affine"]`` and, for NIfTI inputs, ``meta["header"]`` (kept as it is, except the shape,
    and the data type when the array's dtype differs from the header's, in which case the data
    type follows the array and the scaling is reset). Without ``meta``: a 1 mm identity affine."""
    data = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    if data.ndim not in (3, 4):
        raise DataError(f"save_volume_nifti takes a (z, y, x) or (t, z, y, x) volume, got shape {data.shape}")
    data = np.moveaxis(data, [0, 1, 2], [2, 1, 0]) if data.ndim == 3 else data.T
    meta = meta or {}
    affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
    header = meta.get("header")
    header = header.copy() if header is not None else None
    if header is not None and np.dtype(header.get_data_dtype()).newbyteorder("=") != data.dtype.newbyteorder("="):
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(np.nan, np.nan)
    elif header is not None:
        data = data.astype(header.get_data_dtype(), copy=False)
    image = nib.Nifti1Image(data, affine, header=header)
    return _atomic(Path(path), lambda tmp: nib.save(image, str(tmp)))


def _load_dicom_series(folder: Path) -> tuple[np.ndarray, dict]:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - the dicom extra
        raise DataError("reading DICOM needs pydicom: pip install 'invsolve[dicom]'") from err
    slices = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(str(file))
        except Exception:  # not a DICOM file (pydicom raises InvalidDicomError and others): skip it
            continue
        if "PixelData" not in ds:
            continue
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise DataError(f"DICOM file {file} has no {tag}; cannot place it in a volume")
        slices.append((file, ds))
    if not slices:
        raise DataError(f"no DICOM images with pixel data in {folder}")
    orientation = np.asarray(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    for file, ds in slices:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-4):
            raise DataError(f"DICOM file {file} has another ImageOrientationPatient than the series; "
                            "split the folder into one series per orientation")
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    slices = [slices[i] for i in order]
    gaps = np.diff(along)
    if len(gaps) and gaps.min() <= 1e-6:
        dup = slices[int(np.argmin(gaps)) + 1][0]
        raise DataError(f"two DICOM slices share a position along the slice normal ({dup}); one series per folder")
    dz = float(np.median(gaps)) if len(gaps) else float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    if len(gaps) and np.abs(gaps - dz).max() > 0.01 * dz:
        raise DataError(f"DICOM slices in {folder} are not evenly spaced (gaps {gaps.min():.4g}..{gaps.max():.4g} mm); "
                        "resample the series first")
    planes = []
    for file, ds in slices:
        pixels = ds.pixel_array.astype(np.float32)
        if planes and pixels.shape != planes[0].shape:
            raise DataError(f"DICOM file {file} has {pixels.shape} pixels, the series {planes[0].shape}")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        planes.append(pixels * slope + intercept)
    volume = np.stack(planes)  # (z, y, x): rows run along col_dir, columns along row_dir
    dy, dx = (float(v) for v in slices[0][1].PixelSpacing)  # DICOM: (row spacing, column spacing)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, 0] = lps_to_ras @ row_dir * dx
    affine[:3, 1] = lps_to_ras @ col_dir * dy
    affine[:3, 2] = lps_to_ras @ normal * dz
    affine[:3, 3] = lps_to_ras @ positions[0]
    meta = {"format": "dicom", "affine": affine, "header": None, "spacing": (dz, dy, dx),
            "orientation": tuple(nib.aff2axcodes(affine)), "image_orientation": tuple(orientation.tolist()),
            "slice_positions": positions.tolist(), "files": [str(f) for f, _ in slices], "path": str(folder)}
    return volume, meta


def resample_inplane(volume, size: int | tuple[int, int], meta: dict | None = None, mode: str = "bilinear"):
    """Resample every axial slice of ``volume`` (..., z, y, x) to ``size`` (h, w) (antialiased
    ``torch.nn.functional.interpolate``, pixel-area aligned); the depth is unchanged. Returns
    ``(volume, meta)`` with ``meta``'s affine and spacing updated to the new grid (None stays None).
    ``restore_inplane`` goes back to the original (y, x) size. This is the explicit step between a
    user's volume and a 2D prior's fixed in-plane size (e.g. 64 x 64 for the shipped priors)."""
    data = torch.as_tensor(np.asarray(volume) if not torch.is_tensor(volume) else volume)
    if data.ndim < 3:
        raise DataError(f"resample_inplane takes a (..., z, y, x) volume, got shape {tuple(data.shape)}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    old = tuple(data.shape[-2:])
    flat = data.reshape(-1, 1, *old).to(torch.float32)
    antialias = mode in ("bilinear", "bicubic") and (h < old[0] or w < old[1])
    out = torch.nn.functional.interpolate(flat, size=(h, w), mode=mode, antialias=antialias,
                                          **({} if mode in ("nearest", "area") else {"align_corners": False}))
    out = out.reshape(*data.shape[:-2], h, w)
    if meta is not None:
        meta = dict(meta)
        ratio_y, ratio_x = old[0] / h, old[1] / w
        affine = np.array(meta["affine"], dtype=np.float64)
        # voxel centres of the new grid: i_old = (i_new + 0.5) * ratio - 0.5
        affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * (ratio_x - 1) / 2 + affine[:3, 1] * (ratio_y - 1) / 2
        affine[:3, 0] *= ratio_x
        affine[:3, 1] *= ratio_y
        meta["affine"] = affine
        dz, dy, dx = meta.get("spacing", (1.0, 1.0, 1.0))
        meta["spacing"] = (dz, dy * ratio_y, dx * ratio_x)
        meta["inplane_shape"] = old
        if meta.get("header") is not None:
            header = meta["header"].copy()
            header.set_qform(affine)
            header.set_sform(affine)
            meta["header"] = header
    return (out if torch.is_tensor(volume) else out.numpy()), meta


def restore_inplane(volume, shape: tuple[int, int], meta: dict | None = None, mode: str = "bilinear"):
    """``resample_inplane`` back to the original in-plane ``shape`` (y, x) (e.g. ``meta["inplane_shape"]``)."""
    return resample_inplane(volume, tuple(shape), meta, mode)
