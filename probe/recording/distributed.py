"""``record`` on Ray: the shards of a run as Ray tasks, merged exactly by the driver.

    record_ray("checkpoints/scenes-pconv", "scenes:64", "runs/pconv", n=4096, shards=16)
    gateprobe record --model checkpoints/scenes-pconv --n 4096 --out runs/pconv --ray [ADDRESS]

Every task rebuilds the model from its spec string (a checkpoint folder, a loader prefix such as
``deepfillv2:PATH.pth``, or ``package.module:function``) with :func:`probe.models.sources.resolve_model` and
the dataset from its ``spec()`` with :func:`probe.data.dataset_from_spec`; a worker process keeps
the model it built, so each worker builds it once. The task records shard ``(i, N)``
(:func:`probe.recording.loop.shard_range`) through :func:`probe.recording.loop.record_batches`, the loop that
``record`` itself runs, and returns its accumulators' state dicts (plus the sample maps when the
shard holds some of the first ``samples`` images) instead of writing files.

The driver takes the results as they finish (``ray.wait``) and merges them in order of their first
image (a result that arrives early waits for its predecessors), so the run is bit for bit the
:func:`probe.rundir.merge.merge_runs` of the same shards recorded one at a time with ``--shard I/N``
(except for the IoU pass's counts below, which such a merge drops).
Counts and histograms are exact; float sums equal a single-process run's up to float rounding.

When the IoU pass applies (:mod:`probe.recording.iou_pass`, ``settings.iou_pass``), the driver
computes the thresholds from the merged statistics and runs a second round of tasks, one per shard
(:func:`count_iou_shard`), that count each shard's pixels above them; their integer counts add
exactly into the run's. (Shards recorded apart and merged with ``merge`` cannot do this: each
shard's thresholds are its own.)

Failures: a task whose worker process dies (killed, out of memory, machine lost) is run again by
Ray, up to ``max_retries`` times. A task has no side effect (it writes nothing), each shard's
result is taken once, and before writing the driver checks that the shards' spans cover
``[0, n)`` exactly once and that the image count is ``n``. Errors raised by the recording itself
(bad data, NaN outputs) are not retried: they would only recur.

Every worker must see the same model and data: on a cluster, the checkpoint (or weights file) and
a ``folder:`` dataset must exist at the same absolute path on every machine, and gateprobe must be
installed there. Each worker checks that the weights it built hash to the driver's
(``weights_sha256``) and refuses otherwise, which is also why a ``--random-init`` registry model
is refused: each worker would draw other random weights. Save it with
:func:`probe.save_checkpoint` and pass the folder instead.
"""
from __future__ import annotations

import socket
from pathlib import Path

from tqdm.auto import tqdm

from ..data import dataset_from_spec, parse_data
from ..devices import resolve_device
from ..errors import ModelError, SettingsError
from ..hooks import UserState
from ..rundir.folder import prepare_run_dir, replaces_safely, write_manifest
from ..rundir.run import INPUTS, Run
from ..rundir.samples import SampleStore
from ..rundir.settings import RecordSettings
from ..rundir.state import new_layer_stats
from ..rundir.write import write_run
from ..stats.layer_stats import IouCounts
from .budget import check_memory
from .iou_pass import IouPass, iou_thresholds, new_counts, pass_layers
from .loop import (build_recorder, check_seed, checked_count, count_iou_batches, record_batches, shard_range,
                   with_values)
from .manifest import new_manifest, weights_sha256

INSTALL_HINT = "pip install 'gateprobe[ray]'"

_WORKER_MODEL: dict = {}  # (spec, weights sha256) -> model: one model per worker process
_WORKER_BINNINGS: dict = {}  # job -> calibrated gate binnings: one calibration per worker and job


