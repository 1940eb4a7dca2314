"""Posterior samples per second against the batch and the thread count (issue 14, item 4).

One 8-view CT measurement (``ct-sparse8``, 64x64, sigma_y 0.1, the first held-out phantom), the
shipped ``ct-phantom64`` prior, ``iv.sample(name, ..., n_samples=n)`` in one call for
n = 1, 4, 16, 64 (the draws run as one batch), for a sampler that differentiates through the
network (DPS) and one that does not (DiffPIR), each with its ``ct-sparse8`` preset at ``--nfe``
steps, with torch on 1 and on 2 threads. For every n the thread counts run back to back in one
process (``torch.set_num_threads``), so they see the same machine load, which is recorded
(/proc/loadavg) before each run; CPU time (``time.process_time``, all threads) is given beside
the wall time, and CPU / wall is the parallelism actually obtained.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/speed/throughput.py       # throughput.md / .csv
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed/throughput.py --samplers dps --n-samples 64 \
        --threads 1 --nfe 10 --batch-sizes 64 16 8 64 16 8 --out DIR     # iv.sample's batch_size
    (``benchmarks/speed/run.py --quick`` runs ``quick()``: NFE 5, n = 1, 4, 16, DiffPIR)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

import invsolve as iv
from machine import load, write_csv  # benchmarks/speed/machine.py (this folder is on sys.path)
import operators as ops
from invsolve.phantoms import heldout_phantoms

HERE = Path(__file__).resolve().parent
SIGMA_Y = 0.1


def problem_and_prior():
    prior = iv.load_prior("ct-phantom64")
    physics = ops.make("ct-sparse8", img_size=64)
    truth = heldout_phantoms(1, 64)
    with torch.no_grad():
        clean = physics.A(truth)
    y = clean + SIGMA_Y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    return prior, iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)


def measure(prior, problem, names, ns, threads, nfe: int, seed: int = 0, batch_sizes=(None,)) -> list[dict]:
    """One timed ``iv.sample`` call per (sampler, n, threads, batch_size), batch sizes and thread
    counts interleaved innermost; ``batch_size`` None: all draws in one batch."""
    rows = []
    for name in names:
        iv.sample(name, prior, problem, n_samples=1, preset="ct-sparse8",  # warm-up, untimed
                  generator=torch.Generator().manual_seed(seed), **iv.samplers.nfe_overrides(name, 2))
        for n, t, b in [(n, t, b) for n in ns for t in threads for b in batch_sizes]:
            torch.set_num_threads(t)
            load_before = load()
            w0, c0 = time.perf_counter(), time.process_time()
            iv.sample(name, prior, problem, n_samples=n, preset="ct-sparse8", batch_size=b,
                      generator=[torch.Generator().manual_seed(seed + j) for j in range(n)],
                      **iv.samplers.nfe_overrides(name, nfe))
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            row = dict(sampler=name, nfe=nfe, n_samples=n, threads=t, batch_size=b or n, wall_s=round(wall, 3),
                       cpu_s=round(cpu, 3), samples_per_s=round(n / wall, 4), cpu_per_wall=round(cpu / wall, 2),
                       load_before=load_before)
            rows.append(row)
            base = next(r for r in rows if r["sampler"] == name and r["n_samples"] == ns[0] and r["threads"] == t)
            one = next((r for r in rows if r["sampler"] == name and r["n_samples"] == n and r["threads"] == threads[0]),
                       row)
            print(f"[throughput] {name:8s} NFE {nfe} n {n:3d} batch {row['batch_size']:3d} threads {t}: "
                  f"{row['samples_per_s']:.3f} samples/s (wall {wall:.1f} s, CPU {cpu:.1f} s, CPU/wall "
                  f"{row['cpu_per_wall']:.2f}); x{row['samples_per_s'] / base['samples_per_s']:.2f} vs n={ns[0]}, "
                  f"x{row['samples_per_s'] / one['samples_per_s']:.2f} vs {threads[0]} thread; load {load_before}",
                  flush=True)
    return rows


def quick() -> list[dict]:
    prior, problem = problem_and_prior()
    return measure(prior, problem, ["diffpir"], [1, 4, 16], [1, 2], nfe=5)


def write(rows, args, started, seconds, out: Path) -> None:
    write_csv(out / "throughput.csv", rows)
    cmd = ".venv/bin/python benchmarks/speed/throughput.py " + " ".join(sys.argv[1:])
    lines = ["# Posterior samples per second: batch and threads (issue 14, item 4)", "",
             f"Command: `OMP_NUM_THREADS=2 {cmd}`; started {started} UTC, {seconds / 60:.1f} min; seed {args.seed}; "
             f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores (shared; the 1-minute load "
             f"before each run is in the table); torch {torch.__version__}.", "",
             "Task: one `ct-sparse8` measurement (64x64, sigma_y 0.1), prior `ct-phantom64`, preset `ct-sparse8` at "
             f"NFE {args.nfe}, `n_samples` draws (one generator each) in one `iv.sample` call, `batch_size` draws per run. Speed-up: samples/s over n = 1 at the same "
             "thread count, and 2 threads over 1 at the same n.", "",
             "| sampler | n_samples | batch_size | threads | wall s | CPU s | CPU / wall | samples / s | x vs n=1 | x vs 1 thread | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(b for b in rows if b["sampler"] == r["sampler"] and b["threads"] == r["threads"]
                    and b["n_samples"] == min(x["n_samples"] for x in rows))
        one = next(b for b in rows if b["sampler"] == r["sampler"] and b["n_samples"] == r["n_samples"]
                   and b["threads"] == min(x["threads"] for x in rows))
        lines.append(f"| {r['sampler']} | {r['n_samples']} | {r.get('batch_size', r['n_samples'])} | {r['threads']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['cpu_per_wall']:.2f} | {r['samples_per_s']:.3f} | {r['samples_per_s'] / base['samples_per_s']:.2f} | "
                     f"{r['samples_per_s'] / one['samples_per_s']:.2f} | {r['load_before']} |")
    (out / "throughput.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=["dps", "diffpir"])
    parser.add_argument("--n-samples", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="iv.sample batch_size values, interleaved per n (default: all draws in one batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    started, t0 = time.strftime("%Y-%m-%d %H:%M", time.gmtime()), time.perf_counter()
    prior, problem = problem_and_prior()
    rows = measure(prior, problem, args.samplers, args.n_samples, args.threads, args.nfe, args.seed,
                   batch_sizes=args.batch_sizes or (None,))
    write(rows, args, started, time.perf_counter() - t0, Path(args.out))


if __name__ == "__main__":
    main()
