"""diffusers checkpoints: ``UNet2DModel`` DDPM/DDIM pipelines and SD3-class latent flow models.

https://github.com/huggingface/diffusers. Two folder layouts are read, without running
``from_pretrained`` (which fills missing weights with random values and only warns):

* a **pipeline folder** (``model_index.json`` plus one sub-folder per component, e.g.
  ``google/ddpm-celebahq-256``: ``unet/``, ``scheduler/``; Stable Diffusion 3:
  ``transformer/``, ``vae/``, ``scheduler/``, text encoders);
* a **model folder** (``config.json`` plus ``diffusion_pytorch_model.safetensors``, optionally
  sharded with ``*.safetensors.index.json``, or ``.bin`` read with ``torch.load(weights_only=True)``).

The model class named by ``config.json``'s ``_class_name`` is built with ``from_config`` (on the meta
device) and every weight is loaded strictly: a missing, unexpected or misshapen key raises an error
listing them.

``UNet2DModel`` + a DDPM-family scheduler is a VP prior: ``prediction_type`` ``epsilon`` / ``v_prediction``
/ ``sample`` gives the ``vp-eps`` / ``vp-v`` / ``vp-x0`` adapter, the scheduler's betas
(``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, ... computed by diffusers' ``DDPMScheduler``)
give ``alpha_bar_t`` and the continuous ``t(sigma)``; learned-variance outputs (``variance_type``
``learned`` / ``learned_range``, 2C channels) are dropped. Model space [-1, 1].

SD3 class (``SD3Transformer2DModel`` + ``AutoencoderKL`` + ``FlowMatchEulerDiscreteScheduler``,
Esser et al. 2024; FlowDPS, Kim et al. 2025 https://github.com/FlowDPS-Inverse/FlowDPS): the
transformer predicts the velocity ``v = eps - x0`` at ``x_t = (1 - t) x0 + t eps`` and takes the timestep
``1000 t`` (``num_train_timesteps * sigma`` of the scheduler); invsolve's ``flow-velocity`` adapter gives
``D``. The latent prior is wrapped as a :class:`~invsolve.priors.latent.LatentPrior` whose decoder is
``vae.decode(z / scaling_factor + shift_factor)`` (images in [-1, 1]; physical [0, 1]). The scheduler's
``shift`` only changes the sampling schedule, not the network's parameterization. The transformer is
text-conditioned: pass the prompt embeddings (``StableDiffusion3Pipeline.encode_prompt``), or
``zero_conditioning=True`` to feed zeros (not the same as the empty prompt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ..adapters import DDPMSchedule, make_denoiser
from ..base import Prior, PriorCard
from ..latent import LatentPrior
from .io import check_finite, load_state_strict, read_safetensors, read_torch, tensors_only

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.bin")
MODEL_CLASSES = ("UNet2DModel", "SD3Transformer2DModel", "AutoencoderKL")
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                 "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                 "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")
PREDICTION = {"epsilon": "vp-eps", "v_prediction": "vp-v", "sample": "vp-x0"}


def _diffusers():
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("loading diffusers checkpoints needs diffusers: pip install invsolve[diffusers]") from err
    return diffusers


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable JSON file: {err}") from None


def detect(folder: Path) -> str | None:
    """``"diffusers-sd3"``, ``"diffusers-unet"`` or None for a folder."""
    if (folder / "model_index.json").is_file():
        index = read_json(folder / "model_index.json")
        if "transformer" in index and "vae" in index:
            return "diffusers-sd3"
        if "unet" in index:
            return "diffusers-unet"
        return None
    if (folder / "config.json").is_file():
        cls = read_json(folder / "config.json").get("_class_name")
        return {"UNet2DModel": "diffusers-unet"}.get(cls)
    return None


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights of a diffusers model folder (safetensors, sharded safetensors, or .bin read safely)."""
    for fname in WEIGHT_NAMES:
        path = folder / fname
        if not path.is_file():
            continue
        if fname.endswith(".index.json"):
            index = read_json(path).get("weight_map")
            if not isinstance(index, dict):
                raise CheckpointError(f"{path} has no 'weight_map'")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index.values())):
                state.update(read_safetensors(folder / shard))
            missing = sorted(set(index) - set(state))
            if missing:
                raise CheckpointError(f"{path}: shards lack {len(missing)} indexed tensors: {', '.join(missing[:10])}")
            return state, path
        if fname.endswith(".safetensors"):
            return read_safetensors(path), path
        return tensors_only(read_torch(path), str(path)), path
    raise FileNotFoundError(f"{folder} holds no diffusers weights (one of {', '.join(WEIGHT_NAMES)})")


