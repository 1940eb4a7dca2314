"""Physics operators for invsolve: every operator is a ``deepinv.physics.Physics``.

``make(name, **params)`` builds an operator or a named benchmark preset, ``names()``
lists them. Third-party packages add operators through the entry-point group
``invsolve.operators``: each entry point names a callable ``factory(**params) -> Physics``
and is listed by ``names()`` under the entry point's name.
"""

from __future__ import annotations

import inspect
import warnings
from importlib import import_module
from importlib.metadata import entry_points
from typing import Callable

from deepinv.physics import Physics

from .errors import ConfigError, UnknownNameError, UnknownOptionError, closest_first

ENTRY_POINT_GROUP = "invsolve.operators"

_REGISTRY: dict[str, Callable[..., Physics]] = {}
_DOCS: dict[str, str] = {}


def register(name: str, factory: Callable[..., Physics], doc: str = "", overwrite: bool = False) -> None:
    """Register ``factory(**params) -> Physics`` under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"operator {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory
    _DOCS[name] = doc or (factory.__doc__ or "").strip().split("\n")[0]


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()
            _DOCS[ep.name] = f"plug-in from {ep.value}"


def names() -> list[str]:
    """Names of every registered operator and preset, plug-ins included."""
    _load_entry_points()
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """The one-line description of operator or preset ``name`` (what ``invsolve list operators`` prints)."""
    _load_entry_points()
    return _DOCS.get(name, "")


def make(name: str, **params) -> Physics:
    """Build the operator or preset ``name`` with ``params`` (see ``docs/operators.md``)."""
    _load_entry_points()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown operator {name!r}; available: {closest_first(name, _REGISTRY)}")
    with warnings.catch_warnings(record=True) as caught:  # deepinv's Physics takes **kwargs and only warns
        warnings.simplefilter("always")
        physics = _REGISTRY[name](**params)
    ignored = [w for w in caught if "are ignored" in str(w.message) and "passed to" in str(w.message)]
    for w in caught:
        if w not in ignored:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if ignored:
        unknown = sorted(k for k in params if f"'{k}'" in str(ignored[0].message)) or sorted(params)
        valid = [p for p in inspect.signature(type(physics).__init__).parameters
                 if p not in ("self", "args", "kwargs")]
        raise UnknownOptionError(f"operator {name!r} does not take {unknown}; its parameters: "
                                 f"{closest_first(unknown[0], valid)}")
    return physics


def _builder(module: str, function: str, **fixed) -> Callable[..., Physics]:
    """A factory importing ``operators.<module>.<function>`` lazily; ``fixed`` parameters are
    set by the preset and may not be overridden."""
    def factory(**params):
        clash = sorted(set(fixed) & set(params))
        if clash:
            raise UnknownOptionError(f"this preset fixes {clash}; use the base operator to choose them")
        return getattr(import_module(f".{module}", __name__), function)(**params, **fixed)
    return factory


register("ct", _builder("astra_backend", "make_ct"),
         "2D parallel-beam CT (torch Joseph projector, exact adjoint, fbp(), least-squares A_dagger; backend='astra' for astra's CPU projectors); img_size, views, n_detectors")
register("ct-fan", _builder("astra_backend", "make_fanbeam"),
         "2D fan-beam CT, flat or curved detector, views over 360 deg (torch, exact adjoint, fan-beam fbp(), least-squares A_dagger; backend='astra' for flat); img_size, views, source_distance, detector_distance")
register("ct-sparse8", _builder("astra_backend", "make_ct", views=8),
         "sparse-view CT preset: 8 views uniform over [0, 180) degrees, detector = image diagonal")
register("mri", _builder("mri", "make_mri"),
         "Cartesian MRI, single coil or SENSE (CG pinv), 2D or 3D (three_d FFT or per slice); img_size, coils, mask_type, acceleration, seed")
register("mri-4x-equispaced", _builder("mri", "make_mri", mask_type="equispaced_fraction", acceleration=4, mask=None),
         "fastMRI brain protocol: equispaced_fraction mask, 4x, centre fraction 0.08")
register("mri-8x-random", _builder("mri", "make_mri", mask_type="random", acceleration=8, mask=None),
         "fastMRI knee protocol: random mask, 8x, centre fraction 0.04")
register("mri-3d-2x-uniform1d", _builder("mri", "make_mri_volume", mask_type="uniform1d", acceleration=2, center_fraction=0.15, three_d=False, mask=None),
         "DiffusionMBIR CS-MRI: single-coil volume (D, 240, 240), 2D FFT per slice, one uniform1d 2x mask (centre 0.15) for all slices")
register("inpainting", _builder("inpainting", "make_inpainting"),
         "deepinv Inpainting with a centred box or seeded random mask, 2D or 3D")
register("inpaint-box", _builder("inpainting", "make_inpainting", kind="box"),
         "DPS/DAPS box inpainting: centred box of half the size (128 of 256)")
register("inpaint-random70", _builder("inpainting", "make_inpainting", kind="random", missing=0.7),
         "DAPS random inpainting: 70 % of pixels missing, seeded")
register("gaussian-blur", _builder("blur", "make_gaussian_blur"),
         "Gaussian blur (deepinv Blur), 2D or 3D; std, kernel_size, dims, padding")
register("deblur-gauss61", _builder("blur", "make_gaussian_blur", std=3.0, kernel_size=None),
         "DPS/DAPS Gaussian deblurring: 61x61 kernel (25^3 in 3D), std 3.0, reflect padding")
register("motion-blur", _builder("blur", "make_motion_blur"),
         "motion blur with LeviBorodenko/motionblur kernels (DPS/DAPS), 2D or per-slice 3D; kernel_size, intensity, seed, index, dims")
register("deblur-motion61", _builder("blur", "deblur_motion61"),
         "DPS/DAPS motion deblurring: 61x61 motionblur kernel, intensity 0.5, reflect padding; seed=42, index=1 is DAPS's kernel")
register("sr-bicubic", _builder("resolution", "BicubicDownsampling"),
         "bicubic downsampling = DPS/DAPS Resizer (MATLAB imresize), exact adjoint and pinv, 2D or 3D; img_size, factor, axes")
register("sr4-bicubic", _builder("resolution", "BicubicDownsampling", factor=4),
         "DPS/DAPS super-resolution x4: antialiased bicubic Resizer(in_shape, 1/4), 256 -> 64 by default")
register("sr-avgpool", _builder("resolution", "AveragePooling"),
         "average-pool downsampling (DDRM SVD super-resolution), pinv = block replication, 2D or 3D; factor, dims, axes")
register("sr4-avgpool", _builder("resolution", "AveragePooling", factor=4),
         "DDRM/RED-Diff/FlowDPS super-resolution x4: mean over 4x4 blocks")
register("ct-transmission", _builder("transmission", "transmission_ct"),
         "Beer-Lambert transmission CT exp(-mu P x) through astra's CPU projector, a black box (no gradient: EnKG); counts() draws Poisson data; img_size, views (32), mu, I0 (1e4)")
register("ct-transmission-torch", _builder("transmission", "BeerLambert"),
         "the same Beer-Lambert transmission CT on the torch projector, differentiable (DPS-type samplers); img_size, views, mu, I0")
register("darcy", _builder("darcy", "DarcyFlow"),
         "2D steady Darcy flow -div(a grad u) = 1, u = 0 on the boundary (scipy), field a from the image, u read at sensors; a black box; img_size, a_min, a_max, sensors")
register("phase-retrieval", _builder("phase", "FourierPhaseRetrieval"),
         "Fourier phase retrieval |F pad(x)| (nonlinear), 2D or 3D; img_size, oversample, pad, dims, complex_input")
register("phase-retrieval-os2", _builder("phase", "FourierPhaseRetrieval", oversample=2.0, pad=None),
         "DPS/DAPS phase retrieval: oversample 2.0, pad int(2/8 n) per side (64 at 256^2), centred ortho FFT, amplitude")
