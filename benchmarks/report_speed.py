"""Time to build the comparison report from recorded runs (default: the demo's runs).

Run: ``python benchmarks/report_speed.py [RUN_A RUN_B]``
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT


def main(argv=None) -> list[dict]:
    from probe.report import build_report

    runs = (argv if argv is not None else sys.argv[1:]) or [str(ROOT / "runs/demo/scenes-pconv"),
                                                              str(ROOT / "runs/demo/scenes-gated")]
    if not all((Path(r) / "manifest.json").is_file() for r in runs):
        print(f"report speed: skipped, record the runs first (`gateprobe demo --no-serve`): {runs}")
        return []
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(3):
            start = time.perf_counter()
            build_report(runs, Path(tmp) / "report.html")
            times.append(time.perf_counter() - start)
    print(f"report build: median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}) "
          f"for {', '.join(Path(r).name for r in runs)}")
    return [{"benchmark": "report build time (s)", "median": statistics.median(times), "min": min(times),
             "max": max(times), "target": ""}]


if __name__ == "__main__":
    main()
