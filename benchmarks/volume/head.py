"""Real head volume (issue 12): a real MRI brain volume the 2D prior ``mri-brain64`` was not trained on.

Volume: nibabel's test data ``example4d.nii.gz`` (a real EPI head scan, 128 x 96 x 24 voxels of
2 x 2 x 2.2 mm), its first frame, read with ``invsolve.io.load_volume``; or ``--volume anatomical``
(``anatomical.nii``, a real T1 crop, 33 x 41 x 25 voxels of 2 mm, its first 24 slices). ``mri-brain64``
was trained on the three MNI152 templates only; these two brains are its held-out set (docs/priors.md).
Preparation: flipped to the prior's display orientation (anterior up, patient's right on the image right,
as its training slices), mapped to [0, 1] by the frame's own 0.5 / 99.5 percentiles (the prior's recipe),
centre-cropped to a square (EPI: the central 96 columns, 192 mm; T1: the central 32 x 32 voxels, 64 mm)
and resampled explicitly to the prior's 64 x 64 in-plane size with ``invsolve.io.resample_inplane``
(antialiased bilinear); all native slices are kept (no interpolation along z).

Problems (sigma_y = 0.01 on measurements of the [0, 1] volume):

- ``mri4x``: single-coil Cartesian MRI of every axial slice (``ops.make("mri-4x-equispaced")``, fastMRI's
  brain mask: equispaced_fraction, 4x, centre fraction 0.08, one column mask for every slice drawn with
  fastMRI's per-file seed ``fastmri_seed(file name)``); complex k-space, the magnitude prior seen through
  the real-channel adapter (``invsolve.problem.fit_physics``);
- ``zsr2``: through-plane super-resolution: the mean over slabs of 2 slices along z
  (``ops.make("sr-avgpool", factor=2, dims=3, axes=(0,))``).

Methods: the classical baseline (zero-filled |A^H y|; for z-SR linear interpolation between slab centres
and the exact least-squares A^+ y, slab replication); 3D TV (``run.tv3d``, 100 ADMM iterations from the
baseline); uncoupled slice-wise ΠGDM (the best 2D sampler of benchmarks/mri/tune_presets.md, preset
``mri-4x`` at 50 instead of 100 steps) and slice-wise DDS (``mri-cs4``, 50 steps, no TV); DiffusionMBIR
(``mri-cs``: the official MRI lam 0.005 / rho 0.01, 50 instead of 200 steps); TPDM-style (``mri-cs``, K 2, one
prior along axial + coronal, 30 instead of 200 steps); DDS-3D (``mri-cs4`` plus TV-z). The step counts
are cut so that a table fits a 2-core CPU shared with other jobs.

Tuned here, with ``--tune`` on a training-distribution volume (never the test volume): 3D TV's lambda and
DDS-3D's (rho, tv_z) on each problem; DiffusionMBIR's persistent or restarted duals and TPDM's weight on
``mri4x`` only (z-SR reuses them, marked ``"from": "mri4x"``). The volume: 24 axial slices 2 mm apart
(every 2nd axial slice of the 1 mm template, indices 60-106) of the MNI152 T1 template
the prior was trained on, whole slice square-cropped and resampled to 64 x 64, its own mask seed and noise
seed; score: the mean PSNR of the three viewing directions; fewer steps than the table for the samplers.
Metrics as ``run.plane_scores``; ``cpu_s`` is the process CPU time (wall ``seconds`` are inflated when other
jobs share the cores).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/head.py --tune     # grids on the MNI152 volume
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/head.py            # both tables (example4d)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume/head.py --speed    # DDS-3D / DiffusionMBIR speed section

Rows are cached as JSON (atomic writes) under ``benchmarks/volume/cache/head/``, so a run resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import nibabel as nib
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import invsolve as iv  # noqa: E402
import invsolve.io as vio  # noqa: E402
import operators as ops  # noqa: E402
from invsolve.priors.datasets import mni152_volumes, normalize  # noqa: E402
from invsolve.priors.slicewise import SliceWisePrior  # noqa: E402
from invsolve.problem import real_image_physics  # noqa: E402
from operators.masks import fastmri_seed  # noqa: E402
from run import CHUNK, HERE, LEGACY_SECTION, SEED, cached_row, measure, plane_scores, run_sampler, tv3d, write, \
    write_markdown, _md_parts  # noqa: E402

SIGMA_Y = 0.01
DEPTH = 24
PRIOR = "mri-brain64"
PROBLEMS = ("mri4x", "zsr2")
VOLUMES = {
    "example4d": "nibabel/tests/data/example4d.nii.gz (real EPI head scan), frame 0",
    "anatomical": "nibabel/tests/data/anatomical.nii (real T1 brain crop), slices 0-23",
}
# (sampler, preset, overrides); entries with a "tuned:" key take their values from the --tune choice
METHODS = {  # fewer steps than the presets (2-core CPU shared with other jobs); the step counts are in the rows
    "pigdm (slice-wise)": ("pigdm", "mri-4x", dict(steps=50)),
    "dds (slice-wise, no TV)": ("dds", "mri-cs4", {}),
    "diffusionmbir": ("diffusionmbir", "mri-cs", dict(steps=50)),
    "tpdm (axial+coronal)": ("tpdm", "mri-cs", dict(steps=30)),
    "dds-3d (TV-z)": ("dds", "mri-cs4", {}),
}
TV3D_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03)
TUNE = {  # method name -> (problems it is tuned on, override dicts tried on the MNI152 volume)
    "dds-3d (TV-z)": (PROBLEMS, [dict(steps=30, rho=0.01, tv_z=0.0005), dict(steps=30, rho=0.1, tv_z=0.005),
                                 dict(steps=30, rho=1.0, tv_z=0.05)]),
    "diffusionmbir": (("mri4x",), [dict(steps=30, persist_duals=True), dict(steps=30, persist_duals=False)]),
    "tpdm (axial+coronal)": (("mri4x",), [dict(steps=10, weight=0.01), dict(steps=10, weight=0.1),
                                          dict(steps=10, weight=1.0), dict(steps=10, weight=10.0),
                                          dict(steps=10, weight=100.0)]),
}
TUNED_FIELDS = {"dds-3d (TV-z)": ("rho", "tv_z"), "diffusionmbir": ("persist_duals",), "tpdm (axial+coronal)": ("weight",)}


def volume_psnr(truth: torch.Tensor, estimate: torch.Tensor) -> float:
    """PSNR (data range 1) over the whole volume, estimate clipped to [0, 1]: one figure for every direction."""
    mse = (truth.double() - estimate.reshape(truth.shape).clamp(0, 1).double()).square().mean()
    return float(10 * torch.log10(1 / mse))


def timed(compute, truth: torch.Tensor):
    """``compute`` with its process CPU seconds and the whole-volume PSNR added to the config (wall seconds are
    inflated by other jobs; the per-direction means of per-slice PSNR are inflated by empty border slices)."""
    def run():
        start = time.process_time()
        estimate, nfe, seconds, config = compute()
        return estimate, nfe, seconds, {**config, "cpu_s": round(time.process_time() - start, 1),
                                        "psnr_volume": volume_psnr(truth, estimate)}
    return run


def with_cpu(row: dict) -> dict:
    """The row with ``cpu_s`` after ``seconds`` and ``psnr_volume`` last (from its config)."""
    out = {}
    for k, v in row.items():
        out[k] = v
        if k == "seconds":
            out["cpu_s"] = row.get("config", {}).get("cpu_s")
    out["psnr_volume"] = row.get("config", {}).get("psnr_volume")
    return out


def nibabel_file(name: str) -> Path:
    return Path(nib.__file__).parent / "tests" / "data" / name


def head_volume(name: str, depth: int = DEPTH) -> tuple[torch.Tensor, dict]:
    """(1, 1, depth, 64, 64) in [0, 1] and a description of the preparation."""
    if name == "example4d":
        array, meta = vio.load_volume(nibabel_file("example4d.nii.gz"))  # (t, z, y, x), LAS
        frame = array[0]
        crop = (slice(None), slice(None), slice(16, 112))  # central 96 of 128 columns: 192 mm square
    elif name == "anatomical":
        frame, meta = vio.load_volume(nibabel_file("anatomical.nii"))  # (z, y, x), LAS
        crop = (slice(None), slice(4, 36), slice(0, 32))  # central 32 x 32 voxels: 64 mm (as the prior's card)
    else:
        raise SystemExit(f"unknown volume {name!r}; choose from {sorted(VOLUMES)}")
    if tuple(meta["orientation"]) != ("L", "A", "S"):
        raise SystemExit(f"{name}: expected LAS orientation, got {meta['orientation']}")
    unit = normalize(frame, None, (0.5, 99.5))[:depth]  # the prior's recipe: the frame's own percentiles
    unit = unit[:, ::-1, ::-1][crop].copy()  # display orientation: anterior at row 0, patient's right at the right
    meta = {k: meta[k] for k in ("affine", "spacing")}
    resampled, meta = vio.resample_inplane(torch.from_numpy(unit), 64, meta)
    info = {"source": VOLUMES[name], "native_inplane": list(unit.shape[1:]), "slices": int(unit.shape[0]),
            "spacing_mm_zyx": [round(float(v), 3) for v in meta["spacing"]]}
    return resampled[None, None].float().contiguous(), info


def tune_volume(depth: int = DEPTH) -> torch.Tensor:
    """Training distribution: ``depth`` MNI152 T1 axial slices 2 mm apart (indices 60, 62, ...), square 64 x 64."""
    t1 = mni152_volumes()[0].slices[60:60 + 2 * depth:2, 0]  # (depth, 233, 197) display orientation, [0, 1]
    side = min(t1.shape[-2:])
    top, left = (t1.shape[-2] - side) // 2, (t1.shape[-1] - side) // 2
    square = t1[:, top:top + side, left:left + side]
    resampled, _ = vio.resample_inplane(square, 64)
    return resampled[None, None].float().contiguous()


def make_problem(kind: str, truth: torch.Tensor, mask_name: str, noise_seed: int):
    """(physics, y, physics seen on real images) for ``kind`` on ``truth``."""
    depth = truth.shape[2]
    if kind == "mri4x":
        physics = ops.make("mri-4x-equispaced", img_size=(depth, 64, 64), seed=fastmri_seed(mask_name))
        real = real_image_physics(physics)
    elif kind == "zsr2":
        physics = real = ops.make("sr-avgpool", factor=2, dims=3, axes=(0,), img_size=(depth, 64, 64))
    else:
        raise SystemExit(f"unknown problem {kind!r}")
    return physics, measure(real, truth, seed=noise_seed, sigma=SIGMA_Y), real


def baselines(kind: str, physics, y, depth: int) -> dict:
    """Classical reconstructions (name -> (1, 1, D, H, W)); the first is 3D TV's starting point."""
    if kind == "mri4x":
        return {"zero-filled": physics.A_adjoint(y, mag=True)}
    return {"linear interpolation (z)": F.interpolate(y, size=(depth, 64, 64), mode="trilinear", align_corners=False),
            "least squares (A^+: slabs replicated)": physics.A_dagger(y)}


