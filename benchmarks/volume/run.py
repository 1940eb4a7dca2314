"""Volume table (issue 12): 3D reconstruction of a 64^3 phantom CT volume with the 2D prior ``ct-phantom64``.

Task: one held-out 3D random-ellipsoid volume (``invsolve.phantoms.heldout_volumes``, seed
``VOLUME_HELDOUT_SEED``) of 64 x 64 x 64, indexed (z, y, x); 8-view parallel-beam CT of every axial
slice (``ops.make("ct", img_size=64, views=8)`` on (B, C, D, H, W)), sigma_y = 0.1 in sinogram units
(as benchmarks/phantom). The 2D prior is applied slice-wise along the axial axis
(``SliceWisePrior(load_prior("ct-phantom64"), "axial", chunk=16, depth=64)``).

Methods: FBP; 3D TV (anisotropic TV along z, y and x by ADMM with CG inner solves:
``operators.linalg.admm_tv_step`` over dims (2, 3, 4), the same code as the samplers' TV-z step;
not ``baselines.tv``, which is 2D); uncoupled slice-wise DPS; uncoupled slice-wise DDS (tv_z = 0);
DiffusionMBIR; TPDM-style (one prior along axial + coronal); DDS-3D (TV-z). Metrics: per viewing
direction (axial, coronal, sagittal) the mean over that plane's slices of PSNR (data range 1) and
SSIM, estimates clipped to [0, 1]; seconds per volume, NFE.

Hyperparameters: the samplers' ``ct-sparse8`` presets (chosen with ``--tune`` on a training-seed
volume, seed ``VOLUME_TUNE_SEED``, 32 slices) with the step counts below. Each method's row is cached
under ``benchmarks/volume/cache/`` as soon as it is computed, so an interrupted run resumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/run.py            # the table
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/run.py --tune     # the preset grid
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/run.py --memory   # peak memory vs slices
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/run.py --duals    # DiffusionMBIR duals vs steps
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import invsolve as iv
import operators as ops
from invsolve.metrics import ssim
from invsolve.phantoms import VOLUME_HELDOUT_SEED, VOLUME_TUNE_SEED, random_ellipsoids
from invsolve.priors.slicewise import SliceWisePrior, _PeakBytes
from operators.linalg import TVState, admm_tv_step

HERE = Path(__file__).resolve().parent
SIGMA_Y = 0.1
SEED = 0  # sampler noise
CHUNK = 16
METHODS = {
    # name: (sampler, preset, overrides)
    "dps (slice-wise)": ("dps", "ct-sparse8", dict(steps=30)),
    "dds (slice-wise, no TV)": ("dds", "ct-sparse8", dict(tv_z=0.0)),
    "diffusionmbir": ("diffusionmbir", "ct-sparse8", dict(steps=30)),
    "diffusionmbir (official persistent duals)": ("diffusionmbir", "ct-sparse8", dict(steps=30, persist_duals=True,
                                                                                       cg_steps=1)),
    "tpdm (axial+coronal)": ("tpdm", "ct-sparse8", dict(steps=20)),
    "dds-3d (TV-z)": ("dds", "ct-sparse8", {}),
}
TV3D_GRID = (0.003, 0.01, 0.03, 0.1)
TUNE = {
    "dds": ("ct-sparse8", "tv_z", (0.1, 0.5, 2.0), {}),
    "diffusionmbir": ("ct-sparse8", "lam", (0.1, 0.5, 2.0), dict(steps=25, persist_duals=True, cg_steps=1)),
    "tpdm": ("ct-sparse8", "weight", (0.3, 1.0, 3.0), dict(steps=15)),
}


def volume(seed: int, depth: int = 64) -> torch.Tensor:
    v = random_ellipsoids(1, 64, torch.Generator().manual_seed(seed))
    start = (64 - depth) // 2
    return v[:, :, start:start + depth]


def measure(physics, truth, seed: int = 1, sigma: float = SIGMA_Y):
    clean = physics.A(truth)
    return clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))


def plane_scores(truth: torch.Tensor, estimate: torch.Tensor) -> dict:
    """Per viewing direction: mean over that plane's slices of PSNR (range 1) and SSIM, clipped to [0, 1]."""
    t, e = truth[0, 0].double(), estimate.reshape(truth.shape)[0, 0].clamp(0, 1).double()
    out = {}
    for name, dim in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        ts, es = t.movedim(dim, 0), e.movedim(dim, 0)
        mse = ((ts - es) ** 2).flatten(1).mean(1).clamp_min(1e-12)
        out[f"psnr_{name}"] = float((10 * torch.log10(1 / mse)).mean())
        out[f"ssim_{name}"] = float(ssim(ts[:, None].float(), es[:, None].float(), data_range=1.0))
    return out


