"""Volume table (issue 12): 3D reconstruction of a 64^3 phantom CT volume with the 2D prior ``ct-phantom64``.

Task: one held-out 3D random-ellipsoid volume (``invsolve.phantoms.heldout_volumes``, seed
``VOLUME_HELDOUT_SEED``) of 64 x 64 x 64, indexed (z, y, x); 8-view parallel-beam CT of every axial
slice (``ops.make("ct", img_size=64, views=8)`` on (B, C, D, H, W)), sigma_y = 0.1 in sinogram units
(as benchmarks/phantom). The 2D prior is applied slice-wise along the axial axis
(``SliceWisePrior(load_prior("ct-phantom64"), "axial", chunk=16, depth=64)``).

Methods: FBP; 3D TV (anisotropic TV along z, y and x by ADMM with CG inner solves:
``operators.linalg.admm_tv_step`` over dims (2, 3, 4), the same code as the samplers' TV-z step;
not ``baselines.tv``, which is 2D); uncoupled slice-wise DPS; uncoupled slice-wise DDS (tv_z = 0);
DiffusionMBIR; TPDM-style (one prior along axial + coronal); DDS-3D (TV-z). Metrics: per viewing
direction (axial, coronal, sagittal) the mean over that plane's slices of PSNR (data range 1) and
SSIM, estimates clipped to [0, 1]; seconds per volume, NFE.

Hyperparameters: the samplers' ``ct-sparse8`` presets (chosen with ``--tune`` on a training-seed
volume, seed ``VOLUME_TUNE_SEED``, 32 slices) with the step counts below. Each method's row is cached
under ``benchmarks/volume/cache/`` as soon as it is computed, so an interrupted run resumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/run.py            # the table
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/run.py --tune     # the preset grid
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/run.py --memory   # peak memory vs slices
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import invsolve as iv
import operators as ops
from invsolve.metrics import ssim
from invsolve.phantoms import VOLUME_HELDOUT_SEED, VOLUME_TUNE_SEED, random_ellipsoids
from invsolve.priors.slicewise import SliceWisePrior
from operators.linalg import TVState, admm_tv_step

HERE = Path(__file__).resolve().parent
SIGMA_Y = 0.1
SEED = 0  # sampler noise
CHUNK = 16
METHODS = {
    # name: (sampler, preset, overrides)
    "dps (slice-wise)": ("dps", "ct-sparse8", dict(steps=30)),
    "dds (slice-wise, no TV)": ("dds", "ct-sparse8", dict(tv_z=0.0)),
    "diffusionmbir": ("diffusionmbir", "ct-sparse8", dict(steps=30)),
    "diffusionmbir (official persistent duals)": ("diffusionmbir", "ct-sparse8", dict(steps=30, persist_duals=True,
                                                                                       cg_steps=1)),
    "tpdm (axial+coronal)": ("tpdm", "ct-sparse8", dict(steps=20)),
    "dds-3d (TV-z)": ("dds", "ct-sparse8", {}),
}
TV3D_GRID = (0.003, 0.01, 0.03, 0.1)
TUNE = {
    "dds": ("ct-sparse8", "tv_z", (0.1, 0.5, 2.0), {}),
    "diffusionmbir": ("ct-sparse8", "lam", (0.1, 0.5, 2.0), dict(steps=25, persist_duals=True, cg_steps=1)),
    "tpdm": ("ct-sparse8", "weight", (0.3, 1.0, 3.0), dict(steps=15)),
}


def volume(seed: int, depth: int = 64) -> torch.Tensor:
    v = random_ellipsoids(1, 64, torch.Generator().manual_seed(seed))
    start = (64 - depth) // 2
    return v[:, :, start:start + depth]


def measure(physics, truth, seed: int = 1):
    clean = physics.A(truth)
    return clean + SIGMA_Y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))


def plane_scores(truth: torch.Tensor, estimate: torch.Tensor) -> dict:
    """Per viewing direction: mean over that plane's slices of PSNR (range 1) and SSIM, clipped to [0, 1]."""
    t, e = truth[0, 0].double(), estimate.reshape(truth.shape)[0, 0].clamp(0, 1).double()
    out = {}
    for name, dim in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        ts, es = t.movedim(dim, 0), e.movedim(dim, 0)
        mse = ((ts - es) ** 2).flatten(1).mean(1).clamp_min(1e-12)
        out[f"psnr_{name}"] = float((10 * torch.log10(1 / mse)).mean())
        out[f"ssim_{name}"] = float(ssim(ts[:, None].float(), es[:, None].float(), data_range=1.0))
    return out