def load_model(folder: Path, expected_class: str) -> tuple[nn.Module, dict[str, Any], Path]:
    """Build the model of ``folder/config.json`` and load its weights strictly."""
    diffusers = _diffusers()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json (a diffusers model folder holds config.json and "
                                "diffusion_pytorch_model.safetensors)")
    config = read_json(config_path)
    cls_name = config.get("_class_name")
    if cls_name != expected_class:
        raise CheckpointError(f"{config_path} describes {cls_name!r}; expected {expected_class!r} "
                              f"(invsolve loads the diffusers classes {', '.join(MODEL_CLASSES)})")
    cls = getattr(diffusers, cls_name)
    state, weights_path = read_weights(folder)
    check_finite(state, str(weights_path))
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
        meta = True
    except Exception:  # some configurations cannot be initialised on the meta device
        model = cls.from_config(config)
        meta = False
    load_state_strict(model, state, str(weights_path), assign=meta, what=f"diffusers {cls_name} of {config_path}")
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # non-persistent buffers are not in the file: build normally and load again
        model = cls.from_config(config)
        load_state_strict(model, state, str(weights_path), what=f"diffusers {cls_name} of {config_path}")
    model.eval().requires_grad_(False)
    return model, config, weights_path


def _component(folder: Path, name: str) -> Path:
    index = read_json(folder / "model_index.json")
    if name not in index:
        raise CheckpointError(f"{folder}/model_index.json has no {name!r} component (components: "
                              f"{', '.join(k for k in index if not k.startswith('_'))})")
    return folder / name


def schedule_from(config: dict[str, Any], source: str) -> tuple[DDPMSchedule, str, dict[str, Any]]:
    """DDPM schedule, parameterization and card summary of a diffusers VP scheduler config."""
    cls = config.get("_class_name", "DDPMScheduler")
    if cls == "ScoreSdeVeScheduler":
        raise NotImplementedError(f"{source}: ScoreSdeVeScheduler (score_sde VE models converted to diffusers) is "
                                  "not supported; load the original score_sde checkpoint with format='score_sde'")
    if cls not in VP_SCHEDULERS:
        raise CheckpointError(f"{source}: scheduler {cls!r} is not a DDPM-family (VP) scheduler; known: {', '.join(VP_SCHEDULERS)}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION:
        raise CheckpointError(f"{source}: prediction_type {prediction!r} not supported; known: {sorted(PREDICTION)}")
    diffusers = _diffusers()
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    ddpm = diffusers.DDPMScheduler(**{k: config[k] for k in keys if config.get(k) is not None})
    schedule = DDPMSchedule(alphas_cumprod=ddpm.alphas_cumprod.to(torch.float64))
    summary = {k: config.get(k) for k in keys if config.get(k) is not None}
    summary.update(_class_name=cls, prediction_type=prediction, variance_type=config.get("variance_type"))
    return schedule, PREDICTION[prediction], summary


class UNetNative(nn.Module):
    """``net(x_vp, t)``: the first ``channels`` outputs of a diffusers ``UNet2DModel`` at fractional timestep ``t``."""

    def __init__(self, unet: nn.Module, channels: int):
        super().__init__()
        self.unet = unet
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0])
        return self.unet(x, t, return_dict=False)[0][:, : self.channels]


