"""``invsolve bench fastmri``: every (volume, acceleration, method) of a grid, scored as fastMRI scores it.

The grid is volumes x accelerations x methods. One *task* reconstructs the selected slices of one
volume with one method at one acceleration and returns the fastMRI per-volume metrics
(``invsolve.fastmri.metrics``: NMSE, PSNR, SSIM with the volume's maximum as data range), per-slice
metrics, seconds, NFE and the figure slice's images. ``run_task(config, task)`` is a pure function
of its arguments (files are read inside it; every random number comes from generators seeded by
``config.seed``, the file name and the acceleration), so every executor (``executors.py``) gives the
same rows. The coordinating process writes each finished task to SQLite in one transaction
(``db.py``); a rerun skips tasks whose key (volume, method, acceleration, mask, seed, config hash)
is already stored, so an interrupted run resumes where it stopped and recomputes nothing.

Methods: the classical baselines of ``invsolve.fastmri.baselines`` (``zero-filled``, ``sense``,
``l1-wavelet``, ``tv``) and every registered sampler (``invsolve.samplers.names()``). A sampler
task draws ``samples`` posterior samples for all selected slices at once (one generator per draw)
and scores their **mean**; the oracle best-of-N PSNR (per slice, the draw closest to the target:
not an estimate, it looks at the target) is kept in its own column. The problem is built by
``invsolve.fastmri.problems`` (``SenseMRI`` / ``SingleCoilMRI`` with the file's fastMRI mask).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import deepinv
import h5py
import numpy as np
import scipy
from importlib.metadata import version
import torch
from tqdm.auto import tqdm

from .. import samplers
from ..errors import ConfigError, DataError
from ..priors import loaders
from ..problem import Problem
from . import baselines, metrics, synth
from .db import ResultStore, new_owner
from .db import task_key as db_task_key
from .executors import LocalExecutor
from .masks import volume_mask
from .problems import SCALE_PERCENTILE, build_parts, posterior_images
from .reader import list_volumes, read_volume

RUNNER_VERSION = 1
"""Bumped when the runner's computation changes in a way the configuration does not show."""

SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    # the NFE budget of a benchmark is small next to DPS's official 1000 DDPM steps: the EDM grid
    # is the better discretisation for few steps (Karras et al. 2022), see docs/samplers.md
    "dps": {"schedule": "karras"},
    # DAPS's Langevin step size for SENSE MRI, chosen on the synthetic training split
    # (benchmarks/fastmri/tune.py, table in benchmarks/fastmri/tune_samplers.md): 1e-5 gives
    # 20.4 / 17.5 dB at 4x / 8x, the official 1e-4 15.6 / 14.2 dB. DPS keeps its official zeta 1 (best there).
    "daps": {"lr": 1e-5},
}
"""Hyperparameters the benchmark sets on top of a sampler's defaults (before ``--nfe`` and ``--set``)."""

