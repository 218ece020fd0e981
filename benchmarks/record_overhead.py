"""Recording overhead: full ``record`` statistics (every gated/partial layer, all statistics,
samples off) over the bare ``torch.inference_mode()`` forward pass on the same in-memory batches,
interleaved repeat by repeat so both sides see the same allocator state and machine load. Each
model is measured with the C++ kernel and with the pure-torch path (``GATEPROBE_NATIVE=0``: no
compiler, or a GPU), each against its own interleaved bare forwards.

Each row is the median of the repeats' pair ratios (record / bare of one repeat), its range, and a
distribution-free interval for that median (``common.median_interval``: with 5 repeats it is the
range, which holds the median with probability 0.94; 11 repeats give about 0.99 from the second
smallest to the second largest ratio). On a shared VM the model's own time moves by up to 30% from
repeat to repeat: judge a target by that interval, not by one median.

Run: ``python benchmarks/record_overhead.py [--repeats 5] [--n 256] [--threads 2] [--models ...]``
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager

import torch
from common import batches, print_table, ratio_row, recorder_for, shipped_or_random, timed, torch_threads


def bare(model, data):
    with torch.inference_mode():
        for b in data:
            model(b["image"], b["hole"], b["sketch"] if model.accepts_sketch else None)


def recorded(recorder, model, data):
    with recorder as rec:
        for b in data:
            group = torch.arange(len(b["image"])) % 32
            rec.forward(b["image"], b["hole"], b["sketch"] if getattr(model, "accepts_sketch", False) else None,
                        b["labels"], group)


def measure(model, data, repeats: int) -> tuple[list[float], list[float]]:
    """Interleaved repeats, the order of the pair alternating (bare first in even repeats, record
    first in odd ones) so that neither side always follows the other; each recorded repeat starts
    from fresh accumulators with the binnings of one calibration pass (32 images, outside the timer)."""
    calibrated = recorder_for(model, data[0]["image"].shape[-1])
    bare(model, data[:1])
    recorded(calibrated, model, data[:1])  # warm-up both paths
    t_bare, t_rec = [], []
    for repeat in range(repeats):
        recorder = recorder_for(model, like=calibrated)
        for side in ("bare", "record") if repeat % 2 == 0 else ("record", "bare"):
            if side == "bare":
                t_bare.append(timed(lambda: bare(model, data)))
            else:
                t_rec.append(timed(lambda: recorded(recorder, model, data)))
    return t_rec, t_bare


@contextmanager
def statistics_path(name: str):
    """Record with the ``"native"`` kernel or the pure-``"torch"`` path inside the block."""
    before = os.environ.get("GATEPROBE_NATIVE")
    os.environ["GATEPROBE_NATIVE"] = "0" if name == "torch" else "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GATEPROBE_NATIVE")
        else:
            os.environ["GATEPROBE_NATIVE"] = before


TARGETS = {"native": "<= 1.25", "torch": "<= 2.0"}


def shipped_case(name: str, registry: str):
    """A shipped 64x64 model's case: ``(model, label, shape, batches)`` of ``--n`` images in batches of 16."""
    return lambda args: (*shipped_or_random(name, registry), "64x64, batch 16", batches(args.n, 16))


def deepfill_case(args):
    """DeepFill v2 at its published size (cnum 48, 4.05 M parameters), random weights, 256x256 in batches of 4."""
    from probe.models.ported.deepfillv2 import DeepFillV2

    torch.manual_seed(0)
    return DeepFillV2().eval(), "DeepFill v2 (random)", "256x256, batch 4", batches(args.n_large, 4, size=256)


MODELS = {"scenes-gated": shipped_case("scenes-gated", "gated-scenes"),
          "scenes-pconv": shipped_case("scenes-pconv", "pconv-scenes"), "deepfill": deepfill_case}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=256, help="images per repeat (64x64 models)")
    parser.add_argument("--n-large", type=int, default=16, help="images per repeat (256x256 DeepFill v2 size)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--paths", nargs="+", default=["native", "torch"], choices=["native", "torch"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="which models to measure (default: all three)")
    args = parser.parse_args(argv)
    torch_threads(args.threads)
    cases = [MODELS[name](args) for name in args.models]
    rows = []
    for model, label, shape, data in cases:
        for name in args.paths:
            with statistics_path(name):
                rec, base = measure(model, data, args.repeats)
            rows.append(ratio_row(f"record / bare: {label}, {shape}, {name}", rec, base, TARGETS[name]))
    print(f"torch threads {torch.get_num_threads()}")
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
