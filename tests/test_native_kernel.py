"""The fused statistics kernel (:mod:`probe.stats.native`): its C++ path and its pure-torch path give
bit-identical counts, both equal a slow numpy oracle that bins in the same float32 steps (segment
by counting inner knots, then subtract, multiply, add; also on logits exactly on and one ulp around
bin boundaries, where a fused multiply-add would bin differently), NaN raises without touching the counts, and
``GATEPROBE_NATIVE=0`` / a failed build fall back to the torch path."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from probe.errors import NumericalError
from probe.stats import native, native_build
from probe.stats.binning import Binning
from probe.stats.native import accumulate_gate_batch

COUNTS = ("region_counts", "cell_counts", "cell_moments", "total")


@pytest.fixture(scope="module")
def built():
    if not native_build.native_available():
        pytest.skip("the C++ statistics kernel cannot be built on this machine (see the line on stderr)")
    return native_build.kernel_module()


@pytest.fixture
def fresh_state():
    """Forget the loaded extension before and after a test that fakes a build (the next test loads the cache)."""
    native_build._reset()
    yield
    native_build._reset()


# ---------------------------------------------------------------------------------------------- inputs
def cells_of(rng, channels, bins, cells, jitter):
    """Per channel, ``cells`` contiguous runs of fine bins of random (unequal) widths: the cell of each
    bin and an offset in it (its position, or any non-negative integers with ``jitter``)."""
    cob = np.zeros((channels, bins), np.int64)
    oob = np.zeros((channels, bins), np.int64)
    for c in range(channels):
        cuts = np.sort(rng.choice(np.arange(1, bins), cells - 1, replace=False)) if cells > 1 else np.zeros(0, int)
        cob[c] = np.searchsorted(cuts, np.arange(bins), side="right")
        start = np.concatenate([[0], cuts])[cob[c]]
        oob[c] = rng.integers(0, 50, bins) if jitter else np.arange(bins) - start
    return torch.from_numpy(cob), torch.from_numpy(oob)


def random_binning(rng, channels, bins, segments):
    """Per channel, ``segments`` (at most ``bins``) segments with random float32 knots in about
    [-6, 8] and random bin counts (every one at least 1)."""
    segments = min(segments, bins)
    knots = np.zeros((channels, segments + 1))
    starts = np.zeros((channels, segments + 1), np.int64)
    for c in range(channels):
        lo = rng.uniform(-6, -1)
        knots[c] = np.sort(lo + np.cumsum(rng.uniform(0.05, 3, segments + 1)) - 0.05).astype(np.float32)
        cuts = np.sort(rng.choice(np.arange(1, bins), segments - 1, replace=False)) if segments > 1 else []
        starts[c] = np.concatenate([[0], cuts, [bins]])
    return Binning(torch.from_numpy(knots), torch.from_numpy(starts), bins)


def case(seed=0, b=3, c=5, n=97, bins=37, r=4, p=6, rows=9, cells=7, cell_dtype=torch.int64, ignored=0.2,
         regions=True, labels=True, strided=False, spatial=False, jitter=False, logits=None,
         segments=4, binning=None, region_dtype=torch.int64):
    """Random inputs and random non-zero accumulators of one call (a dict of keyword arguments)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    binning = random_binning(rng, c, bins, segments) if binning is None else binning
    if logits is None:
        logits = torch.randn(b, c, n, generator=g) * 3 + torch.tensor(rng.uniform(-3, 3, c)).float().view(1, c, 1)
    kw = dict(logits=logits, binning=binning)
    if regions:
        kw.update(region=torch.randint(0, r, (b, n), generator=g), n_regions=r,
                  region_counts=torch.randint(0, 1000, (r, c, bins), generator=g).to(region_dtype))
    if labels:
        label = torch.randint(0, max(p, 1), (b, n), generator=g, dtype=torch.int32)
        label[torch.rand(b, n, generator=g) < ignored] = -1
        if p == 0:
            label.fill_(-1)
        cob, oob = cells_of(rng, c, bins, cells, jitter)
        kw.update(label=label, n_present=p, label_rows=torch.randperm(rows, generator=g)[:p], cell_of_bin=cob,
                  offset_of_bin=oob, cell_counts=torch.randint(0, 500, (rows, c, cells), generator=g).to(cell_dtype),
                  cell_moments=torch.randint(0, 500, (rows, c, cells), generator=g).to(cell_dtype),
                  total=torch.randint(0, 500, (c, bins), generator=g))
    if strided:  # non-contiguous views of the same values: every other element, or dense but permuted
        def strided_copy(t):
            if strided == "permuted" and t.dim() >= 2:
                return t.transpose(-1, -2).contiguous().transpose(-1, -2)
            return torch.stack([t, torch.zeros_like(t)], -1)[..., 0]
        for key in ("logits", "region", "label", "label_rows", "cell_of_bin", "offset_of_bin"):
            if key in kw:
                kw[key] = strided_copy(kw[key])
                assert not kw[key].is_contiguous() or kw[key].numel() <= 1 or min(kw[key].shape) == 1
    if spatial:  # [B, C, h, w] maps with n = h * w
        h = next(d for d in range(int(np.sqrt(n)), 0, -1) if n % d == 0)
        kw["logits"] = kw["logits"].reshape(b, c, h, n // h)
    return kw


def cloned(kw):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def run(kw, force_path):
    kw = cloned(kw)
    accumulate_gate_batch(**kw, force_path=force_path)
    return kw


def positions(x, binning, fused=False):
    """numpy: the bin position of ``x`` ``[B, C, N]`` float32 by ``binning``'s knots and starts: the
    segment = inner knots <= x, then (x - knot) * scale + start, each step rounded to float32 (or,
    ``fused``, the last two in one rounding, as a fused multiply-add would)."""
    k32 = binning.knots.numpy().astype(np.float32)
    starts = binning.starts.numpy()
    scale = ((starts[:, 1:] - starts[:, :-1]) / np.diff(binning.knots.numpy(), axis=1)).astype(np.float32)
    seg = (x[..., None] >= k32[None, :, None, 1:-1]).sum(-1)  # [B, C, N]
    cc = np.indices(seg.shape)[1]
    with np.errstate(all="ignore"):
        d = (x - k32[:, :-1][cc, seg]).astype(np.float32)
        if fused:
            return (d.astype(np.longdouble) * scale[cc, seg] + starts[:, :-1][cc, seg]).astype(np.float32)
        t = (d * scale[cc, seg]).astype(np.float32)
        return (t + starts[:, :-1][cc, seg].astype(np.float32)).astype(np.float32)


def oracle(kw):
    """numpy: each bin from :func:`positions`, counted with np.add.at."""
    x = kw["logits"].reshape(kw["logits"].shape[0], kw["logits"].shape[1], -1).numpy().astype(np.float32)
    b, c, n = x.shape
    bins = kw["binning"].bins
    v = positions(x, kw["binning"])
    assert v.dtype == np.float32
    k = np.clip(v, np.float32(0), np.float32(bins - 1)).astype(np.int64)
    _, cc, _ = np.indices(k.shape)
    out = {}
    if "region" in kw:
        reg = np.broadcast_to(kw["region"].numpy()[:, None, :], k.shape)
        counts = kw["region_counts"].numpy().copy()
        np.add.at(counts, (reg, cc, k), 1)
        out["region_counts"] = counts
    if "label" in kw:
        lab = np.broadcast_to(kw["label"].numpy()[:, None, :], k.shape)
        m = lab >= 0
        rows = kw["label_rows"].numpy()[lab[m]]
        cob, oob = kw["cell_of_bin"].numpy(), kw["offset_of_bin"].numpy()
        dtype = kw["cell_counts"].numpy().dtype
        counts, moments, total = (kw[key].numpy().astype(np.int64) for key in ("cell_counts", "cell_moments", "total"))
        np.add.at(counts, (rows, cc[m], cob[cc[m], k[m]]), 1)
        np.add.at(moments, (rows, cc[m], cob[cc[m], k[m]]), oob[cc[m], k[m]])
        np.add.at(total, (cc[m], k[m]), 1)
        out.update(cell_counts=counts.astype(dtype), cell_moments=moments.astype(dtype), total=total)
    return out


def assert_counts_equal(a, b):
    for key in COUNTS:
        if key in a:
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), f"{key} differs in {int((a[key] != b[key]).sum())} entries"


