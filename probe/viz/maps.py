"""Map figures: a layer's channel maps as small multiples, one sample's images and label map, one
channel across samples, the valid mask through the partial layers, and the live page's canvas."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .images import box_path, masked_input, mosaic, outline, plane, png_uri, tile_origin, to_rgb8, upsample
from .style import (GATE_SCALE, HIGHLIGHT, LABEL_PALETTE, MASK_SCALE, ROLE_COLORS, ROLE_ORDER, axis_ref, columns, esc,
                    figure, message_figure, role_category, trace)


def channel_grid(maps: np.ndarray, order: Sequence[int] | None = None, roles: Sequence[str] | None = None,
                 tile_labels: Sequence[str] | None = None, columns: int | None = None, normalize: bool = False,
                 zrange: tuple[float, float] = (0.0, 1.0), colorscale=GATE_SCALE, unit: str = "channel",
                 value_name: str = "gate", title: str | None = None, tile_px: int = 46,
                 highlight: int | None = None) -> go.Figure:
    """Small multiples of ``maps`` ``[C, h, w]`` (one tile per channel) as one heatmap.

    ``order`` lists the channels in display order (default 0..C-1); ``roles`` (one per channel)
    outlines each tile in its role colour (``none``: no outline); ``tile_labels`` (one per channel)
    name the tiles (default: the channel number). Every cell's ``customdata`` is its channel (-1
    between tiles), so a click tells which channel was hit. ``normalize`` stretches each tile to
    its own min-max range; ``layout.meta`` records ``order``, ``columns``, ``gap`` and ``tile``.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] == 0:
        return message_figure("No maps to show.")
    C, h, w = maps.shape
    order = list(range(C)) if order is None else [int(c) for c in order]
    tiles = maps[order]
    if normalize:
        lo = np.nanmin(tiles, axis=(1, 2), keepdims=True)
        hi = np.nanmax(tiles, axis=(1, 2), keepdims=True)
        tiles = (tiles - lo) / np.where(hi - lo > 1e-6, hi - lo, 1.0)
        zrange = (0.0, 1.0)
    gap = max(1, round(max(h, w) / 10))
    z, index, (rows, cols, gap) = mosaic(tiles, columns, gap)
    lookup = np.asarray(order + [-1], dtype=np.int16 if C < 32000 else np.int32)
    channel_of_cell = lookup[index]
    data = [trace("heatmap", z=z, customdata=channel_of_cell, zmin=zrange[0], zmax=zrange[1], colorscale=colorscale,
                       hoverongaps=False, name="maps",
                       colorbar={"thickness": 10, "len": 0.7, "title": {
                           "text": esc(value_name) + (" (min-max)" if normalize else ""), "side": "right"}},
                       hovertemplate=esc(unit) + " %{customdata}<br>" + esc(value_name)
                                     + " %{z:.3f}<extra></extra>")]
    labels = [str(c) for c in order] if tile_labels is None else [str(tile_labels[c]) for c in order]
    origins = [tile_origin(i, h, w, cols, gap) for i in range(len(order))]
    label_room = max(2.0, h * 0.28)
    data.append(trace("scatter", x=[x + w / 2 - 0.5 for _, x in origins], y=[y - 0.5 for y, _ in origins],
                           text=[esc(t) for t in labels], mode="text", textposition="top center",
                           textfont={"size": 9 if len(order) > 40 else 10, "color": "#444"},
                           hoverinfo="skip", showlegend=False, name="tile labels"))
    if roles is not None:
        by_cat: dict[str, list] = {}
        for (y, x), c in zip(origins, order):
            cat = role_category(roles[c])
            if cat != "none":
                by_cat.setdefault(cat, []).append((x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5))
        for cat in ROLE_ORDER[:-1]:
            xs, ys = box_path(by_cat.get(cat, []))
            data.append(trace("scatter", x=xs, y=ys, mode="lines", name=f"role {cat}",
                                   line={"color": ROLE_COLORS[cat], "width": 2.5}, hoverinfo="skip", showlegend=False))
    if highlight is not None and highlight in order:
        y, x = origins[order.index(highlight)]
        xs, ys = box_path([(x - 1, y - 1, x + w, y + h)])
        data.append(trace("scatter", x=xs, y=ys, mode="lines", line={"color": HIGHLIGHT, "width": 3}, hoverinfo="skip",
                               showlegend=False, name="selected"))
    rows_px = rows * tile_px * (h + gap + label_room) / max(h, 1)
    height = int(min(1500, max(200, rows_px + 24 + (30 if title else 0))))
    return figure(data, title, height=height, margin={"l": 6, "r": 6, "t": 36 if title else 6, "b": 6},
                   meta={"order": order, "columns": cols, "rows": rows, "gap": gap, "tile": [h, w]},
                   legend={"orientation": "h", "y": 0, "yanchor": "top", "x": 0, "font": {"size": 11}},
                   xaxis={"visible": False, "range": [-0.5, z.shape[1] - 0.5], "constrain": "domain"},
                   yaxis={"visible": False, "range": [z.shape[0] - 0.5, -0.5 - label_room], "scaleanchor": "x",
                          "constrain": "domain"})


