"""``Problem`` (physics + measurement + noise level, physical units) and its model-space view.

A sampler never sees a ``Problem``: ``invsolve.sample`` asks the prior for the problem's view in
its model space (``Prior.model_problem``): ``ModelProblem`` for pixel priors (the affine
``UnitMap`` of the prior's card), ``LatentModelProblem`` for latent priors (the decoder). This
file holds the affine map's only formula; it has no linear algebra of its own (that is
``operators.linalg`` and ``invsolve.samplers.toolkit.LinearPart``).
"""

from __future__ import annotations

import dataclasses

import torch
from deepinv.physics import LinearPhysics, Physics

from operators.errors import ConfigError, DataError, PhysicsError


@dataclasses.dataclass(frozen=True)
class UnitMap:
    """The affine map between physical units and a prior's model space:
    ``x_model = scale * x_physical + offset`` (e.g. [0, 1] attenuation -> [-1, 1]: scale 2, offset -1)."""

    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self):
        if not (self.scale == self.scale and self.scale != 0 and abs(self.scale) != float("inf")):
            raise ConfigError(f"scale must be finite and nonzero (x_model = scale * x_physical + offset), got {self.scale}")

    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.scale * x_physical + self.offset

    def to_physical(self, x_model: torch.Tensor) -> torch.Tensor:
        return (x_model - self.offset) / self.scale