def mean_psnr(row: dict) -> float:
    return (row["psnr_axial"] + row["psnr_coronal"] + row["psnr_sagittal"]) / 3


def committed_choice(kind: str) -> dict | None:
    """The ``--tune`` choice for ``kind`` as the committed results.md records it (a fresh checkout has no cache)."""
    path = HERE / "results.md"
    if not path.exists():
        return None
    _, sections = _md_parts(path)
    match = re.search(r"Chosen \(best mean PSNR of the three directions\): `(\{.*?\})`", sections.get(f"head-tune-{kind}", ""))
    return json.loads(match.group(1)) if match else None


def tune_path(kind: str) -> Path:
    return HERE / "cache" / "head" / "tune" / kind


def tune(args) -> None:
    truth = tune_volume()
    prior = SliceWisePrior(iv.load_prior(PRIOR), "axial", chunk=CHUNK, depth=truth.shape[2])
    for kind in args.problems:
        cache = tune_path(kind)
        cache.mkdir(parents=True, exist_ok=True)
        physics, y, real = make_problem(kind, truth, "mni152_t1_tune", noise_seed=7)
        start = next(iter(baselines(kind, physics, y, truth.shape[2]).values()))
        rows, choice = [], {}
        tv_rows = {lam: with_cpu(cached_row(cache, f"tv3d lam={lam}", truth, timed(lambda lam=lam: (
            tv3d(real, y, lam, x0=start), 0, None, {"lam": lam}), truth))) for lam in TV3D_GRID}
        rows += list(tv_rows.values())
        choice["tv3d"] = {"lam": max(tv_rows, key=lambda k: mean_psnr(tv_rows[k]))}
        problem = iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)
        for name, (kinds, grid) in TUNE.items():
            if kind not in kinds:  # not tuned on this problem: the choice of the first problem it was tuned on
                other = json.loads((tune_path(kinds[0]) / "choice.json").read_text())[name]
                choice[name] = {**{k: other[k] for k in TUNED_FIELDS[name]}, "from": kinds[0]}
                continue
            sampler, preset, base = METHODS[name]
            scored = []
            for over in grid:
                label = f"{name} " + " ".join(f"{k}={v}" for k, v in over.items())
                row = with_cpu(cached_row(cache, label, truth, timed(lambda o=over: run_sampler(
                    sampler, preset, {**base, **o}, prior, problem), truth)))
                rows.append(row)
                scored.append((mean_psnr(row), over))
            best = max(scored, key=lambda t: t[0])[1]
            choice[name] = {k: best[k] for k in TUNED_FIELDS[name]}
        tmp = cache / ".choice.json.tmp"
        tmp.write_text(json.dumps(choice, indent=1))
        tmp.replace(cache / "choice.json")
        print(kind, "choice:", choice, flush=True)
        write(rows, args, "results", f"Tuning grid, {kind}: the training-distribution MNI152 T1 volume (24 axial slices "
                                     f"2 mm apart, 64 x 64), sigma_y={SIGMA_Y}, noise seed 7, mask seed "
                                     f"fastmri_seed('mni152_t1_tune'); fewer steps than the table for diffusionmbir / "
                                     f"tpdm. Chosen (best mean PSNR of the three directions): `{json.dumps(choice)}`",
              section=f"head-tune-{kind}", title=f"Real head volume: tuning grid ({kind}, MNI152 T1, not the test volume)")