def grid_tile(fig: go.Figure, position: int) -> np.ndarray:
    """The ``z`` block of display position ``position`` in a :func:`channel_grid` figure."""
    meta = fig.layout.meta
    h, w = meta["tile"]
    y, x = tile_origin(position, h, w, meta["columns"], meta["gap"])
    return np.asarray(fig.data[0].z, dtype=np.float32)[y:y + h, x:x + w]


def _label_scale(n: int) -> list:
    scale = []
    for i in range(n):
        color = LABEL_PALETTE[i % len(LABEL_PALETTE)]
        scale += [[i / n, color], [(i + 1) / n, color]]
    return scale


def image_panel(image: np.ndarray, hole: np.ndarray, sketch: np.ndarray | None, labels: np.ndarray | None,
                classes: Sequence[str], output: np.ndarray | None = None, title: str | None = None,
                height: int = 220) -> go.Figure:
    """One sample side by side: the image, the model input (hole grey, sketch strokes white), the
    label map (hover names the class) and, when given, the model output."""
    panels = ["image", "input: hole + sketch"] + (["labels"] if labels is not None else []) + \
             (["output"] if output is not None else [])
    layout, notes = columns(len(panels), 0.015, panels)
    H, W = np.asarray(image).shape[-2:]
    data = []
    sources = {"image": image, "input: hole + sketch": masked_input(image, hole, sketch), "output": output}
    for i, panel in enumerate(panels):
        xa, ya = axis_ref(i)
        if panel == "labels":
            lab = np.asarray(labels).astype(np.int32)
            n = max(len(classes), 1)
            names = np.asarray([esc(c) for c in classes] + ["?"], dtype=object)
            data.append(trace("heatmap", z=lab, zmin=-0.5, zmax=n - 0.5, colorscale=_label_scale(n), showscale=False,
                                   name="labels", customdata=names[np.clip(lab, 0, len(classes))],
                                   hovertemplate="%{customdata}<extra></extra>", xaxis=xa, yaxis=ya))
        else:
            data.append(trace("image", source=png_uri(to_rgb8(sources[panel])), name=panel, hoverinfo="skip",
                                 xaxis=xa, yaxis=ya))
        k = "" if i == 0 else str(i + 1)
        layout[f"xaxis{k}"].update(visible=False, range=[-0.5, W - 0.5])
        layout[f"yaxis{k}"].update(visible=False, range=[H - 0.5, -0.5], scaleanchor=xa)
    return figure(data, title, height=height, margin={"l": 2, "r": 2, "t": 46 if title else 22, "b": 2},
                   annotations=notes, meta={"panels": panels}, **layout)


def label_legend(classes: Sequence[str]) -> list[tuple[str, str]]:
    """``(class name, colour)`` pairs of the label maps, for an HTML legend."""
    return [(str(c), LABEL_PALETTE[i % len(LABEL_PALETTE)]) for i, c in enumerate(classes)]


