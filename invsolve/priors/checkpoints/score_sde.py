"""score_sde NCSN++ checkpoints of the continuous VE SDE (AAPM CT ``checkpoint_185.pth`` of MCG / DiffusionMBIR).

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
https://github.com/yang-song/score_sde_pytorch (``models/ncsnpp.py``, ``models/layerspp.py``,
``models/ema.py``); the AAPM 256x256 CT checkpoint of Chung et al. (MCG, NeurIPS 2022,
https://github.com/HJ-harry/MCG_diffusion; DiffusionMBIR, CVPR 2023,
https://github.com/HJ-harry/DiffusionMBIR) uses ``configs/ve/AAPM_256_ncsnpp_continuous.py`` on top
of ``configs/default_lsun_configs.py``: nf 128, ch_mult (1, 2, 2, 2), 4 res blocks, attention at
16x16, BigGAN res blocks with FIR [1, 3, 3, 1], progressive_input "residual", progressive "none",
Fourier noise embedding (scale 16), 1 channel, data in [0, 1] (``centered=False``: the network
maps its input to ``2x - 1`` itself), ``scale_by_sigma``, VE SDE with sigma_min 0.01, sigma_max 378.

File layout (``run_lib.py`` / ``utils.save_checkpoint``): a dict ``{'model': state_dict of the
DataParallel-wrapped NCSNpp (keys 'module.all_modules.N....', plus the buffer 'module.sigmas'),
'ema': {'decay', 'num_updates', 'shadow_params': [tensors in model.parameters() order, trainable
ones only]}, 'optimizer': Adam state, 'step': int}``. The official restore uses
``load_state_dict(strict=False)`` and ``ema.copy_to`` (``zip`` over the lists), so a wrong file
silently leaves random or mismatched weights; here every name, count and shape is checked.

Architecture: score_sde's NCSN++ in this configuration computes the same function as EDM's
``SongUNet`` (NCSN++ flavour), available as ``deepinv.models.NCSNpp`` (checked numerically against an
independent transcription of score_sde's forward in ``tests/test_loaders.py``). Its parameter names
differ, so the weights are renamed by the explicit table :data:`RESBLOCK`, :data:`ATTENTION` and
:func:`module_plan` (docs: priors-loaders, "score_sde name table"); the attention's three NIN
projections ``W`` (in, out) become EDM's fused 1x1 ``qkv`` convolution (rows interleaved q, k, v per
channel) and ``NIN_3`` its ``proj``.

Prior: ``D(x, sigma) = x + sigma^2 s(x, sigma)`` with ``s = F(2x - 1, log sigma) / sigma`` (``ve-score``),
model space [0, 1] (card scale 1, offset 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ..adapters import make_denoiser
from ..base import Prior, PriorCard
from .io import check_finite, load_state_strict, tensors_only
from .songunet import build_songunet, parameter_count

# score_sde config fields (data.* and model.*) of the AAPM 256 CT checkpoint.
AAPM256 = dict(image_size=256, num_channels=1, centered=False, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
               attn_resolutions=(16,), fourier_scale=16, sigma_min=0.01, sigma_max=378.0, num_scales=2000)
OFFICIAL = {"aapm256": AAPM256}
# Options of score_sde's NCSNpp that this loader reproduces; any other value is refused.
FIXED = dict(name="ncsnpp", embedding_type="fourier", conditional=True, resblock_type="biggan", progressive="none",
             progressive_input="residual", progressive_combine="sum", fir=True, fir_kernel=(1, 3, 3, 1),
             skip_rescale=True, resamp_with_conv=True, scale_by_sigma=True, attention_type="ddpm",
             nonlinearity="swish", normalization="GroupNorm", conv_size=3)
IGNORED = {"dropout", "init_scale", "ema_rate", "beta_min", "beta_max"}  # no effect on a trained network at eval

# score_sde sub-module parameter -> EDM/deepinv UNetBlock parameter, in score_sde registration order.
RESBLOCK = (("GroupNorm_0.weight", "norm0.weight"), ("GroupNorm_0.bias", "norm0.bias"),
            ("Conv_0.weight", "conv0.weight"), ("Conv_0.bias", "conv0.bias"),
            ("Dense_0.weight", "affine.weight"), ("Dense_0.bias", "affine.bias"),
            ("GroupNorm_1.weight", "norm1.weight"), ("GroupNorm_1.bias", "norm1.bias"),
            ("Conv_1.weight", "conv1.weight"), ("Conv_1.bias", "conv1.bias"),
            ("Conv_2.weight", "skip.weight"), ("Conv_2.bias", "skip.bias"))  # Conv_2 only when in != out, up or down
ATTENTION = (("GroupNorm_0.weight", "norm2.weight"), ("GroupNorm_0.bias", "norm2.bias"),
             ("NIN_0.W", "qkv.weight[q]"), ("NIN_0.b", "qkv.bias[q]"), ("NIN_1.W", "qkv.weight[k]"),
             ("NIN_1.b", "qkv.bias[k]"), ("NIN_2.W", "qkv.weight[v]"), ("NIN_2.b", "qkv.bias[v]"),
             ("NIN_3.W", "proj.weight (transposed)"), ("NIN_3.b", "proj.bias"))
PLAIN = (("weight", "weight"), ("bias", "bias"))
KINDS = {"fourier": (("W", "freqs"),), "linear": PLAIN, "conv": PLAIN, "groupnorm": PLAIN, "pyramid":
         (("Conv2d_0.weight", "weight"), ("Conv2d_0.bias", "bias")), "resblock": RESBLOCK, "attention": ATTENTION}


def normalise_config(config: str | dict[str, Any] | None) -> dict[str, Any]:
    if config is None:
        config = "aapm256"
    if isinstance(config, str):
        if config not in OFFICIAL:
            raise ConfigError(f"unknown score_sde configuration {config!r}; choose one of {sorted(OFFICIAL)} or pass "
                              "a dict of score_sde config fields (image_size, num_channels, nf, ch_mult, ...)")
        return dict(OFFICIAL[config])
    cfg = dict(AAPM256)
    known = set(AAPM256) | set(FIXED) | IGNORED
    unknown = set(config) - known
    if unknown:
        raise ConfigError(f"unknown score_sde config fields {sorted(unknown)}; known: {sorted(known)}")
    for key, value in config.items():
        if key in FIXED:
            expected = FIXED[key]
            same = tuple(value) == expected if isinstance(expected, tuple) else value == expected
            if not same:
                raise NotImplementedError(
                    f"score_sde config {key}={value!r} is not supported: invsolve loads NCSN++ with "
                    f"{key}={expected!r} (the layout of the AAPM / LSUN / FFHQ-continuous VE checkpoints, which "
                    "deepinv's NCSNpp reproduces); other variants need their own architecture")
        elif key in AAPM256:
            cfg[key] = value
    cfg["ch_mult"] = tuple(cfg["ch_mult"])
    cfg["attn_resolutions"] = tuple(cfg["attn_resolutions"])
    return cfg


def songunet_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(architecture="ncsnpp", img_resolution=cfg["image_size"], in_channels=cfg["num_channels"],
                out_channels=cfg["num_channels"], model_channels=cfg["nf"], channel_mult=cfg["ch_mult"],
                num_blocks=cfg["num_res_blocks"], attn_resolutions=cfg["attn_resolutions"], augment_dim=0)


def module_plan(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """``(kind, EDM prefix)`` of each entry of score_sde's ``all_modules``, in order (index = position)."""
    size, levels, blocks = cfg["image_size"], len(cfg["ch_mult"]), cfg["num_res_blocks"]
    attn = set(cfg["attn_resolutions"])
    plan = [("fourier", "map_noise"), ("linear", "map_layer0"), ("linear", "map_layer1"),
            ("conv", f"enc.{size}x{size}_conv")]
    for level in range(levels):
        res = size >> level
        for b in range(blocks):
            plan.append(("resblock", f"enc.{res}x{res}_block{b}"))
            if res in attn:
                plan.append(("attention", f"enc.{res}x{res}_block{b}"))
        if level != levels - 1:
            half = res // 2
            plan += [("resblock", f"enc.{half}x{half}_down"), ("pyramid", f"enc.{half}x{half}_aux_residual")]
    low = size >> (levels - 1)
    plan += [("resblock", f"dec.{low}x{low}_in0"), ("attention", f"dec.{low}x{low}_in0"),
             ("resblock", f"dec.{low}x{low}_in1")]
    for level in reversed(range(levels)):
        res = size >> level
        for b in range(blocks + 1):
            plan.append(("resblock", f"dec.{res}x{res}_block{b}"))
        if res in attn:
            plan.append(("attention", f"dec.{res}x{res}_block{blocks}"))
        if level != 0:
            plan.append(("resblock", f"dec.{2 * res}x{2 * res}_up"))
    plan += [("groupnorm", f"dec.{size}x{size}_aux_norm"), ("conv", f"dec.{size}x{size}_aux_conv")]
    return plan


