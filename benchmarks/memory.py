"""Memory flatness: peak RSS of ``record`` over 4x more images divided by peak RSS over 1x,
each in a fresh process (statistics only: the accumulators must not grow with the data).

Run: ``python benchmarks/memory.py [--n 128]``
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(n: int, name: str, registry: str) -> None:
    import torch
    from common import shipped_or_random

    from probe.recording.loop import record

    torch.set_num_threads(2)
    model, _ = shipped_or_random(name, registry)
    with tempfile.TemporaryDirectory() as tmp:
        record(model, "scenes:64", Path(tmp) / "run", n=n, samples=0, progress=False)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak(n: int, name: str, registry: str) -> float:
    out = subprocess.run([sys.executable, str(HERE / "memory.py"), "--worker", str(n), name, registry],
                         capture_output=True, text=True, cwd=HERE, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(int(args.worker[0]), args.worker[1], args.worker[2])
        return []
    from common import print_table

    rows = []
    for name, registry in (("scenes-gated", "gated-scenes"), ("scenes-pconv", "pconv-scenes")):
        small, large = peak(args.n, name, registry), peak(4 * args.n, name, registry)
        rows.append({"benchmark": f"peak RSS {4 * args.n} / {args.n} images: {name} ({small:.0f} -> {large:.0f} MB)",
                     "median": large / small, "min": large / small, "max": large / small, "target": "<= 1.05"})
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