def assert_matches_oracle(kw_out, expected):
    for key in COUNTS:
        if key in expected:
            np.testing.assert_array_equal(kw_out[key].numpy(), expected[key], err_msg=key)
            assert kw_out[key].numpy().dtype == expected[key].dtype


CASES = {
    "default": dict(),
    "one_everything": dict(b=1, c=1, n=1, bins=1, r=1, p=1, rows=1, cells=1),
    "pow2_bins_int32": dict(bins=64, cells=16, cell_dtype=torch.int32),
    "fine_cells": dict(bins=31, cells=31, p=8, rows=8),
    "p0": dict(p=0),
    "all_ignored": dict(ignored=1.0),
    "none_ignored": dict(ignored=0.0, cell_dtype=torch.int32),
    "strided": dict(strided=True, cell_dtype=torch.int32),
    "permuted": dict(strided="permuted", p=12, rows=12),
    "spatial": dict(spatial=True, n=120),
    "jitter_offsets": dict(jitter=True, bins=100, cells=27),
    "labels_only": dict(regions=False),
    "regions_only": dict(labels=False),
    "labels_only_many": dict(regions=False, p=40, rows=150, cells=27, bins=513),
    "many_pixels_threads": dict(b=4, c=6, n=9000, bins=512, p=40, rows=150, cells=27),
    "nothing_but_binning": dict(regions=False, labels=False),
    "one_segment": dict(segments=1, bins=512, cells=16),
    "eighteen_segments": dict(segments=18, bins=512, p=40, rows=150, cells=27, n=3000),
    # regions, label slots and bins in one joint histogram (4 * 7 * 37 counts <= two per pixel)
    "joint_with_regions": dict(b=4, n=2000),
    "int32_regions": dict(region_dtype=torch.int32, cell_dtype=torch.int32),
    "int32_regions_joint": dict(b=4, n=2000, region_dtype=torch.int32),
    "int32_regions_only": dict(labels=False, region_dtype=torch.int32),
}


