"""The ``invsolve`` command: ``demo``, ``reconstruct``, ``train``, ``list``, ``info``, ``evaluate``, ``bench`` and ``fastmri``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

import operators

from . import samplers
from .demo import DemoConfig, format_table
from .demo import run as run_demo
from .argtypes import CommandParser, bounded, key_value
from .errors import ConfigError, InvsolveError
from .fastmri.commands import add_parsers as add_fastmri_parsers  # bench fastmri|report, fastmri synth
from .priors.evaluation import evaluate_files, evaluate_prior, record_evaluation
from .priors.loaders import list_priors, load_prior, read_card, resolve, verify_prior
from .priors.training import TrainConfig
from .priors.training import train as train_prior
from .reconstruct import load_run_config, reconstruct

# what a bad input raises: invsolve's own family, the file errors, and the built-ins that library
# code (and Python itself, for a bad keyword) still raises for an argument it cannot use
USER_ERRORS = (InvsolveError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError, ValueError, TypeError, KeyError, ImportError)


def _demo(args) -> int:
    config = DemoConfig(out=args.out, prior=args.prior, phantoms=args.phantoms, views=args.views,
                        sigma_y=args.sigma_y, samples=args.samples, steps=args.steps, zeta=args.zeta,
                        tv_lambda=args.tv_lambda, seed=args.seed, force=args.force, progress=not args.quiet,
                        threads=args.threads)
    result = run_demo(config)
    print(format_table(result["summary"], config))
    print(f"\nwrote {config.out}/demo.png, NIfTI volumes and metrics.json")
    return 0


def _train(args) -> int:
    config = TrainConfig(name=args.name, objective=args.objective, data=args.data, size=args.size, channels=tuple(args.channels),
                         attention=tuple(args.attention), batch=args.batch, steps=args.steps, lr=args.lr,
                         warmup=args.warmup, ema_decay=args.ema_decay, ema_rampup=args.ema_rampup, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, threads=args.threads,
                         data_format=args.data_format, representation=args.representation,
                         slice_axis=args.slice_axis, window=tuple(args.window) if args.window else None,
                         percentiles=tuple(args.percentiles), min_foreground=args.min_foreground,
                         augment=tuple(args.augment), val_fraction=args.val_fraction, val_every=args.val_every,
                         val_images=args.val_images, val_sigmas=tuple(args.val_sigmas),
                         latent_channels=args.latent_channels, ae_channels=tuple(args.ae_channels),
                         ae_steps=args.ae_steps, ae_beta=args.ae_beta, bridge_operator=args.bridge_operator,
                         bridge_sigma_y=args.bridge_sigma_y)
    run_dir = args.run_dir or f"runs/{args.name}"
    out = train_prior(config, run_dir, args.out or run_dir, progress=not args.quiet, max_seconds=args.max_seconds,
                evaluate=not args.no_evaluate)
    if out is None:
        print(f"stopped after --max-seconds; run the same command again to resume from {run_dir}/checkpoint.pt")
    else:
        print(f"wrote {out}/weights.safetensors, {out}/card.json" + (" and validation.png" if config.val_every else ""))
        evaluation = _read_card(out).metadata.get("evaluation")
        if evaluation:
            print(_format_evaluation(evaluation))
    return 0


def _format_evaluation(result: dict) -> str:
    if "skipped" in result:
        return f"held-out evaluation skipped: {result['skipped']}"
    if "start_psnr_db" in result:  # a bridge prior (evaluation.bridge_vs_tv)
        return (f"held-out {result['operator']} reconstruction at sigma_y {result['sigma']:g} ({result['images']} images): "
                f"I2SB at {result['nfe']} NFE {result['prior_psnr_db']:.2f} dB, TV {result['tv_psnr_db']:.2f} dB "
                f"(weight {result['tv_weight']:g}), gain {result['gain_db']:+.2f} dB; its start (FBP / least squares) "
                f"{result['start_psnr_db']:.2f} dB")
    lines = [f"held-out denoising at sigma {result['sigma']:g} ({result['images']} images): prior "
             f"{result['prior_psnr_db']:.2f} dB, TV {result['tv_psnr_db']:.2f} dB (weight {result['tv_weight']:g}), "
             f"gain {result['gain_db']:+.2f} dB; noisy input {result['noisy_psnr_db']:.2f} dB"]
    for name, part in result.get("sets", {}).items():
        lines.append(f"  {name}: {part['images']} images, prior {part['prior_psnr_db']:.2f} dB, "
                     f"TV {part['tv_psnr_db']:.2f} dB, gain {part['gain_db']:+.2f} dB")
    return "\n".join(lines)


def _evaluate(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.write_card and args.data and not args.tune_data:
        raise ConfigError("--write-card with --data needs --tune-data too (scans disjoint from the evaluated ones), "
                         "so the recorded figure does not depend on a half split")
    prior = load_prior(args.prior)
    if args.data:
        result = evaluate_files(prior, args.data, args.tune_data, sigma=args.sigma, seed=args.seed,
                                max_images=args.images, tune=args.tune)
    else:
        result = evaluate_prior(prior, n=args.images, sigma=args.sigma, seed=args.seed, tune=args.tune)
    print(_format_evaluation(result))
    if args.json:
        print(json.dumps(result, indent=2))
    if args.write_card:
        print(f"recorded in {record_evaluation(resolve(args.prior), result)}")
    return 0


def _list(args) -> int:
    if args.what == "priors":
        for name, path in list_priors().items():
            card = _read_card(path)
            print(f"{name}\t{card.kind}/{card.parameterization}\t{'x'.join(map(str, card.shape))}\t{path}")
    elif args.what == "samplers":
        print("\n".join(samplers.names()))
    else:
        for name in operators.names():
            print(f"{name}\t{operators.describe(name)}")
    return 0


def _read_card(folder):
    return read_card(folder)


def _reconstruct(args) -> int:
    """``invsolve reconstruct``: options from ``--config`` (a JSON/YAML file or an earlier record.json),
    then the flags given on the command line."""
    options = {}
    if args.config:
        options = load_run_config(args.config)
    flags = {"input": args.input, "out": args.out, "simulate": args.simulate, "operator": args.operator,
             "sigma_y": args.sigma_y, "prior": args.prior, "prior_format": args.format, "sampler": args.sampler,
             "preset": args.preset, "samples": args.samples, "batch_size": args.batch_size, "steps": args.steps,
             "seed": args.seed,
             "device": args.device, "threads": args.threads, "window": tuple(args.window) if args.window else None,
             "slice": args.slice}
    options.update({k: v for k, v in flags.items() if v is not None})
    for name in ("resize", "save_samples", "force"):
        if getattr(args, name):
            options[name] = True
    if args.no_fit_check:
        options["check_fit"] = False
    for key, value in args.set or ():
        target, sep, field = key.partition(".")
        if sep and target == "sampler":
            options.setdefault("sampler_params", {})[field] = value
        else:
            options.setdefault("operator_params", {})[key] = value
    if "input" not in options:
        raise ConfigError("give the INPUT file (or --config with an earlier record.json)")
    options.setdefault("out", f"{Path(options['input']).name.split('.')[0]}-recon")
    bar = None

    def progress(info):  # a bar on stderr, opened at the first step
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=f"{options.get('sampler', 'dps')}", total=info["steps"] * info.get("runs", 1), unit="step",
                       file=sys.stderr)
        bar.update(1)

    def log(message):  # the prior-fit verdict; with --quiet only a warning
        if not args.quiet or message.startswith("warning"):
            print(message, file=sys.stderr)

    try:
        _, record = reconstruct(options.pop("input"), progress=None if args.quiet else progress, log=log, **options)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        metrics = record.get("metrics")
        if metrics:
            print("  ".join(f"{k} {v}" for k, v in metrics.items()))
        print(f"wrote {record['config']['out']}/: {', '.join(record['outputs'])} "
              f"({record['nfe']} NFE, {record['seconds']:.1f} s)")
    return 0


def _card_lines(card, source: str, weights: str) -> list[str]:
    meta = card.metadata
    lines = [f"{card.name}: {card.description}",
             f"  source          {source}",
             f"  kind            {card.kind} ({card.parameterization})",
             f"  shape           {tuple(card.shape)}",
             f"  model space     x_model = {card.scale:g} * x_physical + {card.offset:g}; physical range {card.physical_range}",
             f"  sigma range     [{card.sigma_min:g}, {card.sigma_max:g}]",
             f"  architecture    {meta.get('architecture')} ({meta.get('parameters', '?')} parameters)",
             f"  weights         {weights}"]
    ae = meta.get("autoencoder")
    if ae:  # invsolve's own latent prior: the decoder's image space (the SD3 loader has no card entry)
        lines.append(f"  autoencoder     {ae.get('file')}: latents -> images {tuple(ae.get('image_shape', ()))}, "
                     f"x_model = {ae.get('image_scale', 1):g} * x_physical + {ae.get('image_offset', 0):g}; "
                     f"physical range {ae.get('physical_range')}; {ae.get('parameters', '?')} parameters")
    training = meta.get("training", {})
    if training:
        lines.append("  training        " + ", ".join(f"{k} {v}" for k, v in training.items()))
    for key in ("data", "evaluation", "checkpoint"):
        if key in meta:
            lines.append(f"  {key:<15} {json.dumps(meta[key], default=str)}")
    return lines


def _info(args) -> int:
    """A shipped or user prior's card; or, for a checkpoint in another format (or on the Hugging
    Face Hub with --repo-id and --download), the card its loader builds after loading it."""
    local = args.prior is not None and (Path(args.prior, "card.json").is_file() or args.prior in list_priors())
    if local and not (args.format or args.sha256 or args.repo_id):
        folder = resolve(args.prior)
        card, report = verify_prior(folder)  # card fields, sha256, keys and shapes, finiteness: or one error line
        digest = (f"sha256 verified ({report['sha256']})" if report["sha256_verified"]
                  else f"sha256 {report['sha256']} (not recorded in the card: not verified)")
        print("\n".join(_card_lines(card, str(folder), f"{report['bytes'] / 1e6:.1f} MB, {report['tensors']} tensors "
                                                       f"match the card's architecture, all finite; {digest}")))
        return 0
    if args.prior is None and args.repo_id is None:
        raise ConfigError("give a prior name, folder or checkpoint file, or --repo-id with --download")
    options = dict(args.option or ())
    prior = load_prior(args.prior, format=args.format, sha256=args.sha256, download=args.download,
                       repo_id=args.repo_id, filename=args.filename, revision=args.revision, **options)
    parameters = sum(p.numel() for p in prior.parameters()) if hasattr(prior, "parameters") else "?"
    print("\n".join(_card_lines(prior.card, str(args.prior or args.repo_id), f"{parameters} parameters loaded")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="invsolve", description="Posterior sampling for imaging inverse problems. A bad "
                           "input prints one line and exits with status 2 (--debug: the traceback); Ctrl-C exits with 130.")
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(dest="command", required=True)

    d = DemoConfig()
    demo = sub.add_parser("demo", help="sparse-view CT with FBP, TV and DPS on the shipped ct-phantom64 prior")
    demo.add_argument("--out", default=d.out, help="output folder (default: %(default)s)")
    demo.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    demo.add_argument("--prior", default=d.prior, help="prior name or folder (default: %(default)s)")
    demo.add_argument("--phantoms", type=bounded(int, 1), default=d.phantoms, help="held-out phantoms (default: %(default)s)")
    demo.add_argument("--views", type=bounded(int, 1), default=d.views, help="CT views (default: %(default)s)")
    demo.add_argument("--sigma-y", type=bounded(float, 0), default=d.sigma_y, help="noise std in sinogram units (default: %(default)s)")
    demo.add_argument("--samples", type=bounded(int, 1), default=d.samples, help="posterior samples per scan (default: %(default)s)")
    demo.add_argument("--steps", type=bounded(int, 1), default=None, help="DPS steps (default: the ct-sparse8 preset)")
    demo.add_argument("--zeta", type=bounded(float, 0, low_open=True), default=None, help="DPS step size (default: the ct-sparse8 preset)")
    demo.add_argument("--tv-lambda", type=bounded(float, 0), default=d.tv_lambda, help="TV weight (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=d.seed, help="seed of the noise and the sampler (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument("--threads", type=bounded(int, 1), default=None, help="torch CPU threads (default: torch's)")
    demo.set_defaults(func=_demo)

    t = TrainConfig()
    train = sub.add_parser("train", help="train (or resume) a diffusion (EDM) or flow prior; interrupt and rerun to resume")
    train.add_argument("--name", default=t.name)
    train.add_argument("--objective", choices=["edm", "flow", "bridge"], default=t.objective,
                       help="edm: diffusion prior (EDM); flow: rectified-flow prior; bridge: an I2SB bridge from "
                            "the reconstructions of --bridge-operator measurements, for the samplers i2sb and cddb "
                            "(default: %(default)s)")
    train.add_argument("--bridge-operator", default=t.bridge_operator,
                       help="with --objective bridge: the operator (or preset) whose measurements the bridge undoes, "
                            "built with img_size=--size (default: %(default)s)")
    train.add_argument("--bridge-sigma-y", type=bounded(float, 0), default=t.bridge_sigma_y,
                       help="with --objective bridge: noise std of its measurements, physical units (default: %(default)s)")
    train.add_argument("--data", default=t.data,
                       help="'ellipses' (random-ellipse CT phantoms, the default), 'mni152' (MRI brain recipe on "
                            "nilearn's MNI152 templates), 'motion-kernels' (blur kernels of --size, for BlindDPS), "
                            "'darcy-fields' (two-valued Darcy permeability fields, FNO's data), "
                            "or a folder, file or glob of PNG/JPEG/TIFF images, NIfTI volumes, DICOM series or fastMRI "
                            "HDF5 files")
    train.add_argument("--data-format", choices=["auto", "images", "nifti", "dicom", "fastmri"], default=t.data_format,
                       help="format of --data files (default: %(default)s, from the suffixes)")
    train.add_argument("--representation", choices=["magnitude", "complex"], default=t.representation,
                       help="fastMRI: RSS magnitude (1 channel) or complex images (2 channels) (default: %(default)s)")
    train.add_argument("--slice-axis", choices=["axial", "coronal", "sagittal"], default=t.slice_axis,
                       help="NIfTI slicing axis after reorientation to RAS (default: %(default)s)")
    train.add_argument("--window", type=bounded(float), nargs=2, metavar=("LO", "HI"), default=t.window,
                       help="fixed intensity window mapped to [0, 1] (e.g. CT HU -1000 1000); default: per-volume percentiles")
    train.add_argument("--percentiles", type=bounded(float, 0, 100), nargs=2, metavar=("LO", "HI"), default=list(t.percentiles),
                       help="per-volume percentiles mapped to [0, 1] (default: %(default)s)")
    train.add_argument("--min-foreground", type=bounded(float, 0, 1), default=t.min_foreground,
                       help="drop slices with a smaller fraction of pixels above 0.05 (default: %(default)s)")
    train.add_argument("--augment", nargs="*", default=list(t.augment),
                       choices=["flip", "vflip", "rotate", "scale", "gamma", "intensity"],
                       help="augmentations drawn from the run's generator (default: none)")
    train.add_argument("--val-fraction", type=bounded(float, 0, 1, high_open=True), default=t.val_fraction,
                       help="fraction of files (volumes, DICOM series) held out for validation (default: %(default)s)")
    train.add_argument("--val-every", type=bounded(int, 0), default=t.val_every,
                       help="steps between validation PSNR measurements, 0 for none (default: %(default)s)")
    train.add_argument("--val-images", type=bounded(int, 1), default=t.val_images, help="validation slices used (default: %(default)s)")
    train.add_argument("--val-sigmas", type=bounded(float, 0, low_open=True), nargs="+", default=list(t.val_sigmas),
                       help="noise levels of the validation PSNR, physical units (default: %(default)s)")
    train.add_argument("--no-evaluate", action="store_true",
                       help="skip the final held-out evaluation against TV at sigma 0.1 (recorded in the card)")
    train.add_argument("--size", type=bounded(int, 1), default=t.size)
    train.add_argument("--channels", type=bounded(int, 1), nargs="+", default=list(t.channels))
    train.add_argument("--latent-channels", type=bounded(int, 0), default=t.latent_channels,
                       help="> 0: a latent prior: train an autoencoder to this many latent channels first, then the "
                            "prior on its latents (default: %(default)s, a pixel prior)")
    train.add_argument("--ae-channels", type=bounded(int, 1), nargs="+", default=list(t.ae_channels),
                       help="autoencoder widths per level; latents are 2^(levels-1) times smaller (default: %(default)s)")
    train.add_argument("--ae-steps", type=bounded(int, 1), default=t.ae_steps, help="autoencoder steps (default: %(default)s)")
    train.add_argument("--ae-beta", type=bounded(float, 0), default=t.ae_beta,
                       help="weight of the latent penalty mean(z^2) (default: %(default)s)")
    train.add_argument("--attention", type=bounded(int, 1), nargs="*", default=list(t.attention))
    train.add_argument("--batch", type=bounded(int, 1), default=t.batch)
    train.add_argument("--steps", type=bounded(int, 1), default=t.steps)
    train.add_argument("--lr", type=bounded(float, 0, low_open=True), default=t.lr)
    train.add_argument("--warmup", type=bounded(int, 0), default=t.warmup, help="linear learning-rate warm-up steps (default: %(default)s)")
    train.add_argument("--ema-decay", type=bounded(float, 0, 1, high_open=True), default=t.ema_decay)
    train.add_argument("--ema-rampup", type=bounded(float, 0), default=t.ema_rampup,
                       help="EDM's EMA ramp-up: the EMA half-life is at most this fraction of the steps done "
                            "(0: plain EMA; default: %(default)s)")
    train.add_argument("--seed", type=int, default=t.seed)
    train.add_argument("--checkpoint-every", type=bounded(int, 1), default=t.checkpoint_every)
    train.add_argument("--threads", type=bounded(int, 1), default=None, help="torch CPU threads")
    train.add_argument("--run-dir", default=None, help="checkpoint folder (default: runs/NAME)")
    train.add_argument("--out", default=None, help="where weights and card go (default: the run folder)")
    train.add_argument("--max-seconds", type=bounded(float, 0, low_open=True), default=None, help="stop (resumably) after this long")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=_train)

    lst = sub.add_parser("list", help="list shipped priors, samplers or operators")
    lst.add_argument("what", choices=["priors", "samplers", "operators"])
    lst.set_defaults(func=_list)

    info = sub.add_parser("info", help="show a prior's card: a shipped name or folder, or any checkpoint the loaders "
                          "read (loaded to build its card)")
    info.add_argument("prior", nargs="?", default=None,
                      help="prior name, invsolve folder, checkpoint file or diffusers folder")
    info.add_argument("--format", default=None, help="checkpoint format (default: detected from the file)")
    info.add_argument("--sha256", default=None, help="expected sha256 of the checkpoint file")
    info.add_argument("--repo-id", default=None, help="Hugging Face Hub repository to fetch (with --download)")
    info.add_argument("--filename", default=None, help="file in --repo-id (default: the whole repository)")
    info.add_argument("--revision", default=None, help="revision of --repo-id")
    info.add_argument("--option", action="append", type=key_value, metavar="KEY=VALUE",
                      help="a loader option, VALUE parsed as JSON when it parses (e.g. config='{\"image_size\": 64}', "
                           "ema=false); repeatable")
    info.add_argument("--download", action="store_true",
                      help="allow fetching --repo-id from the Hugging Face Hub; nothing is downloaded without it")
    info.set_defaults(func=_info)

    ev = sub.add_parser("evaluate", help="held-out one-step denoising PSNR of a prior against a tuned TV denoiser")
    ev.add_argument("prior", help="prior name or folder")
    ev.add_argument("--data", default=None,
                    help="held-out scans (folder, file or glob, read with the prior's recipe); default: the "
                         "prior's built-in held-out data (ellipses, mni152, motion-kernels, darcy-fields, or its validation files)")
    ev.add_argument("--tune-data", default=None,
                    help="scans that tune TV's weight (default with --data: half of --data's files, split by file)")
    ev.add_argument("--sigma", type=bounded(float, 0, low_open=True), default=0.1, help="noise std in physical units (default: %(default)s)")
    ev.add_argument("--images", type=bounded(int, 1), default=32, help="evaluation images at most (default: %(default)s)")
    ev.add_argument("--tune", type=bounded(int, 1), default=8, help="TV tuning images (default: %(default)s)")
    ev.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    ev.add_argument("--threads", type=bounded(int, 1), default=None, help="torch CPU threads")
    ev.add_argument("--write-card", action="store_true",
                    help="record the result in the prior's card.json (metadata.evaluation); weights untouched")
    ev.add_argument("--json", action="store_true", help="also print the full result as JSON")
    ev.set_defaults(func=_evaluate)
    r = sub.add_parser("reconstruct", help="posterior sampling on your own file: a measurement (--operator) or a clean "
                       "image or volume to simulate from (--simulate); writes mean, std, a figure and record.json")
    r.add_argument("input", nargs="?", default=None, help="PNG, NPY, NIfTI, DICOM file or series folder, or a fastMRI "
                   "HDF5 file (measured k-space: no --simulate/--operator)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--simulate", metavar="OPERATOR", help="INPUT is a clean image: measure it with this operator "
                      "or preset (invsolve list operators), reconstruct and score against it")
    mode.add_argument("--operator", metavar="NAME", help="INPUT is the measurement of this operator or preset")
    r.add_argument("--set", type=key_value, action="append", metavar="KEY=VALUE",
                   help="an operator parameter (e.g. views=8; fastMRI input: mask_type=, acceleration=, center_fraction=), "
                        "or sampler.KEY=VALUE for a sampler hyperparameter")
    r.add_argument("--sigma-y", type=bounded(float, 0), default=None,
                   help="noise std of the measurement in its units (required with --operator; --simulate default 0.05; "
                        "fastMRI default 0.01 of the scaled k-space, as the fastMRI benchmark)")
    r.add_argument("--prior", default=None, help="shipped prior name, prior folder or checkpoint file (default: ct-phantom64; "
                   "mri-brain64 for fastMRI input)")
    r.add_argument("--slice", type=int, default=None, help="the slice of a fastMRI file (default: the middle one)")
    r.add_argument("--format", default=None, help="checkpoint format of --prior (default: detected)")
    r.add_argument("--sampler", default=None, help="sampler (invsolve list samplers; default: dps)")
    r.add_argument("--preset", default=None, help="the sampler's preset (e.g. ct-sparse8)")
    r.add_argument("--samples", type=bounded(int, 1), default=None, help="posterior draws (default: 4)")
    r.add_argument("--batch-size", type=bounded(int, 1), default=None,
                   help="run at most this many draws at a time (same results; default: all at once)")
    r.add_argument("--steps", type=bounded(int, 1), default=None, help="sampler steps (default: the sampler's or preset's)")
    r.add_argument("--seed", type=int, default=None, help="seed of the noise and the draws (default: 0)")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    r.add_argument("--threads", type=bounded(int, 1), default=None, help="torch CPU threads (default: torch's)")
    r.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="intensity window mapped to [0, 1] (e.g. CT HU -1000 1000; default: 0.5/99.5 percentiles)")
    r.add_argument("--resize", action="store_true", help="resample the input to the prior's size and the results back")
    r.add_argument("--save-samples", action="store_true", help="also write every posterior draw")
    r.add_argument("--no-fit-check", action="store_true", help="skip the check of the data against the prior")
    r.add_argument("--config", default=None, help="a JSON/YAML run file or an earlier record.json: reproduces that run")
    r.add_argument("--out", default=None, help="output folder (default: INPUT's name + '-recon')")
    r.add_argument("--force", action="store_true", help="replace --out if invsolve wrote it (never other folders)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    r.set_defaults(func=_reconstruct)
    add_fastmri_parsers(sub)
    return parser


def error_message(err: BaseException) -> str:
    """One line for ``err``: KeyError's quotes dropped, lines joined, the type named when the text alone is bare."""
    text = str(err.args[0]) if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    if " " not in text and not isinstance(err, InvsolveError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


def main(argv: list[str] | None = None) -> int:
    """Run ``invsolve``; returns the exit status: 0, 2 for a bad input (one line on stderr), 130 for Ctrl-C."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error, already printed as one line (2)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("invsolve: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"invsolve: error: {error_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
