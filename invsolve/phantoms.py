"""Seeded random-ellipse CT phantoms and the Shepp-Logan phantom.

Random phantoms follow the structure of the (modified) Shepp-Logan head phantom: an
optional dense outer shell ("skull"), a soft-tissue interior, and several smaller
ellipses whose intensities add to or subtract from the tissue. Values are attenuation
in [0, 1]. Everything is drawn from a ``torch.Generator`` so a (seed, index range)
pair always gives the same images; training and held-out sets use different seeds.

Recipe (used to train ``ct-phantom64``; see docs/priors.md):

- body ellipse: semi-axes U(0.62, 0.92) x U(0.50, 0.80) of the half-width, rotation
  U(-0.35, 0.35) rad, centre offset U(-0.06, 0.06);
- with probability 0.7 a shell: the body gets intensity U(0.7, 1.0) and an interior
  ellipse 0.84-0.94 times smaller gets the tissue intensity, else the whole body is tissue;
- tissue intensity U(0.1, 0.45);
- 3 to 9 inner ellipses: semi-axes U(0.04, 0.35), any rotation, centres inside the
  interior, additive intensity U(-0.25, 0.45);
- clipped to [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

TRAIN_SEED = 0
"""Seed of the phantom stream that ``ct-phantom64`` was trained on."""
HELDOUT_SEED = 1_000_003
"""Seed of the held-out phantoms used by the demo and benchmarks (never used in training)."""


def _ellipse_masks(grid_x, grid_y, cx, cy, a, b, theta):
    """Boolean masks (..., H, W) of ellipses with per-ellipse parameters of shape (...)."""
    cx, cy, a, b, theta = (p[..., None, None] for p in (cx, cy, a, b, theta))
    dx, dy = grid_x - cx, grid_y - cy
    cos, sin = torch.cos(theta), torch.sin(theta)
    u = (dx * cos + dy * sin) / a
    v = (-dx * sin + dy * cos) / b
    return (u * u + v * v) <= 1.0


def random_ellipses(n: int, size: int = 64, generator: torch.Generator | None = None,
                    max_inner: int = 9) -> torch.Tensor:
    """Draw ``n`` random-ellipse phantoms of shape (n, 1, size, size) with values in [0, 1]."""
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8, got n={n}, size={size}")
    g = generator if generator is not None else torch.Generator().manual_seed(TRAIN_SEED)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")

    # body and optional shell
    a_body, b_body = uniform(0.62, 0.92, n), uniform(0.50, 0.80, n)
    rot_body = uniform(-0.35, 0.35, n)
    cx_body, cy_body = uniform(-0.06, 0.06, n), uniform(-0.06, 0.06, n)
    has_shell = torch.rand(n, generator=g, dtype=torch.float64) < 0.7
    shell_value = uniform(0.7, 1.0, n)
    tissue = uniform(0.10, 0.45, n)
    shrink = torch.where(has_shell, uniform(0.84, 0.94, n), torch.ones(n, dtype=torch.float64))

    body = _ellipse_masks(grid_x, grid_y, cx_body, cy_body, a_body, b_body, rot_body)
    interior = _ellipse_masks(grid_x, grid_y, cx_body, cy_body, a_body * shrink, b_body * shrink, rot_body)
    image = torch.where(body, shell_value[:, None, None], torch.zeros(()))
    image = torch.where(interior, tissue[:, None, None], image)

    # inner ellipses, centres drawn inside the interior ellipse (polar coordinates)
    k = max_inner
    count = torch.randint(3, max_inner + 1, (n,), generator=g)
    active = torch.arange(k)[None, :] < count[:, None]
    radius = torch.sqrt(uniform(0.0, 1.0, n, k)) * 0.8
    angle = uniform(0.0, 2 * math.pi, n, k)
    ax, bx = (a_body * shrink)[:, None], (b_body * shrink)[:, None]
    px, py = radius * ax * torch.cos(angle), radius * bx * torch.sin(angle)
    cos_b, sin_b = torch.cos(rot_body)[:, None], torch.sin(rot_body)[:, None]
    cx = cx_body[:, None] + px * cos_b - py * sin_b
    cy = cy_body[:, None] + px * sin_b + py * cos_b
    a, b = uniform(0.04, 0.35, n, k), uniform(0.04, 0.35, n, k)
    theta = uniform(0.0, math.pi, n, k)
    value = uniform(-0.25, 0.45, n, k) * active
    masks = _ellipse_masks(grid_x, grid_y, cx, cy, a, b, theta) & interior[:, None]
    image = image + (masks * value[..., None, None]).sum(1)
    return image.clamp(0.0, 1.0).to(torch.float32)[:, None]


def heldout_phantoms(n: int, size: int = 64) -> torch.Tensor:
    """The first ``n`` held-out phantoms (seed ``HELDOUT_SEED``, never used in training)."""
    return random_ellipses(n, size, torch.Generator().manual_seed(HELDOUT_SEED))


def shepp_logan(size: int = 64) -> torch.Tensor:
    """scikit-image's (modified) Shepp-Logan phantom resized to (1, 1, size, size), values in [0, 1]."""
    image = resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=True)
    return torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32))[None, None]