def parameter_table(cfg: dict[str, Any], edm_state: dict[str, torch.Tensor]) -> list[tuple[str, str, str]]:
    """``(score_sde name, EDM name, kind)`` for every parameter, in score_sde's ``parameters()`` order.

    ``edm_state`` (the deepinv network's state dict) decides which optional ``Conv_2`` shortcuts exist.
    """
    table = []
    for index, (kind, prefix) in enumerate(module_plan(cfg)):
        for sde_name, edm_name in KINDS[kind]:
            if kind == "resblock" and sde_name.startswith("Conv_2") and f"{prefix}.skip.weight" not in edm_state:
                continue
            table.append((f"all_modules.{index}.{sde_name}", f"{prefix}.{edm_name}", kind))
    return table


def expected_shapes(cfg: dict[str, Any], edm_state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shape of every score_sde parameter (from the EDM network of the same configuration)."""
    shapes = {}
    for sde_name, edm_name, _ in parameter_table(cfg, edm_state):
        base = edm_name.split("[")[0].split(" ")[0]
        shape = tuple(edm_state[base].shape)
        if sde_name.endswith((".NIN_0.W", ".NIN_1.W", ".NIN_2.W", ".NIN_3.W")):
            shape = (shape[1], shape[1])
        elif sde_name.endswith((".NIN_0.b", ".NIN_1.b", ".NIN_2.b")):
            shape = (shape[0] // 3,)
        shapes[sde_name] = shape
    return shapes


def trainable(sde_name: str) -> bool:
    """score_sde's ``GaussianFourierProjection.W`` has ``requires_grad=False``: not in the EMA list."""
    return not sde_name.endswith(".W") or ".NIN_" in sde_name


def to_edm(params: dict[str, torch.Tensor], cfg: dict[str, Any], edm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and, for attention, re-pack) score_sde parameters into the deepinv/EDM state dict."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for sde_name, edm_name, kind in parameter_table(cfg, edm_state):
        value = params[sde_name]
        if kind == "attention" and ".NIN_" in sde_name:
            block = edm_name.split(".qkv")[0].split(".proj")[0]
            qkv.setdefault(block, {})["".join(sde_name.split(".")[-2:])] = value  # e.g. "NIN_0W"
            continue
        out[edm_name] = value
    for edm_prefix, parts in qkv.items():
        # qkv row c*3 + j holds projection j (q, k, v) of output channel c; NIN weights are (in, out).
        w = torch.stack([parts[f"NIN_{j}W"].t() for j in range(3)], dim=1)
        out[f"{edm_prefix}.qkv.weight"] = w.reshape(-1, w.shape[-1])[:, :, None, None].contiguous()
        out[f"{edm_prefix}.qkv.bias"] = torch.stack([parts[f"NIN_{j}b"] for j in range(3)], dim=1).reshape(-1).contiguous()
        out[f"{edm_prefix}.proj.weight"] = parts["NIN_3W"].t()[:, :, None, None].contiguous()
        out[f"{edm_prefix}.proj.bias"] = parts["NIN_3b"]
    return out


def is_score_sde(obj: Any) -> bool:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "ema" in obj:
        return any(str(k).replace("module.", "", 1).startswith("all_modules.") for k in obj["model"])
    return isinstance(obj, dict) and any(str(k).replace("module.", "", 1).startswith("all_modules.") for k in obj)


def _strip_module(state: dict[str, Any], source: str) -> dict[str, Any]:
    prefixed = [k.startswith("module.") for k in state]
    if any(prefixed) and not all(prefixed):
        raise CheckpointError(f"{source}: some model keys have the DataParallel 'module.' prefix and some do not")
    return {k[len("module."):]: v for k, v in state.items()} if all(prefixed) else dict(state)


class ScoreSDEScore(nn.Module):
    """``s(x, sigma) = F(2x - 1, log sigma) / sigma`` (score_sde NCSNpp.forward, ``scale_by_sigma``, uncentred data)."""

    def __init__(self, unet: nn.Module, centered: bool):
        super().__init__()
        self.unet = unet
        self.centered = centered

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1).to(x.dtype).expand(x.shape[0])
        h = x if self.centered else 2 * x - 1
        out = self.unet.forward_unet(h, sigma.log())
        return out / sigma.reshape(-1, *([1] * (x.ndim - 1)))


