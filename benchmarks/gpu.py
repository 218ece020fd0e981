"""GPU check for the devices issue, as one prepared script for a lent GPU machine:

1. equality: the same model and images recorded on the CPU and on CUDA: counts identical and
   means within 1e-5 in float32; AUCs within 0.002 in bfloat16 (against the CPU float32 run);
2. host syncs: the device reads of one recorded batch of `gated-scenes` and `pconv-scenes`
   (random weights), counted with ``torch.cuda.set_sync_debug_mode("warn")`` (target: 1 per batch,
   the finiteness verdict of the output and of the layers' NaN flag);
3. speed: record / bare forward and images/s for DeepFill v2 (published size, random weights) at
   256 and 512 px, batch 8-32, interleaved repeats on the GPU.

Run: ``python benchmarks/gpu.py [--n 64] [--repeats 3]``. Without a CUDA device it says so and
exits 0 (figures are never guessed). ``--device cpu`` runs the same steps on the CPU, small, as a
smoke test of the script itself.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import probe
from probe.data import Scenes


def equality(root: Path, device: str, n: int) -> list[str]:
    torch.manual_seed(0)
    model = probe.create_model("gated-scenes")
    data = Scenes(size=64, n=n)
    cpu = probe.record(model, data, root / "cpu", progress=False, device="cpu")
    dev = probe.record(model, data, root / "dev", progress=False, device=device)
    half = probe.record(model, data, root / "bf16", progress=False, device=device, dtype="bfloat16")
    lines = [f"device: {dev.manifest['device']}"]
    same = (cpu.labels.pixels == dev.labels.pixels).all() and (cpu.channels.channel == dev.channels.channel).all()
    mean_gap = float((cpu.channels["mean"] - dev.channels["mean"]).abs().max())
    auc_gap = float(np.nanmax((cpu.labels.auc - half.labels.auc).abs()))
    lines.append(f"float32: pixel counts identical {bool(same)}; max |mean gap| {mean_gap:.2e} (target <= 1e-5)")
    lines.append(f"bfloat16: max |AUC gap| vs CPU float32 {auc_gap:.4f} (target <= 0.002)")
    return lines


class Upsampled:
    """Scenes at ``size`` (up to 512) from its 256 px items: images bilinear, masks and labels nearest."""

    def __init__(self, size: int, n: int):
        self.base, self.size = Scenes(size=min(size, 256), n=n), size
        self.classes = self.base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        import torch.nn.functional as F

        item = dict(self.base[i])
        if self.size == self.base.size:
            return item
        out = (self.size, self.size)
        item["image"] = F.interpolate(item["image"][None], out, mode="bilinear", align_corners=False)[0]
        for key in ("hole", "sketch"):
            item[key] = F.interpolate(item[key][None], out, mode="nearest")[0]
        item["labels"] = F.interpolate(item["labels"][None, None].float(), out, mode="nearest")[0, 0].long()
        return item


def syncs(device: str) -> list[str]:
    import warnings

    from probe.adapters import find_sites
    from probe.recording.loop import build_recorder
    from probe.rundir.settings import RecordSettings

    if not device.startswith("cuda"):
        return ["host syncs: not counted off CUDA"]
    lines = []
    data = Scenes(size=64, n=32)
    for name in ("gated-scenes", "pconv-scenes"):
        torch.manual_seed(0)
        model = probe.create_model(name).to(device)
        settings = RecordSettings(batch_size=16).resolved(bool(getattr(model, "accepts_sketch", False)), data_kind="scenes")
        recorder = build_recorder(model, find_sites(model), data, 32, settings, torch.device(device))
        batch = {k: v.to(device) for k, v in probe.data.collate([data[i] for i in range(16)]).items()}
        group = torch.zeros(16, dtype=torch.long, device=device)
        with recorder as rec:
            rec.forward(batch["image"], batch["hole"], batch["sketch"] if settings.sketch else None, batch["labels"], group)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    rec.forward(batch["image"], batch["hole"], batch["sketch"] if settings.sketch else None,
                                batch["labels"], group)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
        where = sorted({str(w.filename).rsplit("/", 1)[-1] + f":{w.lineno}" for w in caught})
        lines.append(f"{name}: {len(caught)} host syncs in one recorded batch (target 1) at {', '.join(where) or '-'}")
    return lines


def speed(device: str, n: int, repeats: int) -> list[str]:
    from probe.adapters import find_sites
    from probe.models.ported.deepfillv2 import DeepFillV2
    from probe.recording.loop import build_recorder
    from probe.rundir.settings import RecordSettings

    torch.manual_seed(0)
    model = DeepFillV2().eval().to(device)
    lines = []
    for size, batch in ((256, 32), (512, 8)):
        data = Upsampled(size, n)
        batches = [probe.data.collate([data[i] for i in range(s, min(s + batch, n))]) for s in range(0, n, batch)]
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        settings = RecordSettings(batch_size=batch, sketch=False).resolved(False, data_kind="scenes")
        recorder = build_recorder(model, find_sites(model), data, n, settings, torch.device(device))

        def bare():
            with torch.inference_mode():
                for b in batches:
                    model(b["image"], b["hole"])
            sync()

        def recorded():
            with recorder as rec:
                for b in batches:
                    rec.forward(b["image"], b["hole"], None, b["labels"],
                                torch.zeros(len(b["image"]), dtype=torch.long, device=device))
            sync()

        def sync():
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        bare(), recorded()  # warm-up
        t_bare, t_rec = [], []
        for _ in range(repeats):
            t_bare.append(timed(bare))
            t_rec.append(timed(recorded))
        ratio = statistics.median(r / b for r, b in zip(t_rec, t_bare))
        lines.append(f"DeepFill v2 {size} px, batch {batch}: record / bare {ratio:.3f} (target at 512 px <= 1.10); "
                     f"{n / statistics.median(t_rec):.1f} images/s recorded (target at 256 px >= 100)")
    return lines


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: the GPU figures are not measured (run this on a GPU machine)")
        return 0
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for line in equality(Path(tmp), args.device, args.n) + syncs(args.device) + speed(args.device, args.n, args.repeats):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
