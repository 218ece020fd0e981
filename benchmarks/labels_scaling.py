"""Label scaling: peak memory, time and accuracy of ``record``'s statistics at 8, 150 and 1,200
labels on DeepFill v2 size (the published architecture, random weights) at 128x128, beside the
bare forward pass, in one run.

Each measurement runs in a fresh worker process (the harness of :mod:`memory`: ``VmHWM`` from
``/proc/self/status``, reset after imports, model and data). Data: Scenes items whose 8 classes
are mapped, per image, to 8 distinct ids drawn from ``L`` (seeded), so a batch holds a few dozen
of the ``L`` labels, as a real segmentation set does. Time: the recording loop (calibration
excluded, reported apart), the IoU pass after it (``iou_pass="auto"``, as ``record`` runs it: at
150 and 1,200 labels, where the label cells are coarser than the bins; :mod:`probe.recording.iou_pass`)
and the bare ``inference_mode`` forward over the same batches.
Accuracy: exact AUC (rank formula, ties averaged) and top-0.005 IoU of every label present, on
the first gated layers' channels, against the run's tables: ``IoU p90`` against the top 0.5% of
the labelled pixels by their sample quantile (the measure of the issue), ``IoU@t p90`` against
``value > threshold`` at the tables' own threshold (what the IoU pass counts: 0 where it ran).

Run: ``python benchmarks/labels_scaling.py [--n 16] [--labels 8 150 1200]``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE, BATCH, QUANTILE = 128, 4, 0.005


class Relabelled:
    """Scenes at ``SIZE`` with each image's classes mapped to distinct random ids in ``[0, L)``."""

    def __init__(self, n: int, n_labels: int):
        import numpy as np

        from probe.data import Scenes

        self.base, self.n_labels = Scenes(size=SIZE, n=n, seed=1), n_labels
        self.classes = [f"c{i}" for i in range(n_labels)]
        rng = np.random.default_rng(n_labels)
        k = len(self.base.classes)
        self.maps = [np.arange(k) if n_labels == k else rng.choice(n_labels, k, replace=False) for _ in range(n)]

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        import torch

        item = dict(self.base[i])
        lab = item["labels"]
        mapping = torch.as_tensor(self.maps[i], dtype=lab.dtype, device=lab.device)
        item["labels"] = torch.where(lab >= 0, mapping[lab.clamp(min=0)], lab)
        return item

    def spec(self):
        return {"kind": "relabelled-scenes"}


def _setup(n: int, n_labels: int):
    import torch

    from probe.data import collate
    from probe.models.ported.deepfillv2 import DeepFillV2

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = DeepFillV2().eval()
    data = Relabelled(n, n_labels)
    batches = [collate([data[i] for i in range(s, min(s + BATCH, n))]) for s in range(0, n, BATCH)]
    return model, data, batches


def worker(mode: str, n: int, n_labels: int, accuracy: bool) -> dict:
    import torch
    from memory import memory_status, reset_peak

    model, data, batches = _setup(n, n_labels)
    reset = reset_peak()
    before = memory_status()
    baseline = before["VmRSS"] if reset else before["VmHWM"]
    out = {"mode": mode, "labels": n_labels, "n": n}
    if mode == "bare":
        start = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                model(b["image"], b["hole"], None)
        out["seconds"] = time.perf_counter() - start
    else:
        from probe.adapters import find_sites
        from probe.recording.loop import build_recorder
        from probe.rundir.settings import RecordSettings
        from probe.stats.histograms import DEFAULT_BINS

        settings = RecordSettings(calibration=min(n, 16), sketch=False, bins=DEFAULT_BINS, groups=32, border=2,
                                  batch_size=BATCH, iou_pass="auto")
        sites = find_sites(model)
        start = time.perf_counter()
        recorder = build_recorder(model, sites, data, n, settings)
        out["calibration_seconds"] = time.perf_counter() - start
        captured = _capture_hooks(model, sites) if accuracy else None
        groups = [torch.arange(i * BATCH, i * BATCH + len(b["image"])) % 32 for i, b in enumerate(batches)]
        start = time.perf_counter()
        with recorder as rec:
            for b, group in zip(batches, groups):
                rec.forward(b["image"], b["hole"], None, b["labels"], group)
        out["seconds"] = time.perf_counter() - start
        out["iou_layers"], out["iou_seconds"] = _iou_pass(model, sites, rec, batches, groups, settings, n_labels)
        out["state_mb"] = sum(v.numel() * v.element_size() for s in rec.stats.values()
                              for v in s.state_dict().values()) / 2 ** 20
        if accuracy:
            out.update(_accuracy(model, rec, batches, captured, n_labels))
    peak = memory_status()["VmHWM"]
    out.update({"baseline_mb": baseline, "peak_mb": peak, "increase_mb": max(0.0, peak - baseline)})
    return out