DEFAULT_PRIOR = "mri-brain64"
DEFAULT_SYNTH = dict(n_train=8, n_val=4, coils=8)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A benchmark grid and the settings every task shares.

    :param data: folder of fastMRI HDF5 files (train/val layout: the files need targets).
    :param methods: baselines and/or sampler names.
    :param accelerations: fastMRI accelerations (4 and 8, with centre fractions 0.08 / 0.04).
    :param mask: ``equispaced_fraction`` (brain leaderboard), ``random`` (knee) or ``equispaced``.
    :param prior: prior name or folder (samplers only).
    :param slices: ``all``, ``middle``, ``middle+K`` (the 2K+1 middle slices) or a list of indices.
    :param samples: posterior draws per slice; their mean is scored.
    :param seed: seed of the samplers' generators (masks are seeded per file, as fastMRI does).
    :param nfe: denoiser evaluations per draw (``invsolve.samplers.nfe_overrides``); ``None``
        keeps each sampler's own steps.
    :param sigma_y: noise std assumed in k-space, in the units of the scaled measurement (the
        zero-filled image's 99.5th percentile is 1; see ``problems.py``).
    :param options: ``((method, key, value), ...)``: hyperparameters of samplers (``preset`` picks
        a named preset) and options of baselines.
    :param max_volumes: use only the first N files (sorted by name).
    :param device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    data: str
    methods: tuple[str, ...] = ("zero-filled", "sense", "l1-wavelet", "tv", "dps", "daps")
    accelerations: tuple[float, ...] = (4, 8)
    mask: str = "equispaced_fraction"
    prior: str | None = None
    slices: str | tuple[int, ...] = "middle+2"
    samples: int = 4
    seed: int = 0
    nfe: int | None = 100
    sigma_y: float = 0.01
    options: tuple[tuple[str, str, Any], ...] = ()
    max_volumes: int | None = None
    device: str = "auto"

    def __post_init__(self):
        if not self.methods:
            raise ConfigError("give at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods repeat: {list(self.methods)}")
        if self.samples < 1:
            raise ConfigError(f"samples must be >= 1, got {self.samples}")
        if self.nfe is not None and self.nfe < 1:
            raise ConfigError(f"nfe must be >= 1, got {self.nfe}")
        if not self.sigma_y > 0:
            raise ConfigError(f"sigma_y must be > 0, got {self.sigma_y}")


@dataclasses.dataclass(frozen=True)
class Task:
    """One work unit: a file, a method and an acceleration."""

    path: str
    volume: str
    method: str
    acceleration: float
    config_hash: str


# ------------------------------------------------------------------------------------------
# methods and their resolved configuration


def baseline_names() -> tuple[str, ...]:
    return tuple(baselines.METHODS)


def is_sampler(method: str) -> bool:
    return method in samplers.names()


def check_methods(methods: Sequence[str]) -> None:
    known = set(baseline_names()) | set(samplers.names())
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; baselines: {', '.join(baseline_names())}; "
                          f"samplers: {', '.join(samplers.names())}")


def check_options(config: BenchConfig) -> None:
    """Check the methods and every option against the methods they name, before any work."""
    check_methods(config.methods)
    stray = sorted({m for m, _, _ in config.options} - set(config.methods))
    if stray:
        raise ConfigError(f"options given for {', '.join(stray)}, which {'is' if len(stray) == 1 else 'are'} not "
                          f"among the methods ({', '.join(config.methods)}); set options of a method that runs")
    for method in config.methods:
        if is_sampler(method):
            sampler_settings(config, method)
        else:
            baselines.resolve_options(method, **method_options(config, method))


def method_options(config: BenchConfig, method: str) -> dict:
    return {key: value for m, key, value in config.options if m == method}


def sampler_settings(config: BenchConfig, method: str) -> tuple[str | None, dict, dict]:
    """(preset, overrides, resolved hyperparameters) of a sampler in this benchmark."""
    options = method_options(config, method)
    preset = options.pop("preset", None)
    overrides = dict(SAMPLER_DEFAULTS.get(method, {}))
    if config.nfe is not None:
        overrides.update(samplers.nfe_overrides(method, config.nfe))
    overrides.update(options)
    sampler = samplers.configure(method, preset, **overrides)  # validates names and values
    return preset, overrides, dataclasses.asdict(sampler)


@functools.lru_cache(maxsize=8)
def prior_identity(prior: str) -> dict:
    """Name, folder and weights sha256 of a prior (what makes two priors the same)."""
    folder = loaders.resolve(prior)
    card = json.loads((folder / "card.json").read_text())
    digest = card.get("metadata", {}).get("sha256") or loaders.sha256(folder / "weights.safetensors")
    return {"name": card["name"], "sha256": digest, "shape": card["shape"]}


