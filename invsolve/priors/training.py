"""Training of a small diffusion (EDM) or flow (rectified flow) prior, resumable from its checkpoint.

One denoising loss for every objective (the pattern of NVlabs/edm ``training/loss.py``): the
network is always wrapped in the adapter it is exported with (``adapters.make_denoiser``), so
what is trained is the denoiser ``D(x, sigma)`` that samplers call, on the VE state
``x = x0 + sigma n``, ``n ~ N(0, I)``, in model space::

    loss = mean over the batch and pixels of  lambda(sigma) * (D(x0 + sigma n, sigma) - x0)^2

The ``Objective`` (chosen once from ``TrainConfig.objective``) gives the noise-level distribution,
the weight ``lambda(sigma)`` and the adapter:

- ``edm`` (Karras et al. 2022, Sec. 5 and Table 1): ``ln sigma ~ N(P_mean, P_std^2)``,
  ``lambda = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``, adapter ``edm``;
- ``flow`` (rectified flow / flow matching, Liu et al. 2023, Lipman et al. 2023): the network is
  a velocity field ``v(x_t, t)`` at ``x_t = (1 - t) x0 + t n``, trained with
  ``||v(x_t, t) - (n - x0)||^2``, ``t ~ U(0, 1)``; here as ``sigma = t / (1 - t)``,
  ``lambda = ((1 + sigma) / sigma)^2 = 1 / t^2``, adapter ``flow-velocity`` (the same loss,
  see ``flow_objective``).

- ``bridge`` (I2SB, Liu et al. 2023; ``invsolve.priors.bridge``): not a denoiser but a bridge from
  the reconstruction ``x1`` of a measurement (``bridge_operator``, noise ``bridge_sigma_y``) to the
  clean ``x0``: ``t ~ U{0..999}``, ``x_t ~ q(x_t | x0, x1)``, loss ``||F(x_t, t) - (x_t - x0) / sigma_f(t)||^2``
  (``bridge_loss``); exported as a ``BridgePrior`` for the samplers ``i2sb`` and ``cddb``. Bridge runs
  have no in-loop validation curve; their export is evaluated on held-out phantoms (``evaluation``).

Adam with a linear warm-up; an exponential moving average (EMA) of the weights is what gets exported.

Data (``data``, see ``invsolve.priors.datasets``): random-ellipse phantoms, the MNI152 brain recipe,
or the user's PNG folders, NIfTI volumes, DICOM series and fastMRI HDF5 files, split into training
and validation by file. Every ``val_every`` steps (and at the end) the EMA network's one-step
denoising PSNR on the validation slices is measured at the physical noise levels ``val_sigmas``
(``x + sigma n -> D -> PSNR``, data range 1, fixed seeded noise) and plotted to ``validation.png``.

The run directory holds ``checkpoint.pt`` (network, EMA, optimizer, data- and noise-generator
states, step, wall time, loss history, validation curve), rewritten atomically every
``checkpoint_every`` steps, so an interrupted run resumes exactly where it stopped (validation
draws from its own generator and never perturbs training). When the run reaches ``steps`` it
writes ``weights.safetensors`` (EMA weights), ``card.json`` and ``validation.png`` into the
output directory, then measures the exported prior's held-out denoising PSNR against a tuned TV
denoiser at sigma = 0.1 (``invsolve.priors.evaluation``) and records it in the card. A resumed run
on files checks that the training files (names and sizes) are the ones it started with.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from matplotlib.figure import Figure
from safetensors.torch import save_file
from tqdm.auto import tqdm

import operators as ops

from ..errors import CheckpointError, ConfigError, DataError
from ..io import save_figure
from . import datasets
from ..problem import UnitMap
from .adapters import Denoiser, make_denoiser
from .autoencoder import Autoencoder
from .autoencoder_training import train_autoencoder
from .base import Prior, PriorCard
from .bridge import BridgePrior, BridgeSchedule, bridge_start, start_method
from .evaluation import denoise_physical, evaluate_prior, psnr_per_image, record_evaluation
from .checkpoints.io import UnsafeCheckpointError, read_torch
from .loaders import AUTOENCODER_FILE, load_prior, read_card, sha256
from .train_config import RESUME_FREE_KEYS, TrainConfig, ema_decay_at, recorded_config
from .unet import UNet


def data_source(config: TrainConfig) -> tuple[Callable[[int, torch.Generator], torch.Tensor], dict]:
    """Return ``(sample(batch, generator) -> images in physical units, description)`` for ``config.data``."""
    data = datasets.build(config)
    return data.sample, data.description


def latent_sampler(data: "datasets.TrainingData", autoencoder: Autoencoder
                   ) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``sample(batch, generator)`` of the latent stage: training images of ``data``, encoded."""
    image_map = UnitMap(data.scale, data.offset)

    def sample(batch: int, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return autoencoder.encode(image_map.to_model(data.sample(batch, generator)))
    return sample


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


RUN_MARKER = ".invsolve-run"  # written into every run directory: invsolve train may rewrite its config.json
EXPORTED = ("weights.safetensors", AUTOENCODER_FILE, "card.json", "validation.png")  # what an export writes into --out


def check_run_dir(run_dir: Path) -> None:
    """A run directory is new, empty, or one invsolve train made (its checkpoint or ``RUN_MARKER``);
    a folder of other files (a user's own ``config.json`` among them) is refused."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; give a folder name")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (
            (run_dir / "checkpoint.pt").exists() or (run_dir / RUN_MARKER).exists()):
        raise ConfigError(f"--run-dir {run_dir} holds files and is not an invsolve training run (no checkpoint.pt "
                          f"or {RUN_MARKER}); choose another --run-dir")


def check_out_dir(out_dir: Path, name: str, run_dir: Path) -> None:
    """``--out`` may receive the exported prior: it is new, empty, the run directory, or holds a
    previous export of invsolve train under the same ``name`` (whose files alone are replaced)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder name")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    same_as_run = out_dir.resolve() == run_dir.resolve()
    if not (out_dir / "card.json").is_file():
        if same_as_run:
            return
        raise ConfigError(f"--out {out_dir} holds files and no prior; invsolve train exports only into a new folder "
                          "or over its own earlier export: choose another --out")
    try:
        card = read_card(out_dir)
    except CheckpointError:
        card = None
    if card is None or card.name != name or "training" not in card.metadata:
        raise ConfigError(f"--out {out_dir} holds a prior that invsolve train did not export under the name {name!r}; "
                          "it is never replaced: choose another --out (or --name)")


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective, decided once from ``TrainConfig.objective``.

    ``sample_sigma(shape, generator)`` draws the per-sample noise levels (VE convention,
    ``x = x0 + sigma n``), ``weight(sigma)`` is ``lambda(sigma)`` of ``denoising_loss``, and
    ``adapter`` (with ``adapter_options``) is the parameterization that turns the network into
    ``D(x, sigma)``: the one trained, validated and written into the card, so the loader wraps the
    exported network in the same adapter. ``kind`` and ``title`` name the prior in its card.
    """

    name: str
    kind: str
    adapter: str
    adapter_options: dict
    sample_sigma: Callable[[tuple[int, ...], torch.Generator], torch.Tensor]
    weight: Callable[[torch.Tensor], torch.Tensor]
    title: str

    def denoiser(self, net: torch.nn.Module) -> Denoiser:
        """``D(x, sigma)`` of ``net`` (the adapter the exported prior is loaded with)."""
        return make_denoiser(self.adapter, net, **self.adapter_options)


def edm_objective(p_mean: float, p_std: float, sigma_data: float) -> Objective:
    """EDM (Karras et al. 2022, Table 1): ``ln sigma ~ N(p_mean, p_std^2)``,
    ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, EDM preconditioning."""

    def sample_sigma(shape, generator):
        return torch.exp(p_mean + p_std * torch.randn(shape, generator=generator))

    def weight(sigma):
        return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2

    return Objective("edm", "diffusion", "edm", {"sigma_data": sigma_data}, sample_sigma, weight, "EDM diffusion")


FLOW_T_MIN = 1e-5
"""Smallest flow time drawn: ``t ~ U(0, 1)`` is floored here (a 1e-5 fraction of the draws)."""


def flow_objective() -> Objective:
    """Rectified flow (Liu et al. 2023; Lipman et al. 2023) as a weighted denoising loss.

    The flow loss is ``||v(x_t, t) - (n - x0)||^2`` with ``t ~ U(0, 1)`` and
    ``x_t = (1 - t) x0 + t n``. The ``flow-velocity`` adapter evaluates the network at exactly
    that point: with ``sigma = t / (1 - t)`` it gets ``x = x0 + sigma n``, forms
    ``x / (1 + sigma) = (1 - t) x0 + t n = x_t`` and ``t = sigma / (1 + sigma)``, and returns
    ``D = x_t - t v(x_t, t)``. Hence

        D - x0 = (1 - t) x0 + t n - t v - x0 = -t (v - (n - x0)),

    so ``||v - (n - x0)||^2 = ||D - x0||^2 / t^2`` for every sample: with
    ``lambda(sigma) = 1 / t^2 = ((1 + sigma) / sigma)^2`` and ``t ~ U(0, 1)`` drawn as before,
    the denoising loss is the flow loss term by term (same optimum, same per-sample weighting).

    ``t`` is floored at ``FLOW_T_MIN``: ``t = 0`` is a possible float32 draw, where
    ``lambda`` is infinite, and in float32 ``D - x0`` carries a rounding error of about
    ``1e-7 |x0|`` that the weight amplifies by ``1 / t``.
    """

    def sample_sigma(shape, generator):
        t = torch.rand(shape, generator=generator).clamp_min(FLOW_T_MIN)
        return t / (1 - t)

    def weight(sigma):
        return ((1 + sigma) / sigma) ** 2

    return Objective("flow", "flow", "flow-velocity", {}, sample_sigma, weight, "Rectified-flow")


def bridge_objective() -> Objective:
    """I2SB (``bridge_loss``): no noise levels or adapter; the network is a ``BridgePrior``'s."""

    def unused(*_):
        raise ConfigError("a bridge objective has no noise levels: use bridge_loss")

    return Objective("bridge", "bridge", "i2sb", {}, unused, unused, "I2SB bridge")


def make_objective(config: TrainConfig) -> Objective:
    """The ``Objective`` of ``config.objective`` (``edm``, ``flow`` or ``bridge``)."""
    if config.objective == "edm":
        return edm_objective(config.p_mean, config.p_std, config.sigma_data)
    if config.objective == "flow":
        return flow_objective()
    if config.objective == "bridge":
        return bridge_objective()
    raise ConfigError(f"objective must be 'edm', 'flow' or 'bridge', got {config.objective!r}")


def bridge_operator(config: TrainConfig):
    """The operator a bridge recipe undoes: ``ops.make(bridge_operator, img_size=size)``."""
    return ops.make(config.bridge_operator, img_size=config.size)


def bridge_metadata(config: TrainConfig) -> dict:
    """The card's ``metadata.bridge``: the degradation (operator, its parameters, noise) and the schedule."""
    physics = bridge_operator(config)
    schedule = BridgeSchedule()
    return {"operator": config.bridge_operator, "params": {"img_size": config.size}, "sigma_y": config.bridge_sigma_y,
            "start": f"{start_method(physics)}(y)",
            "steps": schedule.n, "beta_max": schedule.beta_max,
            "loss": "mean ||F(x_t, t) - (x_t - x0) / sigma_f(t)||^2, t ~ U{0..steps-1}, x_t ~ q(x_t | x0, x1)"}


def bridge_pairs(physics, x0_physical: torch.Tensor, sigma_y: float, generator: torch.Generator) -> torch.Tensor:
    """``x1 = bridge_start(physics, A x0 + sigma_y n)`` (physical units) for a batch of clean images."""
    with torch.no_grad():
        y = physics.A(x0_physical)
        y = y + sigma_y * torch.randn(y.shape, generator=generator, dtype=y.dtype)
        return bridge_start(physics, y).to(x0_physical.dtype)


def bridge_loss(prior: BridgePrior, x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """I2SB's loss ``mean ||F(x_t, t) - (x_t - x0) / sigma_f(t)||^2``, ``t ~ U{0..N-1}`` then ``x_t``'s noise
    from ``generator`` (model space). ``prior(x_t, t) = x_t - sigma_f F`` makes it ``||x0_hat - x0||^2 / sigma_f^2``."""
    schedule: BridgeSchedule = prior.schedule
    t = torch.randint(0, schedule.n, (x0.shape[0],), generator=generator)
    xt = schedule.marginal(t, x0, x1, torch.randn(x0.shape, generator=generator))
    std = schedule.std_fwd[t].to(x0.dtype).reshape((-1,) + (1,) * (x0.dim() - 1))
    return (((prior(xt, t) - x0) / std) ** 2).mean()


def denoising_loss(denoiser: Callable, objective: Objective, x0: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """``mean(lambda(sigma) (D(x0 + sigma n, sigma) - x0)^2)`` over the batch and pixels.

    ``sigma ~ objective.sample_sigma`` (one per sample, drawn first) and ``n ~ N(0, I)`` (drawn
    second) come from ``generator``; ``x0`` and ``D`` are in model space.
    """
    shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
    sigma = objective.sample_sigma(shape, generator)
    noise = torch.randn(x0.shape, generator=generator)
    return (objective.weight(sigma) * (denoiser(x0 + sigma * noise, sigma) - x0) ** 2).mean()


def train(config: TrainConfig, run_dir: str | Path, out_dir: str | Path | None = None,
          progress: bool = True, max_seconds: float | None = None, evaluate: bool = True) -> Path | None:
    """Train (or resume) the prior described by ``config``.

    Returns the output directory once ``config.steps`` are done, or None when stopped
    early by ``max_seconds`` (the checkpoint then holds the progress). With ``evaluate`` the
    exported prior's held-out denoising PSNR against TV at sigma = 0.1
    (``evaluation.evaluate_prior``) is recorded in its card as ``metadata.evaluation``.
    ``config`` is checked first (``TrainConfig.validate``: a ``ConfigError`` naming the field).
    """
    config.validate()
    objective = make_objective(config)
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    check_run_dir(run_dir)
    check_out_dir(out_dir, config.name, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("an invsolve train run directory: checkpoint.pt, config.json, validation.png\n")
    if config.threads:
        torch.set_num_threads(config.threads)
    ckpt_path = run_dir / "checkpoint.pt"
    config_path = run_dir / "config.json"
    config_json = json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
    if config_path.exists() and ckpt_path.exists():
        saved = recorded_config(json.loads(config_path.read_text()))  # older runs lack newer keys
        mismatch = {k: (saved.get(k), v) for k, v in json.loads(config_json).items()
                    if k not in RESUME_FREE_KEYS and saved.get(k) != v}
        if mismatch:
            raise ConfigError(f"{run_dir} holds a run with a different configuration {mismatch}; "
                              "use another run directory or the same options")
    _atomic_write_text(config_json, config_path)

    started = time.time()
    data = datasets.build(config)
    sample, autoencoder, ae_summary = data.sample, None, None
    if config.latent_channels:  # first stage: the autoencoder; the prior is then trained on its latents
        trained = train_autoencoder(config, data.sample, UnitMap(data.scale, data.offset), data.channels, run_dir,
                                    _atomic_save, progress, None if max_seconds is None else started + max_seconds)
        if trained is None:
            return None
        autoencoder, ae_summary = trained
        sample = latent_sampler(data, autoencoder)
    card = model_card(config, objective, data)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(config.seed)
        net = UNet(in_channels=card.shape[0], channels=config.channels, attention=config.attention)
    bridge = config.objective == "bridge"
    physics = bridge_operator(config) if bridge else None
    # the D(x, sigma) that is trained (a bridge: x0_hat(x_t, t)), and the card's unit map
    model = BridgePrior(net, card) if bridge else Prior(objective.denoiser(net), card)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    data_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    step, wall, history, val_curve = 0, 0.0, [], []
    if ckpt_path.exists():
        damaged = f"; delete {ckpt_path} to start the run over, or choose another --run-dir"
        try:
            state = read_torch(ckpt_path)
        except CheckpointError as err:
            reason = ("is a pickle that needs code to load (refused)" if isinstance(err, UnsafeCheckpointError)
                      else "is truncated or corrupted")
            raise CheckpointError(f"cannot resume: the training checkpoint {ckpt_path} {reason}{damaged}") from None
        try:
            net.load_state_dict(state["net"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            data_gen.set_state(state["data_gen"])
            noise_gen.set_state(state["noise_gen"])
            step, wall, history = int(state["step"]), float(state["wall"]), state["history"].tolist()
            val_curve = state["val"].tolist() if "val" in state else []  # rows: step, PSNR at each val sigma
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as err:
            what = f"no entry {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            raise CheckpointError(f"cannot resume: {ckpt_path} is not a training checkpoint of this run "
                                  f"({what}){damaged}") from None
        if not all(torch.isfinite(v).all() for v in ema.state_dict().values() if v.is_floating_point()):
            raise CheckpointError(f"cannot resume: {ckpt_path} holds NaN or infinite weights{damaged}")
        recorded = state.get("data_fingerprint")  # absent in checkpoints of older versions
        if recorded is not None and data.fingerprint is not None and recorded != data.fingerprint:
            raise DataError(f"the training files under {config.data!r} changed since {run_dir} was started "
                            "(names or sizes differ): restore them or start a new run directory")

    def save():
        _atomic_save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                      "data_gen": data_gen.get_state(), "noise_gen": noise_gen.get_state(),
                      "step": step, "wall": wall, "history": torch.tensor(history, dtype=torch.float64),
                      "val": torch.tensor(val_curve, dtype=torch.float64).reshape(-1, 1 + len(config.val_sigmas)),
                      **({"data_fingerprint": data.fingerprint} if data.fingerprint else {})},
                     ckpt_path)

    def validate():
        if data.validation is None or not config.val_sigmas or bridge:
            return
        if val_curve and int(val_curve[-1][0]) == step:
            return
        psnrs = validation_psnr(Prior(objective.denoiser(ema), card), data.validation, config.val_sigmas,
                                seed=config.seed + 2, autoencoder=autoencoder,
                                image_map=UnitMap(data.scale, data.offset))
        val_curve.append([float(step)] + psnrs)
        plot_training(history, val_curve, config.val_sigmas, run_dir / "validation.png", config.name)

    bar = None
    if progress:
        bar = tqdm(total=config.steps, initial=step, desc=f"train {config.name}", unit="step")
    t_last = time.time()
    while step < config.steps:
        for group in opt.param_groups:
            group["lr"] = config.lr * (min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0)
        x0 = model.to_model(sample(config.batch, data_gen))  # physical -> model space (e.g. [0, 1] -> [-1, 1])
        if not torch.isfinite(x0).all():
            raise DataError(f"a training batch of {config.data!r} holds NaN or infinite values (step {step + 1}); "
                            f"nothing was exported, {run_dir} keeps its last checkpoint: fix or remove the bad files")
        if bridge:
            x1 = model.to_model(bridge_pairs(physics, model.to_physical(x0), config.bridge_sigma_y, noise_gen))
            loss = bridge_loss(model, x0, x1, noise_gen)
        else:
            loss = denoising_loss(model, objective, x0, noise_gen)
        if not torch.isfinite(loss):
            raise ConfigError(f"training diverged at step {step + 1} (loss {loss.item()}); nothing was exported and "
                              f"{run_dir} keeps its last checkpoint: lower --lr (now {config.lr:g}) and start a new "
                              "--run-dir")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = ema_decay_at(config.ema_decay, config.ema_rampup, step)
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1 - decay)
        step += 1
        history.append(loss.item())
        now = time.time()
        wall += now - t_last
        t_last = now
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sum(history[-100:]) / len(history[-100:]):.4f}")
        if config.val_every and (step % config.val_every == 0 or step == config.steps):
            validate()
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
        if max_seconds is not None and now - started > max_seconds and step < config.steps:
            save()
            return None
    if bar is not None:
        bar.close()
    if config.val_every:
        validate()  # a run that stopped between validations still gets its final figure
    check_out_dir(out_dir, config.name, run_dir)  # again: --out may have changed during the run
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-export-"))
    try:  # export and check beside --out; only a verified prior replaces what --out holds
        export(config, ema, staging, step, wall, history, data.description, data=data, val_curve=val_curve,
               curve_png=run_dir / "validation.png", card=card, autoencoder=autoencoder, ae_summary=ae_summary)
        load_prior(staging)  # card fields, sha256, keys and shapes, finite weights
        if evaluate:
            evaluate_export(staging, config)
        publish_export(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def publish_export(staging: Path, out_dir: Path) -> None:
    """Move a verified export from ``staging`` into ``out_dir``: a rename when ``out_dir`` is new,
    else file by file (weights first, the card last) so other files of ``out_dir`` stay."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    for name in EXPORTED:
        if (staging / name).exists():
            os.replace(staging / name, out_dir / name)


def evaluate_export(out_dir: Path, config: TrainConfig) -> dict:
    """Measure the exported prior on its held-out data and record it in ``out_dir/card.json``.

    Priors trained on files without a validation split have no held-out data: the card then says
    so (``metadata.evaluation.skipped``); evaluate them with ``invsolve evaluate --data``.
    """
    if config.data not in datasets.BUILTIN_SOURCES and config.val_fraction == 0:
        result = {"skipped": "trained on every file (val_fraction 0): no held-out files; "
                             "run invsolve evaluate PRIOR --data HELD_OUT_SCANS --write-card"}
    else:
        result = evaluate_prior(load_prior(out_dir))
    record_evaluation(out_dir, result)
    return result


def validation_psnr(prior: Prior, images: torch.Tensor, sigmas, seed: int, batch: int = 32,
                    autoencoder: Autoencoder | None = None, image_map: UnitMap | None = None) -> list[float]:
    """Mean one-step denoising PSNR (data range 1) of ``prior`` on ``images`` at each noise level.

    ``images`` are in physical units; ``evaluation.denoise_physical`` maps them with the prior's card.
    For a latent prior (``autoencoder``, with the images' physical -> model ``image_map``) the clean
    state is ``z = encode(images)``, the noise levels are in latent units, and the PSNR compares
    ``decode(D(z + sigma n, sigma))`` with ``decode(z)`` in physical units (the latent denoiser's
    error as seen in the image, without the autoencoder's own reconstruction error).
    The noise is drawn from ``torch.Generator().manual_seed(seed)``, one draw per sigma in order,
    so the curve compares the same noisy images at every validation step.
    """
    if autoencoder is None:
        clean, view = images, (lambda t: t)
    else:
        with torch.no_grad():
            clean = autoencoder.encode(image_map.to_model(images))
        view = lambda z: image_map.to_physical(autoencoder.decode(z))  # noqa: E731
    generator = torch.Generator().manual_seed(seed)
    out = []
    for sigma in sigmas:
        noise = torch.randn(clean.shape, generator=generator)
        noisy = clean + float(sigma) * noise
        with torch.no_grad():
            denoised = torch.cat([view(denoise_physical(prior, noisy[i:i + batch], float(sigma)))
                                  for i in range(0, clean.shape[0], batch)])
            reference = view(clean)
        out.append(round(float(psnr_per_image(reference, denoised).mean()), 4))
    return out


def plot_training(history: list[float], val_curve: list[list[float]], sigmas, path: Path, title: str) -> None:
    """Write the loss and validation-PSNR curves to ``path`` (PNG, atomically, matplotlib Agg)."""
    figure = Figure(figsize=(9, 3.4))
    ax_loss, ax_val = figure.subplots(1, 2)
    if history:
        window = max(1, min(50, len(history) // 10))
        smooth = torch.tensor(history, dtype=torch.float64)
        if window > 1:
            smooth = torch.nn.functional.avg_pool1d(smooth[None, None], window, stride=1)[0, 0]
        ax_loss.plot(range(window, len(history) + 1), smooth.tolist(), lw=1)
    ax_loss.set(xlabel="step", ylabel="training loss (moving mean)", yscale="log", title=title)
    for k, sigma in enumerate(sigmas):
        ax_val.plot([row[0] for row in val_curve], [row[1 + k] for row in val_curve], marker="o", ms=3,
                    label=f"sigma {sigma:g}")
    ax_val.set(xlabel="step", ylabel="validation denoising PSNR (dB)", title="validation (EMA weights)")
    if sigmas:
        ax_val.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def model_card(config: TrainConfig, objective: Objective, data: "datasets.TrainingData | None" = None) -> PriorCard:
    """The card of the prior ``config`` trains (no metadata yet): the objective's kind and adapter,
    the data's shape and physical -> model map (without ``data``: one channel, [0, 1] -> [-1, 1])."""
    channels = data.channels if data is not None else 1
    scale, offset = (data.scale, data.offset) if data is not None else (2.0, -1.0)
    physical_range = data.physical_range if data is not None else (0.0, 1.0)
    summary = data.summary if data is not None else "random-ellipse CT phantoms"
    units = ("attenuation" if config.data == "ellipses" else datasets.GENERATED_SOURCES[config.data].units
             if config.data in datasets.GENERATED_SOURCES else "normalised intensity")
    if config.objective == "bridge":
        summary = (f"{summary}, from the reconstructions of their {config.bridge_operator} measurements "
                   f"(sigma_y {config.bridge_sigma_y:g})")
    if config.latent_channels:  # the card of the latent stage: latents at unit scale are the model space
        size = config.prior_size
        return PriorCard(
            name=config.name, kind=objective.kind, parameterization=objective.adapter,
            shape=(config.latent_channels, size, size), scale=1.0, offset=0.0, sigma_min=config.sigma_min,
            sigma_max=config.sigma_max, sigma_data=config.sigma_data, physical_range=None,
            description=f"{objective.title} prior on the {config.latent_channels}x{size}x{size} latents of a "
                        f"convolutional autoencoder of {config.size}x{config.size} {summary} ({units} in "
                        f"[{physical_range[0]:g}, {physical_range[1]:g}]); samples decode to images.")
    return PriorCard(
        name=config.name, kind=objective.kind, parameterization=objective.adapter,
        shape=(channels, config.size, config.size),
        scale=scale, offset=offset, sigma_min=config.sigma_min, sigma_max=config.sigma_max,
        sigma_data=config.sigma_data, physical_range=physical_range,
        description=f"{objective.title} prior on {config.size}x{config.size} {summary} "
                    f"({units} in [{physical_range[0]:g}, {physical_range[1]:g}]; model space "
                    f"[{scale * physical_range[0] + offset:g}, {scale * physical_range[1] + offset:g}]).",
    )


def export(config: TrainConfig, ema: UNet, out_dir: Path, step: int, wall: float, history: list[float],
           data_info: dict, data: "datasets.TrainingData | None" = None,
           val_curve: list[list[float]] | None = None, curve_png: Path | None = None,
           card: PriorCard | None = None, autoencoder: Autoencoder | None = None,
           ae_summary: dict | None = None) -> None:
    """Write ``weights.safetensors`` (EMA), ``card.json`` and ``validation.png`` into ``out_dir`` atomically.

    A latent prior (``autoencoder``, with its training ``ae_summary``) also writes
    ``autoencoder.safetensors`` and describes it in ``metadata.autoencoder``: architecture, options,
    the images' physical -> model map and shape, its training and the file's sha256.

    ``card``: the run's ``model_card`` (default: built from ``config`` and ``data``); the training
    metadata is added to it. ``curve_png``: an up-to-date plot of ``history`` and ``val_curve``
    (the run folder's) to copy instead of drawing it again.
    """
    if card is None:
        card = model_card(config, make_objective(config), data)
    out_dir.mkdir(parents=True, exist_ok=True)
    tail = history[-200:]
    metadata = {
        "architecture": "invsolve.priors.unet.UNet",
        "network": ema.config,
        "parameters": sum(p.numel() for p in ema.parameters()),
        "data": data_info,
        "recipe": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("threads", "name")},
        "training": {"steps": step, "wall_seconds": round(wall, 1),
                     "final_loss_mean_last_200": round(sum(tail) / len(tail), 5),
                     "torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads()},
    }
    if config.objective == "bridge":
        metadata["bridge"] = bridge_metadata(config)
    if val_curve:
        last = val_curve[-1]
        metadata["validation"] = {
            "definition": "mean over validation slices of PSNR(x, D(x + sigma n)) with data range 1, "
                          "sigma in physical units, EMA weights, fixed seeded noise",
            "sigmas": list(config.val_sigmas), "step": int(last[0]),
            "psnr_db": {f"{s:g}": v for s, v in zip(config.val_sigmas, last[1:])},
            "images": None if data is None or data.validation is None else int(data.validation.shape[0]),
            "curve": [[int(row[0])] + row[1:] for row in val_curve],
        }
    if autoencoder is not None:
        channels = data.channels if data is not None else autoencoder.config["in_channels"]
        metadata["autoencoder"] = {
            "architecture": "invsolve.priors.autoencoder.Autoencoder", "network": autoencoder.config,
            "file": AUTOENCODER_FILE, "parameters": sum(p.numel() for p in autoencoder.parameters()),
            "image_shape": [channels, config.size, config.size],
            "image_scale": data.scale if data is not None else 2.0,
            "image_offset": data.offset if data is not None else -1.0,
            "physical_range": list(data.physical_range if data is not None else (0.0, 1.0)),
            "training": {**(ae_summary or {}),
                         "loss": "mean((decode(encode(x)) - x)^2) + ae_beta * mean(z^2), model space"},
        }
    card = dataclasses.replace(card, metadata=metadata)
    if not math.isfinite(metadata["training"]["final_loss_mean_last_200"]):
        raise ConfigError(f"training diverged: the final loss is not finite; nothing was written to {out_dir}: "
                          "lower --lr and start a new --run-dir")
    if not all(torch.isfinite(v).all() for v in ema.state_dict().values() if v.is_floating_point()):
        raise ConfigError(f"training diverged: the EMA weights hold NaN or infinite values; nothing was written to "
                          f"{out_dir}: lower --lr and start a new --run-dir")
    if val_curve and not all(math.isfinite(v) for v in val_curve[-1][1:]):
        raise ConfigError(f"training diverged: the validation PSNR is not finite ({val_curve[-1][1:]}); nothing was "
                          f"written to {out_dir}: lower --lr and start a new --run-dir")
    if val_curve:
        target = out_dir / "validation.png"
        if curve_png is not None and curve_png.is_file():
            if curve_png.resolve() != target.resolve():
                tmp = target.with_name(target.name + ".tmp")
                shutil.copyfile(curve_png, tmp)
                os.replace(tmp, target)
        else:
            plot_training(history, val_curve, config.val_sigmas, target, config.name)
    tmp = out_dir / "weights.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp))
    os.replace(tmp, out_dir / "weights.safetensors")
    card.metadata["sha256"] = sha256(out_dir / "weights.safetensors")
    if autoencoder is not None:
        tmp = out_dir / (AUTOENCODER_FILE + ".tmp")
        save_file({k: v.contiguous() for k, v in autoencoder.state_dict().items()}, str(tmp))
        os.replace(tmp, out_dir / AUTOENCODER_FILE)
        card.metadata["autoencoder"]["sha256"] = sha256(out_dir / AUTOENCODER_FILE)
    _atomic_write_text(card.to_json() + "\n", out_dir / "card.json")
