"""CT projector benchmark: torch (``operators.ct.ParallelBeamCT`` / ``operators.fanbeam.FanBeamCT``,
Joseph) by method (``"sparse"``: stored CSR matrices of A and A^T; ``"grid"``: grid_sample and its
backward kernel) against astra-toolbox's CPU projectors, forward and adjoint, float32, one image.

- parallel beam: 180 views over [0, 180) degrees, detector = image diagonal; astra ``linear`` (the
  same Joseph model) and ``strip``;
- fan beam (flat detector, ``FanBeamCT`` defaults: source at 2n, detector at n, one pixel per bin
  at the centre): 180 views over [0, 360); astra ``line_fanflat`` and ``strip_fanflat`` (astra has
  no Joseph/``linear`` fan-beam CPU projector).

Everything runs on one thread (``torch.set_num_threads(1)``; astra's 2D CPU projectors are
single-threaded). The calls of one size and geometry are interleaved: each round times every
method's forward and adjoint once, in turn, so a change of machine load hits all of them alike;
the table gives the median over ``--rounds`` rounds after one warm-up round, as wall-clock time
and as this process's CPU time (``time.process_time``). The sparse matrices are built in the
warm-up round; their build time (wall and CPU) is reported on its own. Ratios: adjoint / forward of
the same row, and (forward + adjoint) / that of astra ``linear`` (parallel) or ``line_fanflat``
(fan) at the same size. astra is called through ``astra.OpTomo.FP/BP`` on preallocated float32
arrays, torch through ``physics.A`` / ``physics.A_adjoint`` under ``torch.no_grad()``. Writes
``ct.md`` and ``ct.csv`` beside this file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/operators/bench_ct.py [--sizes 128 256] [--views 180] [--rounds 15]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from operators.ct import ParallelBeamCT  # noqa: E402
from operators.fanbeam import FanBeamCT  # noqa: E402

REFERENCE = {"parallel": "astra linear", "fan": "astra line_fanflat"}


def clock(fn) -> tuple[float, float]:
    """Wall and CPU seconds of one call of ``fn``."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


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


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


