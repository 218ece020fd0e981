"""Scaling out: wall time of ``record --ray`` with W one-CPU workers against one process on the same
images, and the cost of ``merge_runs`` of N shard runs against the recording itself.

Rows (same model, data, n and batch size everywhere):

* ``record``, one process, with W torch threads (the same cores) and with one thread; the faster
  of the two is the baseline of the speed-up column (on a loaded machine W threads can be the
  slower: they wait for each other);
* ``record_ray`` on a local instance of W CPUs, cold (``ray.init`` + worker start-up + shutdown
  included, what one ``gateprobe record --ray`` costs) and warm (instance and workers already up);
* the N shard runs recorded one after the other, and ``merge_runs`` of them.

The model is a snapshot of ``checkpoints/scenes-pconv`` (weights + card copied, so a training that
rewrites the checkpoint cannot change it mid-benchmark), or, without one, a random-weight
pconv-scenes saved as a checkpoint. Print ``os.getloadavg()`` beside the figures: on a loaded
machine the speed-up says little about an idle one.

Run: ``python benchmarks/ray_scaling.py [--n 256] [--size 64] [--workers 2] [--shards N] [--repeats 2]``
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, timed

WEIGHT_FILES = ("model.safetensors", "card.json")


def snapshot_checkpoint(dest: Path, size: int) -> tuple[str, str]:
    """Copy the shipped pconv checkpoint (retrying if a training rewrites it meanwhile), else save a
    random-weight one. Returns (folder, description)."""
    from probe.errors import CheckpointError
    from probe.models import create_model
    from probe.models.checkpoints import load_model, save_checkpoint

    source = ROOT / "checkpoints" / "scenes-pconv"
    if (source / "card.json").is_file():
        for _ in range(5):
            dest.mkdir(parents=True, exist_ok=True)
            for name in WEIGHT_FILES:
                shutil.copyfile(source / name, dest / name)
            try:
                model = load_model(dest)
                return str(dest), f"checkpoints/scenes-pconv snapshot ({model.card['config']})"
            except CheckpointError:
                time.sleep(2)
    torch.manual_seed(0)
    save_checkpoint(create_model("pconv-scenes", image_size=size), dest)
    return str(dest), "pconv-scenes, random weights"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="images")
    parser.add_argument("--size", type=int, default=64, help="Scenes image size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--shards", type=int, default=None, help="Ray tasks / shard runs (default: --workers)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is reported")
    args = parser.parse_args(argv)
    shards = args.shards or args.workers

    import ray

    from probe.models.sources import resolve_model
    from probe.recording.distributed import record_ray
    from probe.recording.loop import record
    from probe.rundir.merge import merge_runs

    tmp = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    try:
        folder, label = snapshot_checkpoint(tmp / "checkpoint", args.size)
        data = f"scenes:{args.size}"
        kw = dict(n=args.n, batch_size=args.batch_size, progress=False)
        model = resolve_model(folder)
        load_before = os.getloadavg()
        rows = []

        def add(name, seconds, baseline=None):
            rows.append({"setup": name, "seconds": seconds, "images_per_s": args.n / seconds,
                         "ratio": None if baseline is None else baseline / seconds})
            print(f"  {name}: {seconds:.2f} s", flush=True)

        def best(fn) -> float:  # the least disturbed of --repeats runs (each into a fresh folder)
            times = []
            for _ in range(args.repeats):
                shutil.rmtree(tmp / "out", ignore_errors=True)
                times.append(timed(lambda: fn(tmp / "out")))
            return min(times)

        record(model, data, tmp / "warmup", **kw | {"n": min(args.n, 2 * args.batch_size)})
        single = {}
        for threads in sorted({1, args.workers}):
            torch.set_num_threads(threads)
            single[threads] = best(lambda out: record(model, data, out, **kw))
        threads = min(single, key=single.get)  # the faster one-process setting is the baseline
        plain = single[threads]
        for t, seconds in single.items():
            add(f"record, 1 process, {t} thread{'s' if t > 1 else ''}", seconds, plain)

        cold = best(lambda out: record_ray(folder, data, out, shards=shards, num_cpus=args.workers, **kw))
        add(f"record --ray, {args.workers} workers, {shards} shards, cold (init + shutdown)", cold, plain)
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 logging_level="warning")
        try:
            record_ray(folder, data, tmp / "ray_warmup", shards=args.workers,
                       **kw | {"n": max(args.workers, min(args.n, 2 * args.workers))})  # start workers, build models
            warm = best(lambda out: record_ray(folder, data, out, shards=shards, **kw))
        finally:
            ray.shutdown()
        add(f"record --ray, {args.workers} workers, {shards} shards, warm instance", warm, plain)

        torch.set_num_threads(threads)
        parts, shard_seconds = [], 0.0
        for i in range(shards):
            start = time.perf_counter()
            parts.append(record(model, data, tmp / f"shard{i}", shard=(i, shards), **kw).path)
            shard_seconds += time.perf_counter() - start
        add(f"{shards} shard runs, one after another, {threads} thread(s) (sum)", shard_seconds, plain)
        merge = min(timed(lambda: merge_runs(parts, tmp / f"merged{r}")) for r in range(args.repeats))
        load_after = os.getloadavg()

        print(f"\n{label}; {args.n} Scenes images at {args.size}x{args.size}, batch {args.batch_size}; "
              f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs")
        print(f"load average (1, 5, 15 min) before {tuple(round(v, 2) for v in load_before)}, "
              f"after {tuple(round(v, 2) for v in load_after)}")
        print(f"\n{'setup':<66} {'wall s':>8} {'img/s':>8} {'speed-up':>9}")
        for r in rows:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
            print(f"{r['setup']:<66} {r['seconds']:8.2f} {r['images_per_s']:8.1f} {ratio:>9}")
        print(f"{'merge_runs of ' + str(shards) + ' shard runs':<66} {merge:8.2f} {'':>8} "
              f"{100 * merge / plain:8.1f}% of record")
        rows.append({"setup": f"merge_runs of {shards} shard runs", "seconds": merge, "images_per_s": None,
                     "ratio": merge / plain})
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
