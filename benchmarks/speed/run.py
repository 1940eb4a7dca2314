"""Sampler overhead at fixed NFE (issue 14): run time over the denoiser time it contains.

For every sampler on the shipped ``ct-phantom64`` prior and 8-view CT (``ops.make("ct-sparse8",
img_size=64)``, sigma_y 0.1, the first 4 held-out phantoms, one posterior sample each, the sampler's
``ct-sparse8`` preset with its NFE replaced by ``nfe_overrides``), at NFE 50 and 200:

- wall time (``time.perf_counter``) and CPU time (``time.process_time``) of ``iv.sample``;
- the denoiser reference: every denoiser call of the run is logged (batch, and whether it is
  differentiated: grad enabled on an input that requires grad) by a forward pre-hook on the prior,
  and priced at the cost of one call of that kind at that batch (``D(x, sigma)``, or ``D`` plus the
  vector-Jacobian product a guidance sampler takes), timed ``--ref-calls`` times just before and just
  after the run (interleaved: the reference sees the same machine load as the run);
- overhead ratio = run time / reference (wall and CPU); 1.00 means the sampler costs only its
  network calls; the target is <= 1.05;
- operator calls per NFE: the physics is wrapped here (``A``, ``A_adjoint`` and the projector's
  kernels ``_project``/``_backproject``, which autograd's backward through ``A`` also runs);
- PSNR of the sample against the truth (mean over the phantoms, data range 1).

Samplers with the issue-14 solver knobs (``cg_tol``, ``cg_warm_start``, ``gram_max``) run twice,
interleaved: ``before`` = the previous solver (``cg_tol=1e-6, cg_warm_start=False, gram_max=0``:
CG from zero to its ``cg_iters`` cap) and ``after`` = the defaults. The ``gram`` factorization of
the operator (``LinearPart``) is built once per operator and reused; it is timed separately
(``setup``) and the ``cold`` ratio charges it to a single run. Particle samplers run 2 particles
with NFE/2 steps (denoiser evaluations per sample = NFE). Samplers that cannot run the task are
listed with the reason.

    .venv/bin/python benchmarks/speed/run.py --quick   # every ratio of benchmarks/speed, < 3 minutes
    .venv/bin/python benchmarks/speed/run.py           # NFE 50 and 200: results.md, results.csv

``--quick`` prints, without writing anything: this overhead table at NFE 10 (CT), then the quick
modes of the other tables of issue 14: ``deepinv_pairs.py`` (invsolve / deepinv time and PSNR),
``throughput.py`` (samples/s against n_samples and threads), ``options.py`` (inference_mode,
channels-last) and ``benchmarks/operators/bench_ct.py`` (projector adjoint/forward and torch/astra).

The machine may be shared: the load (``/proc/loadavg``) before and after is recorded; ratios inside
one run are what counts.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

import invsolve as iv

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/speed's own modules (no operators/ here)
from machine import load  # noqa: E402
import operators as ops
from invsolve.metrics import psnr
from invsolve.phantoms import heldout_phantoms
from invsolve.samplers.toolkit import GRAM_MAX, LinearPart

HERE = Path(__file__).resolve().parent
TASKS = {
    "ct": dict(operator="ct-sparse8", params=dict(img_size=64), sigma_y=0.1, preset="ct-sparse8"),
    "inpainting": dict(operator="inpaint-random70", params=dict(img_size=64), sigma_y=0.025, preset="inpainting"),
    "deblur": dict(operator="deblur-gauss61", params={}, sigma_y=0.025, preset="deblur"),
}
BEFORE = dict(cg_tol=1e-6, cg_warm_start=False, gram_max=0)  # the solver before issue 14
PARTICLES = 2
TARGET = 1.05


class Counted:
    """Counts of the physics' operator calls: ``A``, ``A_adjoint`` (public) and, where the operator
    has them, its kernels ``_project`` / ``_backproject`` (also run by autograd's backward)."""

    NAMES = ("A", "A_adjoint", "_project", "_backproject")

    def __init__(self, physics):
        self.counts = dict.fromkeys(self.NAMES, 0)
        for name in self.NAMES:
            fn = getattr(physics, name, None)
            if fn is not None:
                setattr(physics, name, self._wrap(name, fn))  # instance attribute: the type is unchanged

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            self.counts[name] += 1
            return fn(*args, **kwargs)
        return counted

    def reset(self) -> dict:
        out = dict(self.counts)
        self.counts = dict.fromkeys(self.NAMES, 0)
        return out


class CallLog:
    """Every denoiser call on ``prior``: (batch, differentiated)."""

    def __init__(self, prior):
        self.calls: list[tuple[int, bool]] = []
        self.on = False
        prior.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if self.on:
            x = args[0]
            self.calls.append((int(x.shape[0]), bool(torch.is_grad_enabled() and x.requires_grad)))


def time_denoiser(prior, batch: int, grad: bool, calls: int, shape) -> tuple[float, float]:
    """(wall, cpu) seconds of one denoiser call (with its vector-Jacobian product if ``grad``) at ``batch``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn((batch, *shape), generator=g)
    v = torch.randn((batch, *shape), generator=g)
    wall = cpu = 0.0
    for _ in range(calls):
        w0, c0 = time.perf_counter(), time.process_time()
        if grad:
            with torch.enable_grad():
                xg = x.clone().requires_grad_(True)
                (gx,) = torch.autograd.grad((prior(xg, 1.0) * v).sum(), xg)
        else:
            with torch.no_grad():
                prior(x, 1.0)
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
    return wall / calls, cpu / calls


def sampler_overrides(name: str, nfe: int) -> dict:
    cls = iv.samplers.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    if "particles" in fields:
        return {"particles": PARTICLES, "steps": max(1, nfe // PARTICLES)}
    return iv.samplers.nfe_overrides(name, nfe)


def variants(name: str) -> list[tuple[str, dict]]:
    fields = {f.name for f in dataclasses.fields(iv.samplers.get(name))}
    before = {k: v for k, v in BEFORE.items() if k in fields}
    return [("before", before), ("after", {})] if before else [("-", {})]


def run_task(task: str, args, writer_rows: list[dict], flush=lambda: None) -> None:
    spec = TASKS[task]
    prior = iv.load_prior("ct-phantom64")
    physics = ops.make(spec["operator"], **spec["params"])
    counter = Counted(physics)
    log = CallLog(prior)
    truth = heldout_phantoms(args.phantoms, prior.shape[-1])
    with torch.no_grad():
        clean = physics.A(truth)
    y = clean + spec["sigma_y"] * torch.randn(clean.shape, generator=torch.Generator().manual_seed(args.seed + 1))
    problem = iv.Problem(physics, y, sigma_y=spec["sigma_y"], prior=prior)
    view = prior.model_problem(problem)
    counter.reset()
    w0 = time.perf_counter()
    lin = LinearPart(view, (truth.shape[0], *view.x_shape), gram_max=GRAM_MAX)  # builds (and caches) the gram factorization
    setup = time.perf_counter() - w0
    setup_ops = counter.reset()
    print(f"[{task}] LinearPart backend with gram_max={GRAM_MAX}: {lin.backend}; setup {setup:.2f} s "
          f"(operator calls {setup_ops}); load {load()}", flush=True)
    shape = tuple(view.x_shape)
    names = args.samplers or iv.samplers.names(bridge=False)
    seen_kinds: dict[str, set] = {}
    for name in names:  # a sampler's before/after pairs at every NFE first: a partial run is still a comparison
        for nfe in args.nfe:
            for variant, knobs in variants(name):
                overrides = {**sampler_overrides(name, nfe), **knobs}
                presets = getattr(iv.samplers.get(name), "PRESETS", {})
                preset = spec["preset"] if spec["preset"] in presets else None
                n_part = overrides.get("particles", 1)
                batch = truth.shape[0] * n_part
                kinds = seen_kinds.get(name, {(batch, False), (batch, True)})
                ref_before = {k: time_denoiser(prior, k[0], k[1], args.ref_calls, shape) for k in sorted(kinds)}
                log.calls, log.on = [], True
                counter.reset()
                load_before = load()
                w0, c0 = time.perf_counter(), time.process_time()
                try:
                    post = iv.sample(name, prior, problem, n_samples=1, preset=preset,
                                     generator=torch.Generator().manual_seed(args.seed), **overrides)
                except Exception as err:  # a sampler that cannot run this task: listed with the reason
                    log.on = False
                    print(f"[{task}] {name:13s} skipped: {type(err).__name__}: {err}", flush=True)
                    writer_rows.append(dict(task=task, sampler=name, variant=variant, nfe_target=nfe,
                                            error=f"{type(err).__name__}: {str(err)[:200]}"))
                    break
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                log.on = False
                ops_count = counter.reset()
                calls = list(log.calls)
                kinds = {(b, g) for b, g in calls}
                seen_kinds[name] = kinds
                ref_after = {k: time_denoiser(prior, k[0], k[1], args.ref_calls, shape) for k in sorted(kinds)}
                per = {k: tuple((ref_before[k][i] + ref_after[k][i]) / 2 if k in ref_before else ref_after[k][i]
                                for i in range(2)) for k in kinds}
                ref_wall = sum(per[c][0] for c in calls)
                ref_cpu = sum(per[c][1] for c in calls)
                x = post.samples[0].clamp(0, 1)
                score = sum(psnr(truth[i], x[i], 1.0) for i in range(truth.shape[0])) / truth.shape[0]
                n_calls = len(calls)
                uses_gram = lin.backend == "gram" and post.config.get("gram_max", 0) > 0
                row = dict(task=task, sampler=name, variant=variant, nfe_target=nfe, denoiser_calls=n_calls,
                           batch=batch, differentiated=sum(g for _, g in calls), preset=preset or "",
                           wall_s=round(wall, 3), cpu_s=round(cpu, 3), ref_wall_s=round(ref_wall, 3),
                           ref_cpu_s=round(ref_cpu, 3), ratio_wall=round(wall / ref_wall, 3),
                           ratio_cpu=round(cpu / ref_cpu, 3),
                           setup_s=round(setup, 3) if uses_gram else 0.0,
                           ratio_wall_cold=round((wall + (setup if uses_gram else 0.0)) / ref_wall, 3),
                           A_per_nfe=round(max(ops_count["A"], ops_count["_project"]) / max(n_calls, 1), 2),
                           AT_per_nfe=round(max(ops_count["A_adjoint"], ops_count["_backproject"]) / max(n_calls, 1), 2),
                           A_calls=ops_count["A"], A_adjoint_calls=ops_count["A_adjoint"],
                           project_kernels=ops_count["_project"], backproject_kernels=ops_count["_backproject"],
                           psnr=round(score, 3), load_before=load_before, load_after=load(),
                           overrides=" ".join(f"{k}={v}" for k, v in overrides.items()), error="")
                writer_rows.append(row)
                flush()  # full mode: the tables so far are on disk after every run
                print(f"[{task}] NFE {nfe:4d} {name:13s} {variant:6s} wall {row['ratio_wall']:.3f}x cpu "
                      f"{row['ratio_cpu']:.3f}x (run {wall:.1f} s, denoiser {ref_wall:.1f} s) "
                      f"A/NFE {row['A_per_nfe']:.2f} AT/NFE {row['AT_per_nfe']:.2f} PSNR {score:.2f} "
                      f"load {row['load_after']}", flush=True)


def write(rows: list[dict], args, out: Path, started: str, load_start: str, seconds: float, final: bool,
          sources: list[str] | None = None) -> None:
    fields = ["task", "sampler", "variant", "nfe_target", "denoiser_calls", "batch", "differentiated", "preset",
              "wall_s", "cpu_s", "ref_wall_s", "ref_cpu_s", "ratio_wall", "ratio_cpu", "setup_s", "ratio_wall_cold",
              "A_per_nfe", "AT_per_nfe", "A_calls", "A_adjoint_calls", "project_kernels", "backproject_kernels",
              "psnr", "load_before", "load_after", "overrides", "error"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    cmd = ".venv/bin/python benchmarks/speed/run.py " + " ".join(sys.argv[1:])
    lines = ["# Sampler overhead at fixed NFE (issue 14)", "",
             ("" if final else "**Partial: the run was still going when this was written.** ") +
             f"Command: `OMP_NUM_THREADS=1 {cmd}`; started {started} UTC, {seconds / 60:.1f} min; seed {args.seed}; "
             f"threads {torch.get_num_threads()} (torch.set_num_threads(1)); machine {platform.machine()} "
             f"{platform.processor() or ''} {os.cpu_count()} cores, shared; torch {torch.__version__}, "
             f"Python {platform.python_version()}; load (/proc/loadavg 1/5/15 min) at start {load_start}, "
             f"{'at end' if final else 'now'} {load()} (per run: `load_before`/`load_after` in results.csv).", "",
             *([f"Merged from the runs in {', '.join(sources)} (their commands, loads and times: the CSV "
                "columns and the section notes below).", ""] if sources else []),
             "Ratio = sampler run time / the time of its own denoiser calls, each call priced at one call of "
             "the same batch (with its backward pass where the sampler differentiates through the network), "
             "timed just before and after the run. `before`: the previous solver (`cg_tol=1e-6, "
             "cg_warm_start=False, gram_max=0`); `after`: the defaults. A/NFE, Aᵀ/NFE: projector kernel calls "
             "(forward, back-projection, autograd's included) per denoiser call. `cold`: the wall ratio with "
             "the one-time gram factorization of the operator charged to this run. PSNR: dB, mean of the "
             f"{args.phantoms} held-out phantoms, one sample each. Target: ratio <= {TARGET}.", ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        trows = [r for r in rows if r["task"] == task]
        nfes = list(dict.fromkeys(r["nfe_target"] for r in trows))
        spec = TASKS[task]
        lines += [f"## {task}: `{spec['operator']}`, sigma_y {spec['sigma_y']}", ""]
        head = "| sampler | solver | " + " | ".join(f"NFE {n} wall | NFE {n} CPU | NFE {n} cold" for n in nfes) + \
            " | " + " | ".join(f"A/NFE, Aᵀ/NFE @{n}" for n in nfes) + " | " + \
            " | ".join(f"PSNR @{n}" for n in nfes) + " | <= 1.05 |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        skipped = []
        for name in dict.fromkeys(r["sampler"] for r in trows):
            for variant in dict.fromkeys(r["variant"] for r in trows if r["sampler"] == name):
                vr = {r["nfe_target"]: r for r in trows if r["sampler"] == name and r["variant"] == variant}
                if any(r.get("error") for r in vr.values()):
                    skipped.append(f"{name}: {next(r['error'] for r in vr.values() if r.get('error'))}")
                    continue

                def cell(n, key, fmt="{:.2f}"):
                    return fmt.format(vr[n][key]) if n in vr else "-"
                ok = all(vr[n]["ratio_wall"] <= TARGET and vr[n]["ratio_cpu"] <= TARGET for n in vr)
                lines.append(f"| {name} | {variant} | " + " | ".join(
                    f"{cell(n, 'ratio_wall')} | {cell(n, 'ratio_cpu')} | "
                    f"{cell(n, 'ratio_wall_cold') if vr.get(n, {}).get('setup_s') else '-'}" for n in nfes)
                    + " | " + " | ".join(f"{cell(n, 'A_per_nfe')}, {cell(n, 'AT_per_nfe')}" for n in nfes)
                    + " | " + " | ".join(cell(n, "psnr") for n in nfes) + f" | {'yes' if ok else '**no**'} |")
        setups = {r["setup_s"] for r in trows if r.get("setup_s")}
        if setups:
            lines += ["", f"One-time gram factorization of the operator (`LinearPart`, built once, reused by every "
                          f"later run on it): {max(setups):.2f} s."]
        if skipped:
            lines += ["", "Not run on this task: " + "; ".join(skipped) + "."]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))


def quick_others() -> None:
    """The quick modes of the other issue-14 tables (they print their ratios)."""
    sys.path.insert(0, str(HERE))  # this folder's modules (it has no operators/ to shadow the package)
    sys.path.insert(0, str(HERE.parent / "common"))
    import deepinv_pairs
    import options
    import throughput
    from sibling import load_run

    for part in (deepinv_pairs.quick, throughput.quick, options.quick, load_run("operators", "bench_ct.py").quick):
        t0 = time.perf_counter()
        part()
        torch.set_num_threads(1)  # throughput.quick changes it
        print(f"({part.__module__}: {time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="NFE 10, 2 reference calls, CT only; prints, writes nothing")
    parser.add_argument("--tasks", nargs="+", default=["ct"], choices=list(TASKS))
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    parser.add_argument("--nfe", nargs="+", type=int, default=[50, 200])
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--ref-calls", type=int, default=4, help="denoiser calls timed before and after each run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--tables-from", nargs="+", default=None, metavar="CSV",
                        help="write results.md/results.csv in --out from the rows of earlier runs' CSVs (no runs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.tables_from:
        rows = []
        for path in args.tables_from:
            with open(path) as f:
                for r in csv.DictReader(f):
                    for k, v in r.items():
                        try:
                            r[k] = int(v) if v.lstrip("-").isdigit() else float(v)
                        except ValueError:
                            pass
                    rows.append(r)
        write(rows, args, Path(args.out), "(merged)", "see results.csv", 0.0, True,
              sources=args.tables_from)
        return
    if args.quick:
        args.nfe, args.ref_calls, args.tasks = [10], 2, ["ct"]
    torch.set_num_threads(1)
    started, load_start, t0 = time.strftime("%Y-%m-%d %H:%M", time.gmtime()), load(), time.perf_counter()
    rows: list[dict] = []
    out = Path(args.out)

    def flush(final: bool = False):
        if not args.quick:
            out.mkdir(parents=True, exist_ok=True)
            write(rows, args, out, started, load_start, time.perf_counter() - t0, final)

    for task in args.tasks:
        run_task(task, args, rows, flush)
    if args.quick:
        quick_others()
    seconds = time.perf_counter() - t0
    print(f"done in {seconds:.0f} s; load {load_start} -> {load()}", flush=True)
    flush(final=True)


if __name__ == "__main__":
    main()
