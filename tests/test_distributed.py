"""``record --ray``: shards as Ray tasks on a local 2-CPU Ray instance, merged exactly.

* A Ray run is bit for bit the ``merge_runs`` of the same shards recorded one at a time with
  ``record(shard=...)`` (the driver merges in shard order), for N in {1, 2, 3}, including more
  shards than batches. Against the unsharded single-process run, counts and integer columns are
  exact and float statistics agree within ``RTOL``: the shards cut the images into other batches,
  and oneDNN convolutions round a float32 ulp differently with the batch composition (see
  ``test_record.test_sharded_runs_with_the_default_backend``); merged float64 sums also add in
  another order. p-/q-values amplify those ulps through the t statistic: ``RTOL_P``.
* A worker killed in the middle of its shard (``os._exit`` on its first attempt, remembered with
  a marker file) is retried by Ray and the run is still exact: every image counted once.
* Without Ray, ``--ray`` is one line naming ``pip install 'gateprobe[ray]'``; a random-init
  registry model is refused.

Ray is shut down after the tests and no Ray process is left behind. The tests that start Ray are
marked ``slow`` (``make test`` runs them in its second step).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import probe
from probe.cli import main
from probe.models import create_model
from probe.models.checkpoints import save_checkpoint
from probe.models.sources import resolve_model
from probe.recording.distributed import check_coverage, record_ray
from probe.recording.loop import record
from probe.rundir.merge import merge_runs
from probe.rundir.state import load_stats

ray = pytest.importorskip("ray")

SIZE, N = 32, 24
DATA = f"scenes:{SIZE}"
RTOL, RTOL_P = 1e-5, 1e-3
P_COLUMNS = ("p_hole", "q_hole", "p_sketch", "q_sketch", "p_value", "q_value")


# ============================================================================ helpers
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A pconv and a gated checkpoint folder (width 8, 32x32, fixed seeds)."""
    root = tmp_path_factory.mktemp("checkpoints")
    folders = {}
    for name in ("pconv-scenes", "gated-scenes"):
        torch.manual_seed(0)
        model = create_model(name, width=8, image_size=SIZE)
        if name == "gated-scenes":  # spread the gate logits as training does (see test_record.gated_test_model)
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, probe.GatedConv2d):
                        module.gate.weight.mul_(16)
        save_checkpoint(model, root / name)
        folders[name] = str(root / name)
    return folders