def resolved_config(config: BenchConfig, method: str) -> dict:
    """Everything a task's numbers depend on, besides the file and the acceleration."""
    resolved = {"runner_version": RUNNER_VERSION, "method": method, "mask": config.mask,
                "slices": config.slices if isinstance(config.slices, str) else list(config.slices),
                "centre_fractions": "fastMRI pairing 4x/0.08, 8x/0.04"}
    if is_sampler(method):
        if config.prior is None:
            raise ConfigError(f"sampler {method!r} needs --prior (a prior name or folder)")
        preset, overrides, hyper = sampler_settings(config, method)
        resolved.update(kind="sampler", prior=prior_identity(config.prior), samples=config.samples,
                        sigma_y=config.sigma_y, preset=preset, hyperparameters=hyper, estimate="posterior mean",
                        coil_maps="centre-band low-resolution maps", scale=f"p{SCALE_PERCENTILE} of zero-filled RSS")
    else:
        # the resolved options, defaults included: a changed default is a different configuration
        resolved.update(kind="baseline", options=baselines.resolve_options(method, **method_options(config, method)))
    return resolved


def config_hash(resolved: dict) -> str:
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def software_versions() -> dict:
    versions = {"invsolve": version("invsolve"), "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "scipy": scipy.__version__, "deepinv": deepinv.__version__,
                "h5py": h5py.__version__}
    try:
        import sigpy

        versions["sigpy"] = sigpy.__version__
    except ImportError:
        pass
    return versions


# ------------------------------------------------------------------------------------------
# the grid