def import_ray():
    """``ray``, or a one-line :class:`~probe.errors.SettingsError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SettingsError(f"--ray needs Ray, which is not installed; install it with {INSTALL_HINT}") from None
    return ray


def worker_spec(model_spec: str) -> str:
    """``model_spec`` with a local checkpoint folder or weights file made absolute (a worker's
    working directory is not the driver's)."""
    from ..models.sources import LOADERS

    prefix, _, rest = model_spec.partition(":")
    if prefix in LOADERS and rest and Path(rest).exists():
        return f"{prefix}:{Path(rest).resolve()}"
    if Path(model_spec).is_dir():
        return str(Path(model_spec).resolve())
    return model_spec


def _refuse_random_init(model_spec: str, random_init: bool) -> None:
    from ..models import list_models

    if random_init or (model_spec in list_models() and not Path(model_spec).is_dir()):
        raise SettingsError(f"--ray rebuilds the model on every worker, and a random-init registry model ({model_spec!r}) "
                         "would get other weights on each; save it first with probe.save_checkpoint("
                         "model, FOLDER) and pass --model FOLDER")


def _worker_model(spec: str, expected_sha256: str, trust_pickle: bool = False):
    key = (spec, expected_sha256, trust_pickle)
    if key not in _WORKER_MODEL:
        from ..models.sources import resolve_model

        _WORKER_MODEL.clear()
        model = resolve_model(spec, trust_pickle=trust_pickle)
        got = weights_sha256(model)
        if got != expected_sha256:
            raise ModelError(f"the worker on {socket.gethostname()} built {spec!r} with other weights (sha256 "
                             f"{got[:12]}, the driver's {expected_sha256[:12]}); make the same model available at the "
                             "same path on every machine")
        _WORKER_MODEL[key] = model
    return _WORKER_MODEL[key]


def _worker_recorder(job: dict, model, sites: list, data):
    """A fresh Recorder for one shard, its gate bins calibrated like :func:`probe.recording.loop.record`'s
    (:func:`probe.recording.loop.build_recorder`, on images 0.. whatever the shard). The calibration runs
    once per worker and job; later shards of the job reuse its binnings."""
    import json

    from ..stats.layer_stats import GatedLayerStats
    from .recorder import Recorder

    settings = RecordSettings.from_dict(job["settings"])
    key = json.dumps([job["model"], job["weights_sha256"], job["data"], job["n"], job["settings"]], sort_keys=True)
    binnings = _WORKER_BINNINGS.get(key)
    if binnings is None:
        calibrated = build_recorder(model, sites, data, job["n"], settings)
        binnings = {name: s.regions.binning for name, s in calibrated.stats.items() if isinstance(s, GatedLayerStats)}
        _WORKER_BINNINGS.clear()
        _WORKER_BINNINGS[key] = binnings
    return Recorder(model, sites, len(data.classes), settings, binnings=binnings)


def record_shard(job: dict, index: int, fault_hook=None) -> dict:
    """The Ray task: record shard ``(index, job["shards"])`` and return its accumulators.

    ``fault_hook(index, batch_positions)``, for tests, runs in the worker after every batch."""
    from ..adapters import find_sites

    settings = RecordSettings.from_dict(job["settings"])
    model = _worker_model(job["model"], job["weights_sha256"], job.get("trust_pickle", False)).to(job.get("device", "cpu"))
    data = dataset_from_spec(job["data"])
    positions = shard_range(job["n"], (index, job["shards"]))
    kept = SampleStore(max(0, min(settings.samples, positions.stop) - positions.start))
    hook = None if fault_hook is None else (lambda done: fault_hook(index, done))
    with UserState(model):  # calibration and every batch with the weights the driver hashed
        sites = find_sites(model, settings.layers, gate_activations=settings.gate_activations)
        recorder = _worker_recorder(job, model, sites, data)
        with recorder:
            size = record_batches(recorder, data, positions, job["n"], settings, kept, on_batch=hook)
    samples = None
    if kept.taken:
        import numpy as np

        samples = {"inputs": {name: np.concatenate(kept.inputs[name]) for name in INPUTS},
                   "maps": {key: np.concatenate(parts) for key, parts in kept.maps.items()}}
    return {"index": index, "start": positions.start, "stop": positions.stop, "n_images": len(positions),
            "image_size": size, "order": list(recorder.order), "host": socket.gethostname(),
            "state": {name: {k: v.cpu() for k, v in s.state_dict().items()} for name, s in recorder.stats.items()}, "samples": samples}


def count_iou_shard(job: dict, index: int, thresholds: dict, fault_hook=None) -> dict:
    """The Ray task of the IoU pass: count shard ``(index, job["shards"])``'s labelled pixels above
    ``thresholds`` (layer name -> float64 ``[C]``, from the merged statistics) in the batches its
    recording task ran, and return them (layer name -> the :class:`~probe.stats.layer_stats.IouCounts`
    state). ``fault_hook(index, batch_positions)``, for tests, runs in the worker after every batch."""
    from ..adapters import find_sites
    from ..devices import model_device

    settings = RecordSettings.from_dict(job["settings"])
    model = _worker_model(job["model"], job["weights_sha256"], job.get("trust_pickle", False)).to(job.get("device", "cpu"))
    data = dataset_from_spec(job["data"])
    positions = shard_range(job["n"], (index, job["shards"]))
    device = model_device(model)
    counts = {name: IouCounts(t.to(device), len(data.classes)) for name, t in thresholds.items()}
    hook = None if fault_hook is None else (lambda done: fault_hook(index, done))
    with UserState(model):  # every batch with the weights the driver hashed
        sites = find_sites(model, settings.layers, gate_activations=settings.gate_activations)
        with IouPass(model, sites, counts, len(data.classes), settings, device) as counting:
            count_iou_batches(counting, data, positions, job["n"], settings, on_batch=hook)
    return {"index": index, "host": socket.gethostname(),
            "counts": {name: {k: v.cpu() for k, v in c.state_dict().items()} for name, c in counts.items()}}


def _count_iou(ray, job_ref, shards: int, merged: dict, layers: list[str], settings: RecordSettings, n_labels: int,
               pending: dict, options: dict, desc: str, progress: bool, fault_hook=None) -> None:
    """The IoU pass of a Ray run: the thresholds of the ``merged`` statistics of ``layers``, one
    :func:`count_iou_shard` task per shard of the job ``job_ref`` (in Ray's object store, of
    ``shards`` shards; Ray ``options``: CPUs, GPUs, retries), their counts added into ``merged``.
    ``pending`` (ref -> shard) holds the tasks still running, for the caller to cancel on an error;
    the progress bar says ``desc``."""
    thresholds = iou_thresholds(merged, layers, settings.quantile)
    new_counts(merged, thresholds, n_labels)
    task = ray.remote(**options)(count_iou_shard)
    thresholds_ref = ray.put(thresholds)
    pending.update({task.remote(job_ref, i, thresholds_ref, fault_hook): i for i in range(shards)})
    done: set[int] = set()
    with tqdm(total=shards, desc=desc, unit="shard", disable=not progress) as bar:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ref)
            result = _get(ray, ref, index)
            if result["index"] != index or index in done:
                raise RuntimeError(f"the IoU pass of shard {index} came back twice or as shard {result['index']}")
            done.add(index)
            for name, state in result["counts"].items():
                if merged[name].iou.merge(IouCounts.from_state_dict(state)) is None:
                    raise RuntimeError(f"shard {index} (on {result['host']}) counted layer {name}'s IoU at other "
                                       "thresholds than the driver's")
            bar.update(1)


