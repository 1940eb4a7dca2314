"""Scale-out (issue 12): the slice-wise denoising of one step on 1 vs 2 Ray workers, against one process.

One ``D(x, sigma)`` call of ``SliceWisePrior(load_prior("ct-phantom64"), "axial", chunk=16)`` on a
(1, 1, D, 64, 64) volume (what DDS / DiffusionMBIR call once per step), timed by wall clock: in
this process (1 torch thread), on ``workers=1`` and on ``workers=2`` local Ray actors (1 torch
thread each; the coordinator only cuts, sends and reassembles chunks). Median and min of ``--repeats``
calls after one warm-up call each, the three runs interleaved call by call. The outputs of all three must be bit-identical. Writes
``scaleout.md``, ``scaleout.csv`` and ``scaleout.png`` with the machine, the load average and the
other ``benchmarks/`` processes running at the time (the machine is shared).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/scaleout.py            # needs invsolve[distributed]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import invsolve as iv
from invsolve.priors.slicewise import SliceWisePrior

HERE = Path(__file__).resolve().parent


def others() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "benchmarks/"], capture_output=True, text=True).stdout.splitlines()
    return [line.split(" ", 1)[1][:100] for line in out if str(os.getpid()) != line.split(" ", 1)[0]
            and "scaleout.py" not in line and "pgrep" not in line]


def interleaved(priors: dict, x, repeats: int):
    """Warm-up call each, then ``repeats`` rounds calling every prior once in turn (A B C A B C ...), so
    that the other jobs of a shared machine weigh on all runs alike. Returns outputs and wall seconds."""
    with torch.no_grad():
        outs = {k: p(x, 1.0) for k, p in priors.items()}
        walls = {k: [] for k in priors}
        for _ in range(repeats):
            for k, p in priors.items():
                t0 = time.perf_counter()
                p(x, 1.0)
                walls[k].append(time.perf_counter() - t0)
    return outs, walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import ray

    torch.set_num_threads(1)
    load_before, busy_before = os.getloadavg(), others()
    prior2d = iv.load_prior("ct-phantom64")
    x = torch.randn(1, 1, args.depth, 64, 64, generator=torch.Generator().manual_seed(0))
    chunks = -(-args.depth // args.chunk)
    rows = []
    ray.init(num_cpus=max(3, os.cpu_count()), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        priors, start_s = {0: SliceWisePrior(prior2d, "axial", chunk=args.chunk, depth=args.depth)}, {}
        for workers in (1, 2):  # 3 actors in all; idle ones cost no CPU
            priors[workers] = SliceWisePrior(prior2d, "axial", chunk=args.chunk, depth=args.depth, workers=workers)
            t0 = time.perf_counter()
            priors[workers]._pool()
            start_s[workers] = round(time.perf_counter() - t0, 1)
        outputs, walls = interleaved(priors, x, args.repeats)
        ref = outputs[0]
        for workers, w in walls.items():
            row = {"run": "one process" if workers == 0 else f"ray, {workers} worker(s)", "workers": workers,
                   "seconds": round(sorted(w)[len(w) // 2], 3), "min_seconds": round(min(w), 3),
                   "all_seconds": [round(v, 3) for v in w]}
            if workers:
                row["actor_start_s"] = start_s[workers]
                row["worker_peak_rss_mib"] = [round(r) for r in ray.get([a.peak_rss_mib.remote()
                                                                        for a in priors[workers]._pool().actors])]
                priors[workers].close()
            rows.append(row)
    finally:
        ray.shutdown()
    load_after, busy_after = os.getloadavg(), others()
    identical = all(torch.equal(ref, o) for o in outputs.values())
    base = rows[1]["seconds"]
    for r in rows:
        r["slices_per_s"] = round(args.depth / r["seconds"], 1)
        r["s_per_chunk"] = round(r["seconds"] / chunks * max(r["workers"], 1), 4)
        r["speedup_vs_1_worker"] = round(base / r["seconds"], 2)
        r["speedup_min_vs_1_worker"] = round(rows[1]["min_seconds"] / r["min_seconds"], 2)
        r["identical_to_one_process"] = bool(torch.equal(ref, outputs[r["workers"]])) if r["workers"] else True
    write(rows, args, identical, load_before, load_after, busy_before, busy_after, x)


def write(rows, args, identical, load_before, load_after, busy_before, busy_after, x) -> None:
    keys = ["run", "workers", "seconds", "min_seconds", "slices_per_s", "s_per_chunk", "speedup_vs_1_worker",
            "speedup_min_vs_1_worker",
            "identical_to_one_process", "all_seconds", "actor_start_s", "worker_peak_rss_mib"]
    with open(HERE / "scaleout.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    machine = (f"{platform.processor() or platform.machine()}, {platform.system()}, {os.cpu_count()} cores, "
               f"torch {torch.__version__}, 1 torch thread per process")
    chunk_mib = args.chunk * 64 * 64 * 4 / 2 ** 20
    lines = ["# benchmarks/volume scaleout", "",
             f"One slice-wise D(x, sigma) call (the denoising part of one DDS / DiffusionMBIR step) on a "
             f"(1, 1, {args.depth}, 64, 64) volume, ct-phantom64 axial, chunk {args.chunk} "
             f"({-(-args.depth // args.chunk)} chunks of {chunk_mib:.2f} MiB in, {chunk_mib:.2f} MiB out); wall seconds, "
             f"median (and min) of {args.repeats} calls after one warm-up, the three runs interleaved call by call "
             f"(the machine is shared). s_per_chunk: seconds x workers / chunks.", "",
             f"Machine: {machine}", "",
             f"Load average (1/5/15 min) before: {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}; "
             f"after: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}", "",
             f"Other benchmarks/ processes before: {busy_before or 'none'}; after: {busy_after or 'none'}", "",
             f"Outputs of 1 and 2 workers bit-identical to one process: {identical}", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/scaleout.py {' '.join(sys.argv[1:])}`", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    (HERE / "scaleout.md").write_text("\n".join(lines) + "\n")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), dpi=110)
    ax = fig.subplots()
    names = [r["run"] for r in rows]
    ax.bar(names, [r["slices_per_s"] for r in rows], color=["0.6", "tab:blue", "tab:orange"])
    for i, r in enumerate(rows):
        ax.text(i, r["slices_per_s"], f"{r['slices_per_s']} ({r['speedup_vs_1_worker']}x)", ha="center", va="bottom",
                fontsize=8)
    ax.set(ylabel="64x64 slices denoised per second", title=f"scale-out, {args.depth} slices, chunk {args.chunk}; "
                                                            f"load {load_before[0]:.1f}->{load_after[0]:.1f}")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(HERE / "scaleout.png")


if __name__ == "__main__":
    main()
