"""The fused statistics kernel against the pure-torch path of :func:`probe.stats.native.accumulate_gate_batch`.

Per call, on one gated layer's batch: bin the logits (512 bins in the 18 segments of a calibrated
binning), count them into the 4-region histogram and the label cells. Shapes as
recorded: B=16 images, C in {24, 48, 96} channels, 64x64 and 32x32 maps; labels either 8 classes
(all present, cells = fine bins, offsets 0) or 150 classes with 40 present in the batch and 27
cells of unequal widths per channel. Regions are rectangles (hole, border, valid...), labels are
8x8-pixel blocks with 10% ignored pixels. Both paths run on the same inputs, interleaved, at
``torch.set_num_threads(--threads)``; the table shows medians (ms per call) and the torch/native
ratio, then the native kernel at 1 vs 2 threads on the largest shape, and the one-time build.

Run: ``python benchmarks/native_kernel.py [--repeats 15] [--threads 2] [--cold-build]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probe.stats import native, native_build  # noqa: E402
from probe.stats.binning import Binning, segment_levels  # noqa: E402
from probe.stats.histograms import cell_bounds  # noqa: E402

BINS, REGIONS = 512, 4
LABELS = {"8 labels": dict(rows=8, present=8, cells=BINS), "150 labels, 40 present": dict(rows=150, present=40, cells=27)}


def inputs(b: int, c: int, side: int, rows: int, present: int, cells: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.full((c,), -6.0, dtype=torch.float64), torch.full((c,), 6.0, dtype=torch.float64)
    logits = torch.randn(b, c, side, side, generator=g) * 2 + torch.randn(1, c, 1, 1, generator=g)
    levels = torch.tensor(segment_levels(0.005), dtype=torch.float64)
    binning = Binning.calibrated(lo, hi, torch.quantile(logits.transpose(0, 1).reshape(c, -1).double(), levels, 1).T,
                                 BINS)
    region = torch.zeros(b, side, side, dtype=torch.int64)
    for i in range(b):  # a hole rectangle (1), its border (2), the image border (3), the rest valid (0)
        y, x = torch.randint(0, side // 2, (2,), generator=g).tolist()
        region[i, y:y + side // 2, x:x + side // 2] = 2
        region[i, y + 2:y + side // 2 - 2, x + 2:x + side // 2 - 2] = 1
    region[:, :2], region[:, -2:], region[:, :, :2], region[:, :, -2:] = 3, 3, 3, 3
    blocks = torch.randint(0, present, (b, side // 8, side // 8), generator=g, dtype=torch.int32)
    label = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    label[torch.rand(b, side, side, generator=g) < 0.1] = -1
    if cells == BINS:
        cell_of_bin = torch.arange(BINS).repeat(c, 1)
        offset_of_bin = torch.zeros(c, BINS, dtype=torch.int64)
    else:  # unequal runs: boundaries at rounded multiples of BINS / cells
        start = cell_bounds(BINS, cells)[:-1]
        cob = torch.searchsorted(start, torch.arange(BINS), right=True) - 1
        cell_of_bin, offset_of_bin = cob.repeat(c, 1), (torch.arange(BINS) - start[cob]).repeat(c, 1)
    return dict(logits=logits, binning=binning, region=region, n_regions=REGIONS, region_counts=torch.zeros(REGIONS, c, BINS, dtype=torch.int64),
                label=label, n_present=present, label_rows=torch.randperm(rows, generator=g)[:present],
                cell_of_bin=cell_of_bin, offset_of_bin=offset_of_bin,
                cell_counts=torch.zeros(rows, c, cells, dtype=torch.int32),
                cell_moments=torch.zeros(rows, c, cells, dtype=torch.int32),
                total=torch.zeros(c, BINS, dtype=torch.int64))


def timed(kw: dict, path: str) -> float:
    start = time.perf_counter()
    native.accumulate_gate_batch(**kw, force_path=path)
    return (time.perf_counter() - start) * 1e3


def compare(kw: dict, paths: list[str], repeats: int) -> dict[str, list[float]]:
    for path in paths:  # warm-up (allocator, caches)
        timed(kw, path)
    times: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(repeats):  # interleaved
        for path in paths:
            times[path].append(timed(kw, path))
    return times


def cold_build() -> float:
    """Seconds to build the extension from nothing, in a fresh interpreter and an empty extension folder."""
    with tempfile.TemporaryDirectory() as folder:
        code = "from probe.stats import native_build; assert native_build.native_available(); print(native_build.build_seconds())"
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": folder}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per path and shape (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--channels", type=int, nargs="+", default=[24, 48, 96])
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 32], help="map sizes (square)")
    parser.add_argument("--cold-build", action="store_true",
                        help="also time a build from nothing (an empty TORCH_EXTENSIONS_DIR, ~30 s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    available = native_build.native_available()
    first_use = time.perf_counter() - start
    print(f"native kernel available: {available}; first use in this process {first_use:.2f} s "
          f"(build or cached load {native_build.build_seconds() or 0:.2f} s); threads {torch.get_num_threads()}")
    paths = ["torch", "native"] if available else ["torch"]
    print(f"{'labels':<24} {'C':>3} {'map':>6} {'torch ms':>9} {'native ms':>10} {'torch/native':>13}")
    for labels, spec in LABELS.items():
        for side in args.sides:
            for c in args.channels:
                times = compare(inputs(16, c, side, **spec), paths, args.repeats)
                t = statistics.median(times["torch"])
                if available:
                    n = statistics.median(times["native"])
                    ratios = [a / b for a, b in zip(times["torch"], times["native"])]
                    print(f"{labels:<24} {c:>3} {side:>3}x{side:<2} {t:>9.2f} {n:>10.2f} "
                          f"{statistics.median(ratios):>6.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
                else:
                    print(f"{labels:<24} {c:>3} {side:>3}x{side:<2} {t:>9.2f} {'-':>10} {'-':>13}")
    if available:
        kw = inputs(16, max(args.channels), max(args.sides), **LABELS["150 labels, 40 present"])
        per_threads = {}
        for threads in (1, args.threads):
            torch.set_num_threads(threads)
            per_threads[threads] = statistics.median(compare(kw, ["native"], args.repeats)["native"])
        torch.set_num_threads(args.threads)
        print(f"native, C={max(args.channels)} {max(args.sides)}x{max(args.sides)}, 150 labels: "
              + ", ".join(f"{k} thread(s) {v:.2f} ms" for k, v in per_threads.items())
              + f" (speed-up {per_threads[1] / per_threads[args.threads]:.2f}x)")
    if args.cold_build:
        print(f"cold build: {cold_build():.1f} s")


if __name__ == "__main__":
    main()
