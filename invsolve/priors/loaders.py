"""Load priors: invsolve's own format and the field's real checkpoints, never executing pickled code.

``load_prior(path_or_name, format=None, **options)`` reads

=================  =============================================================  ===========================
format             what                                                           module
=================  =============================================================  ===========================
``invsolve``       folder with ``card.json`` + ``weights.safetensors`` (or a       this file
                   shipped / ``INVSOLVE_PRIORS`` name)
``adm``            guided-diffusion ADM UNet state dict (``ffhq_10m.pt``,          ``checkpoints.adm``
                   ``256x256_diffusion_uncond.pt``)
``score_sde``      score_sde NCSN++ continuous-VE checkpoint (``checkpoint_185.pth``  ``checkpoints.score_sde``
                   of MCG / DiffusionMBIR: model + EMA + optimizer + step)
``edm``            EDM SongUNet state dict (exported from an NVlabs/edm pickle)    ``checkpoints.edm``
``diffusers-unet`` diffusers ``UNet2DModel`` pipeline or model folder              ``checkpoints.diffusers``
``diffusers-sd3``  diffusers SD3-class pipeline folder (transformer + VAE)         ``checkpoints.diffusers``
=================  =============================================================  ===========================

The format is detected from the file or folder (``format=`` overrides). Files are read with
``torch.load(weights_only=True)`` or safetensors only (``checkpoints.io``); every key and shape is
checked; ``sha256=`` checks the file; a download happens only with ``download=True`` (Hugging Face
Hub, ``repo_id=``). Shipped priors live in ``data/priors/<name>/`` of the repository;
``INVSOLVE_PRIORS`` (a ``os.pathsep``-separated list of folders) adds more search locations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, UnknownOptionError
from .adapters import make_denoiser
from .base import Prior, PriorCard
from .checkpoints import diffusers as hf
from .checkpoints.adm import is_adm_state, load_adm
from .checkpoints.edm import is_edm_state, load_edm
from .checkpoints.io import (check_finite, check_sha256, load_state_strict, read_any, read_safetensors,
                             sha256, tensors_only)
from .checkpoints.score_sde import is_score_sde, load_score_sde
from .autoencoder import Autoencoder, Decoder, Encoder
from .bridge import BridgePrior
from .latent import LatentPrior
from .unet import UNet

ARCHITECTURES = {"invsolve.priors.unet.UNet"}
AUTOENCODER_ARCHITECTURES = {"invsolve.priors.autoencoder.Autoencoder"}
AUTOENCODER_FILE = "autoencoder.safetensors"
"""The first stage of a latent prior trained by ``invsolve train`` (described by ``metadata.autoencoder``)."""


def prior_dirs() -> list[Path]:
    """Folders searched for prior names, in order."""
    dirs = [Path(p) for p in os.environ.get("INVSOLVE_PRIORS", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "data" / "priors")
    return dirs


def list_priors() -> dict[str, Path]:
    """Shipped and user prior names mapped to their folders."""
    found = {}
    for root in prior_dirs():
        if root.is_dir():
            for card in sorted(root.glob("*/card.json")):
                found.setdefault(card.parent.name, card.parent)
    return found


def resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.name == "card.json" and path.is_file():
        return path.parent
    known = list_priors()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    raise FileNotFoundError(f"no prior named or found at {str(name_or_path)!r}; shipped and user priors: "
                            f"{', '.join(sorted(known)) or 'none'} (searched {', '.join(map(str, prior_dirs()))})")


def build_network(card: PriorCard, source: str | None = None) -> torch.nn.Module:
    """The network the card's ``metadata.architecture`` and ``metadata.network`` describe (random weights)."""
    where = f"prior card {source}" if source else f"prior {card.name!r}"
    arch = card.metadata.get("architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{where} names architecture {arch!r}; this loader knows {sorted(ARCHITECTURES)}")
    network = card.metadata.get("network")
    if not isinstance(network, dict):
        raise CheckpointError(f"{where}: field 'metadata.network' must be the network's options (a JSON object), "
                              f"got {network!r}; export the prior again")
    try:
        net = UNet(**network)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{where}: field 'metadata.network' does not describe a {arch} ({err}); "
                              "export the prior again") from None
    if net.config.get("in_channels") != card.shape[0]:
        raise CheckpointError(f"{where}: field 'shape' has {card.shape[0]} channel(s) but metadata.network has "
                              f"in_channels {net.config.get('in_channels')}; export the prior again")
    return net