def tv3d(physics, y, lam: float, iterations: int = 100, rho: float = 1.0) -> torch.Tensor:
    """Anisotropic 3D TV least squares by ADMM (CG 5 inner steps), physical units, from FBP."""
    x = physics.fbp(y).clamp(0, 1)
    state = TVState()

    def normal(v):
        return physics.A_adjoint(physics.A(v))

    rhs = physics.A_adjoint(y)
    for _ in range(iterations):
        x = admm_tv_step(x, normal, rhs, state, (2, 3, 4), lam, rho, cg_iters=5)
    return x


def run_sampler(sampler, preset, overrides, prior, problem):
    post = iv.sample(sampler, prior, problem, generator=torch.Generator().manual_seed(SEED), preset=preset, **overrides)
    return post.samples[0], post.nfe, post.seconds, post.config


def table(args) -> None:
    cache = HERE / "cache" / "table"
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # nothing in the library uses the global RNG; this only pins stray library defaults
    truth = volume(VOLUME_HELDOUT_SEED)
    physics = ops.make("ct", img_size=64, views=8)
    y = measure(physics, truth)
    prior = SliceWisePrior(iv.load_prior("ct-phantom64"), "axial", chunk=CHUNK, depth=64)
    problem = iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)
    rows = []

    def cached(name, compute):
        path = cache / (name.replace(" ", "_").replace("/", "-").replace("(", "").replace(")", "").replace(",", "") + ".json")
        if path.exists():
            row = json.loads(path.read_text())
        else:
            start = time.perf_counter()
            estimate, nfe, seconds, config = compute()
            seconds = seconds if seconds is not None else time.perf_counter() - start
            row = {"method": name, "nfe": nfe, "seconds": round(seconds, 1), **plane_scores(truth, estimate),
                   "config": config}
            path.write_text(json.dumps(row, indent=1))
        print(f"{name:28s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith(("psnr", "ssim")))
              + f" nfe={row['nfe']} s={row['seconds']}", flush=True)
        rows.append(row)

    cached("fbp", lambda: (physics.fbp(y), 0, None, {}))
    lam = choose_tv3d(physics)
    cached("tv3d", lambda: (tv3d(physics, y, lam), 0, None, {"lam": lam, "iterations": 100, "rho": 1.0}))
    for name, (sampler, preset, overrides) in METHODS.items():
        if args.methods and name.split(" ")[0] not in args.methods:
            continue
        cached(name, lambda s=sampler, p=preset, o=overrides: run_sampler(s, p, o, prior, problem))
    write(rows, args, "results", f"64x64x64 held-out volume (seed {VOLUME_HELDOUT_SEED}), 8-view parallel-beam CT "
                                 f"per slice, sigma_y={SIGMA_Y}, sampler seed {SEED}, chunk {CHUNK}")


def choose_tv3d(physics) -> float:
    path = HERE / "cache" / "tv3d_lambda.json"
    if path.exists():
        return json.loads(path.read_text())["lam"]
    truth = volume(VOLUME_TUNE_SEED, 32)
    y = measure(physics, truth, seed=7)
    scores = {lam: plane_scores(truth, tv3d(physics, y, lam))["psnr_axial"] for lam in TV3D_GRID}
    lam = max(scores, key=scores.get)
    path.write_text(json.dumps({"lam": lam, "scores": scores}))
    return lam


