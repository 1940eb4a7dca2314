"""Choose the fastMRI benchmark's method settings on the synthetic set's *training* split.

Every candidate setting runs through the benchmark runner itself (``invsolve.fastmri.runner.run``,
the same masks, scaling, coil maps and metrics as ``invsolve bench fastmri``) on the first
``--volumes`` training volumes (never the held-out split the report scores), at 4x and 8x, and
the mean per-volume PSNR / SSIM per setting is written to ``tune.md``. Rows go to one SQLite
file (``--db``, resumable: a rerun skips finished settings).

    .venv/bin/python benchmarks/fastmri/tune.py --methods sense tv l1-wavelet
    .venv/bin/python benchmarks/fastmri/tune.py --methods dps daps --prior mri-brain64

Grids are ``GRIDS`` below (method -> list of option dicts); ``--grid METHOD KEY=V,V,...`` replaces one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sqlite3
import time
from pathlib import Path

import torch

from invsolve.fastmri.executors import make_executor
from invsolve.fastmri.runner import DEFAULT_SYNTH, BenchConfig, cache_dir, config_hash, resolved_config, run
from invsolve.fastmri.synth import synthesize

GRIDS: dict[str, dict[str, list]] = {
    "sense": {"max_iter": [10, 30, 100]},
    "tv": {"lam": [0.003, 0.01, 0.03], "iterations": [60, 200]},
    "l1-wavelet": {"lamda": [0.0003, 0.001, 0.003]},
    "dps": {"zeta": [0.3, 1.0, 3.0, 10.0]},
    "daps": {"lr": [1e-5, 1e-4, 1e-3]},
}

HERE = Path(__file__).parent


def expand(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def parse_grid(items: list[str]) -> dict[str, list]:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        grid[key] = [json.loads(v) for v in values.split(",")]
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--grid", nargs="+", action="append", default=[], metavar=("METHOD", "KEY=V,V"))
    parser.add_argument("--prior", default=None)
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--slices", default="middle")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--nfe", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--db", default=str(HERE / "cache" / "tune.sqlite"))
    parser.add_argument("--out", default=str(HERE / "tune.md"))
    args = parser.parse_args()
    grids = dict(GRIDS)
    for method, *items in args.grid:
        grids[method] = parse_grid(items)

    root = cache_dir() / "fastmri-synth"
    if not any(root.rglob("*.h5")):
        synthesize(root, **DEFAULT_SYNTH, seed=0)
    train = root / "multicoil_train"
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    executor = make_executor("local", workers=args.workers, threads=args.threads)
    start = time.time()
    settings = []  # (method, options, config hash)
    for method in args.methods:
        for options in expand(grids[method]):
            config = BenchConfig(data=str(train), methods=(method,), prior=args.prior, slices=args.slices,
                                 samples=args.samples, nfe=args.nfe, max_volumes=args.volumes, device="cpu",
                                 options=tuple((method, k, v) for k, v in options.items()))
            run(config, args.db, executor=executor, progress=False)
            settings.append((method, options, config_hash(resolved_config(config, method))))
            print(method, options, "done", flush=True)
    write_table(args, settings, time.time() - start)


def write_table(args, settings: list[tuple[str, dict, str]], seconds: float) -> None:
    table: dict[tuple, dict] = {}
    with sqlite3.connect(args.db) as db:
        for method, options, digest in settings:
            rows = db.execute("SELECT acceleration, psnr, ssim, seconds FROM results WHERE config_hash = ?",
                              (digest,)).fetchall()
            key = (method, json.dumps(options, sort_keys=True))
            for accel, psnr, ssim, secs in rows:
                table.setdefault(key, {}).setdefault(accel, []).append((psnr, ssim, secs))
    lines = ["# fastMRI benchmark settings, chosen on the synthetic training split", "",
             f"`python benchmarks/fastmri/tune.py --methods {' '.join(args.methods)}`"
             + (f" `--prior {args.prior}`" if args.prior else "")
             + f": first {args.volumes} training volumes, slices `{args.slices}`, {args.samples} draws, NFE {args.nfe}; "
             f"{platform.machine()} CPU, torch {torch.__version__}, {args.threads} thread(s); this run "
             f"{seconds:.0f} s. PSNR / SSIM: mean over volumes of fastMRI's per-volume metrics.", "",
             "| method | setting | 4x PSNR | 4x SSIM | 8x PSNR | 8x SSIM | seconds / volume |", "|---|---|---|---|---|---|---|"]
    for (method, options), per_accel in table.items():
        cells = []
        secs = []
        for accel in (4.0, 8.0):
            values = per_accel.get(accel, [])
            secs += [v[2] for v in values]
            if values:
                cells += [f"{sum(v[0] for v in values) / len(values):.2f}", f"{sum(v[1] for v in values) / len(values):.4f}"]
            else:
                cells += ["-", "-"]
        lines.append(f"| {method} | `{options}` | " + " | ".join(cells) + f" | {sum(secs) / max(len(secs), 1):.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