def table(args) -> None:
    truth, info = head_volume(args.volume)
    depth = truth.shape[2]
    prior = SliceWisePrior(iv.load_prior(PRIOR), "axial", chunk=CHUNK, depth=depth)
    mask_name = Path(VOLUMES[args.volume].split(" ")[0]).name
    for kind in args.problems:
        choice_file = tune_path(kind) / "choice.json"
        if choice_file.exists():
            choice = json.loads(choice_file.read_text())
        else:
            choice = committed_choice(kind)
            if choice is None:
                raise SystemExit(f"run --tune first: {choice_file} is missing and results.md records no choice")
            print(f"{kind}: the --tune choice recorded in results.md (the cache is not committed): {choice}", flush=True)
        cache = HERE / "cache" / "head" / args.volume / kind
        cache.mkdir(parents=True, exist_ok=True)
        physics, y, real = make_problem(kind, truth, mask_name, noise_seed=1)
        rows = []
        base = baselines(kind, physics, y, depth)
        for name, estimate in base.items():
            rows.append(with_cpu(cached_row(cache, name, truth, timed(lambda e=estimate: (e, 0, None, {}), truth))))
        lam = choice["tv3d"]["lam"]
        start = next(iter(base.values()))
        rows.append(with_cpu(cached_row(cache, "tv3d", truth, timed(lambda: (
            tv3d(real, y, lam, x0=start), 0, None, {"lam": lam, "iterations": 100, "rho": 1.0,
                                                   "chosen_on": "MNI152 T1 tuning volume"}), truth))))
        problem = iv.Problem(physics, y, sigma_y=SIGMA_Y, prior=prior)
        for name, (sampler, preset, overrides) in METHODS.items():
            if args.methods and name.split(" ")[0] not in args.methods:
                continue
            over = {**overrides, **{k: v for k, v in choice.get(name, {}).items() if k != "from"}}
            rows.append(with_cpu(cached_row(cache, name, truth, timed(lambda s=sampler, p=preset, o=over: run_sampler(
                s, p, o, prior, problem), truth))))
        what = (f"{info['source']}: {info['slices']} slices of {info['native_inplane'][0]} x {info['native_inplane'][1]} "
                f"voxels resampled to 64 x 64 (spacing z, y, x = {info['spacing_mm_zyx']} mm), [0, 1] by its 0.5/99.5 "
                f"percentiles; prior {PRIOR} slice-wise (axial, chunk {CHUNK}); "
                + ("4x Cartesian MRI per axial slice (fastMRI equispaced_fraction, centre 0.08, one mask for all "
                   f"slices, seed fastmri_seed('{mask_name}')), complex k-space, real-channel adapter"
                   if kind == "mri4x" else "z super-resolution x2 (mean over slabs of 2 slices)")
                + f"; sigma_y={SIGMA_Y}, noise seed 1, sampler seed {SEED}. Tuned values (chosen on the MNI152 T1 "
                  f"volume, `--tune`): `{json.dumps(choice)}`. Each row is one run (one sample, no repeats).")
        title = f"Real head volume: {args.volume}, " + ("4x Cartesian MRI" if kind == "mri4x" else "z-SR x2")
        write(rows, args, "results", what, section=f"head-{args.volume}-{kind}", title=title)