def load_score_sde(obj: Any, source: Path, config: str | dict | None = None, ema: bool = True,
                   name: str | None = None) -> Prior:
    user_sigmas = isinstance(config, dict) and ("sigma_min" in config or "sigma_max" in config)
    cfg = normalise_config(config)
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and "model" in obj:
        extra = sorted(set(obj) - {"model", "ema", "optimizer", "step"})
        if extra:
            raise CheckpointError(f"{source}: unexpected top-level entries {extra}; a score_sde checkpoint holds "
                                  "'model', 'ema', 'optimizer' and 'step'")
        model_state = _strip_module(tensors_only(obj["model"], f"{source} ['model']"), str(source))
        meta["step"] = int(obj["step"]) if isinstance(obj.get("step"), (int, torch.Tensor)) else None
        ema_state = obj.get("ema")
    else:
        model_state = _strip_module(tensors_only(obj, str(source)), str(source))
        ema_state = None
    net = build_songunet(songunet_config(cfg))
    edm_state = net.state_dict()
    table = parameter_table(cfg, edm_state)
    shapes = expected_shapes(cfg, edm_state)
    buffers = {"sigmas"}
    missing = [n for n in shapes if n not in model_state]
    unexpected = [n for n in model_state if n not in shapes and n not in buffers]
    wrong = [f"{n}: file {tuple(model_state[n].shape)} vs model {shapes[n]}" for n in shapes
             if n in model_state and tuple(model_state[n].shape) != shapes[n]]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(items)}): {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("wrong shapes", wrong)) if items]
        raise CheckpointError(f"weights in {source} do not match score_sde NCSN++ with config "
                              f"{ {k: cfg[k] for k in ('image_size', 'num_channels', 'nf', 'ch_mult', 'num_res_blocks', 'attn_resolutions')} }; "
                              + "; ".join(parts) + "; pass config={...} with the checkpoint's score_sde config fields")
    order = [n for n in model_state if n in shapes]
    if order != list(shapes):
        raise CheckpointError(f"{source}: parameters are not stored in score_sde NCSN++ registration order, so the EMA "
                              "list (stored in that order) cannot be matched to names; refusing to guess")
    params = {n: model_state[n] for n in shapes}
    if ema:
        if ema_state is None:
            raise CheckpointError(f"{source} holds no EMA weights ('ema' entry); pass ema=False to use the raw "
                                  "training weights of 'model' instead")
        if not isinstance(ema_state, dict) or not isinstance(ema_state.get("shadow_params"), (list, tuple)):
            raise CheckpointError(f"{source}: 'ema' is not a score_sde ExponentialMovingAverage state "
                                  "(a dict with 'decay', 'num_updates' and the list 'shadow_params')")
        shadow = list(ema_state["shadow_params"])
        names = [n for n in shapes if trainable(n)]
        if len(shadow) != len(names):
            raise CheckpointError(f"{source}: the EMA holds {len(shadow)} tensors but score_sde NCSN++ with this config has "
                                  f"{len(names)} trainable parameters; the file belongs to another configuration")
        bad = [f"#{i} {n}: ema {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__} vs model {shapes[n]}"
               for i, (n, t) in enumerate(zip(names, shadow))
               if not isinstance(t, torch.Tensor) or tuple(t.shape) != shapes[n]]
        if bad:
            raise CheckpointError(f"{source}: EMA tensors do not match the parameters in order ({len(bad)}): "
                                  + ", ".join(bad[:10]))
        params.update(zip(names, shadow))
        meta["ema"] = {"decay": float(ema_state.get("decay", float("nan"))),
                       "num_updates": ema_state.get("num_updates")}
    check_finite(params, str(source))
    sigmas = model_state.get("sigmas")
    if sigmas is not None and sigmas.numel() > 1:
        file_max, file_min = float(sigmas[0]), float(sigmas[-1])
        if user_sigmas and (abs(file_max - cfg["sigma_max"]) > 1e-3 * file_max or
                            abs(file_min - cfg["sigma_min"]) > 1e-3 * file_min):
            raise CheckpointError(f"{source}: its sigma table spans [{file_min:g}, {file_max:g}] but config gives "
                                  f"[{cfg['sigma_min']:g}, {cfg['sigma_max']:g}]")
        cfg["sigma_min"], cfg["sigma_max"] = file_min, file_max
        meta["sigma_range_from"] = "the file's 'sigmas' buffer"
    state = to_edm(params, cfg, edm_state)
    filters = tuple(k for k in edm_state if k.endswith("resample_filter"))  # fixed FIR [1,3,3,1]: not stored
    state = {k: v.to(edm_state[k].dtype) for k, v in state.items()}
    load_state_strict(net, state, str(source), ignore_missing=filters,
                      what="deepinv NCSNpp renamed from score_sde (internal mapping error)")
    channels, size = cfg["num_channels"], cfg["image_size"]
    card = PriorCard(
        name=name or source.stem, kind="diffusion", parameterization="ve-score", shape=(channels, size, size),
        scale=1.0, offset=0.0, sigma_min=float(cfg["sigma_min"]), sigma_max=float(cfg["sigma_max"]),
        physical_range=(0.0, 1.0),
        description="score_sde NCSN++ (continuous VE SDE), EMA weights" if ema else
                    "score_sde NCSN++ (continuous VE SDE), raw training weights",
        metadata={"format": "score_sde", "source": str(source), "architecture": "score_sde NCSNpp -> deepinv.models.NCSNpp",
                  "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                  "parameters": parameter_count(net), "weights": "ema" if ema else "model", **meta},
    )
    return Prior(make_denoiser("ve-score", ScoreSDEScore(net, cfg["centered"])), card)