def read_card(folder: str | Path) -> PriorCard:
    """The checked ``card.json`` of an invsolve prior folder (a ``CheckpointError`` naming the field and file)."""
    card_path = Path(folder) / "card.json"
    try:
        data = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{card_path} is not valid JSON ({err}); fix the card or export the prior again") from None
    return PriorCard.from_dict(data, source=str(card_path))


def _read_invsolve(folder: Path, verify: bool = True, sha256_expected: str | None = None):
    """Read and check an invsolve prior folder: the card field by field, the recorded sha256 (with
    ``verify``), the safetensors file, every key and shape against the card's architecture, and
    finiteness. Returns ``(card, network, report)``; ``report`` says what was verified."""
    card_path, weights_path = folder / "card.json", folder / "weights.safetensors"
    if not card_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{folder} must hold card.json and weights.safetensors")
    card = read_card(folder)
    expected_hash = card.metadata.get("sha256")
    if expected_hash is not None and not isinstance(expected_hash, str):
        raise CheckpointError(f"prior card {card_path}: field 'metadata.sha256' must be a hex string, got "
                              f"{expected_hash!r}; fix the card or export the prior again")
    actual = sha256(weights_path)
    if verify and expected_hash and actual != expected_hash.lower().strip():
        raise CheckpointError(f"{weights_path} does not match the sha256 recorded in {card_path} (corrupted or "
                              "replaced file); restore the file, export the prior again, or pass verify=False")
    check_sha256(weights_path, sha256_expected)
    state = read_safetensors(weights_path)  # CorruptCheckpointError (a ValueError) if truncated, corrupted or a pickle
    net = build_network(card, str(card_path))
    load_state_strict(net, state, str(weights_path), what=f"the architecture of {card_path}")
    check_finite(state, str(weights_path))
    report = {"sha256": actual, "sha256_verified": bool(verify and expected_hash),
              "sha256_recorded": expected_hash, "tensors": len(state), "bytes": weights_path.stat().st_size,
              "parameters": sum(v.numel() for v in state.values())}
    return card, net, report


def _read_autoencoder(folder: Path, card: PriorCard, verify: bool, report: dict) -> Autoencoder:
    """The autoencoder of a latent prior folder, checked as the prior's weights are (``metadata.autoencoder``)."""
    card_path = folder / "card.json"
    info = card.metadata["autoencoder"]

    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"prior card {card_path}: field 'metadata.autoencoder.{field}' {why}; "
                               "fix the card or export the prior again")
    if not isinstance(info, dict):
        raise CheckpointError(f"prior card {card_path}: field 'metadata.autoencoder' must be a JSON object, got "
                              f"{type(info).__name__}; fix the card or export the prior again")
    if info.get("architecture") not in AUTOENCODER_ARCHITECTURES:
        raise bad("architecture", f"is {info.get('architecture')!r}; this loader knows {sorted(AUTOENCODER_ARCHITECTURES)}")
    for field in ("image_scale", "image_offset"):
        if not isinstance(info.get(field), (int, float)) or isinstance(info.get(field), bool):
            raise bad(field, f"must be a number, got {info.get(field)!r}")
    shape = info.get("image_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape)):
        raise bad("image_shape", f"must list positive integers, got {shape!r}")
    path = folder / AUTOENCODER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is a latent prior (its card has metadata.autoencoder) and must hold "
                                f"{AUTOENCODER_FILE}")
    actual = sha256(path)
    expected = info.get("sha256")
    if verify and isinstance(expected, str) and actual != expected.lower().strip():
        raise CheckpointError(f"{path} does not match the sha256 recorded in {card_path} (corrupted or replaced "
                              "file); restore the file, export the prior again, or pass verify=False")
    state = read_safetensors(path)
    try:
        ae = Autoencoder(**info.get("network", {}))
    except (TypeError, ValueError, KeyError, RuntimeError, IndexError) as err:
        raise bad("network", f"does not describe an Autoencoder ({err})") from None
    if ae.config["latent_channels"] != card.shape[0] or ae.config["in_channels"] != shape[0]:
        raise bad("network", f"has {ae.config['in_channels']} -> {ae.config['latent_channels']} channels, but the card's "
                             f"image_shape and shape have {shape[0]} -> {card.shape[0]}")
    load_state_strict(ae, state, str(path), what=f"the autoencoder of {card_path}")
    check_finite(state, str(path))
    report["autoencoder"] = {"sha256": actual, "sha256_verified": bool(verify and expected),
                             "parameters": sum(v.numel() for v in state.values())}
    return ae


