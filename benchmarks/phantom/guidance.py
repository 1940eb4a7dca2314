"""Guidance weights at any step count: DPS and MCG under the official per-step rule, the spanned rule and ``"auto"``.

Issue 15: the official DPS/MCG weight is applied once per step, so a weight tuned at 1000 steps is
about five times too weak at 200. invsolve states the weight per step of the official 1000-step
DDPM grid (``zeta_rule="spanned"``, default) and offers ``zeta="auto"`` (a per-sample Polyak step to
the noise level, no tuning per operator). This script measures, on HELD-OUT phantoms (the presets
were chosen on training-distribution phantoms, seed 123, or are the official configs), the PSNR of
the posterior mean at several step counts for:

- ``per-step``: the task's preset with the official rule (``zeta_rule="per-step"``) and the weight in
  ``NUMERIC`` (official, or tuned under the per-step rule);
- ``spanned``: the same with the default rule;
- ``auto``: ``zeta="auto"`` (the preset's other settings).

Tasks: the phantom table's 8-view CT, deblur and inpainting (benchmarks/phantom/run.py), and one
deepinv operator invsolve has no preset for and was never tuned on: ``deepinv.physics.Tomography``
with 20 angles and ``normalize=False`` (its sinogram is about 60x larger than invsolve's CT), where
the per-step and spanned rows use DPS's default ``zeta = 1``.

Each cell is cached as JSON under ``--out/cache/guidance-<settings>/`` as soon as it is computed
(atomic write), so an interrupted run resumes.

    .venv/bin/python benchmarks/phantom/guidance.py [--steps 50 200] [--tasks ...] [--samplers dps mcg]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import invsolve as iv  # noqa: E402
from invsolve.metrics import psnr  # noqa: E402
from invsolve.phantoms import heldout_phantoms  # noqa: E402
import run as table  # noqa: E402  (benchmarks/phantom/run.py: tasks, physics, noise)

RULES = ("per-step", "spanned", "auto")
WEIGHT = {"dps": "zeta", "mcg": "alpha"}
# the numeric weight of the per-step and spanned rows: the official config where one exists (DPS
# deblur 0.3, inpainting 0.5; MCG inpainting 1), else the value invsolve tuned under the per-step rule
# on training-distribution phantoms before the spanned rule existed (DPS CT 0.5,
# benchmarks/phantom/tune_dps.md; MCG CT 0.3), else the sampler's default (1)
NUMERIC = {("dps", "ct"): 0.5, ("dps", "deblur"): 0.3, ("dps", "inpainting"): 0.5,
           ("mcg", "ct"): 0.3, ("mcg", "deblur"): 1.0, ("mcg", "inpainting"): 1.0}
DEEPINV_TASK = "deepinv-tomography20"
DEEPINV_SIGMA_Y = 0.5  # about 1 % of the sinogram's range for these phantoms


def physics_for(task: str, size: int):
    if task == DEEPINV_TASK:
        import deepinv as dinv
        return dinv.physics.Tomography(angles=20, img_width=size, circle=False, normalize=False)
    return table.make_physics(task, size)


def overrides(sampler: str, task: str, rule: str, steps: int) -> dict:
    weight = WEIGHT[sampler]
    if rule == "auto":
        return {"steps": steps, weight: "auto"}
    return {"steps": steps, weight: NUMERIC.get((sampler, task), 1.0), f"{weight}_rule": rule}


def run_cell(sampler, task, rule, steps, truth, prior, seed) -> dict:
    size = prior.shape[-1]
    physics = physics_for(task, size)
    sigma_y = DEEPINV_SIGMA_Y if task == DEEPINV_TASK else table.TASKS[task]["sigma_y"]
    y = table.measure(physics, truth, sigma_y, seed + 1)
    problem = iv.Problem(physics, y, sigma_y=sigma_y, prior=prior)
    presets = iv.samplers.get(sampler).PRESETS
    preset = None if task == DEEPINV_TASK else table.TASKS[task]["preset"]
    preset = preset if preset in presets else None
    kw = overrides(sampler, task, rule, steps)
    wall, cpu = time.perf_counter(), time.process_time()
    post = iv.sample(sampler, prior, problem, n_samples=1, preset=preset,
                     generator=[torch.Generator().manual_seed(seed)], **kw)
    mean = post.mean.clamp(0, 1)
    scores = [psnr(truth[i], mean[i], 1.0) for i in range(truth.shape[0])]
    return {"sampler": sampler, "task": task, "rule": rule, "steps": steps, "preset": preset, "overrides": kw,
            "psnr": sum(scores) / len(scores), "per_image_psnr": scores, "nfe": post.nfe,
            "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


def write_report(rows: list[dict], args, out: Path) -> None:
    lines = ["# Guidance weights at any step count (held-out phantoms)", "",
             f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}; command: "
             f"`.venv/bin/python benchmarks/phantom/guidance.py {' '.join(sys.argv[1:])}`; {time.strftime('%Y-%m-%d')}; "
             f"seed {args.seed}; {args.phantoms} held-out phantoms (seed 1000003), 1 posterior sample each, PSNR (dB) of "
             "the sample, data range 1. Rules: `per-step` = the official rule (weight at every step), `spanned` = "
             "invsolve's default (weight per official DDPM step, capped at one Polyak step), `auto` = the Polyak step "
             "itself. Presets: the task's (`ct-sparse8`, `deblur`, `inpainting`) where the sampler has one; "
             f"`{DEEPINV_TASK}`: deepinv `Tomography(angles=20, normalize=False)`, sigma_y {DEEPINV_SIGMA_Y}, no preset "
             "(DPS zeta 1 / MCG alpha 1), never tuned on. The machine was shared with other jobs: seconds are wall "
             "time under load, compare NFE.", ""]
    samplers = sorted({r["sampler"] for r in rows})
    tasks = [t for t in args.tasks if any(r["task"] == t for r in rows)]
    for sampler in samplers:
        steps = sorted({r["steps"] for r in rows if r["sampler"] == sampler})
        lines += [f"## {sampler}", "", "| task | rule | " + " | ".join(f"{s} steps" for s in steps) + " |",
                  "|---|---|" + "---|" * len(steps)]
        for task in tasks:
            for rule in RULES:
                cells = {r["steps"]: r for r in rows if (r["sampler"], r["task"], r["rule"]) == (sampler, task, rule)}
                if cells:
                    lines.append(f"| {task} | {rule} | " + " | ".join(
                        f"{cells[s]['psnr']:.2f}" if s in cells else "not run" for s in steps) + " |")
        lines.append("")
    (out / "guidance.md").write_text("\n".join(lines))
    (out / "guidance.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=[*table.TASKS, DEEPINV_TASK])
    parser.add_argument("--samplers", nargs="+", default=["dps"], choices=sorted(WEIGHT))
    parser.add_argument("--steps", nargs="+", type=int, default=[50, 200])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--phantoms", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--report", action="store_true", help="only rewrite guidance.md from the cached cells")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prior = iv.load_prior("ct-phantom64")
    truth = heldout_phantoms(args.phantoms, prior.shape[-1])
    out = Path(args.out)
    cache = out / "cache" / f"guidance-phantoms{args.phantoms}-seed{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for sampler in args.samplers:
        for task in args.tasks:
            for steps in args.steps:
                for rule in args.rules:
                    path = cache / f"{sampler}__{task}__{rule}__{steps}.json"
                    if path.exists():
                        rows.append(json.loads(path.read_text()))
                        continue
                    if args.report:
                        continue
                    row = run_cell(sampler, task, rule, steps, truth, prior, args.seed)
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(row, indent=1))
                    tmp.replace(path)
                    rows.append(row)
                    print(f"{sampler} {task:22s} {rule:8s} {steps:5d} steps PSNR {row['psnr']:.2f} "
                          f"({row['seconds']:.0f} s wall, {row['cpu_seconds']:.0f} s CPU)", flush=True)
    write_report(rows, args, out)


if __name__ == "__main__":
    main()
