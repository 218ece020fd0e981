"""The recorded statistics of this working tree against those of an earlier revision, A/B in one process.

``git archive REV probe`` is unpacked into a temporary folder as the package ``probe_base`` (its
absolute imports renamed); one recorded pass of the working tree captures every gated layer's
``(logits, gates)``; then the two packages' ``GatedLayerStats.add`` replay the same batches on fresh
recorders, interleaved repeat by repeat (alternating which goes first). It prints whether the two
end in the same state, bit for bit, and the ratio of their times: a change to the statistics
measured apart from the model, whose time varies by more than the change on a shared VM
(``record_overhead.py``). The base revision's C++ kernel is built on first use (about a minute).

Run: ``python benchmarks/statistics_ab.py --base REV [--model scenes-gated|deepfill] [--n 128] [--repeats 12] [--threads 2]``
"""
from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, batches, shipped_or_random, torch_threads

import stats_cost


def unpack_base(rev: str, into: Path) -> str:
    """``probe`` at ``rev`` as the package ``probe_base`` under ``into`` (on ``sys.path``); returns its name."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "probe"], check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(into, filter="data")
    (into / "probe").rename(into / "probe_base")
    for source in (into / "probe_base").rglob("*.py"):
        text = source.read_text()
        source.write_text(text.replace("from probe.", "from probe_base.").replace("import probe\n", "import probe_base\n"))
    sys.path.insert(0, str(into))
    return "probe_base"


def replayer(package: str, model, data: list[dict], captured, size: int, batch_size: int):
    """``(new_recorder, replay)`` for ``package``: record()'s default statistics (as ``common.recorder_for``)."""
    loop = importlib.import_module(f"{package}.recording.loop")
    settings = importlib.import_module(f"{package}.rundir.settings")
    adapters = importlib.import_module(f"{package}.adapters")
    scenes = importlib.import_module(f"{package}.data").Scenes
    context = importlib.import_module(f"{package}.recording.context").BatchContext
    sketch = bool(getattr(model, "accepts_sketch", False))
    chosen = settings.RecordSettings(calibration=32, sketch=sketch, bins=512, groups=32, border=2, batch_size=batch_size)

    def new_recorder():
        return loop.build_recorder(model, adapters.find_sites(model), scenes(size=size, n=32, seed=1), 32, chosen)

    def replay(recorder) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for b, layers in zip(data, captured):
                ctx = context(b["hole"], b["sketch"] if sketch else None, b["labels"], torch.arange(len(b["image"])) % 32,
                              recorder.n_labels, recorder.border, image=b["image"])
                for name, logits, gates in layers:
                    recorder.stats[name].add(logits, gates, ctx)
        return time.perf_counter() - start

    return new_recorder, replay


def same_state(a: dict, b: dict) -> list[str]:
    """The ``layer.key`` entries whose tensors differ between two recorders' statistics."""
    differ = []
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        differ += [f"{name}.{k}" for k in sa if isinstance(sa[k], torch.Tensor) and not torch.equal(sa[k], sb[k])]
    return differ


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--model", default="scenes-gated", choices=["scenes-gated", "deepfill"])
    parser.add_argument("--n", type=int, default=128, help="images (128 at 64 px; DeepFill v2 takes 256 px)")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch_threads(args.threads)
    if args.model == "deepfill":
        from probe.models.ported.deepfillv2 import DeepFillV2

        torch.manual_seed(0)
        model, size, batch_size = DeepFillV2().eval(), 256, 4
    else:
        model, size, batch_size = shipped_or_random("scenes-gated", "gated-scenes")[0], 64, 16
    data = batches(args.n, batch_size, size=size)
    captured = stats_cost.capture(model, data)
    with tempfile.TemporaryDirectory() as folder:
        base = unpack_base(args.base, Path(folder))
        sides = {"base": replayer(base, model, data, captured, size, batch_size),
                 "tree": replayer("probe", model, data, captured, size, batch_size)}
        recorders = {k: new() for k, (new, _) in sides.items()}
        for k, (_, replay) in sides.items():
            replay(recorders[k])  # also the warm-up (and the base kernel's build)
        differ = same_state(recorders["base"].stats, recorders["tree"].stats)
        seconds = {k: [] for k in sides}
        for repeat in range(args.repeats):
            for k in (("base", "tree") if repeat % 2 == 0 else ("tree", "base")):
                new, replay = sides[k]
                seconds[k].append(replay(new()))
    ratios = [t / b for t, b in zip(seconds["tree"], seconds["base"])]
    print(f"{args.model}, {args.n} images, {args.threads} thread(s), {args.repeats} interleaved repeats")
    print("same state as the base, bit for bit:", "yes" if not differ else f"no ({len(differ)}: {differ[:5]})")
    print(f"statistics, base {args.base}: {statistics.median(seconds['base']) * 1e3:.1f} ms, this tree: "
          f"{statistics.median(seconds['tree']) * 1e3:.1f} ms (medians)")
    print(f"this tree / base: median of pair ratios {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
          f"{max(ratios):.3f}); ratio of medians {statistics.median(seconds['tree']) / statistics.median(seconds['base']):.3f}")
    return {"same_state": not differ, "ratio": statistics.median(ratios)}


if __name__ == "__main__":
    main()
