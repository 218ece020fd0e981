"""Memory flatness: the peak memory that ``record`` adds over 4x more images divided by the peak it
adds over 1x, each measured in a fresh worker process (statistics only: the accumulators must not
grow with the data).

Each worker is a new interpreter started with ``subprocess`` and measures *its own* peak: Linux's
``VmHWM`` (high-water resident set) from ``/proc/self/status``. After its imports and model load
the worker resets the high-water mark (``/proc/self/clear_refs``, "5"; where that is refused it
reads the mark instead) and takes that as its baseline; at the end it reports the peak and the
increase over the baseline. ``getrusage().ru_maxrss`` is not used: across fork/vfork + exec a
child inherits its parent's maximum, so a worker started by a large ``make bench`` process reported
the parent's 5096 MB for both sizes (a ratio of 1.000 that could not fail).

Run: ``python benchmarks/memory.py [--n 128]``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 1 << 20


def memory_status() -> dict[str, float]:
    """``VmHWM`` (peak) and ``VmRSS`` (now) of this process, in MB, from ``/proc/self/status``."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 1024  # kB -> MB
    if len(values) != 2:
        raise RuntimeError("/proc/self/status has no VmHWM/VmRSS: the memory benchmark needs Linux")
    return values


def reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _task_record(n: str, name: str, registry: str):
    """Prepare (imports, model) now; return the measured step: ``record`` over ``n`` images."""
    import torch
    from common import shipped_or_random

    from probe.recording.loop import record

    torch.set_num_threads(2)
    model, _ = shipped_or_random(name, registry)

    def step():
        with tempfile.TemporaryDirectory() as tmp:
            record(model, "scenes:64", Path(tmp) / "run", n=int(n), samples=0, progress=False)
    return step


def _task_allocate(megabytes: str):
    """The harness's own check: touch ``megabytes`` MB, then free them."""
    import numpy as np

    def step():
        block = np.ones(int(float(megabytes) * MB) // 8)  # written, so every page is resident
        del block
    return step


TASKS = {"record": _task_record, "allocate": _task_allocate}


def worker(task: str, args: list[str]) -> dict:
    """In the worker process: prepare ``task``, reset the peak, run it, report the peak's increase."""
    step = TASKS[task](*args)
    reset = reset_peak()
    before = memory_status()
    baseline = before["VmRSS"] if reset else before["VmHWM"]
    step()
    peak = memory_status()["VmHWM"]
    return {"task": task, "args": args, "baseline_mb": baseline, "peak_mb": peak,
            "increase_mb": max(0.0, peak - baseline), "reset": reset}


def measure(task: str, *args) -> dict:
    """Run ``task`` in a fresh worker process (``subprocess``, a new interpreter) and return its
    report: ``baseline_mb`` (after imports and setup), ``peak_mb`` (its own VmHWM), ``increase_mb``."""
    out = subprocess.run([sys.executable, str(HERE / "memory.py"), "--worker", task, *map(str, args)],
                         capture_output=True, text=True, cwd=HERE, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker {task} {args} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1:])))
        return []
    from common import print_table

    rows = []
    for name, registry in (("scenes-gated", "gated-scenes"), ("scenes-pconv", "pconv-scenes")):
        small, large = measure("record", args.n, name, registry), measure("record", 4 * args.n, name, registry)
        a, b = small["increase_mb"], large["increase_mb"]
        ratio = b / a if a > 0 else float("nan")
        print(f"memory {name}: record adds {a:.0f} MB over {args.n} images, {b:.0f} MB over {4 * args.n} "
              f"(worker baseline after imports and model: {small['baseline_mb']:.0f} MB)")
        rows.append({"benchmark": f"peak memory added, {4 * args.n} / {args.n} images: {name}",
                     "median": ratio, "min": ratio, "max": ratio, "target": "<= 1.05"})
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
