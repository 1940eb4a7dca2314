"""Read checkpoint files without ever executing pickled code.

Two readers only: ``safetensors`` (no code at all) and ``torch.load(weights_only=True)``
(PyTorch's restricted unpickler: tensors, numbers, strings, lists, dicts; any other global,
such as ``os.system`` or a training-code class, is refused before it runs). Errors say which
of three things went wrong: the file holds pickled objects (refused), the file is truncated
or corrupted (unreadable), or its sha256 differs from the expected one. ``load_state_strict``
loads a state dict into a network and names every missing, unexpected or misshapen key.

The loaders (``invsolve.priors.loaders`` and the format modules beside this one) import this
module; it imports none of them.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ...errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)


class UnsafeCheckpointError(CheckpointError):
    """The file is a pickle that needs code (classes or functions) to load: refused."""


class CorruptCheckpointError(CheckpointError):
    """The file cannot be read: truncated, corrupted, or not a checkpoint at all."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str | None) -> None:
    """Raise ``ValueError`` if ``expected`` is given and the file's sha256 differs."""
    if not expected:
        return
    actual = sha256(path)
    if actual.lower() != expected.lower().strip():
        raise CheckpointError(f"{path} has sha256 {actual}, expected {expected} (corrupted, truncated or replaced file); "
                              "download it again or drop the sha256 option")


def _is_pickle_suffix(path: Path) -> bool:
    return path.suffix.lower() in (".pkl", ".pickle")


def pickle_refusal(path: Path, detail: str) -> UnsafeCheckpointError:
    hint = ""
    if _is_pickle_suffix(path):
        hint = (" EDM (NVlabs/edm) .pkl snapshots are pickles of EDM's own classes: convert one once, in an "
                "environment with EDM's code and only for a file you trust, to a plain state dict: "
                "`net = pickle.load(open(PKL, 'rb'))['ema']; torch.save(net.model.state_dict(), 'net.pt')`, "
                "then `iv.load_prior('net.pt', format='edm')` (see docs: priors, loaders).")
    return UnsafeCheckpointError(
        f"refused to load {path}: it is a Python pickle that needs code to unpickle ({detail}); invsolve never "
        "executes pickled code (torch.load(weights_only=True) or safetensors only)." + hint)


def read_torch(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True, map_location='cpu')`` with invsolve's errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text or "unsupported" in text.lower():
            detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line or "GLOBAL" in line),
                          "a global that is not a tensor type")
            raise pickle_refusal(path, detail) from None
        raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupted): {err}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, zipfile.BadZipFile) as err:
        raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupted): "
                                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors file at {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptCheckpointError(f"{path} is not a readable safetensors file (truncated or corrupted): {err}") from None


def read_any(path: str | Path) -> Any:
    """A safetensors file (by suffix) or a PyTorch file, read safely."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return read_safetensors(path)
    return read_torch(path)


def tensors_only(state: Any, source: str) -> dict[str, torch.Tensor]:
    """Check that ``state`` is a flat ``{name: tensor}`` dict."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source} does not hold a state dict (a mapping of names to tensors); found {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(map(str, bad[:10]))}"
                              f"{' ...' if len(bad) > 10 else ''}; pass the state dict itself (or choose format=...)")
    return state


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: tensors with NaN or infinite values (corrupted file?): "
                              f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; restore or download the file "
                              "again, or export the prior again")


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
        raise CheckpointError(f"weights in {source} do not match {what}; " + "; ".join(parts))
    if assign:  # keep each parameter's dtype (checkpoints may be stored in fp16)
        state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, strict=not ignore_missing, assign=assign)