LAYERS, CHANNELS = 4, 8  # accuracy on the first LAYERS gated layers, CHANNELS channels each


def _iou_pass(model, sites, rec, batches, groups, settings, n_labels: int) -> tuple[int, float]:
    """``record``'s IoU pass over the same batches after the recording loop (the thresholds
    included in its time): ``(layers counted, seconds)``; ``(0, 0.0)`` where it does not run."""
    from probe.recording.iou_pass import IouPass, iou_thresholds, new_counts, pass_layers

    layers = pass_layers(rec.stats, settings.iou_pass)
    if not layers:
        return 0, 0.0
    start = time.perf_counter()
    new_counts(rec.stats, iou_thresholds(rec.stats, layers, settings.quantile), n_labels)
    with IouPass(model, sites, {name: rec.stats[name].iou for name in layers}, n_labels, settings,
                 rec.device) as counting:
        for b, group in zip(batches, groups):
            counting.forward(b["image"], b["hole"], None, b["labels"], group)
    return len(layers), time.perf_counter() - start


def _capture_hooks(model, sites):
    gated = [s for s in sites if s.kind == "gated"][:LAYERS]
    return {"sites": gated}


def _accuracy(model, rec, batches, captured, n_labels: int) -> dict:
    import numpy as np
    import torch
    from scipy.stats import rankdata

    from probe.recording.context import BatchContext
    from probe.rundir.tables import channel_and_label_tables, channel_thresholds

    sites = captured["sites"]
    kept = {s.name: [] for s in sites}

    class Keep:
        def __init__(self, name):
            self.name = name

        def gated(self, logits, gates):
            size = tuple(gates.shape[-2:])
            ctx = state["ctx"]
            kept[self.name].append((logits[:, :CHANNELS].double().clone(), ctx.regions(size)[0].clone(),
                                    _labels_at(ctx.labels, size)))

    state = {}
    handles = [h for s in sites for h in s.adapter.attach(s.module, Keep(s.name))]
    try:
        with torch.inference_mode():
            for b in batches:
                state["ctx"] = BatchContext(b["hole"], None, b["labels"], torch.zeros(len(b["image"]), dtype=torch.long),
                                            2)
                model(b["image"], b["hole"], None)
    finally:
        for h in handles:
            h.remove()
    _, labels = channel_and_label_tables({s.name: rec.stats[s.name] for s in sites}, [s.name for s in sites],
                                         [str(i) for i in range(n_labels)], QUANTILE)
    table = labels.set_index(["layer", "channel", "label_id"])
    auc_err, iou_err, iou_at_err = [], [], []
    for name, parts in kept.items():
        g = torch.cat([p[0] for p in parts]).numpy()
        lab = torch.cat([p[2] for p in parts]).numpy().ravel()
        keep = lab >= 0
        thresholds = channel_thresholds(rec.stats[name], QUANTILE)  # the tables' own, on the binned axis
        for c in range(g.shape[1]):
            v = g[:, c].ravel()[keep]
            lv = lab[keep]
            ranks = rankdata(v)
            top = v > np.quantile(v, 1 - QUANTILE)
            top_at = v > thresholds[c]
            for l in np.unique(lv):
                is_l = lv == l
                n_pos = is_l.sum()
                if n_pos == len(lv):
                    continue
                exact = (ranks[is_l].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(lv) - n_pos))
                auc_err.append(abs(exact - table.at[(name, c, int(l)), "auc"]))
                iou = (top & is_l).sum() / (top | is_l).sum()
                if iou > 0.01:
                    iou_err.append(abs(table.at[(name, c, int(l)), "iou"] - iou) / iou)
                iou_at = (top_at & is_l).sum() / (top_at | is_l).sum()
                if iou_at > 0.01:
                    iou_at_err.append(abs(table.at[(name, c, int(l)), "iou"] - iou_at) / iou_at)
    auc_err, iou_err, iou_at_err = np.array(auc_err), np.array(iou_err), np.array(iou_at_err)
    return {"auc_p99": float(np.percentile(auc_err, 99)), "auc_max": float(auc_err.max()), "aucs": len(auc_err),
            "iou_p90": float(np.percentile(iou_err, 90)) if len(iou_err) else float("nan"), "ious": len(iou_err),
            "iou_at_p90": float(np.percentile(iou_at_err, 90)) if len(iou_at_err) else float("nan"),
            "iou_at_max": float(iou_at_err.max()) if len(iou_at_err) else float("nan"),
            "iou_exact": float(labels.iou_exact.mean())}


