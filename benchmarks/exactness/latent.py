"""Latent solvers (issue 17) against exact posteriors through a linear decoder.

Prior: ``tests/helpers.py::latent_mixture`` -- a 3-component Gaussian mixture over 12 latents behind
a random linear decoder to 16 pixels (singular values 0.5 to 2, a bias), so the image posterior is
exact (``invsolve.priors.latent_mixture``). Problems: the exactness suite's two (every other pixel,
"inpainting", or a random 8 x 16 Gaussian matrix) at sigma_y 0.01 and 0.1. Each sampler runs on the
latent prior (its denoiser is the latent mixture's; ``invsolve.sample`` decodes) with the settings
in ``SETTINGS``; for comparison every sampler also runs on the pixel mixture of the exactness suite
(``mixture()``, same problems). Figures as ``invsolve.exactness``: SW ratio to the exact posterior,
its noise floor, posterior-mean error (and the prior's), coverage, NFE.
Rows are cached under ``cache/latent/`` as soon as computed (resumable); ``latent.md`` / ``latent.csv``
are rewritten from the cache.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exactness/latent.py [--samplers flair resample dflow flowdps]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from invsolve.exactness import exactness_report  # noqa: E402
from helpers import latent_mixture, linear_problems, measure, mixture  # noqa: E402

# sampler: (overrides, posterior draws); defaults are the official settings except where a CPU budget is noted
SETTINGS = {
    "flowdps": ({}, 1000),
    "flair": ({}, 1000),
    "resample": ({}, 500),  # official 500 DDIM steps
    "dflow": (dict(iterations=7), 100),  # PnP-Flow's deblurring budget (7 L-BFGS calls of 20), 100 draws
}
PROBLEMS = [(name, sigma_y) for name in ("inpainting", "gaussian") for sigma_y in (0.01, 0.1)]
PRIORS = ("latent", "pixel")


def cell(cache: Path, method: str, prior_kind: str, name: str, sigma_y: float, seed: int) -> dict:
    path = cache / f"{method}-{prior_kind}-{name}-{sigma_y}.json"
    if path.exists():
        return json.loads(path.read_text())
    overrides, n = SETTINGS[method]
    prior = latent_mixture() if prior_kind == "latent" else mixture()
    problem = measure(prior, linear_problems()[name], sigma_y)
    cpu = time.process_time()
    report = exactness_report(method, prior, problem, n=n, seed=seed, **overrides)
    row = {"method": method, "prior": prior_kind, "problem": name, "sigma_y": sigma_y, "samples": n,
           "overrides": json.dumps(overrides), **{k: v for k, v in report.items() if k != "method"},
           "cpu_seconds": round(time.process_time() - cpu, 1), "seed": seed,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(row, indent=1))
    os.replace(tmp, path)
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return row


def report(rows: list[dict], seed: int) -> None:
    lines = ["# Latent solvers against exact posteriors through a linear decoder", "",
             "Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exactness/latent.py`; seed "
             f"{seed}; prior `latent_mixture()` (12 latents -> 16 pixels) or, for comparison, the pixel "
             "`mixture()` of the exactness suite; settings per sampler in `SETTINGS` (overrides column). "
             "ratio = SW(sampler, exact) / SW(prior, exact); floor = the same for a second exact set; "
             "mean err = ||posterior mean - exact mean|| (the prior mean's in brackets); coverage of exact draws "
             "by the sampler's mean +- 2 std (exact: about 0.95). Machine and date per row in latent.csv.", "",
             "| sampler | prior | problem | sigma_y | overrides | draws | NFE | ratio | floor | mean err (prior) | "
             "coverage | CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['prior']} | {r['problem']} | {r['sigma_y']} | `{r['overrides']}` | "
                     f"{r['samples']} | {r['nfe']:.0f} | {r['ratio']:.3f} | {r['floor']:.3f} | "
                     f"{r['mean_error']:.3f} ({r['prior_mean_error']:.2f}) | {r['coverage']:.3f} | "
                     f"{r['cpu_seconds']:.0f} |")
    (HERE / "latent.md").write_text("\n".join(lines) + "\n")
    with open(HERE / ".latent.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(HERE / ".latent.csv.tmp", HERE / "latent.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=list(PRIORS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = HERE / "cache" / "latent"
    cache.mkdir(parents=True, exist_ok=True)
    for method in args.samplers:
        for prior_kind in args.priors:
            for name, sigma_y in PROBLEMS:
                cell(cache, method, prior_kind, name, sigma_y, args.seed)
    rows = [json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))]
    order = {m: i for i, m in enumerate(SETTINGS)}
    rows.sort(key=lambda r: (order.get(r["method"], 99), PRIORS.index(r["prior"]), r["problem"], r["sigma_y"]))
    report(rows, args.seed)


if __name__ == "__main__":
    main()
