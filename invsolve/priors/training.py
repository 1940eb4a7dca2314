"""Training of a small diffusion (EDM) or flow (rectified flow) prior, resumable from its checkpoint.

Objectives:

- ``edm`` (Karras et al. 2022, Sec. 5 and Table 1): ``ln sigma ~ N(P_mean, P_std^2)``, loss
  ``lambda(sigma) * ||D(x0 + sigma n, sigma) - x0||^2`` with
  ``lambda = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``;
- ``flow`` (rectified flow / flow matching, Liu et al. 2023, Lipman et al. 2023):
  ``t ~ U(0, 1)``, ``x_t = (1 - t) x0 + t n``, loss ``||v(x_t, t) - (n - x0)||^2``; the network
  is a velocity field, exported with the ``flow-velocity`` adapter.

Adam with a linear warm-up; an exponential moving average (EMA) of the weights is what gets exported.

The run directory holds ``checkpoint.pt`` (network, EMA, optimizer, data-generator
state, step, wall time, loss history), rewritten atomically every
``checkpoint_every`` steps, so an interrupted run resumes exactly where it stopped.
When the run reaches ``steps`` it writes ``weights.safetensors`` (EMA weights) and
``card.json`` into the output directory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch

from .adapters import EDMDenoiser
from .base import PriorCard
from .unet import UNet


@dataclasses.dataclass
class TrainConfig:
    name: str = "ct-phantom64"
    objective: str = "edm"          # "edm" (diffusion) or "flow" (rectified flow)
    data: str = "ellipses"          # data source; see ``data_source``
    size: int = 64
    channels: tuple[int, ...] = (32, 64, 96, 96)
    attention: tuple[int, ...] = (3,)
    batch: int = 32
    steps: int = 4000
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    seed: int = 0
    checkpoint_every: int = 50
    threads: int | None = None


def data_source(config: TrainConfig) -> tuple[Callable[[int, torch.Generator], torch.Tensor], dict]:
    """Return ``(sample(batch, generator) -> images in [0, 1], description)`` for ``config.data``."""
    if config.data == "ellipses":
        from ..phantoms import random_ellipses

        def sample(batch, generator):
            return random_ellipses(batch, config.size, generator)

        return sample, {"source": "invsolve.phantoms.random_ellipses", "seed": config.seed,
                        "physical_range": [0.0, 1.0], "note": "fresh phantoms every step (no finite training set)"}
    raise ValueError(f"unknown training data {config.data!r}; available: 'ellipses'")


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def edm_loss(denoiser: EDMDenoiser, x0: torch.Tensor, generator: torch.Generator, p_mean: float,
             p_std: float, sigma_data: float) -> torch.Tensor:
    shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
    sigma = torch.exp(p_mean + p_std * torch.randn(shape, generator=generator))
    noise = torch.randn(x0.shape, generator=generator)
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return (weight * (denoiser(x0 + sigma * noise, sigma) - x0) ** 2).mean()


def flow_loss(net, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
    t = torch.rand(shape, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = (1 - t) * x0 + t * noise
    return ((net(x_t, t.reshape(-1)) - (noise - x0)) ** 2).mean()


def train(config: TrainConfig, run_dir: str | Path, out_dir: str | Path | None = None,
          progress: bool = True, max_seconds: float | None = None) -> Path | None:
    """Train (or resume) the prior described by ``config``.

    Returns the output directory once ``config.steps`` are done, or None when stopped
    early by ``max_seconds`` (the checkpoint then holds the progress).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    if config.threads:
        torch.set_num_threads(config.threads)
    ckpt_path = run_dir / "checkpoint.pt"
    config_path = run_dir / "config.json"
    if config.objective not in ("edm", "flow"):
        raise ValueError(f"objective must be 'edm' or 'flow', got {config.objective!r}")
    config_json = json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
    if config_path.exists() and ckpt_path.exists():
        saved = {**dataclasses.asdict(TrainConfig()), **json.loads(config_path.read_text())}  # older runs lack newer keys
        mismatch = {k: (saved.get(k), v) for k, v in json.loads(config_json).items()
                    if k not in ("steps", "checkpoint_every", "threads") and saved.get(k) != v}
        if mismatch:
            raise ValueError(f"{run_dir} holds a run with a different configuration {mismatch}; "
                             "use another run directory or the same options")
    _atomic_write_text(config_json, config_path)

    sample, data_info = data_source(config)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(config.seed)
        net = UNet(in_channels=1, channels=config.channels, attention=config.attention)
    denoiser = EDMDenoiser(net, config.sigma_data)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    data_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    step, wall, history = 0, 0.0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        data_gen.set_state(state["data_gen"])
        noise_gen.set_state(state["noise_gen"])
        step, wall, history = int(state["step"]), float(state["wall"]), state["history"].tolist()

    def save():
        _atomic_save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                      "data_gen": data_gen.get_state(), "noise_gen": noise_gen.get_state(),
                      "step": step, "wall": wall, "history": torch.tensor(history, dtype=torch.float64)},
                     ckpt_path)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, initial=step, desc=f"train {config.name}", unit="step")
    started = time.time()
    t_last = time.time()
    while step < config.steps:
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup)
        x0 = 2 * sample(config.batch, data_gen) - 1  # physical [0, 1] -> model [-1, 1]
        if config.objective == "flow":
            loss = flow_loss(net, x0, noise_gen)
        else:
            loss = edm_loss(denoiser, x0, noise_gen, config.p_mean, config.p_std, config.sigma_data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1 - config.ema_decay)
        step += 1
        history.append(loss.item())
        now = time.time()
        wall += now - t_last
        t_last = now
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sum(history[-100:]) / len(history[-100:]):.4f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
        if max_seconds is not None and now - started > max_seconds and step < config.steps:
            save()
            return None
    if bar is not None:
        bar.close()
    export(config, ema, out_dir, step, wall, history, data_info)
    return out_dir


def export(config: TrainConfig, ema: UNet, out_dir: Path, step: int, wall: float, history: list[float],
           data_info: dict) -> None:
    """Write ``weights.safetensors`` (EMA) and ``card.json`` into ``out_dir`` atomically."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tail = history[-200:]
    flow = config.objective == "flow"
    card = PriorCard(
        name=config.name, kind="flow" if flow else "diffusion", parameterization="flow-velocity" if flow else "edm",
        shape=(1, config.size, config.size),
        scale=2.0, offset=-1.0, sigma_min=config.sigma_min, sigma_max=config.sigma_max,
        sigma_data=config.sigma_data, physical_range=(0.0, 1.0),
        description=f"{'Rectified-flow' if flow else 'EDM diffusion'} prior on {config.size}x{config.size} random-ellipse CT phantoms "
                    "(attenuation in [0, 1]; model space [-1, 1]).",
        metadata={
            "architecture": "invsolve.priors.unet.UNet",
            "network": ema.config,
            "parameters": sum(p.numel() for p in ema.parameters()),
            "data": data_info,
            "recipe": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("threads", "name")},
            "training": {"steps": step, "wall_seconds": round(wall, 1),
                         "final_loss_mean_last_200": round(sum(tail) / len(tail), 5),
                         "torch": torch.__version__, "device": "cpu"},
        },
    )
    tmp = out_dir / "weights.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp))
    os.replace(tmp, out_dir / "weights.safetensors")
    from .loaders import sha256

    card.metadata["sha256"] = sha256(out_dir / "weights.safetensors")
    _atomic_write_text(card.to_json() + "\n", out_dir / "card.json")
    if not math.isfinite(card.metadata["training"]["final_loss_mean_last_200"]):
        raise RuntimeError("training diverged: the final loss is not finite")