def channel_samples(images: np.ndarray, holes: np.ndarray, maps: np.ndarray, sample_ids: Sequence[int] | None = None,
                    sketches: np.ndarray | None = None, title: str | None = None, normalize: bool = False,
                    ) -> go.Figure:
    """One channel across the stored samples: the inputs (top) above the channel's map ``[K, h, w]``
    upsampled to the image size (bottom heatmap, hole outlined in red)."""
    images = np.asarray(images, dtype=np.float32)
    K, _, H, W = images.shape
    maps = np.asarray(maps, dtype=np.float32)
    ids = list(range(K)) if sample_ids is None else [int(s) for s in sample_ids]
    gap = max(2, W // 16)
    width = K * (W + gap) - gap
    strip = np.ones((H, width, 3), dtype=np.float32)
    big = np.full((H, width), np.nan, dtype=np.float32)
    which = np.full(big.shape, -1, dtype=np.int32)
    outline_x, outline_y = [np.zeros(0)], [np.zeros(0)]
    for k in range(K):
        x0 = k * (W + gap)
        strip[:, x0:x0 + W] = np.moveaxis(masked_input(images[k], holes[k], None if sketches is None else sketches[k]),
                                          0, -1)
        m = maps[k]
        if normalize:
            lo, hi = np.nanmin(m), np.nanmax(m)
            m = (m - lo) / (hi - lo if hi - lo > 1e-6 else 1.0)
        big[:, x0:x0 + W] = upsample(m, (H, W))
        which[:, x0:x0 + W] = ids[k]
        xs, ys = outline(plane(holes[k]) > 0.5, dx=x0)
        outline_x.append(xs)
        outline_y.append(ys)
    outline_x, outline_y = np.concatenate(outline_x), np.concatenate(outline_y)
    room = H * 0.2
    data = [trace("image", source=png_uri(to_rgb8(strip)), name="inputs", hoverinfo="skip", xaxis="x", yaxis="y"),
            trace("scatter", x=[k * (W + gap) + W / 2 - 0.5 for k in range(K)], y=[-0.5] * K, mode="text",
                       text=[f"sample {s}" for s in ids], textposition="top center", hoverinfo="skip",
                       showlegend=False, textfont={"size": 10}, xaxis="x", yaxis="y"),
            trace("heatmap", z=big, customdata=which, zmin=0, zmax=1, colorscale=GATE_SCALE, hoverongaps=False,
                   name="gate",
                       colorbar={"thickness": 10, "len": 0.45, "y": 0.22,
                                 "title": {"text": "gate" + (" (min-max)" if normalize else ""), "side": "right"}},
                       hovertemplate="sample %{customdata}<br>gate %{z:.3f}<extra></extra>", xaxis="x2", yaxis="y2"),
            trace("scatter", x=outline_x, y=outline_y, mode="lines", name="hole outline",
                       line={"color": "#ff4d4d", "width": 1}, hoverinfo="skip", showlegend=False,
                       xaxis="x2", yaxis="y2")]
    split = (H + room) / (2 * H + room + 4)
    ratio = width / (2 * H + room)
    height = int(max(200, min(600, 1300 / ratio + 40)))
    return figure(data, title, height=height, margin={"l": 2, "r": 2, "t": 30 if title else 4, "b": 2},
                   meta={"gap": gap, "size": [H, W], "samples": ids},
                   xaxis={"visible": False, "range": [-0.5, width - 0.5], "domain": [0, 0.94]},
                   yaxis={"visible": False, "range": [H - 0.5, -0.5 - room], "domain": [1 - split, 1],
                          "scaleanchor": "x"},
                   xaxis2={"visible": False, "range": [-0.5, width - 0.5], "domain": [0, 0.94], "matches": "x",
                           "anchor": "y2"},
                   yaxis2={"visible": False, "range": [H - 0.5, -0.5], "domain": [0, 1 - split - 0.02],
                           "anchor": "x2", "scaleanchor": "x2"})


def mask_evolution(valid_maps: Sequence[np.ndarray], layer_names: Sequence[str], size: tuple[int, int],
                   highlight: str | None = None, columns: int | None = None,
                   title: str | None = None) -> go.Figure:
    """The valid mask of one sample at every partial layer (each ``[h, w]`` or ``[1, h, w]``,
    upsampled to ``size`` for display), in execution order, the highlighted layer outlined.
    Each cell's ``customdata`` is its layer's position, so a click selects that layer."""
    if not len(valid_maps):
        return message_figure("No partial-convolution layers in this run.")
    H, W = size
    tiles = np.stack([upsample(plane(m), size) for m in valid_maps])
    n = len(tiles)
    gap = max(2, W // 10)
    z, index, (rows, cols, gap) = mosaic(tiles, columns or min(n, 6), gap)
    origins = [tile_origin(i, H, W, cols, gap) for i in range(n)]
    fractions = [float(np.mean(plane(m))) for m in valid_maps]
    dims = [f"{plane(m).shape[0]}×{plane(m).shape[1]}" for m in valid_maps]
    room = H * 0.22
    data = [trace("heatmap", z=z, customdata=index, zmin=0, zmax=1, colorscale=MASK_SCALE, hoverongaps=False,
                       showscale=False, name="valid",
                       hovertemplate="layer #%{customdata}<br>valid %{z:.0f}<extra></extra>"),
            trace("scatter", x=[x + W / 2 - 0.5 for _, x in origins], y=[y - 0.5 for y, _ in origins], mode="text",
                       text=[f"{esc(name)} · {d} · {f:.0%} valid"
                             for name, d, f in zip(layer_names, dims, fractions)],
                       textposition="top center", textfont={"size": 10}, hoverinfo="skip", showlegend=False,
                       name="layer names")]
    if highlight in list(layer_names):
        y, x = origins[list(layer_names).index(highlight)]
        xs, ys = box_path([(x - 1.5, y - 1.5, x + W + 0.5, y + H + 0.5)])
        data.append(trace("scatter", x=xs, y=ys, mode="lines", line={"color": HIGHLIGHT, "width": 3}, hoverinfo="skip",
                               showlegend=False, name="selected"))
    height = int(max(180, rows * 175 + 20))
    return figure(data, title, height=height, margin={"l": 4, "r": 4, "t": 36 if title else 4, "b": 4},
                   meta={"columns": cols, "gap": gap, "fractions": fractions, "layers": [str(v) for v in layer_names]},
                   xaxis={"visible": False, "range": [-2, z.shape[1] + 1]},
                   yaxis={"visible": False, "range": [z.shape[0] + 1, -0.5 - room], "scaleanchor": "x"})


def drawing_canvas(image: np.ndarray, hole: np.ndarray | None = None, sketch: np.ndarray | None = None,
                   height: int = 420) -> go.Figure:
    """The live page's canvas: the image (with the current hole grey and sketch white) in pixel
    coordinates, in rectangle-drawing mode; rectangles and closed paths add hole, open paths are
    sketch strokes (see ``dashboards.pages.live``)."""
    shown = image if hole is None else masked_input(image, hole, sketch)
    H, W = np.asarray(image).shape[-2:]
    return figure([trace("image", source=png_uri(to_rgb8(shown)), name="canvas", hoverinfo="skip")], None,
                   height=height,
                   margin={"l": 2, "r": 2, "t": 2, "b": 2}, dragmode="drawrect",
                   newshape={"line": {"color": "#ff1744", "width": 2}, "fillcolor": "rgba(255,23,68,0.25)",
                             "opacity": 1},
                   xaxis={"visible": False, "range": [-0.5, W - 0.5], "fixedrange": True},
                   yaxis={"visible": False, "range": [H - 0.5, -0.5], "scaleanchor": "x", "fixedrange": True},
                   meta={"size": [int(H), int(W)]})


def mask_detail(image: np.ndarray, hole: np.ndarray, valid: np.ndarray, coverage: np.ndarray,
                title: str | None = None, height: int = 260) -> go.Figure:
    """One partial layer for one sample: the input (hole grey), the layer's valid mask and its
    window coverage (share of valid inputs under each window), both ``[h, w]`` shown at the image
    size with the input hole outlined in red."""
    H, W = np.asarray(image).shape[-2:]
    valid, coverage = plane(valid), plane(coverage)
    dims = f"{valid.shape[0]}×{valid.shape[1]}"
    layout, notes = columns(3, 0.03, ["input (grey = hole)", f"valid mask ({dims})", f"window coverage ({dims})"])
    xs, ys = outline(plane(hole) > 0.5)
    data = [trace("image", source=png_uri(to_rgb8(masked_input(image, hole))), name="input", hoverinfo="skip"),
            trace("heatmap", z=upsample(valid, (H, W)), zmin=0, zmax=1, colorscale=MASK_SCALE, showscale=False,
                   name="valid",
                       hovertemplate="valid %{z:.0f}<extra></extra>", xaxis="x2", yaxis="y2"),
            trace("heatmap", z=upsample(coverage, (H, W)), zmin=0, zmax=1, colorscale=GATE_SCALE, name="coverage",
                       colorbar={"thickness": 10, "len": 0.9, "title": {"text": "coverage", "side": "right"}},
                       hovertemplate="coverage %{z:.3f}<extra></extra>", xaxis="x3", yaxis="y3")]
    for i in (1, 2):
        xa, ya = axis_ref(i)
        data.append(trace("scatter", x=xs, y=ys, mode="lines", line={"color": "#ff4d4d", "width": 1},
                               hoverinfo="skip", showlegend=False, name="hole outline", xaxis=xa, yaxis=ya))
    for i in range(3):
        k = "" if i == 0 else str(i + 1)
        layout[f"xaxis{k}"].update(visible=False, range=[-0.5, W - 0.5])
        layout[f"yaxis{k}"].update(visible=False, range=[H - 0.5, -0.5], scaleanchor=axis_ref(i)[0])
    return figure(data, title, height=height, margin={"l": 2, "r": 2, "t": 46 if title else 22, "b": 2},
                   annotations=notes, **layout)


def image_row(images: Sequence[np.ndarray], titles: Sequence[str], title: str | None = None,
              height: int = 240) -> go.Figure:
    """Images ``[3, H, W]`` (floats in [0, 1]) side by side under their (escaped) ``titles``."""
    layout, notes = columns(len(images), 0.015, [esc(t) for t in titles])
    data = []
    for i, image in enumerate(images):
        xa, ya = axis_ref(i)
        H, W = np.asarray(image).shape[-2:]
        data.append(trace("image", source=png_uri(to_rgb8(image)), name=str(titles[i]), hoverinfo="skip", xaxis=xa,
                             yaxis=ya))
        k = "" if i == 0 else str(i + 1)
        layout[f"xaxis{k}"].update(visible=False, range=[-0.5, W - 0.5])
        layout[f"yaxis{k}"].update(visible=False, range=[H - 0.5, -0.5], scaleanchor=xa)
    return figure(data, title, height=height, margin={"l": 2, "r": 2, "t": 46 if title else 22, "b": 2},
                   annotations=notes, meta={"titles": [str(t) for t in titles]}, **layout)
