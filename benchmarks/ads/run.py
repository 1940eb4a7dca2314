"""Active Diffusion Subsampling (issue 16): lines chosen during sampling against fixed masks.

Held-out brains (``invsolve.priors.datasets.brain_heldout``: real scans of individual brains, never
seen in training), the shipped ``mri-brain64`` prior, single-coil Cartesian MRI with complex
Gaussian k-space noise ``SIGMA_Y`` per coordinate (seeded per slice). For each acceleration
(4x: 16 of 64 columns with 5 ACS; 8x: 8 with 3 ACS) three masks measure exactly the same number of
columns and the same ACS block:

- ``equispaced``: the remaining columns evenly spaced over the non-ACS columns;
- ``random``: the remaining columns uniformly at random (seeded per slice);
- ``ads (variance)``: chosen during sampling by ``invsolve.acquisition.active_sample``.

Every mask is reconstructed by the same sampler: DPS, preset ``mri-4x``, ``N_SAMPLES`` posterior
samples per slice (for ADS they are the particles that share the mask), the same generators. Cell:
PSNR / SSIM of the posterior mean (clamped to [0, 1]) against the truth, mean over slices.
Rows are cached under ``cache/`` as soon as computed (resumable); ``results.md`` and
``results.json`` are rewritten from the cache.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ads/run.py [--slices 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import invsolve as iv
from invsolve.acquisition import acs_columns, active_sample
from invsolve.metrics import psnr, ssim
from invsolve.priors.datasets import brain_heldout
from operators.mri import SingleCoilMRI

HERE = Path(__file__).resolve().parent
SIGMA_Y = 0.01
N_SAMPLES = 4
SAMPLER, PRESET = "dps", "mri-4x"
ACCELERATIONS = {"4x": (16, 5), "8x": (8, 3)}  # lines, acs
MASKS = ("equispaced", "random", "ads (variance)")


def slice_indices(n_total: int, n: int) -> list[int]:
    """``n`` slices spread evenly over the held-out set (both scans represented)."""
    return [round((k + 0.5) * n_total / n) for k in range(n)]


def fixed_mask(kind: str, width: int, lines: int, acs: int, generator: torch.Generator) -> torch.Tensor:
    centre = acs_columns(width, acs)
    outside = [c for c in range(width) if c not in centre]
    n = lines - acs
    if kind == "equispaced":
        chosen = [outside[int((k + 0.5) * len(outside) / n)] for k in range(n)]
    else:
        chosen = [outside[i] for i in torch.randperm(len(outside), generator=generator)[:n].tolist()]
    mask = torch.zeros(width, dtype=torch.bool)
    mask[centre + chosen] = True
    return mask


def full_kspace(truth: torch.Tensor, seed: int) -> torch.Tensor:
    H, W = truth.shape[-2:]
    clean = SingleCoilMRI(mask=torch.ones(H, W), img_size=(H, W)).A(torch.cat([truth, torch.zeros_like(truth)], dim=1))
    return clean + SIGMA_Y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))


def generators(seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + 1000 * j) for j in range(N_SAMPLES)]


def reconstruct(prior, truth: torch.Tensor, kind: str, lines: int, acs: int, seed: int) -> dict:
    H, W = truth.shape[-2:]
    kspace = full_kspace(truth, seed)
    if kind.startswith("ads"):
        out = active_sample(prior, kspace, (H, W), lines=lines, acs=acs, sigma_y=SIGMA_Y, sampler=SAMPLER,
                            preset=PRESET, n_samples=N_SAMPLES, generator=generators(seed), strategy="variance")
        post, mask = out.posterior, out.mask
    else:
        mask = fixed_mask(kind, W, lines, acs, torch.Generator().manual_seed(seed))
        physics = SingleCoilMRI(mask=mask.float().expand(H, W), img_size=(H, W))
        problem = iv.Problem(physics, kspace * physics.mask, sigma_y=SIGMA_Y, prior=prior)
        post = iv.sample(SAMPLER, prior, problem, n_samples=N_SAMPLES, generator=generators(seed), preset=PRESET)
    estimate = post.mean.reshape(truth.shape).clamp(0, 1)
    return {"psnr": psnr(truth[0], estimate[0], 1.0), "ssim": ssim(truth[0], estimate[0], 1.0),
            "lines": int(mask.sum()), "columns": torch.nonzero(mask).flatten().tolist(), "nfe": post.nfe}


def write_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def cell(cache: Path, prior, truth, index: int, accel: str, kind: str) -> dict:
    path = cache / f"{accel}__{kind.split()[0]}__slice{index}.json"
    if path.exists():
        return json.loads(path.read_text())
    lines, acs = ACCELERATIONS[accel]
    cpu, wall = time.process_time(), time.perf_counter()
    row = {"acceleration": accel, "mask": kind, "slice": index,
           **reconstruct(prior, truth, kind, lines, acs, seed=index),
           "cpu_seconds": round(time.process_time() - cpu, 1), "wall_seconds": round(time.perf_counter() - wall, 1),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"}
    write_atomic(path, row)
    print({k: v for k, v in row.items() if k != "columns"}, flush=True)
    return row


def report(rows: list[dict], indices: list[int], out: Path) -> None:
    lines = ["# Active Diffusion Subsampling against fixed masks with the same line count", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ads/run.py --slices {len(indices)}`; held-out "
             f"brain slices {indices} of `brain_heldout(64)`; `mri-brain64` prior; sampler {SAMPLER} preset "
             f"`{PRESET}`, {N_SAMPLES} posterior samples per slice (seeds slice + 1000 j); complex k-space noise "
             f"sigma {SIGMA_Y} (seed = slice index); random masks seeded by the slice index. Machine and date per "
             "row in results.json.", "",
             "| acceleration | lines (ACS) | mask | PSNR | SSIM | NFE / sample | CPU s / slice |", "|---|---|---|---|---|---|---|"]
    for accel, (n, acs) in ACCELERATIONS.items():
        for kind in MASKS:
            group = [r for r in rows if r["acceleration"] == accel and r["mask"] == kind]
            if group:
                mean = lambda key: sum(r[key] for r in group) / len(group)  # noqa: E731
                lines.append(f"| {accel} | {n} ({acs}) | {kind} | {mean('psnr'):.2f} | {mean('ssim'):.3f} | "
                             f"{group[0]['nfe']} | {mean('cpu_seconds'):.0f} |")
    lines += ["", "Per slice (PSNR):", "", "| acceleration | mask | " + " | ".join(f"slice {i}" for i in indices) + " |",
              "|---|---|" + "---|" * len(indices)]
    for accel in ACCELERATIONS:
        for kind in MASKS:
            by = {r["slice"]: r for r in rows if r["acceleration"] == accel and r["mask"] == kind}
            if by:
                lines.append(f"| {accel} | {kind} | " + " | ".join(f"{by[i]['psnr']:.2f}" if i in by else "-"
                                                                  for i in indices) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_atomic(out / "results.json", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = HERE / "cache"
    cache.mkdir(exist_ok=True)
    prior = iv.load_prior("mri-brain64")
    brains = brain_heldout(64)
    indices = slice_indices(brains.shape[0], args.slices)
    rows = [cell(cache, prior, brains[i:i + 1], i, accel, kind)
            for accel in ACCELERATIONS for i in indices for kind in MASKS]
    report(rows, indices, HERE)


if __name__ == "__main__":
    main()
