"""The gated layers' statistics alone, without the model, and how they scale over threads.

One recorded pass over ``--n`` images captures every gated layer's ``(logits, gates)`` of every
batch; the statistics (``GatedLayerStats.add``) are then replayed on fresh accumulators, and the
bare ``inference_mode`` forward is timed on the same batches, at 1 and at ``--threads`` threads,
interleaved repeat by repeat. Timers around the parts of ``add`` say where the time goes.

Why: ``record_overhead.py`` measures record / bare as one number, in which the model's time varies
by up to 30% between repeats on a shared VM. Here the statistics' own time, its parts, and its
speedup over threads are read apart from the model's (the VM still moves both by about 10% from
run to run): ``statistics / bare`` is most of what recording adds to a forward, and at two threads
the statistics must scale as well as the model for record / bare to stay where it was at one.
Last, the covariance's product alone: the C++ kernel's ``centred_gram`` over the torch product.

Run: ``python benchmarks/stats_cost.py [--n 128] [--repeats 5] [--threads 2]``
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from contextlib import contextmanager

import torch
from common import batches, print_table, recorder_for, shipped_or_random, timed, torch_threads
from record_overhead import bare, recorded

import probe.recording.context as context
import probe.stats.histograms as histograms
import probe.stats.joint as joint
import probe.stats.layer_stats as layer_stats
from probe.recording.context import BatchContext

# (owner, attribute, part): timed while the statistics are replayed; the kernel counts the trivial
# features' calls too, the controls are the features and their joint counts
PARTS = ((layer_stats, "accumulate_gate_batch", "kernel"), (layer_stats.ChannelMoments, "add", "covariance"),
         (layer_stats.LayerConditions, "sums", "gate sums"), (layer_stats, "_layer_conditions", "conditions"),
         (context.BatchContext, "trivial_features", "controls"), (joint.JointTrivialCounts, "add", "controls"),
         (histograms.ConditionedHistogram, "add_sums", "sum additions"),
         (histograms.LabelCellHistogram, "add_sums", "sum additions"))


@contextmanager
def part_timers(seconds: Counter):
    """Add each part's wall seconds to ``seconds`` while inside the block (the functions are wrapped, then restored)."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in PARTS]

    def timer(function, part):
        def timed_part(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[part] += time.perf_counter() - start
        return timed_part

    for (owner, name, function), (_, _, part) in zip(saved, PARTS):
        setattr(owner, name, timer(function, part))
    try:
        yield
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)


def capture(model, data: list[dict]) -> list[list[tuple]]:
    """Per batch, every gated layer's ``(name, logits, gates)`` in the order the forward pass met them
    (a batch starts where the layers see a new batch context)."""
    captured: list[list[tuple]] = []
    contexts: list = []
    add = layer_stats.GatedLayerStats.add

    def keep(stats, logits, gates, ctx):
        if not contexts or contexts[-1] is not ctx:
            contexts.append(ctx)
            captured.append([])
        captured[-1].append((stats.site.name, logits.clone(), gates.clone()))
        return add(stats, logits, gates, ctx)

    layer_stats.GatedLayerStats.add = keep
    try:
        recorded(recorder_for(model), model, data)
    finally:
        layer_stats.GatedLayerStats.add = add
    return captured


