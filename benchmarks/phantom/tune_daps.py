"""Choose DAPS's ``ct-sparse8`` preset for ``ct-phantom64`` on training-distribution phantoms.

Phantoms from seed 123 of the training distribution (never the held-out seed 1000003), 8-view
CT, sigma_y = 0.1, 2 posterior samples per phantom; PSNR of the posterior mean (data range 1)
for each setting (a JSON dict of DAPS overrides). Writes tune_daps.md next to this file.

    .venv/bin/python benchmarks/phantom/tune_daps.py --grid '{"mc_algo": "hmc", "mc_steps": 12}' ...
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
from run import training_problem


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", nargs="+", required=True, help="JSON dicts of DAPS overrides")
    parser.add_argument("--phantoms", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).with_name("tune_daps.md")))
    args = parser.parse_args()
    prior = iv.load_prior("ct-phantom64")
    truth, problem, fbp = training_problem("ct", args.phantoms, prior)
    fbp_psnr = sum(psnr(truth[i], fbp[i], 1.0) for i in range(args.phantoms)) / args.phantoms
    lines = ["# DAPS ct-sparse8 preset selection (training-distribution phantoms, seed 123)", "",
             f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"{args.phantoms} phantoms x {args.samples} samples; {time.strftime('%Y-%m-%d')}.", "",
             f"FBP PSNR: {fbp_psnr:.2f} dB", "",
             "| overrides | NFE | PSNR of mean (dB) | PSNR per sample (dB) | seconds |", "|---|---|---|---|---|"]
    print(lines[4], flush=True)
    for item in args.grid:
        overrides = json.loads(item)
        post = iv.sample("daps", prior, problem, n_samples=args.samples, generator=torch.Generator().manual_seed(0),
                         **overrides)
        mean = post.mean.clamp(0, 1)
        value = sum(psnr(truth[i], mean[i], 1.0) for i in range(args.phantoms)) / args.phantoms
        per = sum(psnr(truth[i], post.samples[j, i].clamp(0, 1), 1.0)
                  for i in range(args.phantoms) for j in range(args.samples)) / (args.phantoms * args.samples)
        lines.append(f"| `{item}` | {post.nfe} | {value:.2f} | {per:.2f} | {post.seconds:.0f} |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