def tv3d(physics, y, lam: float, iterations: int = 100, rho: float = 1.0, x0: torch.Tensor | None = None) -> torch.Tensor:
    """Anisotropic 3D TV least squares by ADMM (CG 5 inner steps), physical units, from ``x0`` (default FBP)."""
    x = physics.fbp(y).clamp(0, 1) if x0 is None else x0.clone()
    state = TVState()

    def normal(v):
        return physics.A_adjoint(physics.A(v))

    rhs = physics.A_adjoint(y)
    for _ in range(iterations):
        x = admm_tv_step(x, normal, rhs, state, (2, 3, 4), lam, rho, cg_iters=5)
    return x


def run_sampler(sampler, preset, overrides, prior, problem):
    post = iv.sample(sampler, prior, problem, generator=torch.Generator().manual_seed(SEED), preset=preset, **overrides)
    return post.samples[0], post.nfe, post.seconds, post.config


def table(args) -> None:
    cache = HERE / "cache" / "table"
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # nothing in the library uses the global RNG; this only pins stray library defaults
    truth = volume(VOLUME_HELDOUT_SEED)
    physics = ops.make("ct", img_size=64, views=8)
    y = measure(physics, truth)
    prior = SliceWisePrior(iv.load_prior("ct-phantom64"), "axial", chunk=CHUNK, depth=64)
    problem = iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)
    rows = []

    def cached(name, compute):
        rows.append(cached_row(cache, name, truth, compute))

    cached("fbp", lambda: (physics.fbp(y), 0, None, {}))
    lam = choose_tv3d(physics)
    cached("tv3d", lambda: (tv3d(physics, y, lam), 0, None, {"lam": lam, "iterations": 100, "rho": 1.0}))
    for name, (sampler, preset, overrides) in METHODS.items():
        if args.methods and name.split(" ")[0] not in args.methods:
            continue
        cached(name, lambda s=sampler, p=preset, o=overrides: run_sampler(s, p, o, prior, problem))
    write(rows, args, "results", f"64x64x64 held-out volume (seed {VOLUME_HELDOUT_SEED}), 8-view parallel-beam CT "
                                 f"per slice, sigma_y={SIGMA_Y}, sampler seed {SEED}, chunk {CHUNK}", section=LEGACY_SECTION)


def cached_row(cache: Path, name: str, truth: torch.Tensor, compute) -> dict:
    """The table row of method ``name``: read from ``cache``, or computed (``compute() -> (estimate, nfe,
    seconds or None, config)``, scored by ``plane_scores``) and written there atomically (a resumable run)."""
    path = cache / (name.replace(" ", "_").replace("/", "-").replace("(", "").replace(")", "").replace(",", "") + ".json")
    if path.exists():
        row = json.loads(path.read_text())
    else:
        start = time.perf_counter()
        estimate, nfe, seconds, config = compute()
        seconds = seconds if seconds is not None else time.perf_counter() - start
        row = {"method": name, "nfe": nfe, "seconds": round(seconds, 1), **plane_scores(truth, estimate),
               "config": config}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(row, indent=1))
        os.replace(tmp, path)
    print(f"{name:28s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith(("psnr", "ssim")))
          + f" nfe={row['nfe']} s={row['seconds']}", flush=True)
    return row


def choose_tv3d(physics) -> float:
    path = HERE / "cache" / "tv3d_lambda.json"
    if path.exists():
        return json.loads(path.read_text())["lam"]
    truth = volume(VOLUME_TUNE_SEED, 32)
    y = measure(physics, truth, seed=7)
    scores = {lam: plane_scores(truth, tv3d(physics, y, lam))["psnr_axial"] for lam in TV3D_GRID}
    lam = max(scores, key=scores.get)
    path.write_text(json.dumps({"lam": lam, "scores": scores}))
    return lam


def tune(args) -> None:
    cache = HERE / "cache" / "tune"
    cache.mkdir(parents=True, exist_ok=True)
    truth = volume(VOLUME_TUNE_SEED, 32)
    physics = ops.make("ct", img_size=64, views=8)
    y = measure(physics, truth, seed=7)
    prior = SliceWisePrior(iv.load_prior("ct-phantom64"), "axial", chunk=CHUNK, depth=32)
    problem = iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)
    rows = []
    for sampler, (preset, field, grid, extra) in TUNE.items():
        for value in grid:
            path = cache / f"{sampler}-{field}-{value}.json"
            if path.exists():
                row = json.loads(path.read_text())
            else:
                estimate, nfe, seconds, _ = run_sampler(sampler, preset, {**extra, field: value}, prior, problem)
                row = {"method": f"{sampler} {field}={value}", "nfe": nfe, "seconds": round(seconds, 1),
                       **plane_scores(truth, estimate)}
                path.write_text(json.dumps(row))
            print(row, flush=True)
            rows.append(row)
    write(rows, args, "tune", f"training-seed volume (seed {VOLUME_TUNE_SEED}), central 32 slices, 8-view CT, "
                              f"sigma_y={SIGMA_Y}; tuning grid (fewer steps for diffusionmbir/tpdm)")


