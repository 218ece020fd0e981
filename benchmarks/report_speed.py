"""Time to build the comparison report from recorded runs.

By default it records what it needs first (not timed): both shipped checkpoints (random-init
models where a checkpoint is missing) over ``--n`` held-out Scenes images, and the gated run's
analysis over a few images, as ``gateprobe demo`` does at full size. The report's build time
depends on the layers, channels and stored samples, not on how many images were recorded, so a
small ``--n`` measures the same work. Given two run folders, it times those instead.

Run: ``python benchmarks/report_speed.py [--n 32] [RUN_A RUN_B]``
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

MODELS = (("scenes-pconv", "pconv-scenes"), ("scenes-gated", "gated-scenes"))


def record_runs(out: Path, n: int, analysis_images: int = 8) -> list[Path]:
    """Record the two demo models over ``n`` images into ``out`` and analyse the gated one."""
    import torch
    from common import shipped_or_random

    from probe.analysis import analyze
    from probe.recording.loop import record

    torch.set_num_threads(2)
    paths = []
    for name, registry in MODELS:
        model, _ = shipped_or_random(name, registry)
        run = record(model, "scenes:64", out / name, n=n, progress=False)
        if getattr(model, "accepts_sketch", False):
            analyze(run, model=model, n=min(analysis_images, n), attribution_images=2, progress=False)
        paths.append(out / name)
    return paths


def time_report(runs: list[str | Path], repeats: int = 3) -> list[float]:
    from probe.report import build_report

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            start = time.perf_counter()
            build_report(runs, Path(tmp) / "report.html")
            times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="two recorded runs (default: record them, small)")
    parser.add_argument("--n", type=int, default=32, help="images per recorded run (default 32)")
    args = parser.parse_args(argv)
    if args.runs and len(args.runs) != 2:
        parser.error("give two runs (a partial and a gated one), or none to record them")
    with tempfile.TemporaryDirectory() as tmp:
        if args.runs:
            runs, what = [Path(r) for r in args.runs], ", ".join(Path(r).name for r in args.runs)
        else:
            runs, what = record_runs(Path(tmp), args.n), f"both demo models, {args.n} images each"
        times = time_report(runs)
    print(f"report build: median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}) "
          f"for {what}")
    return [{"benchmark": f"report build time (s), {what}", "median": statistics.median(times), "min": min(times),
             "max": max(times), "target": ""}]


if __name__ == "__main__":
    main()
