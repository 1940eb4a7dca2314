"""Contract tests over every registered operator and preset (``ops.names()``, read when the tests
are collected), 2D and 3D, float32 and float64, through ``operators.testing.check_operator``:
adjointness, linearity and vjp vs adjoint for linear operators; vjp vs autograd and the Taylor
test for nonlinear ones; batch invariance for all; the pseudo-inverse on the range where
``A_dagger`` is exact, and to a stated bound where it is an iterative least-squares solve (CT).

``CASES`` says, per name, how to make the operator small and which input it takes. A name missing
from it gets the generic fallback (``img_size=16`` on (2, 1, 16, 16); ``img_size=8, dims=3`` on
(2, 1, 8, 8, 8)); if that fails, the test fails and asks for a row. An operator with no 3D form,
or one too large to check here, says so in its row (``no_3d`` / ``no_2d`` / ``too_large_3d``), never
by a silent skip: ``no_3d`` rows are tested to reject volumes with an error, ``no_2d`` rows to
refuse to be made for images, and ``too_large_3d`` rows are skipped with their reason.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import operators as ops
from operators.testing import check_operator


@dataclasses.dataclass(frozen=True)
class Case:
    params: dict                     # make(name, **params) for 2D inputs
    shape: tuple                     # 2D input shape (batch of 2 so batch invariance runs)
    params_3d: dict | None = None    # make(name, **params_3d) for volumes (None: same as params)
    shape_3d: tuple | None = None    # 3D input shape
    no_3d: str | None = None         # why there is no 3D form (volumes must then raise)
    no_2d: str | None = None         # why there is no 2D form (making it for an image must raise)
    too_large_3d: str | None = None  # why the 3D form is not checked here
    pinv_exact: bool = False         # A(A_dagger(A x)) == A x to rounding
    pinv_tol: float | None = None    # enforced bound on ||A(A_dagger(A x)) - A x|| / ||A x|| (iterative A_dagger)


# CT's A_dagger is 50 CG iterations on the normal equations: 5e-3 to 7e-3 measured (FBP: 0.7 to 1)
CT = dict(params={"img_size": 16, "views": 5}, shape=(2, 1, 16, 16), shape_3d=(2, 1, 3, 16, 16), pinv_tol=2e-2)
MRI = dict(params={"img_size": 16}, shape=(2, 2, 16, 16), params_3d={"img_size": (3, 16, 16)},
           shape_3d=(2, 2, 3, 16, 16), pinv_exact=True)
INPAINT = dict(params={"img_size": 12}, shape=(2, 1, 12, 12), params_3d={"img_size": 6, "dims": 3},
               shape_3d=(2, 1, 6, 6, 6), pinv_exact=True)
PHASE = dict(params={"img_size": 12}, shape=(2, 1, 12, 12), params_3d={"img_size": 6, "dims": 3},
             shape_3d=(2, 1, 6, 6, 6))
BICUBIC = dict(params={"img_size": 16}, shape=(2, 1, 16, 16), params_3d={"img_size": (8, 8, 8)},
               shape_3d=(2, 1, 8, 8, 8), pinv_exact=True)
AVGPOOL = dict(params={}, shape=(2, 1, 16, 16), params_3d={"dims": 3}, shape_3d=(2, 1, 8, 8, 8), pinv_exact=True)

CASES: dict[str, Case] = {
    "ct": Case(**CT),
    "ct-fan": Case(**{**CT, "params": {"img_size": 16, "views": 6}}),
    "ct-sparse8": Case(**{**CT, "params": {"img_size": 16}}),
    "mri": Case(**MRI),
    "mri-4x-equispaced": Case(**MRI),
    "mri-8x-random": Case(**MRI),
    "mri-3d-2x-uniform1d": Case(params={"img_size": 16}, shape=(), params_3d={"img_size": (3, 16, 16)}, shape_3d=(2, 2, 3, 16, 16),
                                pinv_exact=True, no_2d="a volume preset: img_size must be (D, H, W)"),
    "inpainting": Case(**INPAINT),
    "inpaint-box": Case(**INPAINT),
    "inpaint-random70": Case(**INPAINT),
    "gaussian-blur": Case(params={"std": 1.0, "kernel_size": 5}, shape=(2, 1, 12, 12),
                          params_3d={"std": 1.0, "kernel_size": 5, "dims": 3}, shape_3d=(2, 1, 6, 6, 6)),
    # the 61x61 presets need more than 30 pixels per axis with reflect padding
    "deblur-gauss61": Case(params={}, shape=(2, 1, 32, 32),
                           too_large_3d="its 25^3 kernel needs volumes over 12^3 (about 2 s per A on CPU); "
                                        "the same 3D class is checked through 'gaussian-blur' with dims=3"),
    "motion-blur": Case(params={"kernel_size": 5}, shape=(2, 1, 12, 12), params_3d={"kernel_size": 5, "dims": 3},
                        shape_3d=(2, 1, 3, 12, 12)),
    "deblur-motion61": Case(params={}, shape=(2, 1, 32, 32), params_3d={"dims": 3}, shape_3d=(2, 1, 2, 32, 32)),
    "sr-bicubic": Case(**BICUBIC),
    "sr4-bicubic": Case(**BICUBIC),
    "sr-avgpool": Case(**AVGPOOL),
    "sr4-avgpool": Case(**AVGPOOL),
    "phase-retrieval": Case(**PHASE),
    "phase-retrieval-os2": Case(**PHASE),
    # issue 16: nonlinear CT (astra black box and its torch twin) and the Darcy PDE (scipy black box, 2D only)
    "ct-transmission": Case(**{**CT, "pinv_tol": None}),  # volumes slice by slice, as "ct"
    "ct-transmission-torch": Case(**{**CT, "pinv_tol": None}),
    "darcy": Case(params={"img_size": 16, "sensors": 4}, shape=(2, 1, 16, 16), no_3d="a 2D PDE on the unit square"),
}

FALLBACK = Case(params={"img_size": 16}, shape=(2, 1, 16, 16), params_3d={"img_size": 8, "dims": 3},
                shape_3d=(2, 1, 8, 8, 8))

NAMES = ops.names()


def _make(name: str, dims: int):
    case = CASES.get(name, FALLBACK)
    params = case.params if dims == 2 or case.params_3d is None else case.params_3d
    shape = case.shape if dims == 2 else case.shape_3d
    try:
        return ops.make(name, **params), shape, case
    except Exception as err:
        if name in CASES:
            raise
        pytest.fail(f"operator {name!r} has no row in CASES (tests/test_operator_contracts.py) and the generic "
                    f"fallback make({name!r}, **{params}) failed with {type(err).__name__}: {err}; add a row saying "
                    "how to make it small (and whether it has a 3D form)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
@pytest.mark.parametrize("name", NAMES)
def test_operator_contract(name, dims, dtype):
    case = CASES.get(name, FALLBACK)
    if dims == 2 and case.no_2d:
        with pytest.raises((ValueError, TypeError)):
            ops.make(name, **case.params)
        return
    if dims == 3 and case.no_3d:
        physics, shape, _ = _make(name, 2)
        volume = torch.zeros(shape[0], shape[1], 3, *shape[2:], dtype=dtype)
        with pytest.raises((ValueError, TypeError, RuntimeError)):
            physics.A(volume)
        return
    if dims == 3 and case.too_large_3d:
        pytest.skip(f"{name} 3D not checked: {case.too_large_3d}")
    physics, shape, case = _make(name, dims)
    x = torch.zeros(shape, dtype=dtype)
    eps = torch.finfo(dtype).eps
    try:
        report = check_operator(physics, x, torch.Generator().manual_seed(0),
                                pinv_tol=1e3 * eps if case.pinv_exact else case.pinv_tol)
    except Exception as err:
        if name in CASES:
            raise
        pytest.fail(f"operator {name!r} has no row in CASES and failed on the fallback input {shape} "
                    f"({type(err).__name__}: {err}); add a row to tests/test_operator_contracts.py")
    assert report.ok, f"{name} ({dims}D, {dtype}) failed its contract:\n{report}"
    expected = ({"refuses_gradient", "determinism"} if getattr(physics, "black_box", False) else
                {"adjointness", "linearity", "vjp_vs_adjoint"} if _is_linear(physics) else {"vjp_vs_autograd", "taylor"})
    assert expected | {"batch_invariance"} <= set(report.errors), report
    if case.pinv_exact or case.pinv_tol is not None:
        assert "pseudo_inverse" in report.errors and report.tolerances["pseudo_inverse"] < 1


def _is_linear(physics) -> bool:
    from deepinv.physics import LinearPhysics

    return isinstance(physics, LinearPhysics)


@pytest.mark.parametrize("name", NAMES)
def test_every_operator_is_documented_and_a_deepinv_physics(name):
    from deepinv.physics import Physics

    assert ops.describe(name), f"register {name!r} with a one-line doc string"
    physics, _, _ = _make(name, 3 if CASES.get(name, FALLBACK).no_2d else 2)
    assert isinstance(physics, Physics)


def test_table_rows_name_registered_operators():
    """A row for a name that is no longer registered is a stale table."""
    assert set(CASES) <= set(NAMES), sorted(set(CASES) - set(NAMES))


def test_checks_catch_wrong_derivatives_and_pseudo_inverses():
    from deepinv.physics import Physics

    from operators.testing import taylor_test

    x = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    assert abs(taylor_test(Physics(A=lambda u: u ** 3), x, g).order - 2) < 0.1
    detached = check_operator(Physics(A=lambda u: u * u.detach()), x)  # autograd sees half the derivative
    assert set(detached.failed) == {"taylor"}, detached

    inpaint = ops.make("inpainting", img_size=6, kind="random")
    assert check_operator(inpaint, x, pinv_tol=1e-12).ok
    inpaint.A_dagger = lambda y, **kw: 2 * y  # wrong pseudo-inverse
    info = check_operator(inpaint, x)
    assert info.ok and info.tolerances["pseudo_inverse"] == float("inf") and "info" in str(info)
    enforced = check_operator(inpaint, x, pinv_tol=1e-12)
    assert set(enforced.failed) == {"pseudo_inverse"} and "FAILED" in str(enforced)
