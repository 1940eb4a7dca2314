"""2D steady Darcy flow: a nonlinear, gradient-free PDE forward map, parameter field -> sensor readings.

PDE (the Darcy benchmark of the neural-operator literature, e.g. FNO, Li et al. 2021): on the unit
square,

    -div( a(s) grad u(s) ) = f,   u = 0 on the boundary,   f = 1,

with the permeability ``a = a_min + (a_max - a_min) x`` taken from an image ``x`` in [0, 1] on an
``n x n`` cell grid (FNO's Darcy data: two-valued fields 3 / 12, the defaults here). The map
``x -> u`` is nonlinear (``u`` depends on ``1/a``); the measurement is ``u`` at ``sensors x sensors``
interior cell centres on a regular grid (the observation operator of Darcy inversion papers).

Discretisation (written here because no maintained library offers a small scipy Darcy solver): the
standard 5-point finite-volume scheme on cell centres, face permeabilities by the harmonic mean of
the two cells (the boundary face uses the cell's own value and a half-cell distance to the
Dirichlet wall), one sparse LU solve per field (``scipy.sparse.linalg.spsolve``). The solver runs
in float64 NumPy; ``DarcyFlow`` is a ``BlackBox``: no gradient or adjoint (derivative-free samplers
only), which is the point of the task.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from .blackbox import BlackBox
from .errors import ConfigError, DataError


def solve_darcy(a: np.ndarray, f: float = 1.0) -> np.ndarray:
    """The cell-centred solution ``u`` (n x n) of ``-div(a grad u) = f``, ``u = 0`` on the boundary,
    for permeabilities ``a`` (n x n, > 0) on the unit square."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise DataError(f"darcy: the field must be square (n, n), got shape {a.shape}")
    if not np.all(a > 0):
        raise DataError("darcy: permeabilities must be > 0")
    n = a.shape[0]
    h2 = (1.0 / n) ** 2
    idx = np.arange(n * n).reshape(n, n)
    # face transmissibilities: harmonic means inside, the cell itself over half a cell at the wall
    tx = 2 * a[:, :-1] * a[:, 1:] / (a[:, :-1] + a[:, 1:])  # between columns j and j+1
    ty = 2 * a[:-1, :] * a[1:, :] / (a[:-1, :] + a[1:, :])  # between rows i and i+1
    diag = np.zeros((n, n))
    diag[:, :-1] += tx
    diag[:, 1:] += tx
    diag[:-1, :] += ty
    diag[1:, :] += ty
    wall = 2 * a  # half-cell distance to the Dirichlet boundary
    diag[:, 0] += wall[:, 0]
    diag[:, -1] += wall[:, -1]
    diag[0, :] += wall[0, :]
    diag[-1, :] += wall[-1, :]
    rows = [idx.ravel(), idx[:, :-1].ravel(), idx[:, 1:].ravel(), idx[:-1, :].ravel(), idx[1:, :].ravel()]
    cols = [idx.ravel(), idx[:, 1:].ravel(), idx[:, :-1].ravel(), idx[1:, :].ravel(), idx[:-1, :].ravel()]
    vals = [diag.ravel(), -tx.ravel(), -tx.ravel(), -ty.ravel(), -ty.ravel()]
    matrix = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n * n, n * n))
    return spsolve(matrix.tocsc(), np.full(n * n, f * h2)).reshape(n, n)


def sensor_index(n: int, sensors: int) -> np.ndarray:
    """Cell indices (per axis) of ``sensors`` evenly spaced interior sensors on an ``n``-cell axis."""
    if not 1 <= sensors <= n:
        raise ConfigError(f"darcy: sensors per axis must be in [1, {n}], got {sensors}")
    return np.round((np.arange(sensors) + 0.5) * n / sensors - 0.5).astype(int)


class DarcyFlow(BlackBox):
    """``u(a(x))`` at ``sensors x sensors`` points: steady Darcy flow as a black box (images (B, 1, n, n)).

    :param img_size: cells per axis ``n`` (the image size).
    :param a_min, a_max: permeability where ``x = 0`` / ``x = 1`` (FNO Darcy: 3 and 12).
    :param sensors: sensors per axis (default 16: 256 readings).
    :param source: the constant source ``f``.
    """

    def __init__(self, img_size: int = 64, a_min: float = 3.0, a_max: float = 12.0, sensors: int = 16,
                 source: float = 1.0, **kwargs):
        if not 0 < a_min < a_max:
            raise ConfigError(f"darcy: need 0 < a_min < a_max, got a_min={a_min}, a_max={a_max}")
        self.img_size, self.a_min, self.a_max, self.source = int(img_size), float(a_min), float(a_max), float(source)
        self.sensors = int(sensors)
        rows = sensor_index(self.img_size, self.sensors)
        self._where = np.ix_(rows, rows)
        super().__init__(self._readings, backend="numpy", batched=False, name="darcy", **kwargs)

    def permeability(self, x: np.ndarray) -> np.ndarray:
        """``a = a_min + (a_max - a_min) clip(x, 0, 1)`` (clipped: the PDE needs ``a > 0``)."""
        return self.a_min + (self.a_max - self.a_min) * np.clip(x, 0.0, 1.0)

    def _readings(self, x: np.ndarray) -> np.ndarray:
        if x.shape != (1, self.img_size, self.img_size):
            raise DataError(f"darcy: expects fields (1, {self.img_size}, {self.img_size}), got {x.shape}")
        u = solve_darcy(self.permeability(x[0]), self.source)
        return u[self._where][None]

    def __repr__(self) -> str:
        return (f"DarcyFlow(n={self.img_size}, a in [{self.a_min:g}, {self.a_max:g}], "
                f"{self.sensors}x{self.sensors} sensors)")