def speed(args) -> None:
    """DDS-3D against DiffusionMBIR: measured seconds, and DiffusionMBIR at its official 2000 steps (1 corrector)
    estimated as its measured seconds per step times 2000, from the rows in results.csv."""
    with open(HERE / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sections = [LEGACY_SECTION] + [f"head-{v}-{k}" for v in VOLUMES for k in PROBLEMS]
    lines = ["## Speed: DDS-3D against DiffusionMBIR", "",
             "From the rows of results.csv (1 CPU thread; wall seconds, and process CPU seconds where recorded, which "
             "other jobs on the machine inflate less). DiffusionMBIR's official setting is 2000 steps with 1 corrector "
             "step (3999 NFE). The rows marked *estimate* are **measured per-step cost × official steps** (the run's "
             "seconds / its steps × 2000), not a run; a step (predictor, corrector, ADMM-TV) costs the same at any "
             "step count. DDS-3D is as run (its official count is 50 steps).", "",
             "| section | DDS-3D NFE | DDS-3D s (CPU s) | DiffusionMBIR | NFE | s (CPU s) | s per step | "
             "time DDS-3D / DiffusionMBIR (CPU) | speed-up of DDS-3D (CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for section in sections:
        pick = {r["method"]: r for r in rows if (r.get("section") or LEGACY_SECTION) == section}
        if "dds-3d (TV-z)" not in pick or "diffusionmbir" not in pick:
            continue
        dds, mbir = pick["dds-3d (TV-z)"], pick["diffusionmbir"]
        steps = (int(mbir["nfe"]) + 1) // 2  # 1 corrector step: NFE = 2 steps - 1
        d_s, m_s = float(dds["seconds"]), float(mbir["seconds"])
        d_c, m_c = (float(dds["cpu_s"]), float(mbir["cpu_s"])) if dds.get("cpu_s") and mbir.get("cpu_s") else (None, None)
        fmt = lambda s, c: f"{s:.1f}" + (f" ({c:.1f})" if c is not None else "")  # noqa: E731
        ratio = lambda a, b, c, d: f"{a / b:.4f}" + (f" ({c / d:.4f})" if c is not None else "")  # noqa: E731
        speed_up = lambda a, b, c, d: f"{b / a:.1f}x" + (f" ({d / c:.1f}x)" if c is not None else "")  # noqa: E731
        scale = 2000 / steps
        for label, nfe, m_wall, m_cpu in ((f"measured, {steps} steps", mbir["nfe"], m_s, m_c),
                                          ("*estimate*: 2000 steps (measured per-step cost × official steps)",
                                           2 * 2000 - 1, m_s * scale, None if m_c is None else m_c * scale)):
            lines.append(f"| {section} | {dds['nfe']} | {fmt(d_s, d_c)} | {label} | {nfe} | {fmt(m_wall, m_cpu)} | "
                         f"{m_s / steps:.2f} | {ratio(d_s, m_wall, d_c, m_cpu)} | {speed_up(d_s, m_wall, d_c, m_cpu)} |")
    write_markdown("results", "\n".join(lines), "speed")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--volume", choices=sorted(VOLUMES), default="example4d")
    parser.add_argument("--problems", nargs="*", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--methods", nargs="*", default=None, help="first words of METHODS names to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # nothing in the library uses the global RNG; this only pins stray library defaults
    if args.tune:
        tune(args)
    elif args.speed:
        speed(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
