"""Blind deblurring (issue 16): BlindDPS against DPS with the true kernel and DPS with a Gaussian guess.

Task: held-out phantoms (``heldout_phantoms``, 64x64) each blurred by its own held-out motion kernel
(``invsolve.kernels.heldout_motion_kernels``, 16x16, ``motionblur`` intensity 0.5; never used in training
or tuning), reflect padding, Gaussian noise sigma_y 0.02. Priors: ``ct-phantom64`` (images) and the shipped
``kernel-motion16`` (kernels). Rows:

- DPS with the true kernel (the oracle: what knowing the physics is worth);
- DPS with a Gaussian guess: an isotropic Gaussian kernel whose std is the mean RMS radius of 64
  *training* kernels (the best fixed guess a user without the kernel could make from the kernel family);
- BlindDPS (joint image and kernel);
- TV with the true kernel and with the Gaussian guess (weights chosen on training phantoms and kernels).

DPS and BlindDPS run the same Karras step grid; each row's guidance weight ``zeta`` is chosen from ``ZETAS``
on 2 training-seed phantoms blurred by 2 training kernels (never the held-out ones) and recorded with its grid. Per row: image PSNR / SSIM of the posterior mean (clamped to [0, 1]), the
kernel's relative L2 error (the posterior-mean kernel for BlindDPS, the kernel used otherwise), NFE per
sample and CPU seconds (1 thread). Rows are cached as JSON under ``cache/`` as soon as computed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/blind/run.py          # 2 phantoms x 4 samples, 200 steps
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

import invsolve as iv  # noqa: E402
from invsolve.baselines import tv  # noqa: E402
from invsolve.kernels import as_blur, heldout_motion_kernels, random_motion_kernels  # noqa: E402
from invsolve.metrics import psnr, ssim  # noqa: E402
from invsolve.phantoms import heldout_phantoms, random_ellipses  # noqa: E402
from invsolve.samplers.blinddps import convolve  # noqa: E402
from operators.blur import KernelBlur, gaussian_kernel  # noqa: E402

SIGMA_Y = 0.02
KERNEL = 16
ZETAS = (0.3, 1.0, 3.0, 10.0)  # the official 1.0 (BlindDPS) and 0.3 (DPS deblur preset) included
TV_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
TUNE_SEED = 123  # training-distribution phantoms and kernels for every choice made here


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def measure(x: torch.Tensor, kernels: torch.Tensor, seed: int) -> torch.Tensor:
    y = convolve(x, kernels, "reflect")
    return y + SIGMA_Y * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))


def gaussian_guess() -> torch.Tensor:
    """Isotropic Gaussian kernel with the mean RMS radius of 64 training kernels (blur units)."""
    k = as_blur(random_motion_kernels(64, KERNEL, torch.Generator().manual_seed(TUNE_SEED)))
    c = torch.arange(KERNEL, dtype=torch.float32)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    my, mx = (k[:, 0] * yy).sum((-2, -1)), (k[:, 0] * xx).sum((-2, -1))
    var = (k[:, 0] * ((yy - my[:, None, None]) ** 2 + (xx - mx[:, None, None]) ** 2)).sum((-2, -1)) / 2
    std = float(var.sqrt().mean())
    g = gaussian_kernel(std, KERNEL).to(torch.float32)
    return as_blur(g.reshape(1, 1, KERNEL, KERNEL)), std


def kernel_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over images of ||k_est - k|| / ||k|| (blur units)."""
    est = estimate.expand_as(truth)
    return float(((est - truth).flatten(1).norm(dim=1) / truth.flatten(1).norm(dim=1)).mean())


