"""``invsolve bench report DB --out DIR``: tables and figures from a benchmark database.

Writes into ``DIR`` (each file atomically: written beside its final name, then renamed):

- ``results.md``: per acceleration, one row per method with the mean +- 2 std over volumes of
  fastMRI's per-volume NMSE, PSNR and SSIM (fastMRI's ``evaluate.py`` prints the same
  aggregate), mean seconds per volume, NFE per draw and draws; the oracle best-of-N PSNR of
  samplers in its own, labelled column; then a PSNR / SSIM pivot (method x acceleration), the
  resolved configuration of every method (hash and hyperparameters) and the software versions;
- ``results.csv``: the same numbers, one line per (method, acceleration);
- ``figures/<volume>_<R>x.png``: for the figure slice of each volume and acceleration, the target,
  the zero-filled image, the baselines and the samplers' posterior means (top row), their absolute
  error maps (middle row) and the samplers' pixelwise posterior std (bottom row).
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import DataError
from .db import ResultStore
from .metrics import aggregate as fastmri_aggregate
from .runner import baseline_names, is_sampler

METRICS = ("nmse", "psnr", "ssim")


def aggregate(values) -> tuple[float, float]:
    """(mean, 2 * std) over volumes, as fastMRI's ``evaluate.py`` reports (``metrics.aggregate``:
    sample std, ddof = 1; ``nan`` for a single volume)."""
    out = fastmri_aggregate(list(values))
    return float(out["mean"]), float(out["two_std"])


def _pm(mean: float, two_std: float, digits: int) -> str:
    spread = "n/a" if np.isnan(two_std) else f"{two_std:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _order(methods: list[str]) -> list[str]:
    base = [m for m in baseline_names() if m in methods]
    others = sorted(m for m in methods if m not in base and not is_sampler(m))
    return base + others + sorted(m for m in methods if is_sampler(m))


def summarize(results: list[dict]) -> list[dict]:
    """One summary per (method label, acceleration); a method run with several configurations
    gets one label per configuration hash."""
    hashes = defaultdict(set)
    for r in results:
        hashes[r["method"]].add(r["config_hash"])
    groups = defaultdict(list)
    for r in results:
        label = r["method"] if len(hashes[r["method"]]) == 1 else f"{r['method']} [{r['config_hash'][:6]}]"
        groups[(label, r["method"], float(r["acceleration"]), r["mask"])].append(r)
    order = {m: i for i, m in enumerate(_order(sorted(hashes)))}
    summaries = []
    for (label, method, accel, mask), rows in sorted(groups.items(), key=lambda kv: (kv[0][2], order[kv[0][1]], kv[0][0])):
        s = {"method": label, "acceleration": accel, "mask": mask, "volumes": len(rows),
             "slices": sum(len(r["slices"]) for r in rows), "config_hash": rows[0]["config_hash"],
             "seconds": float(np.mean([r["seconds"] for r in rows])), "nfe": int(rows[0]["nfe"]),
             "draws": int(rows[0]["samples"]), "sampler": rows[0]["config"].get("kind") == "sampler",
             "config": rows[0]["config"]}
        for m in METRICS:
            s[m], s[f"{m}_2std"] = aggregate(r[m] for r in rows)
        oracle = [r["oracle_psnr"] for r in rows if r["oracle_psnr"] is not None]
        s["oracle_psnr"], s["oracle_psnr_2std"] = aggregate(oracle) if oracle else (None, None)
        summaries.append(s)
    return summaries


def markdown(summaries: list[dict], results: list[dict], db: str) -> str:
    versions = {}
    devices = set()
    for r in results:
        versions.update(r["versions"])
        devices.add(r["device"])
    volumes = sorted({r["volume"] for r in results})
    lines = ["# fastMRI benchmark", "",
             f"Database `{db}`: {len(results)} results over {len(volumes)} volumes. Metrics exactly as fastMRI's "
             "`evaluate.py`: per volume NMSE, PSNR (data range = volume maximum) and SSIM (7x7 uniform window, "
             "data range = volume maximum, mean over slices) on the selected slices, then mean +- 2 std over volumes. "
             "Samplers are scored on the mean of their posterior draws; 'best-of-N PSNR (oracle)' picks per slice "
             "the draw closest to the target and is **not** a valid estimate (shown only for comparison with papers "
             "that report it). Seconds: wall time per volume (all selected slices); NFE: denoiser evaluations per draw.",
             ""]
    for accel in sorted({s["acceleration"] for s in summaries}):
        rows = [s for s in summaries if s["acceleration"] == accel]
        lines += [f"## {accel:g}x ({rows[0]['mask']} mask)", "",
                  "| method | volumes | NMSE | PSNR (dB) | SSIM | seconds / volume | NFE | draws | best-of-N PSNR (oracle) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in rows:
            oracle = "-" if s["oracle_psnr"] is None else f"{s['oracle_psnr']:.2f}"
            lines.append(f"| {s['method']} | {s['volumes']} | {_pm(s['nmse'], s['nmse_2std'], 4)} | "
                         f"{_pm(s['psnr'], s['psnr_2std'], 2)} | {_pm(s['ssim'], s['ssim_2std'], 4)} | "
                         f"{s['seconds']:.2f} | {s['nfe'] if s['sampler'] else '-'} | "
                         f"{s['draws'] if s['sampler'] else '-'} | {oracle} |")
        lines.append("")
    accels = sorted({s["acceleration"] for s in summaries})
    methods = list(dict.fromkeys(s["method"] for s in summaries))
    lookup = {(s["method"], s["acceleration"]): s for s in summaries}
    lines += ["## PSNR / SSIM (method x acceleration)", "",
              "| method | " + " | ".join(f"{a:g}x PSNR | {a:g}x SSIM" for a in accels) + " |",
              "|---|" + "---|---|" * len(accels)]
    for m in methods:
        cells = []
        for a in accels:
            s = lookup.get((m, a))
            cells += ["-", "-"] if s is None else [f"{s['psnr']:.2f}", f"{s['ssim']:.4f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Configurations", ""]
    seen = set()
    for s in summaries:
        if (s["method"], s["config_hash"]) in seen:
            continue
        seen.add((s["method"], s["config_hash"]))
        cfg = s["config"]
        detail = cfg.get("hyperparameters") if s["sampler"] else cfg.get("options")
        extra = ""
        if s["sampler"]:
            prior = cfg.get("prior", {})
            extra = (f"; prior `{prior.get('name')}` (sha256 {str(prior.get('sha256'))[:12]}), {cfg.get('samples')} draws, "
                     f"sigma_y {cfg.get('sigma_y')}, preset {cfg.get('preset')}")
        lines.append(f"- `{s['method']}` (config {s['config_hash']}): {detail}{extra}; slices {cfg.get('slices')}")
    lines += ["", "Software: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
              + f"; devices: {', '.join(sorted(devices))}.", ""]
    return "\n".join(lines)


def csv_text(summaries: list[dict]) -> str:
    buffer = io.StringIO()
    fields = ["method", "acceleration", "mask", "volumes", "slices", "nmse", "nmse_2std", "psnr", "psnr_2std",
              "ssim", "ssim_2std", "oracle_psnr", "seconds", "nfe", "draws", "config_hash"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for s in summaries:
        writer.writerow({k: ("" if s.get(k) is None else s[k]) for k in fields})
    return buffer.getvalue()


def figure(volume: str, accel: float, panels: list[tuple[str, dict]], target: np.ndarray, slice_index: int) -> bytes:
    """PNG bytes: target | methods (top), |error| (middle), posterior std (bottom, samplers)."""
    has_std = any("std" in p for _, p in panels)
    rows = 3 if has_std else 2
    cols = 1 + len(panels)
    vmax = float(target.max()) or 1.0
    errors = [np.abs(p["recon"] - target) for _, p in panels]
    emax = max(float(np.percentile(e, 99.5)) for e in errors) if errors else 1.0
    emax = emax or 1.0
    smax = max((float(np.percentile(p["std"], 99.5)) for _, p in panels if "std" in p), default=1.0) or 1.0
    size = 2.2
    fig = Figure(figsize=(size * cols, size * rows + 0.4))  # no pyplot: no global backend or figure registry
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    axes[0, 0].imshow(target, cmap="gray", vmin=0, vmax=vmax)
    axes[0, 0].set_title("target", fontsize=9)
    axes[1, 0].set_ylabel(f"|error| (0-{emax:.2g})", fontsize=8)
    if has_std:
        axes[2, 0].set_ylabel(f"posterior std (0-{smax:.2g})", fontsize=8)
    for j, ((label, p), err) in enumerate(zip(panels, errors), start=1):
        axes[0, j].imshow(p["recon"], cmap="gray", vmin=0, vmax=vmax)
        title = label if p.get("psnr") is None else f"{label}\n{p['psnr']:.2f} dB"
        axes[0, j].set_title(title, fontsize=9)
        axes[1, j].imshow(err, cmap="magma", vmin=0, vmax=emax)
        if "std" in p:
            axes[2, j].imshow(p["std"], cmap="viridis", vmin=0, vmax=smax)
    fig.suptitle(f"{volume}, slice {slice_index}, {accel:g}x", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_report(db: str | Path, out: str | Path) -> dict:
    """Write ``results.md``, ``results.csv`` and ``figures/*.png`` for the database ``db`` into ``out``."""
    db, out = Path(db), Path(out)
    if not db.is_file():
        raise FileNotFoundError(f"no benchmark database at {db}")
    with ResultStore(db) as store:
        results = store.results()
        if not results:
            raise DataError(f"{db} holds no results yet; run `invsolve bench fastmri --db {db}` first")
        images = store.images([r["id"] for r in results])
        slice_psnr = {(r["result_id"], r["slice"]): r["psnr"] for r in store.slice_results()}
    summaries = summarize(results)
    _atomic_write_bytes(out / "results.md", markdown(summaries, results, str(db)).encode())
    _atomic_write_bytes(out / "results.csv", csv_text(summaries).encode())
    label_of = {}
    for s in summaries:
        label_of[(s["config_hash"], s["acceleration"])] = s["method"]
    by_figure = defaultdict(list)
    for r in results:
        by_figure[(r["volume"], float(r["acceleration"]))].append(r)
    figures = []
    for (volume, accel), rows in sorted(by_figure.items()):
        order = {m: i for i, m in enumerate(_order(sorted({r["method"] for r in rows})))}
        rows = sorted(rows, key=lambda r: (order[r["method"]], r["id"]))
        target, slice_index, panels = None, None, []
        for r in rows:
            found = {kind: a for (rid, idx, kind), a in images.items() if rid == r["id"]}
            if "recon" not in found:
                continue
            idx = next(idx for (rid, idx, kind) in images if rid == r["id"] and kind == "recon")
            if target is None:
                target, slice_index = found["target"], idx
            elif idx != slice_index:
                continue
            panel = {"recon": found["recon"]}
            if "std" in found:
                panel["std"] = found["std"]
            panel["psnr"] = slice_psnr.get((r["id"], idx))  # data range: the volume's maximum
            panels.append((label_of.get((r["config_hash"], accel), r["method"]), panel))
        if target is None:
            continue
        name = f"{Path(volume).stem}_{accel:g}x.png"
        _atomic_write_bytes(out / "figures" / name, figure(volume, accel, panels, target, slice_index))
        figures.append(str(out / "figures" / name))
    return {"markdown": str(out / "results.md"), "csv": str(out / "results.csv"), "figures": figures,
            "summaries": summaries}
