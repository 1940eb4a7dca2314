"""Latent and flow solvers on held-out phantoms: the latent prior against the pixel flow and diffusion priors.

One table per phantom task (8-view CT, 61x61 Gaussian deblur, inpainting: the tasks, operators, noise levels
and measurement seed of benchmarks/phantom/run.py), every row one (prior, sampler) pair at the same NFE
budget (``iv.samplers.nfe_overrides``):

- ``ct-phantom64-latent`` (shipped: autoencoder 64x64x1 -> 16x16x4 and a latent flow; its card records the
  autoencoder's held-out reconstruction PSNR, about the best a latent row can reach) x FlowDPS, ReSample, D-Flow, FLAIR;
- ``ct-phantom64-flow`` (pixel flow) x the same four;
- ``ct-phantom64`` (pixel EDM diffusion) x DPS and FlowDPS;
- TV (weight chosen on training-seed phantoms) and FBP / pseudo-inverse.

Cells are computed by benchmarks/frontier/run.py's machinery (the same held-out phantoms, generators per
posterior draw, the task's sampler preset where the sampler has one, PSNR/SSIM of the clamped posterior
mean, calibration, wall and CPU seconds) and cached as JSON under ``cache/<settings>/`` (one folder per prior) as soon as
each is done, so an interrupted run resumes; ``--report`` only rewrites results.md and results.csv.

The presets were tuned on the pixel priors (benchmarks/phantom): the latent rows run them unchanged, so
they are the out-of-the-box figures, not a tuned comparison.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent/run.py             # NFE 50, 2 phantoms x 4 samples
    .venv/bin/python benchmarks/latent/run.py --report
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


sys.path.insert(0, str(ROOT / "benchmarks" / "common"))
from sibling import load_run  # noqa: E402

frontier = load_run("frontier")
iv = frontier.iv

ROWS = {  # prior -> samplers, in table order
    "ct-phantom64-latent": ("flowdps", "resample", "dflow", "flair"),
    "ct-phantom64-flow": ("flowdps", "resample", "dflow", "flair"),
    "ct-phantom64": ("dps", "flowdps"),
}
TASKS = frontier.IMAGE_TASKS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--nfe", nargs="+", type=int, default=[50])
    parser.add_argument("--phantoms", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--report", action="store_true", help="only rewrite results.md / results.csv from the cache")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def frontier_args(prior: str, args) -> argparse.Namespace:
    """The frontier's settings for one prior's rows (its cache folder, provenance and plans)."""
    sub = frontier.parse_args(["--prior", prior, "--tasks", *args.tasks, "--samplers", *ROWS[prior],
                               "--nfe", *map(str, args.nfe), "--phantoms", str(args.phantoms),
                               "--samples", str(args.samples), "--seed", str(args.seed),
                               "--threads", str(args.threads), "--out", args.out])
    sub.script, sub.argv = "benchmarks/latent/run.py", args.argv
    return sub


def cache_dir(sub) -> Path:
    return Path(sub.out) / "cache" / frontier.settings_name(sub)  # the prior's name is part of it


def card_facts(prior_name: str) -> dict:
    """What the prior's card says about it (kind, parameterization, the autoencoder's held-out PSNR)."""
    prior = iv.load_prior(prior_name)
    evaluation = prior.card.metadata.get("evaluation", {})
    return {"kind": prior.card.kind, "parameterization": prior.card.parameterization,
            "shape": list(prior.shape), "image_shape": list(prior.image_shape),
            "autoencoder_psnr_db": evaluation.get("autoencoder_psnr_db")}


def run(args) -> None:
    for prior in args.priors:
        sub = frontier_args(prior, args)
        cache = cache_dir(sub)
        cache.mkdir(parents=True, exist_ok=True)
        frontier.run_images(frontier.Cells(cache, sub), sub)


def load_rows(args) -> list[dict]:
    rows = []
    for prior in ROWS:
        cache = cache_dir(frontier_args(prior, args))
        rows += [{**r, "prior": prior} for r in frontier.load_cells(cache)] if cache.exists() else []
    return rows


def cell_text(r: dict | None) -> list[str]:
    if r is None:
        return ["not run"] + [""] * 5
    if "error" in r:
        return [frontier.failure(r)] + [""] * 5
    return [f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", f"{r['calibration']:.2f}" if "calibration" in r else "-",
            frontier.fmt(r["nfe"], "g"), f"{r['cpu_seconds']:.1f}", f"{r['seconds']:.1f}"]


def task_section(rows: list[dict], task: str, args, facts: dict) -> list[str]:
    spec = frontier.phantom.TASKS[task]
    lines = [f"## {task}", "", f"`{spec['operator']}`, sigma_y {spec['sigma_y']}, preset `{spec['preset']}` where the "
             "sampler has one (else defaults).", "",
             "| prior | method | PSNR | SSIM | calibration | NFE | CPU s | wall s |", "|---|---|---|---|---|---|---|---|"]
    base = [r for r in rows if r["task"] == task and r["budget"] is None]
    for which in frontier.BASELINES:
        r = next((b for b in base if b["method"] == which), None)
        label = frontier.baseline_label(task, which)
        lines.append(f"| - | {label} | " + " | ".join(cell_text(r)) + " |")
    for prior in args.priors:
        for name in ROWS[prior]:
            for nfe in args.nfe:
                r = next((x for x in rows if x["prior"] == prior and x["task"] == task and x["method"] == name
                          and x["budget"] == nfe), None)
                preset = "" if r is None or "error" in r or r.get("preset") else " (defaults)"
                lines.append(f"| `{prior}` ({facts[prior]['kind']}) | {name}{preset} | " + " | ".join(cell_text(r)) + " |")
    return lines + [""]


def write_report(args) -> None:
    rows = load_rows(args)
    facts = {p: card_facts(p) for p in args.priors}
    dates = sorted(r["date"] for r in rows) or ["-"]
    machines = sorted({r["machine"] for r in rows}) or ["-"]
    commands = ", ".join(f"`{c}`" for c in sorted({r["command"] for r in rows}))
    latent = facts.get("ct-phantom64-latent", {})
    ceiling = latent.get("autoencoder_psnr_db")
    lines = [
        f"# Latent and flow solvers on held-out phantoms (NFE {', '.join(map(str, args.nfe))})", "",
        f"Machine: {'; '.join(machines)}; torch threads {args.threads}; torch {torch.__version__}; seed {args.seed}; "
        f"cells computed {dates[0]} to {dates[-1]} by {commands}; report written "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. The machine is shared (2 cores): compare CPU seconds.", "",
        f"{args.phantoms} held-out phantoms x {args.samples} posterior samples (own generator per draw). PSNR / SSIM of "
        "the posterior mean clamped to [0, 1]; calibration = fraction of truth pixels inside mean +- 2 std of the "
        "samples; NFE = denoiser evaluations per posterior sample (`Posterior.nfe`); seconds of the whole sampler call "
        "for all samples of both phantoms. TV's weight was chosen on training-seed phantoms.", "",
        "Priors: " + "; ".join(f"`{p}` {f['kind']} ({f['parameterization']}), samples of shape {tuple(f['shape'])}"
                               + (f" decoded to {tuple(f['image_shape'])}" if f['shape'] != f['image_shape'] else "")
                               for p, f in facts.items()) + ".",
        "", ("The latent prior's autoencoder reconstructs held-out phantoms at "
             f"{ceiling:.2f} dB (`decode(encode(x))`, its card): about the best a latent row can reach (a decoded image is limited to what the decoder can produce). " if ceiling else "")
        + "The presets were tuned on the pixel priors (benchmarks/phantom) and run unchanged on the latent prior.", ""]
    for task in args.tasks:
        lines += task_section(rows, task, args, facts)
    out = Path(args.out)
    (out / "results.md").write_text("\n".join(lines))
    skip = {"config", "per_image_psnr", "traceback"}
    fields = []
    for r in rows:
        fields += [k for k in r if k not in skip and k not in fields]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "overrides": json.dumps(r.get("overrides"))} for r in
                         sorted(rows, key=lambda r: (r["task"], r["prior"], r["method"], r["budget"] or 0)))


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.report:
        run(args)
    write_report(args)
    print(f"report in {Path(args.out) / 'results.md'}", flush=True)


if __name__ == "__main__":
    main()