def scores(truth, estimate) -> dict:
    per = [(psnr(truth[i], estimate[i], 1.0), ssim(truth[i], estimate[i], 1.0)) for i in range(truth.shape[0])]
    return {"psnr": sum(p for p, _ in per) / len(per), "ssim": sum(s for _, s in per) / len(per)}


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def write_atomic(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def cached(cache: Path, key: str, compute, args) -> dict:
    path = cache / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    row = {"method": key, **compute(), "machine": f"{platform.machine()}, {platform.node()}",
           "torch_threads": torch.get_num_threads(), "command": "benchmarks/blind/run.py " + " ".join(args.argv),
           "seed": args.seed, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    write_atomic(path, row)
    print({k: v for k, v in row.items() if k not in ("tuning",)}, flush=True)
    return row


def per_image_dps(prior, y, kernels, samples: int, seed: int, steps: int, zeta: float):
    """DPS on each image with its own kernel (a deepinv Blur holds one kernel): posterior means."""
    means, nfe = [], 0
    for i in range(y.shape[0]):
        physics = KernelBlur(filter=kernels[min(i, kernels.shape[0] - 1)][None], padding="reflect")
        problem = iv.Problem(physics, y[i:i + 1], sigma_y=SIGMA_Y, prior=prior)
        gens = [torch.Generator().manual_seed(seed + 100 * j) for j in range(samples)]
        post = iv.sample("dps", prior, problem, n_samples=samples, preset="deblur", zeta=zeta, steps=steps,
                         schedule="karras", generator=gens)
        means.append(post.mean.clamp(0, 1))
        nfe = post.nfe
    return torch.cat(means), nfe


def blind_run(prior, y, samples: int, seed: int, steps: int, zeta: float):
    guess, _ = gaussian_guess()
    physics = KernelBlur(filter=guess, padding="reflect")  # its kernel is ignored by blinddps
    problem = iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)
    return iv.sample("blinddps", prior, problem, n_samples=samples, steps=steps, schedule="karras", zeta=zeta,
                     generator=[torch.Generator().manual_seed(seed + 100 * j) for j in range(samples)])


def tuning_set():
    """2 training-seed phantoms, each blurred by its own training kernel: every choice is made here."""
    x = random_ellipses(2, 64, torch.Generator().manual_seed(TUNE_SEED))
    k = as_blur(random_motion_kernels(2, KERNEL, torch.Generator().manual_seed(TUNE_SEED + 1)))
    return x, k, measure(x, k, TUNE_SEED + 2)


def choose_zeta(prior, cache: Path, method: str, args) -> tuple[float, dict]:
    """The guidance weight of ``method`` ("blinddps", "dps-true", "dps-guess") on the tuning set (1 draw each)."""
    def compute():
        x, k, y = tuning_set()
        grid = {}
        for zeta in ZETAS:
            if method == "blinddps":
                post = blind_run(prior, y, 1, TUNE_SEED, args.steps, zeta)
                est, kernel = post.mean.clamp(0, 1), post.extras["kernels"][0]
            else:
                kernel = k if method == "dps-true" else gaussian_guess()[0]
                est, _ = per_image_dps(prior, y, kernel, 1, TUNE_SEED, args.steps, zeta)
            grid[str(zeta)] = {**scores(x, est), "kernel_error": kernel_error(kernel, k)}
        best = max(grid, key=lambda z: grid[z]["psnr"])
        return {"zeta": float(best), "grid": grid}
    found = cached(cache, f"tuning__{method}_zeta", compute, args)
    return found["zeta"], found["grid"]


def choose_tv(kernel_of, cache: Path, name: str, args) -> float:
    def compute():
        x, k, y = tuning_set()
        grid = {}
        for lam in TV_GRID:
            est = torch.cat([tv(KernelBlur(filter=kernel_of(k, i), padding="reflect"), y[i:i + 1], lam=lam, iterations=150)
                             for i in range(2)])
            grid[str(lam)] = scores(x, est.clamp(0, 1))["psnr"]
        return {"lam": float(max(grid, key=grid.get)), "grid": grid}
    return cached(cache, f"tuning__tv_{name}", compute, args)["lam"]


def run(args) -> list[dict]:
    cache = Path(args.out) / "cache" / f"phantoms{args.phantoms}-samples{args.samples}-steps{args.steps}-seed{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    prior = iv.load_prior("ct-phantom64")
    x = heldout_phantoms(args.phantoms)
    k = as_blur(heldout_motion_kernels(args.phantoms, KERNEL))
    y = measure(x, k, args.seed + 1)
    guess, guess_std = gaussian_guess()
    rows = []

    def dps_row(kernels, what, method):
        zeta, grid = choose_zeta(prior, cache, method, args)
        (est, nfe), wall, cpu = timed(lambda: per_image_dps(prior, y, kernels, args.samples, args.seed, args.steps, zeta))
        return {**scores(x, est), "kernel_error": kernel_error(kernels, k), "nfe": nfe, "seconds": wall,
                "cpu_seconds": cpu, "kernel": what, "zeta": zeta, "tuning": grid}
    rows.append(cached(cache, "DPS (true kernel)", lambda: dps_row(k, "true", "dps-true"), args))
    rows.append(cached(cache, "DPS (Gaussian guess)",
                       lambda: dps_row(guess, f"Gaussian std {guess_std:.3f} px", "dps-guess"), args))
    zeta, grid = choose_zeta(prior, cache, "blinddps", args)

    def blind_row():
        post, wall, cpu = timed(lambda: blind_run(prior, y, args.samples, args.seed, args.steps, zeta))
        return {**scores(x, post.mean.clamp(0, 1)), "kernel_error": kernel_error(post.extras["kernels"].mean(0), k),
                "nfe": post.nfe, "seconds": wall, "cpu_seconds": cpu, "zeta": zeta, "tuning": grid,
                "kernel": "estimated (posterior mean)"}
    rows.append(cached(cache, "BlindDPS", blind_row, args))
    for name, kernel_of, label in (("true", lambda kk, i: kk[i:i + 1], "true"),
                                   ("guess", lambda kk, i: guess, "Gaussian guess")):
        lam = choose_tv(kernel_of, cache, name, args)

        def tv_row(kernel_of=kernel_of, lam=lam, label=label):
            est, wall, cpu = timed(lambda: torch.cat([tv(KernelBlur(filter=kernel_of(k, i), padding="reflect"),
                                                         y[i:i + 1], lam=lam, iterations=150) for i in range(x.shape[0])]))
            used = k if label == "true" else guess
            return {**scores(x, est.clamp(0, 1)), "kernel_error": kernel_error(used, k), "nfe": 0, "seconds": wall,
                    "cpu_seconds": cpu, "lam": lam, "kernel": label}
        rows.append(cached(cache, f"TV ({label})", tv_row, args))
    return rows


def report(rows: list[dict], args) -> None:
    out = Path(args.out)
    lines = ["# Blind deblurring: BlindDPS against DPS with the true kernel and with a Gaussian guess", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/blind/run.py {' '.join(args.argv)}`; "
             f"{args.phantoms} held-out phantoms (64x64), each blurred by its own held-out 16x16 motion kernel "
             f"(reflect padding), sigma_y {SIGMA_Y}; {args.samples} posterior samples per image (generators seed + 100 j); "
             f"{args.steps} Karras steps for DPS and BlindDPS; priors `ct-phantom64` and `kernel-motion16`. "
             f"Machine {rows[0]['machine']}, torch threads {rows[0]['torch_threads']}; rows computed "
             f"{min(r['date'] for r in rows)} to {max(r['date'] for r in rows)}.", "",
             f"Every guidance weight (zeta, spanned rule, per step of the official 1000-step grid) is chosen "
             f"from {list(ZETAS)} by PSNR on 2 training-seed phantoms blurred by 2 training kernels (seed "
             f"{TUNE_SEED}, 1 draw each), the TV weights from {list(TV_GRID)} on the same images:", ""]
    for r in rows:
        if "tuning" in r:
            lines.append(f"- {r['method']}: zeta {r['zeta']:g} (" + ", ".join(
                f"{z}: {g['psnr']:.2f} dB, kernel error {g['kernel_error']:.3f}" for z, g in r["tuning"].items()) + ")")
    lines += ["", "| method | kernel | zeta / TV weight | PSNR | SSIM | kernel rel. L2 error | NFE / sample | CPU s | wall s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        weight = r.get("zeta", r.get("lam"))
        lines.append(f"| {r['method']} | {r['kernel']} | {weight:g} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                     f"{r['kernel_error']:.3f} | {r['nfe']} | {r['cpu_seconds']:.0f} | {r['seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_atomic(out / "results.json", rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rows = run(args)
    report(rows, args)
    print(f"report in {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
