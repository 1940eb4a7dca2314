"""Choose the ``mri-4x`` presets of DPS, DAPS and PiGDM for the shipped magnitude prior ``mri-brain64``
on the MRI operator ``mri-4x-equispaced`` (single coil, 64x64, the 1-channel prior seen through the
real channel: ``invsolve.problem.real_image_physics``), on two training-distribution MNI152 T1
slices (``invsolve.priors.datasets.mni152_volumes``), sigma_y 0.01, 2 draws each; PSNR of the
posterior mean (data range 1). Writes a markdown table to stdout.

    OMP_NUM_THREADS=1 python benchmarks/mri/tune_presets.py > benchmarks/mri/tune_presets.md
"""

import platform
import sys
import time

import torch

import invsolve as iv
import operators as ops
from invsolve.metrics import psnr
from invsolve.priors.datasets import mni152_volumes, square_resize

GRID = [
    # the first grid ran under the official per-step rule (before issue 15's spanned rule)
    ("dps", dict(steps=100, schedule="karras", zeta=0.3, zeta_rule="per-step")),
    ("dps", dict(steps=100, schedule="karras", zeta=1.0, zeta_rule="per-step")),
    ("dps", dict(steps=100, schedule="karras", zeta=3.0, zeta_rule="per-step")),
    ("dps", dict(steps=100, schedule="karras", zeta=10.0, zeta_rule="per-step")),
    # the preset's choice under the default spanned rule
    ("dps", dict(steps=100, schedule="karras", zeta=3.0)),
    ("dps", dict(steps=100, schedule="karras", zeta=10.0)),
    ("dps", dict(steps=100, schedule="karras", zeta="auto")),
    ("pigdm", dict(steps=100, eta=1.0, weight=1.0)),
    ("pigdm", dict(steps=100, eta=1.0, weight=0.5)),
    ("pigdm", dict(steps=100, eta=1.0, weight=2.0)),
    ("daps", dict(levels=50, ode_steps=2, mc_algo="langevin", mc_steps=100, lr=1e-5, lr_min_ratio=0.01, tau=0.01)),
    ("daps", dict(levels=50, ode_steps=2, mc_algo="langevin", mc_steps=100, lr=1e-4, lr_min_ratio=0.01, tau=0.01)),
    ("daps", dict(levels=50, ode_steps=2, mc_algo="langevin", mc_steps=100, lr=1e-3, lr_min_ratio=0.01, tau=0.01)),
]


def slices() -> torch.Tensor:
    t1 = mni152_volumes()[0].slices  # (N, 1, H, W) axial T1 slices in [0, 1]
    n = t1.shape[0]
    return square_resize(t1[[int(0.45 * n), int(0.6 * n)]], 64)


def main() -> None:
    prior = iv.load_prior("mri-brain64")
    physics = ops.make("mri-4x-equispaced", img_size=(64, 64))
    truth = slices()
    clean = iv.problem.real_image_physics(physics).A(truth)
    y = clean + 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    problem = iv.Problem(physics, y, sigma_y=0.01, prior=prior)
    print(f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          "2 MNI152 T1 slices (45% and 60% of the axial stack, whole slice resized to 64x64), sigma_y 0.01, "
          "2 draws, seed 0. Zero-filled (A^H y, real part) PSNR: "
          f"{psnr(truth, physics.A_adjoint(y)[:, :1].clamp(0, 1), data_range=1.0):.2f} dB.\n")
    print("| sampler | settings | NFE | PSNR mean (dB) | seconds |\n|---|---|---|---|---|")
    for name, params in GRID:
        start = time.perf_counter()
        gens = [torch.Generator().manual_seed(j) for j in range(2)]
        post = iv.sample(name, prior, problem, n_samples=2, generator=gens, **params)
        value = psnr(truth, post.mean.clamp(0, 1), data_range=1.0)
        print(f"| {name} | {', '.join(f'{k}={v}' for k, v in params.items())} | {post.nfe} | {value:.2f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
