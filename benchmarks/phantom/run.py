"""Image table: every sampler on the shipped ``ct-phantom64`` prior, against FBP/pseudo-inverse and TV.

Tasks (64x64 held-out phantoms, seed ``HELDOUT_SEED``, never seen in training, plus Shepp-Logan):

- ``ct``: 8-view parallel-beam CT (``ct-sparse8``), sigma_y = 0.1 in sinogram units; sampler preset ``ct-sparse8``;
- ``deblur``: ``deblur-gauss61`` (61x61, std 3, DPS/DAPS), sigma_y = 0.025 ([0, 1] units, i.e. the official
  0.05 on [-1, 1]); sampler preset ``deblur``;
- ``inpainting``: ``inpaint-random70`` (70 % of pixels missing), sigma_y = 0.025; sampler preset ``inpainting``.

A sampler without the task's preset runs at its defaults. For ``deblur`` and ``inpainting``
``--nfe`` is a cap: a preset (or default) whose NFE exceeds it runs at ``--nfe``
(``nfe_overrides``, keeping the other hyperparameters of the preset, for particle samplers the
preset's particle count), and one at or below it runs as it is, so the NFE is
``min(preset NFE, --nfe)`` and the table stays affordable on CPU. The resolved configuration of
every run is in ``results.json``. A sampler that cannot run on a task (e.g. DDRM without an exact
SVD of the operator) gets a row saying why.
The TV weight is chosen per task on training-distribution phantoms (seed 123) from a small grid.
Mean-of-samples is the reported estimate; best-of-N (oracle: it picks by PSNR against the truth) is
reported separately and labelled as such.

Each (task, method) result is cached under ``--out/cache/<settings>`` as soon as it is computed, so an
interrupted run resumes where it stopped (delete a cached file to recompute it after changing a sampler).
A cached sampler row is used only when its preset and resolved hyperparameters are the ones this
run would use (so rows cached before the cap rule, when ``--nfe`` also raised a smaller preset NFE, are
recomputed); a row that recorded a refusal (a sampler that could not run on the task) is always
recomputed. ``--reuse results.json`` treats the rows of an earlier results file made with the same
settings as cache entries on the same condition, and keeps its rows of tasks and methods this run
does not compute in the tables (marked where they ran under the old rule).

    .venv/bin/python benchmarks/phantom/run.py [--tasks ct deblur inpainting] [--samplers dps daps ...]
    .venv/bin/python benchmarks/phantom/run.py --samplers ddrm ddnm --reuse benchmarks/phantom/results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

import invsolve as iv
import operators as ops
from operators.errors import PhysicsError
from invsolve.baselines import fbp, least_squares, tv
from invsolve.metrics import psnr, ssim
from invsolve.phantoms import heldout_phantoms, random_ellipses, shepp_logan

HERE = Path(__file__).resolve().parent
TASKS = {
    "ct": dict(operator="ct-sparse8", sigma_y=0.1, preset="ct-sparse8", cap_nfe=False),
    "deblur": dict(operator="deblur-gauss61", sigma_y=0.025, preset="deblur", cap_nfe=True),
    "inpainting": dict(operator="inpaint-random70", sigma_y=0.025, preset="inpainting", cap_nfe=True),
}
TV_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def make_physics(task: str, size: int):
    name = TASKS[task]["operator"]
    return ops.make(name, img_size=size) if name != "deblur-gauss61" else ops.make(name)


def measure(physics, truth, sigma_y, seed):
    clean = physics.A(truth)
    return clean + sigma_y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed), dtype=clean.dtype)


def classical(task: str, physics, y):
    """The classical row of a task's table: FBP for CT, the least-squares ``A_dagger`` otherwise."""
    return fbp(physics, y) if task == "ct" else least_squares(physics, y)


def training_problem(task: str, n: int, prior):
    """(truth, problem, baseline) on ``n`` training-distribution phantoms (seed 123, never the
    held-out set), noise seed 1: what the preset tune scripts choose settings on."""
    truth = random_ellipses(n, prior.image_shape[-1], torch.Generator().manual_seed(123))
    physics = make_physics(task, prior.image_shape[-1])
    sigma_y = TASKS[task]["sigma_y"]
    y = measure(physics, truth, sigma_y, 1)
    baseline = classical(task, physics, y)  # FBP for CT, the pseudo-inverse otherwise (unclamped)
    return truth, iv.Problem(physics, y, sigma_y=sigma_y, prior=prior), baseline


