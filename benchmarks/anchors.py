"""gateprobe against two anchors, same model and images, each in its own process:

* TorchLens (``tl.trace(model, inputs, save=tl.func("sigmoid"))``, keeping only the gates);
* NetDissect-Lite style: store every gate map, then compute the same per-channel AUC / IoU
  with numpy and scikit-learn.

Prints wall time and peak RSS (each worker's own VmHWM) of each, relative to gateprobe and to the bare forward pass.
Run: ``python benchmarks/anchors.py [--n 128] [--repeats 2]``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _model_and_batches(n: int):
    from common import batches, shipped_or_random

    model, label = shipped_or_random("scenes-gated", "gated-scenes")
    return model, batches(n, 16), label


def run_bare(model, data):
    with torch.inference_mode():
        for b in data:
            model(b["image"], b["hole"], b["sketch"])


def run_gateprobe(model, data):
    from common import recorder_for

    from probe.rundir.tables import channel_and_label_tables

    with recorder_for(model) as rec:
        for b in data:
            rec.forward(b["image"], b["hole"], b["sketch"], b["labels"], torch.arange(len(b["image"])) % 32)
    channel_and_label_tables(rec.stats, rec.order, [str(i) for i in range(8)], 0.005)


def run_torchlens(model, data):
    import torchlens as tl

    kept = 0
    for b in data:
        trace = tl.trace(model, (b["image"], b["hole"], b["sketch"]), save=tl.func("sigmoid"))
        gates = [layer.tensor for layer in trace.layers if layer.has_saved_activation]
        kept += len(gates)
        del trace, gates
    assert kept, "TorchLens saved no sigmoid outputs"


def run_store_sklearn(model, data):
    """Store every gate map, then per channel: sklearn AUC (hole, sketch, each label) and the
    Network Dissection IoU at the exact top-0.005 quantile, with numpy."""
    from sklearn.metrics import roc_auc_score

    from probe.adapters import find_sites
    from probe.recording.context import BatchContext

    sites = [s for s in find_sites(model) if s.kind == "gated"]
    maps = {s.name: [] for s in sites}
    conditions = {s.name: [] for s in sites}
    ctx = {}

    class Store:
        def __init__(self, name):
            self.name = name

        def gated(self, logits, gates):
            maps[self.name].append(gates.clone())
            size = tuple(gates.shape[-2:])
            conditions[self.name].append((ctx["c"].regions(size)[0], ctx["c"].label_ids(size)[0]))

    handles = [h for s in sites for h in s.adapter.attach(s.module, Store(s.name))]
    try:
        with torch.inference_mode():
            for b in data:
                ctx["c"] = BatchContext(b["hole"], b["sketch"], b["labels"], torch.zeros(len(b["image"]), dtype=torch.long), 8)
                model(b["image"], b["hole"], b["sketch"])
    finally:
        for h in handles:
            h.remove()
    for name in maps:
        g = torch.cat(maps[name]).numpy()  # [N, C, h, w]
        region = torch.cat([c[0] for c in conditions[name]]).numpy()[:, 0].ravel()
        label = torch.cat([c[1] for c in conditions[name]]).numpy()[:, 0].ravel()
        hole = region <= 1
        for c in range(g.shape[1]):
            v = g[:, c].ravel()
            if hole.any() and (~hole).any():
                roc_auc_score(hole, v)
            in_hole = v[hole]
            sketch = region[hole] == 0
            if sketch.any() and (~sketch).any():
                roc_auc_score(sketch, in_hole)
            top = v > np.quantile(v, 1 - 0.005)
            for l in np.unique(label):
                is_l = label == l
                if is_l.all():
                    continue
                roc_auc_score(is_l, v)
                (top & is_l).sum() / (top | is_l).sum()


METHODS = {"bare": run_bare, "gateprobe": run_gateprobe, "torchlens": run_torchlens,
           "store_sklearn": run_store_sklearn}


def worker(method: str, n: int) -> None:
    torch.set_num_threads(2)
    model, data, _ = _model_and_batches(n)
    start = time.perf_counter()
    METHODS[method](model, data)
    seconds = time.perf_counter() - start
    # this process's own VmHWM: ru_maxrss would be the parent's maximum, inherited across exec
    from memory import memory_status

    print(json.dumps({"seconds": seconds, "peak_mb": memory_status()["VmHWM"]}))


def measure(method: str, n: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "anchors.py"), "--worker", method, "--n", str(n)],
                         capture_output=True, text=True, cwd=HERE, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=128, help="images (64x64, batch 16)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.n)
        return []
    from common import print_table, ratio_row

    results = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            results[method].append(measure(method, args.n))
    t = {m: [r["seconds"] for r in rs] for m, rs in results.items()}
    mem = {m: max(r["peak_mb"] for r in rs) for m, rs in results.items()}
    rows = [ratio_row("gateprobe time / bare forward", t["gateprobe"], t["bare"]),
            ratio_row("TorchLens time / bare forward", t["torchlens"], t["bare"]),
            ratio_row("store-then-sklearn time / bare forward", t["store_sklearn"], t["bare"]),
            ratio_row("TorchLens time / gateprobe time", t["torchlens"], t["gateprobe"], ">= 3"),
            ratio_row("store-then-sklearn time / gateprobe time", t["store_sklearn"], t["gateprobe"], ">= 25")]
    print_table(rows)
    print("peak RSS (MB): " + ", ".join(f"{m} {v:.0f}" for m, v in mem.items())
          + f"; gateprobe above bare: {mem['gateprobe'] - mem['bare']:.0f} MB (target < 100)")
    return rows


if __name__ == "__main__":
    main()