VOLUME_TUNE_SEED = 2_000_101
"""Seed of the 3D phantoms used to choose the volume samplers' presets (benchmarks/volume/tune.py)."""
VOLUME_HELDOUT_SEED = 1_000_033
"""Seed of the held-out 3D phantoms of benchmarks/volume (never used for training or tuning)."""


def _ellipsoid_masks(grid_x, grid_y, grid_z, cx, cy, cz, a, b, c, theta):
    """Boolean masks (..., D, H, W) of ellipsoids rotated by ``theta`` about the z axis."""
    cx, cy, cz, a, b, c, theta = (p[..., None, None, None] for p in (cx, cy, cz, a, b, c, theta))
    dx, dy, dz = grid_x - cx, grid_y - cy, grid_z - cz
    cos, sin = torch.cos(theta), torch.sin(theta)
    u = (dx * cos + dy * sin) / a
    v = (-dx * sin + dy * cos) / b
    w = dz / c
    return (u * u + v * v + w * w) <= 1.0


def random_ellipsoids(n: int, size: int = 64, generator: torch.Generator | None = None,
                      max_inner: int = 9) -> torch.Tensor:
    """Draw ``n`` random-ellipsoid volumes of shape (n, 1, size, size, size), indexed (z, y, x),
    values in [0, 1], whose axial slices are random-ellipse phantoms of ``random_ellipses``' family.

    The 2D recipe extended by a z semi-axis, with the same intensity distributions: a body
    ellipsoid (x, y semi-axes and rotation about z as the 2D body, z semi-axis U(0.85, 1.2) so it
    reaches through most slices), a shell with probability 0.7 (interior 0.84-0.94 times smaller,
    also along z), tissue U(0.1, 0.45), shell U(0.7, 1.0), and 6 to 18 inner ellipsoids (twice the
    2D count, since a slice cuts only some of them; semi-axes U(0.04, 0.35) in x and y, U(0.15, 0.6)
    in z, rotation about z, centres inside the interior, additive U(-0.25, 0.45)), clipped to
    [0, 1]. Axial slices cut ellipsoids into ellipses, so each is a phantom of the 2D family
    (smaller bodies near the top and bottom).
    """
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8, got n={n}, size={size}")
    g = generator if generator is not None else torch.Generator().manual_seed(VOLUME_TUNE_SEED)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    grid_z, grid_y, grid_x = torch.meshgrid(coords, coords, coords, indexing="ij")
    volumes = []
    for _ in range(n):
        a_body, b_body, c_body = uniform(0.62, 0.92, 1), uniform(0.50, 0.80, 1), uniform(0.85, 1.2, 1)
        rot = uniform(-0.35, 0.35, 1)
        cx0, cy0, cz0 = uniform(-0.06, 0.06, 1), uniform(-0.06, 0.06, 1), uniform(-0.06, 0.06, 1)
        has_shell = bool(torch.rand(1, generator=g) < 0.7)
        shell_value, tissue = float(uniform(0.7, 1.0, 1)), float(uniform(0.10, 0.45, 1))
        shrink = uniform(0.84, 0.94, 1) if has_shell else torch.ones(1, dtype=torch.float64)
        body = _ellipsoid_masks(grid_x, grid_y, grid_z, cx0, cy0, cz0, a_body, b_body, c_body, rot)[0]
        interior = _ellipsoid_masks(grid_x, grid_y, grid_z, cx0, cy0, cz0, a_body * shrink, b_body * shrink,
                                    c_body * shrink, rot)[0]
        volume = torch.where(body, shell_value, 0.0)
        volume = torch.where(interior, tissue, volume).to(torch.float64)
        count = int(torch.randint(2 * 3, 2 * max_inner + 1, (1,), generator=g))
        for _ in range(count):
            radius = float(torch.sqrt(uniform(0.0, 1.0, 1))) * 0.8
            angle = float(uniform(0.0, 2 * math.pi, 1))
            px = radius * float(a_body * shrink) * math.cos(angle)
            py = radius * float(b_body * shrink) * math.sin(angle)
            cz = cz0 + uniform(-0.6, 0.6, 1) * c_body * shrink
            cx = cx0 + px * torch.cos(rot) - py * torch.sin(rot)
            cy = cy0 + px * torch.sin(rot) + py * torch.cos(rot)
            a, b, c = uniform(0.04, 0.35, 1), uniform(0.04, 0.35, 1), uniform(0.15, 0.6, 1)
            theta = uniform(0.0, math.pi, 1)
            value = float(uniform(-0.25, 0.45, 1))
            mask = _ellipsoid_masks(grid_x, grid_y, grid_z, cx, cy, cz, a, b, c, theta)[0] & interior
            volume = volume + value * mask
        volumes.append(volume.clamp(0.0, 1.0).to(torch.float32))
    return torch.stack(volumes)[:, None]


def heldout_volumes(n: int, size: int = 64) -> torch.Tensor:
    """The first ``n`` held-out 3D phantoms (seed ``VOLUME_HELDOUT_SEED``)."""
    return random_ellipsoids(n, size, torch.Generator().manual_seed(VOLUME_HELDOUT_SEED))
