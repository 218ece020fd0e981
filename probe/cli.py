"""The ``gateprobe`` command line: ``main(argv=None) -> int``.

Every subcommand lives in a small ``_cmd_*`` function. Exit codes: 0 done; 2 a mistake the user
can fix (a :class:`~probe.errors.GateprobeError` or an ``OSError`` such as a full disk, printed as
one line); 1 the user's own model raised (one line naming the module; ``--debug`` shows its
traceback); 130 interrupted. Any other exception is a bug in gateprobe and shows its traceback.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import traceback

import numpy as np

from .errors import GateprobeError, SettingsError, UserModelError

# OSError covers a full disk, a read-only --out or a missing file (the message names the file)
USER_ERRORS = (GateprobeError, OSError)


def _cmd_train(args) -> int:
    from .training.train import train

    command = _command_line()
    card = train(args.model, args.out, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                 lr=args.lr, size=args.size, width=args.width, seed=args.seed, resume=args.resume,
                 checkpoint_every=args.checkpoint_every, threads=args.threads, eval_items=args.eval_items,
                 command=command, device=args.device)
    print(f"checkpoint written to {args.out} ({card['training']['step']} steps)")
    return 0


def _cmd_evaluate(args) -> int:
    from .data import HELDOUT_SEED, heldout_items
    from .models import load_model
    from .training.evaluate import format_table, metrics_table

    _at_least("--n", args.n, 1)
    from .devices import resolve_device

    model = load_model(args.checkpoint).to(resolve_device(args.device))
    items = heldout_items(args.n, size=model.config["image_size"])
    print(f"{args.checkpoint}: held-out Scenes seed {HELDOUT_SEED}, {args.n} images")
    print(format_table(metrics_table(model, items, progress=True)))
    return 0


_ARGV: list[str] = []


def _command_line() -> str:
    """The command being run, as typed (``main``'s argv, not the interpreter's)."""
    return "gateprobe " + " ".join(shlex.quote(a) for a in _ARGV)


def _record_settings(args):
    """The :class:`~probe.rundir.settings.RecordSettings` of a ``record`` command line."""
    from .rundir.settings import RecordSettings

    return RecordSettings(batch_size=args.batch_size, samples=args.samples, quantile=args.quantile,
                          sketch={"auto": None, "on": True, "off": False}[args.sketch], layers=args.layers,
                          group_by=args.groups, gate_activations=tuple(args.gate_activation), dtype=args.dtype,
                          iou_pass=args.iou_pass)


def _record_data(args):
    """``--data`` as given, or parsed here when an image-data option needs passing to the reader."""
    options = {"mask_threshold": args.mask_threshold, "split": args.split, "size": args.size, "holes": args.holes,
               "holes_invert": args.holes_invert, "sketches": args.sketches}
    if not any(options.values()):
        return args.data
    from .data import parse_data

    return parse_data(args.data, n=args.n, seed=args.seed, **options)


def _model(args):
    """``--model`` of ``record`` and ``layers``; a checkpoint folder with ``--random-init`` gets a
    line saying that its trained weights are not the ones recorded."""
    from .models.sources import resolve_model

    model = resolve_model(args.model, random_init=args.random_init, trust_pickle=args.trust_pickle,
                          init_seed=args.init_seed)
    info = getattr(model, "source_info", {})
    if "architecture_from" in info:
        print(f"note: --random-init: {info['name']} {info['config']} with random weights (seed {info['seed']}) of "
              f"the architecture in {info['architecture_from']}; its trained weights are not used", file=sys.stderr)
    return model


def _cmd_record(args) -> int:
    from .recording.loop import check_seed, record

    check_seed(args.seed)
    settings = _record_settings(args)
    if args.ray is not None:
        return _record_ray(args, settings)
    if args.shards is not None:
        raise SettingsError("--shards splits a --ray run into tasks; without --ray, record one slice with --shard I/N")
    data = _record_data(args)
    model = _model(args)
    run = record(model, data, args.out, n=args.n, settings=settings, seed=args.seed, shard=args.shard,
                 overwrite=args.overwrite, resume=args.resume, checkpoint_every=args.checkpoint_every, device=args.device,
                 checkpoint_seconds=args.checkpoint_seconds, command=_command_line(), max_hours=args.max_hours)
    print(f"wrote {run.path} ({run.manifest['n_images']} images, {len(run.layers)} layers)")
    if args.with_baseline:
        from .recording.loop import record_baseline

        twin = record_baseline(model, data, args.out, n=args.n, seed=args.baseline_seed, settings=settings,
                               overwrite=args.overwrite, command=_command_line())
        print(f"wrote {twin.path} (random-init baseline, seed {args.baseline_seed}; linked from {run.path.name})")
    return 0


def _record_ray(args, settings) -> int:
    from .recording.distributed import import_ray, record_ray

    import_ray()  # a one-line error before anything else when Ray is missing
    if args.shard is not None:
        raise SettingsError("--ray splits the images into shards itself; use --shards N instead of --shard I/N")
    if getattr(args, "resume", False):
        raise SettingsError("--resume does not apply to --ray runs (a failed task is retried by Ray); record again")
    run = record_ray(args.model, _record_data(args), args.out, n=args.n, shards=args.shards,
                     address=None if args.ray == "local" else args.ray, settings=settings, seed=args.seed,
                     overwrite=args.overwrite, random_init=args.random_init, command=_command_line(),
                     trust_pickle=args.trust_pickle, device=args.device)
    print(f"wrote {run.path} ({run.manifest['n_images']} images from {len(run.manifest['shards'])} Ray shards, "
          f"{len(run.layers)} layers)")
    return 0


def _cmd_merge(args) -> int:
    from .rundir.merge import merge_runs

    run = merge_runs(args.runs, args.out, overwrite=args.overwrite, allow_partial=args.allow_partial)
    print(f"wrote {run.path} ({run.manifest['n_images']} images from {len(args.runs)} runs)")
    if "partial" in run.manifest:
        print(f"warning: {run.path} is a partial run: {run.manifest['partial']['description']} missing",
              file=sys.stderr)
    return 0


def _cmd_analyze(args) -> int:
    from .analysis import analyze

    run = analyze(args.run, n=args.n, batch_size=args.batch_size, per_role=args.per_role,
                  sketch=not args.no_sketch, ablate=not args.no_ablation, attribute=not args.no_attribution,
                  attribution_images=args.attribution_images, model_spec=args.model,
                  allow_import_models=args.allow_import_models, trust_pickle=args.trust_pickle, null=args.null,
                  device=args.device)
    print(f"{run.path}: wrote {', '.join(run.manifest.get('analyses', {})) or 'nothing (no gated layers)'}")
    return 0


def _cmd_claims(args) -> int:
    from .analysis import claims
    from .rundir.run import load_run

    table = claims(load_run(args.run_a), load_run(args.run_b),
                   baseline=load_run(args.baseline) if args.baseline else None)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(claims_text(table))
    return 0


def claims_text(table) -> str:
    """The claims table as text: per row the verdict, the trained value with its interval, the
    control's value and the difference with its interval in columns, then the evidence."""
    from .analysis.claims import display_table

    shown = display_table(table)
    widths = {"claim": 6, "verdict": 15, "value [95%]": 28, "control": 11, "difference [95%]": 30}
    lines = ["".join(f"{c:<{w}}" for c, w in widths.items()) + "measurement"]
    for row in shown.to_dict("records"):
        lines.append("".join(f"{row[c]:<{w}}" for c, w in widths.items()) + row["measurement"])
        lines.append(f"      evidence: {row['evidence']}")
    return "\n".join(lines)