def load_unet(folder: Path, scheduler: dict[str, Any] | str | Path | None = None, name: str | None = None) -> Prior:
    """A ``UNet2DModel`` pipeline or model folder as a VP prior."""
    if (folder / "model_index.json").is_file():
        unet_dir = _component(folder, "unet")
        if scheduler is None:
            scheduler = _component(folder, "scheduler") / "scheduler_config.json"
    else:
        unet_dir = folder
        if scheduler is None and (folder / "scheduler_config.json").is_file():
            scheduler = folder / "scheduler_config.json"
    if scheduler is None:
        raise CheckpointError(f"{folder} is a bare UNet2DModel folder without a scheduler config: pass scheduler=<path to "
                              "scheduler_config.json> or a dict (beta_schedule, beta_start, beta_end, num_train_timesteps, "
                              "prediction_type), or load the pipeline folder holding model_index.json")
    sched_cfg = dict(scheduler) if isinstance(scheduler, dict) else read_json(Path(scheduler))
    schedule, parameterization, summary = schedule_from(sched_cfg, str(scheduler if not isinstance(scheduler, dict) else "scheduler"))
    unet, config, weights_path = load_model(unet_dir, "UNet2DModel")
    in_ch, out_ch = int(config.get("in_channels", 3)), int(config.get("out_channels", 3))
    if out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointError(f"{unet_dir}: out_channels {out_ch} is neither in_channels {in_ch} nor 2x (learned variance)")
    size = config.get("sample_size")
    if size is None:
        raise CheckpointError(f"{unet_dir}/config.json has no sample_size")
    spatial = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    card = PriorCard(
        name=name or folder.name, kind="diffusion", parameterization=parameterization, shape=(in_ch, *spatial),
        scale=2.0, offset=-1.0, sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max, physical_range=(0.0, 1.0),
        description=f"diffusers UNet2DModel ({summary['prediction_type']}), {summary['_class_name']} betas",
        metadata={"format": "diffusers-unet", "source": str(folder), "architecture": "diffusers.UNet2DModel",
                  "weights": str(weights_path), "schedule": summary,
                  "parameters": sum(p.numel() for p in unet.parameters())},
    )
    return Prior(make_denoiser(parameterization, UNetNative(unet, in_ch), schedule=schedule), card)


def _tensor(value: Any, what: str) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        data = read_safetensors(value)
        if what not in data:
            raise ConfigError(f"{value} has no tensor named {what!r} (it holds {sorted(data)})")
        return data[what]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must be a tensor or a safetensors file holding one, got {type(value).__name__}")
    return value


class SD3Velocity(nn.Module):
    """``v(x_t, t)`` of an SD3-class transformer with fixed text conditioning and optional CFG.

    ``v = v_neg + w (v_pos - v_neg)`` when ``guidance_scale`` w != 1 (classifier-free guidance as in
    ``StableDiffusion3Pipeline``).
    """

    def __init__(self, transformer: nn.Module, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                 negative_embeds: torch.Tensor | None, negative_pooled: torch.Tensor | None,
                 guidance_scale: float, num_train_timesteps: int):
        super().__init__()
        self.transformer = transformer
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.register_buffer("pooled", pooled, persistent=False)
        self.negative_embeds = negative_embeds
        self.negative_pooled = negative_pooled
        self.guidance_scale = float(guidance_scale)
        self.num_train_timesteps = int(num_train_timesteps)

    def _call(self, x, t, embeds, pooled):
        b = x.shape[0]
        return self.transformer(hidden_states=x, encoder_hidden_states=embeds.to(x.dtype).expand(b, *embeds.shape[1:]),
                                pooled_projections=pooled.to(x.dtype).expand(b, *pooled.shape[1:]),
                                timestep=t, return_dict=False)[0]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timestep = (t.reshape(-1) * self.num_train_timesteps).to(x_t.dtype).expand(x_t.shape[0])
        v = self._call(x_t, timestep, self.prompt_embeds, self.pooled)
        if self.guidance_scale != 1.0:
            v_neg = self._call(x_t, timestep, self.negative_embeds.to(x_t.device), self.negative_pooled.to(x_t.device))
            v = v_neg + self.guidance_scale * (v - v_neg)
        return v


class VAEDecoder(nn.Module):
    """Latents -> images in [-1, 1]: ``vae.decode(z / scaling_factor + shift_factor)``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling + self.shift, return_dict=False)[0]


class VAEEncoder(nn.Module):
    """Images in [-1, 1] -> latents: ``(mean of vae.encode(x) - shift_factor) * scaling_factor``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(x, return_dict=False)[0].mean - self.shift) * self.scaling


