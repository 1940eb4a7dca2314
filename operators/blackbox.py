"""Forward models that are only a function: ``BlackBox`` wraps ``fn(x) -> y`` as a deepinv ``Physics``.

A simulator without gradients (a PDE solver, a legacy reconstruction code, a projector library
called through NumPy) becomes a physics object every sampler can *evaluate*: ``A(x)`` calls ``fn``
on a detached copy of ``x`` (per sample or on the whole batch, NumPy or torch) and returns a tensor
of ``x``'s dtype and device. It is never differentiated: autograd through ``A`` (what DPS-type
samplers do) raises ``PhysicsError`` at the backward pass, naming the operator and the derivative-free
sampler to use instead (``enkg``), and ``invsolve.sample`` refuses every other sampler before it
starts. Nothing here is linear: there is no ``A_adjoint``, and deepinv's default ``A_dagger``
(Gauss-Newton through autograd) stops at the same ``PhysicsError``, unless a subclass knows an
inverse of its own.

``forward_evaluations`` counts the samples ``fn`` has been evaluated on (EnKG's cost in the
simulator's own currency), ``reset_count()`` zeroes it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from deepinv.physics import Physics

from .errors import ConfigError, DataError, PhysicsError

DERIVATIVE_FREE = "enkg"  # the samplers that need only forward evaluations (invsolve.samplers)


class _NoGradient(torch.autograd.Function):
    """Identity on the black box's output that refuses to propagate a gradient into its input."""

    @staticmethod
    def forward(ctx, x, y, name):
        ctx.name = name
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        raise PhysicsError(f"{ctx.name} is a black-box forward model (BlackBox): it has no gradient. Use a "
                           f"derivative-free sampler ({DERIVATIVE_FREE}) or give the physics a differentiable A")


class BlackBox(Physics):
    """``A(x) = fn(x)`` for a function invsolve never differentiates.

    :param fn: the forward model. ``backend="numpy"``: takes a float64 NumPy array, returns an array;
        ``"torch"``: takes a detached tensor (no autograd), returns a tensor.
    :param batched: ``fn`` takes the whole batch ``(B, *shape)``; otherwise one sample ``shape`` at
        a time (the batch is looped over).
    :param name: what error messages call the operator.
    :param noise_model: a deepinv noise model applied by ``physics(x)``; ``A`` is noiseless.
    """

    black_box = True

    def __init__(self, fn: Callable, backend: str = "numpy", batched: bool = False, name: str | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not callable(fn):
            raise ConfigError(f"BlackBox needs a callable forward model, got {type(fn).__name__}")
        if backend not in ("numpy", "torch"):
            raise ConfigError(f"BlackBox backend must be 'numpy' or 'torch', got {backend!r}")
        self.fn, self.backend, self.batched = fn, backend, bool(batched)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.forward_evaluations = 0

    def reset_count(self) -> None:
        self.forward_evaluations = 0

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "numpy":
            out = self.fn(x.detach().cpu().double().numpy())
            out = torch.from_numpy(np.ascontiguousarray(np.asarray(out, dtype=np.float64)))
        else:
            with torch.no_grad():
                out = self.fn(x.detach())
            if not isinstance(out, torch.Tensor):
                raise DataError(f"{self.name}: a torch black box must return a tensor, got {type(out).__name__}")
        return out

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if x.ndim < 2:
            raise DataError(f"{self.name}: expects a batch (B, ...), got shape {tuple(x.shape)}")
        outs = [self._call(x)] if self.batched else [self._call(x[i]).unsqueeze(0) for i in range(x.shape[0])]
        y = torch.cat(outs) if len(outs) > 1 else outs[0]
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{self.name}: returned {y.shape[0]} results for a batch of {x.shape[0]}")
        if not torch.isfinite(y).all():
            raise DataError(f"{self.name}: the forward model returned non-finite values")
        self.forward_evaluations += x.shape[0]
        y = y.to(device=x.device, dtype=x.dtype if not y.is_complex() else y.dtype)
        return _NoGradient.apply(x, y, self.name) if x.requires_grad else y

    def A_vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise PhysicsError(f"{self.name} is a black-box forward model (BlackBox): it has no vector-Jacobian "
                           f"product. Use a derivative-free sampler ({DERIVATIVE_FREE})")

    def __repr__(self) -> str:
        return f"BlackBox({self.name}, backend={self.backend}, batched={self.batched})"


def black_box(physics: Physics) -> BlackBox:
    """``physics.A`` as a black box (torch, batched): the same numbers, no gradient, no adjoint; how a
    linear operator is called "as a black box" in the exactness suite."""
    noise = getattr(physics, "noise_model", None)
    return BlackBox(physics.A, backend="torch", batched=True, name=f"black_box({type(physics).__name__})",
                    **({} if noise is None else {"noise_model": noise}))