def scores(truth, images) -> dict:
    n = truth.shape[0]
    per = [(psnr(truth[i], images[i], 1.0), ssim(truth[i], images[i], 1.0)) for i in range(n)]
    held = per[:-1]
    return {"psnr_heldout": sum(p for p, _ in held) / len(held), "ssim_heldout": sum(s for _, s in held) / len(held),
            "psnr_shepp_logan": per[-1][0], "ssim_shepp_logan": per[-1][1], "per_image_psnr": [p for p, _ in per]}


def choose_tv_lambda(task: str, size: int, seed: int) -> tuple[float, dict]:
    """TV weight with the best mean PSNR on 4 training-distribution phantoms (seed 123)."""
    truth = random_ellipses(4, size, torch.Generator().manual_seed(123))
    physics = make_physics(task, size)
    y = measure(physics, truth, TASKS[task]["sigma_y"], seed + 7)
    grid = {}
    for lam in TV_GRID:
        x = tv(physics, y, lam=lam, iterations=150)
        grid[lam] = sum(psnr(truth[i], x[i], 1.0) for i in range(truth.shape[0])) / truth.shape[0]
    return max(grid, key=grid.get), grid


def planned_nfe(name: str, preset: str | None) -> int:
    """The NFE of sampler ``name`` at ``preset`` (its defaults for None), in ``Posterior.nfe``'s
    accounting: DAPS levels x ODE steps, a particle sampler steps x particles, otherwise steps
    times the evaluations per step that ``nfe_overrides`` assumes (2 for TPDM/DiffusionMBIR)."""
    cfg = iv.samplers.configure(name, preset)
    probe = iv.samplers.nfe_overrides(name, 10_000)
    if "levels" in probe:
        return cfg.levels * cfg.ode_steps
    per_step = getattr(cfg, "particles", None) or round(10_000 / probe["steps"])
    return cfg.steps * per_step


def nfe_cap_overrides(name: str, preset: str | None, cap: int) -> dict:
    """Overrides giving ``min(planned_nfe, cap)`` evaluations: none when the preset is within the
    cap, else ``nfe_overrides(name, cap)`` (a particle sampler splits the cap from the preset's
    particle count)."""
    if planned_nfe(name, preset) <= cap:
        return {}
    return iv.samplers.nfe_overrides(name, cap, getattr(iv.samplers.configure(name, preset), "particles", None))


def task_preset(name: str, task: str) -> str | None:
    preset = TASKS[task]["preset"]
    return preset if preset in getattr(iv.samplers.get(name), "PRESETS", {}) else None


def expected(name: str, task: str, cap: int) -> tuple[str | None, dict]:
    """(preset, NFE overrides) that this run uses for sampler ``name`` on ``task``."""
    preset = task_preset(name, task)
    return preset, (nfe_cap_overrides(name, preset, cap) if TASKS[task]["cap_nfe"] else {})


def settings(args) -> dict:
    return {"phantoms": args.phantoms, "samples": args.samples, "nfe": args.nfe, "seed": args.seed}


def valid_row(row: dict, task: str, args) -> bool:
    """A cached or reused row stands for this run: same settings where recorded and, for a sampler,
    the preset and the hyperparameters that the cap rule gives."""
    if row.get("settings", settings(args)) != settings(args):
        return False
    if "error" in row:  # a refusal costs nothing to reproduce, and a sampler that learned the task must show it
        return False
    if row["method"] in ("FBP", "pseudo-inverse", "TV"):
        return True
    preset, overrides = expected(row["method"], task, args.nfe)
    if row.get("preset") != preset:
        return False
    configure = iv.samplers.configure  # same resolved hyperparameters (e.g. steps=200 on a 200-step preset)
    now = configure(row["method"], preset, **overrides)
    if configure(row["method"], preset, **row.get("overrides", {})) != now:
        return False
    # the hyperparameters the row recorded must still be the preset's (a changed preset recomputes it)
    current = json.loads(json.dumps(dataclasses.asdict(now), default=str))
    return all(current[k] == v for k, v in row.get("config", {}).items() if k in current)


