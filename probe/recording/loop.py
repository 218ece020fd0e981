"""``record``: run a model over data with the recorder attached and write a run directory."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import find_sites
from ..data import collate, parse_data
from ..devices import autocast, batch_to, describe, model_device, resolve_device
from ..errors import SettingsError, UserModelError
from ..hooks import with_user_state
from ..rundir.folder import check_new_run_dir, prepare_run_dir, replaces_safely, write_manifest
from ..rundir.run import Run
from ..rundir.samples import SampleStore
from ..rundir.settings import RecordSettings
from ..rundir.state import stats_to_cpu
from ..rundir.write import write_run
from ..stats import native_build
from .budget import DEFAULT_MAX_HOURS, check_duration, check_memory, estimate_line, time_estimate
from .calibration import calibrate_binnings
from .iou_pass import IouPass, holds_counts, iou_thresholds, new_counts, pass_layers
from .manifest import new_manifest
from .recorder import Recorder
from .resume import Checkpointer, clear_progress, open_for_resume, restore


def checked_count(data, n: int | None) -> int:
    """The number of images to record (``n``, default all of ``data``), checked: one clear line
    for what is wrong."""
    n = len(data) if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SettingsError(f"--n must be an integer >= 1, not {n!r}")
    if n > len(data):
        raise SettingsError(f"--n {n} is larger than the data ({len(data)} images); lower --n or add images")
    return n


def check_seed(seed) -> None:
    """A data or weights seed: ``None`` (the default) or an integer in ``[0, 2**32)``."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32):
        raise SettingsError(f"--seed must be an integer from 0 to {2 ** 32 - 1}, not {seed!r}")


