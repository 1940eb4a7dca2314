"""The autoencoder stage of a latent prior (``TrainConfig.latent_channels > 0``), resumable.

``invsolve train`` with latent channels first trains ``autoencoder.Autoencoder`` on the same data
stream, then the diffusion or flow prior on its latents (``training.train``). This stage minimises

    loss = mean((decode_raw(encode_raw(x)) - x)^2) + ae_beta * mean(encode_raw(x)^2)

over batches ``x`` of training images in model space (Adam, ``lr`` with the run's linear warm-up,
``batch`` images per step, ``ae_steps`` steps), then sets ``latent_scale`` to one over the standard
deviation of the raw latents of 256 training images (Stable Diffusion's ``scaling_factor``, chosen
the same way), so the second stage sees unit-variance latents.

Its state lives in ``autoencoder.pt`` of the run directory (weights, optimizer, generator states,
step, wall time, loss history; rewritten atomically every ``checkpoint_every`` steps and when done),
so an interrupted run resumes this stage exactly; once done, the file is the trained autoencoder
that every later resumption of the run reuses.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConfigError
from ..problem import UnitMap
from .autoencoder import Autoencoder
from .checkpoints.io import read_torch
from .train_config import TrainConfig

SCALE_IMAGES = 256
"""Training images whose raw latents set ``latent_scale``."""


def autoencoder_loss(ae: Autoencoder, x: torch.Tensor, beta: float) -> torch.Tensor:
    z = ae.encode_raw(x)
    return ((ae.decode_raw(z) - x) ** 2).mean() + beta * (z ** 2).mean()


def train_autoencoder(config: TrainConfig, sample: Callable[[int, torch.Generator], torch.Tensor],
                      image_map: UnitMap, channels: int, run_dir: Path, save: Callable[[dict, Path], None],
                      progress: bool = True, deadline: float | None = None) -> tuple[Autoencoder, dict] | None:
    """Train (or resume, or reload) the run's autoencoder; ``(autoencoder, summary)``, or None when
    ``deadline`` (a ``time.time()``) passed first (the checkpoint then holds the progress).

    ``sample(batch, generator)`` draws training images in physical units; ``image_map`` maps them
    to model space; ``save(obj, path)`` writes a checkpoint atomically.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 3)
        ae = Autoencoder(channels, config.latent_channels, tuple(config.ae_channels))
    opt = torch.optim.Adam(ae.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed + 3)
    step, wall, history, done = 0, 0.0, [], False
    path = run_dir / "autoencoder.pt"
    if path.exists():
        damaged = f"; delete {path} to train the autoencoder again, or choose another --run-dir"
        try:
            state = read_torch(path)
            ae.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            step, wall, done = int(state["step"]), float(state["wall"]), bool(state["done"])
            history = state["history"].tolist()
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume: the autoencoder checkpoint {path} is unreadable ({err}){damaged}") from None
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"cannot resume: {path} is not an autoencoder checkpoint of this run "
                                  f"({type(err).__name__}: {str(err).splitlines()[0][:120]}){damaged}") from None

    def checkpoint():
        save({"net": ae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step, "wall": wall,
              "done": done, "history": torch.tensor(history, dtype=torch.float64)}, path)

    if not done:
        bar = tqdm(total=config.ae_steps, initial=step, desc=f"autoencoder {config.name}", unit="step") \
            if progress else None
        t_last = time.time()
        while step < config.ae_steps:
            for group in opt.param_groups:
                group["lr"] = config.lr * (min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0)
            loss = autoencoder_loss(ae, image_map.to_model(sample(config.batch, gen)), config.ae_beta)
            if not torch.isfinite(loss):
                raise ConfigError(f"autoencoder training diverged at step {step + 1} (loss {loss.item()}); nothing was "
                                  f"exported: lower --lr (now {config.lr:g}) and start a new --run-dir")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            history.append(loss.item())
            now = time.time()
            wall += now - t_last
            t_last = now
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sum(history[-100:]) / len(history[-100:]):.2e}")
            if step % config.checkpoint_every == 0:
                checkpoint()
            if deadline is not None and now > deadline and step < config.ae_steps:
                checkpoint()
                return None
        if bar is not None:
            bar.close()
        with torch.no_grad():  # latent_scale from training images of a generator of its own
            x = image_map.to_model(sample(SCALE_IMAGES, torch.Generator().manual_seed(config.seed + 4)))
            ae.latent_scale.fill_(1.0 / float(ae.encode_raw(x).std()))
        done = True
        checkpoint()
    ae.eval().requires_grad_(False)
    tail = history[-200:]
    summary = {"steps": step, "wall_seconds": round(wall, 1), "final_loss_mean_last_200": round(sum(tail) / len(tail), 7),
               "latent_scale": round(float(ae.latent_scale), 6)}
    return ae, summary