def _labels_at(labels, size):
    """The labels at a layer's resolution by the documented rule (centre pixel of each cell)."""
    import torch

    H, W = labels.shape[-2:]
    ys = ((torch.arange(size[0], device=labels.device) + 0.5) * H / size[0]).long()
    xs = ((torch.arange(size[1], device=labels.device) + 0.5) * W / size[1]).long()
    return labels[:, ys][:, :, xs].clamp(min=-1).clone()


def measure(mode: str, n: int, n_labels: int, accuracy: bool) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "labels_scaling.py"), "--worker", mode, str(n), str(n_labels),
                          str(int(accuracy))], capture_output=True, text=True, cwd=HERE, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode} {n_labels} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="images (128x128, batch 4)")
    parser.add_argument("--labels", type=int, nargs="+", default=[8, 150, 1200])
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, n, n_labels, acc = args.worker
        print(json.dumps(worker(mode, int(n), int(n_labels), bool(int(acc)))))
        return []
    from common import print_table

    bare = measure("bare", args.n, 8, False)
    results = {L: measure("record", args.n, L, not args.no_accuracy) for L in args.labels}
    print(f"DeepFill v2 (random init), {SIZE}x{SIZE}, {args.n} images, batch {BATCH}; bare forward "
          f"{bare['seconds']:.2f} s, peak RSS {bare['peak_mb']:.0f} MB")
    print(f"{'labels':>7} {'peak MB':>8} {'added MB':>9} {'state MB':>9} {'record s':>9} {'/ bare':>7} "
          f"{'pass s':>7} {'/ bare':>7} {'all / bare':>10} {'AUC p99':>8} {'AUC max':>8} {'IoU p90':>8} "
          f"{'IoU@t p90':>9} {'exact':>6}")
    nan = float("nan")
    for L, r in results.items():
        both = r["seconds"] + r["iou_seconds"]
        print(f"{L:>7} {r['peak_mb']:8.0f} {r['increase_mb']:9.0f} {r['state_mb']:9.1f} {r['seconds']:9.2f} "
              f"{r['seconds'] / bare['seconds']:7.2f} {r['iou_seconds']:7.2f} {r['iou_seconds'] / bare['seconds']:7.2f} "
              f"{both / bare['seconds']:10.2f} {r.get('auc_p99', nan):8.5f} {r.get('auc_max', nan):8.5f} "
              f"{r.get('iou_p90', nan):8.4f} {r.get('iou_at_p90', nan):9.2e} {r.get('iou_exact', nan):6.2f}")
    print("record s: the recording loop; pass s: the IoU pass after it (thresholds included; 0: not run); "
          "all / bare: both over the bare forward; exact: share of label rows with iou_exact")
    rows, first = [], results[args.labels[0]]
    for L, target in ((150, "<= 1.15 (RSS), <= 1.10 (time)"), (1200, "<= 1.5 (RSS)")):
        if L in results and L != args.labels[0]:
            r = results[L]
            rows.append({"benchmark": f"peak RSS {L} / {args.labels[0]} labels", "median": r["peak_mb"] / first["peak_mb"],
                         "min": r["peak_mb"] / first["peak_mb"], "max": r["peak_mb"] / first["peak_mb"], "target": target})
            t = r["seconds"] / first["seconds"]
            rows.append({"benchmark": f"record time {L} / {args.labels[0]} labels", "median": t, "min": t, "max": t,
                         "target": target})
            t = (r["seconds"] + r["iou_seconds"]) / (first["seconds"] + first["iou_seconds"])
            rows.append({"benchmark": f"record + IoU pass time {L} / {args.labels[0]} labels", "median": t, "min": t,
                         "max": t, "target": "(the pass: about one bare forward)"})
    for L, key, name, target in ((150, "iou_p90", "IoU p90", "<= 0.02"), (1200, "auc_p99", "AUC p99", "<= 0.005")):
        if L in results and key in results[L]:
            v = results[L][key]
            rows.append({"benchmark": f"{name} at {L} labels", "median": v, "min": v, "max": v, "target": target})
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
