"""The ``invsolve`` command: ``demo``, ``train`` and ``list``."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from .demo import DemoConfig, format_table, run

    config = DemoConfig(out=args.out, prior=args.prior, phantoms=args.phantoms, views=args.views,
                        sigma_y=args.sigma_y, samples=args.samples, steps=args.steps, zeta=args.zeta,
                        tv_lambda=args.tv_lambda, seed=args.seed, force=args.force, progress=not args.quiet)
    result = run(config)
    print(format_table(result["summary"], config))
    print(f"\nwrote {config.out}/demo.png, NIfTI volumes and metrics.json")
    return 0


def _train(args) -> int:
    from .priors.training import TrainConfig, train

    config = TrainConfig(name=args.name, objective=args.objective, data=args.data, size=args.size, channels=tuple(args.channels),
                         attention=tuple(args.attention), batch=args.batch, steps=args.steps, lr=args.lr,
                         ema_decay=args.ema_decay, seed=args.seed, checkpoint_every=args.checkpoint_every,
                         threads=args.threads)
    run_dir = args.run_dir or f"runs/{args.name}"
    out = train(config, run_dir, args.out or run_dir, progress=not args.quiet, max_seconds=args.max_seconds)
    if out is None:
        print(f"stopped after --max-seconds; run the same command again to resume from {run_dir}/checkpoint.pt")
    else:
        print(f"wrote {out}/weights.safetensors and {out}/card.json")
    return 0


def _list(args) -> int:
    if args.what == "priors":
        from .priors.loaders import list_priors

        for name, path in list_priors().items():
            card = _read_card(path)
            print(f"{name}\t{card.kind}/{card.parameterization}\t{'x'.join(map(str, card.shape))}\t{path}")
    elif args.what == "samplers":
        from . import samplers

        print("\n".join(samplers.names()))
    else:
        import operators

        for name in operators.names():
            print(f"{name}\t{operators.describe(name)}")
    return 0


def _read_card(folder):
    import json

    from .priors.base import PriorCard

    return PriorCard.from_dict(json.loads((folder / "card.json").read_text()))


def _info(args) -> int:
    import json
    from pathlib import Path

    from .priors.loaders import resolve

    folder = resolve(args.prior)
    card = _read_card(folder)
    meta = card.metadata
    training = meta.get("training", {})
    lines = [f"{card.name}: {card.description}",
             f"  folder          {folder}",
             f"  kind            {card.kind} ({card.parameterization})",
             f"  shape           {tuple(card.shape)}",
             f"  model space     x_model = {card.scale:g} * x_physical + {card.offset:g}; physical range {card.physical_range}",
             f"  sigma range     [{card.sigma_min:g}, {card.sigma_max:g}]",
             f"  architecture    {meta.get('architecture')} ({meta.get('parameters', '?')} parameters)",
             f"  weights         {Path(folder, 'weights.safetensors').stat().st_size / 1e6:.1f} MB, sha256 {meta.get('sha256', 'not recorded')}"]
    if training:
        lines.append("  training        " + ", ".join(f"{k} {v}" for k, v in training.items()))
    for key in ("data", "evaluation"):
        if key in meta:
            lines.append(f"  {key:<15} {json.dumps(meta[key])}")
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig
    from .priors.training import TrainConfig

    parser = argparse.ArgumentParser(prog="invsolve", description="Posterior sampling for imaging inverse problems.")
    sub = parser.add_subparsers(dest="command", required=True)

    d = DemoConfig()
    demo = sub.add_parser("demo", help="sparse-view CT with FBP, TV and DPS on the shipped ct-phantom64 prior")
    demo.add_argument("--out", default=d.out, help="output folder (default: %(default)s)")
    demo.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    demo.add_argument("--prior", default=d.prior, help="prior name or folder (default: %(default)s)")
    demo.add_argument("--phantoms", type=int, default=d.phantoms, help="held-out phantoms (default: %(default)s)")
    demo.add_argument("--views", type=int, default=d.views, help="CT views (default: %(default)s)")
    demo.add_argument("--sigma-y", type=float, default=d.sigma_y, help="noise std in sinogram units (default: %(default)s)")
    demo.add_argument("--samples", type=int, default=d.samples, help="posterior samples per scan (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=None, help="DPS steps (default: the ct-sparse8 preset)")
    demo.add_argument("--zeta", type=float, default=None, help="DPS step size (default: the ct-sparse8 preset)")
    demo.add_argument("--tv-lambda", type=float, default=d.tv_lambda, help="TV weight (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=d.seed, help="seed of the noise and the sampler (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)

    t = TrainConfig()
    train = sub.add_parser("train", help="train (or resume) a diffusion (EDM) or flow prior; interrupt and rerun to resume")
    train.add_argument("--name", default=t.name)
    train.add_argument("--objective", choices=["edm", "flow"], default=t.objective,
                       help="edm: diffusion prior (EDM); flow: rectified-flow prior (default: %(default)s)")
    train.add_argument("--data", default=t.data, help="training data (default: %(default)s: random-ellipse CT phantoms)")
    train.add_argument("--size", type=int, default=t.size)
    train.add_argument("--channels", type=int, nargs="+", default=list(t.channels))
    train.add_argument("--attention", type=int, nargs="*", default=list(t.attention))
    train.add_argument("--batch", type=int, default=t.batch)
    train.add_argument("--steps", type=int, default=t.steps)
    train.add_argument("--lr", type=float, default=t.lr)
    train.add_argument("--ema-decay", type=float, default=t.ema_decay)
    train.add_argument("--seed", type=int, default=t.seed)
    train.add_argument("--checkpoint-every", type=int, default=t.checkpoint_every)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--run-dir", default=None, help="checkpoint folder (default: runs/NAME)")
    train.add_argument("--out", default=None, help="where weights and card go (default: the run folder)")
    train.add_argument("--max-seconds", type=float, default=None, help="stop (resumably) after this long")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=_train)

    lst = sub.add_parser("list", help="list shipped priors, samplers or operators")
    lst.add_argument("what", choices=["priors", "samplers", "operators"])
    lst.set_defaults(func=_list)

    info = sub.add_parser("info", help="show a prior's card (shipped name or folder)")
    info.add_argument("prior")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"invsolve {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