def tune(args) -> None:
    cache = HERE / "cache" / "tune"
    cache.mkdir(parents=True, exist_ok=True)
    truth = volume(VOLUME_TUNE_SEED, 32)
    physics = ops.make("ct", img_size=64, views=8)
    y = measure(physics, truth, seed=7)
    prior = SliceWisePrior(iv.load_prior("ct-phantom64"), "axial", chunk=CHUNK, depth=32)
    problem = iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)
    rows = []
    for sampler, (preset, field, grid, extra) in TUNE.items():
        for value in grid:
            path = cache / f"{sampler}-{field}-{value}.json"
            if path.exists():
                row = json.loads(path.read_text())
            else:
                estimate, nfe, seconds, _ = run_sampler(sampler, preset, {**extra, field: value}, prior, problem)
                row = {"method": f"{sampler} {field}={value}", "nfe": nfe, "seconds": round(seconds, 1),
                       **plane_scores(truth, estimate)}
                path.write_text(json.dumps(row))
            print(row, flush=True)
            rows.append(row)
    write(rows, args, "tune", f"training-seed volume (seed {VOLUME_TUNE_SEED}), central 32 slices, 8-view CT, "
                              f"sigma_y={SIGMA_Y}; tuning grid (fewer steps for diffusionmbir/tpdm)")


def memory_point(depth: int) -> dict:
    """Peak RSS of one D(x, sigma) call with grad (DPS-style) on a (1, 1, depth, 64, 64) volume, fixed chunk."""
    torch.set_num_threads(1)
    prior = SliceWisePrior(iv.load_prior("ct-phantom64"), "axial", chunk=CHUNK, depth=depth)
    x = torch.randn(1, 1, depth, 64, 64, generator=torch.Generator().manual_seed(0))
    prior.plan(tuple(x.shape))  # probe outside the measured window
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    xg = x.requires_grad_(True)
    out = prior(xg, 1.0)
    (g,) = torch.autograd.grad(out.sum(), xg)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    volume_mib = x.numel() * 4 / 2 ** 20
    return {"slices": depth, "chunk": CHUNK, "volume_mib": round(volume_mib, 1),
            "peak_beyond_start_mib": round((peak - base) / 1024, 1),
            "peak_beyond_start_minus_4_volumes_mib": round((peak - base) / 1024 - 4 * volume_mib, 1),
            "seconds_fwd_bwd": round(seconds, 2), "seconds_per_slice": round(seconds / depth, 4)}


def memory(args) -> None:
    rows = []
    for depth in (64, 256):
        out = subprocess.run([sys.executable, __file__, "--memory-point", str(depth)], capture_output=True, text=True,
                             check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    write(rows, args, "memory", "one slice-wise D(x, sigma) call with its chunk-by-chunk backward (DPS guidance), "
                                f"64x64 slices, chunk {CHUNK}; peak RSS (ru_maxrss) beyond the RSS after setup, "
                                "each size in its own process")


def write(rows, args, stem: str, what: str) -> None:
    keys = [k for k in rows[0] if k != "config"]
    with open(HERE / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    machine = f"{platform.processor() or platform.machine()}, {platform.system()}, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} thread(s)"
    lines = [f"# benchmarks/volume {stem}", "", what, "", f"Machine: {machine}", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/run.py {' '.join(sys.argv[1:])}`", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) and k.startswith(("psnr", "ssim"))
                                       else str(r[k]) for k in keys) + " |")
    (HERE / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--memory-point", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--methods", nargs="*", default=None, help="first words of METHODS names to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_point is not None:
        print(json.dumps(memory_point(args.memory_point)))
    elif args.tune:
        tune(args)
    elif args.memory:
        memory(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
