"""The benchmarks' own harnesses can fail (issue 14; stats_cost.py, issue 28).

``benchmarks/memory.py`` once read ``ru_maxrss``, which a child inherits across fork/vfork + exec
from its parent: under ``make bench`` both sizes printed the parent's 5096 MB, a ratio of 1.000
whatever ``record`` did. Its workers now report their own ``VmHWM`` increase over a baseline taken
after their imports. These tests check that a worker which allocates shows it, one that does not
shows nothing, and a large parent does not leak into its worker's figure. ``stats_cost.py`` times
the statistics replayed from captured layer inputs: they must be the statistics a recording keeps.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM needs Linux /proc")


@pytest.fixture(scope="module")
def memory():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCHMARKS / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_worker_that_allocates_300_mb_shows_it(memory):
    idle = memory.measure("allocate", 0)
    busy = memory.measure("allocate", 300)
    assert busy["increase_mb"] >= idle["increase_mb"] + 250, (idle, busy)
    assert busy["increase_mb"] <= 300 + 50  # the increase is the block, not the interpreter
    assert idle["increase_mb"] < 20
    assert busy["peak_mb"] >= busy["baseline_mb"] + 250


def test_a_large_parent_does_not_leak_into_the_worker_peak(memory):
    block = np.ones(600 * memory.MB // 8)  # the parent now holds 600 MB more, every page written
    parent = memory.memory_status()
    assert parent["VmRSS"] >= 600
    idle = memory.measure("allocate", 0)
    del block
    # a fresh interpreter with numpy is ~30 MB; an inherited maximum would be >= the parent's RSS
    assert idle["peak_mb"] < parent["VmRSS"] - 400, (parent, idle)
    assert idle["increase_mb"] < 20


def test_reset_peak_lowers_this_process_high_water_mark(memory):
    if not memory.reset_peak():
        pytest.skip("/proc/self/clear_refs refused here; workers fall back to reading VmHWM")
    block = np.ones(200 * memory.MB // 8)
    high = memory.memory_status()["VmHWM"]
    del block
    assert memory.reset_peak()
    assert memory.memory_status()["VmHWM"] <= high - 150


def test_the_row_divides_the_increases_not_the_totals(memory, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # main() imports common.print_table
    monkeypatch.setitem(sys.modules, "common", _FakeCommon)
    reports = {16: {"baseline_mb": 1000.0, "increase_mb": 100.0}, 64: {"baseline_mb": 1000.0, "increase_mb": 150.0}}
    monkeypatch.setattr(memory, "measure", lambda task, n, name, registry: dict(reports[n], task=task))
    rows = memory.main(["--n", "16"])
    assert len(rows) == 2
    assert all(row["median"] == pytest.approx(1.5) for row in rows)  # (150) / (100), not 1150 / 1100


class _FakeCommon:
    @staticmethod
    def print_table(rows):
        pass


@pytest.fixture(scope="module")
def stats_cost():
    sys.path.insert(0, str(BENCHMARKS))  # stats_cost imports common
    spec = importlib.util.spec_from_file_location("bench_stats_cost", BENCHMARKS / "stats_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))


def test_replayed_statistics_equal_recorded_ones(stats_cost):
    """The statistics replayed from captured layer inputs are those a recording of the same batches
    keeps (so stats_cost.py times the real work), and the part timers are taken off again."""
    from common import batches, recorder_for, shipped_or_random
    from record_overhead import recorded as record

    model, _ = shipped_or_random("scenes-gated", "gated-scenes")
    data = batches(16, 8)
    recorded = recorder_for(model)
    record(recorded, model, data)
    captured = stats_cost.capture(model, data)
    assert [len(layers) for layers in captured] == [len(recorded.stats)] * len(data)
    replayed = recorder_for(model)
    originals = [getattr(owner, name) for owner, name, _ in stats_cost.PARTS]
    parts = stats_cost.Counter()
    assert stats_cost.replay(replayed, data, captured, parts) > 0
    assert [getattr(owner, name) for owner, name, _ in stats_cost.PARTS] == originals
    assert parts["kernel"] > 0 and parts["covariance"] > 0 and parts["conditions"] > 0
    for name, stats in recorded.stats.items():
        mine, theirs = stats.state_dict(), replayed.stats[name].state_dict()
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), (name, key)


@pytest.fixture()
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    import common as module
    return module


@pytest.mark.parametrize("n", [3, 5, 6, 11, 20, 41])
def test_the_median_interval_is_the_order_statistic_interval_scipy_gives(common, n):
    """The interval of a median from ``n`` values (shuffled) is the pair of order statistics that
    scipy's binomial gives for 95%, with scipy's coverage; with too few values, [min, max]."""
    from scipy.stats import binom

    values = list(np.random.default_rng(n).permutation(np.arange(n) * 1.5 + 10))
    lo, hi, coverage = common.median_interval(values)
    ks = [k for k in range(1, (n + 1) // 2 + 1) if 1 - 2 * binom.cdf(k - 1, n, 0.5) >= 0.95]
    k = max(ks) if ks else 1
    ordered = sorted(values)
    assert (lo, hi) == (ordered[k - 1], ordered[n - k])
    assert coverage == pytest.approx(1 - 2 * binom.cdf(k - 1, n, 0.5), abs=1e-12)
    if n <= 5:  # too few for 95%: the whole range, with what it covers (0.9375 for 5)
        assert (lo, hi) == (min(values), max(values)) and coverage == pytest.approx(1 - 2 ** (1 - n))
    else:
        assert coverage >= 0.95
        assert lo > min(values) or n < 9  # from 9 values on, the interval lies inside the range


def test_the_median_interval_covers_the_median_as_often_as_it_says(common):
    """Simulated: draws of 11 from a skewed distribution; the interval holds the true median in about
    its stated share of 4,000 trials."""
    rng = np.random.default_rng(0)
    true_median = np.log(2)  # of the exponential distribution with rate 1
    hits, coverage = 0, None
    for _ in range(4000):
        lo, hi, coverage = common.median_interval(list(rng.exponential(size=11)))
        hits += lo <= true_median <= hi
    assert hits / 4000 == pytest.approx(coverage, abs=0.01)


def test_a_recorder_like_a_calibrated_one_keeps_the_same_statistics(stats_cost):
    """record_overhead.py calibrates once and starts each repeat from ``recorder_for(model, like=...)``:
    a recording with it keeps the state of a recording with a freshly calibrated recorder."""
    from common import batches, recorder_for, shipped_or_random
    from record_overhead import recorded as record

    model, _ = shipped_or_random("scenes-gated", "gated-scenes")
    data = batches(8, 4)
    calibrated = recorder_for(model)
    again = recorder_for(model, like=calibrated)
    assert again is not calibrated and again.stats.keys() == calibrated.stats.keys()
    for recorder in (calibrated, again):
        record(recorder, model, data)
    for name, stats in calibrated.stats.items():
        mine, theirs = stats.state_dict(), again.stats[name].state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[key], theirs[key]) for key in mine), name