@pytest.fixture(scope="module")
def one_thread():
    """Recordings in this process use one torch thread, as Ray's one-CPU workers do."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def ray_processes() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if p.is_running()]


def assert_no_ray_left(timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_processes(), [p.cmdline()[:2] for p in ray_processes()]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module; ``record_ray`` uses it and leaves it running."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        yield
    finally:
        ray.shutdown()
        assert_no_ray_left()


def assert_runs_close(a: probe.Run, b: probe.Run, rtol: float = RTOL) -> None:
    """Integer, string and boolean columns equal; float columns within ``rtol`` (NaN where NaN)."""
    for name in ("layers", "channels", "labels", "evolution"):
        x, y = getattr(a, name), getattr(b, name)
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        for col in x.columns:
            u, v = x[col], y[col]
            tol = RTOL_P if col in P_COLUMNS else rtol
            if pd.api.types.is_float_dtype(u):
                np.testing.assert_allclose(u.to_numpy(float), v.to_numpy(float), rtol=tol, atol=1e-12,
                                           err_msg=f"{name}.{col}")
            elif len(u) and isinstance(u.iloc[0], (list, np.ndarray)) and np.asarray(u.iloc[0]).dtype.kind == "f":
                for row, (s, t) in enumerate(zip(u, v)):  # lists of one row may differ in length from another's
                    np.testing.assert_allclose(np.asarray(s, float), np.asarray(t, float), rtol=tol, atol=1e-12,
                                               err_msg=f"{name}.{col}[{row}]")
            else:
                assert [np.asarray(t).tolist() for t in u] == [np.asarray(t).tolist() for t in v], f"{name}.{col}"


def assert_states_identical(a: probe.Run, b: probe.Run) -> None:
    """Every accumulator tensor bit for bit (NaN where NaN)."""
    x, y = load_stats(a), load_stats(b)
    assert list(x) == list(y)
    for layer in x:
        other = y[layer].state_dict()
        for key, value in x[layer].state_dict().items():
            assert torch.equal(value.nan_to_num(), other[key].nan_to_num()), (layer, key)
    for name in ("layers", "channels", "labels", "evolution"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def assert_integer_state_equal(a: probe.Run, b: probe.Run) -> None:
    """Histogram counts, pixel counts, image counts: exact."""
    x, y = load_stats(a), load_stats(b)
    for layer in x:
        other = y[layer].state_dict()
        for key, value in x[layer].state_dict().items():
            if not value.dtype.is_floating_point:
                assert torch.equal(value, other[key]), (layer, key)


def assert_covers_once(run: probe.Run, n: int, count: int) -> None:
    shards = run.manifest["shards"]
    assert run.manifest["n_images"] == n and run.manifest["complete"]
    assert [s["shard"] for s in shards] == [[i, count] for i in range(count)]
    spans = [(s["start"], s["stop"]) for s in shards]
    assert spans[0][0] == 0 and spans[-1][1] == n and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    np.testing.assert_array_equal(run.sample_input("index"), np.arange(run.n_samples))


@pytest.fixture(scope="module")
def whole(checkpoints, tmp_path_factory, one_thread):
    """The single-process unsharded runs the Ray runs must equal: (model name, batch size) -> Run."""
    root = tmp_path_factory.mktemp("whole")
    return {(name, b): record(resolve_model(checkpoints[name]), DATA, root / f"{name}-{b}", n=N, batch_size=b,
                              samples=6, progress=False)
            for name, b in [("gated-scenes", 16), ("pconv-scenes", 8), ("pconv-scenes", 4)]}


# ============================================================================ no Ray needed
def test_without_ray_the_flag_is_one_line_with_the_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["record", "--model", "whatever", "--out", str(tmp_path / "run"), "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'gateprobe[ray]'" in err
    assert not (tmp_path / "run").exists()


def test_random_init_and_shard_flags_are_refused_before_ray_starts(tmp_path, capsys):
    for argv in (["--model", "pconv-scenes", "--random-init"], ["--model", "pconv-scenes"]):
        assert main(["record", *argv, "--out", str(tmp_path / "run"), "--ray"]) == 2
        assert "save it first" in capsys.readouterr().err
    assert main(["record", "--model", "x", "--out", str(tmp_path / "run"), "--ray", "--shard", "0/2"]) == 2
    assert "--shards N" in capsys.readouterr().err
    assert main(["record", "--model", "x", "--out", str(tmp_path / "run"), "--shards", "2"]) == 2
    assert not ray.is_initialized()


def test_coverage_check_refuses_gaps_overlaps_and_short_runs():
    check_coverage([(8, 24), (0, 8)], 24)
    for spans in ([(0, 8), (9, 24)], [(0, 9), (8, 24)], [(0, 8), (8, 20)], [(0, 8), (0, 8), (8, 24)]):
        with pytest.raises(RuntimeError, match="shards"):
            check_coverage(spans, 24)


# ============================================================================ its own local instance
@pytest.mark.slow  # a Ray instance and its workers (each imports torch): `make test`'s second step
def test_record_ray_starts_and_stops_its_own_local_instance(checkpoints, whole, tmp_path):
    assert not ray.is_initialized()
    run = record_ray(checkpoints["pconv-scenes"], DATA, tmp_path / "run", n=N, shards=2, batch_size=8, samples=6,
                     num_cpus=2, progress=False)
    assert not ray.is_initialized()
    assert_no_ray_left()
    assert_covers_once(run, N, 2)
    assert_runs_close(run, whole["pconv-scenes", 8])
    assert_integer_state_equal(run, whole["pconv-scenes", 8])


# ============================================================================ on a shared local instance
@pytest.mark.slow  # a Ray instance and its workers (each imports torch): `make test`'s second step
@pytest.mark.parametrize("count", [1, 2, 3])  # 24 images in batches of 16: 3 shards are more than the 2 batches
def test_ray_run_is_the_merge_of_its_shards_and_equals_the_unsharded_run(local_ray, checkpoints, whole, one_thread,
                                                                          tmp_path, count):
    spec = checkpoints["gated-scenes"]
    kw = dict(n=N, batch_size=16, samples=6, progress=False)
    run = record_ray(spec, DATA, tmp_path / "ray", shards=count, **kw)
    assert ray.is_initialized()  # an instance it did not start is left running
    assert_covers_once(run, N, count)
    model = resolve_model(spec)
    parts = [record(model, DATA, tmp_path / f"s{i}", shard=(i, count), **kw).path for i in range(count)]
    assert_states_identical(run, merge_runs(parts, tmp_path / "merged"))
    reference = whole["gated-scenes", 16]
    assert_integer_state_equal(run, reference)
    assert_runs_close(run, reference)
    for layer in run.manifest["layers"][:3]:
        np.testing.assert_array_equal(run.sample_map(layer, "gate"), reference.sample_map(layer, "gate")) \
            if count == 1 else np.testing.assert_allclose(run.sample_map(layer, "gate").astype(np.float32),
                                                           reference.sample_map(layer, "gate").astype(np.float32),
                                                           atol=1e-3)


@pytest.mark.slow  # a Ray instance and its workers (each imports torch): `make test`'s second step
def test_cli_record_ray_equals_the_single_process_run(local_ray, checkpoints, whole, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["record", "--model", checkpoints["pconv-scenes"], "--data", DATA, "--n", str(N), "--batch-size", "8",
                 "--samples", "6", "--out", str(out), "--ray"]) == 0
    assert "Ray shards" in capsys.readouterr().out
    run = probe.load_run(out)
    count = len(run.manifest["shards"])
    assert count == 4  # the default: two shards per CPU of the 2-CPU instance
    assert_covers_once(run, N, count)
    assert run.manifest["ray"]["address"] == "local" and run.manifest["command"].endswith("--ray")
    assert_runs_close(run, whole["pconv-scenes", 8])
    assert_integer_state_equal(run, whole["pconv-scenes", 8])


@pytest.mark.slow  # a Ray instance and its workers (each imports torch): `make test`'s second step
def test_a_worker_killed_mid_shard_is_retried_and_counted_once(local_ray, checkpoints, whole, tmp_path):
    marker, log = tmp_path / "killed", tmp_path / "attempts"

    def kill_shard_1_once(index, batch_positions):  # runs in the worker after each batch
        with open(log, "a") as f:
            f.write(f"{index} {batch_positions.start} {os.getpid()}\n")
        if index == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies half way through its shard

    run = record_ray(checkpoints["pconv-scenes"], DATA, tmp_path / "run", n=N, shards=2, batch_size=4, samples=6,
                     progress=False, fault_hook=kill_shard_1_once)
    attempts = [line.split() for line in log.read_text().splitlines()]
    firsts = [pid for index, start, pid in attempts if (index, start) == ("1", "12")]
    assert marker.exists() and len(firsts) == 2 and firsts[0] != firsts[1]  # shard 1 ran twice, in two processes
    assert sorted(int(start) for index, start, _ in attempts) == sorted([*range(0, N, 4), 12])
    assert_covers_once(run, N, 2)
    assert_runs_close(run, whole["pconv-scenes", 4])
    assert_integer_state_equal(run, whole["pconv-scenes", 4])


@pytest.mark.slow  # a Ray instance and its workers (each imports torch): `make test`'s second step
def test_a_shard_whose_worker_always_dies_fails_the_run_without_completing_it(local_ray, checkpoints, tmp_path):
    def always_die(index, batch_positions):
        if index == 0:
            os._exit(1)

    with pytest.raises(RuntimeError, match="shard 0"):
        record_ray(checkpoints["pconv-scenes"], DATA, tmp_path / "run", n=8, shards=2, batch_size=4,
                   progress=False, max_retries=0, fault_hook=always_die)
    with pytest.raises(probe.RunError, match="incomplete"):
        probe.load_run(tmp_path / "run")
