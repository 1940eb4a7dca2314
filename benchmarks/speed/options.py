"""Options that might pay (issue 14, item 5): one denoiser call of the shipped ``ct-phantom64`` under
``torch.no_grad`` (the reference), ``torch.inference_mode``, channels-last memory format and
``torch.compile`` (inductor), without and with the vector-Jacobian product the guidance samplers
take. An option is worth offering only where it measures >= 1.2x faster than the reference.

The variants run interleaved, ``--rounds`` rounds of ``--calls`` calls each, one thread; the
figure per variant is the median over rounds of the mean call time (wall; CPU beside it).
``torch.compile``'s one-time compilation is timed separately (it is paid once per process and
input shape). Outputs are compared with the reference (max abs difference) so a fast wrong
variant shows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed/options.py         # options.md / .csv
    (``benchmarks/speed/run.py --quick`` runs ``quick()``: batch 4, eager variants only)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import invsolve as iv
from machine import load, write_csv  # benchmarks/speed/machine.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
WORTH = 1.2


def make_variants(prior, with_compile: bool) -> dict:
    """name -> (callable(x, sigma), context manager factory, memory format of the input)."""
    variants = {
        "no_grad (reference)": (prior, torch.no_grad, torch.contiguous_format),
        "inference_mode": (prior, torch.inference_mode, torch.contiguous_format),
    }
    cl = iv.load_prior("ct-phantom64").to(memory_format=torch.channels_last)
    variants["channels_last"] = (cl, torch.no_grad, torch.channels_last)
    if with_compile:
        variants["torch.compile"] = (torch.compile(iv.load_prior("ct-phantom64")), torch.no_grad, torch.contiguous_format)
    return variants


def call(fn, ctx, x, v, grad: bool):
    if grad:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = fn(xg, 1.0)
            (g,) = torch.autograd.grad((out * v).sum(), xg)
        return out.detach(), g
    with ctx():
        return fn(x, 1.0), None


def measure(batch: int, grad: bool, rounds: int, calls: int, with_compile: bool) -> list[dict]:
    prior = iv.load_prior("ct-phantom64")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *prior.shape), generator=gen)
    v = torch.randn((batch, *prior.shape), generator=gen)
    variants = make_variants(prior, with_compile)
    ref_out, ref_g = call(prior, torch.no_grad, x, v, grad)
    first, times, errors = {}, {k: [] for k in variants}, {}
    for name, (fn, ctx, fmt) in variants.items():  # first call: compilation for torch.compile
        xf = x.contiguous(memory_format=fmt)
        w0 = time.perf_counter()
        out, g = call(fn, ctx, xf, v, grad)
        first[name] = time.perf_counter() - w0
        errors[name] = max(float((out - ref_out).abs().max()), float((g - ref_g).abs().max()) if grad else 0.0)
    for _ in range(rounds):
        for name, (fn, ctx, fmt) in variants.items():
            xf = x.contiguous(memory_format=fmt)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                call(fn, ctx, xf, v, grad)
            times[name].append(((time.perf_counter() - w0) / calls, (time.process_time() - c0) / calls))
    ref = statistics.median(t[0] for t in times["no_grad (reference)"])
    rows = []
    for name in variants:
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        row = dict(variant=name, batch=batch, grad=grad, wall_ms=round(1e3 * wall, 2), cpu_ms=round(1e3 * cpu, 2),
                   speedup=round(ref / wall, 3), first_call_s=round(first[name], 2),
                   max_abs_diff=f"{errors[name]:.1e}", pays=ref / wall >= WORTH, load=load())
        rows.append(row)
        print(f"[options] batch {batch:2d} {'D+vjp' if grad else 'D    '} {name:20s} {row['wall_ms']:8.2f} ms "
              f"(CPU {row['cpu_ms']:.2f}) x{row['speedup']:.2f} first call {row['first_call_s']:.1f} s "
              f"diff {row['max_abs_diff']}", flush=True)
    return rows


def quick() -> list[dict]:
    rows = []
    for grad in (False, True):
        rows += measure(4, grad, rounds=2, calls=3, with_compile=False)
    return rows


def write(rows, args, started, seconds, out: Path) -> None:
    write_csv(out / "options.csv", rows)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed/options.py " + " ".join(sys.argv[1:])
    lines = ["# Options that might pay: one denoiser call of `ct-phantom64` (issue 14, item 5)", "",
             f"Command: `{cmd}`; started {started} UTC, {seconds / 60:.1f} min; one thread; {platform.machine()} "
             f"{platform.processor() or ''}, shared (1-minute load per row); torch {torch.__version__}. Median over "
             f"{args.rounds} interleaved rounds of {args.calls} calls. `D+vjp`: the call with its vector-Jacobian "
             f"product (guidance samplers). Kept as an option only at >= {WORTH}x.", "",
             "| batch | call | variant | wall ms | CPU ms | speed-up | first call s | max abs diff | >= 1.2x | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {'D+vjp' if r['grad'] else 'D'} | {r['variant']} | {r['wall_ms']:.2f} | "
                     f"{r['cpu_ms']:.2f} | {r['speedup']:.2f} | {r['first_call_s']:.2f} | {r['max_abs_diff']} | "
                     f"{'yes' if r['pays'] else 'no'} | {r['load']} |")
    (out / "options.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, t0 = time.strftime("%Y-%m-%d %H:%M", time.gmtime()), time.perf_counter()
    rows = []
    for batch in args.batches:
        for grad in (False, True):
            rows += measure(batch, grad, args.rounds, args.calls, not args.no_compile)
    write(rows, args, started, time.perf_counter() - t0, Path(args.out))


if __name__ == "__main__":
    main()
