"""Quality-per-NFE frontier: every registered sampler at NFE budgets of about 20, 50, 100, 200 and 1000.

Each sampler spends a budget its own way, through ``iv.samplers.nfe_overrides(name, nfe)``; the NFE
it reports (``Posterior.nfe``, denoiser evaluations per posterior sample, particles included for the
SMC samplers) is recorded beside the budget. Two parts:

- ``exactness``: the Gaussian-mixture problems of tests/helpers.py (every-other-coordinate
  "inpainting" and a random Gaussian matrix, sigma_y 0.01 and 0.1), sampler defaults with the budget's
  overrides: sliced-Wasserstein ratio to the exact posterior, its noise floor (a second exact sample
  set) and the 2-std coverage (``invsolve.exactness.exactness_report``);
- ``ct`` / ``deblur`` / ``inpainting``: the phantom tasks of benchmarks/phantom/run.py on the shipped
  ``ct-phantom64`` prior (the task's sampler preset where the sampler has one, NFE replaced by the
  budget): PSNR/SSIM of the posterior mean (clamped to [0, 1]) on held-out phantoms, calibration =
  fraction of truth pixels inside mean +- 2 std over the posterior samples, wall and CPU seconds and
  NFE; TV and FBP/pseudo-inverse from the phantom benchmark as reference lines.

Every (task, sampler, nfe) cell is cached as JSON under ``cache/<settings>/`` as soon as it is
computed (a sampler that raises is cached with its error: delete the file to retry), so an
interrupted run resumes; ``--report`` only rewrites results.md, results.csv and the PNGs from the cache
(beside this file; ``--quick`` ones in quick/).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frontier/run.py              # full: 2 phantoms x 4 samples
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frontier/run.py --quick      # NFE 20, 50; 1 phantom x 2 samples
    .venv/bin/python benchmarks/frontier/run.py --report                       # tables and plots from the cache
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks" / "common"))

import invsolve as iv  # noqa: E402
from helpers import linear_problems, measure, mixture  # noqa: E402
from invsolve.baselines import tv  # noqa: E402
from invsolve.exactness import exactness_report  # noqa: E402
from invsolve.metrics import psnr, ssim  # noqa: E402
from invsolve.phantoms import heldout_phantoms  # noqa: E402
from sibling import load_run  # noqa: E402


phantom = load_run("phantom")

NFES = (20, 50, 100, 200, 1000)
QUICK_NFES = (20, 50)
IMAGE_TASKS = tuple(phantom.TASKS)  # ct, deblur, inpainting
TASKS = ("exactness", *IMAGE_TASKS)
SIGMAS_Y = (0.01, 0.1)
BASELINES = ("classical", "TV")


# ---------------------------------------------------------------- settings and cache

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="NFE 20, 50; 1 phantom, 2 samples, exactness on 200")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    parser.add_argument("--nfe", nargs="+", type=int, default=None, help=f"budgets (default {NFES}; quick {QUICK_NFES})")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--phantoms", type=int, default=None, help="held-out phantoms (default 2; quick 1)")
    parser.add_argument("--samples", type=int, default=None, help="posterior samples per phantom (default 4; quick 2)")
    parser.add_argument("--exact-samples", type=int, default=None, help="exactness samples (default 1000; quick 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior", default="ct-phantom64", help="prior of the image tasks (e.g. ct-phantom64-flow; "
                        "use its own --out)")
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--report", action="store_true", help="only rewrite results.md / results.csv / PNGs from the cache")
    parser.add_argument("--import-csv", default=None, metavar="CSV",
                        help="first store the cells of a committed results.csv that the cache lacks (the cache is not "
                             "committed: a fresh checkout resumes from the committed table)")
    args = parser.parse_args(argv)
    quick = dict(nfe=list(QUICK_NFES), phantoms=1, samples=2, exact_samples=200)
    full = dict(nfe=list(NFES), phantoms=2, samples=4, exact_samples=1000)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.samples < 2:
        parser.error("--samples must be >= 2 (calibration needs a posterior std)")
    args.samplers = args.samplers or iv.samplers.names(bridge=False)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def settings_name(args) -> str:
    prior = "" if args.prior == "ct-phantom64" else f"-{args.prior}"
    return f"phantoms{args.phantoms}-samples{args.samples}-exact{args.exact_samples}-seed{args.seed}{prior}"


def cell_path(cache: Path, task: str, method: str, nfe: int | None) -> Path:
    return cache / (f"{task}__{method}" + ("" if nfe is None else f"__nfe{nfe}") + ".json")


def provenance(args) -> dict:
    """Where and how a cell was computed (stored in every cell: resumed runs may mix invocations)."""
    return {"machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {platform.node()}",
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "command": getattr(args, "script", "benchmarks/frontier/run.py") + " " + " ".join(args.argv), "seed": args.seed,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "git": GIT_STATE}


def git_state() -> str:
    """HEAD and whether the sampler / operator code differs from it (others edit this repository concurrently)."""
    import subprocess

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--", "invsolve", "operators")
    return git("rev-parse", "--short", "HEAD") + ("+uncommitted-changes" if dirty else "")


GIT_STATE = git_state()


def write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


class Cells:
    """The cache of one settings folder: ``get`` returns a stored cell or computes, stores and returns it."""

    def __init__(self, cache: Path, args):
        self.cache, self.args, self.computed = cache, args, 0

    def get(self, task: str, method: str, nfe: int | None, compute, plan: dict | None = None) -> dict:
        """``plan`` (a sampler's preset and overrides): a cached cell made with another plan (a sampler's
        ``for_nfe`` or preset changed since) is recomputed."""
        path = cell_path(self.cache, task, method, nfe)
        if path.exists():
            row = json.loads(path.read_text())
            if plan is None or all(row.get(k) == v for k, v in plan.items()):
                return row
            print(f"{task} {method} {nfe}: cached with {[row.get(k) for k in plan]}, now {list(plan.values())}: recomputed")
        start = time.perf_counter()
        try:
            row = compute()
        except Exception as err:  # a sampler that cannot run this cell: recorded, not retried
            row = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:300],
                   "traceback": traceback.format_exc(limit=3)[-1500:]}
        row = {"task": task, "method": method, "budget": nfe, **(plan or {}), **row,
               "cell_seconds": time.perf_counter() - start,
               **provenance(self.args)}
        write_atomic(path, row)
        self.computed += 1
        print(summary(row), flush=True)
        return row


def summary(row: dict) -> str:
    head = f"{row['task']:24s} {row['method']:14s} budget {str(row['budget']):>5s}"
    if "error" in row:
        return f"{head}  FAILED {row['error']}"
    if row["task"] in IMAGE_TASKS:
        return (f"{head}  NFE {row['nfe']:>6}  PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.3f}  "
                f"calib {row.get('calibration', float('nan')):.3f}  {row['seconds']:.1f}s")
    return f"{head}  NFE {row['nfe']:>6}  ratio {row['ratio']:.3f} (floor {row['floor']:.3f})  cov {row['coverage']:.3f}"


# ---------------------------------------------------------------- exactness part

def exactness_problems() -> dict:
    """``{"exactness-<problem>-<sigma_y>": Problem}`` on the tests' Gaussian mixture."""
    gm = mixture()
    return {f"exactness-{name}-{s}": measure(gm, physics, s) for name, physics in linear_problems().items() for s in SIGMAS_Y}