class Problem:
    """An inverse problem ``y = A(x) + n``, ``n ~ N(0, sigma_y^2 I)``, in physical units.

    :param physics: any ``deepinv.physics.Physics`` acting on physical-unit images.
    :param y: measurements, batch first: one row per scan to reconstruct.
    :param sigma_y: standard deviation of the measurement noise, in the physical units of ``y``.
    :param prior: the prior this problem is meant for (optional): ``invsolve.sample`` checks that
        it is the prior it is given, and the model-space helpers below use its map.
    :param scale, offset: an explicit physical -> model map that replaces the prior card's
        (``x_model = scale * x_physical + offset``), for priors without one (e.g. a
        ``GaussianMixture`` defined in model space).

    ``forward``, ``residual``, ``adjoint``, ``linear_forward``, ``to_model`` and ``to_physical`` are those of the
    model-space view (``view()``), kept here for convenience.
    """

    def __init__(self, physics: Physics, y: torch.Tensor, sigma_y: float, prior=None,
                 scale: float | None = None, offset: float | None = None):
        if not isinstance(physics, Physics):
            raise PhysicsError(f"physics must be a deepinv.physics.Physics, got {type(physics).__name__}")
        if not torch.is_tensor(y):
            raise DataError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if not torch.isfinite(y).all():
            raise DataError("the measurement y contains NaN or Inf values; clean or mask them before reconstructing")
        if not (sigma_y >= 0) or sigma_y == float("inf"):
            raise ConfigError(f"sigma_y must be finite and >= 0 (physical units of y), got {sigma_y}")
        self.physics = physics
        self.y = y
        self.sigma_y = float(sigma_y)
        self.prior = prior
        explicit = scale is not None or offset is not None
        self.unit_map = UnitMap(float(1.0 if scale is None else scale), float(0.0 if offset is None else offset)) \
            if explicit else None
        self._views: dict[int, tuple] = {}
        if prior is not None and hasattr(prior, "model_problem"):
            prior.model_problem(self)  # fail now on a prior / physics / measurement mismatch (one probe A call)

    def cached_view(self, prior):
        """The model-space view already built for ``prior`` (``Prior.model_problem``), or None."""
        entry = self._views.get(id(prior))
        return entry[1] if entry is not None and entry[0] is prior else None

    def cache_view(self, prior, view):
        self._views[id(prior)] = (prior, view)
        return view

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    @property
    def is_linear(self) -> bool:
        return isinstance(self.physics, LinearPhysics)

    def tiled_y(self, batch: int) -> torch.Tensor:
        """The measurements repeated sample-major to match a model batch of size ``batch``."""
        if batch % self.batch:
            raise DataError(f"a batch of {batch} samples does not divide into {self.batch} measurements")
        return self.y.repeat(batch // self.batch, *([1] * (self.y.ndim - 1)))

    def view(self, prior=None) -> "ModelProblem":
        """This problem in the model space of ``prior`` (default: the problem's own prior; with
        neither, the explicit ``scale``/``offset`` or the identity map)."""
        prior = prior if prior is not None else self.prior
        if prior is not None:
            return prior.model_problem(self)
        return ModelProblem(self, self.unit_map or UnitMap())

    # the model-space view's helpers, for code that holds a Problem
    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.view().to_model(x_physical)

    def to_physical(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.view().to_physical(x_model)

    def forward(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.view().forward(x_model)

    def residual(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.view().residual(x_model)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.view().adjoint(r)

    def linear_forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.view().linear_forward(v)


class ModelProblem:
    """A ``Problem`` seen from a pixel prior's model space through an affine ``UnitMap``.

    ``forward(x) = A(to_physical(x))`` is what samplers call; for linear physics it is affine,
    ``forward(x) = M x + c`` with ``M v = A(v / scale)`` (``linear_forward``) and adjoint
    ``M^T r = A^T(r) / scale`` (``adjoint``). A batch of ``n * B`` model-space tensors is matched
    sample-major against the ``B`` measurements (row ``j * B + i`` belongs to measurement ``i``).
    """

    def __init__(self, problem: Problem, unit_map: UnitMap, x_shape: tuple[int, ...] | None = None, prior=None,
                 fit: "PhysicsFit | None" = None):
        self.problem = problem
        self.unit_map = unit_map
        self.x_shape = None if x_shape is None else tuple(x_shape)
        self.prior = prior
        self.fit = fit  # how the physics meets the prior's images (``fit_physics``); None: as given, float32

    # the physical problem's data; ``physics`` is the one the prior's images meet (``fit.physics``:
    # e.g. a 1-channel prior on complex MRI physics sees ``RealImagePhysics``)
    physics = property(lambda self: self.problem.physics if self.fit is None else self.fit.physics)
    dtype = property(lambda self: torch.float32 if self.fit is None else self.fit.dtype)
    y = property(lambda self: self.problem.y)
    sigma_y = property(lambda self: self.problem.sigma_y)
    batch = property(lambda self: self.problem.batch)
    is_linear = property(lambda self: isinstance(self.physics, LinearPhysics))
    scale = property(lambda self: self.unit_map.scale)
    offset = property(lambda self: self.unit_map.offset)

    def tiled_y(self, batch: int) -> torch.Tensor:
        return self.problem.tiled_y(batch)

    def view(self, prior=None) -> "ModelProblem":
        return self

    def to_model(self, x_physical: torch.Tensor) -> torch.Tensor:
        return self.unit_map.to_model(x_physical)

    def to_physical(self, x_model: torch.Tensor) -> torch.Tensor:
        return self.unit_map.to_physical(x_model)

    def forward(self, x_model: torch.Tensor) -> torch.Tensor:
        """``A(x)`` for model-space ``x`` (physical units out)."""
        return self.physics.A(self.to_physical(x_model))

    def residual(self, x_model: torch.Tensor) -> torch.Tensor:
        """``y - A(x)`` for a model-space batch (measurements tiled to the batch)."""
        Ax = self.forward(x_model)
        return self.tiled_y(Ax.shape[0]) - Ax

    def require_linear(self, who: str) -> None:
        """A ``PhysicsError`` (a ``TypeError``) naming ``who`` unless the physics is linear."""
        if not self.is_linear:
            raise PhysicsError(f"{who} needs linear physics (a deepinv LinearPhysics); "
                               f"{type(self.physics).__name__} is not linear. Use a guidance sampler such as 'dps' instead.")

    def linear_forward(self, v: torch.Tensor) -> torch.Tensor:
        """``M v``: the linear part of ``forward`` (model-space ``v``, physical units out)."""
        self.require_linear("linear_forward")
        return self.physics.A(v / self.scale)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``M^T r``: the adjoint of ``forward``'s linear part, into model space."""
        self.require_linear("adjoint")
        return self.physics.A_adjoint(r) / self.scale


# ---- how a prior's images meet the physics: the complex adapter, the dtype, the shape check -----------


def real_to_complex(x: torch.Tensor) -> torch.Tensor:
    """A real image batch (B, 1, *spatial) as complex images in two real channels (real, imaginary = 0)."""
    return torch.cat([x, torch.zeros_like(x)], dim=1)


class RealImagePhysics(Physics):
    """``A(x) = physics.A([x, 0])``: physics on complex images (B, 2, *spatial: real, imaginary) seen
    on real images (B, 1, *spatial), the imaginary channel held at 0. What a magnitude prior such as
    ``mri-brain64`` (1 channel) reconstructs through the MRI operators (phase, where the object has
    one, belongs in the coil maps, as the fastMRI runner's low-resolution maps carry it)."""

    def __init__(self, physics: Physics):
        super().__init__()
        self.complex_physics = physics

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.complex_physics.A(real_to_complex(x), **kwargs)


class LinearRealImagePhysics(RealImagePhysics, LinearPhysics):
    """``RealImagePhysics`` of linear physics; its adjoint keeps the real channel of ``A^H``."""

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.complex_physics.A_adjoint(y, **kwargs)[:, :1]


def real_image_physics(physics: Physics) -> RealImagePhysics:
    """``physics`` (on complex 2-channel images) seen on real 1-channel images (imaginary part 0)."""
    cls = LinearRealImagePhysics if isinstance(physics, LinearPhysics) else RealImagePhysics
    return cls(physics)


@dataclasses.dataclass(frozen=True)
class PhysicsFit:
    """How a prior's images meet a problem's physics (``fit_physics``, one probe ``A`` call).

    ``physics`` is what the sampler's images go through (the problem's physics, or it wrapped by
    ``adapter``); ``dtype`` the sampler state's dtype; ``output_shape`` what ``A`` gives for a batch
    of ``batch`` prior images (the measurement must have that shape)."""

    physics: Physics
    dtype: torch.dtype
    output_shape: tuple[int, ...]
    adapter: str | None = None  # "real-image" (1-channel prior on 2-channel complex physics) or None


def _declared_input(physics: Physics, ndim: int) -> tuple[int, ...] | None:
    size = getattr(physics, "img_size", None)
    if isinstance(size, (tuple, list, torch.Size)) and len(size) == ndim and all(isinstance(n, int) for n in size):
        return tuple(int(n) for n in size)
    return None


def fit_physics(physics: Physics, image_shape: tuple[int, ...], y: torch.Tensor | None = None,
                who: str = "the prior", device=None) -> PhysicsFit:
    """Probe ``physics.A`` once on zeros of a batch of prior images (``image_shape``, ``y``'s batch
    and device; one image on ``device`` without ``y``) and decide how the two meet; a ``DataError``
    naming ``who`` and both shapes when they cannot, or when ``y`` is not shaped like the probe's output.

    - **complex physics, 1-channel prior**: when the physics declares (``img_size``) or accepts only
      2-channel images of the prior's spatial size, the prior's images are the real channel and the
      imaginary channel is 0 (``real_image_physics``);
    - **dtype**: the state is float32 (the dtype of the prior networks) unless the physics refuses
      float32 images and takes the measurement's dtype (e.g. a float64 dense matrix): the state then
      follows ``y`` (float64), and float32 network priors are called in float32 (``CountingPrior``).
    """
    image_shape = tuple(int(n) for n in image_shape)
    batch, device = (1, device) if y is None else (y.shape[0], y.device)
    y_dtype = torch.float32 if y is None or not (y.is_floating_point() or y.is_complex()) else y.real.dtype
    dtypes = [torch.float32] + ([y_dtype] if y_dtype != torch.float32 else [])
    complex_shape = (2, *image_shape[1:])
    modes = [None]
    if image_shape[0] == 1:
        modes = ["real-image"] if _declared_input(physics, len(image_shape)) == complex_shape else [None, "real-image"]
    first_error = None
    for mode in modes:
        candidate = physics if mode is None else real_image_physics(physics)
        for dtype in dtypes:
            try:
                with torch.no_grad():
                    out = candidate.A(torch.zeros((batch, *image_shape), dtype=dtype, device=device))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as err:  # noqa: BLE001 - any failure of the user's physics on this shape
                first_error = first_error or err
                continue
            if y is not None and tuple(out.shape) != tuple(y.shape):
                raise DataError(f"the measurement y has shape {tuple(y.shape)} but {type(physics).__name__}.A maps "
                                f"{y.shape[0]} image(s) of {who}'s shape {image_shape} to {tuple(out.shape)}; "
                                "pass y with one row per scan, shaped like physics.A's output "
                                "(or build the operator for the prior's image size)")
            return PhysicsFit(candidate, dtype, tuple(out.shape), mode)
    declared = _declared_input(physics, len(image_shape))
    reason = str(first_error).strip().splitlines()[0] if str(first_error).strip() else type(first_error).__name__
    raise DataError(f"{who} generates images of shape {image_shape} but {type(physics).__name__} "
                    + (f"takes images of shape {declared}" if declared else "does not accept them")
                    + f" ({type(first_error).__name__}: {reason[:200]}); use a prior of the physics' image size or build "
                    "the operator for the prior's (e.g. ops.make(..., img_size=...)), or resample the data")
