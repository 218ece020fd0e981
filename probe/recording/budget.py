"""What a recording will cost, said before it starts: the memory of its label statistics
(:func:`check_memory`, refused when it cannot fit) and the time the whole run will take,
extrapolated from the calibration pass (:func:`time_estimate`, refused beyond ``max_hours``).

Memory of one gated layer of ``C`` channels with ``K = L + 4`` conditions (``L`` classes, 4
regions), ``bins`` bins and ``G`` groups: histograms ``K*C*bins`` int64 plus sums ``G*K*C``
float64, and once per batch a ``bincount`` of the same ``L*C*bins`` size and the labels' one-hot
``B*H*W*K`` float32 (bounded above at the image's resolution). A histogram of more than 2**31
cells cannot be indexed (int32 offsets): refused whatever the memory.
"""
from __future__ import annotations

import os

from ..errors import SettingsError

INT32_CELLS = 2 ** 31 - 1
GIB = 1024 ** 3
DEFAULT_MAX_HOURS = 168.0  # one week: beyond it, --max-hours must say so
RECORD_FACTOR = 2.0  # a recording pass (hooks + statistics) costs about this many calibration passes


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
    """``(bytes, largest histogram cells)`` the gated layers' statistics need for ``n_labels`` classes."""
    conditions = n_labels + 4
    h, w = image_hw
    state = peak = cells = 0
    for site in sites:
        if site.kind != "gated":
            continue
        c = max(1, int(site.channels))
        layer_cells = conditions * c * settings.bins
        cells = max(cells, n_labels * c * settings.bins)
        state += layer_cells * 8 + settings.groups * conditions * (c + 1) * 8 + c * c * 8
        peak = max(peak, layer_cells * 8 + settings.batch_size * h * w * conditions * 4 * 2
                   + settings.batch_size * conditions * c * 4)
    return state + peak, cells


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 1024 ** 2:.0f} MiB"


def check_memory(sites, n_labels: int, settings, image_hw: tuple[int, int]) -> int:
    """Refuse (:class:`SettingsError`) a recording whose statistics cannot fit; returns the bytes."""
    need, cells = label_memory(sites, n_labels, settings, image_hw)
    channels = sum(int(s.channels) for s in sites if s.kind == "gated")
    fix = ("merge rare classes into fewer, record fewer --layers, or lower --batch-size")
    if cells > INT32_CELLS:
        raise SettingsError(f"{n_labels} classes x up to {cells // (n_labels * settings.bins)} gate channels x "
                            f"{settings.bins} bins is {cells:,} histogram cells per layer, beyond the 2**31 a "
                            f"histogram can index; {fix}")
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise SettingsError(f"{n_labels} classes over {channels} gate channels need about {_size(need)} of memory "
                            f"for the label statistics, more than the {_size(free)} available; {fix}")
    return need


def time_estimate(seconds_per_image: float, images: int) -> float:
    """Seconds a recording of ``images`` images should take, from the calibration's time per image."""
    return seconds_per_image * RECORD_FACTOR * images


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
