"""FLAIR: variational flow posterior with deterministic trajectory adjustment and hard data consistency.

Paper: J. Erbach, D. Narnhofer, A. Dombos, B. Schiele, J. E. Lenssen, K. Schindler, "Solving Inverse
Problems with FLAIR", NeurIPS 2025.
Official code: https://github.com/prs-eth/FLAIR (``src/flair/var_post_samp.py``, ``pipelines/sd3.py``,
``configs/*.yaml``, ``LCFM/*.npy``; commit c4f55f7).

Update rule, flow time ``t`` with ``x_t = t eps + (1 - t) mu`` (the toolkit's rectified-flow
convention), velocity ``v(x, t) = (x - D(x / (1 - t), t / (1 - t))) / t``; ``mu`` is the variational
mean (the returned sample), ``eps_prev`` the predicted noise endpoint:

    mu = Enc(A^+ y) (the model-space image of the pseudo-inverse; 0 without one);  eps_prev = xi
    for t in linspace(t_max, t_min, steps + 2)[1:-1]:
        eps      = (1 - t) eps_prev + sqrt(1 - (1 - t)^2) xi              (deterministic trajectory
                                                                           adjustment, fresh xi)
        x_t      = t eps + (1 - t) mu;   v = v(x_t, t)
        eps_prev = x_t + (1 - t) v                                        (predicted x_1)
        mu      <- mu - reg_lr w(t) reg_weight (v - (eps - mu))           (the variational regulariser's
                                                                           gradient; u_t = eps - mu)
        up to ``dc_iters`` gradient steps  mu <- mu - data_lr grad ||A(Dec(mu)) - y||^2,
              stopping once ||A(Dec(mu)) - y||^2 < dc_tol numel(y)        (hard data consistency)
    return Dec(mu)

``w(t)``: the calibrated regularisation weight, ``1 / (MSE_v(t) + 1e-7)`` normalised to mean 1, where
``MSE_v(t)`` is the prior's velocity-prediction error at time ``t`` (official: a 100-entry table for
SD3 measured on DIV2K, ``LCFM/*.npy``). ``calibrate(prior, data)`` measures it for any prior on
samples of its data and returns the table for ``reg_table``; without a table ``w = 1``.

Where invsolve differs from the official code: no classifier-free guidance or prompts (the priors
here are unconditional); ``t_max`` is clipped to the prior's largest level; each sample stops its
data steps on its own, and a data step that would raise the sample's data term is halved until it
does not (the official fixed step diverges on operators with a large gain, e.g. invsolve's CT in model
space with ``||M||^2 ~ 124``; where the official step decreases the data term, nothing changes); the data term is the squared residual in physical units of ``y`` (official:
the same, on SD3's decoded images); the optional soft projection (``projection``, off by default
officially) is not implemented.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from operators.errors import ConfigError

from .base import register
from .toolkit import flow_velocity, measured_image, randn, report, squared_norms

MAX_HALVINGS = 30  # backtracking of the data step: 2^-30 of the official step is as good as none


def calibrate(prior, data: torch.Tensor, n_times: int = 100, generator: torch.Generator | None = None,
              batch: int = 64) -> tuple[float, ...]:
    """FLAIR's regularisation weights for ``prior``: ``1 / (MSE_v(t) + 1e-7)`` at ``t = linspace(1, 0, n_times)``
    (clipped to the prior's range), normalised to mean 1; ``data``: model-space samples of the prior's data
    (e.g. latents of training images, or ``prior.sample`` for an exact prior)."""
    t_hi = prior.sigma_max / (1 + prior.sigma_max)
    t_lo = prior.sigma_min / (1 + prior.sigma_min)
    mse = []
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.0, n_times, dtype=torch.float64).clamp(t_lo, t_hi).tolist():
            total, count = 0.0, 0
            for chunk in data.split(batch):
                eps = torch.randn(chunk.shape, generator=generator, dtype=chunk.dtype)
                x_t = t * eps + (1 - t) * chunk
                err = flow_velocity(prior, x_t, t) - (eps - chunk)
                total, count = total + float(err.pow(2).sum()), count + err.numel()
            mse.append(total / count)
    weights = [1.0 / (m + 1e-7) for m in mse]
    mean = sum(weights) / len(weights)
    return tuple(w / mean for w in weights)


@register("flair")
@dataclasses.dataclass(frozen=True)
class FLAIR:
    """FLAIR (Erbach et al., NeurIPS 2025).

    :param steps: flow times = NFE (official 50).
    :param t_min: last time (official ``ts_min`` 0.18).
    :param reg_weight: regulariser weight (official ``regularizer_weight`` 0.5).
    :param reg_lr: step of the regulariser (official SGD lr 1).
    :param data_lr: step of the data term (official: 12 for SR x12, 0.1 for inpainting and motion deblurring).
    :param dc_iters: data steps per time (official 15).
    :param dc_tol: stop the data steps once the squared residual is below ``dc_tol`` times its size (official 1e-4).
    :param reg_table: calibrated weights ``w`` over ``t = linspace(1, 0, len)`` (``calibrate``); None: ``w = 1``.
    :param likelihood_weighting: scale the data term by ``w(t)`` too (official ``likelihood_weight_mode: reg_weight``).
    """

    steps: int = 50
    t_min: float = 0.18
    reg_weight: float = 0.5
    reg_lr: float = 1.0
    data_lr: float = 0.1
    dc_iters: int = 15
    dc_tol: float = 1e-4
    reg_table: tuple[float, ...] | None = None
    likelihood_weighting: bool = False

    PRESETS = {
        # official configs: SR x12 (data lr 12), box inpainting and motion deblurring (data lr 0.1)
        "sr12": dict(data_lr=12.0), "inpainting": dict(data_lr=0.1), "deblur": dict(data_lr=0.1),
    }

    def __post_init__(self):
        if self.steps < 1 or self.dc_iters < 0:
            raise ConfigError(f"flair needs steps >= 1 and dc_iters >= 0; got {self.steps}, {self.dc_iters}")
        if not 0 < self.t_min < 1:
            raise ConfigError(f"t_min must be in (0, 1), got {self.t_min}")
        if min(self.reg_weight, self.reg_lr, self.data_lr) < 0:
            raise ConfigError("flair needs reg_weight, reg_lr, data_lr >= 0")
        if self.reg_table is not None and len(self.reg_table) < 2:
            raise ConfigError("reg_table needs at least 2 entries (over t = linspace(1, 0, len)); see flair.calibrate")

    def times(self, prior) -> list[float]:
        t_max = min(1.0, prior.sigma_max / (1 + prior.sigma_max))
        if self.t_min >= t_max:
            raise ConfigError(f"t_min {self.t_min} must be below the prior's largest time {t_max:.3f}")
        return torch.linspace(t_max, self.t_min, self.steps + 2, dtype=torch.float64)[1:-1].tolist()

    def weight(self, t: float) -> float:
        """``w(t)``: the table at ``t`` (linear interpolation over ``linspace(1, 0, len)``), else 1."""
        if self.reg_table is None:
            return 1.0
        pos = (1.0 - t) * (len(self.reg_table) - 1)
        lo = min(int(math.floor(pos)), len(self.reg_table) - 2)
        frac = pos - lo
        return (1 - frac) * self.reg_table[lo] + frac * self.reg_table[lo + 1]

    def initial_mean(self, problem, x_shape) -> torch.Tensor:
        """``Enc(A^+ y)`` in model space (``toolkit.measured_image``); zeros where it cannot be formed."""
        mu = measured_image(problem, x_shape, "pinv")
        return torch.zeros(x_shape, dtype=x_shape.dtype) if mu is None else mu

    def data_steps(self, problem, mu: torch.Tensor, weight: float) -> torch.Tensor:
        """Up to ``dc_iters`` gradient steps on ``weight ||A(Dec(mu)) - y||^2``, each sample stopping on its own;
        a step that would raise a sample's data term is halved until it does not (backtracking, per sample)."""
        limit = self.dc_tol * problem.y[0].numel()
        shape = (-1,) + (1,) * (mu.ndim - 1)

        def value_and_grad(v):
            with torch.enable_grad():
                leaf = v.detach().requires_grad_(True)
                loss = weight * squared_norms(problem.residual(leaf))
                (grad,) = torch.autograd.grad(loss.sum(), leaf)
            return loss.detach(), grad

        mu = mu.detach()
        loss, grad = value_and_grad(mu)
        lr = torch.full((mu.shape[0],), float(self.data_lr), dtype=mu.dtype)
        for _ in range(self.dc_iters):
            active = loss >= weight * limit
            if not active.any():
                break
            for _ in range(MAX_HALVINGS):
                step = torch.where(active, lr, torch.zeros_like(lr)).view(shape)
                cand_loss, cand_grad = value_and_grad(mu - step * grad)
                worse = active & (cand_loss > loss)
                if not worse.any():
                    break
                lr = torch.where(worse, 0.5 * lr, lr)
            keep = active & ~worse
            mu = torch.where(keep.view(shape), mu - step * grad, mu)
            loss, grad = torch.where(keep, cand_loss, loss), torch.where(keep.view(shape), cand_grad, grad)
        return mu

    def run(self, prior, problem, x_shape, generator, callback=None):
        times = self.times(prior)
        mu = self.initial_mean(problem, x_shape)
        eps_prev = randn(x_shape, generator)
        for i, t in enumerate(times):
            xi = randn(x_shape, generator)
            eps = (1 - t) * eps_prev + math.sqrt(1 - (1 - t) ** 2) * xi
            x_t = t * eps + (1 - t) * mu
            with torch.no_grad():
                v = flow_velocity(prior, x_t, t)
            eps_prev = x_t + (1 - t) * v
            w = self.weight(t)
            mu = mu - self.reg_lr * self.reg_weight * w * (v - (eps - mu))
            mu = self.data_steps(problem, mu, w if self.likelihood_weighting else 1.0)
            report(callback, i, len(times), t / (1 - t), x_t / (1 - t), mu)
        return mu
