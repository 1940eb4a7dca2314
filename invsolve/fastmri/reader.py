"""Read fastMRI HDF5 files: k-space, targets, test-set masks and the ISMRMRD header.

Layout (facebookresearch/fastMRI, ``fastmri/data/mri_data.py`` and the dataset README):

- ``kspace``: complex (slices, H, W) single coil (knee, emulated) or (slices, coils, H, W)
  multi-coil; H is the readout (frequency encoding, fully sampled, 2x oversampled: 640 for
  320-pixel targets), W the phase encodes (the columns fastMRI's masks keep or drop);
- ``reconstruction_rss`` (multi-coil target, and also in single-coil files) and
  ``reconstruction_esc`` (single-coil target): (slices, h, w) float32, 320 x 320 in fastMRI;
  test and challenge files have no target;
- ``mask`` (W,) (test and challenge files: their k-space is already undersampled), with the attrs
  ``acceleration`` and ``num_low_frequency``;
- ``ismrmrd_header``: the ISMRMRD XML header; fastMRI reads ``encoding/encodedSpace/matrixSize``
  (x, y, z), ``encoding/reconSpace/matrixSize`` and
  ``encoding/encodingLimits/kspace_encoding_step_1`` (``center``, ``maximum``) and derives the
  acquired band of columns ``padding_left = enc_y // 2 - center``,
  ``padding_right = padding_left + maximum + 1`` (columns outside it are zero padding; fastMRI's
  VarNet transform zeroes the mask there);
- attrs: ``acquisition`` (CORPD_FBK, CORPDFS_FBK, AXT1, AXT1PRE, AXT1POST, AXT2, AXFLAIR),
  ``max`` and ``norm`` of the target volume, ``patient_id``.

As fastMRI's ``SliceDataset``, the target is ``reconstruction_esc`` for the single-coil challenge
and ``reconstruction_rss`` for the multi-coil one, and ``None`` when the file lacks it; masks are
seeded with the file *name* (``operators.masks.fastmri_seed(volume.fname)``), so every slice of a
volume shares its mask (``invsolve.fastmri.masks.volume_mask``).
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from ..errors import ConfigError, DataError

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
HDF5_SUFFIXES = (".h5", ".hdf5")
TARGET_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}
"""The target fastMRI scores each challenge against (``fastmri/evaluate.py``, ``SliceDataset``)."""


@dataclasses.dataclass
class FastMRIVolume:
    """The selected slices of one fastMRI file.

    :ivar fname: file name (``file1000001.h5``); fastMRI seeds the volume's mask with it.
    :ivar path: the file.
    :ivar kspace: complex64 (n, H, W) single coil or (n, coils, H, W) multi-coil, the selected
        slices; already undersampled (zeros) in test/challenge files.
    :ivar target: float32 (n, h, w) ``reconstruction_esc`` (single coil) / ``reconstruction_rss``
        (multi-coil), or ``None`` (test/challenge files).
    :ivar target_key: the dataset the target came from, or ``None``.
    :ivar mask: (W,) bool mask of test/challenge files, else ``None``.
    :ivar acceleration, num_low_frequency: attrs of test/challenge files, else ``None``.
    :ivar encoding_size, recon_size: (x, y, z) matrix sizes of the encoded and reconstructed
        spaces (x = readout = H, y = phase encodes = W); without a header, (H, W, 1) and the
        target's (h, w, 1) (or (H, W, 1)).
    :ivar padding_left, padding_right: the acquired columns are ``padding_left:padding_right``.
    :ivar attrs: the file's attrs (``acquisition``, ``max``, ``norm``, ``patient_id``, ...).
    :ivar slice_indices: indices of the selected slices in the file.
    :ivar num_slices: slices in the file.
    :ivar is_multicoil: k-space has a coil axis.
    :ivar challenge: ``"singlecoil"`` or ``"multicoil"``.
    :ivar header: the ISMRMRD XML text, or ``None`` when the file has none.
    """

    fname: str
    path: Path
    kspace: np.ndarray
    target: np.ndarray | None
    target_key: str | None
    mask: np.ndarray | None
    acceleration: float | None
    num_low_frequency: int | None
    encoding_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    padding_left: int
    padding_right: int
    attrs: dict[str, Any]
    slice_indices: tuple[int, ...]
    num_slices: int
    is_multicoil: bool
    challenge: str
    header: str | None = dataclasses.field(default=None, repr=False)

    @property
    def is_test(self) -> bool:
        """A test/challenge file: undersampled k-space with its own mask, no target."""
        return self.mask is not None

    @property
    def target_size(self) -> tuple[int, int]:
        """(h, w) of the target, or the header's reconstruction size without one."""
        if self.target is not None:
            return int(self.target.shape[-2]), int(self.target.shape[-1])
        return int(self.recon_size[0]), int(self.recon_size[1])

    @property
    def num_coils(self) -> int:
        return int(self.kspace.shape[1]) if self.is_multicoil else 1


# ------------------------------------------------------------------------------------------
# ISMRMRD header


