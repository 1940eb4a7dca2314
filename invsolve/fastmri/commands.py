"""The ``invsolve bench fastmri``, ``invsolve bench report`` and ``invsolve fastmri synth`` commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .db import check_database
from .executors import make_executor
from .report import write_report
from .runner import BenchConfig, check_options, default_data, default_prior, run
from .synth import synthesize
from ..argtypes import bounded


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give a comma-separated list")
        try:
            return tuple(kind(t) for t in items)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    return parse


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() else value


def _slices(text: str):
    if text in ("all", "middle") or text.startswith("middle+"):
        return text
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slices takes all, middle, middle+K or a list of indices, got {text!r}")


def _option(text: str):
    """``METHOD.KEY=VALUE`` with VALUE parsed as JSON when it parses (numbers, true/false, null, lists)."""
    head, sep, value = text.partition("=")
    method, dot, key = head.partition(".")
    if not sep or not dot or not method or not key:
        raise argparse.ArgumentTypeError(f"--set takes METHOD.KEY=VALUE (e.g. dps.zeta=0.5), got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return (method, key, parsed)


def _bench_fastmri(args) -> int:
    config = BenchConfig(data=args.data or "", methods=args.methods, accelerations=args.accelerations, mask=args.mask,
                         prior=args.prior, slices=args.slices, samples=args.samples, seed=args.seed,
                         nfe=args.nfe or None, sigma_y=args.sigma_y, options=tuple(args.set or ()),
                         max_volumes=args.max_volumes, device=args.device)
    check_options(config)  # methods, --set names and values: before any data is written or read
    check_database(args.db)  # a --db that is not SQLite: one line before any work
    executor = make_executor(args.executor, workers=args.workers, threads=args.threads, address=args.address,
                             gpus_per_task=args.gpus_per_task)
    prior = args.prior or default_prior(args.methods)
    config = dataclasses.replace(config, prior=prior, data=args.data or default_data(progress=not args.quiet))
    try:
        summary = run(config, args.db, executor=executor, limit=args.limit, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted; completed tasks are in {args.db}: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"{summary['ran']} tasks run, {summary['done_before']} already in {args.db}, "
          f"{summary['remaining']} remaining of {summary['total']}")
    if summary.get("claimed_elsewhere"):
        print(f"{summary['claimed_elsewhere']} tasks skipped: another run on {args.db} has claimed them")
    for fail in summary.get("failed", ()):
        print(f"warning: {fail['method']} {fail['acceleration']:g}x on {fail['volume']} failed: {fail['reason']}",
              file=sys.stderr)
    if summary["remaining"]:
        print("run the same command again to continue")
    else:
        print(f"report: invsolve bench report {args.db} --out DIR")
    return 0


def _bench_report(args) -> int:
    out = write_report(args.db, args.out)
    print(f"wrote {out['markdown']}, {out['csv']} and {len(out['figures'])} figures in {args.out}/figures")
    return 0


def _fastmri_synth(args) -> int:
    result = synthesize(args.out, n_train=args.train, n_val=args.val, coils=args.coils,
                        **({"size": args.size} if args.size else {}), seed=args.seed, force=args.force)
    print(f"wrote synthetic fastMRI-layout files under {args.out}" + (f": {result}" if result else ""))
    return 0


def add_parsers(sub) -> None:
    """Add ``bench`` (``fastmri``, ``report``) and ``fastmri`` (``synth``) to the ``invsolve`` command."""

    d = BenchConfig(data="")
    bench = sub.add_parser("bench", help="benchmarks: run the fastMRI benchmark, write its report")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)

    f = bench_sub.add_parser("fastmri", help="reconstruct fastMRI volumes with baselines and samplers; results in "
                             "SQLite, resumable (rerun the same command after an interruption)")
    f.add_argument("--data", default=None, help="folder of fastMRI HDF5 files with targets (train/val layout); "
                   "default: a synthetic set written once into the cache folder ($INVSOLVE_CACHE or ~/.cache/invsolve)")
    f.add_argument("--methods", type=_csv(str), default=",".join(d.methods),
                   help="comma-separated baselines and samplers (default: %(default)s)")
    f.add_argument("--accelerations", type=_csv(_number), default=",".join(f"{a:g}" for a in d.accelerations),
                   help="comma-separated accelerations; 4 and 8 use fastMRI's centre fractions 0.08 / 0.04 "
                        "(default: %(default)s)")
    f.add_argument("--mask", default=d.mask, choices=["equispaced_fraction", "random", "equispaced"],
                   help="fastMRI mask function, seeded per file (default: %(default)s)")
    f.add_argument("--prior", default=None, help="prior name or folder for the samplers (default: mri-brain64)")
    f.add_argument("--slices", type=_slices, default=d.slices,
                   help="all, middle, middle+K (2K+1 middle slices) or indices 3,4,5 (default: %(default)s)")
    f.add_argument("--samples", type=bounded(int, 1), default=d.samples, help="posterior draws per slice; their mean is scored "
                   "(default: %(default)s)")
    f.add_argument("--seed", type=int, default=d.seed, help="seed of the samplers (default: %(default)s)")
    f.add_argument("--nfe", type=bounded(int, 0), default=d.nfe, help="denoiser evaluations per draw (default: %(default)s); "
                   "0 keeps each sampler's own steps")
    f.add_argument("--sigma-y", type=bounded(float, 0, low_open=True), default=d.sigma_y,
                   help="k-space noise std in scaled units (zero-filled image p99.5 = 1) (default: %(default)s)")
    f.add_argument("--set", action="append", type=_option, metavar="METHOD.KEY=VALUE",
                   help="a sampler hyperparameter (dps.zeta=0.5; dps.preset=NAME) or a baseline option; repeatable")
    f.add_argument("--max-volumes", type=bounded(int, 1), default=None, help="only the first N files (sorted by name)")
    f.add_argument("--db", default="results.sqlite", help="SQLite results database (default: %(default)s)")
    f.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local processes, or Ray tasks (pip install 'invsolve[distributed]') (default: %(default)s)")
    f.add_argument("--workers", type=bounded(int, 1), default=1, help="local worker processes (default: %(default)s)")
    f.add_argument("--threads", type=bounded(int, 1), default=None, help="torch threads per task (default: cores / workers)")
    f.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto, ray://HEAD:10001); "
                   "default: start a local Ray")
    f.add_argument("--gpus-per-task", type=bounded(float, 0), default=None,
                   help="GPUs per Ray task (default: 1 when the cluster has GPUs, else 0)")
    f.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")
    f.add_argument("--limit", type=bounded(int, 0), default=None, help="stop after N new tasks (rerun to continue)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_bench_fastmri)

    r = bench_sub.add_parser("report", help="markdown + CSV tables and per-volume figures from a results database")
    r.add_argument("db", help="results database written by `invsolve bench fastmri`")
    r.add_argument("--out", default="report", help="output folder (default: %(default)s)")
    r.set_defaults(func=_bench_report)

    fm = sub.add_parser("fastmri", help="fastMRI data tools")
    fm_sub = fm.add_subparsers(dest="fastmri_command", required=True)
    s = fm_sub.add_parser("synth", help="write synthetic fastMRI-layout multicoil HDF5 files (train and held-out val)")
    s.add_argument("out", help="output folder")
    s.add_argument("--train", type=bounded(int, 0), default=8, help="training volumes (default: %(default)s)")
    s.add_argument("--val", type=bounded(int, 0), default=4, help="held-out volumes (default: %(default)s)")
    s.add_argument("--coils", type=bounded(int, 1), default=8, help="simulated birdcage coils (default: %(default)s)")
    s.add_argument("--size", type=bounded(int, 8), default=None, help="image size (default: synthesize's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="replace existing files")
    s.set_defaults(func=_fastmri_synth)
