"""Choose DPS / MCG guidance weights under the spanned rule on TRAINING-distribution phantoms (seed 123).

Runs each case ``[task, preset, overrides]`` of the JSON list given on the command line on ``n``
training phantoms (``run.training_problem``: ``random_ellipses`` seed 123, noise seed 1, never the
held-out set), one posterior sample each (seed 0), and prints the mean PSNR of the samples.
``SAMPLER`` (environment) picks the sampler (default ``dps``). The results of the runs that chose
the presets are in tune_guidance.md.

    OMP_NUM_THREADS=1 SAMPLER=dps .venv/bin/python benchmarks/phantom/tune_guidance.py 2 \
        '[["ct", "ct-sparse8", {"zeta": "auto"}], ["ct", "ct-sparse8", {"zeta": 0.5}]]'
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import invsolve as iv  # noqa: E402
from invsolve.metrics import psnr  # noqa: E402
import run as table  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    sampler = os.environ.get("SAMPLER", "dps")
    prior = iv.load_prior("ct-phantom64")
    n, cases = int(sys.argv[1]), json.loads(sys.argv[2])
    for task, preset, kw in cases:
        truth, problem, _ = table.training_problem(task, n, prior)
        wall, cpu = time.perf_counter(), time.process_time()
        post = iv.sample(sampler, prior, problem, n_samples=1, preset=preset,
                         generator=[torch.Generator().manual_seed(0)], **kw)
        mean = post.mean.clamp(0, 1)
        value = sum(psnr(truth[i], mean[i], 1.0) for i in range(n)) / n
        print(f"| {sampler} | {task} | {preset} | {kw} | {value:.2f} | {post.nfe} | {time.perf_counter() - wall:.0f} "
              f"| {time.process_time() - cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
