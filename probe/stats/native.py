"""One pass over a gated layer's logit map: :func:`accumulate_gate_batch`.

It bins every logit and counts it into the region histogram ``[R, C, bins]`` and into the label
cells ``[L, C, cells]`` (with the fine total ``[C, bins]`` of the labelled pixels), in place, and,
if asked, sums a per-bin rank (the calibrated CDF of the bin, :meth:`probe.stats.binning.Binning.rank_table`)
over each image's pixels of each present label (the gate sums per image and region or label are one
matrix product, done by the caller). Two paths
with the same semantics:

* ``"native"``: a C++ kernel (``native_kernel.cpp``, built and loaded by
  :mod:`probe.stats.native_build`), parallel over channels on torch's intra-op threads; CPU
  tensors only. ``GATEPROBE_NATIVE=0`` turns it off; if it cannot be built, one line on stderr
  says why and the torch path is used.
* ``"torch"``: whole-tensor torch operations on any device (``bincount``, ``scatter_add``,
  ``index_add_``).

Logits are binned by a :class:`probe.stats.binning.Binning`: the segment of ``x`` is the number of
inner knots ``<= x``, then ``((x - base) * scale) + start``, each step a separately rounded float32
operation (never a fused multiply-add: torch's ``addcmul`` is one on AVX2 CPUs), clamped to
``[0, bins - 1]`` and truncated; the counts of the two paths are bit-identical. A NaN logit raises
:class:`probe.errors.NumericalError` before anything is written.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import NumericalError
from .binning import Binning, has_nan
from .native_build import kernel_module, native_available, path

# ---------------------------------------------------------------------------------------------- checks
def _need(t: Tensor | None, name: str, dtypes: tuple, shape: tuple | None = None) -> Tensor:
    if t is None:
        raise ValueError(f"{name} is required here")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(str(d) for d in dtypes)}, not {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, not {list(t.shape)}")
    return t


def _in_place(t: Tensor | None, name: str, dtypes: tuple, shape: tuple) -> Tensor:
    _need(t, name, dtypes, shape)
    if not t.is_contiguous():
        raise ValueError(f"{name} is accumulated in place and must be contiguous")
    return t


def _ids(t: Tensor, name: str, b: int, n: int, lo: int, hi: int, check: bool = True) -> Tensor:
    """``t`` as ``[B, N]`` (any integer dtype, any shape of B*N elements), checked in [lo, hi) (not
    with ``check=False``: ids gateprobe made itself, and no device value read)."""
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.numel() != b * n:
        raise ValueError(f"{name} must be an integer tensor of {b} x {n} pixels, not {t.dtype} {list(t.shape)}")
    t = t.reshape(b, n)
    if not t.numel() or not check:
        return t
    low, high = (int(v) for v in torch.aminmax(t))
    if low < lo or high >= hi:
        raise ValueError(f"{name} values must lie in [{lo}, {hi}), found [{low}, {high}]")
    return t


_INTS = (torch.int32, torch.int64)
DENSE_RANK_SLOTS = 64  # the torch path sums ranks by a product with the labels' one-hot below this many


# ---------------------------------------------------------------------------------------------- entry
def accumulate_gate_batch(logits: Tensor, binning: Binning, *,
                          region: Tensor | None = None, region_counts: Tensor | None = None,
                          n_regions: int = 0, label: Tensor | None = None,
                          n_present: int = 0, label_rows: Tensor | None = None, cell_of_bin: Tensor | None = None,
                          offset_of_bin: Tensor | None = None, cell_counts: Tensor | None = None,
                          cell_moments: Tensor | None = None, total: Tensor | None = None,
                          rank_table: Tensor | None = None, force_path: str | None = None, check_ids: bool = True,
                          nonfinite: Tensor | None = None) -> Tensor | None:
    """Accumulate one batch of a gated layer's counts in place.

    ``logits`` float32 ``[B, C, N]`` (or ``[B, C, h, w]``) binned by ``binning`` (``C`` channels, ``bins``).
    Regions (if ``region`` ``[B, N]`` in ``[0, n_regions)`` is given): ``region_counts`` int32 or
    int64 ``[R, C, bins]`` += 1 per pixel at ``[region, c, bin]`` (the caller keeps int32 counts
    from overflowing). Labels (if ``label`` int ``[B, N]`` in ``[-1, n_present)`` is given; -1:
    ignored pixel): for each labelled pixel ``cell_counts`` and ``cell_moments`` (both int32 or
    both int64, ``[L, C, cells]``) get 1 and ``offset_of_bin[c, bin]``
    at ``[label_rows[label], c, cell_of_bin[c, bin]]``, and ``total`` int64 ``[C, bins]`` gets 1 at
    ``[c, bin]``. With ``rank_table`` float64 ``[C, bins]`` (and labels) it returns float64
    ``[B, P, C]``: the sum of ``rank_table[c, bin]`` over each image's pixels of each present label
    (None otherwise). ``force_path``: ``"native"`` or ``"torch"`` (default: native for CPU tensors
    when available).

    On the torch path (any device) nothing reads a device value when ``check_ids`` is False (the ids
    are gateprobe's own, in range by construction) and ``nonfinite`` (a bool tensor ``[]`` on the
    logits' device) is given: a NaN logit then sets ``nonfinite`` instead of raising (its pixel is
    counted in bin 0) and the caller raises once it reads the flag (see :class:`probe.recording.recorder.Recorder`).
    """
    if logits.dim() == 4:
        logits = logits.flatten(2)
    _need(logits, "logits", (torch.float32,))
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, C, N] or [B, C, h, w], not {list(logits.shape)}")
    b, c, n = logits.shape
    bins = binning.bins
    if not 1 <= bins < 2 ** 24:  # bins - 1 exact in float32
        raise ValueError(f"bins must be in [1, 2**24), not {bins}")
    if binning.channels != c:
        raise ValueError(f"a binning of {binning.channels} channels for logits of {c}")
    r = p = 0
    if region is not None:
        r = int(n_regions)
        region = _ids(region, "region", b, n, 0, r, check_ids)
        _in_place(region_counts, "region_counts", _INTS, (r, c, bins))
    if label is not None:
        p = int(n_present)
        label = _ids(label, "label", b, n, -1, p, check_ids)
        cell_counts = _need(cell_counts, "cell_counts", _INTS)
        if cell_counts.dim() != 3 or cell_counts.shape[1] != c:
            raise ValueError(f"cell_counts must be [L, {c}, cells], not {list(cell_counts.shape)}")
        n_rows, cells = cell_counts.shape[0], cell_counts.shape[2]
        _in_place(cell_counts, "cell_counts", _INTS, (n_rows, c, cells))
        _in_place(cell_moments, "cell_moments", (cell_counts.dtype,), (n_rows, c, cells))
        _in_place(total, "total", (torch.int64,), (c, bins))
        label_rows = _ids(_need(label_rows, "label_rows", (torch.int64,), (p,)), "label_rows", 1, p, 0, n_rows,
                             check_ids)
        cell_of_bin = _ids(_need(cell_of_bin, "cell_of_bin", (torch.int64,), (c, bins)), "cell_of_bin", c, bins,
                              0, cells, check_ids)
        offset_of_bin = _need(offset_of_bin, "offset_of_bin", (torch.int64,), (c, bins))
        label_rows = label_rows.reshape(p)
        if rank_table is not None:
            _need(rank_table, "rank_table", (torch.float64,), (c, bins))
            rank_table = rank_table.contiguous()
    rank_sums = None
    if label is not None and rank_table is not None:
        rank_sums = torch.zeros(b, p, c, dtype=torch.float64, device=logits.device)

    chosen = force_path or path(logits.device)
    if chosen == "native":
        if logits.device.type != "cpu" or not native_available():
            raise RuntimeError("the native statistics kernel is unavailable here (CPU tensors only; is it built, "
                               "or is GATEPROBE_NATIVE=0?)")
        _native(logits.contiguous(), binning, region, region_counts, label, label_rows, cell_of_bin, offset_of_bin,
                cell_counts, cell_moments, total, rank_table, rank_sums)
        return rank_sums
    if chosen != "torch":
        raise ValueError(f"force_path must be None, 'native' or 'torch', not {force_path!r}")
    _torch(logits, binning, region, region_counts, r, label, p, label_rows,
           cell_of_bin, offset_of_bin, cell_counts, cell_moments, total, rank_table, rank_sums, nonfinite)
    return rank_sums


def _nan_error() -> NumericalError:
    return NumericalError("NaN gate logits (a NaN bin position); check the model's weights and inputs")


def _native(logits, binning, region, region_counts, label, label_rows, cell_of_bin, offset_of_bin, cell_counts,
            cell_moments, total, rank_table, rank_sums) -> None:
    i32 = lambda t: None if t is None else t.to(torch.int32).contiguous()  # noqa: E731
    tables = (binning.inner.to(logits.device), binning.base.to(logits.device), binning.scale.to(logits.device),
              binning.start.to(logits.device))
    ok = kernel_module().accumulate_gate_batch(
        logits, *tables, binning.bins, i32(region), region_counts, i32(label),
        None if label is None else label_rows.contiguous(), None if label is None else cell_of_bin.contiguous(),
        None if label is None else offset_of_bin.contiguous(), cell_counts, cell_moments, total, rank_table, rank_sums)
    if not ok:  # nothing was accumulated
        raise _nan_error()


def _torch(logits, binning, region, region_counts, r, label, p, label_rows, cell_of_bin,
           offset_of_bin, cell_counts, cell_moments, total, rank_table, rank_sums, nonfinite=None) -> None:
    b, c, n = logits.shape
    bins, device = binning.bins, logits.device
    if nonfinite is None:
        if has_nan(logits):
            raise _nan_error()
    else:  # deferred: flag it, and bin the NaN as 0 so that every index stays in range
        if logits.numel():
            nonfinite |= torch.isnan(logits.amax())
        logits = torch.nan_to_num(logits, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    itype = torch.int32 if max(r * (p + 1), r, p + 1, 1) * c * bins < 2 ** 31 else torch.int64
    # the bin, then c * bins + bin: the index into one [C, bins] block (contiguous: the flat indices are views)
    flat = binning.bin(logits.contiguous(), check_nan=False).to(itype)
    flat += torch.arange(c, dtype=itype, device=device).view(1, c, 1) * bins
    block = c * bins
    labelled = label is not None and p
    if region is not None and labelled and r * (p + 1) * bins <= 2 * b * n:
        # one count of (region, label slot, bin), when it is no larger than two per pixel (as the kernel)
        slot = region.to(itype) * (p + 1) + label.to(itype) + 1
        joint = _count((flat + (slot * block).unsqueeze(1)).reshape(-1), r * (p + 1) * block).view(r, p + 1, c, bins)
        region_counts += joint.sum(1).to(region_counts.dtype)
        fine = joint.sum(0)[1:]
    else:
        if region is not None:
            index = flat + (region.to(itype) * block).unsqueeze(1)
            region_counts += _count(index.reshape(-1), r * block).view(r, c, bins).to(region_counts.dtype)
        if labelled:
            index = flat + ((label.to(itype) + 1) * block).unsqueeze(1)  # block 0: the ignored pixels, dropped
            fine = _count(index.reshape(-1), (p + 1) * block).view(p + 1, c, bins)[1:]
    if labelled:
        total += fine.sum(0)
        add_cells(cell_counts, cell_moments, label_rows, fine, cell_of_bin, offset_of_bin)
        if rank_sums is not None:  # [B, 1 + P, C]: slot 0 takes the ignored pixels
            # [B, C, N]; index_select takes the int32 indices as they are: 0.3 of take's time with .long() on the CPU
            ranks = rank_table.reshape(-1).index_select(0, flat.reshape(-1)).view(flat.shape)
            slot = label.long() + 1
            if p < DENSE_RANK_SLOTS:  # one float64 product with the slots' one-hot [B, N, 1 + P]
                onehot = torch.zeros(b, n, p + 1, dtype=torch.float64, device=device).scatter_(2, slot.unsqueeze(2), 1.0)
                rank_sums.copy_(torch.bmm(ranks, onehot)[:, :, 1:].transpose(1, 2))
            else:
                slots = torch.zeros(b, p + 1, c, dtype=torch.float64, device=device)
                slots.scatter_add_(1, slot.unsqueeze(2).expand(b, n, c), ranks.transpose(1, 2))
                rank_sums.copy_(slots[:, 1:])


def _count(index: Tensor, size: int) -> Tensor:
    """int64 ``[size]``: how often each of ``0 .. size-1`` occurs in ``index`` (in range). ``bincount``
    on the CPU; elsewhere an ``index_add_`` of ones, which (unlike CUDA's ``bincount``) reads no
    device value to size its output."""
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=size)
    return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(
        0, index.long(), torch.ones(1, dtype=torch.int64, device=index.device).expand(len(index)))


def fine_to_cells(fine: Tensor, cell_of_bin: Tensor, offset_of_bin: Tensor, cells: int) -> tuple[Tensor, Tensor]:
    """int64 ``(counts, offset sums)`` ``[P, C, cells]`` of fine counts ``fine`` ``[P, C, bins]``
    grouped by ``cell_of_bin`` / ``offset_of_bin`` ``[C, bins]`` (each fine bin's cell and offset in it)."""
    p, c, bins = fine.shape
    where = cell_of_bin.expand(p, c, bins)
    zeros = torch.zeros(p, c, cells, dtype=torch.int64, device=fine.device)
    return zeros.scatter_add(2, where, fine), zeros.scatter_add(2, where, fine * offset_of_bin)


def add_cells(cell_counts: Tensor, cell_moments: Tensor, rows: Tensor, fine: Tensor, cell_of_bin: Tensor,
              offset_of_bin: Tensor) -> None:
    """Add the fine counts ``fine`` ``[P, C, bins]`` of the labels at ``rows`` ``[P]`` to their cells
    (``cell_counts``/``cell_moments`` ``[L, C, cells]``, in place; see :func:`fine_to_cells`). On the
    CPU, a map of one cell per fine bin in order (offsets 0: 8 labels or fewer) adds ``fine`` as it
    is and leaves the moments (all 0) alone; elsewhere that check would read the device."""
    p, c, bins = fine.shape
    identity = (cell_counts.shape[2] == bins and fine.device.type == "cpu" and not bool(offset_of_bin.any())
                and bool((cell_of_bin == torch.arange(bins, device=fine.device)).all()))
    if identity:
        cell_counts.index_put_((rows,), fine.to(cell_counts.dtype), accumulate=True)
        return
    counts, moments = fine_to_cells(fine, cell_of_bin, offset_of_bin, cell_counts.shape[2])
    cell_counts.index_put_((rows,), counts.to(cell_counts.dtype), accumulate=True)
    cell_moments.index_put_((rows,), moments.to(cell_moments.dtype), accumulate=True)
