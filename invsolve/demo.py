"""``invsolve demo``: sparse-view CT with FBP, TV and DPS on the shipped ``ct-phantom64`` prior.

Ground truths are held-out random-ellipse phantoms (seed ``HELDOUT_SEED``, never used in
training) and scikit-image's Shepp-Logan phantom at 64x64. The measurement is 8-view
parallel-beam CT with Gaussian noise of standard deviation ``sigma_y`` in sinogram units
(attenuation x pixel length). PSNR and SSIM use data range 1 (attenuation in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import operators as ops

from .baselines import fbp, tv
from .io import finish_output, prepare_output, save_figure, save_nifti
from .metrics import psnr, ssim
from .phantoms import heldout_phantoms, shepp_logan
from .priors import load_prior
from .problem import Problem
from .samplers import sample


@dataclasses.dataclass
class DemoConfig:
    out: str = "invsolve-demo"
    prior: str = "ct-phantom64"
    phantoms: int = 4
    views: int = 8
    sigma_y: float = 0.1
    samples: int = 4
    steps: int | None = None      # DPS overrides; None keeps the ct-sparse8 preset
    zeta: float | None = None
    tv_lambda: float = 0.3         # chosen on training-seed phantoms (docs/quickstart.md)
    seed: int = 0
    force: bool = False
    progress: bool = True
    threads: int | None = None     # torch CPU threads (None: torch's default)


def figure(truth, columns: dict[str, torch.Tensor], names: list[str]) -> Figure:
    """A matplotlib ``Figure`` (no pyplot: no global backend or figure registry)."""
    titles = ["truth", *columns]
    rows = truth.shape[0]
    fig = Figure(figsize=(2.0 * len(titles), 2.0 * rows))
    axes = fig.subplots(rows, len(titles), squeeze=False)
    for r in range(rows):
        for c, title in enumerate(titles):
            image = truth[r, 0] if title == "truth" else columns[title][r, 0]
            kwargs = dict(cmap="gray", vmin=0, vmax=1)
            if title in ("DPS std", "|error| (DPS)"):
                kwargs = dict(cmap="magma", vmin=0, vmax=max(float(columns[title].max()), 1e-6))
            axes[r, c].imshow(image.cpu().numpy(), **kwargs)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(names[r], fontsize=8)
    fig.tight_layout()
    return fig


def run(config: DemoConfig) -> dict:
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    out = Path(config.out)
    tmp = prepare_output(out, config.force)
    try:
        prior = load_prior(config.prior)
        size = prior.image_shape[-1]
        truth = torch.cat([heldout_phantoms(config.phantoms, size), shepp_logan(size)])
        names = [f"held-out {i}" for i in range(config.phantoms)] + ["Shepp-Logan"]
        physics = ops.make("ct", img_size=size, views=config.views)
        noise_gen = torch.Generator().manual_seed(config.seed + 1)
        clean = physics.A(truth)
        y = clean + config.sigma_y * torch.randn(clean.shape, generator=noise_gen)
        problem = Problem(physics, y, sigma_y=config.sigma_y, prior=prior)

        recon, seconds, nfe = {}, {}, {}
        t = time.perf_counter()
        recon["FBP"] = fbp(physics, y)
        seconds["FBP"], nfe["FBP"] = time.perf_counter() - t, 0
        t = time.perf_counter()
        recon["TV"] = tv(physics, y, lam=config.tv_lambda, iterations=150)
        seconds["TV"], nfe["TV"] = time.perf_counter() - t, 0

        overrides = {k: v for k, v in (("steps", config.steps), ("zeta", config.zeta)) if v is not None}
        bar = None
        callback = None
        if config.progress:
            bar = tqdm(desc=f"DPS ({config.samples} samples x {len(names)} scans)", unit="step")

            def callback(info):
                bar.total = info["steps"]
                bar.update(1)
        post = sample("dps", prior, problem, n_samples=config.samples, preset="ct-sparse8",
                         generator=torch.Generator().manual_seed(config.seed), callback=callback, **overrides)
        if bar is not None:
            bar.close()
        recon["DPS mean"] = post.mean.clamp(0, 1)
        seconds["DPS mean"], nfe["DPS mean"] = post.seconds, post.nfe

        rows = []
        for method, images in recon.items():
            for i, name in enumerate(names):
                rows.append({"method": method, "image": name, "psnr": psnr(truth[i], images[i], 1.0),
                             "ssim": ssim(truth[i], images[i], 1.0)})
        for j in range(config.samples):
            for i, name in enumerate(names):
                rows.append({"method": f"DPS sample {j}", "image": name,
                             "psnr": psnr(truth[i], post.samples[j, i].clamp(0, 1), 1.0),
                             "ssim": ssim(truth[i], post.samples[j, i].clamp(0, 1), 1.0)})

        summary = []
        for method in recon:
            held = [r for r in rows if r["method"] == method and r["image"] != "Shepp-Logan"]
            sl = next(r for r in rows if r["method"] == method and r["image"] == "Shepp-Logan")
            summary.append({"method": method,
                            "psnr_heldout": sum(r["psnr"] for r in held) / len(held),
                            "ssim_heldout": sum(r["ssim"] for r in held) / len(held),
                            "psnr_shepp_logan": sl["psnr"], "ssim_shepp_logan": sl["ssim"],
                            "seconds": seconds[method], "nfe": nfe[method]})

        columns = dict(recon)
        columns["DPS std"] = post.std
        columns["|error| (DPS)"] = (recon["DPS mean"] - truth).abs()
        fig = figure(truth, columns, names)
        save_figure(fig, tmp / "demo.png")
        save_nifti(truth[:, 0], tmp / "truth.nii.gz")
        save_nifti(y[:, 0], tmp / "sinogram.nii.gz")
        for method, images in recon.items():
            save_nifti(images[:, 0], tmp / f"{method.lower().replace(' ', '_')}.nii.gz")
        save_nifti(post.std[:, 0], tmp / "dps_std.nii.gz")
        save_nifti(post.samples[:, :, 0].reshape(-1, size, size), tmp / "dps_samples.nii.gz")
        result = {"config": dataclasses.asdict(config), "sampler": post.config, "summary": summary, "rows": rows,
                  "images": names, "torch": torch.__version__, "threads": torch.get_num_threads()}
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "table.md").write_text(format_table(summary, config) + "\n")
        finish_output(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def format_table(summary: list[dict], config: DemoConfig) -> str:
    lines = [f"{config.views}-view parallel-beam CT, sigma_y = {config.sigma_y} (sinogram units), "
             f"{config.phantoms} held-out phantoms + Shepp-Logan, 64x64, data range 1; DPS: {config.samples} samples",
             "",
             "| method | PSNR held-out | SSIM held-out | PSNR Shepp-Logan | SSIM Shepp-Logan | seconds | NFE |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['method']} | {s['psnr_heldout']:.2f} | {s['ssim_heldout']:.3f} | {s['psnr_shepp_logan']:.2f} "
                     f"| {s['ssim_shepp_logan']:.3f} | {s['seconds']:.1f} | {s['nfe']} |")
    return "\n".join(lines)
