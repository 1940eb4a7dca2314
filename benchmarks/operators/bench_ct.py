"""CT projector benchmark: torch (operators.ct.ParallelBeamCT, Joseph) vs astra-toolbox's CPU
``strip`` and ``linear`` projectors, forward + adjoint, 2D parallel beam, 180 views over 180
degrees, detector = image diagonal, float32, one image.

Every configuration is timed in the same run: one warm-up call, then the median of ``--repeats``
calls, as wall-clock time and as this process's CPU time (user + system; robust to other
processes sharing the machine). astra's 2D CPU projectors are single-threaded; torch is timed
with 1 thread (the like-for-like comparison) and with all the machine's threads. astra is called
through ``astra.OpTomo.FP/BP`` on preallocated float32 arrays (its fastest Python path);
torch through ``physics.A`` / ``physics.A_adjoint`` under ``torch.no_grad()``. Writes ``ct.md``
and ``ct.csv`` beside this file.

    .venv/bin/python benchmarks/operators/bench_ct.py [--sizes 128 256] [--views 180] [--repeats 7]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from operators.ct import ParallelBeamCT  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = _cpu(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return statistics.median(walls), statistics.median(cpus)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--views", type=int, default=180)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    import astra

    threads_all = torch.get_num_threads()
    load_before = os.getloadavg()
    rows = []
    for n in args.sizes:
        physics = ParallelBeamCT(img_size=n, views=args.views)
        x = torch.rand(1, 1, n, n, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = physics.A(x)
        for threads in sorted({1, threads_all}):
            torch.set_num_threads(threads)
            with torch.no_grad():
                fwd = timed(lambda: physics.A(x), args.repeats)
                adj = timed(lambda: physics.A_adjoint(y), args.repeats)
            rows.append(dict(size=n, method="torch joseph", threads=threads, forward_s=fwd[0], adjoint_s=adj[0],
                             forward_cpu_s=fwd[1], adjoint_cpu_s=adj[1]))
        torch.set_num_threads(threads_all)
        vol_geom = astra.create_vol_geom(n, n)
        proj_geom = astra.create_proj_geom("parallel", physics.detector_spacing, physics.n_detectors,
                                           torch.deg2rad(physics.angles).numpy())
        image = np.ascontiguousarray(x[0, 0].flip(0).numpy())
        for projector in ("strip", "linear"):
            projector_id = astra.create_projector(projector, proj_geom, vol_geom)
            op = astra.OpTomo(projector_id)
            sino = np.zeros(op.sshape, dtype=np.float32)
            back = np.zeros(op.vshape, dtype=np.float32)
            fwd = timed(lambda: op.FP(image, out=sino), args.repeats)
            adj = timed(lambda: op.BP(sino, out=back), args.repeats)
            astra.projector.delete(projector_id)
            rows.append(dict(size=n, method=f"astra {projector}", threads=1, forward_s=fwd[0], adjoint_s=adj[0],
                             forward_cpu_s=fwd[1], adjoint_cpu_s=adj[1]))
    for row in rows:
        row["total_s"] = row["forward_s"] + row["adjoint_s"]
        row["total_cpu_s"] = row["forward_cpu_s"] + row["adjoint_cpu_s"]
    for row in rows:
        strip = next(r for r in rows if r["size"] == row["size"] and r["method"] == "astra strip")
        row["ratio_to_astra_strip"] = row["total_s"] / strip["total_s"]
        row["cpu_ratio_to_astra_strip"] = row["total_cpu_s"] / strip["total_cpu_s"]
    load_after = os.getloadavg()
    write(rows, args, Path(args.out), load_before, load_after, threads_all, astra.__version__)


def write(rows, args, out: Path, load_before, load_after, threads_all, astra_version) -> None:
    fields = ["size", "method", "threads", "forward_s", "adjoint_s", "total_s", "forward_cpu_s", "adjoint_cpu_s",
              "total_cpu_s", "ratio_to_astra_strip", "cpu_ratio_to_astra_strip"]
    with open(out / "ct.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.5g}" if isinstance(row[k], float) else row[k]) for k in fields})
    command = ".venv/bin/python benchmarks/operators/bench_ct.py " + " ".join(sys.argv[1:])
    lines = [
        "# CT projector benchmark: torch vs astra CPU",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command.strip()}`",
        f"- machine: {machine()}",
        f"- software: torch {torch.__version__}, astra-toolbox {astra_version}, numpy {np.__version__}",
        f"- load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        "(other processes shared the CPUs: compare CPU times, and ratios within one size)",
        f"- problem: 2D parallel beam, {args.views} views over [0, 180) degrees, detector = image diagonal "
        "(ceil(n sqrt 2) bins of 1 pixel), float32, one image; one warm-up call, median of "
        f"{args.repeats} calls; torch threads: 1 and {threads_all} (all); astra's 2D CPU projectors are single-threaded",
        "- ratio: (forward + adjoint) time of the row / that of astra `strip` at the same size (< 1: faster)",
        "",
        "| size | method | threads | forward ms | adjoint ms | total ms | total CPU ms | ratio to astra strip (wall) | ratio (CPU) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['size']}² | {r['method']} | {r['threads']} | {1e3 * r['forward_s']:.1f} | "
                     f"{1e3 * r['adjoint_s']:.1f} | {1e3 * r['total_s']:.1f} | {1e3 * r['total_cpu_s']:.1f} | "
                     f"{r['ratio_to_astra_strip']:.2f} | {r['cpu_ratio_to_astra_strip']:.2f} |")
    (out / "ct.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