def check_coverage(spans: list[tuple[int, int]], n: int) -> None:
    """Raise unless the half-open ``spans`` cover ``[0, n)`` exactly once."""
    expected = 0
    for start, stop in sorted(spans):
        if start != expected:
            what = "overlap" if start < expected else "gap"
            raise RuntimeError(f"shards {what} at image {min(start, expected)}: spans {sorted(spans)} must cover "
                               f"[0, {n}) exactly once")
        expected = stop
    if expected != n:
        raise RuntimeError(f"shards cover [0, {expected}), not [0, {n})")


@replaces_safely
def record_ray(model_spec: str, data_spec, out: str | Path, n: int | None = None, shards: int | None = None,
               address: str | None = None, *, settings: RecordSettings | None = None, seed: int | None = None,
               overwrite: bool = False, progress: bool = True, command: str = "", num_cpus: int | None = None,
               max_retries: int = 3, random_init: bool = False, fault_hook=None, iou_fault_hook=None,
               trust_pickle: bool = False, device: str = "cpu", **setting_values) -> Run:
    """Record ``model_spec`` over ``n`` images of ``data_spec`` as ``shards`` Ray tasks into ``out``.

    Args:
        model_spec: a checkpoint folder, ``LOADER:PATH`` or ``package.module:function`` (not a
            registry name: random weights cannot be rebuilt identically on the workers).
        data_spec: a spec string (``scenes:64``, ``folder:PATH``) or a dataset with ``spec()``.
        shards: number of tasks (default: two per CPU of the cluster, at most ``n``).
        address: a Ray cluster (``auto``, ``ray://HOST:10001``, ``HOST:6379``); ``None`` or
            ``"local"`` starts a local instance with ``num_cpus`` CPUs (default: all) and shuts it
            down at the end. An instance already running in this process is used as it is.
        max_retries: times Ray runs a task again whose worker process died.
        fault_hook: for tests, ``fault_hook(shard_index, batch_positions)`` runs in the worker
            after every batch (e.g. to kill the worker once); ``iou_fault_hook`` the same in the
            IoU pass's tasks.
        The other arguments (``settings`` and single setting values) are :func:`probe.record`'s.

    Returns the :class:`~probe.Run`; its manifest lists every shard's span.
    """
    ray = import_ray()
    from ..adapters import find_sites
    from ..models.sources import resolve_model

    settings = with_values(settings, setting_values)
    check_seed(seed)
    _refuse_random_init(model_spec, random_init)
    model = resolve_model(model_spec, trust_pickle=trust_pickle)
    data = parse_data(data_spec, n=n, seed=seed) if isinstance(data_spec, str) else data_spec
    n = checked_count(data, n)
    if shards is not None and not 1 <= shards <= n:
        raise SettingsError(f"--shards {shards}: use between 1 and {n} shards for {n} images")
    settings = settings.resolved(bool(getattr(model, "accepts_sketch", False)), type(model).__name__,
                                 data.spec().get("kind", ""))
    sites = find_sites(model, settings.layers, gate_activations=settings.gate_activations)
    check_memory(sites, len(data.classes), settings, tuple(data[0]["image"].shape[-2:]))
    fresh = not Path(out).exists()
    out = prepare_run_dir(out, overwrite)
    gpu = resolve_device(device).type == "cuda"  # checked on the driver; each worker takes its own GPU
    job = {"model": worker_spec(model_spec), "weights_sha256": weights_sha256(model), "data": data.spec(), "n": n,
           "settings": settings.to_dict(), "trust_pickle": trust_pickle, "device": "cuda" if gpu else "cpu"}

    started = not ray.is_initialized()
    if started:
        try:
            _init(ray, None if address in (None, "local") else address, num_cpus)
        except BaseException:
            if fresh:
                out.rmdir()
            raise
    pending: dict = {}
    try:
        if shards is None:
            shards = max(1, min(n, 2 * int(ray.cluster_resources().get("CPU", 1))))
        job["shards"] = shards
        spans = [shard_range(n, (i, shards)) for i in range(shards)]
        manifest = new_manifest(model, data, n, settings, sites,
                                [{"shard": [i, shards], "start": r.start, "stop": r.stop} for i, r in enumerate(spans)],
                                min(settings.samples, n), command)
        manifest["ray"] = {"address": address or "local", "shards": shards, "max_retries": max_retries}
        write_manifest(out, manifest)

        options = {"num_cpus": 1, "num_gpus": 1 if gpu else 0, "max_retries": max_retries}
        task = ray.remote(**options)(record_shard)
        job_ref = ray.put(job)
        pending = {task.remote(job_ref, i, fault_hook): i for i in range(shards)}
        def new_stats() -> dict:
            return new_layer_stats(sites, len(data.classes), settings)

        merged, waiting, kept_parts, done = None, {}, {}, []
        next_index, order, size = 0, None, None
        with tqdm(total=shards, desc=f"record {out.name} (ray)", unit="shard", disable=not progress) as bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ref)
                result = _get(ray, ref, index)
                if result["index"] != index or index in waiting or any(d["index"] == index for d in done):
                    raise RuntimeError(f"shard {index} came back twice or as shard {result['index']}")
                span = spans[index]
                if (result["start"], result["stop"]) != (span.start, span.stop) or result["n_images"] != len(span):
                    raise RuntimeError(f"shard {index} recorded [{result['start']}, {result['stop']}), "
                                       f"not [{span.start}, {span.stop})")
                order, size = order or result["order"], size or result["image_size"]
                if (result["order"], result["image_size"]) != (order, size):
                    raise RuntimeError(f"shard {index} (on {result['host']}) saw other layers or image sizes than "
                                       "the first shard; every worker must run the same model and data")
                if result["samples"] is not None:
                    kept_parts[index] = result.pop("samples")
                waiting[index] = result
                while next_index in waiting:  # merge in shard order: deterministic, = merge_runs
                    part = waiting.pop(next_index)
                    stats = _load(new_stats(), part["state"])
                    if merged is None:
                        merged = stats
                    else:
                        for name, s in stats.items():
                            merged[name].merge(s)
                    done.append({"index": next_index, "start": part["start"], "stop": part["stop"],
                                 "n_images": part["n_images"], "host": part["host"]})
                    next_index += 1
                bar.update(1)
                bar.set_postfix(images=sum(d["n_images"] for d in done))
        check_coverage([(d["start"], d["stop"]) for d in done], n)
        if sum(d["n_images"] for d in done) != n or len(done) != shards:
            raise RuntimeError(f"the shards hold {sum(d['n_images'] for d in done)} images, not {n}")
        iou_layers = pass_layers(merged, settings.iou_pass)
        if iou_layers:
            _count_iou(ray, job_ref, shards, merged, iou_layers, settings, len(data.classes), pending, options,
                       f"iou pass {out.name} (ray)", progress, iou_fault_hook)
        kept = SampleStore(min(settings.samples, n))
        for index in sorted(kept_parts):
            part = kept_parts[index]
            kept.add_arrays(part["inputs"], part["maps"])
        manifest.update(n_images=n, layers=order, image_size=size, samples=kept.taken)
        manifest["ray"]["hosts"] = sorted({d["host"] for d in done})
        return write_run(out, manifest, merged, kept)
    finally:
        for ref in pending:  # an error left tasks running: stop them
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _init(ray, address: str | None, num_cpus: int | None) -> None:
    """Start a local instance (``address`` None) or connect to a cluster, with one-line errors."""
    if address and address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  (Ray Client)
        except ImportError:
            raise SettingsError(f"--ray {address}: ray:// addresses go through Ray Client; install it with "
                             "pip install 'ray[client]', or run on the head node with --ray auto") from None
    try:
        # "local": a new instance even where `ray start` left a cluster address behind
        ray.init(address=address or "local", num_cpus=num_cpus if address is None else None,
                 include_dashboard=False, log_to_driver=False, logging_level="warning")
    except ConnectionError as err:
        raise SettingsError(f"--ray {address}: cannot connect to a Ray cluster ({err}); start one with `ray start "
                         "--head`, or give --ray without an address for a local instance") from None


def _get(ray, ref, index: int) -> dict:
    """``ray.get`` with the worker's own error (a ValueError about the data, say) re-raised as is."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
    except ray.exceptions.WorkerCrashedError as err:
        raise RuntimeError(f"shard {index}: its worker died on every attempt ({err}); see the Ray logs") from None


def _load(stats: dict, state: dict) -> dict:
    """Fresh layer accumulators ``stats`` loaded with a shard's ``state`` (layer name -> state dict)."""
    for name, s in stats.items():
        s.load_state_dict(state[name])
    return stats