DUALS_STEPS = (30, 100, 300)
DUALS_DEPTH = 16


def duals(args) -> None:
    """DiffusionMBIR's official persistent ADMM duals against duals restarted every step, at growing step
    counts (training-seed volume, central ``DUALS_DEPTH`` slices): is the divergence of the persistent
    duals at the preset's 30 steps a step-count effect? Same lam / rho / CG steps for both (the preset's)."""
    cache = HERE / "cache" / "duals"
    cache.mkdir(parents=True, exist_ok=True)
    truth = volume(VOLUME_TUNE_SEED, DUALS_DEPTH)
    physics = ops.make("ct", img_size=64, views=8)
    y = measure(physics, truth, seed=7)
    prior = SliceWisePrior(iv.load_prior("ct-phantom64"), "axial", chunk=CHUNK, depth=DUALS_DEPTH)
    problem = iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)
    rows = []
    variants = {"restarted duals": dict(persist_duals=False), "persistent duals": dict(persist_duals=True),
                # the official lam (0.04) with the official persistent duals: shrinkage threshold lam/rho 0.004
                "persistent duals, lam 0.04": dict(persist_duals=True, lam=0.04)}
    for steps in args.duals_steps:
        for label, extra in variants.items():
            rows.append(cached_row(cache, f"diffusionmbir steps={steps} {label}", truth, lambda st=steps, e=extra:
                                   run_sampler("diffusionmbir", "ct-sparse8", dict(steps=st, **e), prior, problem)))
    write(rows, args, "duals", f"training-seed volume (seed {VOLUME_TUNE_SEED}), central {DUALS_DEPTH} slices, 8-view "
                               f"CT, sigma_y={SIGMA_Y}, sampler seed {SEED}; DiffusionMBIR preset `ct-sparse8` (lam 0.5, "
                               "rho 10, 3 CG steps) with the official persistent duals or duals restarted every step, and persistent "
                               "duals with the official lam 0.04")