def run_exactness(cells: Cells, args) -> None:
    gm = mixture()
    for task, problem in exactness_problems().items():
        for nfe in args.nfe:
            for name in args.samplers:
                overrides = iv.samplers.nfe_overrides(name, nfe)

                def compute(name=name, overrides=overrides, problem=problem):
                    report, wall, cpu = timed(lambda: exactness_report(name, gm, problem, n=args.exact_samples,
                                                                       seed=args.seed, **overrides))
                    return {**report, "sampler_seconds": report["seconds"], "seconds": wall, "cpu_seconds": cpu}
                cells.get(task, name, nfe, compute, plan={"overrides": overrides})


# ---------------------------------------------------------------- image part

def image_setup(task: str, args) -> dict:
    """Truth (held-out phantoms), physics, measurement and problem of a phantom task (the phantom
    benchmark's operators, noise levels and measurement seed)."""
    prior = iv.load_prior(args.prior)
    size = prior.image_shape[-1]
    spec = phantom.TASKS[task]
    truth = heldout_phantoms(args.phantoms, size)
    physics = phantom.make_physics(task, size)
    y = phantom.measure(physics, truth, spec["sigma_y"], args.seed + 1)
    return {"prior": prior, "truth": truth, "physics": physics, "y": y, "spec": spec,
            "problem": iv.Problem(physics, y, sigma_y=spec["sigma_y"], prior=prior)}


