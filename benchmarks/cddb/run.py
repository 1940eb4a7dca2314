"""CDDB on 8-view CT (issue 16): the bridge ``ct-phantom64-bridge-sparse8`` at <= 20 NFE against I2SB and
against DPS and PiGDM at their ``ct-sparse8`` presets on the pixel prior ``ct-phantom64``, with FBP and TV.

The phantoms, operator, noise (sigma_y 0.1) and measurement seed are those of the CT task of
benchmarks/phantom/run.py (4 held-out phantoms + Shepp-Logan), so its figures are comparable; the PSNR
is the mean over the 4 held-out phantoms (Shepp-Logan reported beside it), of the posterior mean of
``--samples`` draws (generators seed + 100 j), clamped to [0, 1]. CDDB runs the official step 1.0
(normalised by ``||A||^2``, docs/samplers.md); no bridge setting is tuned. TV's weight is the phantom
benchmark's choice on training phantoms. Rows are cached as JSON under ``cache/`` as soon as computed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cddb/run.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "common"))

import invsolve as iv  # noqa: E402
from invsolve.baselines import tv  # noqa: E402
from invsolve.metrics import psnr, ssim  # noqa: E402
from invsolve.phantoms import heldout_phantoms, shepp_logan  # noqa: E402
from sibling import load_run  # noqa: E402

phantom = load_run("phantom")
BRIDGE, PIXEL = "ct-phantom64-bridge-sparse8", "ct-phantom64"
NFES = (5, 10, 20)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baselines", action="store_true", help="skip the DPS and PiGDM rows")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def scores(truth, estimate) -> dict:
    per = [(psnr(truth[i], estimate[i], 1.0), ssim(truth[i], estimate[i], 1.0)) for i in range(truth.shape[0])]
    held = per[:-1]
    return {"psnr": sum(p for p, _ in held) / len(held), "ssim": sum(s for _, s in held) / len(held),
            "psnr_shepp_logan": per[-1][0]}


def run(args) -> list[dict]:
    cache = HERE / "cache" / f"phantoms{args.phantoms}-samples{args.samples}-seed{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    spec = phantom.TASKS["ct"]
    truth = torch.cat([heldout_phantoms(args.phantoms, 64), shepp_logan(64)])
    physics = phantom.make_physics("ct", 64)
    y = phantom.measure(physics, truth, spec["sigma_y"], args.seed + 1)
    images = truth.shape[0]

    def cached(method: str, compute) -> dict:
        path = cache / f"{method.replace(' ', '_')}.json"
        if path.exists():
            return json.loads(path.read_text())
        wall, cpu = time.perf_counter(), time.process_time()
        row = compute()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        row = {"method": method, **row, "seconds_per_image": wall / images, "cpu_seconds_per_image": cpu / images,
               "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
               "command": "benchmarks/cddb/run.py " + " ".join(args.argv),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, indent=1))
        tmp.replace(path)
        print({k: v for k, v in row.items() if k not in ("config",)}, flush=True)
        return row

    def sampler(name, prior, **kw):
        problem = iv.Problem(physics, y, sigma_y=spec["sigma_y"], prior=prior)
        post = iv.sample(name, prior, problem, n_samples=args.samples,
                         generator=[torch.Generator().manual_seed(args.seed + 100 * j) for j in range(args.samples)], **kw)
        return {**scores(truth, post.mean.clamp(0, 1)), "nfe": post.nfe, "config": post.config}

    rows = [cached("FBP", lambda: {**scores(truth, phantom.classical("ct", physics, y).clamp(0, 1)), "nfe": 0})]
    lam, grid = phantom.choose_tv_lambda("ct", 64, args.seed)
    rows.append(cached("TV", lambda: {**scores(truth, tv(physics, y, lam=lam, iterations=150).clamp(0, 1)), "nfe": 0,
                                      "config": {"lam": lam, "grid_psnr_training_seed": grid}}))
    bridge = iv.load_prior(BRIDGE)
    for nfe in NFES:
        for name in ("i2sb", "cddb"):
            rows.append(cached(f"{name.upper()} nfe {nfe}", lambda name=name, nfe=nfe: sampler(name, bridge, steps=nfe)))
    if not args.no_baselines:
        pixel = iv.load_prior(PIXEL)
        for name, label in (("pigdm", "PiGDM"), ("dps", "DPS")):
            rows.append(cached(f"{label} preset ct-sparse8", lambda name=name: sampler(name, pixel, preset="ct-sparse8")))
    return rows


def report(rows, args) -> None:
    lines = ["# CDDB on 8-view CT: the bridge against I2SB, DPS and PiGDM", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cddb/run.py {' '.join(args.argv)}`; the CT task of "
             f"benchmarks/phantom (8 views, sigma_y 0.1, {args.phantoms} held-out phantoms + Shepp-Logan, measurement seed "
             f"{args.seed + 1}); {args.samples} draws per image; bridge `{BRIDGE}`, pixel prior `{PIXEL}`. "
             f"Machine {rows[0]['machine']}; rows computed {min(r['date'] for r in rows)} to "
             f"{max(r['date'] for r in rows)}. PSNR / SSIM: mean over the held-out phantoms of the clamped posterior mean.",
             "", "| method | NFE / draw | PSNR | SSIM | PSNR Shepp-Logan | s / image (wall) | CPU s / image |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['nfe']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['psnr_shepp_logan']:.2f} | "
                     f"{r['seconds_per_image']:.2f} | {r['cpu_seconds_per_image']:.2f} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    tmp = HERE / "results.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(HERE / "results.json")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    report(run(args), args)
    print(f"report in {HERE / 'results.md'}")


if __name__ == "__main__":
    main()
