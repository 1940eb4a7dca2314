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

Outputs are written chunk by chunk into one preallocated volume (no list of chunk outputs
concatenated at the end), so a call holds the input, its output (and, in backward, the incoming
and outgoing gradients) plus one chunk's working memory.

Scale-out. ``workers=N`` denoises the chunks of one call on N Ray actors (``pip install
'invsolve[distributed]'``; Ray is imported only then): ``ray.init()`` on this machine, or the
cluster at ``address=``. Each actor holds a copy of the 2D prior(s): one actor per GPU when the
cluster has at least N GPUs, else CPU processes with ``torch.set_num_threads(1)``. The chunks are
cut and reassembled here in the same order, so the result is the single-process result (the
same chunks, the same 2D network, the same thread count); everything else a sampler does (CG,
ADMM-TV, noise) stays in the calling process.
"""

from __future__ import annotations

import copy
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
    pool: object = None  # a _RayPool, or None to run the chunks here
    key: int = -1  # which of the pool's priors (-1: the primary 2D prior, else an ``others`` axis)

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

    @staticmethod
    def _assemble(spans, parts, total: int) -> torch.Tensor:
        """Write the chunk results into one preallocated (total, ...) tensor, in span order."""
        out = None
        for (a, b), part in zip(spans, parts):
            if out is None:
                out = part.new_empty((total, *part.shape[1:]))
            out[a:b] = part
            del part
        return out

    def run(self, x: torch.Tensor, sigma) -> torch.Tensor:
        xs = self.slices(x)
        sig = self.sigma_rows(sigma, x.shape[0], x.shape[self.dim])
        spans = list(self.chunks(xs.shape[0]))
        with torch.no_grad():
            if self.pool is not None:
                parts = self.pool.map("denoise", self.key, [(xs[a:b], self._take(sig, a, b)) for a, b in spans])
            else:  # lazily, one chunk alive at a time
                parts = (self.denoiser(xs[a:b], self._take(sig, a, b)) for a, b in spans)
            out = self._assemble(spans, parts, xs.shape[0])
        return self.volume(out, x)

    def vjp(self, x: torch.Tensor, sigma, grad: torch.Tensor) -> torch.Tensor:
        xs = self.slices(x.detach())
        gs = self.slices(grad)
        sig = self.sigma_rows(sigma, x.shape[0], x.shape[self.dim])
        spans = list(self.chunks(xs.shape[0]))
        if self.pool is not None:
            parts = self.pool.map("vjp", self.key, [(xs[a:b], self._take(sig, a, b), gs[a:b].contiguous())
                                                   for a, b in spans])
        else:
            parts = (chunk_vjp(self.denoiser, xs[a:b], self._take(sig, a, b), gs[a:b].contiguous()) for a, b in spans)
        return self.volume(self._assemble(spans, parts, xs.shape[0]), x)


def chunk_vjp(denoiser, xs: torch.Tensor, sigma, g: torch.Tensor) -> torch.Tensor:
    """The vector-Jacobian product of ``denoiser(., sigma)`` at one chunk ``xs`` with ``g``."""
    with torch.enable_grad():
        _, pull = torch.func.vjp(lambda t: denoiser(t, sigma), xs)
        (out,) = pull(g)
    return out


# ---- scale-out over Ray actors ----------------------------------------------------------------------


def import_ray():
    """Ray, imported on demand; a ``ConfigError`` naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError("SliceWisePrior(workers=...) needs Ray: pip install 'invsolve[distributed]'") from None
    return ray


class _ChunkWorker:
    """The body of one Ray actor: copies of the 2D prior(s), denoising chunks sent by the coordinator."""

    def __init__(self, priors: dict, device: str):
        torch.set_num_threads(1)
        self.device = torch.device(device)
        self.priors = {k: p.to(self.device).eval() for k, p in priors.items()}

    def _to(self, v):
        return v.to(self.device) if torch.is_tensor(v) else v

    def denoise(self, key: int, xs: torch.Tensor, sigma) -> torch.Tensor:
        with torch.no_grad():
            return self.priors[key](self._to(xs), self._to(sigma)).cpu()

    def vjp(self, key: int, xs: torch.Tensor, sigma, g: torch.Tensor) -> torch.Tensor:
        return chunk_vjp(self.priors[key], self._to(xs), self._to(sigma), self._to(g)).cpu()

    def threads(self) -> int:
        return torch.get_num_threads()

    def peak_rss_mib(self) -> float | None:
        """This worker process's peak resident memory (Linux VmHWM), for sizing workers."""
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return None