def image_scores(truth: torch.Tensor, estimate: torch.Tensor) -> dict:
    per = [(psnr(truth[i], estimate[i], 1.0), ssim(truth[i], estimate[i], 1.0)) for i in range(truth.shape[0])]
    return {"psnr": sum(p for p, _ in per) / len(per), "ssim": sum(s for _, s in per) / len(per),
            "per_image_psnr": [p for p, _ in per]}


def calibration(truth: torch.Tensor, samples: torch.Tensor) -> float:
    """Fraction of truth pixels within mean +- 2 std of the (unclamped) posterior samples."""
    mean, std = samples.mean(0), samples.std(0)
    return float(((truth.to(samples.dtype) - mean).abs() <= 2 * std).double().mean())


def timed(fn):
    """``(fn(), wall seconds, CPU seconds of this process)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def tv_lambda(task: str, size: int, args) -> tuple[float, dict]:
    """``phantom.choose_tv_lambda`` (training-seed phantoms: depends on task, size and seed only), cached in
    ``cache/tv-lambda-seed<seed>.json`` so that every settings folder shares one choice."""
    path = Path(args.out) / "cache" / f"tv-lambda-size{size}-seed{args.seed}.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    if task not in known:
        lam, grid = phantom.choose_tv_lambda(task, size, args.seed)
        known[task] = {"lam": lam, "grid": {str(k): v for k, v in grid.items()}}
        write_atomic(path, known)
    return known[task]["lam"], known[task]["grid"]


def baseline_label(task: str, which: str) -> str:
    return "TV" if which == "TV" else "FBP" if task == "ct" else "pseudo-inverse"


def baseline_cell(task: str, which: str, setup: dict, args) -> dict:
    """FBP / pseudo-inverse or TV (weight chosen on training-seed phantoms, not timed) on the held-out set."""
    physics, y = setup["physics"], setup["y"]
    if which == "classical":
        config = {"name": baseline_label(task, which)}
        x, wall, cpu = timed(lambda: phantom.classical(task, physics, y).clamp(0, 1))
    else:
        lam, grid = tv_lambda(task, setup["prior"].image_shape[-1], args)
        config = {"name": baseline_label(task, which), "lam": lam, "grid_psnr_training_seed": grid}
        x, wall, cpu = timed(lambda: tv(physics, y, lam=lam, iterations=150))
    return {**image_scores(setup["truth"], x), "nfe": 0, "seconds": wall, "cpu_seconds": cpu, "config": config}


def image_plan(name: str, task: str, nfe: int) -> dict:
    """The task's preset where sampler ``name`` has one, and the budget's overrides
    (``nfe_overrides``, splitting a particle sampler's budget from the preset's particle count)."""
    presets = getattr(iv.samplers.get(name), "PRESETS", {})
    preset = phantom.TASKS[task]["preset"] if phantom.TASKS[task]["preset"] in presets else None
    return {"preset": preset, "overrides": iv.samplers.nfe_overrides(name, nfe, presets.get(preset, {}).get("particles"))}


def sampler_cell(name: str, plan: dict, setup: dict, args) -> dict:
    preset, overrides = plan["preset"], plan["overrides"]
    gens = [torch.Generator().manual_seed(args.seed + 100 * j) for j in range(args.samples)]
    post, wall, cpu = timed(lambda: iv.sample(name, setup["prior"], setup["problem"], n_samples=args.samples,
                                              preset=preset, generator=gens, **overrides))
    truth = setup["truth"]
    if not torch.isfinite(post.samples).all():
        raise FloatingPointError(f"{name} returned non-finite samples with {overrides}")
    return {**image_scores(truth, post.mean.clamp(0, 1)), "calibration": calibration(truth, post.samples),
            "nfe": post.nfe, "seconds": wall, "cpu_seconds": cpu, "sampler_seconds": post.seconds,
            "config": post.config}


def run_images(cells: Cells, args) -> None:
    """Budgets in increasing order, every task and sampler per budget, the 61x61 deblur last: the cheap cells
    come first, so an interrupted run leaves the widest frontier."""
    tasks = [t for t in ("ct", "inpainting", "deblur") if t in args.tasks]
    setups = {}
    for nfe in sorted(args.nfe):
        for task in tasks:
            setup = setups.get(task) or try_setup(task, args)
            if setup is None:
                continue  # not cached: retried at the next budget and the next invocation
            setups[task] = setup
            for which in BASELINES:
                cells.get(task, which, None, lambda task=task, which=which: baseline_cell(task, which, setup, args))
            for name in args.samplers:
                plan = image_plan(name, task, nfe)
                cells.get(task, name, nfe, lambda name=name, plan=plan, setup=setup: sampler_cell(name, plan, setup, args),
                          plan=plan)


def try_setup(task: str, args) -> dict | None:
    """``image_setup``, or ``None`` (with a message) where the task's operator cannot be built right now."""
    try:
        return image_setup(task, args)
    except Exception as err:
        print(f"{task}: cannot set up the task ({type(err).__name__}: {err}); skipped for now", flush=True)
        return None


