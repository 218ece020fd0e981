"""The ``gateprobe`` command line: ``main(argv=None) -> int``.

Every subcommand lives in a small ``_cmd_*`` function; errors that users can fix are turned into
one line on stderr and exit code 2 (see :data:`USER_ERRORS`).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from .checkpoints import CheckpointError
from .data import DataError

USER_ERRORS = (CheckpointError, DataError, FileExistsError, FileNotFoundError, KeyError, ValueError, TypeError)


def _cmd_train(args) -> int:
    from .train import train

    command = "gateprobe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    card = train(args.model, args.out, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                 lr=args.lr, size=args.size, width=args.width, seed=args.seed, resume=args.resume,
                 checkpoint_every=args.checkpoint_every, threads=args.threads, eval_items=args.eval_items,
                 command=command)
    print(f"checkpoint written to {args.out} ({card['training']['step']} steps)")
    return 0


def _cmd_evaluate(args) -> int:
    from .checkpoints import load_model
    from .data import heldout_items
    from .evaluate import format_table, metrics_table

    model = load_model(args.checkpoint)
    items = heldout_items(args.n, size=model.config["image_size"])
    print(f"{args.checkpoint}: held-out Scenes seed 1, {args.n} images")
    print(format_table(metrics_table(model, items, progress=True)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateprobe", description=(
        "Open up image-inpainting networks: record gate maps and partial-conv mask evolution, "
        "analyse them, and explore them in reports and a dashboard."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a reference model into a checkpoint folder")
    p.add_argument("model", help="registry name, e.g. gated-scenes or pconv-scenes")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--steps", type=int, default=20000, help="planned steps (sets the lr schedule)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--size", type=int, default=64, help="Scenes image size")
    p.add_argument("--width", type=int, default=None, help="model width (default: the registry's)")
    p.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--eval-items", type=int, default=256, help="held-out images evaluated at the end (0: skip)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="print a checkpoint's held-out metrics beside the biharmonic baseline")
    p.add_argument("checkpoint", help="checkpoint folder (model.safetensors + card.json)")
    p.add_argument("--n", type=int, default=256, help="held-out images")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"gateprobe {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