def et_query(root: ElementTree.Element, path: Sequence[str], namespace: str = ISMRMRD_NAMESPACE) -> str:
    """Text of the first element at the nested ``path`` below ``root`` (each step a descendant
    search, as fastMRI's ``et_query``); a ``ValueError`` names the missing element."""
    query = "." + "".join(f"//ismrmrd:{element}" for element in path)
    found = root.find(query, {"ismrmrd": namespace})
    if found is None or found.text is None:
        raise DataError(f"the ISMRMRD header has no {'/'.join(path)}")
    return found.text.strip()


def parse_header(xml: str | bytes) -> dict[str, Any]:
    """``encoding_size``, ``recon_size`` (x, y, z), ``padding_left``, ``padding_right`` from an
    ISMRMRD header, as fastMRI's ``SliceDataset`` derives them."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        raise DataError(f"the ISMRMRD header is not valid XML: {err}") from err
    encoded = ["encoding", "encodedSpace", "matrixSize"]
    recon = ["encoding", "reconSpace", "matrixSize"]
    limits = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    encoding_size = tuple(int(et_query(root, encoded + [axis])) for axis in "xyz")
    recon_size = tuple(int(et_query(root, recon + [axis])) for axis in "xyz")
    center = int(et_query(root, limits + ["center"]))
    maximum = int(et_query(root, limits + ["maximum"])) + 1
    padding_left = encoding_size[1] // 2 - center
    return {"encoding_size": encoding_size, "recon_size": recon_size, "padding_left": padding_left,
            "padding_right": padding_left + maximum}


# ------------------------------------------------------------------------------------------
# slice selection


def select_slices(slices, num_slices: int) -> list[int]:
    """Indices for ``slices``: ``"all"``; ``"middle"`` (``num_slices // 2``); ``"middle+K"`` or
    ``"middle±K"`` (the 2K + 1 slices around the middle, clipped to the volume); an int; a list
    of ints or a comma-separated string of them (negative indices count from the end)."""
    if num_slices < 1:
        raise DataError("the file has no slices")
    middle = num_slices // 2
    if isinstance(slices, str):
        text = slices.strip().lower().replace(" ", "")
        if text == "all":
            return list(range(num_slices))
        if text == "middle":
            return [middle]
        match = re.fullmatch(r"middle(?:\+|±|\+-|\+/-)(\d+)", text)
        if match:
            k = int(match.group(1))
            return list(range(max(0, middle - k), min(num_slices, middle + k + 1)))
        if re.fullmatch(r"-?\d+(,-?\d+)*", text):
            slices = [int(v) for v in text.split(",")]
        else:
            raise ConfigError(f"slices must be 'all', 'middle', 'middle+K', an index or a list of indices; "
                              f"got {slices!r}")
    if isinstance(slices, (int, np.integer)):
        slices = [int(slices)]
    indices = []
    for value in slices:
        if not isinstance(value, (int, np.integer)):
            raise ConfigError(f"slice indices must be integers, got {value!r}")
        index = int(value)
        if not -num_slices <= index < num_slices:
            raise ConfigError(f"slice {index} is out of range for a volume of {num_slices} slices")
        indices.append(index % num_slices)
    if not indices:
        raise ConfigError("select at least one slice")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"slice indices repeat: {list(slices)}")
    return indices


def _read_rows(dataset, indices: list[int]) -> np.ndarray:
    """``dataset[indices]`` reading only those slices (h5py needs increasing indices)."""
    order = sorted(indices)
    if order == list(range(order[0], order[-1] + 1)):
        rows = dataset[order[0]:order[-1] + 1]
    else:
        rows = dataset[order]
    position = {index: k for k, index in enumerate(order)}
    return rows[[position[i] for i in indices]] if order != indices else rows


# ------------------------------------------------------------------------------------------
# files


def checked_dataset(f: h5py.File, name: str, path) -> h5py.Dataset | None:
    """``f[name]`` when it is a plain dataset stored in the file itself; ``None`` when absent.

    Refused with a ``DataError`` naming the file and the dataset: soft and external links, datasets
    with external storage (raw data in other files, which h5py would read from wherever they point)
    and virtual datasets (mapped from other files), and groups where a dataset is expected.
    """
    link = f.get(name, getlink=True)
    if link is None:
        return None
    refuse = "; fastMRI files keep their data inside the file: copy the data in (e.g. h5repack) or use the original file"
    if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
        kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
        raise DataError(f"{path}: '{name}' is {kind}, refused{refuse}")
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{path}: '{name}' is a {type(obj).__name__}, not a dataset")
    if obj.external:
        raise DataError(f"{path}: dataset '{name}' keeps its data in external files ({obj.external[0][0]!r}...), "
                        f"refused{refuse}")
    if obj.is_virtual:
        raise DataError(f"{path}: dataset '{name}' is a virtual dataset (mapped from other files), refused{refuse}")
    return obj


def _attr_value(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_volume(path, slices="all", target_key: str | None = None) -> FastMRIVolume:
    """Read the selected slices of a fastMRI HDF5 file.

    :param path: a fastMRI ``.h5`` file (train, val, test or challenge; knee or brain; single- or
        multi-coil).
    :param slices: ``"all"``, ``"middle"``, ``"middle+K"`` (2K + 1 middle slices), an index or a
        list of indices (``select_slices``). Only those slices are read from disk.
    :param target_key: dataset to use as target; default ``reconstruction_esc`` for single-coil
        and ``reconstruction_rss`` for multi-coil files (fastMRI's choice), ``None`` when absent.
    :raises ValueError: the file is not HDF5 or not in fastMRI's layout (the message says what
        is missing).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such fastMRI file: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path} is not an HDF5 file ({err}); fastMRI files are HDF5 (.h5)") from err
    with handle as f:
        kspace_set = checked_dataset(f, "kspace", path)
        if kspace_set is None:
            raise DataError(f"{path} is not a fastMRI file: it has no 'kspace' dataset (keys: {sorted(f.keys())}); "
                            "fastMRI files hold kspace (slices, [coils,] H, W) complex, ismrmrd_header and, "
                            "for train/val, reconstruction_rss / reconstruction_esc")
        if kspace_set.ndim not in (3, 4) or kspace_set.dtype.kind != "c":
            raise DataError(f"{path}: 'kspace' must be complex (slices, H, W) or (slices, coils, H, W); "
                            f"got {kspace_set.dtype} {kspace_set.shape}")
        is_multicoil = kspace_set.ndim == 4
        challenge = "multicoil" if is_multicoil else "singlecoil"
        num_slices = int(kspace_set.shape[0])
        height, width = (int(s) for s in kspace_set.shape[-2:])
        indices = select_slices(slices, num_slices)
        kspace = _read_rows(kspace_set, indices).astype(np.complex64, copy=False)

        key = target_key or TARGET_KEYS[challenge]
        target = None
        target_set = checked_dataset(f, key, path)
        if target_set is not None:
            if target_set.ndim != 3 or target_set.shape[0] != num_slices:
                raise DataError(f"{path}: '{key}' must be (slices, h, w) with {num_slices} slices; "
                                f"got {target_set.shape}")
            target = _read_rows(target_set, indices).astype(np.float32, copy=False)
        elif target_key is not None:
            raise DataError(f"{path} has no '{target_key}' (keys: {sorted(f.keys())})")

        attrs = {name: _attr_value(value) for name, value in f.attrs.items()}
        mask = None
        mask_set = checked_dataset(f, "mask", path)
        if mask_set is not None:
            mask = np.asarray(mask_set[()]).reshape(-1)
            if mask.shape[0] != width:
                raise DataError(f"{path}: 'mask' has {mask.shape[0]} entries for {width} k-space columns")
            mask = mask.astype(bool)
        header = None
        header_set = checked_dataset(f, "ismrmrd_header", path)
        if header_set is not None:
            raw = header_set[()]
            header = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)

    if header is not None:
        try:
            geometry = parse_header(header)
        except ValueError as err:
            raise DataError(f"{path}: {err}") from err
    else:
        recon = target.shape[-2:] if target is not None else (height, width)
        geometry = {"encoding_size": (height, width, 1), "recon_size": (int(recon[0]), int(recon[1]), 1),
                    "padding_left": 0, "padding_right": width}
    acceleration = attrs.get("acceleration")
    num_low = attrs.get("num_low_frequency")
    return FastMRIVolume(
        fname=path.name, path=path, kspace=kspace, target=target, target_key=key if target is not None else None,
        mask=mask, acceleration=None if acceleration is None else float(acceleration),
        num_low_frequency=None if num_low is None else int(num_low), encoding_size=geometry["encoding_size"],
        recon_size=geometry["recon_size"], padding_left=int(geometry["padding_left"]),
        padding_right=int(geometry["padding_right"]), attrs=attrs, slice_indices=tuple(indices),
        num_slices=num_slices, is_multicoil=is_multicoil, challenge=challenge, header=header)


def list_volumes(data_dir) -> list[Path]:
    """The fastMRI files (``*.h5``, ``*.hdf5``) directly in ``data_dir`` (or ``[data_dir]`` for a
    file), sorted by name; hidden files (e.g. unfinished atomic writes) are skipped.

    :raises FileNotFoundError: ``data_dir`` does not exist, or holds no files but its
        subfolders do (the message names them: point at ``multicoil_val/`` etc.).
    """
    root = Path(data_dir).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder of fastMRI files: {root}")
    files = sorted((p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(HDF5_SUFFIXES)
                    and not p.name.startswith(".")), key=lambda p: p.name)
    if not files:
        nested = sorted({p.parent.relative_to(root).as_posix() for suffix in HDF5_SUFFIXES
                         for p in root.rglob(f"*{suffix}") if not p.name.startswith(".")})
        if nested:
            raise FileNotFoundError(f"no .h5 files directly in {root}; its subfolders {nested[:6]} have some: "
                                    "point at one split, e.g. multicoil_val/")
    return files