def run_task(task: str, samplers: list[str], args, cache: Path, reuse: dict) -> list[dict]:
    prior = iv.load_prior("ct-phantom64")
    size = prior.image_shape[-1]
    truth = torch.cat([heldout_phantoms(args.phantoms, size), shepp_logan(size)])
    physics = make_physics(task, size)
    spec = TASKS[task]
    y = measure(physics, truth, spec["sigma_y"], args.seed + 1)
    problem = iv.Problem(physics, y, sigma_y=spec["sigma_y"], prior=prior)
    rows = []

    def cached(method: str, compute):
        path = cache / f"{task}__{method}.json"
        if path.exists():
            row = json.loads(path.read_text())
            if valid_row(row, task, args):
                return row
        old = reuse.get((task, method))
        if old is not None and valid_row(old, task, args):
            return old
        row = {"task": task, "method": method, **compute(), "settings": settings(args),
               "run": {"command": command_line(), "date": time.strftime("%Y-%m-%d")}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, indent=1))
        tmp.replace(path)
        if "error" in row:
            print(f"{task:10s} {method:22s} not run: {row['error']}", flush=True)
        else:
            print(f"{task:10s} {method:22s} PSNR {row['psnr_heldout']:.2f} SSIM {row['ssim_heldout']:.3f} "
                  f"{row['seconds']:.1f}s NFE {row['nfe']}", flush=True)
        return row

    def baseline_pinv():
        start = time.perf_counter()
        x = classical(task, physics, y).clamp(0, 1)
        return {**scores(truth, x), "seconds": time.perf_counter() - start, "nfe": 0, "config": {}}

    def baseline_tv():
        lam, grid = choose_tv_lambda(task, size, args.seed)
        start = time.perf_counter()
        x = tv(physics, y, lam=lam, iterations=150)
        return {**scores(truth, x), "seconds": time.perf_counter() - start, "nfe": 0,
                "config": {"lam": lam, "grid_psnr_training_seed": grid}}

    rows.append(cached("FBP" if task == "ct" else "pseudo-inverse", baseline_pinv))
    rows.append(cached("TV", baseline_tv))
    for name in samplers:
        def sampler_run(name=name):
            preset, overrides = expected(name, task, args.nfe)
            try:
                post = iv.sample(name, prior, problem, n_samples=args.samples, preset=preset,
                                 generator=[torch.Generator().manual_seed(args.seed + 100 * j)
                                            for j in range(args.samples)], **overrides)
            except PhysicsError as error:  # e.g. DDRM / MCGdiff without an exact SVD of the operator
                return {"error": f"{type(error).__name__}: {error}", "preset": preset, "overrides": overrides,
                        "nfe": 0, "seconds": 0.0}
            mean = post.mean.clamp(0, 1)
            best = torch.stack([max((post.samples[j, i].clamp(0, 1) for j in range(args.samples)),
                                    key=lambda s: psnr(truth[i], s, 1.0)) for i in range(truth.shape[0])])
            oracle = scores(truth, best)
            return {**scores(truth, mean), "seconds": post.seconds, "nfe": post.nfe, "preset": preset,
                    "overrides": overrides, "config": post.config,
                    "oracle_best_of_n_psnr_heldout": oracle["psnr_heldout"]}
        rows.append(cached(name, sampler_run))
    return rows


def command_line() -> str:
    """This run's command, without its ``--note`` (a header sentence, not a setting)."""
    argv = sys.argv[1:]
    if "--note" in argv:
        i = argv.index("--note")
        argv = argv[:i] + argv[i + 2:]
    return f".venv/bin/python benchmarks/phantom/run.py {' '.join(argv)}".strip()