# ---------------------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_paths_bit_identical_and_equal_oracle(built, name, seed):
    kw = case(seed, **CASES[name])
    a, t = run(kw, "native"), run(kw, "torch")
    assert_counts_equal(a, t)
    expected = oracle(kw)
    assert_matches_oracle(a, expected)
    assert_matches_oracle(t, expected)
    if "region_counts" in kw:  # something was counted, on top of the initial values
        assert int((a["region_counts"] - kw["region_counts"]).sum()) == kw["logits"].numel()
    if "label" in kw and (kw["label"] >= 0).any():
        assert not torch.equal(a["total"], kw["total"])


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n].get("labels", True)])
def test_rank_sums_of_both_paths_equal_the_oracle(built, name):
    """With a rank table, both paths return the sum of ``table[c, bin]`` per image, present label
    and channel (ignored pixels in none), as numpy computes it from the oracle's bins."""
    kw = case(3, **CASES[name])
    rng = np.random.default_rng(3)
    table = torch.from_numpy(rng.random((kw["binning"].channels, kw["binning"].bins)))
    x = kw["logits"].reshape(kw["logits"].shape[0], kw["logits"].shape[1], -1).numpy().astype(np.float32)
    bins = kw["binning"].bins
    k = np.clip(positions(x, kw["binning"]), np.float32(0), np.float32(bins - 1)).astype(np.int64)
    b, c, n = k.shape
    expected = np.zeros((b, kw["n_present"], c))
    lab = kw["label"].reshape(b, n).numpy()
    for i in range(b):
        for ch in range(c):
            keep = lab[i] >= 0
            np.add.at(expected[i, :, ch], lab[i][keep], table.numpy()[ch, k[i, ch][keep]])
    for force_path in ("native", "torch"):
        out = accumulate_gate_batch(**cloned(kw), rank_table=table, force_path=force_path)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12, err_msg=force_path)


