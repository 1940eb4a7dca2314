"""How good is a prior's denoiser? One-step denoising PSNR against a tuned total-variation denoiser.

``denoise_vs_tv(prior, images, sigma)`` adds Gaussian noise of standard deviation ``sigma``
(physical units, e.g. attenuation in [0, 1]) to ``images`` and compares

- the prior's denoiser in one step, ``D(to_model(y), scale * sigma)`` mapped back to physical
  units (``scale`` from the card: noise of std ``sigma`` in physical units has std
  ``scale * sigma`` in model space), with
- deepinv's ``TVDenoiser`` (isotropic TV, ``argmin_x 1/2 ||x - y||^2 + w TV(x)``, primal-dual),
  whose weight ``w`` is chosen by grid search to maximise the mean PSNR on a *separate* set of
  ``tune_images`` with their own noise (by default drawn from the prior's training distribution,
  so TV gets the same information the prior had, and never sees the evaluation images).

PSNR uses data range 1 (the physical range of [0, 1] images; for complex priors the peak
magnitude) and is averaged over images; neither output is clipped. Noise comes from
``torch.Generator().manual_seed(seed)`` (evaluation) and ``seed + 1`` (tuning).

``evaluate_prior(name)`` measures a prior trained by ``invsolve train`` on its held-out data
(``heldout_data``): ellipse priors (``ct-phantom64``) on ``invsolve.phantoms.heldout_phantoms``,
the ``mni152`` brain prior on nibabel's ``anatomical.nii`` and ``example4d.nii.gz``
(``datasets.brain_heldout_sets``), a prior trained on files on the validation files of its
recipe's split (held out by file). ``record_evaluation(folder, result)`` writes the figure into
the prior's ``card.json`` (``metadata.evaluation``) without touching the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
from deepinv.models import TVDenoiser

from ..baselines import tv
from ..errors import CheckpointError, ConfigError, DataError
from ..problem import Problem
from ..samplers import sample
from ..phantoms import HELDOUT_SEED, heldout_phantoms, random_ellipses
from . import datasets
from .base import Prior, PriorCard
from .bridge import bridge_physics, bridge_start
from .latent import LatentPrior
from .loaders import load_prior, sha256
from .train_config import TrainConfig, recorded_config

DEFAULT_TV_GRID = tuple(float(v) for v in torch.logspace(math.log10(0.02), math.log10(4.0), 16))
"""TV weights tried, as multiples of ``sigma`` (then refined between the best neighbours)."""


def latent_noise_level(prior: LatentPrior, images: torch.Tensor, sigma: float, seed: int) -> float:
    """Latent noise level of image noise ``sigma`` for a latent prior: the RMS of
    ``encode(x + sigma n) - encode(x)`` over ``images`` (training-distribution images, never the
    evaluated ones), noise from ``torch.Generator().manual_seed(seed)``."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        shift = prior.encode(images + sigma * noise) - prior.encode(images)
    return float(shift.pow(2).mean().sqrt())


def latent_denoise(prior: LatentPrior, noisy: torch.Tensor, sigma_z: float) -> torch.Tensor:
    """One-step denoiser of a latent prior in physical units: ``decode(D(encode(y), sigma_z))``."""
    return prior.decode(prior.latent_prior(prior.encode(noisy), sigma_z))


