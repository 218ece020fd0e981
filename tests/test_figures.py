"""probe.viz: every builder, on real small runs recorded into a temporary folder (no browser)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from probe import load_run, viz


@pytest.fixture(scope="module")
def runs(copy_scenes_runs, tmp_path_factory):
    """Random-init gated-scenes and pconv-scenes runs, 16 Scenes images at 32x32 (conftest.scenes_runs, copied)."""
    root = copy_scenes_runs(tmp_path_factory.mktemp("figure-runs"))
    return load_run(root / "gated"), load_run(root / "pconv")


@pytest.fixture(scope="module")
def gated(runs):
    return runs[0]


@pytest.fixture(scope="module")
def pconv(runs):
    return runs[1]


def _trace(fig: go.Figure, name: str):
    matches = [t for t in fig.data if t.name == name]
    assert matches, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return matches[0]


def _array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def test_layer_summary_is_channel_means_in_depth_order(gated):
    fig = viz.layer_summary(gated.channels, gated.layers, highlight="encoder.1")
    order = list(gated.layers.sort_values("depth").layer)
    expected = gated.channels.groupby("layer").mean_hole.mean().reindex(order)
    hole = _trace(fig, "mean gate in hole")
    assert list(hole.x) == order
    np.testing.assert_allclose(_array(hole.y), expected.to_numpy())
    valid = _trace(fig, "mean gate on valid pixels")
    np.testing.assert_allclose(_array(valid.y), gated.channels.groupby("layer").mean_valid.mean().reindex(order))
    share = _trace(fig, "share of channels with role hole")
    has_hole = gated.channels.role.str.split("+").apply(lambda p: "hole" in p)
    np.testing.assert_allclose(_array(share.y), has_hole.groupby(gated.channels.layer).mean().reindex(order))
    assert len(fig.layout.shapes) == 1  # the highlight band


def test_layer_summary_of_a_partial_run_says_why_it_is_empty(pconv):
    fig = viz.layer_summary(pconv.channels, pconv.layers)
    assert "gated" in fig.layout.meta["message"]
    assert not fig.data


def test_valid_fraction_curve_is_the_evolution_table(pconv):
    ev = pconv.evolution.sort_values("depth")
    fig = viz.valid_fraction_curve(pconv.evolution, highlight=ev.layer.iloc[1])
    measured = _trace(fig, "valid fraction (measured)")
    predicted = _trace(fig, "valid fraction (predicted)")
    assert list(measured.x) == list(ev.layer)
    np.testing.assert_allclose(_array(measured.y), ev.valid_fraction.to_numpy())
    np.testing.assert_allclose(_array(predicted.y), ev.valid_fraction_predicted.to_numpy())
    np.testing.assert_allclose(_array(_trace(fig, "images entirely valid").y), ev.all_valid_images.to_numpy())


def test_coverage_histogram_is_the_layer_histogram(pconv):
    row = pconv.evolution.iloc[0]
    fig = viz.coverage_histogram(pconv.evolution, row.layer)
    bars = fig.data[0]
    edges = np.asarray(row.coverage_edges)
    np.testing.assert_allclose(_array(bars.y), np.asarray(row.coverage_hist, dtype=np.float64))
    np.testing.assert_allclose(_array(bars.x), (edges[:-1] + edges[1:]) / 2)
    assert "flipped" in fig.layout.title.text
    assert viz.coverage_histogram(pconv.evolution, "no-such-layer").layout.meta["message"]


def test_channel_grid_tiles_follow_the_order_and_carry_the_channel(gated):
    layer = "encoder.1"
    maps = np.asarray(gated.sample_map(layer)[0], dtype=np.float32)
    channels = gated.channels[gated.channels.layer == layer].sort_values("channel")
    order = list(channels.sort_values("auc_hole", ascending=False).channel)
    fig = viz.channel_grid(maps, order=order, roles=list(channels.role))
    heat = fig.data[0]
    assert heat.type == "heatmap"
    assert fig.layout.meta["order"] == order
    h, w = maps.shape[1:]
    for position in (0, 1, len(order) - 1):
        np.testing.assert_allclose(viz.grid_tile(fig, position), maps[order[position]], atol=1e-6)
        y, x = viz.tile_origin(position, h, w, fig.layout.meta["columns"], fig.layout.meta["gap"])
        assert np.all(np.asarray(heat.customdata)[y:y + h, x:x + w] == order[position])
    assert np.asarray(heat.customdata).min() == -1  # the gaps between tiles
    assert [t.text for t in fig.data if t.name == "tile labels"][0][0] == str(order[0])
    outlined = {t.name for t in fig.data if t.name.startswith("role ")}
    assert outlined == {"role hole", "role valid", "role sketch", "role semantic"}
    roles_present = {viz.role_category(r) for r in channels.role} - {"none"}
    for cat in roles_present:  # each present role has one box (5 points + a gap) per channel
        trace = _trace(fig, f"role {cat}")
        n = sum(viz.role_category(r) == cat for r in channels.role)
        assert len(trace.x) == 6 * n


def test_channel_grid_normalize_stretches_each_tile():
    maps = np.stack([np.full((4, 4), 0.4), np.linspace(0.45, 0.55, 16).reshape(4, 4)]).astype(np.float32)
    maps[0, 0, 0] = 0.5
    fig = viz.channel_grid(maps, normalize=True, tile_labels=["a", "b"])
    np.testing.assert_allclose(viz.grid_tile(fig, 1).min(), 0.0, atol=1e-6)
    np.testing.assert_allclose(viz.grid_tile(fig, 1).max(), 1.0, atol=1e-6)
    assert list(fig.data[1].text) == ["a", "b"]


def test_image_panel_shows_image_input_labels_and_output(gated):
    image, hole, sketch = (np.asarray(gated.sample_input(k)[1], dtype=np.float32) for k in ("image", "hole", "sketch"))
    labels, output = gated.sample_input("labels")[1], gated.sample_input("output")[1]
    fig = viz.image_panel(image, hole, sketch, labels, gated.classes, output)
    assert [t.type for t in fig.data] == ["image", "image", "heatmap", "image"]
    assert fig.layout.meta["panels"] == ["image", "input: hole + sketch", "labels", "output"]
    np.testing.assert_array_equal(np.asarray(fig.data[2].z), np.asarray(labels))
    assert all(t.source.startswith("data:image/png;base64,") for t in fig.data if t.type == "image")
    shown = viz.masked_input(image, hole, sketch)
    assert np.all(shown[:, hole[0] > 0.5] != image[:, hole[0] > 0.5]) or (hole > 0.5).sum() == 0


def test_gate_histograms_split_cells_by_the_hole_at_layer_resolution(gated):
    from dashboards.store import RunView

    view = RunView(gated)
    layer, channel = "encoder.1", 3
    maps = view.channel_maps(layer, channel)
    holes = [view.hole_at(k, maps.shape[-2:]) for k in range(view.n_samples)]
    hole_values = np.concatenate([m[h] for m, h in zip(maps, holes)])
    valid_values = np.concatenate([m[~h] for m, h in zip(maps, holes)])
    assert hole_values.size + valid_values.size == maps.size
    fig = viz.gate_histograms(hole_values, valid_values, 0.4, 0.6, bins=20)
    valid_bars, hole_bars = fig.data
    np.testing.assert_allclose(_array(hole_bars.y).sum(), 1.0)
    counts, _ = np.histogram(np.clip(hole_values, 0, 1), np.linspace(0, 1, 21))
    np.testing.assert_allclose(_array(hole_bars.y), counts / counts.sum())
    assert len(fig.layout.shapes) == 2


def test_label_bars_follow_class_order(gated):
    rows = gated.labels[(gated.labels.layer == "encoder.2") & (gated.labels.channel == 5)]
    fig = viz.label_bars(rows.sample(frac=1, random_state=0), gated.classes)
    auc, iou = fig.data
    assert list(auc.x) == gated.classes
    np.testing.assert_allclose(_array(auc.y), rows.set_index("label").auc.reindex(gated.classes).to_numpy())
    np.testing.assert_allclose(_array(iou.y), rows.set_index("label").iou.reindex(gated.classes).to_numpy())


@pytest.mark.parametrize("value", ["auc", "iou"])
def test_label_heatmap_is_the_labels_pivot(gated, value):
    layer = "encoder.3"
    fig = viz.label_heatmap(gated.labels, layer, value, gated.classes)
    pivot = gated.labels[gated.labels.layer == layer].pivot_table(index="label", columns="channel", values=value)
    pivot = pivot.reindex(gated.classes)
    np.testing.assert_allclose(_array(fig.data[0].z), pivot.to_numpy(), equal_nan=True)
    assert list(fig.data[0].y) == gated.classes
    assert list(fig.data[0].x) == list(pivot.columns)
    with pytest.raises(ValueError):
        viz.label_heatmap(gated.labels, layer, "mean_in")


def test_channel_scatter_has_every_channel_with_its_address(gated):
    fig = viz.channel_scatter(gated.channels, gated.labels, highlight_layer="encoder.0")
    points = [(row[0], int(row[1])) for trace in fig.data for row in trace.customdata]
    assert sorted(points) == sorted(zip(gated.channels.layer, gated.channels.channel.astype(int)))
    best = gated.labels.groupby(["layer", "channel"]).auc.max()
    auc_hole = gated.channels.set_index(["layer", "channel"]).auc_hole
    for trace in fig.data:
        assert trace.name in viz.ROLE_COLORS
        for x, y, row in zip(trace.x, trace.y, trace.customdata):
            key = (row[0], int(row[1]))
            assert x == pytest.approx(auc_hole[key]) and y == pytest.approx(best[key])


def test_mask_evolution_shows_each_layer_upsampled(pconv):
    names = list(pconv.evolution.sort_values("depth").layer)
    valid = [np.asarray(pconv.sample_map(name, "valid")[0]) for name in names]
    size = tuple(pconv.manifest["image_size"])
    fig = viz.mask_evolution(valid, names, size, highlight=names[2])
    meta = fig.layout.meta
    np.testing.assert_allclose(meta["fractions"], [v.mean() for v in valid], rtol=1e-6)
    H, W = size
    for i in (0, len(names) - 1):
        y, x = viz.tile_origin(i, H, W, meta["columns"], meta["gap"])
        tile = np.asarray(fig.data[0].z, dtype=np.float32)[y:y + H, x:x + W]
        np.testing.assert_array_equal(tile, viz.upsample(valid[i][0], size))
        assert np.all(np.asarray(fig.data[0].customdata)[y:y + H, x:x + W] == i)
    assert any(t.name == "selected" for t in fig.data)


def test_diversity_bars_one_series_per_run(gated, pconv):
    fig = viz.diversity_bars({"g": gated.layers, "p": pconv.layers})
    assert [t.name for t in fig.data] == ["g", "p"]
    np.testing.assert_allclose(_array(fig.data[0].y), gated.layers.sort_values("depth").effective_channels)
    np.testing.assert_allclose(_array(fig.data[1].y), pconv.layers.sort_values("depth").effective_channels,
                               equal_nan=True)


def test_channel_samples_rows_align_with_the_maps(gated):
    images = np.asarray(gated.sample_input("image"), dtype=np.float32)
    holes = np.asarray(gated.sample_input("hole"), dtype=np.float32)
    maps = np.asarray(gated.sample_map("encoder.1")[:, 2], dtype=np.float32)
    fig = viz.channel_samples(images, holes, maps)
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    H, W = images.shape[-2:]
    gap = fig.layout.meta["gap"]
    for k in range(len(images)):
        block = np.asarray(heat.z)[:, k * (W + gap):k * (W + gap) + W]
        np.testing.assert_allclose(block, viz.upsample(maps[k], (H, W)), atol=1e-6)


def test_small_builders(gated, pconv):
    image = np.asarray(gated.sample_input("image")[0], dtype=np.float32)
    hole = np.asarray(gated.sample_input("hole")[0], dtype=np.float32)
    layer = pconv.evolution.layer.iloc[0]
    valid = pconv.sample_map(layer, "valid")[0]
    detail = viz.mask_detail(image, hole, valid, pconv.sample_map(layer, "coverage")[0])
    assert [t.name for t in detail.data][:3] == ["input", "valid", "coverage"]
    row = viz.image_row([image, image], ["a", "b"])
    assert len(row.data) == 2 and row.layout.meta["titles"] == ["a", "b"]
    canvas = viz.drawing_canvas(image, hole)
    assert canvas.layout.dragmode == "drawrect" and canvas.layout.meta["size"] == list(image.shape[-2:])


def test_data_strings_are_escaped_for_plotly():
    evil = "<img src=x onerror=alert(1)>"
    labels = pd.DataFrame({"layer": "L", "channel": [0, 0], "label_id": [0, 1], "label": [evil, "sky"],
                           "auc": [0.9, 0.2], "iou": [0.1, 0.0], "q_value": [0.01, 0.5]})
    channels = pd.DataFrame({"layer": ["L"], "channel": [0], "auc_hole": [0.5], "role": [f"semantic:{evil}"],
                             "mean_hole": [0.5], "mean_valid": [0.5]})
    heat = viz.label_heatmap(labels, "L", "auc", [evil, "sky"])
    assert evil not in heat.to_json() and viz.esc(evil) in list(heat.data[0].y)
    scatter = viz.channel_scatter(channels, labels)
    assert list(scatter.data[0].customdata[0]) == ["L", 0]  # raw, for navigation
    hover = scatter.data[0].text[0]
    assert evil not in hover and hover.count("&lt;img") == 2  # role and best label, escaped
    bars = viz.label_bars(labels, [evil, "sky"])
    assert list(bars.data[0].x)[0] == "&lt;img src=x onerror=alert(1)&gt;"
    assert evil not in viz.message_figure(evil).to_json()
    div = viz.diversity_bars({evil: pd.DataFrame({"layer": ["L"], "kind": ["gated"], "depth": [0],
                                                      "effective_channels": [2.0]})})
    assert div.data[0].name == viz.esc(evil)
    titled = viz.channel_grid(np.zeros((1, 2, 2)), tile_labels=[evil], title=evil)
    assert titled.layout.title.text == viz.esc(evil) and list(titled.data[1].text) == [viz.esc(evil)]


def test_embedding_scatter_keeps_channel_addresses(gated):
    embedding = pd.DataFrame({"layer": gated.channels.layer, "channel": gated.channels.channel,
                              "pc1": np.arange(len(gated.channels), dtype=float), "pc2": 0.0, "cluster": 1})
    fig = viz.embedding_scatter(embedding, gated.channels, highlight_layer="encoder.0")
    points = sorted((row[0], int(row[1])) for trace in fig.data for row in trace.customdata)
    assert points == sorted(zip(gated.channels.layer, gated.channels.channel.astype(int)))
    assert sorted(x for trace in fig.data for x in trace.x) == list(embedding.pc1)
    assert viz.embedding_scatter(None, gated.channels).layout.meta["message"]


def test_role_category():
    assert viz.role_category("hole+semantic:sky") == "hole"
    assert viz.role_category("semantic:brick wall") == "semantic"
    assert viz.role_category("none") == "none"
    assert viz.role_category(None) == "none"


@pytest.mark.slow  # a fresh interpreter that imports gateprobe: `make test`'s second step
def test_viz_does_not_import_dash():
    code = "import sys, probe.viz; print('dash' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
