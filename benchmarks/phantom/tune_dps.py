"""Choose DPS's ``ct-sparse8`` preset for ``ct-phantom64`` on training-distribution phantoms.

Phantoms come from seed 123 of the training distribution (not the held-out seed the demo and
benchmarks report on). 8-view CT, sigma_y = 0.1, 2 posterior samples per phantom; reports the
PSNR of the posterior mean (data range 1) for each (steps, zeta). Writes tune_dps.md.

    .venv/bin/python benchmarks/phantom/tune_dps.py --grid 250:0.2 250:0.5 250:1.0
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import invsolve as iv
from invsolve.metrics import psnr
from run import training_problem


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", nargs="+", default=["250:0.2", "250:0.5", "250:1.0", "250:2.0"],
                        help="steps:zeta pairs")
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).with_name("tune_dps.md")))
    args = parser.parse_args()
    prior = iv.load_prior("ct-phantom64")
    truth, problem, fbp = training_problem("ct", args.phantoms, prior)
    lines = ["# DPS ct-sparse8 preset selection (training-distribution phantoms, seed 123)", "",
             f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"command: `.venv/bin/python benchmarks/phantom/tune_dps.py --grid {' '.join(args.grid)}`; "
             f"{time.strftime('%Y-%m-%d')}.", "",
             f"FBP PSNR: {sum(psnr(truth[i], fbp[i], 1.0) for i in range(args.phantoms)) / args.phantoms:.2f} dB", "",
             "| steps | zeta | PSNR of mean (dB) | seconds |", "|---|---|---|---|"]
    for item in args.grid:
        steps, zeta = int(item.split(":")[0]), float(item.split(":")[1])
        post = iv.sample("dps", prior, problem, n_samples=2, generator=torch.Generator().manual_seed(0),
                         steps=steps, zeta=zeta, schedule="karras")
        mean = post.mean.clamp(0, 1)
        value = sum(psnr(truth[i], mean[i], 1.0) for i in range(args.phantoms)) / args.phantoms
        lines.append(f"| {steps} | {zeta} | {value:.2f} | {post.seconds:.0f} |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
