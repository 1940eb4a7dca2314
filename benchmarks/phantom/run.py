"""Image table: every sampler on the shipped ``ct-phantom64`` prior, against FBP/pseudo-inverse and TV.

Tasks (64x64 held-out phantoms, seed ``HELDOUT_SEED``, never seen in training, plus Shepp-Logan):

- ``ct``: 8-view parallel-beam CT (``ct-sparse8``), sigma_y = 0.1 in sinogram units; sampler preset ``ct-sparse8``;
- ``deblur``: ``deblur-gauss61`` (61x61, std 3, DPS/DAPS), sigma_y = 0.025 ([0, 1] units, i.e. the official
  0.05 on [-1, 1]); sampler preset ``deblur``;
- ``inpainting``: ``inpaint-random70`` (70 % of pixels missing), sigma_y = 0.025; sampler preset ``inpainting``.

A sampler without the task's preset runs at its defaults; for ``deblur`` and ``inpainting`` the
preset's NFE is replaced by ``--nfe`` (``nfe_overrides``; the other hyperparameters are the preset's)
so the table stays affordable on CPU. The resolved configuration of every run is in ``results.json``.
The TV weight is chosen per task on training-distribution phantoms (seed 123) from a small grid.
Mean-of-samples is the reported estimate; best-of-N (oracle: it picks by PSNR against the truth) is
reported separately and labelled as such.

Each (task, method) result is cached under ``--out/cache/<settings>`` as soon as it is computed, so an
interrupted run resumes where it stopped (delete a cached file to recompute it after changing a sampler).

    .venv/bin/python benchmarks/phantom/run.py [--tasks ct deblur inpainting] [--samplers dps daps ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import invsolve as iv
import operators as ops
from invsolve.baselines import fbp, least_squares, tv
from invsolve.metrics import psnr, ssim
from invsolve.phantoms import heldout_phantoms, random_ellipses, shepp_logan

HERE = Path(__file__).resolve().parent
TASKS = {
    "ct": dict(operator="ct-sparse8", sigma_y=0.1, preset="ct-sparse8", cap_nfe=False),
    "deblur": dict(operator="deblur-gauss61", sigma_y=0.025, preset="deblur", cap_nfe=True),
    "inpainting": dict(operator="inpaint-random70", sigma_y=0.025, preset="inpainting", cap_nfe=True),
}
TV_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def make_physics(task: str, size: int):
    name = TASKS[task]["operator"]
    return ops.make(name, img_size=size) if name != "deblur-gauss61" else ops.make(name)


def measure(physics, truth, sigma_y, seed):
    clean = physics.A(truth)
    return clean + sigma_y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed), dtype=clean.dtype)


def classical(task: str, physics, y):
    """The classical row of a task's table: FBP for CT, the least-squares ``A_dagger`` otherwise."""
    return fbp(physics, y) if task == "ct" else least_squares(physics, y)


def training_problem(task: str, n: int, prior):
    """(truth, problem, baseline) on ``n`` training-distribution phantoms (seed 123, never the
    held-out set), noise seed 1: what the preset tune scripts choose settings on."""
    truth = random_ellipses(n, prior.shape[-1], torch.Generator().manual_seed(123))
    physics = make_physics(task, prior.shape[-1])
    sigma_y = TASKS[task]["sigma_y"]
    y = measure(physics, truth, sigma_y, 1)
    baseline = classical(task, physics, y)  # FBP for CT, the pseudo-inverse otherwise (unclamped)
    return truth, iv.Problem(physics, y, sigma_y=sigma_y, prior=prior), baseline


def scores(truth, images) -> dict:
    n = truth.shape[0]
    per = [(psnr(truth[i], images[i], 1.0), ssim(truth[i], images[i], 1.0)) for i in range(n)]
    held = per[:-1]
    return {"psnr_heldout": sum(p for p, _ in held) / len(held), "ssim_heldout": sum(s for _, s in held) / len(held),
            "psnr_shepp_logan": per[-1][0], "ssim_shepp_logan": per[-1][1], "per_image_psnr": [p for p, _ in per]}


def choose_tv_lambda(task: str, size: int, seed: int) -> tuple[float, dict]:
    """TV weight with the best mean PSNR on 4 training-distribution phantoms (seed 123)."""
    truth = random_ellipses(4, size, torch.Generator().manual_seed(123))
    physics = make_physics(task, size)
    y = measure(physics, truth, TASKS[task]["sigma_y"], seed + 7)
    grid = {}
    for lam in TV_GRID:
        x = tv(physics, y, lam=lam, iterations=150)
        grid[lam] = sum(psnr(truth[i], x[i], 1.0) for i in range(truth.shape[0])) / truth.shape[0]
    return max(grid, key=grid.get), grid


