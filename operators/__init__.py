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


def _builder(module: str, function: str, **fixed) -> Callable[..., Physics]:
    """A factory importing ``operators.<module>.<function>`` lazily; ``fixed`` parameters are
    set by the preset and may not be overridden."""
    def factory(**params):
        clash = sorted(set(fixed) & set(params))
        if clash:
            raise TypeError(f"this preset fixes {clash}; use the base operator to choose them")
        from importlib import import_module

        return getattr(import_module(f".{module}", __name__), function)(**params, **fixed)
    return factory


register("ct", _builder("ct", "ParallelBeamCT"),
         "2D parallel-beam CT (torch, matched adjoint, FBP pseudo-inverse); img_size, views, n_detectors")
register("ct-sparse8", _builder("ct", "ParallelBeamCT", views=8),
         "sparse-view CT preset: 8 views uniform over [0, 180) degrees, detector = image diagonal")
register("mri", _builder("mri", "make_mri"),
         "Cartesian MRI (deepinv MRI / MultiCoilMRI) with fastMRI masks; img_size, coils, mask_type, acceleration, seed")
register("mri-4x-equispaced", _builder("mri", "make_mri", mask_type="equispaced_fraction", acceleration=4, mask=None),
         "fastMRI brain protocol: equispaced_fraction mask, 4x, centre fraction 0.08")
register("mri-8x-random", _builder("mri", "make_mri", mask_type="random", acceleration=8, mask=None),
         "fastMRI knee protocol: random mask, 8x, centre fraction 0.04")
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