def boundary_logits(binning, per_channel=400, seed=0):
    """float32 ``[1, C, N]`` logits at and one/two ulps around the points where the bin position
    (:func:`positions`) is an integer, from -3 to ``bins + 2``, and at the knots: found by walking
    ``torch.nextafter`` from the float64 estimate. Returns the logits and how many are exactly on an integer."""
    rng = np.random.default_rng(seed)
    knots, starts, bins = binning.knots.numpy(), binning.starts.numpy().astype(np.float64), binning.bins
    cand = []
    for c in range(binning.channels):
        j = rng.integers(-3, bins + 3, per_channel).astype(np.float64)
        x = np.interp(j, starts[c], knots[c], left=np.nan, right=np.nan)
        x = np.where(np.isnan(x), knots[c, 0] + (j - starts[c, 0]) * (knots[c, 1] - knots[c, 0]) / (starts[c, 1] - starts[c, 0]), x)
        cand.append(np.concatenate([x, knots[c]]))
    x = torch.tensor(np.stack(cand)).float()  # [C, M]
    up, down = torch.full_like(x, float("inf")), torch.full_like(x, float("-inf"))
    walk = [x]
    for _ in range(6):
        walk.append(torch.nextafter(walk[-1], up))
        walk.insert(0, torch.nextafter(walk[0], down))
    walked = torch.stack(walk, -1).reshape(binning.channels, -1)  # [C, 13 M]
    v = positions(walked.numpy()[None], binning)[0]
    hit = v == np.round(v)
    return walked.unsqueeze(0), int(hit.sum())


@pytest.mark.parametrize("bins", [512, 100, 37])
def test_boundaries_on_and_one_ulp_around(built, bins):
    c = 6
    binning = random_binning(np.random.default_rng(bins), c, bins, 5)
    logits, exact = boundary_logits(binning)
    assert exact > c * 50  # many logits exactly on a boundary
    kw = case(bins, b=1, c=c, n=logits.shape[2], bins=bins, p=3, rows=5, cells=8, logits=logits, binning=binning)
    x = logits.numpy()
    two_step = np.clip(positions(x, binning), 0, bins - 1).astype(np.int64)
    fused = np.clip(positions(x, binning, fused=True), 0, bins - 1).astype(np.int64)
    assert (fused != two_step).sum() > 20  # a fused multiply-add would fail here
    a, t = run(kw, "native"), run(kw, "torch")
    assert_counts_equal(a, t)
    expected = oracle(kw)
    assert_matches_oracle(a, expected)
    assert_matches_oracle(t, expected)


def test_large_magnitudes_and_infinities(built):
    c, bins = 4, 50
    values = torch.tensor([0.0, -0.0, 1e-38, -1e-38, 1e30, -1e30, 3.4e38, -3.4e38, float("inf"), float("-inf"),
                           1e7, -1e7, 16777217.0, 2.0 ** 31, -(2.0 ** 31)])
    logits = values.repeat(2, c, 3)
    # knots 1e-30 apart (x * scale overflows to inf), over +-3e38 (x - knot overflows), ordinary ones
    knots = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 1e-30, 2e-30], [-3e38, 0.0, 3e38], [-1e7, 1e7, 3e7]], dtype=torch.float64)
    binning = Binning(knots, torch.tensor([[0, 20, bins]] * c), bins)
    kw = case(5, b=2, c=c, n=logits.shape[2], bins=bins, logits=logits, binning=binning)
    a, t = run(kw, "native"), run(kw, "torch")
    assert_counts_equal(a, t)
    expected = oracle(kw)
    assert_matches_oracle(a, expected)
    added = (a["region_counts"] - kw["region_counts"]).sum(0)  # [C, bins]
    inf_at = logits[0, 0] == float("inf")
    assert int(added[:, bins - 1].min()) >= 2 * int(inf_at.sum()) and int(added[:, 0].min()) >= 2  # +inf top, -inf 0


def test_threads_do_not_change_anything_and_two_are_used(built):
    assert built.openmp() and built.parallel_threads(8) == min(8, torch.get_num_threads())
    kw = case(3, b=4, c=8, n=8192, bins=512, p=40, rows=150, cells=27)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert built.parallel_threads(8) == 1
        one = run(kw, "native")
        torch.set_num_threads(2)
        two = run(kw, "native")
    finally:
        torch.set_num_threads(before)
    assert_counts_equal(one, two)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("force_path", ["native", "torch"])
@pytest.mark.parametrize("where", [(0, 0, 0), (3, 7, 8191), (2, 4, 100)])
@pytest.mark.parametrize("region_dtype", [torch.int64, torch.int32])
def test_nan_raises_and_leaves_the_counts_as_they_were(built, force_path, where, region_dtype):
    # 32k pixels a channel: one task per channel, 2 threads
    kw = case(4, b=4, c=8, n=8192, bins=64, cells=8, region_dtype=region_dtype)
    kw["logits"] = kw["logits"].clone()
    kw["logits"][where] = float("nan")
    out = cloned(kw)
    with pytest.raises(NumericalError, match="NaN"):
        accumulate_gate_batch(**out, force_path=force_path)
    assert_counts_equal(out, kw)