def verify_prior(folder: str | Path) -> tuple[PriorCard, dict]:
    """Check an invsolve prior folder as loading it would (card fields, recorded sha256, keys and shapes
    against the card's architecture, finite weights); returns ``(card, report)`` (see ``_read_invsolve``)."""
    card, _, report = _read_invsolve(Path(folder))
    if "autoencoder" in card.metadata:
        _read_autoencoder(Path(folder), card, True, report)
    return card, report


def _load_invsolve(folder: Path, verify: bool = True, sha256_expected: str | None = None,
                   name: str | None = None) -> Prior:
    card, net, report = _read_invsolve(folder, verify, sha256_expected)
    ae = _read_autoencoder(folder, card, verify, report) if "autoencoder" in card.metadata else None
    net.eval().requires_grad_(False)
    if name:
        card.name = name
    if card.kind == "bridge":
        return BridgePrior(net, card)
    options = {"sigma_data": card.sigma_data} if card.parameterization == "edm" else {}
    prior = Prior(make_denoiser(card.parameterization, net, **options), card)
    if ae is None:
        return prior
    ae.eval().requires_grad_(False)
    info = card.metadata["autoencoder"]
    latent = LatentPrior(prior, Decoder(ae), Encoder(ae), scale=info["image_scale"], offset=info["image_offset"],
                         image_shape=tuple(info["image_shape"]))
    latent.card.name = card.name  # the shipped name, not "latent:<name>"
    return latent


FORMATS = ("invsolve", "adm", "score_sde", "edm", "diffusers-unet", "diffusers-sd3")
# Options each format accepts (besides format, sha256, download, repo_id, filename, revision, cache_dir, device, verify, name).
OPTIONS = {"invsolve": set(), "adm": {"config"}, "score_sde": {"config", "ema"},
           "edm": {"config", "sigma_data", "sigma_min", "sigma_max"}, "diffusers-unet": {"scheduler"},
           "diffusers-sd3": {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
                             "negative_pooled_prompt_embeds", "guidance_scale", "zero_conditioning", "image_size"}}


def _download(repo_id: str, filename: str | None, revision: str | None, cache_dir: str | None) -> Path:
    try:
        import huggingface_hub
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("download=True needs huggingface_hub: pip install invsolve[diffusers]") from err
    if filename:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir))


def detect_format(path: Path, obj=None) -> str:
    """The checkpoint format of ``path`` (a folder, or a file whose safely-read content is ``obj``)."""
    if path.is_dir():
        if (path / "card.json").is_file():
            return "invsolve"
        found = hf.detect(path)
        if found:
            return found
        raise CheckpointError(f"{path}: unknown prior folder (no card.json, model_index.json, or diffusers config.json "
                              f"naming UNet2DModel); pass format= one of {FORMATS}")
    if isinstance(obj, dict):
        if is_score_sde(obj):
            return "score_sde"
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            if is_adm_state(obj):
                return "adm"
            if is_edm_state(obj):
                return "edm"
        keys = list(obj)[:8]
        raise CheckpointError(f"{path}: unknown architecture (first keys: {keys}); known checkpoint layouts: guided-diffusion "
                              "ADM, score_sde NCSN++, EDM SongUNet, diffusers folders, invsolve cards; pass format= if "
                              "it is one of these")
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint dict; pass format=")


