"""``iv.reconstruct``: posterior sampling on a user's own file, the Python side of ``invsolve reconstruct``.

Two modes:

- ``simulate=PRESET``: ``input`` is a clean image or volume (PNG, NPY, NIfTI, DICOM); it is mapped
  to the prior's physical range, measured with the operator ``PRESET`` (``operators.make``) plus
  Gaussian noise of std ``sigma_y`` (seeded), reconstructed, and scored against itself;
- ``operator=NAME``: ``input`` is the measurement ``y`` itself (a sinogram, a blurred or
  down-sampled image, ...) in the units of the operator's output, with noise std ``sigma_y``;
- a fastMRI HDF5 file (``.h5``/``.hdf5`` or HDF5 content; no ``simulate``/``operator``): one slice
  (``slice``, default the middle one) of measured k-space, under the file's ``mask`` (else the
  columns its k-space samples) or a fastMRI mask (``operator_params`` ``mask_type``,
  ``acceleration``, ``center_fraction``), made into a problem by ``invsolve.fastmri.problems``
  exactly as the fastMRI benchmark does; prior default ``mri-brain64``; scored with
  ``invsolve.fastmri.metrics`` against the file's target when it has one.

Volumes are reconstructed as a batch of 2D slices along their last stored axis (NIfTI's z, a DICOM
series' slice axis) with a 2D prior. Sizes must match the prior's, or pass ``resize=True`` to
resample in (area) and out (bilinear). Intensities: image inputs are mapped to [0, 1] by ``window``
(lo, hi) or by their 0.5 / 99.5 percentiles, outputs are mapped back; the map is recorded.

Before sampling, ``invsolve.fit.prior_fit`` checks the prior against the data (the clean input,
or the FBP / least-squares estimate from measured data) and warns when it looks out of the
prior's distribution. The returned record (also written as ``record.json``) holds the fully
resolved configuration: ``reconstruct(**record["config"])`` reproduces the run bit-identically on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from matplotlib.figure import Figure
from skimage.io import imread, imsave

import operators as ops
from operators.errors import ConfigError, DataError, UnknownOptionError, closest_first

from .baselines import fbp, least_squares
from .fastmri import baselines as fastmri_baselines
from .fastmri import metrics as fastmri_metrics
from .fastmri.masks import sampled_columns, volume_mask
from .fastmri.problems import build_parts, posterior_images
from .fastmri.reader import read_volume
from .fastmri.runner import SAMPLER_DEFAULTS, BenchConfig
from .fit import prior_fit
from .io import finish_output, load_nifti, prepare_output, save_figure, save_nifti, save_npy
from .metrics import psnr, ssim
from .priors import load_prior
from .problem import Problem, fit_physics
from .samplers import names as sampler_names, sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_PRIOR = "ct-phantom64"
FASTMRI_PRIOR = "mri-brain64"
FASTMRI_PARAMS = ("mask_type", "acceleration", "center_fraction")
"""The ``--set`` keys of fastMRI input: a fastMRI mask (``invsolve.fastmri.masks.volume_mask``)."""


def is_fastmri(path) -> bool:
    """``path`` is a fastMRI input: an ``.h5``/``.hdf5`` name, or an HDF5 file by its content."""
    path = Path(path)
    if path.name.lower().endswith((".h5", ".hdf5")):
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


@dataclasses.dataclass
class ReconstructConfig:
    input: str
    out: str | None = None
    simulate: str | None = None
    operator: str | None = None
    operator_params: dict = dataclasses.field(default_factory=dict)
    sigma_y: float | None = None
    prior: str | None = None  # ct-phantom64; mri-brain64 for fastMRI input
    prior_format: str = "auto"
    sampler: str = "dps"
    preset: str | None = None
    sampler_params: dict = dataclasses.field(default_factory=dict)
    samples: int = 4
    batch_size: int | None = None
    steps: int | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    resize: bool = False
    window: tuple[float, float] | None = None
    save_samples: bool = False
    check_fit: bool = True
    force: bool = False
    slice: int | None = None

    def validate(self) -> None:
        fastmri = is_fastmri(self.input)
        if fastmri:
            if self.simulate is not None or self.operator is not None:
                raise ConfigError(f"{self.input} is a fastMRI file: measured k-space with its own coils and mask; "
                                  "drop --simulate/--operator (choose a mask with --set acceleration=4)")
            if self.resize or self.window is not None:
                raise ConfigError("--resize and --window do not apply to fastMRI input: the prior's size must be the "
                                  "k-space image or target size, and k-space is scaled as the fastMRI benchmark does")
            for key in self.operator_params:
                if key not in FASTMRI_PARAMS:
                    raise ConfigError(f"--set {key}: fastMRI input takes {closest_first(key, FASTMRI_PARAMS)} (a fastMRI mask)")
            if "acceleration" not in self.operator_params and set(self.operator_params) & {"mask_type", "center_fraction"}:
                raise ConfigError("--set mask_type/center_fraction need --set acceleration=4 (or 8)")
        elif self.slice is not None:
            raise ConfigError(f"--slice selects a slice of a fastMRI (.h5) file; {self.input} is reconstructed whole")
        if self.slice is not None and (isinstance(self.slice, bool) or not isinstance(self.slice, (int, np.integer))):
            raise ConfigError(f"--slice must be an integer, got {self.slice!r}")
        if not fastmri and (self.simulate is None) == (self.operator is None):
            raise ConfigError("give exactly one of --simulate PRESET (input is a clean image) or "
                              "--operator NAME (input is the measurement)")
        if self.operator is not None and self.sigma_y is None:
            raise ConfigError("--sigma-y is required with --operator: the noise std of the measurement, in its units")
        if self.sigma_y is not None and not (np.isfinite(self.sigma_y) and self.sigma_y >= 0):
            raise ConfigError(f"--sigma-y must be a finite number >= 0, got {self.sigma_y}")
        for name in ("samples", "steps", "batch_size", "threads"):  # from flags or a run file
            value = getattr(self, name)
            if value is None and name != "samples":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.sampler not in sampler_names():
            raise ConfigError(f"unknown --sampler {self.sampler!r}; available: {closest_first(self.sampler, sampler_names())}")
        if self.window is not None:
            lo, hi = (float(v) for v in self.window)
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise ConfigError(f"--window needs two finite numbers lo < hi, got {self.window}")
        for key, value in {**self.operator_params, **self.sampler_params}.items():
            if isinstance(value, float) and not np.isfinite(value):
                raise ConfigError(f"--set {key}={value}: the value must be finite")


def load_run_config(path: str | Path) -> dict:
    """The options of a run file: a JSON or YAML mapping of ``ReconstructConfig`` fields, or an
    earlier ``record.json`` (its ``config``). Unknown fields are an error naming the closest."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of options (or be a record.json)")
    fields = [f.name for f in dataclasses.fields(ReconstructConfig)]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"--config {path}: unknown field {unknown[0]!r}; fields: {closest_first(unknown[0], fields)}")
    if data.get("window") is not None:
        data["window"] = tuple(data["window"])
    return data