def test_argument_errors():
    kw = case(0)
    for change, match in [(dict(logits=kw["logits"].double()), "logits"),
                          (dict(region=kw["region"] + 4), "region values"),
                          (dict(label=kw["label"] - 1), "label values"),
                          (dict(cell_of_bin=kw["cell_of_bin"] + 7), "cell_of_bin values"),
                          (dict(cell_moments=kw["cell_moments"].int()), "cell_moments"),
                          (dict(region_counts=kw["region_counts"][:, :, :-1]), "region_counts"),
                          (dict(total=kw["total"].t().contiguous().t()), "contiguous"),
                          (dict(label_rows=None), "label_rows"),
                          (dict(binning=Binning.uniform(4, -1.0, 1.0, 37)), "channels")]:
        with pytest.raises(ValueError, match=match):
            accumulate_gate_batch(**cloned({**kw, **change}), force_path="torch")
    with pytest.raises(ValueError, match="force_path"):
        accumulate_gate_batch(**cloned(kw), force_path="cuda")


# ---------------------------------------------------------------------------------------------- choice of path
def test_path_follows_device_and_native_is_the_default_on_cpu(built):
    assert native_build.path("cpu") == native_build.path() == "native"
    assert native_build.path("cuda") == native_build.path(torch.device("meta")) == "torch"
    kw = case(2)
    default = run(kw, None)
    assert_counts_equal(default, run(kw, "native"))


def test_gateprobe_native_0_uses_torch_without_building(monkeypatch, capsys, fresh_state):
    def no_build():
        raise AssertionError("GATEPROBE_NATIVE=0 must not build")
    monkeypatch.setenv("GATEPROBE_NATIVE", "0")
    monkeypatch.setattr(native_build, "_build", no_build)
    assert not native_build.native_available() and native_build.path("cpu") == "torch"
    kw = case(6)
    out = run(kw, None)
    assert_matches_oracle(out, oracle(kw))
    with pytest.raises(RuntimeError, match="unavailable"):
        run(kw, "native")
    assert capsys.readouterr().err == ""


def test_failed_build_prints_one_line_and_falls_back(monkeypatch, capsys, fresh_state):
    calls = []

    def broken_build():
        calls.append(1)
        raise RuntimeError("Error building extension 'x': [1/2] c++ -O3 ...\nkernel.cpp:1:10: fatal error: torch.h: "
                           "No such file or directory\nninja: build stopped")
    monkeypatch.delenv("GATEPROBE_NATIVE", raising=False)
    monkeypatch.setattr(native_build, "is_built", lambda: True)  # a cached build that fails to load: no "building" line
    monkeypatch.setattr(native_build, "_build", broken_build)
    kw = case(7)
    out = run(kw, None)
    assert_matches_oracle(out, oracle(kw))
    run(kw, None)
    assert native_build.path("cpu") == "torch" and not native_build.native_available()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(calls) == 1, err
    assert err.startswith("gateprobe: C++ statistics kernel unavailable (") and "fatal error: torch.h" in err
    assert err.rstrip().endswith("using the pure-torch path")


# ---------------------------------------------------------------------------------------------- when it is built
def tiny_gated_record(tmp_path, name="run", **kw):
    """A 4-image gated recording (32x32, width 4): the statistics of its gated layers use the kernel."""
    from probe.models import create_model
    from probe.recording.loop import record

    torch.manual_seed(0)
    model = create_model("gated-scenes", width=4, image_size=32).eval()
    return record(model, "scenes:32", tmp_path / name, n=4, batch_size=2, samples=1, calibration=2, **kw)