def _cmd_report(args) -> int:
    from .report import build_report

    html, md = build_report(args.runs, args.out, title=args.title, baseline=args.baseline)
    print(f"wrote {html} and {md}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    from .serve import check_address

    if not args.no_serve:  # before minutes of recording, not after
        check_address(args.host, args.port)
    run_demo(args.out, n=args.n, analysis_images=args.analysis_images, serve=not args.no_serve,
             host=args.host, port=args.port)
    return 0


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(i), int(n)


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise SettingsError(f"{name} must be an integer >= {low}, not {value}")


def _cmd_serve(args) -> int:
    from .serve import serve_runs

    serve_runs(args.runs_dir, args.host, args.port, args.allow_import_models, args.device)
    return 0


def _cmd_layers(args) -> int:
    import torch

    from .adapters import survey
    from .recording.recorder import Recorder
    from .rundir.tables import layer_table

    if not 1 <= args.size <= 8192:
        raise SettingsError(f"--size must be an integer from 1 to 8192 (the input side in pixels), not {args.size}")
    model = _model(args)
    size = args.size
    image = torch.rand(1, 3, size, size)
    hole = torch.zeros(1, 1, size, size)
    hole[..., size // 4: size // 2, size // 4: size // 2] = 1
    found = survey(model, args.layers, gate_activations=tuple(args.gate_activation), probe=(image, hole))
    sites = found.sites
    with Recorder(model, sites, n_labels=1) as recorder:
        recorder.forward(image, hole, None, torch.zeros(1, size, size, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    table = layer_table(recorder.stats, recorder.order, (size, size))
    patterns = {s.name: s.pattern for s in sites}
    table["pattern"] = [patterns.get(name, "") for name in table.layer]
    columns = ["layer", "kind", "found_by", "activation", "pattern", "channels", "height", "width", "kernel", "stride",
               "dilation", "receptive_field"]
    print(f"{len(table)} layers of {args.model} at {size}x{size}:")
    print(table[columns].to_string(index=False))
    for candidate in found.not_taken:
        print(f"warning: not taken: {candidate.where or 'model'}: {candidate.reason}", file=sys.stderr)
    if found.probe_error:
        print(f"warning: the discovery probe pass failed ({found.probe_error}); only known layer classes are listed",
              file=sys.stderr)
    return 0


def _device_options(p: argparse.ArgumentParser, default: str = "auto", dtype: bool = False) -> None:
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help=f"auto (CUDA when available), cpu, cuda, cuda:N or mps (default {default})")
    if dtype:
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="precision of the model's forward pass (autocast); statistics accumulate in "
                            "float32/float64/int64 whatever it is (default float32)")


def _random_init_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--random-init", action="store_true",
                   help="random weights: of a registry name, or of the architecture and config of a checkpoint "
                        "folder's card (its trained weights are not used)")
    p.add_argument("--init-seed", type=int, default=0, metavar="S",
                   help="with --random-init: the seed the weights are drawn with (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateprobe", description=(
        "Open up image-inpainting networks: record gate maps and partial-conv mask evolution, "
        "analyse them, and explore them in reports and a dashboard."))
    parser.add_argument("--debug", action="store_true",
                        help="on an error raised by your model, show its full traceback")
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
    _device_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="print a checkpoint's held-out metrics beside the biharmonic baseline")
    p.add_argument("checkpoint", help="checkpoint folder (model.safetensors + card.json)")
    p.add_argument("--n", type=int, default=256, help="held-out images")
    _device_options(p)
    p.set_defaults(func=_cmd_evaluate)

    model_help = ("checkpoint folder, registry name (with --random-init), a loader prefix such as "
                  "deepfillv2:PATH.pth, or package.module:function returning an nn.Module")
    p = sub.add_parser("record", help="record gate maps and mask evolution into a run directory",
                       description="Run a model over data with forward hooks on every gated and partial "
                                   "layer and write the run directory (tables + samples).")
    p.add_argument("--model", required=True, help=model_help)
    _random_init_options(p)
    p.add_argument("--data", default="scenes:64",
                   help="scenes, scenes:SIZE, folder:PATH, voc:ROOT, ade20k:ROOT, cityscapes:ROOT or cocostuff:ROOT "
                        "(default scenes:64)")
    p.add_argument("--split", default=None, help="split of a standard dataset (default: its validation split)")
    p.add_argument("--size", type=int, default=None, metavar="S",
                   help="image data: resize the shorter side to S, then centre-crop to S x S")
    p.add_argument("--holes", default=None, metavar="SOURCE",
                   help="image data: free (default), box:FRACTION or folder:PATH of PNG hole masks (white = hole; "
                        "image i gets mask i mod M)")
    p.add_argument("--holes-invert", action="store_true", help="with --holes folder:PATH: black = hole")
    p.add_argument("--sketches", default=None, metavar="folder:PATH",
                   help="image data: user sketches, PNGs named like the images (default: label boundaries)")
    p.add_argument("--n", type=int, default=None, help="images to record (default: 1024 Scenes / the whole folder)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples", type=int, default=8, help="first K images whose maps are stored")
    p.add_argument("--seed", type=int, default=None, help="data seed (Scenes default: held-out seed 1)")
    p.add_argument("--layers", default=None, help="comma-separated shell patterns of layer names")
    p.add_argument("--sketch", choices=["auto", "on", "off"], default="auto",
                   help="feed the sketch (auto: when the model takes one)")
    p.add_argument("--quantile", type=float, default=0.005, help="top quantile for the IoU threshold")
    # not argparse choices: a bad value is RecordSettings' one-line error, as for the API
    p.add_argument("--iou-pass", default="auto", metavar="{auto,on,off}",
                   help="a second pass over the images (about one more forward each) that makes the IoU exact: "
                        "auto (default) where the label statistics are coarser than the bins (more than 8 labels), "
                        "on for every gated layer, off: IoU read from the label statistics (labels.iou_exact)")
    p.add_argument("--gate-activation", action="append", default=[], metavar="NAME",
                   help="also take this activation (a torch op such as tanh, or a module class name) as a gate when "
                        "discovering gates in unknown layer classes; repeatable (sigmoid and hard-sigmoid always are)")
    p.add_argument("--groups", choices=["auto", "image", "block"], default="auto",
                   help="image groups for the tests: image = position mod 32 (i.i.d. items), block = 32 contiguous "
                        "blocks (related images stored together); auto: image for Scenes, block otherwise")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="record only the I-th of N contiguous slices of the images (merge them with `merge`)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run in --out (it is put back if recording fails)")
    p.add_argument("--resume", action="store_true",
                   help="continue the incomplete run in --out from its last checkpoint (same model, data, settings)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="BATCHES",
                   help="also checkpoint for --resume every BATCHES batches (default: by time only)")
    p.add_argument("--checkpoint-seconds", type=float, default=30.0, metavar="S",
                   help="checkpoint for --resume every S seconds of recording (default 30; 0: only by "
                        "--checkpoint-every)")
    p.add_argument("--mask-threshold", type=float, default=None, metavar="T",
                   help="image data: mask pixels at or above T (0-1 of white) are hole (default 0.5); "
                        "binarises soft masks")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickle-based weight files (.pth/.pt/.ckpt of deepfillv2:/pconv-unet:), read with "
                        "torch.load(weights_only=True); only for files from a source you trust")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the shards as Ray tasks and merge them into one run: on a local Ray instance, or on "
                        "the cluster at ADDRESS (auto, ray://HOST:10001); needs pip install 'gateprobe[ray]'")
    p.add_argument("--with-baseline", action="store_true",
                   help="also record the model's random-init twin (same architecture and config) on the same data "
                        "and settings into OUT-baseline, linked from OUT: the control that claims and report use")
    p.add_argument("--baseline-seed", type=int, default=0, help="weight seed of the random-init twin (default 0)")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="with --ray: number of tasks (default: two per CPU of the cluster)")
    p.add_argument("--max-hours", type=float, default=168.0, metavar="H",
                   help="refuse a recording that the calibration pass estimates to take longer than H hours "
                        "(default 168, a week; 0: no limit); the estimate is printed either way")
    _device_options(p, dtype=True)
    p.set_defaults(func=_cmd_record)

    p = sub.add_parser("analyze", help="add interventions, ablation, attribution and embedding tables to a run",
                       description="Re-runs the run's model (from its manifest) for the sketch on/off "
                                   "intervention (2 passes per batch), channel ablation ((1 + k) passes per batch "
                                   "for k channels) and captum attribution (k x steps x images passes).")
    p.add_argument("run", help="run directory")
    p.add_argument("--n", type=int, default=64, help="images for the interventions")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--per-role", type=int, default=3, help="strongest channels per role to ablate/attribute")
    p.add_argument("--attribution-images", type=int, default=8)
    p.add_argument("--no-sketch", action="store_true", help="skip the sketch on/off intervention")
    p.add_argument("--no-ablation", action="store_true", help="skip channel ablation")
    p.add_argument("--no-attribution", action="store_true", help="skip captum attribution")
    p.add_argument("--null", type=int, default=0, metavar="N",
                   help="label-shuffle null: record the run's images N more times with other images' label maps "
                        "(randomly shifted) and store the role counts under the null (default 0: off)")
    p.add_argument("--model", default=None, help="the run's model, given again (instead of rebuilding it from the "
                                                 "manifest); must have the recorded weights")
    p.add_argument("--allow-import-models", action="store_true",
                   help="let analyze import the package.module:function model named in the run's manifest (only "
                        "for runs you trust: a run folder from elsewhere would run its code)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickle-based weights file named by the manifest or --model (weights_only=True)")
    _device_options(p)
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("claims", help="print the claims table (P1-P5, G1-G5) for a partial and a gated run")
    p.add_argument("run_a", help="run directory (partial or gated)")
    p.add_argument("run_b", help="the other run directory")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.add_argument("--baseline", default=None, metavar="RUN",
                   help="random-init run of the gated architecture on the same data (default: the one linked by "
                        "record --with-baseline); without one the G verdicts say 'no control'")
    p.set_defaults(func=_cmd_claims)

    p = sub.add_parser("demo", help="record both shipped checkpoints, analyse, report and serve the dashboard",
                       description="The main job on the embedded default: records checkpoints/scenes-pconv and "
                                   "checkpoints/scenes-gated on Scenes (held-out seed), reusing runs already "
                                   "recorded with the same settings, analyses the gated run, writes the "
                                   "comparison report and serves the dashboard on 127.0.0.1.")
    p.add_argument("--out", default="runs/demo", help="folder for the runs and the report (default runs/demo)")
    p.add_argument("--n", type=int, default=512, help="images per run")
    p.add_argument("--analysis-images", type=int, default=64, help="images for interventions")
    p.add_argument("--no-serve", action="store_true", help="stop after writing the report")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8050)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("report", help="write a self-contained HTML comparison report and a Markdown summary")
    p.add_argument("runs", nargs="+", help="run directories (e.g. a partial and a gated run)")
    p.add_argument("--out", required=True, help="HTML file to write (the .md summary goes beside it)")
    p.add_argument("--title", default=None)
    p.add_argument("--baseline", default=None, metavar="RUN",
                   help="random-init control run for the gated model (default: the one linked by --with-baseline)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("merge", help="merge shard runs into one run (exact)")
    p.add_argument("runs", nargs="+", help="shard run directories")
    p.add_argument("--out", required=True, help="merged run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--allow-partial", action="store_true",
                   help="merge even when shards are missing; the run is marked partial (manifest 'partial')")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("layers", help="list the layers that record would hook")
    p.add_argument("--model", required=True, help=model_help)
    _random_init_options(p)
    p.add_argument("--layers", default=None, help="comma-separated shell patterns of layer names")
    p.add_argument("--gate-activation", action="append", default=[], metavar="NAME",
                   help="also take this activation (op or module class name) as a gate in discovery; repeatable")
    p.add_argument("--size", type=int, default=64, help="input size used to measure resolutions")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickle-based weight files (read with torch.load(weights_only=True))")
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser("serve", help="explore the runs of a folder in the browser (Dash)",
                       description="Serve the complete runs directly under RUNS_DIR (or RUNS_DIR itself when it is "
                                   "a run) in an interactive explorer; incomplete or invalid runs are listed with "
                                   "the reason they are skipped.")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run directories")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--allow-import-models", action="store_true",
                   help="let the live page import package.module:function models named in run manifests")
    _device_options(p)
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _ARGV[:] = argv
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"gateprobe {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except UserModelError as err:
        if args.debug:
            traceback.print_exception(err.original)
        hint = "" if args.debug else " (--debug shows its traceback)"
        print(f"gateprobe {args.command}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