def run_task(task: str, samplers: list[str], args, cache: Path) -> list[dict]:
    prior = iv.load_prior("ct-phantom64")
    size = prior.shape[-1]
    truth = torch.cat([heldout_phantoms(args.phantoms, size), shepp_logan(size)])
    physics = make_physics(task, size)
    spec = TASKS[task]
    y = measure(physics, truth, spec["sigma_y"], args.seed + 1)
    problem = iv.Problem(physics, y, sigma_y=spec["sigma_y"], prior=prior)
    rows = []

    def cached(method: str, compute):
        path = cache / f"{task}__{method}.json"
        if path.exists():
            return json.loads(path.read_text())
        row = {"task": task, "method": method, **compute()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, indent=1))
        tmp.replace(path)
        print(f"{task:10s} {method:22s} PSNR {row['psnr_heldout']:.2f} SSIM {row['ssim_heldout']:.3f} "
              f"{row['seconds']:.1f}s NFE {row['nfe']}", flush=True)
        return row

    def baseline_pinv():
        start = time.perf_counter()
        x = classical(task, physics, y).clamp(0, 1)
        return {**scores(truth, x), "seconds": time.perf_counter() - start, "nfe": 0, "config": {}}

    def baseline_tv():
        lam, grid = choose_tv_lambda(task, size, args.seed)
        start = time.perf_counter()
        x = tv(physics, y, lam=lam, iterations=150)
        return {**scores(truth, x), "seconds": time.perf_counter() - start, "nfe": 0,
                "config": {"lam": lam, "grid_psnr_training_seed": grid}}

    rows.append(cached("FBP" if task == "ct" else "pseudo-inverse", baseline_pinv))
    rows.append(cached("TV", baseline_tv))
    for name in samplers:
        def sampler_run(name=name):
            presets = getattr(iv.samplers.get(name), "PRESETS", {})
            preset = spec["preset"] if spec["preset"] in presets else None
            overrides = iv.samplers.nfe_overrides(name, args.nfe) if spec["cap_nfe"] else {}
            post = iv.sample(name, prior, problem, n_samples=args.samples, preset=preset,
                             generator=[torch.Generator().manual_seed(args.seed + 100 * j) for j in range(args.samples)],
                             **overrides)
            mean = post.mean.clamp(0, 1)
            best = torch.stack([max((post.samples[j, i].clamp(0, 1) for j in range(args.samples)),
                                    key=lambda s: psnr(truth[i], s, 1.0)) for i in range(truth.shape[0])])
            oracle = scores(truth, best)
            return {**scores(truth, mean), "seconds": post.seconds, "nfe": post.nfe, "preset": preset,
                    "overrides": overrides, "config": post.config,
                    "oracle_best_of_n_psnr_heldout": oracle["psnr_heldout"]}
        rows.append(cached(name, sampler_run))
    return rows


def write_tables(rows: list[dict], args, out: Path) -> None:
    lines = ["# Samplers on the shipped ct-phantom64 prior (held-out phantoms)", "",
             f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"command: `.venv/bin/python benchmarks/phantom/run.py {' '.join(sys.argv[1:])}`; "
             f"{time.strftime('%Y-%m-%d')}; seed {args.seed}.", "",
             f"{args.phantoms} held-out phantoms (seed 1000003) + Shepp-Logan, 64x64, data range 1. Samplers: "
             f"mean of {args.samples} posterior samples (each with its own generator); 'best-of-N (oracle)' picks "
             "per image the sample closest to the truth and is NOT a valid estimate, shown only for comparison "
             "with papers that report it. Tasks: " + "; ".join(
                 f"{t}: `{s['operator']}`, sigma_y {s['sigma_y']}, sampler preset `{s['preset']}`"
                 + (f" with NFE capped at {args.nfe}" if s["cap_nfe"] else "") for t, s in TASKS.items()), ""]
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        base = next(r for r in task_rows if r["method"] in ("FBP", "pseudo-inverse"))
        tv_row = next(r for r in task_rows if r["method"] == "TV")
        lines += [f"## {task}", "",
                  "| method | PSNR held-out | SSIM held-out | PSNR Shepp-Logan | SSIM Shepp-Logan | best-of-N PSNR (oracle) "
                  "| seconds | NFE | beats FBP/pinv | beats TV |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in task_rows:
            sampler = r["method"] not in ("FBP", "pseudo-inverse", "TV")
            oracle = f"{r['oracle_best_of_n_psnr_heldout']:.2f}" if sampler else "-"
            beats = (("yes" if r["psnr_heldout"] > base["psnr_heldout"] else "**no**"),
                     ("yes" if r["psnr_heldout"] > tv_row["psnr_heldout"] else "no")) if sampler else ("-", "-")
            label = r["method"] + (f" (`{r['preset']}`)" if sampler and r.get("preset") else (" (defaults)" if sampler else ""))
            if r["method"] == "TV":
                label += f" (lambda {r['config']['lam']})"
            lines.append(f"| {label} | {r['psnr_heldout']:.2f} | {r['ssim_heldout']:.3f} | {r['psnr_shepp_logan']:.2f} "
                         f"| {r['ssim_shepp_logan']:.3f} | {oracle} | {r['seconds']:.1f} | {r['nfe']} | {beats[0]} | {beats[1]} |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--nfe", type=int, default=200, help="NFE for the deblur and inpainting tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    samplers = args.samplers or iv.samplers.names()
    out = Path(args.out)
    cache = out / "cache" / f"phantoms{args.phantoms}-samples{args.samples}-nfe{args.nfe}-seed{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        rows += run_task(task, samplers, args, cache)
    write_tables(rows, args, out)


if __name__ == "__main__":
    main()
