"""SMC samplers (MCGdiff, FPS, TDS) against exact Gaussian-mixture posteriors, as the particle count grows.

Problems: the four exactness problems of run.py (a 3-component Gaussian mixture in dimension 16,
tests/helpers.py, observed through every other coordinate, "inpainting", or a random 8x16
Gaussian matrix, at sigma_y 0.01 and 0.1). For each sampler and particle count: the
sliced-Wasserstein ratio to the exact posterior, its noise floor (a second exact sample set), the
posterior-mean error and the 2-std coverage (invsolve.exactness) on ``--samples`` posterior
draws, each the one particle drawn from its own filter's final weights. Every sampler runs
``--steps`` levels of the ``--schedule`` grid (the same for all three, so the curves show the
particles' effect; their defaults are in docs/samplers.md). Each row is cached as JSON under
cache/smc/ as soon as it is computed, so an interrupted run resumes (delete the cache after
changing a sampler); the report (smc_particles.md, .csv, .png) covers every cached row of the
requested grid.

    .venv/bin/python benchmarks/exactness/smc_particles.py [--samplers mcgdiff fps tds]
        [--particles 1 4 16 64 256] [--steps 200] [--schedule karras] [--samples 1000] [--seed 0] [--report-only]

``--black-box`` runs the samplers on the operator called as a function only
(``exactness_report(black_box=True)``: the derivative-free EnKG), ``--name`` names the report files:

    .venv/bin/python benchmarks/exactness/smc_particles.py --samplers enkg --black-box --steps 80 \
        --particles 4 16 64 256 --samples 200 --name enkg_particles
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from invsolve.exactness import exactness_report  # noqa: E402
from helpers import linear_problems, measure, mixture  # noqa: E402

SAMPLERS = ("mcgdiff", "fps", "tds")
PARTICLES = (1, 4, 16, 64, 256)
PROBLEMS = [(name, sigma_y) for name in ("inpainting", "gaussian") for sigma_y in (0.01, 0.1)]


def row_path(cache: Path, method, name, sigma_y, particles) -> Path:
    return cache / f"{method}-{name}-{sigma_y}-p{particles}.json"


def compute(args, cache: Path) -> None:
    gm = mixture()
    for particles in args.particles:  # cheap rows of every sampler first
        for method in args.samplers:
            for name, sigma_y in PROBLEMS:
                path = row_path(cache, method, name, sigma_y, particles)
                if path.exists() or args.problems and f"{name}:{sigma_y}" not in args.problems:
                    continue
                problem = measure(gm, linear_problems()[name], sigma_y)
                r = exactness_report(method, gm, problem, n=args.samples, seed=args.seed, particles=particles,
                                     steps=args.steps, schedule=args.schedule, black_box=args.black_box)
                row = {"sampler": method, "problem": name, "sigma_y": sigma_y, "particles": particles, **r}
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(row))
                tmp.replace(path)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)


def import_csv(path: Path, cache: Path) -> int:
    """Store the rows of a committed report CSV that the cache lacks (the cache is not committed)."""
    count = 0
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for k, v in raw.items():
                try:
                    row[k] = int(v) if v.lstrip("-").isdigit() else float(v)
                except ValueError:
                    row[k] = v
            target = row_path(cache, row["sampler"], row["problem"], row["sigma_y"], row["particles"])
            if not target.exists():
                target.write_text(json.dumps(row))
                count += 1
    return count


def report(args, cache: Path, out: Path) -> None:
    rows = [json.loads(p.read_text()) for m in args.samplers for name, s in PROBLEMS for k in args.particles
            if (p := row_path(cache, m, name, s, k)).exists()]
    if not rows:
        return
    stem = out / args.name
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = (f".venv/bin/python benchmarks/exactness/smc_particles.py --samplers {' '.join(args.samplers)} "
               f"--particles {' '.join(map(str, args.particles))} --steps {args.steps} --schedule {args.schedule} "
               f"--samples {args.samples} --seed {args.seed}" + (" --black-box" if args.black_box else "")
               + ("" if args.name == "smc_particles" else f" --name {args.name}"))
    lines = [
        f"# {', '.join(args.samplers)}: exactness vs particles" + (" (operator called as a black box)" if args.black_box else ""),
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''} CPU, 1 thread per process, torch {torch.__version__}; "
        f"command: `{command}` (rows cached in cache/smc/ may come from earlier or parallel invocations of the same "
        f"command with fewer samplers); seed {args.seed}; {time.strftime('%Y-%m-%d')}.",
        "",
        f"Every sampler: {args.steps} levels of the `{args.schedule}` grid, its other hyperparameters at their defaults; "
        f"{args.samples} posterior draws, each the particle drawn from the final weights of its own filter. "
        "ratio = SW(sampler, exact) / SW(prior, exact); floor = the same ratio for a second exact sample set "
        "(the goal: ratio <= 2 x floor); coverage = fraction of exact-posterior coordinates inside the sampler "
        "mean +- 2 std (the exact posterior's own: about 0.95).",
        "",
        "| sampler | problem | sigma_y | particles | ratio | floor | ratio / floor | mean err (prior) | coverage | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['problem']} | {r['sigma_y']} | {r['particles']} | {r['ratio']:.4f} | "
                     f"{r['floor']:.4f} | {r['ratio'] / r['floor']:.2f} | {r['mean_error']:.3f} "
                     f"({r['prior_mean_error']:.2f}) | {r['coverage']:.3f} | {r['seconds']:.1f} |")
    (stem.with_suffix(".md")).write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(4 * len(PROBLEMS), 3.6), sharey=True)
    for ax, (name, sigma_y) in zip(axes, PROBLEMS):
        sub = [r for r in rows if r["problem"] == name and r["sigma_y"] == sigma_y]
        for method in args.samplers:
            pts = sorted((r["particles"], r["ratio"]) for r in sub if r["sampler"] == method)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        if sub:
            floor = sum(r["floor"] for r in sub) / len(sub)
            ax.axhline(floor, color="k", ls="--", lw=1, label="noise floor")
            ax.axhline(2 * floor, color="k", ls=":", lw=1, label="2 x floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{name}, sigma_y {sigma_y}")
        ax.set_xlabel("particles per posterior sample")
    axes[0].set_ylabel("SW ratio to the exact posterior")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--particles", nargs="+", type=int, default=list(PARTICLES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--schedule", default="karras")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--report-only", action="store_true", help="write the report from cached rows only")
    parser.add_argument("--black-box", action="store_true", help="the operator as a function only (derivative-free samplers)")
    parser.add_argument("--name", default="smc_particles", help="stem of the report files")
    parser.add_argument("--problems", nargs="+", default=None, metavar="NAME:SIGMA",
                        help="compute only these problems (e.g. inpainting:0.01); the report covers every cached row")
    parser.add_argument("--import-csv", default=None, metavar="CSV",
                        help="first store the rows of a committed report CSV that the cache lacks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    cache = out / "cache" / "smc" / (f"steps{args.steps}-{args.schedule}-samples{args.samples}-seed{args.seed}"
                                     + ("-blackbox" if args.black_box else ""))
    cache.mkdir(parents=True, exist_ok=True)
    if args.import_csv:
        print(f"imported {import_csv(Path(args.import_csv), cache)} rows from {args.import_csv}", flush=True)
    if not args.report_only:
        compute(args, cache)
    report(args, cache, out)


if __name__ == "__main__":
    main()