class _RayPool:
    """``workers`` Ray actors holding the priors ``{key: prior}``; chunks go round-robin, come back in order."""

    def __init__(self, priors: dict, workers: int, address: str | None):
        ray = import_ray()
        if not ray.is_initialized():
            if address is None:  # a local Ray with a CPU slot per worker at least (none is left pending)
                ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
                         logging_level="WARNING", log_to_driver=False)
            else:
                ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if gpus >= workers:
            options, device = {"num_gpus": 1, "num_cpus": 0}, "cuda"
        elif cpus >= workers:
            options, device = {"num_cpus": 1}, "cpu"
        else:
            raise ConfigError(f"workers={workers} but the Ray cluster has {cpus} CPUs and {gpus} GPUs; "
                              f"lower workers or add nodes")
        self.ray, self.device = ray, device
        on_cpu = lambda p: all(t.device.type == "cpu" for t in p.state_dict().values())  # noqa: E731
        cpu_priors = {k: p if on_cpu(p) else copy.deepcopy(p).to("cpu") for k, p in priors.items()}  # not in place
        ref = ray.put(cpu_priors)
        actor = ray.remote(_ChunkWorker).options(**options)
        self.actors = [actor.remote(ref, device) for _ in range(workers)]
        ray.get([a.threads.remote() for a in self.actors])  # started and holding the priors

    def map(self, method: str, key: int, chunks):
        """Submit every chunk (round-robin over the actors), then yield the results in chunk order."""
        refs = [getattr(self.actors[i % len(self.actors)], method).remote(key, *args) for i, args in enumerate(chunks)]
        for ref in refs:
            yield self.ray.get(ref)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


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
    :param workers: denoise the chunks on this many Ray actors (``invsolve[distributed]``); None
        (default): in this process.
    :param address: the Ray cluster to use with ``workers`` (default: ``ray.init()`` on this machine).

    ``D(x, sigma, axis=None)`` takes the batch (N, C, D, H, W); ``axis`` overrides the slice
    axis for one call (the network must accept that plane's size). ``sigma`` is a number or
    one value per volume.
    """

    supports_axis = True  # D(x, sigma, axis=...) is accepted (samplers such as TPDM look for this)

    def __init__(self, prior2d: Prior, axis="axial", chunk: int | str = "auto", depth: int | None = None,
                 others: Mapping[str | int, Prior] | None = None, memory_limit: int | None = None,
                 memory_fraction: float = 0.5, workers: int | None = None, address: str | None = None,
                 _pool=None):
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
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ConfigError(f"workers must be an integer >= 1 (Ray actors) or None, got {workers!r}")
        if address is not None and workers is None:
            raise ConfigError("address= is the Ray cluster for workers=; give workers=N too")
        if workers is not None:
            import_ray()  # fail here, before any work, when the extra is missing
        self.axis = resolve_axis(axis)
        self.others = {resolve_axis(k): v for k, v in (others or {}).items()}
        for a, other in self.others.items():
            if other.card.shape[0] != card2d.shape[0] or other.card.unit_map != card2d.unit_map:
                raise ConfigError(f"the {AXIS_NAMES[a]} prior {other.card.name!r} must have the primary prior's channels "
                                  f"and unit map (scale, offset)")
        self.chunk, self.depth = chunk, depth
        self.memory_limit, self.memory_fraction = memory_limit, memory_fraction
        self.workers, self.address = workers, address
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
        self._pool_box = _pool if _pool is not None else [None]  # shared by with_depth/with_chunk clones

    # -- construction helpers
    def _clone(self, **changes) -> "SliceWisePrior":
        params = dict(axis=self.axis, chunk=self.chunk, depth=self.depth, others=self.others,
                      memory_limit=self.memory_limit, memory_fraction=self.memory_fraction, workers=self.workers,
                      address=self.address, _pool=self._pool_box)
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

    def _pool(self):
        """The Ray actors (started at the first call with ``workers``), or None."""
        if self.workers is None:
            return None
        if self._pool_box[0] is None:
            priors = {-1: self.prior2d, **self.others}
            self._pool_box[0] = _RayPool(priors, self.workers, self.address)
        return self._pool_box[0]

    def close(self) -> None:
        """Stop the Ray actors of ``workers`` (also for the clones sharing them); a later call starts new ones."""
        if self._pool_box[0] is not None:
            self._pool_box[0].close()
            self._pool_box[0] = None

    def forward(self, x: torch.Tensor, sigma, axis=None) -> torch.Tensor:
        a = self.axis if axis is None else resolve_axis(axis)
        if x.ndim != 5:
            raise DataError(f"SliceWisePrior takes a batch of volumes (N, C, D, H, W), got shape {tuple(x.shape)}")
        channels = self.prior2d.card.shape[0]
        if x.shape[1] != channels:
            raise DataError(f"volumes have {x.shape[1]} channels but the 2D prior {self.prior2d.card.name!r} takes "
                            f"{channels}")
        chunk = self.plan(tuple(x.shape), a, x.dtype, x.device)
        slicer = _Slicer(self._denoiser_for(a), 2 + a, chunk, self._pool(), a if a in self.others else -1)
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