def list_files(config: BenchConfig) -> list[Path]:
    files = sorted((Path(p) for p in list_volumes(config.data)), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no fastMRI HDF5 files (*.h5) in {config.data}")
    if config.max_volumes is not None:
        files = files[:config.max_volumes]
    return files


def make_tasks(config: BenchConfig) -> list[Task]:
    """Every task of the grid, volume-major (so a volume's figure fills in early)."""
    check_methods(config.methods)
    hashes = {m: config_hash(resolved_config(config, m)) for m in config.methods}
    tasks = []
    for path in list_files(config):
        for acceleration in config.accelerations:
            for method in config.methods:
                tasks.append(Task(str(path), path.name, method, float(acceleration), hashes[method]))
    return tasks


def task_key(config: BenchConfig, task: Task) -> tuple:
    return db_task_key(task.volume, task.method, task.acceleration, config.mask, config.seed, task.config_hash)


# ------------------------------------------------------------------------------------------
# the work unit


def _device(config: BenchConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


@functools.lru_cache(maxsize=4)
def _load_prior(prior: str, device: str):
    return loaders.load_prior(prior, device=device)


def derived_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and machines, unlike ``hash``)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def _run_baseline(config: BenchConfig, task: Task, volume, mask: torch.Tensor) -> dict:
    start = time.perf_counter()
    recon = baselines.reconstruct(task.method, volume, mask.numpy(), **method_options(config, task.method))
    seconds = time.perf_counter() - start
    return {"recon": _numpy(recon), "std": None, "samples": None, "nfe": 0, "draws": 1, "seconds": seconds}


def _run_sampler(config: BenchConfig, task: Task, volume, mask: torch.Tensor) -> dict:
    device = _device(config)
    prior = _load_prior(config.prior, str(device))
    preset, overrides, _ = sampler_settings(config, task.method)
    start = time.perf_counter()
    parts = build_parts(volume, mask, tuple(prior.image_shape), device=device)
    problem = Problem(parts.physics, parts.y, sigma_y=config.sigma_y, prior=prior)
    generators = [torch.Generator(device=device).manual_seed(derived_seed(config.seed, task.volume, task.acceleration, j))
                  for j in range(config.samples)]
    post = samplers.sample(task.method, prior, problem, n_samples=config.samples, generator=generators,
                           preset=preset, **overrides)
    seconds = time.perf_counter() - start
    draws = post.samples.detach().cpu().double()          # (n, S, C, h, w) physical, scaled
    mean, std, per_draw = posterior_images(parts, draws)  # magnitudes (S, h, w), (S, h, w), (n, S, h, w), file units
    return {"recon": mean.numpy(), "std": std.numpy(), "samples": per_draw.numpy(), "nfe": int(post.nfe),
            "draws": config.samples, "seconds": seconds}


def run_task(config: BenchConfig, task: Task) -> dict:
    """Reconstruct and score one task; returns the ``results`` row with its slice rows and images."""
    volume = read_volume(task.path, slices=config.slices)
    if volume.target is None:
        raise DataError(f"{task.volume} has no target (a test/challenge file); the benchmark scores against "
                        "reconstruction_rss / reconstruction_esc: point --data at train or validation files")
    mask = torch.from_numpy(np.asarray(volume_mask(volume, config.mask, task.acceleration), dtype=np.float32))
    out = (_run_sampler if is_sampler(task.method) else _run_baseline)(config, task, volume, mask)
    target = np.asarray(volume.target, dtype=np.float64)
    recon = out["recon"]
    if recon.shape != target.shape:
        raise ValueError(f"{task.method} returned {recon.shape} for targets of shape {target.shape}")
    scores = metrics.volume_metrics(target, recon)
    slice_indices = [int(i) for i in _slice_indices(volume, target.shape[0])]
    data_range = float(target.max())
    slice_rows = []
    for k, index in enumerate(slice_indices):
        s = metrics.slice_metrics(target[k], recon[k], data_range)
        slice_rows.append({"volume": task.volume, "slice": index, "method": task.method,
                           "acceleration": task.acceleration, "mask": config.mask, "seed": config.seed,
                           "nmse": _f(s["nmse"]), "psnr": _f(s["psnr"]), "ssim": _f(s["ssim"]),
                           "config_hash": task.config_hash})
    oracle = None
    if out["samples"] is not None:  # best-of-N per slice: an oracle (it looks at the target), reported apart
        draws = out["samples"]
        errors = ((draws - target[None]) ** 2).reshape(draws.shape[0], draws.shape[1], -1).sum(-1)
        best = draws[errors.argmin(0), np.arange(draws.shape[1])]
        oracle = _f(metrics.volume_metrics(target, best)["psnr"])
    figure = len(slice_indices) // 2
    images = {(slice_indices[figure], "target"): target[figure], (slice_indices[figure], "recon"): recon[figure]}
    if out["std"] is not None:
        images[(slice_indices[figure], "std")] = out["std"][figure]
    return {"volume": task.volume, "slices": slice_indices, "method": task.method, "acceleration": task.acceleration,
            "mask": config.mask, "seed": config.seed, "nmse": _f(scores["nmse"]), "psnr": _f(scores["psnr"]),
            "ssim": _f(scores["ssim"]), "oracle_psnr": oracle, "seconds": float(out["seconds"]), "nfe": out["nfe"],
            "samples": out["draws"], "config_hash": task.config_hash, "config": resolved_config(config, task.method),
            "versions": software_versions(), "device": str(_device(config)) if is_sampler(task.method) else "cpu",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "slice_rows": slice_rows, "images": images}


def _f(value) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def _slice_indices(volume, n: int) -> list[int]:
    indices = [int(i) for i in volume.slice_indices]
    if len(indices) != n:
        raise DataError(f"{volume.fname}: {len(indices)} slice indices for {n} target slices")
    return indices


# ------------------------------------------------------------------------------------------
# the coordinator


def run(config: BenchConfig, db_path: str | Path, executor=None, limit: int | None = None, progress: bool = True,
        work: Callable[[BenchConfig, Task], dict] = run_task) -> dict:
    """Run every task of ``config`` not yet in the database at ``db_path``.

    :param executor: ``executors.LocalExecutor`` (default, one worker) or ``RayExecutor``.
    :param limit: stop after this many new tasks (rerun to continue).
    :returns: ``{"total", "done_before", "ran", "remaining", "claimed_elsewhere", "failed"}``:
        ``claimed_elsewhere`` counts tasks another run on the same database has taken (skipped
        here), ``failed`` lists ``{"volume", "method", "acceleration", "reason"}`` of tasks whose
        metrics came out NaN or infinite (not stored).

    Tasks are claimed in the database before they run (``ResultStore.claim``), so two runs on one
    ``db_path`` split the grid; a task stored meanwhile by another run is skipped, not an error.
    """
    executor = executor or LocalExecutor(1)
    tasks = make_tasks(config)
    with ResultStore(db_path) as store:
        completed = store.completed()
        pending = [t for t in tasks if task_key(config, t) not in completed]
        done_before = len(tasks) - len(pending)
        todo = pending if limit is None else pending[:max(0, int(limit))]
        owner = new_owner()
        claimed = store.claim([task_key(config, t) for t in todo], owner)
        busy = [t for t in todo if task_key(config, t) not in claimed]
        todo = [t for t in todo if task_key(config, t) in claimed]
        bar = _progress(len(tasks), done_before, progress)
        ran, failed = 0, []
        try:
            for task, result in executor.map(work, config, todo):
                key = task_key(config, task)
                bad = [m for m in ("nmse", "psnr", "ssim") if not math.isfinite(float(result[m]))]
                if bad:
                    failed.append({"volume": task.volume, "method": task.method, "acceleration": task.acceleration,
                                   "reason": f"{', '.join(bad)} not finite ("
                                             + ", ".join(f"{m} {result[m]}" for m in bad) + "): not stored"})
                    store.release(owner, key)
                    continue
                if store.insert(result) is not None:
                    ran += 1
                store.release(owner, key)
                if bar is not None:
                    bar.set_postfix_str(f"{task.method} {task.acceleration:g}x {task.volume} "
                                        f"PSNR {result['psnr']:.2f}", refresh=False)
                    bar.update(1)
        finally:
            store.release(owner)
            if bar is not None:
                bar.close()
        stored = store.completed()
    remaining = sum(1 for t in tasks if task_key(config, t) not in stored)
    return {"total": len(tasks), "done_before": done_before, "ran": ran, "remaining": remaining,
            "claimed_elsewhere": len(busy), "failed": failed}


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, unit="task", desc="fastMRI benchmark", dynamic_ncols=True,
                smoothing=0.1)


