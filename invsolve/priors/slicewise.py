"""A 2D prior applied slice by slice to 3D volumes, in memory-bounded chunks of slices.

``SliceWisePrior(prior2d, axis)`` is itself a ``Prior`` over volumes of shape (C, D, H, W), so
every sampler runs on volumes unchanged: ``D(x, sigma)`` cuts the batch of volumes
(N, C, D, H, W) into 2D slices along ``axis``

- ``"axial"`` (0): slices x[:, :, d] of shape (C, H, W), one per depth index d,
- ``"coronal"`` (1): slices x[:, :, :, h] of shape (C, D, W),
- ``"sagittal"`` (2): slices x[:, :, :, :, w] of shape (C, D, H),

denoises them with the 2D prior ``chunk`` slices per call (the N x S slices of the batch in
(sample, slice) order) and stacks them back. This is how DiffusionMBIR, TPDM and DDS use their
2D networks (the slice axis as the network's batch axis; chunks of 12-20 slices there).

Memory. ``chunk="auto"`` picks the largest chunk whose cost fits in a fraction of the free
memory (``/proc/meminfo`` MemAvailable on CPU, ``torch.cuda.mem_get_info`` plus the caching
allocator's free blocks on CUDA); the cost of one slice is measured once per slice shape by one
probe call of the 2D prior (forward and backward on one slice, peak bytes of the tensors it
allocates). With a fixed ``chunk`` the same estimate is checked, and a volume that cannot fit
raises ``ConfigError`` before any denoising starts (at ``model_problem``, i.e. when
``iv.sample`` sets up, and again at the first call for the sampler's real batch).

Gradients. When ``x`` requires grad (DPS-type guidance), the forward runs without a graph and
the backward recomputes each chunk's forward and pulls the gradient back through it
(``torch.func.vjp``), one chunk at a time: the graph of the whole volume is never held, only
``x`` itself. Gradients flow to ``x`` only (not to the 2D network's parameters; train the 2D
prior as a 2D prior). The autograd function uses ``setup_context``, so it composes with
``torch.func.grad`` / ``vjp``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
from typing import Mapping

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from operators.errors import ConfigError, DataError

from .base import Prior

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
"""Plane names -> spatial axis of (D, H, W) that the slices are taken along."""

VOLUME_COPIES = 4
"""Whole-volume tensors the memory estimate reserves besides the chunk: the input, its slices,
the output, and a gradient."""


def resolve_axis(axis) -> int:
    """``"axial"``/``"coronal"``/``"sagittal"`` or 0/1/2 -> the spatial axis index 0, 1 or 2."""
    if isinstance(axis, str):
        if axis not in AXES:
            raise ConfigError(f"axis must be one of {', '.join(AXES)} or 0, 1, 2; got {axis!r}")
        return AXES[axis]
    if isinstance(axis, int) and not isinstance(axis, bool) and axis in (0, 1, 2):
        return axis
    raise ConfigError(f"axis must be one of {', '.join(AXES)} or 0, 1, 2; got {axis!r}")


AXIS_NAMES = {v: k for k, v in AXES.items()}


# ---- memory -----------------------------------------------------------------------------------------


def available_memory(device: torch.device | str | None = None) -> int:
    """Free memory in bytes on ``device``: CUDA free + the caching allocator's unused reserve, or on
    CPU Linux's MemAvailable (``/proc/meminfo``), else ``sysconf`` available pages."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        raise ConfigError("cannot read the free memory of this machine; pass SliceWisePrior(..., memory_limit=BYTES)")


class _PeakBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages allocated by the ops run under it (an estimate: a storage
    is released when the first tensor that owned it dies)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        if key in self.seen:
            self.seen.discard(key)
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._release, key, size)
        return out


def probe_bytes(fn, x: torch.Tensor) -> int:
    """Peak bytes allocated by ``fn(x)`` and its backward (vector-Jacobian product) on ``x``."""
    x = x.detach()

    def run():  # torch.func.vjp rather than autograd.grad: also valid inside torch.func transforms
        with torch.enable_grad():
            out, pull = torch.func.vjp(fn, x)
            (g,) = pull(torch.ones_like(out))
        return g

    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        run()
        torch.cuda.synchronize(x.device)
        return int(torch.cuda.max_memory_allocated(x.device) - base)
    with _PeakBytes() as mode:
        run()
    return int(mode.peak)


