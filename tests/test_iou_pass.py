"""The IoU pass (issue 28 item 2): a second pass over the images that counts each label's pixels
above the final top-quantile thresholds, so that ``labels.iou`` is exact where the label cells are
coarser than the fine bins.

Known answer: a small gated model (random weights, gates spread as training does) on an ADE20K
layout of 150 classes written here (14-cell label statistics, 0 = "other" ignored); the test reads
every gated layer's binned values with its own hooks, takes the labels at each layer's resolution
by the documented rule (centre pixel of each cell), and computes with numpy the IoU of ``value >
threshold`` over the labelled pixels; the table's IoU must equal it for every (layer, channel,
label), and every other column must be the run without the pass's. Then: auto/on/off, the
thresholds and merging of the counts, states of version 7, resuming an interrupted IoU pass, the
setting's one-line errors, and (slow) Ray, with a worker killed in the IoU pass.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import probe
from probe.adapters import find_sites
from probe.cli import main
from probe.data import collate, parse_data
from probe.errors import SettingsError
from probe.models import create_model
from probe.models.checkpoints import save_checkpoint
from probe.recording import loop
from probe.recording.budget import estimate_line, time_estimate
from probe.recording.context import BatchContext
from probe.recording.loop import record
from probe.recording.resume import PROGRESS
from probe.rundir import validate
from probe.rundir.merge import CELL_IOU_NOTE, merge_runs
from probe.rundir.settings import RecordSettings
from probe.rundir.state import load_stats
from probe.rundir.tables import channel_and_label_tables, channel_thresholds
from probe.stats.layer_stats import IouCounts
from probe.stats.readouts import auc_from_cells, sigmoid

SIZE, N, BATCH, CLASSES = 32, 8, 4, 150
KW = dict(n=N, batch_size=BATCH, calibration=4, samples=2, progress=False)


# ============================================================================ data, model, runs
def write_ade(root, n: int = N, classes: int = CLASSES, seed: int = 0):
    """An ADE20K SceneParsing layout of ``n`` 32x32 images and ``classes`` classes: label maps of
    4x4-pixel blocks of ids 0 ("other", ignored) .. ``classes``, drawn per image from 12 of them."""
    rows = "\n".join(f"{i},0.01,1,1,class{i}" for i in range(1, classes + 1))
    (root / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Name\n" + rows + "\n")
    rng = np.random.default_rng(seed)
    for folder in ("images", "annotations"):
        (root / folder / "validation").mkdir(parents=True)
    for k in range(n):
        name = f"ADE_val_{k:08d}"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            root / "images" / "validation" / f"{name}.jpg")
        ids = rng.choice(classes + 1, 12, replace=False)
        blocks = ids[rng.integers(0, 12, (SIZE // 4, SIZE // 4))]
        Image.fromarray(np.kron(blocks, np.ones((4, 4), np.int64)).astype(np.uint8)).save(
            root / "annotations" / "validation" / f"{name}.png")
    return root


def gated_model(seed: int = 0):
    """gated-scenes at width 8 for 32x32 images, random weights, gate convolutions scaled by 16 so
    that the logits spread over several units (as in test_record.gated_test_model)."""
    torch.manual_seed(seed)
    model = create_model("gated-scenes", width=8, image_size=SIZE).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, probe.GatedConv2d):
                module.gate.weight.mul_(16)
                module.gate.bias.mul_(16)
    return model


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return write_ade(tmp_path_factory.mktemp("ade"))


@pytest.fixture(scope="module")
def data(ade):
    return parse_data(f"ade20k:{ade}", size=SIZE)


@pytest.fixture(scope="module")
def model():
    return gated_model()


@pytest.fixture(scope="module")
def runs(model, data, tmp_path_factory):
    """The same recording with the IoU pass (auto) and without it (off)."""
    root = tmp_path_factory.mktemp("iou-runs")
    return {mode: record(model, data, root / mode, iou_pass=mode, **KW) for mode in ("auto", "off")}


def gate_values(model, data, n: int = N) -> dict:
    """Layer name -> (binned values float64 ``[n, C, h*w]``, labels int64 ``[n, h*w]``, -1 ignored):
    what every gated layer hands its sink (the logit of a sigmoid gate), read with the test's own
    hooks over the recording's batches, the labels taken at the layer's resolution at the centre
    pixel of each cell."""
    sites = [s for s in find_sites(model) if s.kind == "gated"]
    seen = {s.name: [] for s in sites}

    class Keep:
        def __init__(self, name):
            self.name = name

        def gated(self, logits, gates):
            seen[self.name].append(logits.double().flatten(2).clone())

    items = [data[i] for i in range(n)]
    handles = [h for s in sites for h in s.adapter.attach(s.module, Keep(s.name))]
    try:
        with torch.inference_mode():
            for start in range(0, n, BATCH):
                batch = collate(items[start:start + BATCH])
                model(batch["image"], batch["hole"], batch["sketch"] if model.accepts_sketch else None)
    finally:
        for h in handles:
            h.remove()
    labels = np.stack([item["labels"].numpy() for item in items])  # [n, H, W]
    out = {}
    for name, parts in seen.items():
        values = torch.cat(parts).numpy()
        h = w = int(round(np.sqrt(values.shape[-1])))
        ys = ((np.arange(h) + 0.5) * SIZE / h).astype(np.int64)
        xs = ((np.arange(w) + 0.5) * SIZE / w).astype(np.int64)
        out[name] = (values, labels[:, ys][:, :, xs].reshape(n, -1))
    return out


def exact_iou(values: np.ndarray, labels: np.ndarray, threshold: np.ndarray, n_labels: int):
    """``(iou [L, C], label pixels [L])`` of ``value > threshold`` over the labelled pixels."""
    keep = labels.ravel() >= 0
    lab = labels.ravel()[keep]
    top = (values > threshold[None, :, None]).transpose(1, 0, 2).reshape(len(threshold), -1)[:, keep]  # [C, P]
    size = np.bincount(lab, minlength=n_labels).astype(np.float64)
    inter = np.stack([np.bincount(lab, weights=row, minlength=n_labels) for row in top.astype(np.float64)], 1)
    active = top.sum(1)[None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (active + size[:, None] - inter), size


def layer_grid(labels: pd.DataFrame, layer: str, column: str) -> np.ndarray:
    """``[L, C]`` of one column of the labels table for ``layer``."""
    rows = labels[labels.layer == layer]
    return rows.pivot(index="label_id", columns="channel", values=column).to_numpy()


# ============================================================================ the known answer
def test_the_table_iou_is_the_exact_iou_of_the_gate_maps(runs, model, data):
    run, off = runs["auto"], runs["off"]
    stats = load_stats(run)
    maps = gate_values(model, data)
    assert set(maps) == {row.layer for row in run.layers.itertuples() if row.kind == "gated"}
    assert run.labels.iou_exact.all() and not off.labels.iou_exact.any()
    far_off = 0
    for name, (values, labels) in maps.items():
        s = stats[name]
        assert s.labels.cells < s.labels.bins  # 150 labels: coarse cells, the read-out the pass replaces
        threshold = s.iou.threshold.numpy()
        np.testing.assert_array_equal(threshold, channel_thresholds(s, run.manifest["settings"]["quantile"]))
        channels = run.channels[run.channels.layer == name]
        np.testing.assert_array_equal(channels.threshold.to_numpy(), sigmoid(threshold))  # the table's threshold
        iou, size = exact_iou(values, labels, threshold, CLASSES)
        np.testing.assert_allclose(layer_grid(run.labels, name, "iou"), iou, rtol=0, atol=1e-9, equal_nan=True,
                                   err_msg=name)
        np.testing.assert_array_equal(layer_grid(run.labels, name, "pixels")[:, 0], size)
        np.testing.assert_array_equal(s.iou.inter.numpy().sum(0), ((values > threshold[None, :, None])
                                                                  & (labels[:, None] >= 0)).sum((0, 2)))
        far_off += int((np.abs(layer_grid(off.labels, name, "iou") - iou) > 1e-3).sum())
    assert far_off > 100  # the cells' read-out is not the exact IoU: the comparison above can fail
    assert (run.labels.iou > 0.05).sum() > 100
    for table in ("layers", "channels", "labels", "evolution"):  # the pass changes nothing else
        a, b = getattr(run, table), getattr(off, table)
        columns = [c for c in a.columns if c not in ("iou", "iou_exact")]
        pd.testing.assert_frame_equal(a[columns], b[columns], check_exact=True)


def test_labels_at_is_the_centre_pixel_of_each_cell_and_label_ids_follows_it():
    """Both passes' label of a layer cell: the label at the cell's centre pixel (numpy, written out
    here), -1 where ignored (any negative id); ``label_ids`` holds 0 there and no one-hot column."""
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(-3, 5, (2, 30, 44), generator=g)
    ctx = BatchContext(torch.zeros(2, 1, 30, 44), None, labels, torch.zeros(2, dtype=torch.long), 5)
    for h, w in ((30, 44), (15, 22), (7, 11), (4, 3)):
        ys = np.floor((np.arange(h) + 0.5) * 30 / h).astype(int)
        xs = np.floor((np.arange(w) + 0.5) * 44 / w).astype(int)
        expected = np.maximum(labels.numpy()[:, ys][:, :, xs].reshape(2, -1), -1)
        np.testing.assert_array_equal(ctx.labels_at((h, w)).numpy(), expected)
        ids, onehot = ctx.label_ids((h, w))
        np.testing.assert_array_equal(ids.flatten(1).numpy(), np.maximum(expected, 0))
        np.testing.assert_array_equal(onehot.numpy().argmax(-1)[expected >= 0], expected[expected >= 0])
        assert not onehot.numpy()[expected < 0].any()


# ============================================================================ auto, on, off
def test_auto_runs_the_pass_only_where_the_label_cells_are_coarse(model, tmp_path, capsys):
    scenes = dict(KW, n=4)
    auto = record(model, "scenes:32", tmp_path / "auto", **scenes)  # 8 classes: the cells are the fine bins
    assert not auto.labels.iou_exact.any()
    assert all(s.iou is None for s in load_stats(auto).values() if hasattr(s, "iou"))
    on = record(model, "scenes:32", tmp_path / "on", iou_pass="on", **scenes)
    assert on.labels.iou_exact.all()
    maps = gate_values(model, parse_data("scenes:32", n=4), n=4)
    stats = load_stats(on)
    for name, (values, labels) in maps.items():
        iou, _ = exact_iou(values, labels, stats[name].iou.threshold.numpy(), 8)
        np.testing.assert_allclose(layer_grid(on.labels, name, "iou"), iou, rtol=0, atol=1e-9, equal_nan=True)
    # the estimate line counts the pass only when it runs
    capsys.readouterr()
    record(model, "scenes:32", tmp_path / "line-auto", **(scenes | {"progress": True}))
    assert "IoU pass" not in capsys.readouterr().err
    record(model, "scenes:32", tmp_path / "line-on", iou_pass="on", **(scenes | {"progress": True}))
    err = capsys.readouterr().err
    assert "for the IoU pass, a second forward over 4 images" in err and "iou pass line-on" in err


class Estimated(Exception):
    """Raised by the test's stand-in for check_duration: the recording stops at its estimate."""


