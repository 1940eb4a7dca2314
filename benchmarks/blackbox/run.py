"""Black-box physics (issue 16): EnKG on forward models that give no gradient, against gradient methods
where a differentiable twin exists.

Tasks (held-out truths, never used to choose settings: ``heldout_phantoms`` or ``heldout_fields``):

- ``transmission``: Beer-Lambert transmission CT, 32 views, ``I0 = 1e4`` photons per bin (low dose),
  Poisson counts (``operators.transmission``). EnKG runs on the astra black box
  (``ct-transmission``); DPS on the differentiable torch twin (``ct-transmission-torch``, autograd);
  classical rows: the log-transformed data by least squares and by TV (the TV weight chosen on
  training-distribution phantoms, seed 123).
- ``darcy``: steady Darcy flow (``operators.darcy``), the phantom as the permeability field
  (3 + 9 x), 16 x 16 pressure sensors, Gaussian noise 1 % of the largest reading, with ``ct-phantom64``
  as the field prior. No gradients exist: EnKG against the prior alone (its PF-ODE samples, no data).
- ``darcy-fields``: the same PDE and sensors on FNO's Darcy fields (``invsolve.fields``: thresholded
  Gaussian random fields, held-out seeds), with a PDE prior ``darcy-fields64`` trained on such fields
  by ``invsolve train --data darcy-fields`` (shipped in ``data/priors/darcy-fields64``; settings
  chosen on training-seed fields).

Every row: PSNR / SSIM of the posterior mean (clamped to [0, 1]), relative L2 error, denoiser
evaluations (NFE) and forward-model evaluations per posterior sample, CPU seconds (1 thread). EnKG's
``gamma`` is chosen on 2 training phantoms (seed 123) from ``GAMMAS`` (the official 2.0 included).
Rows are cached as JSON under ``cache/`` as soon as computed (resumable); ``results.md`` and
``results.json`` are rewritten from the cache.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/blackbox/run.py [--tasks transmission darcy darcy-fields]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "phantom"))

import invsolve as iv  # noqa: E402
import operators as ops  # noqa: E402
from invsolve.baselines import tv  # noqa: E402
from invsolve.metrics import psnr, ssim  # noqa: E402
from invsolve.fields import heldout_fields, random_fields  # noqa: E402
from invsolve.phantoms import heldout_phantoms, random_ellipses  # noqa: E402

GAMMAS = (0.5, 1.0, 2.0)
TV_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
ENKG = dict(particles=16, steps=20)  # CPU budget (official Navier-Stokes: 2048 members, 80 steps)
SAMPLES = 2
PHANTOMS = 2


def transmission_setup(truth: torch.Tensor, seed: int) -> dict:
    box, twin = ops.make("ct-transmission"), ops.make("ct-transmission-torch")
    y = box.counts(truth, torch.Generator().manual_seed(seed))
    sigma_y = float((y.clamp(min=0.5 / box.I0) / box.I0).sqrt().mean())  # Poisson std from the data itself
    return {"box": box, "twin": twin, "y": y, "sigma_y": sigma_y}


def darcy_setup(truth: torch.Tensor, seed: int) -> dict:
    box = ops.make("darcy")
    clean = box.A(truth)
    sigma_y = 0.01 * float(clean.abs().max())
    y = clean + sigma_y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed), dtype=clean.dtype)
    box.reset_count()
    return {"box": box, "twin": None, "y": y, "sigma_y": sigma_y}


SETUPS = {"transmission": transmission_setup, "darcy": darcy_setup, "darcy-fields": darcy_setup}
PRIORS = {"transmission": "ct-phantom64", "darcy": "ct-phantom64", "darcy-fields": "darcy-fields64"}


def truths(task: str, n: int) -> torch.Tensor:
    """The held-out truths of ``task`` (never used to choose settings)."""
    if task == "darcy-fields":
        return heldout_fields(n)
    return heldout_phantoms(n + 1)[:n]


def training_truths(task: str) -> torch.Tensor:
    """2 training-distribution truths (seed 123): every setting is chosen on these."""
    if task == "darcy-fields":
        return random_fields(2, 64, torch.Generator().manual_seed(123))
    return random_ellipses(2, 64, torch.Generator().manual_seed(123))


def scores(truth: torch.Tensor, estimate: torch.Tensor) -> dict:
    estimate = estimate.clamp(0, 1)
    n = truth.shape[0]
    rel = [float((estimate[i] - truth[i]).norm() / truth[i].norm()) for i in range(n)]
    return {"psnr": sum(psnr(truth[i], estimate[i], 1.0) for i in range(n)) / n,
            "ssim": sum(ssim(truth[i], estimate[i], 1.0) for i in range(n)) / n, "rel_l2": sum(rel) / n}


def enkg_run(prior, setup: dict, gamma: float, samples: int, seed: int):
    box = setup["box"]
    box.reset_count()
    problem = iv.Problem(box, setup["y"], sigma_y=setup["sigma_y"], prior=prior)
    post = iv.sample("enkg", prior, problem, n_samples=samples, gamma=gamma,
                     generator=[torch.Generator().manual_seed(seed + 100 * j) for j in range(samples)], **ENKG)
    return post, box.forward_evaluations / (samples * setup["y"].shape[0])


def choose_gamma(task: str, prior, cache: Path) -> tuple[float, dict]:
    path = cache / f"{task}__gamma.json"
    if path.exists():
        found = json.loads(path.read_text())
        return found["gamma"], found["grid"]
    truth = training_truths(task)
    setup = SETUPS[task](truth, seed=1)
    grid = {g: scores(truth, enkg_run(prior, setup, g, 1, 0)[0].mean)["psnr"] for g in GAMMAS}
    gamma = max(grid, key=grid.get)
    write_atomic(path, {"gamma": gamma, "grid": grid})
    return gamma, grid


def choose_tv(setup_fn, cache: Path) -> tuple[float, dict]:
    path = cache / "transmission__tv_lambda.json"
    if path.exists():
        found = json.loads(path.read_text())
        return found["lam"], found["grid"]
    truth = random_ellipses(2, 64, torch.Generator().manual_seed(123))
    setup = setup_fn(truth, seed=1)
    twin = setup["twin"]
    data = twin.log_transform(setup["y"])
    grid = {lam: scores(truth, tv(twin.projector, data, lam=lam, iterations=150))["psnr"] for lam in TV_GRID}
    lam = max(grid, key=grid.get)
    write_atomic(path, {"lam": lam, "grid": grid})
    return lam, grid


def write_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def cached(cache: Path, task: str, method: str, compute) -> dict:
    path = cache / f"{task}__{method.replace(' ', '_').replace('/', '-')}.json"
    if path.exists():
        return json.loads(path.read_text())
    cpu, wall = time.process_time(), time.perf_counter()
    row = compute()
    row = {"task": task, "method": method, **row, "cpu_seconds": round(time.process_time() - cpu, 1),
           "wall_seconds": round(time.perf_counter() - wall, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"}
    write_atomic(path, row)
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "config"}, flush=True)
    return row


def run_task(task: str, cache: Path) -> list[dict]:
    prior = iv.load_prior(PRIORS[task])
    truth = truths(task, PHANTOMS)
    setup = SETUPS[task](truth, seed=0)
    y, sigma_y, box, twin = setup["y"], setup["sigma_y"], setup["box"], setup["twin"]
    rows = []
    gens = lambda: [torch.Generator().manual_seed(100 * j) for j in range(SAMPLES)]  # noqa: E731

    if twin is not None:
        data = twin.log_transform(y)
        rows.append(cached(cache, task, "log + least squares", lambda: {
            **scores(truth, box.A_dagger(y)), "nfe": 0, "forward_evaluations": None}))
        lam, grid = choose_tv(SETUPS[task], cache)
        rows.append(cached(cache, task, "log + TV", lambda: {
            **scores(truth, tv(twin.projector, data, lam=lam, iterations=150)), "nfe": 0, "forward_evaluations": None,
            "config": {"lam": lam, "grid_psnr_training_seed": grid}}))
        for label, kw in (("DPS (autograd, zeta auto)", dict(zeta="auto")), ("DPS (autograd, zeta 1)", dict(zeta=1.0))):
            def dps(kw=kw):
                problem = iv.Problem(twin, y, sigma_y=sigma_y, prior=prior)
                post = iv.sample("dps", prior, problem, n_samples=SAMPLES, generator=gens(), steps=100,
                                 schedule="karras", **kw)
                return {**scores(truth, post.mean), "nfe": post.nfe, "forward_evaluations": post.nfe,
                        "config": post.config}
            rows.append(cached(cache, task, label, dps))
    else:
        def prior_mean():
            post = iv.sample("enkg", prior, iv.Problem(box, y, sigma_y=sigma_y, prior=prior), n_samples=SAMPLES,
                             generator=gens(), **{**ENKG, "gamma": 0.0})
            return {**scores(truth, post.mean), "nfe": post.nfe, "forward_evaluations": box.forward_evaluations,
                    "config": "EnKG with gamma 0: the prior's own PF-ODE samples, no data"}
        rows.append(cached(cache, task, "prior only (no data)", prior_mean))
    gamma, grid = choose_gamma(task, prior, cache)

    def enkg():
        post, fevals = enkg_run(prior, setup, gamma, SAMPLES, 0)
        return {**scores(truth, post.mean), "nfe": post.nfe, "forward_evaluations": fevals,
                "config": {**post.config, "gamma_grid_psnr_training_seed": grid}}
    rows.append(cached(cache, task, f"EnKG (black box, gamma {gamma:g})", enkg))
    return rows


def report(rows: list[dict], out: Path) -> None:
    lines = ["# Black-box physics: EnKG against gradient methods", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/blackbox/run.py`; {PHANTOMS} held-out phantoms x "
             f"{SAMPLES} posterior samples (seeds 0, 100), measurement seed 0; priors {PRIORS}; EnKG {ENKG} "
             f"(official Navier-Stokes: 2048 members, 80 steps), gamma chosen on 2 training phantoms or fields (seed 123) from "
             f"{list(GAMMAS)}. Machine and date per row in results.json.", "",
             "| task | method | PSNR | SSIM | rel. L2 | NFE / sample | forward evals / sample | CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fe = "-" if r.get("forward_evaluations") is None else f"{r['forward_evaluations']:.0f}"
        lines.append(f"| {r['task']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['rel_l2']:.3f} | "
                     f"{r['nfe']} | {fe} | {r['cpu_seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_atomic(out / "results.json", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(SETUPS), choices=list(SETUPS),
                        help="default: every task")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = HERE / "cache"
    cache.mkdir(exist_ok=True)
    computed = {task: run_task(task, cache) for task in args.tasks}
    committed = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else []
    rows = []  # tasks not rerun keep their committed rows
    for task in SETUPS:
        rows += computed.get(task) or [r for r in committed if r["task"] == task]
    report(rows, HERE)


if __name__ == "__main__":
    main()