# ---- chunked application with a recomputing backward -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Slicer:
    """How one call cuts its volume: the 2D denoiser, the tensor dim of the slice axis, the chunk."""

    denoiser: object
    dim: int
    chunk: int

    def slices(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) -> (N * S, C, p, q) slices along ``dim``, (sample, slice) order."""
        moved = x.movedim(self.dim, 1)
        return moved.reshape(-1, *moved.shape[2:])

    def volume(self, slices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        n, s = like.shape[0], like.shape[self.dim]
        return slices.reshape(n, s, *slices.shape[1:]).movedim(1, self.dim)

    def sigma_rows(self, sigma, n: int, s: int):
        """``sigma`` per slice row: a scalar stays as it is; a per-sample tensor (N,) is repeated per slice."""
        if torch.is_tensor(sigma) and sigma.numel() > 1:
            flat = sigma.reshape(-1)
            if flat.numel() != n:
                raise DataError(f"sigma has {flat.numel()} values for a batch of {n} volumes; give one per volume")
            return flat.repeat_interleave(s)
        return sigma

    def chunks(self, total: int):
        for start in range(0, total, self.chunk):
            yield start, min(total, start + self.chunk)

    @staticmethod
    def _take(sigma, a: int, b: int):
        return sigma[a:b] if torch.is_tensor(sigma) and sigma.ndim == 1 and sigma.numel() > 1 else sigma

    def run(self, x: torch.Tensor, sigma) -> torch.Tensor:
        xs = self.slices(x)
        sig = self.sigma_rows(sigma, x.shape[0], x.shape[self.dim])
        with torch.no_grad():
            out = torch.cat([self.denoiser(xs[a:b], self._take(sig, a, b)) for a, b in self.chunks(xs.shape[0])])
        return self.volume(out, x)

    def vjp(self, x: torch.Tensor, sigma, grad: torch.Tensor) -> torch.Tensor:
        xs = self.slices(x.detach())
        gs = self.slices(grad)
        sig = self.sigma_rows(sigma, x.shape[0], x.shape[self.dim])
        parts = []
        for a, b in self.chunks(xs.shape[0]):
            s_ab = self._take(sig, a, b)
            with torch.enable_grad():
                _, pull = torch.func.vjp(lambda t: self.denoiser(t, s_ab), xs[a:b])
                (g,) = pull(gs[a:b].contiguous())
            parts.append(g)
        return self.volume(torch.cat(parts), x)


class _ChunkedDenoise(torch.autograd.Function):
    """Forward without a graph; backward recomputes one chunk at a time (``setup_context`` style)."""

    @staticmethod
    def forward(x, sigma, slicer):
        return slicer.run(x, sigma)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, sigma, slicer = inputs
        if torch.is_tensor(sigma):
            ctx.save_for_backward(x, sigma)
            ctx.sigma_is_tensor = True
        else:
            ctx.save_for_backward(x)
            ctx.sigma_is_tensor, ctx.sigma = False, sigma
        ctx.slicer = slicer

    @staticmethod
    def backward(ctx, grad):
        if ctx.sigma_is_tensor:
            x, sigma = ctx.saved_tensors
        else:
            (x,), sigma = ctx.saved_tensors, ctx.sigma
        return ctx.slicer.vjp(x, sigma, grad), None, None


# ---- the prior --------------------------------------------------------------------------------------


class SliceWisePrior(Prior):
    """A 2D ``Prior`` applied along ``axis`` of (C, D, H, W) volumes (see the module docstring).

    :param prior2d: any pixel-space 2D ``Prior`` (card shape (C, h, w)).
    :param axis: ``"axial"``, ``"coronal"``, ``"sagittal"`` or 0, 1, 2 (the spatial axis of
        (D, H, W) the slices are taken along).
    :param chunk: 2D slices per call of the 2D prior (an int), or ``"auto"`` (from free memory).
    :param depth: the number of slices along ``axis``; the volume shape is the 2D card's plane
        with ``depth`` inserted at the axis (axial: (C, depth, h, w); coronal: (C, h, depth, w);
        sagittal: (C, h, w, depth)). Needed before sampling; ``with_depth(D)`` sets it.
    :param others: optional 2D priors for other axes, ``{"axial": prior_b}``; ``D(x, sigma,
        axis=...)`` uses them (TPDM's two perpendicular priors); any other axis uses ``prior2d``.
    :param memory_limit: bytes the chunks may use (default: the free memory of the device).
    :param memory_fraction: fraction of the free memory the estimate may fill (default 0.5).

    ``D(x, sigma, axis=None)`` takes the batch (N, C, D, H, W); ``axis`` overrides the slice
    axis for one call (the network must accept that plane's size). ``sigma`` is a number or
    one value per volume.
    """

    supports_axis = True  # D(x, sigma, axis=...) is accepted (samplers such as TPDM look for this)

    def __init__(self, prior2d: Prior, axis="axial", chunk: int | str = "auto", depth: int | None = None,
                 others: Mapping[str | int, Prior] | None = None, memory_limit: int | None = None,
                 memory_fraction: float = 0.5):
        card2d = prior2d.card
        if len(card2d.shape) != 3:
            raise ConfigError(f"SliceWisePrior takes a 2D prior (card shape (C, H, W)); {card2d.name!r} has shape "
                              f"{tuple(card2d.shape)}")
        if type(prior2d).model_problem is not Prior.model_problem:
            raise ConfigError(f"SliceWisePrior takes a pixel-space prior; {card2d.name!r} "
                              f"({type(prior2d).__name__}) defines its own model space (e.g. a latent prior)")
        if not (chunk == "auto" or (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1)):
            raise ConfigError(f"chunk must be an integer >= 1 or 'auto', got {chunk!r}")
        if depth is not None and (not isinstance(depth, int) or depth < 1):
            raise ConfigError(f"depth must be an integer >= 1 (slices along the axis), got {depth!r}")
        if memory_limit is not None and not memory_limit > 0:
            raise ConfigError(f"memory_limit must be > 0 bytes, got {memory_limit!r}")
        if not 0 < memory_fraction <= 1:
            raise ConfigError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
        self.axis = resolve_axis(axis)
        self.others = {resolve_axis(k): v for k, v in (others or {}).items()}
        for a, other in self.others.items():
            if other.card.shape[0] != card2d.shape[0] or other.card.unit_map != card2d.unit_map:
                raise ConfigError(f"the {AXIS_NAMES[a]} prior {other.card.name!r} must have the primary prior's channels "
                                  f"and unit map (scale, offset)")
        self.chunk, self.depth = chunk, depth
        self.memory_limit, self.memory_fraction = memory_limit, memory_fraction
        shape = None
        if depth is not None:
            plane = list(card2d.shape[1:])
            plane.insert(self.axis, depth)
            shape = (card2d.shape[0], *plane)
        card = dataclasses.replace(card2d, name=f"{card2d.name}@{AXIS_NAMES[self.axis]}", shape=shape,
                                   metadata={**card2d.metadata, "slicewise": {"prior2d": card2d.name,
                                                                              "axis": AXIS_NAMES[self.axis]}})
        super().__init__(None, card)
        self.prior2d = prior2d
        self.other_priors = torch.nn.ModuleList(list(self.others.values()))
        self._per_slice: dict = {}

    # -- construction helpers
    def _clone(self, **changes) -> "SliceWisePrior":
        params = dict(axis=self.axis, chunk=self.chunk, depth=self.depth, others=self.others,
                      memory_limit=self.memory_limit, memory_fraction=self.memory_fraction)
        params.update(changes)
        return SliceWisePrior(self.prior2d, **params)

    def with_depth(self, depth: int) -> "SliceWisePrior":
        """The same prior for volumes of ``depth`` slices along its axis."""
        return self._clone(depth=depth)

    def with_chunk(self, chunk: int | str) -> "SliceWisePrior":
        return self._clone(chunk=chunk)

    @property
    def slice_dim(self) -> int:
        """The dim of the batch tensor (N, C, D, H, W) the slices are taken along (2, 3 or 4)."""
        return 2 + self.axis

    # -- memory plan
    def per_slice_bytes(self, plane: tuple[int, ...], axis: int, dtype=torch.float32, device="cpu") -> int:
        """Measured bytes one slice of ``plane`` (C, p, q) costs the 2D prior (forward + backward)."""
        key = (tuple(plane), axis, dtype, str(device))
        if key not in self._per_slice:
            probe = torch.zeros((1, *plane), dtype=dtype, device=device)
            denoiser = self._denoiser_for(axis)
            sigma = float(self.card.sigma_max) ** 0.5
            self._per_slice[key] = max(1, probe_bytes(lambda t: denoiser(t, sigma), probe))
        return self._per_slice[key]

    def plan(self, x_shape: tuple[int, ...], axis: int | None = None, dtype=torch.float32, device="cpu") -> int:
        """The chunk (2D slices per call) for a batch of volumes ``x_shape`` (N, C, D, H, W); a
        ``ConfigError`` when even that does not fit the memory budget."""
        axis = self.axis if axis is None else axis
        if len(x_shape) != 5:
            raise DataError(f"SliceWisePrior takes a batch of volumes (N, C, D, H, W), got shape {tuple(x_shape)}")
        dim = 2 + axis
        total = x_shape[0] * x_shape[dim]
        plane = tuple(s for i, s in enumerate(x_shape[1:], start=1) if i != dim)
        itemsize = torch.empty((), dtype=dtype).element_size()
        volume = math.prod(x_shape) * itemsize * VOLUME_COPIES
        available = self.memory_limit if self.memory_limit is not None else available_memory(device)
        budget = available * self.memory_fraction - volume
        per_slice = self.per_slice_bytes(plane, axis, dtype, device)
        chunk = self.chunk if self.chunk != "auto" else int(budget // per_slice)
        chunk = min(chunk, total)
        need = volume + max(chunk, 1) * per_slice
        if chunk < 1 or need > available * self.memory_fraction:
            raise ConfigError(
                f"a batch of volumes {tuple(x_shape)} needs about {need / 2**20:.0f} MiB with chunk={max(chunk, 1)} "
                f"({per_slice / 2**20:.1f} MiB per slice + {VOLUME_COPIES} volume copies) but "
                f"{self.memory_fraction:g} x {available / 2**20:.0f} MiB is available; lower chunk, use chunk='auto', "
                f"or raise memory_limit/memory_fraction")
        return chunk

    # -- the denoiser
    def _denoiser_for(self, axis: int):
        return self.others.get(axis, self.prior2d)

    def forward(self, x: torch.Tensor, sigma, axis=None) -> torch.Tensor:
        a = self.axis if axis is None else resolve_axis(axis)
        if x.ndim != 5:
            raise DataError(f"SliceWisePrior takes a batch of volumes (N, C, D, H, W), got shape {tuple(x.shape)}")
        channels = self.prior2d.card.shape[0]
        if x.shape[1] != channels:
            raise DataError(f"volumes have {x.shape[1]} channels but the 2D prior {self.prior2d.card.name!r} takes "
                            f"{channels}")
        chunk = self.plan(tuple(x.shape), a, x.dtype, x.device)
        slicer = _Slicer(self._denoiser_for(a), 2 + a, chunk)
        if torch.is_grad_enabled() and x.requires_grad:
            return _ChunkedDenoise.apply(x, sigma, slicer)
        return slicer.run(x, sigma)

    def model_problem(self, problem):
        if self.depth is None:
            raise ConfigError("SliceWisePrior needs the volume depth (slices along its axis) before sampling: "
                              "SliceWisePrior(prior2d, axis, depth=D) or prior.with_depth(D)")
        view = super().model_problem(problem)
        y = getattr(problem, "y", None)
        device = y.device if torch.is_tensor(y) else "cpu"
        self.plan((view.batch, *self.card.shape), dtype=torch.float32, device=device)  # fail before any work
        return view

    def __repr__(self) -> str:
        return (f"SliceWisePrior({self.prior2d.card.name!r}, axis={AXIS_NAMES[self.axis]}, chunk={self.chunk}, "
                f"shape={self.card.shape})")
