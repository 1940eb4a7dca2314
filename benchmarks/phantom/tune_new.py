"""Choose presets of the new samplers (DDRM, DDNM, DDS, MCGdiff, FPS, TDS) for the phantom tasks.

Only on training-distribution phantoms: ``run.py``'s ``training_problem`` (``random_ellipses``
seed 123, noise seed 1; the held-out phantoms that ``run.py`` reports on are never used here),
the task's operator and sigma_y from ``run.py``'s ``TASKS``. For each (sampler, task) a small grid
of the sampler's main hyperparameters (``GRIDS``; NFE <= 100 for DDRM / DDNM, a 200-NFE budget
split into steps x particles for the SMC samplers) is run with generator seed 0; the setting with
the best PSNR of the posterior mean (data range 1, mean over the phantoms; ties: fewer NFE) is
the chosen one. Results are appended to ``tune_new.json`` (a setting already there is not re-run)
and ``tune_new.md`` is rewritten from it.

    .venv/bin/python benchmarks/phantom/tune_new.py ddrm:ct ddnm:ct dds:inpainting ...
    .venv/bin/python benchmarks/phantom/tune_new.py --report     # rewrite tune_new.md only
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import invsolve as iv
from invsolve.metrics import psnr
from run import TASKS, training_problem

HERE = Path(__file__).resolve().parent
# exact SVD of 8-view CT at 64^2: the dense backend assembles the (728 x 4096) matrix (4096 forward
# calls) and takes its thin SVD in float64, instead of refusing above the default dense_max 1024
CT_DENSE = dict(dense_max=4096)
GRIDS = {
    ("ddrm", "ct"): [dict(steps=20, eta=0.85, **CT_DENSE), dict(steps=50, eta=0.85, **CT_DENSE),
                     dict(steps=100, eta=0.85, **CT_DENSE), dict(steps=20, eta=0.5, **CT_DENSE),
                     dict(steps=20, eta=1.0, **CT_DENSE),
                     dict(steps=100, eta=1.0, **CT_DENSE)],  # the best steps with the best eta
    ("ddnm", "ct"): [dict(steps=100, eta=0.85), dict(steps=50, eta=0.85), dict(steps=100, eta=0.5),
                     dict(steps=100, eta=1.0)],
    ("dds", "deblur"): [dict(steps=50, eta=0.85, cg_steps=2, tv_z=0.0), dict(steps=50, eta=0.85, cg_steps=5, tv_z=0.0),
                        dict(steps=50, eta=0.85, cg_steps=10, tv_z=0.0)],
    ("dds", "inpainting"): [dict(steps=50, eta=0.85, cg_steps=2, tv_z=0.0),
                            dict(steps=50, eta=0.85, cg_steps=5, tv_z=0.0),
                            dict(steps=50, eta=0.85, cg_steps=10, tv_z=0.0),
                            # the mask's CG system is diagonal (exact after 1-2 steps): eta instead
                            dict(steps=50, eta=0.5, cg_steps=2, tv_z=0.0), dict(steps=50, eta=1.0, cg_steps=2, tv_z=0.0)],
    ("mcgdiff", "inpainting"): [dict(steps=50, particles=4), dict(steps=25, particles=8)],
    ("mcgdiff", "ct"): [dict(steps=50, particles=4, **CT_DENSE), dict(steps=25, particles=8, **CT_DENSE)],
    ("fps", "inpainting"): [dict(steps=50, particles=4), dict(steps=20, particles=10)],
    ("fps", "ct"): [dict(steps=50, particles=4), dict(steps=20, particles=10)],
    ("fps", "deblur"): [dict(steps=50, particles=4), dict(steps=20, particles=10)],
    ("tds", "inpainting"): [dict(steps=100, particles=2), dict(steps=50, particles=4)],
    ("tds", "ct"): [dict(steps=100, particles=2), dict(steps=50, particles=4)],
    ("tds", "deblur"): [dict(steps=100, particles=2), dict(steps=50, particles=4)],
}


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def run_grid(sampler: str, task: str, grid: list[dict], n: int, samples: int, store: Path) -> None:
    prior = iv.load_prior("ct-phantom64")
    truth, problem, baseline = training_problem(task, n, prior)
    base = sum(psnr(truth[i], baseline[i], 1.0) for i in range(n)) / n
    for overrides in grid:
        entries = load(store)
        if any(e["sampler"] == sampler and e["task"] == task and e["overrides"] == overrides
               and e["phantoms"] == n and e["samples"] == samples for e in entries):
            continue
        post = iv.sample(sampler, prior, problem, n_samples=samples, generator=torch.Generator().manual_seed(0),
                         **overrides)
        mean = post.mean.clamp(0, 1)
        values = [psnr(truth[i], mean[i], 1.0) for i in range(n)]
        entry = {"sampler": sampler, "task": task, "overrides": overrides, "nfe": post.nfe,
                 "psnr_mean": sum(values) / n, "psnr_per_phantom": values, "baseline_psnr": base,
                 "seconds": post.seconds, "phantoms": n, "samples": samples, "date": time.strftime("%Y-%m-%d"),
                 "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"}
        print(f"{sampler} {task} {overrides} PSNR {entry['psnr_mean']:.2f} "
              f"({', '.join(f'{v:.2f}' for v in values)}) NFE {post.nfe} {post.seconds:.0f}s", flush=True)
        store.write_text(json.dumps(load(store) + [entry], indent=1))


def chosen(entries: list[dict]) -> dict:
    return max(entries, key=lambda e: (round(e["psnr_mean"], 2), -e["nfe"]))


def report(store: Path, out: Path) -> None:
    entries = load(store)
    lines = ["# Presets of DDRM, DDNM, DDS, MCGdiff, FPS, TDS for the phantom tasks (training phantoms)", "",
             "`benchmarks/phantom/tune_new.py`: `random_ellipses` phantoms of seed 123 (training distribution, "
             "never the held-out seed 1000003 of `run.py`), noise seed 1, the task's operator and sigma_y from "
             "`run.py`; generator seed 0; PSNR (dB, data range 1) of the posterior mean, clamped to [0, 1]. "
             "Baseline: FBP for CT, the pseudo-inverse otherwise (unclamped), on the same phantoms. "
             "**Bold**: the chosen setting (best PSNR at 0.01 dB; ties: fewer NFE, then the first listed). NFE "
             "counts denoiser evaluations per posterior sample, every particle included. Seconds: one CPU "
             "thread on a shared, loaded 2-core machine (load 5-10), so only their ratios mean anything.", ""]
    for sampler, task in dict.fromkeys((e["sampler"], e["task"]) for e in entries):
        group = [e for e in entries if e["sampler"] == sampler and e["task"] == task]
        best = chosen(group)
        first = group[0]
        lines += [f"## {sampler} on {task} (`{TASKS[task]['operator']}`, sigma_y {TASKS[task]['sigma_y']})", "",
                  f"{first['phantoms']} phantoms x {first['samples']} sample(s); {first['machine']}; {first['date']}; "
                  f"baseline {first['baseline_psnr']:.2f} dB.", "",
                  "| overrides | NFE | PSNR of mean (dB) | per phantom (dB) | seconds |", "|---|---|---|---|---|"]
        for e in group:
            spec = ", ".join(f"{k}={v!r}" for k, v in e["overrides"].items())
            mark = "**" if e is best else ""
            lines.append(f"| {mark}`{spec}`{mark} | {e['nfe']} | {mark}{e['psnr_mean']:.2f}{mark} | "
                         f"{' / '.join(f'{v:.2f}' for v in e['psnr_per_phantom'])} | {e['seconds']:.0f} |")
        lines.append("")
    missing = [f"{sampler}:{task}" for sampler, task in GRIDS
               if not any(e["sampler"] == sampler and e["task"] == task for e in entries)]
    if missing:
        lines += ["Grids in `GRIDS` not run yet (no preset chosen for these, so `run.py` runs the sampler at its "
                  "defaults there, or not at all): " + ", ".join(missing) + ".", ""]
    out.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="*", help="sampler:task, e.g. ddrm:ct (grids in GRIDS)")
    parser.add_argument("--phantoms", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--store", default=str(HERE / "tune_new.json"))
    parser.add_argument("--out", default=str(HERE / "tune_new.md"))
    parser.add_argument("--report", action="store_true", help="only rewrite the markdown from the store")
    args = parser.parse_args()
    store = Path(args.store)
    if not args.report:
        for pair in args.pairs:
            sampler, task = pair.split(":")
            run_grid(sampler, task, GRIDS[(sampler, task)], args.phantoms, args.samples, store)
    report(store, Path(args.out))


if __name__ == "__main__":
    main()