def test_the_estimate_and_max_hours_include_the_pass(model, data, tmp_path, monkeypatch):
    line = estimate_line(1000, 0.01, iou_images=1000)
    assert "takes about 30 s" in line and "including about 10 s for the IoU pass" in line
    assert estimate_line(1000, 0.01) == estimate_line(1000, 0.01, iou_images=0)
    assert time_estimate(0.01, 1000, 1000) == pytest.approx(30.0)
    seen = []

    def check(estimate, images, max_hours):  # what --max-hours is checked against
        seen.append(estimate)
        raise Estimated

    monkeypatch.setattr(loop, "check_duration", check)
    monkeypatch.setattr(loop, "time_estimate", lambda per_image, images, iou_images=0: 1000 * images + iou_images)
    for mode in ("auto", "off"):
        with pytest.raises(Estimated):
            record(model, data, tmp_path / mode, iou_pass=mode, **KW)
    assert seen == [1000 * N + N, 1000 * N]


def test_a_bad_iou_pass_value_is_one_clear_line(ade, tmp_path, capsys):
    with pytest.raises(SettingsError, match="--iou-pass must be one of auto, on, off, not 'maybe'"):
        RecordSettings(iou_pass="maybe")
    code = main(["record", "--model", "gated-scenes", "--random-init", "--data", "scenes:32", "--n", "4",
                 "--out", str(tmp_path / "run"), "--iou-pass", "maybe"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == ("gateprobe record: error: --iou-pass must be one of auto, on, off, "
                                         "not 'maybe'")
    assert not (tmp_path / "run").exists()


# ============================================================================ state and merging
def test_counts_add_only_for_the_same_thresholds():
    threshold = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    a, b = IouCounts(threshold, 4), IouCounts(threshold.clone(), 4)
    a.inter_[:, 1:] = torch.arange(12).view(3, 4)
    b.inter_[:, 1:] = 1
    assert a.merge(b) is a and torch.equal(a.inter, (torch.arange(12).view(3, 4) + 1).T)
    assert a.merge(IouCounts(threshold + 1e-12, 4)) is None and a.merge(None) is None
    again = IouCounts.from_state_dict(a.state_dict())
    assert torch.equal(again.threshold, a.threshold) and torch.equal(again.inter, a.inter)
    assert a.inter_.dtype == torch.int32 and a.state_dict()["inter"].dtype == torch.int64
    big = IouCounts(threshold, 4)  # counts that could pass 2**31 are int64, and stay exact
    big.merge(IouCounts.from_state_dict({"threshold": threshold, "inter": torch.full((4, 3), 2 ** 31 - 1)}))
    big.merge(IouCounts.from_state_dict({"threshold": threshold, "inter": torch.full((4, 3), 5)}))
    assert big.inter_.dtype == torch.int64 and (big.inter == 2 ** 31 + 4).all()


def test_a_float32_value_is_counted_above_exactly_when_it_exceeds_the_float64_threshold():
    threshold = torch.tensor([0.1, 1 / 3, -2.0, 7.0], dtype=torch.float64)  # two not float32 numbers, two that are
    counts = IouCounts(threshold, 1)
    near = threshold.float()[:, None] + torch.tensor([-1, 0, 1]) * torch.finfo(torch.float32).eps * 8
    values = torch.stack([torch.nextafter(threshold.float(), torch.tensor(-np.inf)), threshold.float(),
                          torch.nextafter(threshold.float(), torch.tensor(np.inf))], 1)
    for v in (near, values):
        ctx = BatchContext(torch.zeros(1, 1, 1, 3), None, torch.zeros(1, 1, 3, dtype=torch.long),
                           torch.zeros(1, dtype=torch.long), 1)
        counts.inter_.zero_()
        counts.add(v[None, :, None, :], ctx)
        expected = (v.double() > threshold[:, None]).sum(1)
        assert torch.equal(counts.inter[0], expected), (v, counts.inter)


def test_merging_runs_drops_the_counts_of_other_thresholds_and_says_how_to_get_exact_ones(model, data, runs,
                                                                                         tmp_path, capsys):
    parts = [record(model, data, tmp_path / f"s{i}", shard=(i, 2), **KW) for i in range(2)]
    assert all(p.labels.iou_exact.all() for p in parts)
    capsys.readouterr()
    merged = merge_runs([p.path for p in parts], tmp_path / "merged")
    assert capsys.readouterr().err.strip() == CELL_IOU_NOTE
    assert not merged.labels.iou_exact.any()
    assert all(s.iou is None for s in load_stats(merged).values())
    # the merged IoU is the cells' read-out of the whole run, as without the pass
    np.testing.assert_allclose(merged.labels.iou.to_numpy(), runs["off"].labels.iou.to_numpy(), rtol=1e-9,
                               equal_nan=True)
    merge_runs([p.path for p in parts][:1], tmp_path / "one", allow_partial=True)  # one run: its counts stay
    assert CELL_IOU_NOTE not in capsys.readouterr().err


def test_a_state_of_version_7_loads_without_counts_and_reads_the_cell_iou(runs):
    run = runs["auto"]
    stats = load_stats(run)
    for s in stats.values():
        state = {k: v for k, v in s.state_dict().items() if not k.startswith("iou.")}
        s.load_state_dict(state | {"state_version": torch.tensor(7)})
        assert s.iou is None
    _, labels = channel_and_label_tables(stats, run.manifest["layers"], run.classes, 0.005)
    assert not labels.iou_exact.any()
    np.testing.assert_allclose(labels.iou.to_numpy(), runs["off"].labels.iou.to_numpy(), rtol=1e-12, equal_nan=True)
    frame = run.labels.drop(columns="iou_exact")  # a labels table written before the column
    validate.check_table(run.path / "labels.parquet", "labels", frame, run.manifest, run.layers)
    bad = run.labels.assign(iou_exact=run.labels.iou_exact.astype(np.float64))
    with pytest.raises(probe.RunError, match="'iou_exact' is float64, not bool"):
        validate.check_table(run.path / "labels.parquet", "labels", bad, run.manifest, run.layers)


def test_a_label_of_one_pixel_gets_an_auc_inside_0_1():
    """Found by the 150-label runs above: the cells' linear fit put one-pixel labels at AUC -0.03
    or 1.0003, and such a run did not load (validate: auc outside [0, 1])."""
    total = np.zeros((1, 16), np.int64)
    total[0, [0, 1, 7]] = [100, 100, 1]  # the label's one pixel in fine bin 7, above all others: AUC 1
    bounds = np.array([0, 8, 16])
    counts, moments = np.array([[[1, 0]]]), np.array([[[7, 0]]])  # the cells' fit alone would say 2.49
    auc, bound = auc_from_cells(counts, moments, total, bounds)
    assert auc[0, 0] == 1.0 and bound[0, 0] >= 0


# ============================================================================ resume
class SecondRead:
    """A dataset that raises KeyboardInterrupt the second time item ``at`` is read (the IoU pass
    reads every item again); ``reads`` counts the reads of each item."""

    def __init__(self, data, at: int):
        self.data, self.at, self.classes, self.reads = data, at, data.classes, {}

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads[i] = self.reads.get(i, 0) + 1
        if i == self.at and self.reads[i] == 2:
            raise KeyboardInterrupt
        return self.data[i]

    def spec(self):
        return self.data.spec()


def test_a_run_interrupted_in_the_iou_pass_resumes_it_where_its_checkpoint_is(model, data, runs, tmp_path):
    kw = dict(KW, batch_size=2, checkpoint_every=1)
    reference = record(model, data, tmp_path / "reference", **kw)
    stopped = SecondRead(data, 6)  # the pass's 4th batch: its checkpoints are after images 2, 4 and 6
    with pytest.raises(KeyboardInterrupt):
        record(model, stopped, tmp_path / "run", **kw)
    assert stopped.reads[7] == 1  # image 7 was recorded once, not yet counted
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert (progress["position"], progress["iou_position"]) == ("8", "6")
    again = SecondRead(data, -1)
    resumed = record(model, again, tmp_path / "run", resume=True, **kw)
    assert again.reads.get(4, 0) == again.reads.get(5, 0) == 0 and again.reads[6] == again.reads[7] == 1
    assert not (resumed.path / PROGRESS).exists()
    for table in ("layers", "channels", "labels", "evolution"):
        pd.testing.assert_frame_equal(getattr(resumed, table), getattr(reference, table), check_exact=True)
    assert resumed.labels.iou_exact.all()


# ============================================================================ Ray (slow)
@pytest.mark.slow  # a Ray instance and its workers: `make test`'s second step
def test_ray_counts_the_iou_on_its_workers_also_when_one_dies_in_the_pass(runs, ade, tmp_path):
    ray = pytest.importorskip("ray")
    import os

    from probe.recording.distributed import record_ray

    save_checkpoint(gated_model(), tmp_path / "model")
    marker = tmp_path / "killed"

    def die_once(index, batch_positions):  # in the IoU pass's task of shard 1, after its first batch
        if index == 1 and not marker.exists():
            marker.touch()
            os._exit(1)

    assert not ray.is_initialized()
    run = record_ray(str(tmp_path / "model"), parse_data(f"ade20k:{ade}", size=SIZE), tmp_path / "ray", shards=2,
                     num_cpus=2, iou_fault_hook=die_once, **KW)
    assert marker.exists() and not ray.is_initialized()
    assert run.labels.iou_exact.all()
    reference = runs["auto"]  # the same batches (two shards of one batch each): the same counts
    np.testing.assert_allclose(run.labels.iou.to_numpy(), reference.labels.iou.to_numpy(), rtol=1e-12,
                               equal_nan=True)
    for name, s in load_stats(run).items():
        assert torch.equal(s.iou.inter, load_stats(reference)[name].iou.inter), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counting_a_batch_on_the_gpu_reads_no_device_value():
    g = torch.Generator().manual_seed(0)
    values, labels = torch.randn(4, 6, 16, 16, generator=g), torch.randint(-1, 150, (4, 64, 64), generator=g)
    threshold = torch.randn(6, generator=g, dtype=torch.float64)
    on_cpu, on_gpu = IouCounts(threshold, 150), IouCounts(threshold.cuda(), 150)
    group = torch.zeros(4, dtype=torch.long)
    on_cpu.add(values, BatchContext(torch.zeros(4, 1, 64, 64), None, labels, group, 150))
    ctx = BatchContext(torch.zeros(4, 1, 64, 64, device="cuda"), None, labels.cuda(), group.cuda(), 150)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu.add(values.cuda(), ctx)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(on_gpu.inter.cpu(), on_cpu.inter)