# ------------------------------------------------------------------------------------------
# the synthetic default


def cache_dir() -> Path:
    root = os.environ.get("INVSOLVE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                            os.path.expanduser("~/.cache"), "invsolve")
    return Path(root)


def default_data(progress: bool = True) -> str:
    """The synthetic fastMRI-layout set (written once into the cache folder); returns its held-out split."""
    out = cache_dir() / "fastmri-synth"
    wanted = {**DEFAULT_SYNTH, "seed": 0}
    if not synth.is_complete(out, wanted):  # absent, interrupted (no completion marker) or of other parameters
        if progress:
            state = "redoing the unfinished" if out.exists() else "writing the"
            print(f"no --data: {state} synthetic fastMRI-layout set in {out} (once)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
        try:
            synth.synthesize(staging, **wanted)
            if not synth.is_complete(out, wanted):  # a concurrent run may have finished it meanwhile
                if out.exists():
                    shutil.rmtree(out)  # invsolve's own cache folder, unfinished
                try:
                    staging.rename(out)
                except OSError:
                    if not synth.is_complete(out, wanted):
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(heldout_split(out))


def heldout_split(root: Path) -> Path:
    for name in ("val", "multicoil_val", "heldout", "test"):
        if (root / name).is_dir() and any((root / name).glob("*.h5")):
            return root / name
    raise FileNotFoundError(f"no held-out split (val/) with .h5 files under {root}")


def default_prior(methods: Sequence[str]) -> str | None:
    """``mri-brain64`` when it ships; ``None`` when no sampler is requested; else a clear error."""
    if not any(is_sampler(m) for m in methods):
        return None
    if DEFAULT_PRIOR in loaders.list_priors():
        return DEFAULT_PRIOR
    raise FileNotFoundError(f"the shipped MRI prior {DEFAULT_PRIOR!r} is not installed; pass --prior NAME_OR_FOLDER "
                            "(e.g. one trained with `invsolve train --data FASTMRI_TRAIN_DIR`), or run only the "
                            f"baselines (--methods {','.join(baseline_names())})")
