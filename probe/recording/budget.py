"""What a recording will cost, said before it starts: the memory of its label statistics
(:func:`check_memory`, refused when it cannot fit) and the time the whole run will take,
extrapolated from the calibration pass (:func:`time_estimate`, refused beyond ``max_hours``).

Memory of the gated layers' statistics: see :func:`label_memory` (label cells of size
labels x channels x cells, not x bins, plus (group, label) sums at worst). The per-batch
``bincount`` covers only the labels present in the batch; more than 2**31 of its cells cannot be
indexed (int32 offsets): refused whatever the memory.
"""
from __future__ import annotations

import os

from ..errors import SettingsError

INT32_CELLS = 2 ** 31 - 1
GIB = 1024 ** 3
DEFAULT_MAX_HOURS = 168.0  # one week: beyond it, --max-hours must say so
RECORD_FACTOR = 2.0  # a recording pass (hooks + statistics) costs about this many calibration passes
IOU_PASS_FACTOR = 1.0  # the IoU pass (a forward with a compare and a scatter per layer): about one calibration pass


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def label_memory(sites, n_labels: int, settings, image_hw: tuple[int, int]) -> tuple[int, int]:
    """``(bytes, largest bincount cells)`` the gated layers' statistics need for ``n_labels`` classes.

    Per gated layer of ``C`` channels (:mod:`probe.stats.histograms`): region histograms
    ``4*C*bins`` int64 and sums ``G*4*C`` float64; label cells ``L*C*cells`` counts + offset sums
    (int32, int64 after 2**31 / w labelled pixels: counted as int32) with ``cells =
    label_cells(L, C, bins)`` (fine bins up to 8 labels, then ``4096 / L``, at least 8); the
    labelled total ``C*bins`` int64; the (group, label) gate and rank sums at worst ``G*L*(2C+3)``
    8-byte words (kept only for pairs that occur: an upper bound); the trivial features' cells; the co-moment
    ``C*C`` float64. Once per batch: the present labels' ``P*C*bins`` int64 bincount of the
    pure-torch path (the C++ kernel needs none; counted anyway, an upper bound) with ``P <=
    min(L, 16 * batch)`` and the one-hot ``B*H*W*(4+P)`` float32 (bounded at the image's size).
    Not counted: the joint trivial-feature counts (:mod:`probe.stats.joint`), 16 bytes per
    (group, cell, label) that occurs at a resolution, which depends on the data (at most
    ``G * 4096 * L`` and the labelled cells seen)."""
    from ..stats.histograms import label_cells
    from ..stats.layer_stats import TRIVIAL_FEATURES

    h, w = image_hw
    bins, groups, batch = settings.bins, settings.groups, settings.batch_size
    present = min(n_labels, 16 * batch)
    n_trivial = len(TRIVIAL_FEATURES)
    state = peak = cells = 0
    for site in sites:
        if site.kind != "gated":
            continue
        c = max(1, int(site.channels))
        layer_cells = label_cells(n_labels, c, bins)
        trivial_cells = label_cells(n_labels, n_trivial, bins)
        state += (4 * c * bins * 8 + groups * 4 * (c + 1) * 8 + n_labels * c * layer_cells * 8 + c * bins * 8
                  + groups * n_labels * (2 * c + 3) * 8 + n_labels * n_trivial * trivial_cells * 8 + c * c * 8)
        cells = max(cells, present * c * bins)
        peak = max(peak, (present + 4) * c * bins * 8 + batch * h * w * (4 + present) * 4 * 2 + batch * present * c * 4)
    return state + peak, cells


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 1024 ** 2:.0f} MiB"


def check_memory(sites, n_labels: int, settings, image_hw: tuple[int, int]) -> int:
    """Refuse (:class:`SettingsError`) a recording whose statistics cannot fit; returns the bytes."""
    need, cells = label_memory(sites, n_labels, settings, image_hw)
    channels = sum(int(s.channels) for s in sites if s.kind == "gated")
    fix = ("merge rare classes into fewer, record fewer --layers, or lower --batch-size")
    if cells > INT32_CELLS:
        raise SettingsError(f"{n_labels} classes x {channels} gate channels x {settings.bins} bins needs "
                            f"{cells:,} histogram cells per batch and layer, beyond the 2**31 a "
                            f"histogram can index; {fix}")
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise SettingsError(f"{n_labels} classes over {channels} gate channels need about {_size(need)} of memory "
                            f"for the label statistics, more than the {_size(free)} available; {fix}")
    return need


def time_estimate(seconds_per_image: float, images: int, iou_images: int = 0) -> float:
    """Seconds a recording of ``images`` images, and its IoU pass over ``iou_images`` images
    (:mod:`probe.recording.iou_pass`; 0: none), should take, from the calibration's time per image."""
    return seconds_per_image * (RECORD_FACTOR * images + IOU_PASS_FACTOR * iou_images)


def estimate_line(images: int, seconds_per_image: float, build_seconds: float = 0.0, iou_images: int = 0) -> str:
    """The line printed before a recording: the time of ``images`` images at ``seconds_per_image``
    of the calibration pass and of the IoU pass over ``iou_images`` images (0: none), plus
    ``build_seconds`` of the C++ statistics kernel's build that the recording will wait for
    (:func:`probe.stats.native_build.pending_build_seconds`; 0: none)."""
    recording = time_estimate(seconds_per_image, images, iou_images)
    line = (f"estimate: recording {images:,} images takes about {duration(recording + build_seconds)} "
            f"({seconds_per_image * 1000:.1f} ms per image on the calibration pass")
    if iou_images:
        line += (f"; including about {duration(time_estimate(seconds_per_image, 0, iou_images))} for the IoU pass, "
                 f"a second forward over {iou_images:,} images that makes the IoU exact")
    if build_seconds > 0:
        line += (f"; including about {duration(build_seconds)} to build the C++ statistics kernel, "
                 "once per machine")
    return line + ")"


def duration(seconds: float) -> str:
    """``seconds`` in words: 40 s, 12 min, 3.5 h, 9 days, 31 years."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365.25 * 86400):,.0f} years"


def check_duration(estimate: float, images: int, max_hours: float | None) -> None:
    """Refuse a recording estimated to run longer than ``max_hours`` (None or 0: no bound)."""
    import math

    if max_hours is not None and (isinstance(max_hours, bool) or not isinstance(max_hours, (int, float))
                                  or not math.isfinite(max_hours) or max_hours < 0):
        raise SettingsError(f"--max-hours must be a number >= 0 (0: no limit), not {max_hours!r}")
    if max_hours and estimate > max_hours * 3600:
        raise SettingsError(f"recording {images:,} images would take about {duration(estimate)} (estimated from the "
                            f"calibration pass), beyond --max-hours {max_hours:g}; lower --n, or pass a larger "
                            "--max-hours (0: no limit) if you mean it")
