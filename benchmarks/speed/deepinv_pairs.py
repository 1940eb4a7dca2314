"""invsolve against deepinv 0.5.0, side by side (issue 14, item 3): DPS, DiffPIR and PiGDM.

Same network (the shipped ``ct-phantom64``, wrapped into deepinv's convention by
``invsolve.priors.adapters.DeepinvDenoiser``; the conversion is checked numerically before any
run), same physics object type (``ops.make("ct-sparse8", img_size=64)``; deepinv's copy carries
``GaussianNoise(sigma_y)`` as its noise model, which deepinv's DiffPIR and PiGDM read), same ``y``,
same number of denoiser calls per sample (counted by a forward pre-hook on the prior, not assumed),
one thread, 4 held-out phantoms, one posterior sample each.

- invsolve runs its ``ct-sparse8`` preset with the step count replaced by ``nfe_overrides`` (the
  presets were chosen on training phantoms at their own step count; they are not re-tuned here).
- deepinv runs its own algorithm (``dinv.sampling.DPS`` with its defaults: VP schedule, DDPM
  solver; ``dinv.sampling.DiffPIR`` with ``dinv.optim.L2``, whose prox is deepinv's CG on the
  physics; ``PosteriorDiffusion`` with ``PiGDMDataFidelity`` on the VP schedule with the DDPM solver
  (eta 1, as invsolve's preset)), its weight chosen on ``--tune`` training-distribution phantoms
  (``random_ellipses`` of seed ``TUNE_SEED``, never the held-out ones) from a log grid, by PSNR.
- The held-out runs alternate invsolve / deepinv per sampler (same machine load); the ratio is
  invsolve time / deepinv time, wall and CPU. Targets: ratio <= 1 and PSNR >= deepinv's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed/deepinv_pairs.py          # deepinv.md / .csv
    (``benchmarks/speed/run.py --quick`` runs ``quick()``: NFE 20, 2 phantoms, deepinv's default weights)
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import deepinv as dinv
import torch

import invsolve as iv
from machine import load, write_csv  # benchmarks/speed/machine.py (this folder is on sys.path)
import operators as ops
from invsolve.metrics import psnr
from invsolve.phantoms import heldout_phantoms, random_ellipses
from invsolve.priors.adapters import DeepinvDenoiser

HERE = Path(__file__).resolve().parent
TUNE_SEED = 2_000_003  # training-distribution phantoms for deepinv's weights (the cards' TV-tuning seed)
SIGMA_Y = 0.1
OPERATOR = "ct-sparse8"
SAMPLERS = ("dps", "diffpir", "pigdm")
# deepinv's weight grids: (scanned key, its values, other keys' values), log spaced around deepinv's
# defaults (DPS weight 1, DiffPIR lambda 7 / zeta 0.1, PiGDM weight 1); where the best value is at
# an end of the scanned key's range, the range is extended by factors of 3 (at most EXTEND times)
GRIDS = {
    "dps": ("weight", (0.3, 1.0, 3.0, 10.0), {}),
    "diffpir": ("lambda_", (1.0, 3.0, 7.0, 20.0), {"zeta": (0.1, 0.3, 1.0)}),
    "pigdm": ("weight", (0.3, 1.0, 3.0), {}),
}
EXTEND = 4
DEFAULTS = {"dps": dict(weight=1.0), "diffpir": dict(lambda_=7.0, zeta=0.1), "pigdm": dict(weight=1.0)}


def check_conversion(prior, wrapped) -> float:
    """Largest |D as deepinv's samplers call it - the prior's own D| on model-space inputs.

    deepinv's diffusion samplers carry their state in [-1, 1] and call the [0, 1] denoiser through
    ``MinusOneOneDenoiserWrapper`` (``PosteriorDiffusion``; ``DiffPIR`` does the same map inline);
    for the [-1, 1] model space of ``ct-phantom64`` that must give back ``D(x, sigma)`` itself."""
    g = torch.Generator().manual_seed(5)
    worst = 0.0
    through = dinv.models.MinusOneOneDenoiserWrapper(wrapped)
    with torch.no_grad():
        for sigma in (0.01, 0.1, 1.0, 10.0):
            x = (2 * torch.rand((2, *prior.shape), generator=g) - 1) + sigma * torch.randn((2, *prior.shape), generator=g)
            worst = max(worst, float((through(x, torch.tensor(sigma)) - prior(x, sigma)).abs().max()))
    return worst


def deepinv_run(name: str, wrapped, physics, y, nfe: int, seed: int, shape, **weights) -> torch.Tensor:
    """One deepinv posterior sample per measurement, ``nfe`` denoiser calls."""
    if name == "dps":
        model = dinv.sampling.DPS(wrapped, num_steps=nfe + 1, rng=torch.Generator().manual_seed(seed), **weights)
        return model(y, physics, x_init=shape, seed=seed)
    if name == "diffpir":
        torch.manual_seed(seed)  # deepinv's DiffPIR draws from the global generator
        model = dinv.sampling.DiffPIR(wrapped, dinv.optim.L2(), sigma=SIGMA_Y, max_iter=nfe, **weights)
        return model(y, physics)
    if name == "pigdm":
        solver = dinv.sampling.DDPMSolver(timesteps=torch.linspace(1, 0, nfe + 1, dtype=torch.float64),
                                          rng=torch.Generator().manual_seed(seed))
        model = dinv.sampling.PosteriorDiffusion(
            data_fidelity=dinv.sampling.PiGDMDataFidelity(**weights), denoiser=wrapped,
            sde=dinv.sampling.VariancePreservingDiffusion(), solver=solver)
        return model(y, physics, x_init=shape, seed=seed)
    raise KeyError(name)


class Setup:
    """The prior, both physics objects and the call counters, built once."""

    def __init__(self):
        self.prior = iv.load_prior("ct-phantom64")
        self.wrapped = DeepinvDenoiser(self.prior)
        self.conversion_error = check_conversion(self.prior, self.wrapped)
        if self.conversion_error > 1e-5:
            raise SystemExit(f"deepinv conversion is wrong: max error {self.conversion_error:.2e}")
        self.ours = ops.make(OPERATOR, img_size=64)
        self.theirs = ops.make(OPERATOR, img_size=64)
        self.theirs.noise_model = dinv.physics.GaussianNoise(sigma=SIGMA_Y)
        self.calls = 0
        self.prior.register_forward_pre_hook(self._count)
        self.ops = 0
        for physics in (self.ours, self.theirs):
            for kernel in ("_project", "_backproject"):
                fn = getattr(physics, kernel)
                setattr(physics, kernel, self._counted(fn))

    def _count(self, module, args):
        self.calls += 1

    def _counted(self, fn):
        def counted(*args, **kwargs):
            self.ops += 1
            return fn(*args, **kwargs)
        return counted

    def measure(self, truth: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.no_grad():
            clean = self.ours.A(truth)
        return clean + SIGMA_Y * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 1))

    def run(self, library: str, name: str, truth, y, nfe: int, seed: int, weights=None) -> dict:
        self.calls = self.ops = 0
        w0, c0 = time.perf_counter(), time.process_time()
        if library == "invsolve":
            problem = iv.Problem(self.ours, y, sigma_y=SIGMA_Y, prior=self.prior)
            post = iv.sample(name, self.prior, problem, n_samples=1, preset=OPERATOR,
                             generator=torch.Generator().manual_seed(seed), **iv.samplers.nfe_overrides(name, nfe))
            x = post.samples[0]
        else:
            x = deepinv_run(name, self.wrapped, self.theirs, y, nfe, seed, tuple(truth.shape), **(weights or {}))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        x = x.detach().float().clamp(0, 1)
        score = sum(psnr(truth[i], x[i], 1.0) for i in range(truth.shape[0])) / truth.shape[0]
        return dict(library=library, sampler=name, wall_s=wall, cpu_s=cpu, psnr=score,
                    nfe=self.calls,  # one batched call = one denoiser evaluation per sample
                    projector_calls=self.ops,
                    weights=" ".join(f"{k}={v}" for k, v in (weights or {}).items()))


def tune(setup: Setup, name: str, nfe: int, n: int, seed: int) -> tuple[dict, list[dict]]:
    """deepinv's best weights by PSNR on ``n`` training-distribution phantoms (``GRIDS``)."""
    truth = random_ellipses(n, 64, torch.Generator().manual_seed(TUNE_SEED))
    y = setup.measure(truth, TUNE_SEED)
    key, values, others = GRIDS[name]
    tried: list[tuple[dict, dict]] = []

    cache_file = HERE / "cache" / f"deepinv_tune-{name}-nfe{nfe}-n{n}-seed{seed}.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}

    def evaluate(weights):
        tag = json.dumps(weights, sort_keys=True)
        if tag in cache:  # a tuning run is resumable: its PSNRs are kept in cache/ (not committed)
            r = cache[tag]
        else:
            r = setup.run("deepinv", name, truth, y, nfe, seed, weights)
            cache[tag] = r
            cache_file.parent.mkdir(exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_file)
        tried.append((weights, r))
        print(f"  tune deepinv {name:8s} {r['weights']:22s} PSNR {r['psnr']:.2f} ({r['wall_s']:.1f} s)", flush=True)

    for combo in itertools.product(*others.values()):
        for v in values:
            evaluate({key: v, **dict(zip(others, combo))})
    for _ in range(EXTEND):
        best = max(tried, key=lambda t: t[1]["psnr"])[0]
        scanned = sorted({w[key] for w, _ in tried})
        if best[key] == scanned[-1]:
            evaluate({**best, key: best[key] * 3})
        elif best[key] == scanned[0]:
            evaluate({**best, key: best[key] / 3})
        else:
            break
    best = max(tried, key=lambda t: t[1]["psnr"])[0]
    return best, [r for _, r in tried]