def write_tables(rows: list[dict], args, out: Path) -> None:
    runs = []
    for r in rows:
        run = r.get("run") or {}
        item = f"`{run.get('command', '?')}` ({run.get('date', '?')})"
        if item not in runs:
            runs.append(item)
    lines = ["# Samplers on the shipped ct-phantom64 prior (held-out phantoms)", "",
             f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"seed {args.seed}. Rows computed by: " + "; ".join(runs) + " (each row's command and date are "
             "in results.json; a later command reuses the earlier rows that are valid for it).", "",
             f"{args.phantoms} held-out phantoms (seed 1000003) + Shepp-Logan, 64x64, data range 1. Samplers: "
             f"mean of {args.samples} posterior samples (each with its own generator); 'best-of-N (oracle)' picks "
             "per image the sample closest to the truth and is NOT a valid estimate, shown only for comparison "
             "with papers that report it. Tasks: " + "; ".join(
                 f"{t}: `{s['operator']}`, sigma_y {s['sigma_y']}, sampler preset `{s['preset']}`"
                 + (f" with NFE min(preset NFE, {args.nfe})" if s["cap_nfe"] else "") for t, s in TASKS.items())
             + f". NFE rule for deblur and inpainting: a preset (or default) above {args.nfe} NFE runs at {args.nfe} "
             "(`nfe_overrides`; particle samplers keep the preset's particles and take "
             f"{args.nfe} // particles steps), one at or below runs unchanged. NFE counts denoiser evaluations per "
             "posterior sample, every particle included. Rows marked 'old rule' were computed when `--nfe` "
             "replaced the preset's NFE also upwards and are not re-run (their preset's own NFE is given). "
             "Seconds are wall time on a shared machine whose load differed between the commands.", ""]
    if args.note:
        lines += [f"Note: {args.note}", ""]
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        base = next(r for r in task_rows if r["method"] in ("FBP", "pseudo-inverse"))
        tv_row = next(r for r in task_rows if r["method"] == "TV")
        lines += [f"## {task}", "",
                  "| method | PSNR held-out | SSIM held-out | PSNR Shepp-Logan | SSIM Shepp-Logan | best-of-N PSNR (oracle) "
                  "| seconds | NFE | beats FBP/pinv | beats TV |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        base_names = ("FBP", "pseudo-inverse", "TV")
        for r in task_rows:
            sampler = r["method"] not in base_names
            if "error" in r:  # the first sentence of the error (the rest is in results.json)
                label = r["method"] + (f" (`{r['preset']}`)" if r.get("preset") else " (defaults)")
                reason = r["error"].split(". ")[0].replace("|", "/")
                lines.append(f"| {label} | cannot run: {reason} | - | - | - | - | - | - | - | - |")
                continue
            oracle = f"{r['oracle_best_of_n_psnr_heldout']:.2f}" if sampler else "-"
            beats = (("yes" if r["psnr_heldout"] > base["psnr_heldout"] else "**no**"),
                     ("yes" if r["psnr_heldout"] > tv_row["psnr_heldout"] else "no")) if sampler else ("-", "-")
            label = r["method"] + (f" (`{r['preset']}`)" if sampler and r.get("preset") else (" (defaults)" if sampler else ""))
            if r["method"] == "TV":
                label += f" (lambda {r['config']['lam']})"
            nfe = f"{r['nfe']}"
            if sampler and not valid_row(r, task, args):
                nfe += f" (old rule; preset's own: {planned_nfe(r['method'], r.get('preset'))})"
            lines.append(f"| {label} | {r['psnr_heldout']:.2f} | {r['ssim_heldout']:.3f} | {r['psnr_shepp_logan']:.2f} "
                         f"| {r['ssim_shepp_logan']:.3f} | {oracle} | {r['seconds']:.1f} | {nfe} | {beats[0]} | {beats[1]} |")
        present = {r["method"] for r in task_rows}
        for method in sorted({r["method"] for r in rows if r["method"] not in base_names} - present):
            lines.append(f"| {method} | not run on this task yet | - | - | - | - | - | - | - | - |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--nfe", type=int, default=200, help="NFE cap for deblur and inpainting: min(preset NFE, --nfe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--note", default="", help="a sentence for the results header (e.g. rows not run and why)")
    parser.add_argument("--reuse", default=None,
                        help="an earlier results.json made with the same settings: valid rows serve as cache "
                             "entries, rows of tasks/methods not run now are kept in the tables")
    args = parser.parse_args()
    samplers = args.samplers or iv.samplers.names(bridge=False)
    out = Path(args.out)
    cache = out / "cache" / f"phantoms{args.phantoms}-samples{args.samples}-nfe{args.nfe}-seed{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    reused = reused_rows(Path(args.reuse)) if args.reuse else []
    reuse = {(r["task"], r["method"]): r for r in reused}
    rows = []
    for task in args.tasks:
        rows += run_task(task, samplers, args, cache, reuse)
    done = {(r["task"], r["method"]) for r in rows}
    rows += [r for r in reused if (r["task"], r["method"]) not in done]
    order = {m: i for i, m in enumerate(("FBP", "pseudo-inverse", "TV"))}
    rows.sort(key=lambda r: (list(TASKS).index(r["task"]), order.get(r["method"], 3), r["method"]))
    write_tables(rows, args, out)


def reused_rows(path: Path) -> list[dict]:
    """The rows of an earlier results.json; rows without a recorded command get the one in the
    header of the results.md beside it (the format before rows recorded their command)."""
    rows = json.loads(path.read_text())
    md = path.with_suffix(".md")
    header = re.search(r"command: `([^`]*)`; (\d{4}-\d{2}-\d{2})", md.read_text()) if md.exists() else None
    for r in rows:
        if "run" not in r and header is not None:
            r["run"] = {"command": header.group(1), "date": header.group(2)}
    return rows


if __name__ == "__main__":
    main()