# ---------------------------------------------------------------- report

def import_csv(path: Path, cache: Path) -> int:
    """Store every cell of ``path`` (a results.csv this script wrote) that ``cache`` lacks; returns how many.
    The CSV leaves out the per-image lists and tracebacks; everything the report and the plan check read
    is there (empty fields are dropped, ``preset`` '' is None, ``overrides`` is JSON)."""
    added = 0
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            budget = int(raw["budget"]) if raw["budget"] else None
            target = cell_path(cache, raw["task"], raw["method"], budget)
            if target.exists():
                continue
            row = {"task": raw["task"], "method": raw["method"], "budget": budget}
            for key, value in raw.items():
                if key in row or value == "":
                    continue
                if key == "overrides":
                    row[key] = json.loads(value)
                    continue
                try:
                    row[key] = int(value) if value.lstrip("-").isdigit() else float(value)
                except ValueError:
                    row[key] = value
            if "overrides" in row:
                row.setdefault("preset", None)
            write_atomic(target, row)
            added += 1
    return added


def load_cells(cache: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))]


def pick(rows, task, method, nfe):
    return next((r for r in rows if r["task"] == task and r["method"] == method and r["budget"] == nfe), None)


def fmt(value, spec=".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def failure(row: dict) -> str:
    """'n/a' where the sampler refuses the operator (a ``PhysicsError``, e.g. no exact SVD), else 'failed'."""
    kind = "n/a" if row["error"].startswith("PhysicsError") else "failed"
    return f"{kind}: {row['error'].split(': ', 1)[-1][:70]}"


def secs(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def fastest_beating_tv(rows: list[dict], task: str) -> str:
    tv_row = pick(rows, task, "TV", None)
    if tv_row is None:
        return "TV not run yet."
    good = [r for r in rows if r["task"] == task and r["budget"] is not None and "error" not in r
            and r["psnr"] > tv_row["psnr"]]
    if not good:
        return f"No sampler cell computed so far beats TV's PSNR ({tv_row['psnr']:.2f} dB)."
    best = min(good, key=lambda r: r["cpu_seconds"])
    return (f"Fastest sampler (CPU seconds) beating TV's PSNR ({tv_row['psnr']:.2f} dB), among the cells computed: "
            f"**{best['method']}** at budget {best['budget']} (NFE {best['nfe']}): {best['psnr']:.2f} dB in "
            f"{best['cpu_seconds']:.1f} s CPU ({best['seconds']:.1f} s wall); TV itself takes {tv_row['cpu_seconds']:.1f} s "
            f"CPU ({tv_row['seconds']:.1f} s wall; its weight chosen beforehand, not timed).")


def image_section(rows: list[dict], task: str, args) -> list[str]:
    spec = phantom.TASKS[task]
    lines = [f"## {task}", "", f"`{spec['operator']}`, sigma_y {spec['sigma_y']}, sampler preset `{spec['preset']}` "
             f"where the sampler has one (else defaults), NFE from the budget. ![{task}]({task}.png)", "",
             fastest_beating_tv(rows, task), "", "| method | " + " | ".join(f"NFE~{n}" for n in args.nfe) + " |",
             "|---|" + "---|" * len(args.nfe)]
    for which in BASELINES:
        r = pick(rows, task, which, None)
        label = baseline_label(task, which)
        cell = "not run" if r is None else f"{r['psnr']:.2f} / {r['ssim']:.3f} ({secs(r['cpu_seconds'])})"
        lines.append(f"| {label} (no NFE) | " + " | ".join([cell] * len(args.nfe)) + " |")
    for name in args.samplers:
        cells = []
        for nfe in args.nfe:
            r = pick(rows, task, name, nfe)
            cells.append("not run" if r is None else failure(r) if "error" in r else
                         f"{r['psnr']:.2f} / {r['ssim']:.3f} / {r['calibration']:.2f} ({fmt(r['nfe'], 'g')}, {secs(r['cpu_seconds'])})")
        presets = {r.get("preset") for r in rows if r["task"] == task and r["method"] == name and "error" not in r}
        label = name + (" (defaults)" if presets == {None} else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def exactness_section(rows: list[dict], task: str, args) -> list[str]:
    floors = [r["floor"] for r in rows if r["task"] == task and "floor" in r]
    lines = [f"### {task.removeprefix('exactness-')}", "",
             f"Noise floor of the ratio: {fmt(floors[0] if floors else None, '.3f')}. ![{task}]({task}.png)", "",
             "| sampler | " + " | ".join(f"NFE~{n}" for n in args.nfe) + " |", "|---|" + "---|" * len(args.nfe)]
    for name in args.samplers:
        cells = []
        for nfe in args.nfe:
            r = pick(rows, task, name, nfe)
            cells.append("not run" if r is None else failure(r) if "error" in r else
                         f"{r['ratio']:.3f} / {r['coverage']:.2f} ({fmt(r['nfe'], 'g')})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def ideal_calibration(n: int) -> float:
    """Expected calibration of an exact sampler with ``n`` draws: the truth is one more posterior draw, so
    (truth - mean) / std is Student-t with n - 1 dof times sqrt(1 + 1/n) (per pixel, Gaussian posterior)."""
    from scipy.stats import t

    return float(2 * t.cdf(2 / math.sqrt(1 + 1 / n), n - 1) - 1)


def header(rows: list[dict], args, cache: Path) -> list[str]:
    machines = sorted({r["machine"] for r in rows}) or [provenance(args)["machine"]]
    threads = sorted({r["torch_threads"] for r in rows}) or [args.threads]
    dates = sorted(r["date"] for r in rows) or ["-"]
    commands = ", ".join(f"`{c}`" for c in sorted({r["command"] for r in rows}))
    provenance_line = (
        f"Machine: {'; '.join(machines)}; torch threads: {', '.join(map(str, threads))}; torch {torch.__version__}; "
        f"seed {args.seed}; cells computed {dates[0]} to {dates[-1]} by {commands} (cache `cache/{cache.name}`); "
        f"report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    budgets = (
        "Budgets become hyperparameters through `iv.samplers.nfe_overrides(name, nfe)`; the NFE in brackets is the "
        "one the sampler reports (`Posterior.nfe`: denoiser evaluations per posterior sample, particles included "
        "for the SMC samplers mcgdiff / fps / tds: steps x particles, the preset's particles while the budget buys "
        "20 steps of them, else 20 steps of fewer particles). Seconds: CPU seconds (`time.process_time`, 1 torch thread) of the sampler call (or of the TV / "
        "FBP solve); the machine was shared with other jobs, so wall seconds (results.csv) were up to several "
        "times longer and vary with the load. 'not run': no cached cell yet; "
        "'n/a': the sampler refuses the operator (`PhysicsError`, e.g. it "
        "needs an exact SVD); 'failed': it raised otherwise or returned non-finite samples (errors in results.csv).")
    images = (
        f"Images: {args.phantoms} held-out phantoms (64x64, `{args.prior}` prior) x {args.samples} posterior samples "
        "(own generator per draw); '(defaults)': the sampler has no preset for the task; cell = PSNR / SSIM of the posterior mean (clamped to [0, 1]) / calibration "
        "(fraction of truth pixels inside mean +- 2 std of the samples; an exact sampler would score about "
        f"{ideal_calibration(args.samples):.2f} with {args.samples} samples on a Gaussian posterior) (NFE, CPU seconds). "
        "Baselines as in benchmarks/phantom/run.py (TV weight chosen on training-seed phantoms).")
    return [f"# Quality per NFE: every sampler at NFE budgets {', '.join(map(str, args.nfe))}", "",
            provenance_line, "", budgets, "", images, ""]


def write_report(args, cache: Path, out: Path) -> None:
    rows = load_cells(cache)
    lines = header(rows, args, cache)
    for task in (t for t in IMAGE_TASKS if t in args.tasks):
        lines += image_section(rows, task, args)
    if "exactness" in args.tasks:
        lines += ["## exactness (Gaussian mixture d = 16, K = 3)", "",
                  f"{args.exact_samples} samples per cell, sampler defaults with the budget's overrides; cell = "
                  "SW ratio to the exact posterior (tests' criterion <= 0.25) / 2-std coverage of exact draws "
                  "(NFE).", ""]
        for task in exactness_problems():
            lines += exactness_section(rows, task, args)
    (out / "results.md").write_text("\n".join(lines))
    write_csv(rows, out / "results.csv")
    plot_all(rows, args, out)


def write_csv(rows: list[dict], path: Path) -> None:
    skip = {"config", "per_image_psnr", "traceback"}
    rows = sorted(rows, key=lambda r: (r["task"], r["method"], r["budget"] or 0))
    rows = [{**r, "overrides": json.dumps(r["overrides"])} if "overrides" in r else r for r in rows]
    fields = []
    for r in rows:
        fields += [k for k in r if k not in skip and k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_all(rows: list[dict], args, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task in (t for t in IMAGE_TASKS if t in args.tasks):
        plot_image_task(plt, rows, task, args, out / f"{task}.png")
    if "exactness" in args.tasks:
        for task in exactness_problems():
            plot_exactness(plt, rows, task, args, out / f"{task}.png")


MARKERS = "osD^v<>ph*Xd"


def style(plt, name: str) -> dict:
    """A fixed colour and marker per registered sampler (the same in every plot)."""
    i = iv.samplers.names().index(name) if name in iv.samplers.names() else 0
    return {"color": plt.get_cmap("tab20")(i % 20), "marker": MARKERS[i % len(MARKERS)], "ls": "-" if i % 2 else "--"}


def nfe_ticks(ax, args) -> None:
    """Plain tick labels at the budgets on a log NFE axis."""
    ax.set_xticks(list(args.nfe), [str(n) for n in args.nfe])
    ax.set_xticks([], minor=True)


def sampler_series(rows, task, name, args, x_key, y_key):
    got = [pick(rows, task, name, n) for n in args.nfe]
    got = [r for r in got if r is not None and "error" not in r]
    return [r[x_key] for r in got], [r[y_key] for r in got]


def plot_image_task(plt, rows, task, args, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, x_key, label in ((axes[0], "nfe", "NFE (reported, per posterior sample)"), (axes[1], "cpu_seconds", "CPU seconds (1 thread)")):
        for name in args.samplers:
            xs, ys = sampler_series(rows, task, name, args, x_key, "psnr")
            if xs:
                ax.plot(xs, ys, label=name, **style(plt, name))
        for which, color in zip(BASELINES, ("grey", "black")):
            r = pick(rows, task, which, None)
            if r is not None:
                ax.axhline(r["psnr"], color=color, ls=":", label=baseline_label(task, which))
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    nfe_ticks(axes[0], args)
    axes[0].set_ylabel("PSNR of the posterior mean (dB)")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{task}: {args.phantoms} held-out phantoms x {args.samples} samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_exactness(plt, rows, task, args, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for name in args.samplers:
        xs, ys = sampler_series(rows, task, name, args, "nfe", "ratio")
        if xs:
            ax.plot(xs, ys, label=name, **style(plt, name))
    floors = [r["floor"] for r in rows if r["task"] == task and "floor" in r]
    if floors:
        ax.axhline(floors[0], color="black", ls=":", label="noise floor")
    ax.axhline(0.25, color="grey", ls="--", lw=0.8, label="criterion 0.25")
    ax.set_xscale("log")
    ax.set_yscale("log")
    nfe_ticks(ax, args)
    ax.set_xlabel("NFE (reported, per posterior sample)")
    ax.set_ylabel("SW(sampler, exact) / SW(prior, exact)")
    ax.set_title(f"{task} ({args.exact_samples} samples)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    """Run (or with ``--report`` only report) the frontier; returns the number of cells computed."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cache = out / "cache" / settings_name(args)
    cache.mkdir(parents=True, exist_ok=True)
    cells = Cells(cache, args)
    if args.import_csv:
        print(f"imported {import_csv(Path(args.import_csv), cache)} cells from {args.import_csv}", flush=True)
    if not args.report:
        if "exactness" in args.tasks:
            run_exactness(cells, args)
        run_images(cells, args)
    report_dir = out / "quick" if args.quick else out
    report_dir.mkdir(exist_ok=True)
    write_report(args, cache, report_dir)
    print(f"computed {cells.computed} cells; report in {report_dir}", flush=True)
    return cells.computed


if __name__ == "__main__":
    main()