def compare(setup: Setup, names, nfe: int, phantoms: int, seed: int, weights: dict, repeats: int) -> list[dict]:
    """Held-out runs, invsolve and deepinv alternating; the times are the means over ``repeats``."""
    truth = heldout_phantoms(phantoms, 64)
    y = setup.measure(truth, seed)
    out = []
    for name in names:
        for library in ("invsolve", "deepinv"):  # warm-up, untimed (first-call allocations, cached factorizations)
            setup.run(library, name, truth[:1], y[:1], 2, seed, weights[name] if library == "deepinv" else None)
        pair = {}
        for rep in range(repeats):
            for library in ("invsolve", "deepinv") if rep % 2 == 0 else ("deepinv", "invsolve"):
                r = setup.run(library, name, truth, y, nfe, seed, weights[name] if library == "deepinv" else None)
                r["load"] = load()
                if library in pair:
                    pair[library]["wall_s"] += r["wall_s"]
                    pair[library]["cpu_s"] += r["cpu_s"]
                else:
                    pair[library] = r
        for r in pair.values():
            r["wall_s"] /= repeats
            r["cpu_s"] /= repeats
        ours, theirs = pair["invsolve"], pair["deepinv"]
        row = dict(sampler=name, nfe=nfe, phantoms=phantoms, repeats=repeats,
                   invsolve_nfe=ours["nfe"], deepinv_nfe=theirs["nfe"],
                   invsolve_wall_s=round(ours["wall_s"], 2), deepinv_wall_s=round(theirs["wall_s"], 2),
                   invsolve_cpu_s=round(ours["cpu_s"], 2), deepinv_cpu_s=round(theirs["cpu_s"], 2),
                   ratio_wall=round(ours["wall_s"] / theirs["wall_s"], 3),
                   ratio_cpu=round(ours["cpu_s"] / theirs["cpu_s"], 3),
                   invsolve_projector_calls=ours["projector_calls"] // repeats,
                   deepinv_projector_calls=theirs["projector_calls"] // repeats,
                   invsolve_psnr=round(ours["psnr"], 2), deepinv_psnr=round(theirs["psnr"], 2),
                   deepinv_weights=theirs["weights"], load=ours["load"])
        out.append(row)
        print(f"[deepinv] {name:8s} NFE {nfe}: time ratio wall {row['ratio_wall']:.2f} cpu {row['ratio_cpu']:.2f} "
              f"(invsolve {row['invsolve_wall_s']:.1f} s, deepinv {row['deepinv_wall_s']:.1f} s); PSNR invsolve "
              f"{row['invsolve_psnr']:.2f} vs deepinv {row['deepinv_psnr']:.2f} ({row['deepinv_weights']}); "
              f"projector calls {row['invsolve_projector_calls']} vs {row['deepinv_projector_calls']}", flush=True)
    return out