def replay(recorder, data: list[dict], captured: list[list[tuple]], parts: Counter | None = None) -> float:
    """Seconds to add every captured batch to ``recorder``'s accumulators (the batch conditions included)."""
    def run():
        with torch.inference_mode():
            for b, layers in zip(data, captured):
                sketch = b["sketch"] if getattr(recorder.model, "accepts_sketch", False) else None  # as recorded()
                ctx = BatchContext(b["hole"], sketch, b["labels"], torch.arange(len(b["image"])) % 32,
                                   recorder.n_labels, recorder.border, image=b["image"])
                for name, logits, gates in layers:
                    recorder.stats[name].add(logits, gates, ctx)

    if parts is None:
        return timed(run)
    with part_timers(parts):
        return timed(run)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128, help="images (64x64, batches of 16)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="the thread count compared with one (default 2)")
    args = parser.parse_args(argv)
    model, name = shipped_or_random("scenes-gated", "gated-scenes")
    data = batches(args.n, 16)
    torch_threads(args.threads)
    captured = capture(model, data)
    counts = (1, args.threads)
    stats_s = {t: [] for t in counts}
    bare_s = {t: [] for t in counts}
    parts = {t: Counter() for t in counts}
    for t in counts:  # warm-up at each thread count
        torch_threads(t)
        bare(model, data[:1])
        replay(recorder_for(model), data[:1], captured[:1])
    for repeat in range(args.repeats):
        for t in counts if repeat % 2 == 0 else counts[::-1]:
            torch_threads(t)
            bare_s[t].append(timed(lambda: bare(model, data)))
            stats_s[t].append(replay(recorder_for(model), data, captured, parts[t] if repeat == 0 else None))
    print(f"{name}, {args.n} images, {args.repeats} interleaved repeats; medians in ms (parts: the first repeat)")
    print(f"{'':24}" + "".join(f"{f'{t} thread(s)':>14}" for t in counts))
    for label, values in (("bare forward", bare_s), ("statistics", stats_s)):
        print(f"{label:24}" + "".join(f"{statistics.median(values[t]) * 1e3:14.1f}" for t in counts))
    for part in dict.fromkeys(p for _, _, p in PARTS):
        print(f"  {part:22}" + "".join(f"{parts[t][part] * 1e3:14.1f}" for t in counts))
    rows = [{"benchmark": f"statistics / bare forward, {t} thread(s), {name}",
             "median": statistics.median(s / b for s, b in zip(stats_s[t], bare_s[t])),
             "min": min(s / b for s, b in zip(stats_s[t], bare_s[t])),
             "max": max(s / b for s, b in zip(stats_s[t], bare_s[t])), "target": ""} for t in counts]
    for label, values in (("statistics", stats_s), ("bare forward", bare_s)):
        speedups = [a / b for a, b in zip(values[1], values[args.threads])]
        rows.append({"benchmark": f"speedup 1 -> {args.threads} threads: {label}",
                     "median": statistics.median(speedups), "min": min(speedups), "max": max(speedups), "target": ""})
    rows += gram_rows(captured[0], counts, args.repeats)
    print_table(rows)
    return rows


def gram_rows(layers: list[tuple], counts: tuple, repeats: int) -> list[dict]:
    """The covariance's product on one batch of every layer's gates: the C++ kernel's
    ``centred_gram`` against the torch product of the centred copy (``_gram``), interleaved call by
    call at each thread count; one row per thread count: the ratio of the medians summed over the
    layers, and the smallest and largest layer's. None where the kernel's product does not run (no
    kernel, no AVX2 and FMA)."""
    if not layer_stats.fast_gram(torch.device("cpu")):
        return []
    kernel = layer_stats.kernel_module()
    rows = []
    for t in counts:
        torch_threads(t)
        totals, ratios = {"kernel": 0.0, "torch": 0.0}, []
        for _, _, gates in layers:
            flat = gates.flatten(2)
            mean = flat.double().mean((0, 2)).float()
            calls = {"kernel": lambda: kernel.centred_gram(flat, mean),
                     "torch": lambda: layer_stats.torch_centred_gram(flat, mean)}
            seconds = {name: [] for name in calls}
            for _ in range(4 * repeats):
                for name, call in calls.items():
                    seconds[name].append(timed(call))
            medians = {name: statistics.median(seconds[name]) for name in calls}
            ratios.append(medians["kernel"] / medians["torch"])
            for name in calls:
                totals[name] += medians[name]
        rows.append({"benchmark": f"covariance product, kernel / torch, {t} thread(s)",
                     "median": totals["kernel"] / totals["torch"], "min": min(ratios), "max": max(ratios), "target": ""})
    return rows


if __name__ == "__main__":
    main()