def denoise_physical(prior: Prior, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    """One denoiser step on physical-unit images, through the prior card's map:
    ``to_physical(D(to_model(y), scale * sigma))`` (noise of std ``sigma`` in physical units has std
    ``scale * sigma`` in model space)."""
    return prior.to_physical(prior(prior.to_model(noisy), prior.card.scale * sigma))


def psnr_per_image(target: torch.Tensor, estimate: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR of each image in a batch (all non-batch dimensions pooled), float64."""
    mse = ((target.double() - estimate.double()) ** 2).reshape(target.shape[0], -1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def tv_denoise(noisy: torch.Tensor, weight: float, iterations: int = 300) -> torch.Tensor:
    """deepinv's ``TVDenoiser`` with a fresh state (no warm start carried between calls)."""
    with torch.no_grad():
        return TVDenoiser(n_it_max=iterations, crit=1e-5)(noisy, ths=weight)


def tune_tv_weight(images: torch.Tensor, sigma: float, seed: int, grid=DEFAULT_TV_GRID,
                   iterations: int = 300) -> tuple[float, float]:
    """``(weight, mean PSNR)`` maximising TV's PSNR on ``images`` + seeded noise of std ``sigma``.

    A log grid of ``grid * sigma`` followed by 4 points between the best grid point's neighbours.
    """
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    noisy = images + sigma * noise

    def score(w):
        return float(psnr_per_image(images, tv_denoise(noisy, w, iterations)).mean())

    weights = [g * sigma for g in grid]
    scores = [score(w) for w in weights]
    best = max(range(len(weights)), key=scores.__getitem__)
    lo, hi = weights[max(best - 1, 0)], weights[min(best + 1, len(weights) - 1)]
    for w in torch.logspace(math.log10(lo), math.log10(hi), 6)[1:-1].tolist():
        weights.append(w)
        scores.append(score(w))
    best = max(range(len(weights)), key=scores.__getitem__)
    return weights[best], scores[best]


def denoise_vs_tv(prior, images: torch.Tensor, sigma: float = 0.1, seed: int = 0,
                  tune_images: torch.Tensor | None = None, tv_weight: float | None = None,
                  batch: int = 32, groups: dict[str, int] | None = None) -> dict:
    """Denoising PSNR of ``prior`` (one step) and of TV on ``images`` (physical units) at noise ``sigma``.

    TV's weight is ``tv_weight`` when given, else tuned on ``tune_images`` (required then; keep it
    disjoint from ``images``). ``groups`` (name -> number of consecutive images) adds per-group
    means under ``"sets"``. Returns a JSON-ready dict with both PSNRs and the gain in dB.

    A ``LatentPrior`` (e.g. ``ct-phantom64-latent``) denoises in one step as ``latent_denoise``:
    ``decode(D(encode(y), sigma_z))``, its latent noise level ``sigma_z`` measured on
    ``tune_images`` (``latent_noise_level``, required then); the result adds ``latent_sigma`` and the
    autoencoder's reconstruction PSNR ``autoencoder_psnr_db`` (``decode(encode(x))``, noise-free).
    """
    latent = isinstance(prior, LatentPrior)
    shape = prior.image_shape
    if tuple(images.shape[1:]) != tuple(shape):
        raise DataError(f"images of shape {tuple(images.shape[1:])} do not match the prior's shape {tuple(shape)}")
    if (tv_weight is None or latent) and tune_images is None:
        raise ConfigError("pass tune_images (a set disjoint from images) to choose TV's weight"
                          + (" and the latent noise level" if latent else ", or tv_weight"))
    if tv_weight is None:
        tv_weight, _ = tune_tv_weight(tune_images, sigma, seed + 1)
    extra = {}
    if latent:
        sigma_z = latent_noise_level(prior, tune_images, sigma, seed + 2)
        with torch.no_grad():
            recon = torch.cat([prior.decode(prior.encode(images[i:i + batch])) for i in range(0, images.shape[0], batch)])
        extra = {"latent_sigma": round(sigma_z, 6),
                 "autoencoder_psnr_db": round(float(psnr_per_image(images, recon).mean()), 3),
                 "latent_definition": "decode(D(encode(y), latent_sigma)); latent_sigma = RMS of encode(x + sigma n) "
                                      "- encode(x) on the tuning images"}

        def denoise(noisy):
            return latent_denoise(prior, noisy, sigma_z)
    else:
        def denoise(noisy):
            return denoise_physical(prior, noisy, sigma)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    noisy = images + sigma * noise
    with torch.no_grad():
        denoised = torch.cat([denoise(noisy[i:i + batch]) for i in range(0, images.shape[0], batch)])
    prior_psnrs = psnr_per_image(images, denoised)
    tv_psnrs = psnr_per_image(images, tv_denoise(noisy, tv_weight))
    noisy_psnrs = psnr_per_image(images, noisy)
    prior_psnr, tv_psnr = float(prior_psnrs.mean()), float(tv_psnrs.mean())
    result = {"sigma": sigma, "images": int(images.shape[0]), "seed": seed,
              "prior_psnr_db": round(prior_psnr, 3), "tv_psnr_db": round(tv_psnr, 3),
              "gain_db": round(prior_psnr - tv_psnr, 3), "tv_weight": round(float(tv_weight), 6),
              "noisy_psnr_db": round(float(noisy_psnrs.mean()), 3),
              "tune_images": None if tune_images is None else int(tune_images.shape[0]),
              "definition": "mean PSNR (data range 1) of the prior's one-step denoiser D(y, scale*sigma) and of "
                            "deepinv TVDenoiser (weight tuned on separate images) on y = x + sigma n, physical units",
              **extra}
    if groups:
        if sum(groups.values()) != images.shape[0]:
            raise ConfigError(f"groups {groups} do not add up to the {images.shape[0]} images")
        result["sets"], start = {}, 0
        for name, count in groups.items():
            part = slice(start, start + count)
            p, t = float(prior_psnrs[part].mean()), float(tv_psnrs[part].mean())
            result["sets"][name] = {"images": count, "prior_psnr_db": round(p, 3), "tv_psnr_db": round(t, 3),
                                    "gain_db": round(p - t, 3)}
            start += count
    return result


def _recipe_config(card, **overrides):
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    recipe = {k: v for k, v in recorded_config(card.metadata.get("recipe", {})).items() if k in names}
    return TrainConfig(**{**recipe, "name": card.name, **overrides})


def heldout_data(card, n: int = 32, tune: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(evaluation images, TV tuning images, description)`` for a prior trained by ``invsolve train``.

    - ellipses: the first ``n`` held-out phantoms (``heldout_phantoms``); tuning: ``tune`` phantoms
      of the validation stream;
    - motion-kernels, darcy-fields (``datasets.GENERATED_SOURCES``): the first ``n`` held-out draws
      (``heldout_motion_kernels``, ``heldout_fields``); tuning: ``tune`` training draws of the validation seed;
    - mni152: the held-out brains ``datasets.brain_heldout_sets`` (all their slices; ``n`` ignored);
      tuning: ``tune`` training-distribution crops of the MNI152 templates without augmentation;
    - files: up to ``n`` evenly spaced slices of the validation files of the recipe's split (the
      files must still be at the recorded path); tuning: ``tune`` training slices without augmentation.

    The description's ``"groups"`` gives the number of images of each held-out set, in order.
    """
    source = card.metadata.get("recipe", {}).get("data")
    size = card.metadata.get("recipe", {}).get("size", card.shape[-1])  # the image size (a latent prior's is not its shape)
    tune_generator = torch.Generator().manual_seed(seed + 7)
    if source == "ellipses":
        images = heldout_phantoms(n, size)
        tune_images = random_ellipses(tune, size, torch.Generator().manual_seed(datasets.VALIDATION_SEED))
        return images, tune_images, {"source": f"invsolve.phantoms.heldout_phantoms (seed {HELDOUT_SEED}), "
                                               "never used in training",
                                     "tv_tuning": f"{tune} random_ellipses of seed {datasets.VALIDATION_SEED}"}
    if source in datasets.GENERATED_SOURCES:
        gen = datasets.GENERATED_SOURCES[source]
        images = gen.heldout(n, size)
        tune_images = gen.train(tune, size, torch.Generator().manual_seed(datasets.VALIDATION_SEED))
        return images, tune_images, {"source": f"{gen.label(gen.heldout)} (seeds from {gen.heldout_seed}), "
                                               "never used in training",
                                     "tv_tuning": f"{tune} {gen.train.__name__} of seed {datasets.VALIDATION_SEED}"}
    if source == "mni152":
        config = _recipe_config(card, augment=(), val_images=0)
        sets = datasets.brain_heldout_sets(size, tuple(config.percentiles))
        tune_images = datasets.mni152_data(config).sample(tune, tune_generator)
        return torch.cat(list(sets.values())), tune_images, {
            "source": {f"nibabel/tests/data/{k}": v for k, v in datasets.HELDOUT_BRAINS.items()},
            "note": "different brains from the MNI152 templates the prior was trained on",
            "tv_tuning": f"{tune} MNI152 training crops (seed {seed + 7}, no augmentation)",
            "groups": {k: int(v.shape[0]) for k, v in sets.items()}}
    if source is None:
        raise ConfigError(f"prior {card.name!r} has no training recipe in its card: no built-in held-out set; "
                          "use evaluate_files(prior, data) with your own held-out scans")
    config = _recipe_config(card, augment=(), val_images=n)
    built = datasets.file_data(config)
    if built.validation is None:
        raise ConfigError(f"prior {card.name!r} was trained on all of {source!r} (no validation files): "
                          "evaluate it on other scans with evaluate_files(prior, data) / invsolve evaluate --data")
    return built.validation, built.sample(tune, tune_generator), {
        "source": f"validation files of {source!r} (split by file, seed {config.seed}, "
                  f"val_fraction {config.val_fraction}): {built.description['validation']['files']}",
        "tv_tuning": f"{tune} training slices (seed {seed + 7}, no augmentation)"}


BRIDGE_NFE = 20
"""NFE of the I2SB reconstructions that evaluate a bridge prior (CDDB's few-step regime)."""
BRIDGE_TV_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""TV weights tried for a bridge's baseline (units of ``||A x - y||^2 / 2``)."""


def bridge_vs_tv(prior, images: torch.Tensor, tune_images: torch.Tensor, seed: int = 0, nfe: int = BRIDGE_NFE) -> dict:
    """Reconstruction PSNR of a bridge prior (I2SB at ``nfe``) against TV and the bridge's start image.

    The measurements are the card's: ``y = A x + sigma_y n`` with the bridge's operator and noise
    (``metadata.bridge``), noise seeded by ``seed``; TV's weight is the best of ``BRIDGE_TV_GRID`` on
    ``tune_images`` (disjoint from ``images``). One I2SB draw per image, generator ``seed``.
    """
    physics, sigma_y = bridge_physics(prior.card), prior.sigma_y

    def measure(x, s):
        y = physics.A(x)
        return y + sigma_y * torch.randn(y.shape, generator=torch.Generator().manual_seed(s), dtype=y.dtype)

    def mean_psnr(truth, estimate):
        return float(psnr_per_image(truth, estimate.clamp(0, 1)).mean())

    y_tune = measure(tune_images, seed + 2)
    grid = {lam: mean_psnr(tune_images, tv(physics, y_tune, lam=lam, iterations=150)) for lam in BRIDGE_TV_GRID}
    lam = max(grid, key=grid.get)
    y = measure(images, seed + 1)
    post = sample("i2sb", prior, Problem(physics, y, sigma_y=sigma_y, prior=prior), steps=nfe,
                  generator=torch.Generator().manual_seed(seed))
    prior_psnr, tv_psnr = mean_psnr(images, post.mean), mean_psnr(images, tv(physics, y, lam=lam, iterations=150))
    return {"definition": f"mean PSNR (data range 1) of one I2SB draw at {nfe} NFE from bridge_start(y), and of TV "
                          f"(weight tuned on separate images), y = A x + sigma_y n with the card's operator",
            "operator": prior.card.metadata["bridge"]["operator"], "sigma": sigma_y, "nfe": nfe, "seed": seed,
            "images": int(images.shape[0]), "tune_images": int(tune_images.shape[0]),
            "prior_psnr_db": round(prior_psnr, 3), "tv_psnr_db": round(tv_psnr, 3), "tv_weight": lam,
            "gain_db": round(prior_psnr - tv_psnr, 3),
            "start_psnr_db": round(mean_psnr(images, bridge_start(physics, y)), 3)}


def evaluate_prior(prior_or_name, n: int = 32, sigma: float = 0.1, seed: int = 0, tune: int = 8) -> dict:
    """``denoise_vs_tv`` of a prior trained by ``invsolve train`` on its held-out data (``heldout_data``);
    for a bridge prior ``bridge_vs_tv`` (its own operator and noise; ``sigma`` is not used).

    The result records ``n``, ``tune`` and ``seed`` so ``evaluate_prior(name, **recorded)`` re-measures
    the same figure.
    """
    prior = load_prior(prior_or_name) if isinstance(prior_or_name, (str, Path)) else prior_or_name
    images, tune_images, info = heldout_data(prior.card, n, tune, seed)
    if prior.card.kind == "bridge":
        return {**bridge_vs_tv(prior, images, tune_images, seed), "data": info, "n_requested": n, "tune_requested": tune}
    groups = info.pop("groups", None)
    result = denoise_vs_tv(prior, images, sigma=sigma, seed=seed, tune_images=tune_images, groups=groups)
    return {**result, "data": info, "n_requested": n, "tune_requested": tune}


def record_evaluation(folder: str | Path, result: dict) -> Path:
    """Write ``result`` into ``folder/card.json`` as ``metadata.evaluation`` (atomically).

    The weights are not touched; when the card records a sha256 the weights file is checked
    against it first, so a figure is never recorded for other weights.
    """
    folder = Path(folder)
    card_path = folder / "card.json"
    card = PriorCard.from_dict(json.loads(card_path.read_text()))
    recorded = card.metadata.get("sha256")
    if recorded is not None and (folder / "weights.safetensors").is_file():
        actual = sha256(folder / "weights.safetensors")
        if actual != recorded:
            raise CheckpointError(f"{folder}/weights.safetensors has sha256 {actual}, the card records {recorded}: "
                                  "refusing to record an evaluation for other weights")
    card.metadata["evaluation"] = result
    tmp = card_path.with_name(card_path.name + ".tmp")
    tmp.write_text(card.to_json() + "\n")
    os.replace(tmp, card_path)
    return card_path


def evaluate_files(prior_or_name, data: str, tune_data: str | None = None, sigma: float = 0.1, seed: int = 0,
                   max_images: int = 64, tune: int = 16) -> dict:
    """``denoise_vs_tv`` on the user's held-out scans, read with the prior's training recipe.

    ``data`` (and ``tune_data``) is a folder, file or glob as for ``invsolve train``; the slices are
    normalised, cropped and resized as the prior's recipe says (``size`` from the prior). Up to
    ``max_images`` evenly spaced slices are evaluated. Without ``tune_data`` the files of ``data``
    are split in half by file (seeded): one half tunes TV's weight (``tune`` slices), the other is
    evaluated; pass ``tune_data`` to evaluate every file of ``data``.
    """
    prior = load_prior(prior_or_name) if isinstance(prior_or_name, (str, Path)) else prior_or_name

    def config_for(path, val_fraction):
        return _recipe_config(prior.card, data=str(path), augment=(), val_fraction=val_fraction,
                              val_images=max_images, seed=seed, size=prior.image_shape[-1])

    if tune_data is None:
        built = datasets.file_data(config_for(data, 0.5))
        if built.validation is None:
            raise DataError("need at least 2 files to split into tuning and evaluation halves; or pass tune_data")
        images = built.validation
        tune_images = built.sample(tune, torch.Generator().manual_seed(seed + 7))
    else:
        images = datasets._validation_subset(torch.cat(_all_slices(config_for(data, 0.0))), max_images)
        tune_images = datasets._validation_subset(torch.cat(_all_slices(config_for(tune_data, 0.0))), tune)
    result = denoise_vs_tv(prior, images, sigma=sigma, seed=seed, tune_images=tune_images)
    return {**result, "data": {"source": str(data),
                               "tv_tuning": str(tune_data) if tune_data else "the other half of the files (split by file)"}}


def _all_slices(config) -> list[torch.Tensor]:
    _, units = datasets.read_units(config)
    return [datasets._foreground_filter(datasets.square_resize(u.slices, config.size), config.min_foreground)
            for u in units]