def quick(nfe: int = 20, phantoms: int = 2, seed: int = 0) -> list[dict]:
    """Every pair at deepinv's default weights, one repeat: the ratios in a few tens of seconds."""
    setup = Setup()
    print(f"[deepinv] conversion error {setup.conversion_error:.1e}; NFE {nfe}, {phantoms} held-out phantoms, "
          f"deepinv default weights", flush=True)
    return compare(setup, SAMPLERS, nfe, phantoms, seed, DEFAULTS, repeats=1)


def write(rows, tuning, args, setup, started, seconds, out: Path) -> None:
    write_csv(out / "deepinv.csv", rows)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed/deepinv_pairs.py " + " ".join(sys.argv[1:])
    lines = ["# invsolve against deepinv, same network, physics, y and NFE (issue 14, item 3)", "",
             f"Command: `{cmd}`; started {started} UTC, {seconds / 60:.1f} min; seed {args.seed}; one thread; "
             f"{platform.machine()} {platform.processor() or ''}, {__import__('os').cpu_count()} cores, shared "
             f"(1-minute load per row below); torch {torch.__version__}, deepinv {dinv.__version__}.", "",
             f"Task: `{OPERATOR}` (64x64, 8 views), sigma_y {SIGMA_Y}, prior `ct-phantom64`, {args.phantoms} held-out "
             f"phantoms, one sample each, NFE {args.nfe} (denoiser calls per sample, counted). deepinv's network is "
             f"the same prior through `DeepinvDenoiser` (max |difference| to the prior's own call "
             f"{setup.conversion_error:.1e} over sigma 0.01-10). Times: mean of {args.repeats} alternating runs "
             "per library; ratio = invsolve / deepinv (target <= 1). PSNR: dB, posterior sample clamped to [0, 1], "
             "mean over the phantoms (target: invsolve >= deepinv).", "",
             "| sampler | invsolve wall s | deepinv wall s | ratio wall | ratio CPU | projector calls invsolve / deepinv "
             "| PSNR invsolve | PSNR deepinv | deepinv weights (tuned) | targets met | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = r["ratio_wall"] <= 1.0 and r["ratio_cpu"] <= 1.0 and r["invsolve_psnr"] >= r["deepinv_psnr"]
        lines.append(f"| {r['sampler']} | {r['invsolve_wall_s']:.1f} | {r['deepinv_wall_s']:.1f} | "
                     f"{r['ratio_wall']:.2f} | {r['ratio_cpu']:.2f} | {r['invsolve_projector_calls']} / "
                     f"{r['deepinv_projector_calls']} | {r['invsolve_psnr']:.2f} | {r['deepinv_psnr']:.2f} | "
                     f"{r['deepinv_weights']} | {'yes' if ok else '**no**'} | {r['load']} |")
    lines += ["", f"## deepinv's weights, chosen on {args.tune} training-distribution phantoms "
                  f"(`random_ellipses`, seed {TUNE_SEED}), NFE {args.nfe}", "",
              "| sampler | weights | PSNR | wall s |", "|---|---|---|---|"]
    for name, trows in tuning.items():
        for r in trows:
            lines.append(f"| {name} | {r['weights']} | {r['psnr']:.2f} | {r['wall_s']:.1f} |")
    (out / "deepinv.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--nfe", type=int, default=100)
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--tune", type=int, default=4, help="training-distribution phantoms for deepinv's weights")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed runs per library")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, t0 = time.strftime("%Y-%m-%d %H:%M", time.gmtime()), time.perf_counter()
    setup = Setup()
    print(f"conversion error {setup.conversion_error:.1e}; load {load()}", flush=True)
    weights, tuning = {}, {}
    for name in args.samplers:
        weights[name], tuning[name] = tune(setup, name, args.nfe, args.tune, args.seed)
    rows = compare(setup, args.samplers, args.nfe, args.phantoms, args.seed, weights, args.repeats)
    write(rows, tuning, args, setup, started, time.perf_counter() - t0, Path(args.out))


if __name__ == "__main__":
    main()
