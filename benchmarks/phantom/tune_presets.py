"""Short preset tune for any sampler on one phantom task, on training-distribution phantoms (seed 123).

The task's operator and sigma_y come from ``run.py``'s ``TASKS`` (the held-out phantoms that
``run.py`` reports on are never used here). Each SPEC is keyword arguments of the sampler; prints
the posterior-mean PSNR (data range 1) per setting next to the (unclipped) FBP / pseudo-inverse baseline.

    .venv/bin/python benchmarks/phantom/tune_presets.py --task ct mcg "steps=200, alpha=0.3, schedule='karras'"
    .venv/bin/python benchmarks/phantom/tune_presets.py --task deblur mcg "steps=200, noise_aware=True"
"""
import argparse
import ast

import torch

import invsolve as iv
from invsolve.metrics import psnr
from run import TASKS, training_problem


def parse_spec(spec: str) -> dict:
    call = ast.parse(f"f({spec})", mode="eval").body
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default="ct")
    parser.add_argument("--phantoms", type=int, default=2)
    parser.add_argument("sampler")
    parser.add_argument("specs", nargs="+", help="keyword arguments, e.g. \"steps=200, alpha=0.3\"")
    args = parser.parse_args()
    prior = iv.load_prior("ct-phantom64")
    n = args.phantoms
    truth, problem, baseline = training_problem(args.task, n, prior)
    print("FBP / pinv", sum(psnr(truth[i], baseline[i], 1.0) for i in range(n)) / n, flush=True)
    for spec in args.specs:
        post = iv.sample(args.sampler, prior, problem, n_samples=1, generator=torch.Generator().manual_seed(0),
                         **parse_spec(spec))
        mean = post.mean.clamp(0, 1)
        values = [psnr(truth[i], mean[i], 1.0) for i in range(n)]
        print(f"{args.sampler} [{spec}] PSNR {sum(values) / n:.2f} ({', '.join(f'{v:.2f}' for v in values)}) "
              f"nfe {post.nfe} {post.seconds:.0f}s", flush=True)


if __name__ == "__main__":
    main()
