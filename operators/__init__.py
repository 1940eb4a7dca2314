"""Physics operators for invsolve: every operator is a ``deepinv.physics.Physics``.

``make(name, **params)`` builds an operator or a named benchmark preset, ``names()``
lists them. Third-party packages add operators through the entry-point group
``invsolve.operators``: each entry point names a callable ``factory(**params) -> Physics``
and is listed by ``names()`` under the entry point's name.
"""

from __future__ import annotations

from typing import Callable

from deepinv.physics import Physics

ENTRY_POINT_GROUP = "invsolve.operators"

_REGISTRY: dict[str, Callable[..., Physics]] = {}
_DOCS: dict[str, str] = {}


def register(name: str, factory: Callable[..., Physics], doc: str = "", overwrite: bool = False) -> None:
    """Register ``factory(**params) -> Physics`` under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"operator {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory
    _DOCS[name] = doc or (factory.__doc__ or "").strip().split("\n")[0]


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()
            _DOCS[ep.name] = f"plug-in from {ep.value}"


def names() -> list[str]:
    """Names of every registered operator and preset, plug-ins included."""
    _load_entry_points()
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    _load_entry_points()
    return _DOCS.get(name, "")


def make(name: str, **params) -> Physics:
    """Build the operator or preset ``name`` with ``params`` (see ``docs/operators.md``)."""
    _load_entry_points()
    if name not in _REGISTRY:
        raise KeyError(f"unknown operator {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**params)


def _ct(**params):
    from .ct import ParallelBeamCT

    return ParallelBeamCT(**params)


def _ct_sparse8(img_size=64, **params):
    from .ct import ParallelBeamCT

    if "views" in params:
        raise TypeError("ct-sparse8 fixes views=8; use make('ct', views=...) for another number of views")
    return ParallelBeamCT(img_size=img_size, views=8, **params)


register("ct", _ct, "2D parallel-beam CT (torch, matched adjoint, FBP pseudo-inverse); img_size, views, n_detectors")
register("ct-sparse8", _ct_sparse8, "sparse-view CT preset: 8 views uniform over [0, 180) degrees, detector = image diagonal")


def _mri(**params):
    from .mri import make_mri

    return make_mri(**params)


def _mri_preset(mask_type, acceleration):
    def factory(img_size=320, **params):
        from .mri import make_mri

        for fixed in ("mask_type", "acceleration", "mask"):
            if fixed in params:
                raise TypeError(f"this preset fixes {fixed}; use make('mri', ...) to choose it")
        return make_mri(img_size=img_size, mask_type=mask_type, acceleration=acceleration, **params)
    return factory


register("mri", _mri, "Cartesian MRI (deepinv MRI / MultiCoilMRI) with fastMRI masks; img_size, coils, mask_type, acceleration, seed")
register("mri-4x-equispaced", _mri_preset("equispaced_fraction", 4),
         "fastMRI brain protocol: equispaced_fraction mask, 4x, centre fraction 0.08")
register("mri-8x-random", _mri_preset("random", 8), "fastMRI knee protocol: random mask, 8x, centre fraction 0.04")


def _inpainting(**params):
    from .inpainting import make_inpainting

    return make_inpainting(**params)


def _inpaint_preset(kind):
    def factory(img_size=256, **params):
        from .inpainting import make_inpainting

        if "kind" in params:
            raise TypeError("this preset fixes kind; use make('inpainting', kind=...)")
        return make_inpainting(img_size=img_size, kind=kind, **params)
    return factory


register("inpainting", _inpainting, "deepinv Inpainting with a centred box or seeded random mask, 2D or 3D")
register("inpaint-box", _inpaint_preset("box"), "DPS/DAPS box inpainting: centred box of half the size (128 of 256)")
register("inpaint-random70", _inpaint_preset("random"), "DAPS random inpainting: 70 % of pixels missing, seeded")


def _gaussian_blur(**params):
    from .blur import make_gaussian_blur

    return make_gaussian_blur(**params)


def _deblur_gauss61(**params):
    from .blur import make_gaussian_blur

    for fixed in ("std", "kernel_size"):
        if fixed in params:
            raise TypeError(f"deblur-gauss61 fixes {fixed}; use make('gaussian-blur', ...)")
    return make_gaussian_blur(std=3.0, kernel_size=61 if params.get("dims", 2) == 2 else None, **params)


register("gaussian-blur", _gaussian_blur, "Gaussian blur (deepinv Blur), 2D or 3D; std, kernel_size, dims, padding")
register("deblur-gauss61", _deblur_gauss61, "DPS/DAPS Gaussian deblurring: 61x61 kernel, std 3.0, reflect padding")