MEMORY_DEPTHS = (64, 128, 256)
MEMORY_MODES = ("denoise", "denoise+vjp", "dds-step")
MEMORY_REPEATS = 3
MEMORY_PROCESSES = 3  # fresh processes per (mode, D): the RSS high-water mark varies by tens of MiB between them


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM, also ru_maxrss) of this process: Linux clear_refs 5."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_point(depth: int, mode: str) -> dict:
    """Peak RSS and seconds of one slice-wise call on a (1, 1, depth, 64, 64) volume, fixed chunk (own process).

    ``denoise``: D(x, sigma) without grad (what DDS / DiffusionMBIR call); ``denoise+vjp``: D(x, sigma)
    with x requiring grad and its chunk-by-chunk backward (DPS guidance); ``dds-step``: one whole DDS
    step of the ct-sparse8 preset (denoise, CG 5 + ADMM-TV-z over the volume, eta-DDIM) via ``iv.sample``.
    The peak is the RSS high-water mark beyond the RSS just before the first call (model, volume and the
    one-slice memory probe already resident), the high-water mark being reset there; ``tensor_peak_mib``
    is the peak of the torch storages one more call allocates (``_PeakBytes``, independent of malloc).
    """
    torch.set_num_threads(1)
    prior = SliceWisePrior(iv.load_prior("ct-phantom64"), "axial", chunk=CHUNK, depth=depth)
    x = torch.randn(1, 1, depth, 64, 64, generator=torch.Generator().manual_seed(0))
    prior.plan(tuple(x.shape))  # the per-slice memory probe (one slice), outside the measured window
    physics = problem = None
    if mode == "dds-step":
        physics = ops.make("ct", img_size=64, views=8)
        truth = volume(VOLUME_HELDOUT_SEED)[:, :, :1].expand(1, 1, depth, 64, 64).contiguous()
        problem = iv.Problem(physics, measure(physics, truth), sigma_y=SIGMA_Y, prior=prior)

    def call():
        if mode == "denoise":
            with torch.no_grad():
                return prior(x, 1.0)
        if mode == "denoise+vjp":
            xg = x.detach().requires_grad_(True)
            out = prior(xg, 1.0)
            (g,) = torch.autograd.grad(out, xg, torch.ones_like(out))
            return g
        post = iv.sample("dds", prior, problem, generator=torch.Generator().manual_seed(SEED), preset="ct-sparse8",
                         steps=1)
        return post.samples

    base = _rss_kib("VmRSS")
    reset = _reset_peak()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = [], []
    for _ in range(MEMORY_REPEATS):
        t0, c0 = time.perf_counter(), time.process_time()
        out = call()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del out
    peak = _rss_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with _PeakBytes() as counter:  # allocator-independent: peak bytes of the torch storages the call allocates
        del_out = call()
    del del_out
    volume_mib = x.numel() * 4 / 2 ** 20
    wall_s, cpu_s = sorted(wall)[len(wall) // 2], sorted(cpu)[len(cpu) // 2]
    return {"mode": mode, "slices": depth, "chunk": CHUNK, "volume_mib": round(volume_mib, 2),
            "base_rss_mib": round(base / 1024, 1), "peak_beyond_base_mib": round((peak - base) / 1024, 1),
            "tensor_peak_mib": round(counter.peak / 2 ** 20, 1),
            "peak_reset": reset, "maxrss_before_mib": round(maxrss_before / 1024, 1),
            "wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3), "cpu_s_per_slice": round(cpu_s / depth, 5)}


def memory(args) -> None:
    rows, median = [], lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    load0 = os.getloadavg()
    for mode in MEMORY_MODES:
        for depth in MEMORY_DEPTHS:
            runs = []
            for _ in range(MEMORY_PROCESSES):
                out = subprocess.run([sys.executable, __file__, "--memory-point", str(depth), "--memory-mode", mode],
                                     capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            peaks = [r["peak_beyond_base_mib"] for r in runs]
            rows.append({"mode": mode, "slices": depth, "chunk": CHUNK, "volume_mib": runs[0]["volume_mib"],
                         "peak_rss_beyond_base_mib": median(peaks), "peak_rss_min_mib": min(peaks),
                         "peak_rss_max_mib": max(peaks), "tensor_peak_mib": median([r["tensor_peak_mib"] for r in runs]),
                         "wall_s": median([r["wall_s"] for r in runs]), "cpu_s": median([r["cpu_s"] for r in runs]),
                         "cpu_s_per_slice": round(median([r["cpu_s"] for r in runs]) / depth, 5)})
            print(rows[-1], flush=True)
    for r in rows:  # the ratios: memory and time per slice against the 64-slice volume
        first = next(q for q in rows if q["mode"] == r["mode"] and q["slices"] == MEMORY_DEPTHS[0])
        r["rss_ratio_vs_64"] = round(r["peak_rss_beyond_base_mib"] / first["peak_rss_beyond_base_mib"], 2)
        r["tensor_ratio_vs_64"] = round(r["tensor_peak_mib"] / first["tensor_peak_mib"], 2)
        r["cpu_per_slice_ratio_vs_64"] = round(r["cpu_s_per_slice"] / first["cpu_s_per_slice"], 2)
    load = os.getloadavg()
    write(rows, args, "memory", f"Slice-wise calls on (1, 1, D, 64, 64) volumes, chunk {CHUNK}, ct-phantom64 axial; "
                                f"each (mode, D) in its own process, 1 torch thread. peak_rss_beyond_base_mib: RSS high-water "
                                f"mark (Linux VmHWM, reset with /proc/self/clear_refs just before the first call) minus "
                                f"the RSS then (model, volume, one-slice probe resident); over "
                                f"{MEMORY_PROCESSES} processes per row: median, min, max; within a process over "
                                f"{MEMORY_REPEATS} calls. tensor_peak_mib: peak bytes of the torch storages one more "
                                f"call allocates (a TorchDispatchMode counter, independent of malloc). wall_s / cpu_s: median of {MEMORY_REPEATS} calls (cpu_s = "
                                f"process CPU time, less sensitive to other jobs on the machine; median over the processes). "
                                f"Load average at the start: {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}; when "
                                f"done: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) on "
                                f"{os.cpu_count()} cores.")
    memory_figure(rows)


def memory_figure(rows) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=110)
    ax_m, ax_t = fig.subplots(1, 2)
    for mode in MEMORY_MODES:
        r = sorted((row for row in rows if row["mode"] == mode), key=lambda row: row["slices"])
        d = [row["slices"] for row in r]
        line = ax_m.errorbar(d, [row["peak_rss_beyond_base_mib"] for row in r], fmt="o-", label=f"{mode} (RSS)",
                             yerr=[[row["peak_rss_beyond_base_mib"] - row["peak_rss_min_mib"] for row in r],
                                   [row["peak_rss_max_mib"] - row["peak_rss_beyond_base_mib"] for row in r]], capsize=3)
        ax_m.plot(d, [row["tensor_peak_mib"] for row in r], "x--", color=line[0].get_color(), label=f"{mode} (tensors)")
        ax_t.plot(d, [row["cpu_s"] for row in r], "o-", label=mode)
    ax_m.set(xlabel="slices D (64x64 each)", ylabel="peak beyond base (MiB)", title=f"memory, chunk {CHUNK}",
             xticks=list(MEMORY_DEPTHS))
    ax_m.set_ylim(bottom=0)
    ax_t.set(xlabel="slices D (64x64 each)", ylabel="CPU seconds per call (1 thread)", title="time",
             xticks=list(MEMORY_DEPTHS))
    ax_t.set_ylim(bottom=0)
    ax_m.legend(fontsize=6)
    fig.suptitle("benchmarks/volume/run.py --memory", fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / "memory.png")


SECTION_OPEN, SECTION_CLOSE = "<!-- section: {} -->", "<!-- /section -->"
LEGACY_SECTION = "ct-phantom"  # rows of results.csv written before it had a ``section`` column: the CT table


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _md_parts(path: Path) -> tuple[str, dict]:
    """The unmarked top of a results file and its marked sections, in order."""
    text = path.read_text() if path.exists() else ""
    top, *blocks = text.split(SECTION_OPEN.split("{}")[0])
    sections = {}
    for block in blocks:
        name, _, body = block.partition(" -->\n")
        sections[name] = body.split(SECTION_CLOSE)[0].rstrip("\n")
    return top.rstrip("\n"), sections


def write(rows, args, stem: str, what: str, section: str | None = None, title: str | None = None) -> None:
    """``stem.csv`` and ``stem.md``. With ``section``, the CSV keeps the other sections' rows (a ``section``
    column); with ``title`` as well, the markdown is a marked section ``## title`` of ``stem.md``, replaced in
    place or appended, and the file's unmarked top (the CT table) is kept; without ``title`` the top is
    rewritten and the marked sections are kept."""
    keys = [k for k in rows[0] if k != "config"]
    csv_path = HERE / f"{stem}.csv"
    out_rows, fields = rows, keys
    if section is not None:
        kept = []
        if csv_path.exists():
            with open(csv_path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if (r.get("section") or LEGACY_SECTION) != section]
            for r in kept:
                r.setdefault("section", LEGACY_SECTION)
        out_rows = kept + [{"section": section, **r} for r in rows]
        fields = ["section"] + list(dict.fromkeys(k for r in out_rows for k in r if k not in ("section", "config")))
    with open(csv_path.with_name(f".{csv_path.name}.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(out_rows)
    os.replace(csv_path.with_name(f".{csv_path.name}.tmp"), csv_path)
    machine = f"{platform.processor() or platform.machine()}, {platform.system()}, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} thread(s)"
    script = Path(sys.argv[0]).name
    lines = [f"## {title}" if title else f"# benchmarks/volume {stem}", "", what, "", f"Machine: {machine}", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/{script} {' '.join(sys.argv[1:])}`", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) and k.startswith(("psnr", "ssim"))
                                       else str(r[k]) for k in keys) + " |")
    write_markdown(stem, "\n".join(lines), section if title else None)


def write_markdown(stem: str, text: str, section: str | None = None) -> None:
    """Replace the unmarked top (``section=None``) or the marked ``section`` of ``stem.md``."""
    path = HERE / f"{stem}.md"
    top, sections = _md_parts(path)
    if section is None:
        top = text
    else:
        sections[section] = text
    blocks = [top] + [f"{SECTION_OPEN.format(name)}\n{body}\n{SECTION_CLOSE}" for name, body in sections.items()]
    _atomic_text(path, "\n\n".join(b for b in blocks if b) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--memory-point", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-mode", choices=MEMORY_MODES, default="denoise", help=argparse.SUPPRESS)
    parser.add_argument("--duals", action="store_true", help="persistent vs restarted DiffusionMBIR duals")
    parser.add_argument("--duals-steps", type=int, nargs="+", default=list(DUALS_STEPS))
    parser.add_argument("--methods", nargs="*", default=None, help="first words of METHODS names to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_point is not None:
        print(json.dumps(memory_point(args.memory_point, args.memory_mode)))
    elif args.tune:
        tune(args)
    elif args.duals:
        duals(args)
    elif args.memory:
        memory(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