def load_sd3(folder: Path, prompt_embeds=None, pooled_prompt_embeds=None, negative_prompt_embeds=None,
             negative_pooled_prompt_embeds=None, guidance_scale: float = 1.0, zero_conditioning: bool = False,
             image_size: int | None = None, name: str | None = None):
    """An SD3-class pipeline folder as a ``LatentPrior`` (flow prior over VAE latents)."""
    sched_path = _component(folder, "scheduler") / "scheduler_config.json"
    sched = read_json(sched_path)
    if sched.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
        raise CheckpointError(f"{sched_path}: scheduler {sched.get('_class_name')!r} is not FlowMatchEulerDiscreteScheduler; "
                              "invsolve loads SD3-class rectified-flow pipelines")
    transformer, t_cfg, t_weights = load_model(_component(folder, "transformer"), "SD3Transformer2DModel")
    vae, v_cfg, v_weights = load_model(_component(folder, "vae"), "AutoencoderKL")
    embeds = _tensor(prompt_embeds, "prompt_embeds")
    pooled = _tensor(pooled_prompt_embeds, "pooled_prompt_embeds")
    neg = _tensor(negative_prompt_embeds, "negative_prompt_embeds")
    neg_pooled = _tensor(negative_pooled_prompt_embeds, "negative_pooled_prompt_embeds")
    joint, pooled_dim = int(t_cfg["joint_attention_dim"]), int(t_cfg["pooled_projection_dim"])
    if embeds is None or pooled is None:
        if not zero_conditioning:
            raise ConfigError("an SD3-class transformer is text-conditioned: pass prompt_embeds= (1, L, "
                              f"{joint}) and pooled_prompt_embeds= (1, {pooled_dim}) from "
                              "StableDiffusion3Pipeline.encode_prompt (tensors or a safetensors file), or "
                              "zero_conditioning=True to feed zeros (this is not the empty prompt)")
        embeds = torch.zeros(1, 1, joint) if embeds is None else embeds
        pooled = torch.zeros(1, pooled_dim) if pooled is None else pooled
    if embeds.ndim == 2:
        embeds = embeds[None]
    if pooled.ndim == 1:
        pooled = pooled[None]
    if embeds.shape[-1] != joint or pooled.shape[-1] != pooled_dim:
        raise ConfigError(f"prompt embeddings of shapes {tuple(embeds.shape)} and {tuple(pooled.shape)} do not fit "
                          f"the transformer (joint_attention_dim {joint}, pooled_projection_dim {pooled_dim})")
    if guidance_scale != 1.0 and (neg is None or neg_pooled is None):
        raise ConfigError("guidance_scale != 1 needs negative_prompt_embeds= and negative_pooled_prompt_embeds= "
                          "(classifier-free guidance)")
    if neg is not None and neg.ndim == 2:
        neg = neg[None]
    if neg_pooled is not None and neg_pooled.ndim == 1:
        neg_pooled = neg_pooled[None]
    steps = int(sched.get("num_train_timesteps", 1000))
    velocity = SD3Velocity(transformer, embeds, pooled, neg, neg_pooled, guidance_scale, steps)
    factor = 2 ** (len(v_cfg.get("block_out_channels", (1,))) - 1)
    latent_channels = int(t_cfg.get("in_channels", 16))
    if int(v_cfg.get("latent_channels", latent_channels)) != latent_channels:
        raise CheckpointError(f"{folder}: VAE latent_channels {v_cfg.get('latent_channels')} != transformer in_channels "
                              f"{latent_channels}")
    latent = int(image_size) // factor if image_size else int(t_cfg["sample_size"])
    if image_size and int(image_size) % (factor * int(t_cfg.get("patch_size", 1))):
        raise ConfigError(f"image_size {image_size} must be a multiple of {factor * int(t_cfg.get('patch_size', 1))}")
    t_min = 1.0 / steps  # the scheduler's smallest training time; t_max = 1 - t_min
    card = PriorCard(
        name=name or folder.name, kind="flow", parameterization="flow-velocity",
        shape=(latent_channels, latent, latent), sigma_min=t_min / (1 - t_min), sigma_max=(1 - t_min) / t_min,
        description="diffusers SD3-class rectified-flow transformer over AutoencoderKL latents",
        metadata={"format": "diffusers-sd3", "source": str(folder), "architecture": "diffusers.SD3Transformer2DModel",
                  "transformer_weights": str(t_weights), "vae_weights": str(v_weights),
                  "scheduler": {k: sched.get(k) for k in ("num_train_timesteps", "shift", "use_dynamic_shifting")},
                  "conditioning": "zeros" if zero_conditioning and prompt_embeds is None else "prompt embeddings",
                  "guidance_scale": float(guidance_scale),
                  "vae": {"scaling_factor": float(v_cfg.get("scaling_factor", 1.0)),
                          "shift_factor": float(v_cfg.get("shift_factor") or 0.0), "downsampling": factor},
                  "parameters": sum(p.numel() for p in transformer.parameters()),
                  "vae_parameters": sum(p.numel() for p in vae.parameters())},
    )
    latent_prior = Prior(make_denoiser("flow-velocity", velocity), card)
    image = latent * factor
    return LatentPrior(latent_prior, VAEDecoder(vae), encoder=VAEEncoder(vae), scale=2.0, offset=-1.0,
                       image_shape=(int(v_cfg.get("in_channels", 3)), image, image))