def contenders(geometry: str, n: int, views: int):
    """(name, forward, adjoint, setup) per method, for one size and geometry; ``setup()`` runs
    before the rounds (sparse build) and returns its wall and CPU seconds or None."""
    import astra

    torch_ops = {}
    for method in ("sparse", "grid"):
        if geometry == "parallel":
            torch_ops[method] = ParallelBeamCT(img_size=n, views=views, method=method)
        else:
            torch_ops[method] = FanBeamCT(img_size=n, views=views, angular_range=(0.0, 360.0), method=method)
    ref = torch_ops["grid"]
    x = torch.rand(1, 1, n, n, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = ref.A(x)
    out = []
    for method, physics in torch_ops.items():
        def setup(physics=physics):
            return clock(lambda: physics._sparse(torch.float32, "cpu")) if physics.method == "sparse" else None
        out.append((f"torch {method}", lambda p=physics: p.A(x), lambda p=physics: p.A_adjoint(y), setup, physics))
    vol_geom = astra.create_vol_geom(n, n)
    angles = torch.deg2rad(ref.angles).numpy()
    if geometry == "parallel":
        proj_geom = astra.create_proj_geom("parallel", ref.detector_spacing, ref.n_detectors, angles)
        projectors = ("linear", "strip")
    else:
        proj_geom = astra.create_proj_geom("fanflat", ref.detector_spacing, ref.n_detectors, angles,
                                           ref.source_distance, ref.detector_distance)
        projectors = ("line_fanflat", "strip_fanflat")
    image = np.ascontiguousarray(x[0, 0].flip(0).numpy())
    for projector in projectors:
        op = astra.OpTomo(astra.create_projector(projector, proj_geom, vol_geom))
        sino = np.zeros(op.sshape, dtype=np.float32)
        back = np.zeros(op.vshape, dtype=np.float32)
        out.append((f"astra {projector}", lambda op=op, s=sino: op.FP(image, out=s),
                    lambda op=op, s=sino, b=back: op.BP(s, out=b), lambda: None, None))
    return out


def measure(geometries, sizes, views: int, rounds: int) -> list[dict]:
    """Interleaved timings of every contender (module docstring), with the ratios."""
    rows = []
    for geometry in geometries:
        for n in sizes:
            entries = contenders(geometry, n, views)
            builds = {name: setup() for name, _, _, setup, _ in entries}
            times = {name: {"forward": [], "adjoint": []} for name, *_ in entries}
            with torch.no_grad():
                for r in range(rounds + 1):  # round 0: warm-up
                    for name, forward, adjoint, _, _ in entries:
                        for kind, fn in (("forward", forward), ("adjoint", adjoint)):
                            t = clock(fn)
                            if r:
                                times[name][kind].append(t)
            for name, _, _, _, physics in entries:
                row = dict(geometry=geometry, size=n, views=views, method=name,
                           repr_method=(physics.extra_repr().split("method=")[1] if physics is not None else ""))
                for kind in ("forward", "adjoint"):
                    row[f"{kind}_s"] = statistics.median(t[0] for t in times[name][kind])
                    row[f"{kind}_cpu_s"] = statistics.median(t[1] for t in times[name][kind])
                build = builds[name]
                row["build_s"], row["build_cpu_s"] = build if build is not None else (float("nan"), float("nan"))
                rows.append(row)
            print(f"{geometry} {n}: done, load {loadavg()}", flush=True)
    for row in rows:
        row["total_s"] = row["forward_s"] + row["adjoint_s"]
        row["total_cpu_s"] = row["forward_cpu_s"] + row["adjoint_cpu_s"]
        row["adjoint_over_forward"] = row["adjoint_s"] / row["forward_s"]
        row["adjoint_over_forward_cpu"] = row["adjoint_cpu_s"] / row["forward_cpu_s"]
    for row in rows:
        ref = next(r for r in rows if r["geometry"] == row["geometry"] and r["size"] == row["size"]
                   and r["method"] == REFERENCE[row["geometry"]])
        row["total_over_reference"] = row["total_s"] / ref["total_s"]
        row["total_over_reference_cpu"] = row["total_cpu_s"] / ref["total_cpu_s"]
    return rows


def quick() -> list[dict]:
    """128², 180 views, both geometries, 3 rounds: the adjoint/forward and torch/astra ratios, printed."""
    torch.set_num_threads(1)
    rows = measure(["parallel", "fan"], [128], 180, 3)
    for r in rows:
        print(f"[ct projector] {r['geometry']:8s} {r['size']}² {r['method']:20s} adj/fwd {r['adjoint_over_forward']:.2f} "
              f"(fwd+adj) / {REFERENCE[r['geometry']]} {r['total_over_reference']:.2f} "
              f"(CPU {r['total_over_reference_cpu']:.2f})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--views", type=int, default=180)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--geometries", nargs="+", default=["parallel", "fan"], choices=["parallel", "fan"])
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    import astra

    torch.set_num_threads(1)
    load_before = loadavg()
    rows = measure(args.geometries, args.sizes, args.views, args.rounds)
    write(rows, args, Path(args.out), load_before, loadavg(), astra.__version__)


def write(rows, args, out: Path, load_before, load_after, astra_version) -> None:
    fields = ["geometry", "size", "views", "method", "forward_s", "adjoint_s", "total_s", "forward_cpu_s",
              "adjoint_cpu_s", "total_cpu_s", "adjoint_over_forward", "adjoint_over_forward_cpu",
              "total_over_reference", "total_over_reference_cpu", "build_s", "build_cpu_s", "repr_method"]
    with open(out / "ct.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.5g}" if isinstance(row[k], float) else row[k]) for k in fields})
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/operators/bench_ct.py " + " ".join(sys.argv[1:])
    lines = [
        "# CT projector benchmark: torch methods vs astra CPU, one thread",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command.strip()}`",
        f"- machine: {machine()}",
        f"- software: torch {torch.__version__}, astra-toolbox {astra_version}, numpy {np.__version__}",
        f"- /proc/loadavg before: `{load_before}`; after: `{load_after}` (other jobs shared the CPUs: "
        "the CPU-time columns and the ratios within one size are the robust figures)",
        f"- problem: float32, one image, {args.views} views; parallel beam over [0, 180) with the diagonal detector; "
        "fan beam (flat detector, source 2n, detector n from the centre) over [0, 360); torch Joseph model",
        "- all on one thread; the methods of one size and geometry are interleaved (each round times each "
        f"forward and adjoint once), median of {args.rounds} rounds after one warm-up round",
        "- adj/fwd: adjoint time / forward time of the row; total / ref: (forward + adjoint) / that of the "
        "reference at the same size (astra `linear` for parallel beam, astra `line_fanflat` for fan beam; "
        "astra has no Joseph fan-beam CPU projector); < 1: faster",
        "- build: one-off construction of the sparse matrices (A and Aᵀ, float32) at the first call",
        "",
        "| geometry | size | method | forward ms | adjoint ms | total ms | total CPU ms | adj/fwd (wall) | "
        "adj/fwd (CPU) | total / ref (wall) | total / ref (CPU) | build s (CPU s) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        build = "" if r["build_s"] != r["build_s"] else f"{r['build_s']:.1f} ({r['build_cpu_s']:.1f})"
        lines.append(f"| {r['geometry']} | {r['size']}² | {r['method']} | {1e3 * r['forward_s']:.1f} | "
                     f"{1e3 * r['adjoint_s']:.1f} | {1e3 * r['total_s']:.1f} | {1e3 * r['total_cpu_s']:.1f} | "
                     f"{r['adjoint_over_forward']:.2f} | {r['adjoint_over_forward_cpu']:.2f} | "
                     f"{r['total_over_reference']:.2f} | {r['total_over_reference_cpu']:.2f} | {build} |")
    (out / "ct.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