def load_prior(name_or_path: str | Path | None = None, device: str | torch.device = "cpu", verify: bool = True, *,
               format: str | None = None, sha256: str | None = None, download: bool = False,
               repo_id: str | None = None, filename: str | None = None, revision: str | None = None,
               cache_dir: str | None = None, name: str | None = None, **options) -> Prior:
    """Load a prior by shipped name (e.g. ``"ct-phantom64"``), folder or checkpoint file.

    :param name_or_path: a shipped/user prior name, an invsolve prior folder, a checkpoint file
        (``.pt``/``.pth``/``.safetensors``) or a diffusers folder. May be omitted with ``repo_id``.
    :param format: one of :data:`FORMATS`; detected from the file or folder when omitted.
    :param sha256: expected sha256 of the checkpoint file (hex); a mismatch raises ``ValueError``.
    :param download: fetch ``repo_id`` (and ``filename``, at ``revision``) from the Hugging Face Hub
        when the path does not exist locally. Nothing is ever downloaded without it.
    :param verify: check an invsolve card's recorded sha256.
    :param name: name written into the prior's card (default: the file or folder name).
    :param options: format options (``config``, ``ema``, ``scheduler``, ``prompt_embeds``, ...; see
        :data:`OPTIONS` and docs/priors-loaders); an option the format does not take raises ``TypeError``.
    """
    if format is not None and format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; choose one of {FORMATS}")
    path = Path(name_or_path) if name_or_path is not None else None
    if path is None or not path.exists():
        known = list_priors()
        if name_or_path is not None and str(name_or_path) in known and format in (None, "invsolve"):
            path = known[str(name_or_path)]
        elif repo_id is not None:
            if not download:
                raise FileNotFoundError(f"{name_or_path or repo_id!r} is not a local file; invsolve downloads only when "
                                        f"asked: pass download=True (--download on the command line) to fetch {repo_id!r} "
                                        "from the Hugging Face Hub")
            path = _download(repo_id, filename, revision, cache_dir)
        elif name_or_path is None:
            raise ConfigError("give a prior name or path, or repo_id= with download=True")
        else:
            raise FileNotFoundError(
                f"no prior named or found at {str(name_or_path)!r}; shipped and user priors: "
                f"{', '.join(sorted(known)) or 'none'} (searched {', '.join(map(str, prior_dirs()))}); to fetch a "
                "checkpoint from the Hugging Face Hub pass repo_id=..., filename=... and download=True")
    if path.is_file() and path.name == "card.json":
        path = path.parent
    obj = None
    if path.is_file():
        check_sha256(path, sha256)
        obj = read_any(path)
    elif sha256 and format not in (None, "invsolve") and not (path / "card.json").is_file():
        raise ConfigError("sha256= checks a single checkpoint file; for a folder check each file's sha256 yourself")
    fmt = format or detect_format(path, obj)
    accepted = OPTIONS[fmt]
    unknown = set(options) - accepted
    if unknown:
        raise UnknownOptionError(f"format {fmt!r} does not take option(s) {sorted(unknown)}; it takes "
                                 f"{sorted(accepted) or 'none'} (plus format, sha256, download, repo_id, filename, revision, "
                                 "cache_dir, device, verify, name)")
    if fmt == "invsolve":
        if not path.is_dir():
            raise ConfigError(f"format 'invsolve' is a folder with card.json and weights.safetensors, not the file {path}")
        prior = _load_invsolve(path, verify=verify, sha256_expected=sha256, name=name)
    elif fmt in ("diffusers-unet", "diffusers-sd3"):
        if not path.is_dir():
            raise ConfigError(f"format {fmt!r} is a diffusers folder, not the file {path}")
        prior = hf.load_unet(path, name=name, **options) if fmt == "diffusers-unet" else hf.load_sd3(path, name=name, **options)
    else:
        if obj is None:
            raise ConfigError(f"format {fmt!r} is a checkpoint file, not the folder {path}")
        if fmt == "adm":
            state = tensors_only(obj, str(path))
            check_finite(state, str(path))
            prior = load_adm(state, path, name=name, **options)
        elif fmt == "score_sde":
            prior = load_score_sde(obj, path, name=name, **options)
        else:
            prior = load_edm(obj, path, name=name, **options)
    if sha256:
        prior.card.metadata["sha256"] = sha256.lower().strip()
    return prior.to(device)