def shard_range(n: int, shard: tuple[int, int] | None) -> range:
    """Positions ``[0, n)`` of shard ``(i, N)``: the i-th of N contiguous, disjoint slices."""
    if shard is None:
        return range(n)
    i, count = shard
    if not 0 <= i < count:
        raise SettingsError(f"--shard {i}/{count}: I must satisfy 0 <= I < N")
    return range(i * n // count, (i + 1) * n // count)


@replaces_safely
@with_user_state
def record(model: nn.Module, data, out: str | Path, n: int | None = None, *, settings: RecordSettings | None = None,
           seed: int | None = None, shard: tuple[int, int] | None = None, overwrite: bool = False,
           resume: bool = False, checkpoint_every: int | None = None, checkpoint_seconds: float | None = 30.0,
           progress: bool = True, command: str = "", max_hours: float | None = DEFAULT_MAX_HOURS,
           device: str | torch.device | None = None, **setting_values) -> Run:
    """Record ``model`` over ``n`` images of ``data`` into the run directory ``out``.

    Args:
        model: follows ``model(image, hole, sketch=None)``; its gated/partial layers are found
            through :mod:`probe.adapters`.
        data: a dataset yielding gateprobe items, or a spec string (``scenes:64``, ``folder:PATH``).
        n: images to record (default: all of ``data``; Scenes strings default to 1024).
        settings: a :class:`~probe.rundir.settings.RecordSettings` (default: its defaults);
            ``setting_values`` (``batch_size=``, ``samples=``, ``quantile=``, ``bins=``,
            ``calibration=``, ``groups=``, ``border=``, ``sketch=``, ``layers=``, ``iou_pass=``)
            replace single fields.
        seed: data seed for spec strings (Scenes default: the held-out seed).
        shard: ``(i, N)`` records only the i-th of N contiguous slices of the ``n`` images
            (merge the shard runs with :func:`probe.rundir.merge.merge_runs`).
        overwrite: replace a run already in ``out`` (kept, and put back, if recording fails).
        resume: continue the incomplete run in ``out`` from its last checkpoint (see
            :mod:`probe.recording.resume`); the same model, data and settings are required.
        checkpoint_every, checkpoint_seconds: write a checkpoint for ``resume`` once that many
            batches or seconds have passed since the last one, whichever comes first (None or 0
            turns a trigger off; both off: no checkpoints).
        max_hours: refuse a recording that the calibration pass says would take longer (None or
            0: no bound); with ``progress`` the estimate is printed either way.
        device: where to record (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; the model is moved
            there); None: where the model is. The forward runs in ``settings.dtype`` (autocast);
            the statistics accumulate on the device in float32/float64/int64 and move to the CPU
            only to be written.

    Before anything is written into ``out``, the statistics' memory is estimated (refused when it
    cannot fit, :mod:`probe.recording.budget`) and the calibration pass is timed. After the
    recording pass, the IoU pass (:mod:`probe.recording.iou_pass`, ``settings.iou_pass``) runs over
    the same images when it applies; the estimate and ``max_hours`` include it.

    Returns the :class:`~probe.rundir.run.Run`.
    """
    settings = with_values(settings, setting_values)
    device = model_device(model) if device is None else resolve_device(device)
    model.to(device)
    if resume and overwrite:
        raise SettingsError("--resume continues the run in --out and --overwrite replaces it; pass only one")
    check_seed(seed)
    if isinstance(data, str):
        data = parse_data(data, n=n, seed=seed)
    n = checked_count(data, n)
    settings = settings.resolved(bool(getattr(model, "accepts_sketch", False)), type(model).__name__,
                                 data.spec().get("kind", ""))
    positions = shard_range(n, shard)
    if not len(positions):
        raise SettingsError(f"--shard {shard[0]}/{shard[1]} holds no images: {n} images split into {shard[1]} "
                            f"shards; use at most {n} shards")
    first = collate([data[positions.start]])
    try:
        sites = find_sites(model, settings.layers, gate_activations=settings.gate_activations,
                           probe=(first["image"], first["hole"]))
    except SystemExit as err:  # the model's forward called sys.exit in the discovery pass (its errors are handled there)
        raise UserModelError(f"your model raised SystemExit in {type(model).__name__} during the layer discovery "
                             f"pass: sys.exit({err.code!r})", "", err) from err
    manifest = new_manifest(model, data, n, settings, sites,
                            [{"shard": list(shard) if shard else [0, 1], "start": positions.start,
                              "stop": positions.stop}], min(settings.samples, len(positions)), command)
    manifest["device"] = describe(device)
    resumed = open_for_resume(out, manifest) if resume else None
    if resumed is None:
        check_new_run_dir(out, overwrite)  # refuse before the calibration pass, not after it
    check_memory(sites, len(data.classes), settings, tuple(data[0]["image"].shape[-2:]))
    # every layer's statistics use the C++ kernel on the CPU (gated: the counts and the covariance, partial:
    # the mask covariance): not built yet, it is built during the calibration pass, and the estimate counts
    # what it still needs
    native_build.start_background_build(device)
    began = time.perf_counter()
    recorder = build_recorder(model, sites, data, n, settings, device)
    per_image = (time.perf_counter() - began) / min(n, settings.calibration)
    start, iou_start = positions.start, positions.start
    if resumed is not None and resumed["progress"] is not None:
        start = resumed["progress"]["position"]
        iou_start = resumed["progress"]["iou_position"] or positions.start
    iou_layers = pass_layers(recorder.stats, settings.iou_pass)
    iou_images = positions.stop - iou_start if iou_layers else 0
    build = native_build.pending_build_seconds(device)
    estimate = time_estimate(per_image, positions.stop - start, iou_images) + build
    if progress:
        print(estimate_line(positions.stop - start, per_image, build, iou_images), file=sys.stderr, flush=True)
    check_duration(estimate, positions.stop - start, max_hours)
    if resumed is None:
        out = prepare_run_dir(out, overwrite)
        write_manifest(out, manifest)
    else:
        out, manifest = Path(out), resumed["manifest"]
    kept = SampleStore(manifest["samples"])
    start, image_size = positions.start, None
    if resumed is not None and resumed["progress"] is not None:
        start, image_size = restore(resumed["progress"], recorder, kept), resumed["progress"]["image_size"]
    todo = range(start, positions.stop)
    checkpoint = Checkpointer(out, recorder, kept, image_size, checkpoint_every, checkpoint_seconds)
    if todo and checkpoint.enabled:
        checkpoint.image_size = list(data[start]["image"].shape[-2:])
    with recorder, tqdm(total=len(positions), initial=start - positions.start, desc=f"record {out.name}",
                        unit="img", disable=not progress) as bar:
        size = record_batches(recorder, data, todo, n, settings, kept,
                              on_batch=lambda done: (bar.update(len(done)), checkpoint(done)))
    if iou_layers:
        iou_pass(recorder, iou_layers, data, positions, iou_start, n, settings, checkpoint,
                 desc=f"iou pass {out.name}", progress=progress)
    manifest["image_size"] = size or image_size
    manifest.update(n_images=len(positions), layers=recorder.order)
    run = write_run(out, manifest, stats_to_cpu(recorder.stats), kept)
    clear_progress(out)
    return run


def iou_pass(recorder: Recorder, layers: list[str], data, positions: range, start: int, n: int,
             settings: RecordSettings, checkpoint: Checkpointer, desc: str, progress: bool = True) -> None:
    """:func:`record`'s IoU pass over its ``positions`` after the recording pass (``recorder``'s hooks
    removed): the thresholds of the recorded statistics of ``layers``
    (:func:`~probe.recording.iou_pass.iou_thresholds`), then every batch into the layers'
    :class:`~probe.stats.layer_stats.IouCounts`, from ``start`` when a checkpoint of this pass holds
    the counts up to there for the same thresholds, else from the first image. ``checkpoint`` goes
    on writing checkpoints, with the pass's position (``--resume`` continues the pass from there);
    the progress bar says ``desc``."""
    stats = recorder.stats
    thresholds = iou_thresholds(stats, layers, settings.quantile)
    if start == positions.start or not holds_counts(stats, thresholds):
        new_counts(stats, thresholds, len(data.classes))
        start = positions.start
    checkpoint.iou_pass_of(positions.stop)
    counts = {layer: stats[layer].iou for layer in layers}
    with IouPass(recorder.model, recorder.sites, counts, len(data.classes), settings, recorder.device) as counting, \
            tqdm(total=len(positions), initial=start - positions.start, desc=desc, unit="img",
                 disable=not progress) as bar:
        count_iou_batches(counting, data, range(start, positions.stop), n, settings,
                          on_batch=lambda done: (bar.update(len(done)), checkpoint(done)))


def with_values(settings: RecordSettings | None, values: dict) -> RecordSettings:
    """``settings`` (default: the defaults) with the fields in ``values`` replaced."""
    settings = settings or RecordSettings()
    unknown = sorted(set(values) - set(settings.to_dict()))
    if unknown:
        raise TypeError(f"record() got unknown settings {unknown}; the settings are {list(settings.to_dict())}")
    return settings.replace(**values) if values else settings


def build_recorder(model: nn.Module, sites: list, data, n: int, settings: RecordSettings,
                   device: torch.device | None = None) -> Recorder:
    """A :class:`Recorder` for ``settings`` on ``device`` (default: the model's), its gate bins
    calibrated on the first ``settings.calibration`` images of ``data`` (the same images, in the
    same batches of ``settings.batch_size``, for every shard)."""
    device = model_device(model) if device is None else device
    first, size = range(min(n, settings.calibration)), settings.batch_size
    batches = [batch_to(collate([data[i] for i in first[j:j + size]], len(data.classes)), device)
               for j in range(0, len(first), size)]
    with autocast(device, settings.dtype):
        binnings = calibrate_binnings(model, sites, batches, settings.sketch, settings.bins, settings.quantile)
    return Recorder(model, sites, len(data.classes), settings, binnings=binnings, device=device)


def batches(data, positions: range, n: int, settings: RecordSettings, device: torch.device):
    """The items of ``data`` at ``positions`` (of the ``n`` images of the run), ``settings.batch_size``
    at a time from ``positions.start``: yields ``(batch_positions, batch, group)``, the collated batch
    on ``device`` and each image's group ``[B]`` (``settings.group_of`` its global position). The
    recording pass and the IoU pass run over the same batches."""
    batch_size = settings.batch_size
    for start in range(positions.start, positions.stop, batch_size):
        batch_positions = range(start, min(start + batch_size, positions.stop))
        batch = batch_to(collate([data[i] for i in batch_positions], len(data.classes)), device)
        group = torch.tensor([settings.group_of(p, n) for p in batch_positions], dtype=torch.int64, device=device)
        yield batch_positions, batch, group


def record_batches(recorder: Recorder, data, positions: range, n: int, settings: RecordSettings,
                   kept: SampleStore, on_batch=None) -> list[int]:
    """Feed ``recorder`` (inside its ``with``) the items of ``data`` at ``positions`` (of the ``n``
    images of the run) in :func:`batches`: the first ``kept.k`` images go into ``kept``, and
    ``on_batch(batch_positions)`` runs after each batch. Returns the image size ``[H, W]``. Shared
    by :func:`record` and the Ray workers of :mod:`probe.recording.distributed`."""
    use_sketch = settings.sketch
    size = None
    for batch_positions, batch, group in batches(data, positions, n, settings, recorder.device):
        size = list(batch["image"].shape[-2:])
        want = max(0, kept.k - kept.taken)
        output = recorder.forward(batch["image"], batch["hole"], batch["sketch"] if use_sketch else None,
                                  batch["labels"], group, capture=min(want, len(batch_positions)))
        if want:
            kept.add(batch, output, recorder.captured, use_sketch)
        if on_batch is not None:
            on_batch(batch_positions)
    return size


def count_iou_batches(iou_pass: IouPass, data, positions: range, n: int, settings: RecordSettings,
                      on_batch=None) -> None:
    """The IoU pass (:mod:`probe.recording.iou_pass`) over the items of ``data`` at ``positions``, in
    the batches of :func:`record_batches`: feed ``iou_pass`` (inside its ``with``) each batch, then
    run ``on_batch(batch_positions)``. Shared by :func:`record` and the Ray workers."""
    for batch_positions, batch, group in batches(data, positions, n, settings, iou_pass.device):
        iou_pass.forward(batch["image"], batch["hole"], batch["sketch"] if settings.sketch else None,
                         batch["labels"], group)
        if on_batch is not None:
            on_batch(batch_positions)


def record_baseline(model: nn.Module, data, out: str | Path, n: int | None = None, *, seed: int = 0,
                    **record_options) -> Run:
    """Record the random-init twin of ``model`` (same registry architecture and config, weights
    drawn with ``seed``) over the same data and settings into ``OUT-baseline`` beside ``out``, and
    link the two manifests (``baseline`` in the trained run's, ``baseline_of`` in the twin's).
    ``out`` must already hold the trained run; ``record_options`` are :func:`record`'s."""
    name, config = getattr(model, "registry_name", None), getattr(model, "config", None)
    if not name or not isinstance(config, dict):
        raise SettingsError(f"--with-baseline needs a model from gateprobe's registry or a checkpoint folder; "
                            f"{type(model).__name__} has no registry name and config: record its random-init twin "
                            "yourself and pass it with --baseline")
    from ..models.registry import random_twin

    twin = random_twin(name, config, seed)
    out = Path(out)
    trained = Run(out)
    twin_out = out.with_name(f"{out.name}-baseline")
    baseline = record(twin, data, twin_out, n, **record_options)
    write_manifest(twin_out, dict(baseline.manifest, baseline_of=f"../{out.name}"))
    write_manifest(out, dict(trained.manifest, baseline=f"../{twin_out.name}"))
    return Run(twin_out)