# ---- reading the input --------------------------------------------------------------------------


def read_array(path: str | Path) -> tuple[np.ndarray, dict]:
    """``(array, meta)`` of an image or volume file; ``meta`` holds its format and geometry.

    Arrays are indexed ``[z,] y, x`` (NIfTI is transposed from its (x, y, z) storage, as
    ``io.load_nifti``). DICOM: one file (rescale slope/intercept applied) or a folder of one series.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"input file {path} does not exist")
    name = path.name.lower()
    try:
        if path.is_dir() or name.endswith(".dcm"):
            return _read_dicom(path)
        if name.endswith((".nii", ".nii.gz")):
            array, affine = load_nifti(path)
            return array.astype(np.float64), {"format": "nifti", "affine": affine.tolist()}
        if name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
            return np.asarray(array, dtype=np.float64), {"format": "npy"}
        if name.endswith(IMAGE_SUFFIXES):
            raw = imread(path)
            array = np.asarray(raw, dtype=np.float64)
            if array.ndim == 3:  # colour: luminance, as a grayscale prior sees it
                array = array[..., :3].mean(-1)
            # the range a written PNG maps back to: the integer type's, else the image's own
            value_range = [0.0, 1.0] if raw.dtype == bool else [0.0, float(np.iinfo(raw.dtype).max)] \
                if np.issubdtype(raw.dtype, np.integer) else [float(array.min()), float(array.max())]
            return array, {"format": "png" if name.endswith(".png") else "image", "range": value_range}
    except DataError:
        raise
    except Exception as err:  # a corrupt or truncated file: name it, say what was expected
        raise DataError(f"cannot read input file {path}: {type(err).__name__}: {err}") from err
    raise DataError(f"input file {path}: unknown format; use PNG, NPY, NIfTI (.nii, .nii.gz) or DICOM (.dcm or a series folder)")


def _read_dicom(path: Path) -> tuple[np.ndarray, dict]:
    try:
        import pydicom
    except ImportError as err:
        raise ConfigError("DICOM input needs pydicom: pip install 'invsolve[dicom]'") from err
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        if "PixelData" not in ds:
            continue
        image = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        position = [float(v) for v in getattr(ds, "ImagePositionPatient", [0, 0, len(slices)])]
        orientation = [float(v) for v in getattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
        slices.append((image, position, orientation, [float(v) for v in getattr(ds, "PixelSpacing", [1, 1])]))
    if not slices:
        raise DataError(f"no DICOM image found in {path}")
    row, col = np.array(slices[0][2][:3]), np.array(slices[0][2][3:])
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(np.dot(normal, s[1])))
    array = np.stack([s[0] for s in slices]) if len(slices) > 1 else slices[0][0]
    spacing = slices[0][3]
    dz = float(np.dot(normal, np.subtract(slices[1][1], slices[0][1]))) if len(slices) > 1 else 1.0
    # NIfTI affine (x = column, y = row, z = slice) in patient coordinates (LPS -> RAS flips x, y)
    affine = np.eye(4)
    affine[:3, 0] = row * spacing[1]
    affine[:3, 1] = col * spacing[0]
    affine[:3, 2] = normal * dz
    affine[:3, 3] = slices[0][1]
    affine = np.diag([-1, -1, 1, 1]) @ affine
    return array, {"format": "dicom", "affine": affine.tolist(), "slices": len(slices)}


# ---- the run ---------------------------------------------------------------------------------------


def _to_unit(array: np.ndarray, window) -> tuple[np.ndarray, tuple[float, float]]:
    lo, hi = (float(window[0]), float(window[1])) if window is not None else \
        (float(np.percentile(array, 0.5)), float(np.percentile(array, 99.5)))
    if not hi > lo:
        raise DataError(f"the input is constant (0.5 and 99.5 percentiles both {lo:g}); nothing to reconstruct")
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0), (lo, hi)


def _as_slices(array: np.ndarray, prior_shape, resize: bool, what: str) -> tuple[torch.Tensor, tuple]:
    """(slices as a (B, C, H, W) batch in the prior's size, the original in-plane size)."""
    if array.ndim not in (2, 3):
        raise DataError(f"{what} has shape {array.shape}; expected a 2D image or a 3D volume")
    x = torch.from_numpy(np.ascontiguousarray(array)).float()
    x = x[None] if x.ndim == 2 else x
    size = tuple(x.shape[-2:])
    target = tuple(prior_shape[-2:])
    if size != target:
        if not resize:
            raise DataError(f"{what} is {size[0]}x{size[1]} but the prior expects {target[0]}x{target[1]}; pass --resize to "
                            "resample it to the prior's size and the result back, or use a prior of this size")
        x = F.interpolate(x[:, None], size=target, mode="area")[:, 0]
    return x[:, None], size


def _make_operator(name: str, params: dict, img_size) -> object:
    try:
        return ops.make(name, **({"img_size": img_size} if "img_size" not in params else {}), **params)
    except (UnknownOptionError, TypeError) as err:
        if "img_size" in params or "img_size" not in str(err):
            raise
        return ops.make(name, **params)


def _physics_for(prior, physics, config: ReconstructConfig, record: dict):
    """The operator as the prior's images meet it (``invsolve.problem.fit_physics``): e.g. the MRI
    operators (complex images, 2 channels) seen on a magnitude prior's real images; recorded."""
    fit = fit_physics(physics, prior.image_shape, who=f"prior {prior.card.name!r}", device=config.device)
    record["physics"] = {"operator": type(physics).__name__, "adapter": fit.adapter, "dtype": str(fit.dtype).replace("torch.", ""),
                         "measurement_shape": list(fit.output_shape[1:])}
    return fit.physics


def _classical(physics, y) -> torch.Tensor:
    """A quick prior-free estimate for the fit check: FBP for CT, least squares otherwise."""
    with torch.no_grad():
        est = fbp(physics, y) if callable(getattr(physics, "fbp", None)) else least_squares(physics, y)
    return est.real.clamp(0, 1) if est.is_complex() else est.clamp(0, 1)


def _read_fastmri(config: ReconstructConfig):
    """The selected slice of a fastMRI file (``reader.read_volume``, its default target) and ``meta``;
    ``config.slice`` is resolved (default: the middle slice) and range-checked by the reader."""
    path = Path(config.input)
    try:
        volume = read_volume(path, slices="middle" if config.slice is None else [int(config.slice)])
    except ConfigError as err:  # reader.select_slices: an index outside the volume
        raise ConfigError(f"--slice {config.slice} is out of range for {path.name}: {err}") from err
    config.slice = int(volume.slice_indices[0])
    meta = {"format": "fastmri", "affine": np.eye(4).tolist(), "challenge": volume.challenge, "coils": volume.num_coils,
            "slices": volume.num_slices, "slice": config.slice, "kspace_shape": list(volume.kspace.shape[1:]),
            "target": volume.target_key}
    return volume, meta


def _fastmri_problem(volume, prior, config: ReconstructConfig, record: dict):
    """The fastMRI benchmark's problem for the slice (``problems.build_parts``, the runner's code):
    the mask (the file's; else its sampled columns; or ``--set acceleration=``), coil maps, scale."""

    params = config.operator_params
    if "acceleration" in params or volume.mask is not None:
        mask_type = params.get("mask_type", BenchConfig.mask)
        mask = volume_mask(volume, mask_type, params.get("acceleration"), params.get("center_fraction"))
        source = "file" if volume.mask is not None else \
            f"fastMRI {mask_type} {float(params['acceleration']):g}x (seeded by the file name)"
    else:
        mask, source = sampled_columns(volume.kspace), "the sampled (non-zero) k-space columns"
    mask = torch.from_numpy(np.asarray(mask, dtype=np.float32))
    if not mask.sum() > 0:
        raise DataError(f"{volume.path}: slice {config.slice} has no sampled k-space column")
    parts = build_parts(volume, mask, tuple(prior.image_shape), device=config.device)
    sigma_y = float(BenchConfig.sigma_y) if config.sigma_y is None else float(config.sigma_y)
    record["physics"] = {"operator": type(parts.physics).__name__, "mri": "SenseMRI" if parts.physics.coil_maps is not None
                         else "SingleCoilMRI", "coil_maps": "centre-band low-resolution maps", "grid": list(parts.grid),
                         "target_size": list(parts.target_size), "scale": parts.scale,
                         "measurement_shape": list(parts.y.shape[1:])}
    record["mask"] = {"source": source, "sampled_columns": int((mask > 0).sum()), "columns": int(mask.numel()),
                      "acceleration": round(float(mask.numel() / (mask > 0).sum()), 4)}
    record["sigma_y_source"] = "--sigma-y" if config.sigma_y is not None else \
        "the fastMRI benchmark's default (scaled k-space: zero-filled p99.5 = 1)"
    return parts, sigma_y


def reconstruct(input: str, progress: Callable[[dict], None] | None = None, log: Callable[[str], None] | None = None,
                **options) -> tuple:
    """Reconstruct ``input`` (see the module docstring); returns ``(posterior, record)``.

    Options are the fields of ``ReconstructConfig`` (``out=None`` writes nothing). ``progress``
    receives the sampler's callback records, ``log`` one-line messages (the fit warning among them).
    """
    config = ReconstructConfig(input=str(input), **options)
    config.validate()
    log = log or (lambda message: None)
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    out = Path(config.out) if config.out else None
    tmp = prepare_output(out, config.force) if out is not None else None
    try:
        posterior, record, arrays = _run(config, progress, log)
        if tmp is not None:
            _write(tmp, config, record, arrays)
            finish_output(tmp, out)
            tmp = None
        return posterior, record
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(config: ReconstructConfig, progress, log):
    start = time.perf_counter()
    fastmri = is_fastmri(config.input)
    prior_note = None
    if config.prior is None:
        config.prior = FASTMRI_PRIOR if fastmri else DEFAULT_PRIOR
        if fastmri:
            prior_note = f"no --prior: {FASTMRI_PRIOR}, the default for fastMRI input"
    if fastmri:
        volume, meta = _read_fastmri(config)
        array = volume.kspace
    else:
        array, meta = read_array(config.input)
    if not np.isfinite(array).all():
        raise DataError(f"input file {config.input} contains NaN or Inf values")
    prior = load_prior(config.prior, format=config.prior_format) if config.prior_format != "auto" else load_prior(config.prior)
    prior = prior.to(config.device) if hasattr(prior, "to") else prior
    if prior.image_shape[0] != 1 and not fastmri:
        raise ConfigError(f"prior {prior.card.name!r} has {prior.image_shape[0]} channels; reconstruct takes 1-channel image priors")
    record = {"invsolve": version("invsolve"), "torch": torch.__version__, "machine": platform.machine(),
              "threads": torch.get_num_threads(), "config": dataclasses.asdict(config), "input": dict(meta)}
    record["input"]["shape"] = list(array.shape)
    if prior_note:
        record["prior_default"] = prior_note
        log(prior_note)
    generator = torch.Generator().manual_seed(config.seed + 1)
    if fastmri:
        parts, sigma_y = _fastmri_problem(volume, prior, config, record)
        physics, y, truth, window, size = parts.physics, parts.y, None, None, tuple(parts.target_size)
        with torch.no_grad():
            check_on = physics.A_adjoint(y).clamp(0, 1)  # zero-filled (coil-combined) estimate
    elif config.simulate is not None:
        unit, window = _to_unit(array, config.window)
        truth, size = _as_slices(unit, prior.image_shape, config.resize, f"input {config.input}")
        physics = _physics_for(prior, _make_operator(config.simulate, config.operator_params, tuple(prior.image_shape[-2:])),
                               config, record)
        sigma_y = 0.05 if config.sigma_y is None else float(config.sigma_y)
        with torch.no_grad():
            clean = physics.A(truth)
        y = clean + sigma_y * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        check_on = truth
        record["input"]["window"] = list(window)
    else:
        physics = _physics_for(prior, _make_operator(config.operator, config.operator_params, tuple(prior.image_shape[-2:])),
                               config, record)
        sigma_y, truth, window = float(config.sigma_y), None, None
        measured = torch.from_numpy(np.ascontiguousarray(array)).float()
        with torch.no_grad():
            expected = tuple(physics.A(torch.zeros(1, *prior.image_shape)).shape[1:])
        if tuple(measured.shape) == expected:
            measured = measured[None]
        elif tuple(measured.shape[1:]) != expected:
            raise DataError(f"measurement {config.input} has shape {tuple(array.shape)} but operator {config.operator!r} "
                            f"with {config.operator_params or 'its defaults'} produces {expected} per image; "
                            "set its geometry with --set (e.g. views=, img_size=)")
        y, size = measured, tuple(prior.image_shape[-2:])
        check_on = _classical(physics, y)
    record["sigma_y"] = sigma_y
    if config.check_fit and prior.card.kind == "bridge":  # x0_hat(x_t, t) is no denoiser: nothing to check it with
        log(f"prior {prior.card.name!r} is a bridge (I2SB): no denoising fit check; its card's held-out figure is "
            f"{prior.card.metadata.get('evaluation', {}).get('prior_psnr_db', 'not recorded')} dB")
    elif config.check_fit:
        fit = prior_fit(prior, check_on.float())
        record["fit"] = fit
        log(fit["message"])
    problem = Problem(physics, y, sigma_y=sigma_y, prior=prior)
    overrides = dict(config.sampler_params)
    if fastmri and config.preset is None:  # the benchmark's settings for SENSE MRI (fastmri/runner.py)
        overrides = {**SAMPLER_DEFAULTS.get(config.sampler, {}), **overrides}
        record["sampler_defaults"] = "invsolve.fastmri.runner.SAMPLER_DEFAULTS"
    if config.steps is not None:
        overrides["steps"] = int(config.steps)
    generators = [torch.Generator(device=config.device).manual_seed(config.seed * 1000 + j) for j in range(config.samples)]
    post = sample(config.sampler, prior, problem, n_samples=config.samples, generator=generators,
                  preset=config.preset, callback=progress, batch_size=config.batch_size, **overrides)
    record.update(nfe=post.nfe, sampler_seconds=round(post.seconds, 3), sampler_config=post.config)
    if fastmri:
        return post, record, _fastmri_outputs(post, parts, volume, config, record, start)
    mean, std = post.mean.float(), post.std.float()
    if truth is not None:
        record["metrics"] = {"psnr_mean": round(psnr(truth, mean.clamp(0, 1), data_range=1.0), 3),
                             "ssim_mean": round(ssim(truth, mean.clamp(0, 1), data_range=1.0), 4),
                             "truth_inside_2std": None if config.samples < 2 else
                             round(float(((truth - mean).abs() <= 2 * std).float().mean()), 4)}
        with torch.no_grad():
            baseline = _classical(physics, y)
        record["metrics"]["psnr_classical"] = round(psnr(truth, baseline, data_range=1.0), 3)
    record["seconds"] = round(time.perf_counter() - start, 3)

    def back(t):  # prior size -> input size, [0, 1] -> input units
        t = t[:, 0]
        if tuple(t.shape[-2:]) != size:
            t = F.interpolate(t[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        t = t[0] if array.ndim == 2 else t
        return t.numpy() if window is None else t.numpy() * (window[1] - window[0])

    arrays = {"mean": back(mean) + (0 if window is None else window[0]), "std": back(std),
              "samples": [back(s) + (0 if window is None else window[0]) for s in post.samples.float()]
              if config.save_samples else None,
              "truth_unit": None if truth is None else truth[:, 0], "mean_unit": mean[:, 0], "std_unit": std[:, 0],
              "meta": meta, "extras": _extras_means(post, array.ndim)}
    return post, record, arrays


def _extras_means(post, ndim: int) -> dict:
    """Posterior means of what a sampler estimates beside the image (BlindDPS: ``kernels``), per input image."""
    out = {}
    for name, draws in post.extras.items():
        m = draws.float().mean(0)[:, 0]  # (B, h, w)
        out[name] = (m[0] if ndim == 2 else m).numpy()
    return out


def _fastmri_outputs(post, parts, volume, config: ReconstructConfig, record: dict, start: float) -> dict:
    """Magnitude mean / std / draws in the file's units (``problems.posterior_images``, as the
    runner scores them) and fastMRI's metrics against the file's target when it has one."""

    mean, std, per_draw = posterior_images(parts, post.samples.detach().cpu().double())
    truth = None
    if volume.target is not None:
        target = np.asarray(volume.target, dtype=np.float64)
        scores = fastmri_metrics.volume_metrics(target, mean.numpy())
        baseline = np.asarray(fastmri_baselines.reconstruct("zero-filled", volume, parts.mask.numpy()), dtype=np.float64)
        record["metrics"] = {"target": volume.target_key,
                             **{k: round(float(scores[k]), 4) for k in fastmri_metrics.METRICS},
                             "psnr_zero_filled": round(float(fastmri_metrics.volume_metrics(target, baseline)["psnr"]), 3)}
        truth = torch.from_numpy(target / parts.scale).float()
    record["seconds"] = round(time.perf_counter() - start, 3)
    return {"mean": mean[0].numpy(), "std": std[0].numpy(),
            "samples": [d[0].numpy() for d in per_draw] if config.save_samples else None,
            "truth_unit": truth, "mean_unit": (mean / parts.scale).float(), "std_unit": (std / parts.scale).float(),
            "meta": record["input"]}


def _write(folder: Path, config: ReconstructConfig, record: dict, arrays: dict) -> None:
    """mean / std (and samples) in the input's format (NPY for images, plus an 8-bit ``mean.png`` for
    PNG input; NIfTI for NIfTI, DICOM and fastMRI input), a PNG figure and record.json."""
    meta = arrays["meta"]
    written = []

    def save(name, array):
        if meta["format"] in ("nifti", "dicom", "fastmri"):
            written.append(save_nifti(array, folder / f"{name}.nii.gz", affine=np.asarray(meta["affine"])).name)
        else:
            written.append(save_npy(array, folder / f"{name}.npy").name)

    save("mean", arrays["mean"])
    save("std", arrays["std"])
    if meta["format"] == "png":  # PNG in, PNG out: 8-bit, the input's range, clipped (the NPY keeps full precision)
        lo, hi = meta["range"]
        scaled = np.clip(np.round((np.asarray(arrays["mean"], dtype=np.float64) - lo) / ((hi - lo) or 1.0) * 255), 0, 255)
        imsave(folder / "mean.png", scaled.astype(np.uint8), check_contrast=False)
        written.append("mean.png")
    for j, s in enumerate(arrays["samples"] or []):
        save(f"sample{j}", s)
    for name, m in (arrays.get("extras") or {}).items():  # e.g. kernels_mean.npy: its own grid, always NPY
        written.append(save_npy(m, folder / f"{name}_mean.npy").name)
    columns = {"posterior mean": arrays["mean_unit"]}
    if arrays["truth_unit"] is not None:
        columns = {"truth": arrays["truth_unit"], **columns}
    index = arrays["mean_unit"].shape[0] // 2
    fig = Figure(figsize=(2.6 * (len(columns) + 1), 2.6))
    axes = fig.subplots(1, len(columns) + 1, squeeze=False)[0]
    for ax, (title, t) in zip(axes, columns.items()):
        ax.imshow(t[index].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    axes[-1].imshow(arrays["std_unit"][index].numpy(), cmap="magma")
    axes[-1].set_title("posterior std", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    written.append(save_figure(fig, folder / "reconstruction.png").name)
    record["outputs"] = written + ["record.json"]
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    (folder / "record.json").write_text(text)