@pytest.fixture
def unbuilt(monkeypatch, tmp_path, fresh_state):
    """As on a machine where the kernel is not built yet: ``is_built`` False, a compiler, an empty extension
    folder; ``_build`` (faked by the test) is counted in ``calls``."""
    monkeypatch.delenv("GATEPROBE_NATIVE", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setattr(native_build, "is_built", lambda: False)
    monkeypatch.setattr(native_build, "compiler", lambda: "/usr/bin/c++")
    monkeypatch.setattr(native_build, "BUILD_SECONDS", 30.0)
    calls = []
    return calls


def test_is_built_follows_the_cached_library_and_its_age(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = native_build.extension_name()
    assert name.startswith("gateprobe_stats_") and native_build.library_path() == tmp_path / name / f"{name}.so"
    assert not native_build.is_built() and not (tmp_path / name).exists()  # asking creates nothing
    (tmp_path / name).mkdir()
    library = tmp_path / name / f"{name}.so"
    library.write_bytes(b"")
    assert native_build.is_built()
    old = min(source.stat().st_mtime for source in native_build.SOURCES) - 10
    os.utime(library, (old, old))  # older than the sources: loading it would compile
    assert not native_build.is_built()


def test_expected_build_seconds_is_the_last_build_on_this_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert native_build.expected_build_seconds() == native_build.BUILD_SECONDS
    native_build._remember_build_seconds(12.34)
    assert native_build.expected_build_seconds() == pytest.approx(12.3)
    (tmp_path / native_build.TIMES_FILE).write_text("garbage")
    assert native_build.expected_build_seconds() == native_build.BUILD_SECONDS


def test_estimate_line_counts_the_build(monkeypatch):
    from probe.recording.budget import estimate_line

    plain = estimate_line(1024, 0.01)
    assert plain == "estimate: recording 1,024 images takes about 20 s (10.0 ms per image on the calibration pass)"
    line = estimate_line(1024, 0.01, 35.0)
    assert "takes about 55 s" in line and "including about 35 s to build the C++ statistics kernel" in line
    assert estimate_line(1024, 0.01, 0.0) == plain


def test_pending_build_seconds_only_when_a_build_will_happen(monkeypatch, unbuilt):
    assert native_build.pending_build_seconds("cpu") == native_build.pending_build_seconds() == 30.0
    assert native_build.pending_build_seconds("cuda") == native_build.pending_build_seconds("meta") == 0.0
    monkeypatch.setenv("GATEPROBE_NATIVE", "0")
    assert native_build.pending_build_seconds("cpu") == 0.0 and not native_build.start_background_build("cpu")
    monkeypatch.delenv("GATEPROBE_NATIVE")
    monkeypatch.setattr(native_build, "compiler", lambda: None)
    assert native_build.pending_build_seconds("cpu") == 0.0 and not native_build.start_background_build("cpu")
    monkeypatch.setattr(native_build, "compiler", lambda: "/usr/bin/c++")
    monkeypatch.setattr(native_build, "is_built", lambda: True)
    assert native_build.pending_build_seconds("cpu") == 0.0 and not native_build.start_background_build("cpu")
    assert native_build._state["thread"] is None


def test_background_build_says_so_once_and_the_first_use_waits_for_it(monkeypatch, capsys, unbuilt):
    import threading

    release, sentinel = threading.Event(), object()

    def slow_build():
        unbuilt.append(1)
        assert release.wait(10)
        return sentinel
    monkeypatch.setattr(native_build, "_build", slow_build)
    assert native_build.start_background_build("cpu") and native_build.start_background_build("cpu")
    assert 1.0 <= native_build.pending_build_seconds("cpu") <= 30.0
    threading.Timer(0.2, release.set).start()
    assert native_build.kernel_module() is sentinel  # waited for the build
    assert native_build.native_available() and native_build.pending_build_seconds("cpu") == 0.0
    assert not native_build.start_background_build("cpu") and unbuilt == [1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("gateprobe: building the C++ statistics kernel in the background (") and "about 30 s" in err
    assert "gateprobe-build-kernel" in err


def test_a_first_use_outside_a_recording_builds_in_the_foreground_with_the_same_line(monkeypatch, capsys, unbuilt):
    sentinel = object()
    monkeypatch.setattr(native_build, "_build", lambda: unbuilt.append(1) or sentinel)
    assert native_build.kernel_module() is sentinel and native_build.kernel_module() is sentinel
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gateprobe: building the C++ statistics kernel (") and unbuilt == [1]


def test_without_a_compiler_one_line_and_the_torch_path_without_a_build(monkeypatch, capsys, unbuilt):
    monkeypatch.setattr(native_build, "compiler", lambda: None)
    monkeypatch.setattr(native_build, "_build", lambda: unbuilt.append(1))
    assert not native_build.native_available() and native_build.path("cpu") == "torch" and not unbuilt
    native_build.native_available()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unavailable (no C++ compiler" in err and "pure-torch path" in err


def test_record_builds_in_the_background_and_its_estimate_counts_the_build(built, monkeypatch, capsys, tmp_path,
                                                                           unbuilt):
    import threading

    asked, kernel_module = threading.Event(), native_build.kernel_module

    def slow_build():  # the real kernel, after a pretend compile that lasts until the first batch asks for it
        unbuilt.append(1)
        assert asked.wait(60)
        return built

    def first_use():
        asked.set()
        return kernel_module()
    monkeypatch.setattr(native_build, "_build", slow_build)
    monkeypatch.setattr(native_build, "kernel_module", first_use)
    run = tiny_gated_record(tmp_path)
    assert unbuilt == [1] and native_build.native_available()
    err = capsys.readouterr().err
    assert err.count("gateprobe: building the C++ statistics kernel in the background") == 1
    estimate = next(line for line in err.splitlines() if line.startswith("estimate:"))
    assert "to build the C++ statistics kernel, once per machine" in estimate, estimate
    assert native_build.build_seconds() is None  # the fake build did not time itself
    # a second recording in the process: nothing built, nothing said
    reference = tiny_gated_record(tmp_path, "again")
    err = capsys.readouterr().err
    assert "building" not in err and "kernel" not in err and unbuilt == [1]
    pd_equal = __import__("pandas").testing.assert_frame_equal
    pd_equal(run.channels, reference.channels)


def test_the_build_counts_against_max_hours(monkeypatch, tmp_path, unbuilt):
    from probe.errors import SettingsError

    import threading

    done = threading.Event()
    monkeypatch.setattr(native_build, "BUILD_SECONDS", 3600.0)
    monkeypatch.setattr(native_build, "_build", lambda: unbuilt.append(done.wait(60)) or object())
    try:
        with pytest.raises(SettingsError, match="beyond --max-hours 0.5"):
            tiny_gated_record(tmp_path, max_hours=0.5, progress=False)
    finally:
        done.set()
    assert not (tmp_path / "run").exists()
    native_build._state["thread"].join()
    assert unbuilt == [True]  # the build went on, was not given up half way


def test_record_with_a_cached_kernel_builds_nothing(built, capsys, tmp_path, fresh_state):
    assert native_build.is_built()  # `built` built or loaded it from the cache
    run = tiny_gated_record(tmp_path)
    err = capsys.readouterr().err
    assert "building" not in err and "kernel" not in err and native_build._state["thread"] is None
    assert native_build.native_available() and run.manifest["complete"]


def test_record_with_gateprobe_native_0_builds_nothing(monkeypatch, capsys, tmp_path, unbuilt):
    monkeypatch.setenv("GATEPROBE_NATIVE", "0")
    monkeypatch.setattr(native_build, "_build", lambda: unbuilt.append(1))
    tiny_gated_record(tmp_path)
    err = capsys.readouterr().err
    assert not unbuilt and "building" not in err and "kernel" not in err and native_build._state["thread"] is None


def test_build_kernel_command(monkeypatch, capsys, unbuilt):
    monkeypatch.setattr(native_build, "_build", lambda: unbuilt.append(1) or object())
    assert native_build.main([]) == 0 and unbuilt == [1]
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("gateprobe: building the C++ statistics kernel (") and len(err) == 2
    assert err[1].startswith("gateprobe: C++ statistics kernel built in ")
    native_build._reset()
    monkeypatch.setenv("GATEPROBE_NATIVE", "0")
    assert native_build.main([]) == 0 and unbuilt == [1] and "not built" in capsys.readouterr().err
    monkeypatch.delenv("GATEPROBE_NATIVE")
    monkeypatch.setattr(native_build, "compiler", lambda: None)
    assert native_build.main([]) == 0 and native_build._reset() is None
    assert native_build.main(["--strict"]) == 1 and unbuilt == [1]


def test_deferred_nan_flag_and_unchecked_ids_count_as_the_checked_torch_path():
    """Off the CPU the recorder reads no device value per layer: the ids are not range-checked and a
    NaN logit sets a flag instead of raising. On clean logits the counts are those of the checked
    path; a NaN sets the flag, bins as 0 and leaves every index in range."""
    g = torch.Generator().manual_seed(3)
    b, c, n, bins = 2, 3, 50, 16
    binning = Binning.uniform(c, -3.0, 3.0, bins)
    logits = torch.randn(b, c, n, generator=g)
    region = torch.randint(0, 4, (b, n), generator=g)
    label = torch.randint(-1, 2, (b, n), generator=g)

    def run(x, **extra):
        out = dict(region_counts=torch.zeros(4, c, bins, dtype=torch.int64), cell_counts=torch.zeros(2, c, bins, dtype=torch.int32),
                   cell_moments=torch.zeros(2, c, bins, dtype=torch.int32), total=torch.zeros(c, bins, dtype=torch.int64))
        accumulate_gate_batch(x, binning, region=region, n_regions=4, label=label, n_present=2,
                              label_rows=torch.tensor([1, 0]), cell_of_bin=torch.arange(bins).repeat(c, 1),
                              offset_of_bin=torch.zeros(c, bins, dtype=torch.int64), force_path="torch", **out, **extra)
        return out

    checked = run(logits)
    flag = torch.zeros((), dtype=torch.bool)
    deferred = run(logits, check_ids=False, nonfinite=flag)
    assert not bool(flag)
    assert all(torch.equal(checked[k], deferred[k]) for k in checked)
    assert int(checked["total"].sum()) == c * int((label >= 0).sum())  # ignored pixels in no label count
    poisoned = logits.clone()
    poisoned[1, 2, 7] = float("nan")
    with pytest.raises(NumericalError):
        run(poisoned)
    counts = run(poisoned, check_ids=False, nonfinite=flag)
    assert bool(flag) and int(counts["region_counts"].sum()) == b * c * n


def test_a_permuted_one_cell_per_bin_map_counts_as_the_torch_path(built):
    """As many cells as bins need not mean cell j is bin j: the kernel's vector add is taken only
    for the identity map, so a permuted map counts each bin into its own cell, as the torch path."""
    g = torch.Generator().manual_seed(5)
    b, c, n, bins = 2, 3, 200, 16
    binning = Binning.uniform(c, -3.0, 3.0, bins)
    logits = torch.randn(b, c, n, generator=g)
    label = torch.randint(-1, 2, (b, n), generator=g)
    cell_of_bin = torch.stack([torch.randperm(bins, generator=g) for _ in range(c)])

    def run(path):
        out = dict(cell_counts=torch.zeros(2, c, bins, dtype=torch.int32), cell_moments=torch.zeros(2, c, bins, dtype=torch.int32),
                   total=torch.zeros(c, bins, dtype=torch.int64))
        accumulate_gate_batch(logits, binning, label=label, n_present=2, label_rows=torch.tensor([0, 1]),
                              cell_of_bin=cell_of_bin, offset_of_bin=torch.zeros(c, bins, dtype=torch.int64),
                              force_path=path, **out)
        return out

    native_counts, torch_counts = run("native"), run("torch")
    assert all(torch.equal(native_counts[k], torch_counts[k]) for k in torch_counts)
    fine = torch.zeros(c, bins, dtype=torch.int64)  # label 0's fine counts, by numpy-free oracle
    k = binning.bin(logits)
    for ch in range(c):
        fine[ch] = torch.bincount(k[:, ch][label == 0].long(), minlength=bins)
    assert torch.equal(torch_counts["cell_counts"][0].long(), torch.zeros(c, bins, dtype=torch.int64).scatter_add(1, cell_of_bin, fine))


def test_a_lock_left_by_a_killed_build_is_removed_with_one_line_and_a_fresh_one_is_kept(monkeypatch, tmp_path,
                                                                                       capsys):
    """torch's loader waits forever on the ``lock`` of a build that was killed: one older than
    ``STALE_LOCK_SECONDS`` is removed (one line naming it), a younger one (a build under way) stays."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / native_build.extension_name() / "lock"
    lock.parent.mkdir()
    lock.touch()
    assert not native_build.clear_stale_lock() and lock.exists()
    old = time.time() - native_build.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    assert native_build.clear_stale_lock() and not lock.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(lock) in err[0] and "did not finish" in err[0]
    assert not native_build.clear_stale_lock()
