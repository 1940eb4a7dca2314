"""Load priors: invsolve's own format (safetensors weights + JSON card).

A prior directory holds ``card.json`` (a ``PriorCard``) and ``weights.safetensors``.
Shipped priors live in ``data/priors/<name>/`` of the repository; ``INVSOLVE_PRIORS``
(a ``os.pathsep``-separated list of folders) adds more search locations. Weights are
never unpickled: safetensors only, every key and shape checked, and the file's sha256
compared with the card when the card records one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .adapters import make_denoiser
from .base import Prior, PriorCard

ARCHITECTURES = {"invsolve.priors.unet.UNet"}


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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def build_network(card: PriorCard) -> torch.nn.Module:
    arch = card.metadata.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"prior {card.name!r} names architecture {arch!r}; this loader knows {sorted(ARCHITECTURES)}")
    from .unet import UNet

    return UNet(**card.metadata["network"])


def load_state_strict(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                      ignore_missing: tuple[str, ...] = (), assign: bool = False,
                      what: str = "the architecture of the card") -> None:
    """Load ``state`` into ``net``, raising an error that lists every missing, unexpected or misshapen key.

    ``ignore_missing`` names buffers of ``net`` that checkpoints do not hold (they keep the
    network's own values). ``assign=True`` loads into a network built on the meta device.
    """
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state) - set(ignore_missing))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(items)}): {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes))
                 if items]
        raise ValueError(f"weights in {source} do not match {what}; " + "; ".join(parts))
    if assign:  # keep each parameter's dtype (checkpoints may be stored in fp16)
        state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, strict=not ignore_missing, assign=assign)


def load_prior(name_or_path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> Prior:
    """Load a prior by shipped name (e.g. ``"ct-phantom64"``) or from a folder with ``card.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve(name_or_path)
    card_path, weights_path = folder / "card.json", folder / "weights.safetensors"
    if not card_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{folder} must hold card.json and weights.safetensors")
    try:
        card = PriorCard.from_dict(json.loads(card_path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{card_path} is not a valid prior card: {err}") from err
    expected_hash = card.metadata.get("sha256")
    if verify and expected_hash and sha256(weights_path) != expected_hash:
        raise ValueError(f"{weights_path} does not match the sha256 recorded in its card (corrupted or replaced file); "
                         "restore the file or pass verify=False")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from err
    net = build_network(card)
    load_state_strict(net, state, str(weights_path))
    net.eval().requires_grad_(False)
    options = {"sigma_data": card.sigma_data} if card.parameterization == "edm" else {}
    prior = Prior(make_denoiser(card.parameterization, net, **options), card)
    return prior.to(device)
