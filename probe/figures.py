"""Pure plotly figure builders, shared by the dashboard and the HTML report.

Every builder takes tables (the tidy frames of :mod:`probe.tables`) or arrays (the sample maps of
:class:`probe.run.Run`) and returns a :class:`plotly.graph_objects.Figure`; none reads files, holds
state or imports Dash, so tests and reports call them directly.

Names that come from data (run, layer and class names, roles) are escaped with :func:`esc` before
they reach any plotly text (titles, tick labels, hover text, annotations): plotly renders a subset
of HTML in those, and a class called ``<b>sky</b>`` must show as typed, not as markup. Values used
for navigation (``customdata`` read back by click callbacks) keep the raw names.

Conventions: gate maps are in (0, 1) and drawn on a fixed 0-1 colour scale unless a builder is
asked to normalise; masks are drawn valid = light, hole = dark; images are ``[3, H, W]`` floats in
[0, 1] and are embedded as PNG data URIs (compact, pixel-exact).
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

ROLE_COLORS = {"hole": "#d62728", "valid": "#1f77b4", "sketch": "#2ca02c", "semantic": "#9467bd",
               "none": "#9e9e9e"}
ROLE_ORDER = ("hole", "valid", "sketch", "semantic", "none")
GATE_SCALE = "Viridis"
MASK_SCALE = [[0.0, "#2b2b2b"], [1.0, "#f2f2f2"]]  # hole (0) dark, valid (1) light
LABEL_PALETTE = ("#8ecae6", "#57a773", "#b5523b", "#9c8f7a", "#2a6f97", "#f4a261", "#e9c46a", "#c77dff",
                 "#ff70a6", "#70d6ff", "#ffd670", "#c0c0c0")
HOLE_TINT = np.array([0.55, 0.55, 0.55], dtype=np.float32)
SKETCH_TINT = np.array([1.0, 1.0, 1.0], dtype=np.float32)
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=12)


# ---------------------------------------------------------------- helpers

def esc(text) -> str:
    """``text`` made safe for plotly's HTML-like strings (``&``, ``<``, ``>`` escaped)."""
    return html.escape(str(text), quote=False)


def role_category(role: str | None) -> str:
    """The first part of a ``role`` (``hole+semantic:sky`` -> ``hole``; ``semantic:sky`` -> ``semantic``)."""
    if not isinstance(role, str) or not role:
        return "none"
    first = role.split("+", 1)[0]
    return "semantic" if first.startswith("semantic") else (first if first in ROLE_COLORS else "none")


def role_color(role: str | None) -> str:
    return ROLE_COLORS[role_category(role)]


def _base_layout(fig: go.Figure, title: str | None = None, height: int | None = None, **extra) -> go.Figure:
    fig.update_layout(template="plotly_white", font=FONT, margin=dict(l=50, r=20, t=40 if title else 16, b=40),
                      title=dict(text=title, x=0.01, xanchor="left", font=dict(size=14)) if title else None,
                      height=height, **extra)
    return fig


def message_figure(text: str, height: int = 220) -> go.Figure:
    """An empty figure that says ``text`` (escaped): what a view shows when it has nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=esc(text), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=13, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _base_layout(fig, height=height, meta={"message": str(text)})


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` (or ``[H, W, 3]``, or ``[H, W]``) floats in [0, 1] -> ``[H, W, 3]`` uint8."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return (np.clip(np.nan_to_num(a), 0, 1) * 255 + 0.5).astype(np.uint8)


def png_uri(rgb8: np.ndarray) -> str:
    """A ``data:image/png;base64`` URI of an ``[H, W, 3]`` uint8 array."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb8)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plane(a) -> np.ndarray:
    """``[1, H, W]`` or ``[H, W]`` -> ``[H, W]`` float32."""
    a = np.asarray(a, dtype=np.float32)
    return a[0] if a.ndim == 3 else a


def masked_input(image: np.ndarray, hole: np.ndarray, sketch: np.ndarray | None = None) -> np.ndarray:
    """What the model sees, for display: ``image`` ``[3,H,W]`` with the hole grey and the sketch
    strokes (inside the hole) white; returns ``[3, H, W]`` float32."""
    img = np.asarray(image, dtype=np.float32).copy()
    h = _plane(hole) > 0.5
    img[:, h] = HOLE_TINT[:, None]
    if sketch is not None:
        s = (_plane(sketch) > 0.5) & h
        img[:, s] = SKETCH_TINT[:, None]
    return img


def upsample(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of ``[h, w]`` to ``size`` (integer factors, else index lookup)."""
    plane = np.asarray(plane, dtype=np.float32)
    h, w = plane.shape
    H, W = size
    if (h, w) == (H, W):
        return plane
    ys = np.minimum((np.arange(H) * h) // H, h - 1)
    xs = np.minimum((np.arange(W) * w) // W, w - 1)
    return plane[ys][:, xs]


def _grid_shape(n: int, tile_h: int, tile_w: int, columns: int | None) -> tuple[int, int]:
    if columns is None:
        columns = max(1, math.ceil(math.sqrt(n * 1.6 * tile_h / max(tile_w, 1))))
    columns = max(1, min(columns, n))
    return math.ceil(n / columns), columns


def mosaic(tiles: np.ndarray, columns: int | None = None, gap: int = 1) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Lay ``tiles`` ``[N, h, w]`` out on a grid: returns ``z`` (NaN between tiles), ``index`` (the
    tile position of every cell, -1 between tiles) and ``(rows, columns, gap)``."""
    n, h, w = tiles.shape
    rows, cols = _grid_shape(n, h, w, columns)
    z = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    index = np.full(z.shape, -1, dtype=np.int32)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = r * (h + gap), c * (w + gap)
        z[y:y + h, x:x + w] = tiles[i]
        index[y:y + h, x:x + w] = i
    return z, index, (rows, cols, gap)


def _tile_origin(i: int, h: int, w: int, cols: int, gap: int) -> tuple[int, int]:
    r, c = divmod(i, cols)
    return r * (h + gap), c * (w + gap)


def _box_path(boxes: list[tuple[float, float, float, float]]) -> tuple[list, list]:
    """x and y coordinates of rectangle outlines (x0, y0, x1, y1), None-separated, for one trace."""
    xs, ys = [], []
    for x0, y0, x1, y1 in boxes:
        xs += [x0, x1, x1, x0, x0, None]
        ys += [y0, y0, y1, y1, y0, None]
    return xs, ys


def _image_axes(fig: go.Figure, row=None, col=None) -> None:
    kw = {} if row is None else dict(row=row, col=col)
    fig.update_xaxes(visible=False, constrain="domain", **kw)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=None, **kw)


# ---------------------------------------------------------------- run-level figures

def _layer_order(layers: pd.DataFrame, kind: str | None = None) -> list[str]:
    if layers is None or layers.empty:
        return []
    frame = layers if kind is None else layers[layers.kind == kind]
    return list(frame.sort_values("depth").layer)


def layer_summary(channels: pd.DataFrame, layers: pd.DataFrame, highlight: str | None = None,
                  title: str | None = "Mean gate in the hole vs on valid pixels, per gated layer") -> go.Figure:
    """Per gated layer (depth order): the mean over channels of ``mean_hole`` and ``mean_valid``
    (lines, +- the spread across channels), and the share of channels whose role includes
    ``hole`` / ``sketch`` (bars, right axis; claims G4, G5)."""
    order = _layer_order(layers, "gated")
    if channels is None or channels.empty or not order:
        return message_figure("No gated layers in this run: the layer summary applies to gated convolutions.")
    by = channels.groupby("layer", sort=False)
    mean = by[["mean_hole", "mean_valid"]].mean().reindex(order)
    spread = by[["mean_hole", "mean_valid"]].std().reindex(order)
    roles = channels.role.fillna("none").astype(str) if "role" in channels else pd.Series("none", channels.index)
    share = pd.DataFrame({"layer": channels.layer,
                          "hole": roles.str.split("+").apply(lambda p: "hole" in p),
                          "sketch": roles.str.split("+").apply(lambda p: "sketch" in p)})
    share = share.groupby("layer", sort=False)[["hole", "sketch"]].mean().reindex(order)
    x = [esc(name) for name in order]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for col, name, color in (("hole", "share of channels with role hole", ROLE_COLORS["hole"]),
                             ("sketch", "share of channels with role sketch", ROLE_COLORS["sketch"])):
        fig.add_trace(go.Bar(x=x, y=share[col].to_numpy(), name=name, marker_color=color, opacity=0.22,
                             hovertemplate="%{x}: %{y:.0%}<extra>" + esc(name) + "</extra>"), secondary_y=True)
    for col, name, color in (("mean_hole", "mean gate in hole", ROLE_COLORS["hole"]),
                             ("mean_valid", "mean gate on valid pixels", ROLE_COLORS["valid"])):
        fig.add_trace(go.Scatter(x=x, y=mean[col].to_numpy(), name=name, mode="lines+markers",
                                 line=dict(color=color, width=2),
                                 error_y=dict(type="data", array=spread[col].fillna(0).to_numpy(), thickness=1,
                                              width=3, color=color),
                                 hovertemplate="%{x}: %{y:.3f}<extra>" + esc(name) + "</extra>"),
                      secondary_y=False)
    if highlight in order:
        fig.add_vrect(x0=order.index(highlight) - 0.45, x1=order.index(highlight) + 0.45,
                      fillcolor="#ffd54f", opacity=0.3, line_width=0, layer="below")
    fig.update_yaxes(title_text="mean gate", range=[0, 1], secondary_y=False)
    fig.update_yaxes(title_text="share of channels", range=[0, 1], showgrid=False, tickformat=".0%",
                     secondary_y=True)
    fig.update_xaxes(type="category", tickangle=-40)
    return _base_layout(fig, title, height=330, barmode="group",
                        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))


def valid_fraction_curve(evolution: pd.DataFrame, highlight: str | None = None,
                         title: str | None = "Valid fraction per partial layer: measured vs predicted") -> go.Figure:
    """Per partial layer (depth order): measured ``valid_fraction`` (+- its spread across images),
    ``valid_fraction_predicted`` from kernel/stride/dilation, and the share of images whose mask
    is all valid; the first layer where every image is all valid is marked (claim P3)."""
    if evolution is None or evolution.empty:
        return message_figure("No partial-convolution layers in this run: mask evolution applies to partial convolutions.")
    ev = evolution.sort_values("depth")
    x = [esc(name) for name in ev.layer]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=ev.valid_fraction.to_numpy(), name="valid fraction (measured)",
                             mode="lines+markers", line=dict(color="#1f77b4", width=2),
                             error_y=dict(type="data", array=ev.get("valid_fraction_std", 0 * ev.valid_fraction)
                                          .to_numpy(), thickness=1, width=3),
                             hovertemplate="%{x}: %{y:.4f}<extra>measured</extra>"))
    fig.add_trace(go.Scatter(x=x, y=ev.valid_fraction_predicted.to_numpy(), name="valid fraction (predicted)",
                             mode="lines+markers", line=dict(color="#ff7f0e", dash="dash"),
                             marker=dict(symbol="x"), hovertemplate="%{x}: %{y:.4f}<extra>predicted</extra>"))
    if "all_valid_images" in ev:
        fig.add_trace(go.Scatter(x=x, y=ev.all_valid_images.to_numpy(), name="images entirely valid",
                                 mode="lines", line=dict(color="#2ca02c", dash="dot"),
                                 hovertemplate="%{x}: %{y:.0%}<extra>images all valid</extra>"))
        full = ev[ev.all_valid_images >= 1.0]
        if len(full):
            first = full.iloc[0].layer
            fig.add_annotation(x=esc(first), y=1.0, text="first all-valid layer: " + esc(first), showarrow=True,
                               arrowhead=2, ay=-30, font=dict(size=11))
    if highlight in list(ev.layer):
        i = list(ev.layer).index(highlight)
        fig.add_vrect(x0=i - 0.45, x1=i + 0.45, fillcolor="#ffd54f", opacity=0.3, line_width=0, layer="below")
    fig.update_yaxes(title_text="fraction of valid locations", range=[0, 1.08])
    fig.update_xaxes(type="category", tickangle=-40)
    return _base_layout(fig, title, height=330,
                        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))


def coverage_histogram(evolution: pd.DataFrame, layer: str, title: str | None = None) -> go.Figure:
    """Window coverage (share of valid inputs under the window) at the locations of ``layer`` that
    flipped from hole to valid: the information the binary mask update throws away (claim P2)."""
    if evolution is None or evolution.empty or layer not in set(evolution.layer):
        return message_figure(f"No coverage histogram for layer {layer!s}.")
    row = evolution[evolution.layer == layer].iloc[0]
    counts = np.asarray(row.coverage_hist, dtype=np.float64)
    edges = np.asarray(row.coverage_edges, dtype=np.float64)
    if counts.size == 0 or counts.sum() == 0:
        return message_figure(f"Layer {layer}: no location flipped from hole to valid.")
    centres = (edges[:-1] + edges[1:]) / 2
    share = counts / counts.sum()
    fig = go.Figure(go.Bar(x=centres, y=counts, width=np.diff(edges), marker_color="#5c6bc0",
                           customdata=np.stack([edges[:-1], edges[1:], share], axis=1), name="flipped locations",
                           hovertemplate="coverage %{customdata[0]:.3f}-%{customdata[1]:.3f}: %{y:,.0f} "
                                         "(%{customdata[2]:.1%})<extra></extra>"))
    mean = float((centres * share).sum())
    window = float(row.get("window", 0) or 0)
    if window > 0:
        fig.add_vline(x=1.0 / window, line_dash="dot", line_color="#d62728",
                      annotation_text="one valid input", annotation_position="top right")
    fig.add_vline(x=mean, line_dash="dash", line_color="#333", annotation_text=f"mean {mean:.2f}",
                  annotation_position="top left")
    fig.update_xaxes(title_text="window coverage (valid inputs / window)", range=[0, 1])
    fig.update_yaxes(title_text="flipped locations")
    title = title if title is not None else (f"{esc(layer)}: coverage of the {int(counts.sum()):,} locations "
                                             "that flipped hole → valid")
    return _base_layout(fig, title, height=300, showlegend=False, bargap=0.05)


def diversity_bars(layers_by_run: Mapping[str, pd.DataFrame],
                   title: str | None = "Effective number of distinct channel maps per layer") -> go.Figure:
    """``effective_channels`` (participation ratio of the channel covariance: 1 = one shared mask,
    claim P4; many = diverse soft gates, claim G3) per layer, one bar group per run, by depth."""
    fig = go.Figure()
    for i, (run, layers) in enumerate(layers_by_run.items()):
        if layers is None or layers.empty:
            continue
        frame = layers.sort_values("depth")
        fig.add_trace(go.Bar(x=frame.depth.to_numpy(), y=frame.effective_channels.to_numpy(dtype=np.float64),
                             name=esc(run), customdata=np.stack([[esc(v) for v in frame.layer],
                                                                 [esc(v) for v in frame.kind]], axis=1),
                             hovertemplate="%{customdata[0]} (%{customdata[1]}): %{y:.2f}<extra>" + esc(run)
                                           + "</extra>"))
    if not fig.data:
        return message_figure("No layers to compare.")
    fig.add_hline(y=1, line_dash="dot", line_color="#999", annotation_text="1 = one shared mask",
                  annotation_position="bottom right")
    fig.update_xaxes(title_text="layer depth (execution order)", dtick=1)
    fig.update_yaxes(title_text="effective channels", rangemode="tozero")
    return _base_layout(fig, title, height=320, barmode="group",
                        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))


# ---------------------------------------------------------------- maps

def channel_grid(maps: np.ndarray, order: Sequence[int] | None = None, roles: Sequence[str] | None = None,
                 tile_labels: Sequence[str] | None = None, columns: int | None = None, normalize: bool = False,
                 zrange: tuple[float, float] = (0.0, 1.0), colorscale=GATE_SCALE, unit: str = "channel",
                 title: str | None = None, tile_px: int = 44, value_name: str = "gate") -> go.Figure:
    """Small multiples of ``maps`` ``[C, h, w]`` (one tile per channel) as one heatmap.

    ``order`` lists the channels in display order (default 0..C-1); ``roles`` (one per channel)
    outlines each tile in its role colour (``none`` gets no outline); ``tile_labels`` name the tiles
    (default: the channel number). Each cell's ``customdata`` is its channel (-1 between tiles), so a
    click tells which channel was hit. ``normalize`` stretches each tile to its own min-max range.
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
    gap = max(1, round(max(h, w) / 12))
    z, index, (rows, cols, gap) = mosaic(tiles, columns, gap)
    channel_of_cell = np.where(index >= 0, np.asarray(order + [-1], dtype=np.int32)[index], -1)
    fig = go.Figure(go.Heatmap(z=z, customdata=channel_of_cell, zmin=zrange[0], zmax=zrange[1], colorscale=colorscale,
                               hoverongaps=False, xgap=0, ygap=0, name="maps",
                               colorbar=dict(thickness=10, len=0.8, title=dict(text=esc(value_name) +
                                             (" (per-tile min-max)" if normalize else ""), side="right")),
                               hovertemplate=esc(unit) + " %{customdata}<br>" + esc(value_name)
                               + " %{z:.3f}<extra></extra>"))
    labels = [str(c) for c in order] if tile_labels is None else [str(tile_labels[c]) for c in order]
    origins = [_tile_origin(i, h, w, cols, gap) for i in range(len(order))]
    # tile names as one text trace (cheaper than one annotation per tile)
    fig.add_trace(go.Scatter(x=[x + w / 2 - 0.5 for _, x in origins], y=[y - 0.5 - gap * 0.15 for y, _ in origins],
                             text=[esc(t) for t in labels], mode="text", textposition="top center",
                             textfont=dict(size=9 if len(order) > 40 else 10, color="#444"),
                             hoverinfo="skip", showlegend=False, name="tile labels"))
    if roles is not None:
        by_cat: dict[str, list] = {}
        for (y, x), c in zip(origins, order):
            cat = role_category(roles[c])
            if cat != "none":
                by_cat.setdefault(cat, []).append((x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5))
        for cat in ROLE_ORDER:
            if cat == "none":
                continue
            xs, ys = _box_path(by_cat.get(cat, []))
            fig.add_trace(go.Scatter(x=xs or [None], y=ys or [None], mode="lines", name=f"role: {cat}",
                                     line=dict(color=ROLE_COLORS[cat], width=2.5), hoverinfo="skip",
                                     showlegend=True))
    label_room = gap + 6
    fig.update_xaxes(visible=False, range=[-0.5, z.shape[1] - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[z.shape[0] - 0.5, -0.5 - label_room], scaleanchor="x", constrain="domain")
    px = max(tile_px, 0)
    height = int(min(1400, max(220, rows * px * (h + gap) / max(h, 1) + 90)))
    _base_layout(fig, title, height=height, meta={"order": order, "columns": cols, "rows": rows, "gap": gap,
                                                  "tile": [h, w]},
                 legend=dict(orientation="h", y=-0.02, yanchor="top", x=0, font=dict(size=11)),
                 hovermode="closest", plot_bgcolor="white")
    fig.update_layout(margin=dict(l=10, r=10, t=40 if title else 10, b=30))
    return fig


def grid_tile(fig: go.Figure, maps_shape: tuple[int, int, int], position: int) -> np.ndarray:
    """The ``z`` block of tile ``position`` in a :func:`channel_grid` figure (for tests and readers)."""
    meta = fig.layout.meta
    h, w = meta["tile"]
    y, x = _tile_origin(position, h, w, meta["columns"], meta["gap"])
    return np.asarray(fig.data[0].z, dtype=np.float32)[y:y + h, x:x + w]


def image_panel(image: np.ndarray, hole: np.ndarray, sketch: np.ndarray | None, labels: np.ndarray | None,
                classes: Sequence[str], output: np.ndarray | None = None, title: str | None = None,
                height: int = 230) -> go.Figure:
    """One sample side by side: the image, the model input (hole grey, sketch strokes white), the
    label map (hover names the class) and, when given, the model output."""
    panels = ["image", "input: hole + sketch", "labels"] + (["output"] if output is not None else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.02)
    H, W = np.asarray(image).shape[-2:]
    fig.add_trace(go.Image(source=png_uri(to_rgb8(image)), name="image", hoverinfo="skip"), 1, 1)
    fig.add_trace(go.Image(source=png_uri(to_rgb8(masked_input(image, hole, sketch))), name="input",
                           hoverinfo="skip"), 1, 2)
    if labels is not None:
        lab = np.asarray(labels).astype(np.int32)
        n = max(len(classes), 1)
        palette = [LABEL_PALETTE[i % len(LABEL_PALETTE)] for i in range(n)]
        scale = []
        for i, color in enumerate(palette):
            scale += [[i / n, color], [(i + 1) / n, color]]
        names = np.asarray([esc(c) for c in classes] + ["?"], dtype=object)
        fig.add_trace(go.Heatmap(z=lab, zmin=-0.5, zmax=n - 0.5, colorscale=scale, showscale=False, name="labels",
                                 customdata=names[np.clip(lab, 0, len(classes))],
                                 hovertemplate="%{customdata}<extra></extra>"), 1, 3)
    if output is not None:
        fig.add_trace(go.Image(source=png_uri(to_rgb8(output)), name="output", hoverinfo="skip"), 1, 4)
    for c in range(1, len(panels) + 1):
        fig.update_xaxes(visible=False, range=[-0.5, W - 0.5], row=1, col=c)
        fig.update_yaxes(visible=False, range=[H - 0.5, -0.5], scaleanchor=f"x{'' if c == 1 else c}", row=1, col=c)
    fig.update_annotations(font=dict(size=11))
    return _base_layout(fig, title, height=height, margin=dict(l=4, r=4, t=28 if not title else 50, b=4))


def label_legend(classes: Sequence[str]) -> list[tuple[str, str]]:
    """``(class name, colour)`` pairs of :func:`image_panel`'s label map, for an HTML legend."""
    return [(str(c), LABEL_PALETTE[i % len(LABEL_PALETTE)]) for i, c in enumerate(classes)]


def channel_samples(images: np.ndarray, holes: np.ndarray, maps: np.ndarray, sample_ids: Sequence[int] | None = None,
                    sketches: np.ndarray | None = None, title: str | None = None, normalize: bool = False) -> go.Figure:
    """One channel across the stored samples: the inputs (top row) above the channel's gate map
    upsampled to the image size (bottom row), with the hole outlined on the maps."""
    images = np.asarray(images, dtype=np.float32)
    K, _, H, W = images.shape
    maps = np.asarray(maps, dtype=np.float32)
    ids = list(range(K)) if sample_ids is None else [int(s) for s in sample_ids]
    gap = max(2, W // 16)
    strip = np.ones((H, K * (W + gap) - gap, 3), dtype=np.float32)
    big = np.full((H, K * (W + gap) - gap), np.nan, dtype=np.float32)
    which = np.full(big.shape, -1, dtype=np.int32)
    outline_x, outline_y = [], []
    for k in range(K):
        x0 = k * (W + gap)
        sk = None if sketches is None else sketches[k]
        strip[:, x0:x0 + W] = np.moveaxis(masked_input(images[k], holes[k], sk), 0, -1)
        m = maps[k]
        if normalize:
            lo, hi = np.nanmin(m), np.nanmax(m)
            m = (m - lo) / (hi - lo if hi - lo > 1e-6 else 1.0)
        big[:, x0:x0 + W] = upsample(m, (H, W))
        which[:, x0:x0 + W] = ids[k]
        # hole outline: the cell edges where the hole changes
        hole = _plane(holes[k]) > 0.5
        ys, xs = np.nonzero(hole[:, 1:] != hole[:, :-1])
        for y, x in zip(ys, xs):
            outline_x += [x0 + x + 0.5, x0 + x + 0.5, None]
            outline_y += [y - 0.5, y + 0.5, None]
        ys, xs = np.nonzero(hole[1:, :] != hole[:-1, :])
        for y, x in zip(ys, xs):
            outline_x += [x0 + x - 0.5, x0 + x + 0.5, None]
            outline_y += [y + 0.5, y + 0.5, None]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.04)
    fig.add_trace(go.Image(source=png_uri(to_rgb8(strip)), name="inputs", hoverinfo="skip"), 1, 1)
    fig.add_trace(go.Heatmap(z=big, customdata=which, zmin=0, zmax=1, colorscale=GATE_SCALE, hoverongaps=False,
                             name="gate", colorbar=dict(thickness=10, len=0.5, y=0.25,
                                                        title=dict(text="gate" + (" (min-max)" if normalize else ""),
                                                                   side="right")),
                             hovertemplate="sample %{customdata}<br>gate %{z:.3f}<extra></extra>"), 2, 1)
    fig.add_trace(go.Scatter(x=outline_x or [None], y=outline_y or [None], mode="lines", name="hole outline",
                             line=dict(color="#ff4d4d", width=1), hoverinfo="skip", showlegend=False), 2, 1)
    fig.add_trace(go.Scatter(x=[k * (W + gap) + W / 2 for k in range(K)], y=[-1] * K, mode="text",
                             text=[f"sample {s}" for s in ids], textposition="top center", hoverinfo="skip",
                             showlegend=False, textfont=dict(size=10)), 1, 1)
    for r in (1, 2):
        fig.update_xaxes(visible=False, range=[-0.5, big.shape[1] - 0.5], row=r, col=1)
        fig.update_yaxes(visible=False, range=[H - 0.5, -0.5 - (H * 0.18 if r == 1 else 0)], row=r, col=1)
    width_ratio = big.shape[1] / H
    height = int(max(220, min(520, 2 * 1100 / width_ratio + 60)))
    return _base_layout(fig, title, height=height, margin=dict(l=4, r=4, t=30 if title else 6, b=4),
                        meta={"gap": gap, "size": [H, W]})


def gate_histograms(hole_values: np.ndarray, valid_values: np.ndarray, mean_hole: float | None = None,
                    mean_valid: float | None = None, bins: int = 40, title: str | None = None) -> go.Figure:
    """Distribution of a channel's gate over hole cells vs valid cells (probability per bin), with
    the run-wide ``mean_hole`` / ``mean_valid`` of the channels table as dashed lines."""
    hole_values = np.asarray(hole_values, dtype=np.float32).ravel()
    valid_values = np.asarray(valid_values, dtype=np.float32).ravel()
    if hole_values.size == 0 and valid_values.size == 0:
        return message_figure("No gate values to histogram.")
    fig = go.Figure()
    size = 1.0 / bins
    for values, name, color in ((valid_values, "valid", ROLE_COLORS["valid"]), (hole_values, "hole", ROLE_COLORS["hole"])):
        fig.add_trace(go.Histogram(x=values, name=f"{name} ({values.size:,} cells)", histnorm="probability",
                                   xbins=dict(start=0, end=1, size=size), marker_color=color, opacity=0.6,
                                   hovertemplate="gate %{x}: %{y:.1%}<extra>" + name + "</extra>"))
    for value, name, color in ((mean_hole, "run mean in hole", ROLE_COLORS["hole"]),
                               (mean_valid, "run mean valid", ROLE_COLORS["valid"])):
        if value is not None and np.isfinite(value):
            fig.add_vline(x=float(value), line_dash="dash", line_color=color)
    fig.update_xaxes(title_text="gate value", range=[0, 1])
    fig.update_yaxes(title_text="share of cells", tickformat=".0%")
    return _base_layout(fig, title, height=280, barmode="overlay",
                        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))


def label_bars(rows: pd.DataFrame, classes: Sequence[str] | None = None, alpha: float = 0.05,
               title: str | None = None) -> go.Figure:
    """Per-label AUC (label vs the rest; 0.5 = no separation) and IoU (Network Dissection) of one
    channel; faint bars are not significant (``q_value >= alpha``)."""
    if rows is None or rows.empty:
        return message_figure("No label statistics for this channel.")
    rows = rows.sort_values("label_id") if "label_id" in rows else rows
    if classes is not None:
        rank = {c: i for i, c in enumerate(classes)}
        rows = rows.assign(_rank=rows.label.map(rank)).sort_values("_rank", kind="stable")
    x = [esc(v) for v in rows.label]
    significant = (rows.q_value < alpha).to_numpy() if "q_value" in rows else np.ones(len(rows), bool)
    opacity = np.where(significant, 1.0, 0.35)
    q = rows.q_value.to_numpy() if "q_value" in rows else np.full(len(rows), np.nan)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("AUC (label vs rest)", "IoU above threshold"),
                        horizontal_spacing=0.1)
    fig.add_trace(go.Bar(x=x, y=rows.auc.to_numpy(), name="AUC", marker=dict(color="#5c6bc0", opacity=opacity),
                         customdata=q, hovertemplate="%{x}: AUC %{y:.3f} (q %{customdata:.2g})<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=x, y=rows.iou.to_numpy(), name="IoU", marker=dict(color="#26a69a", opacity=opacity),
                         customdata=q, hovertemplate="%{x}: IoU %{y:.3f} (q %{customdata:.2g})<extra></extra>"), 1, 2)
    fig.add_hline(y=0.5, line_dash="dot", line_color="#999", row=1, col=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_xaxes(tickangle=-35, type="category")
    fig.update_annotations(font=dict(size=12))
    return _base_layout(fig, title, height=280, showlegend=False)


def label_heatmap(labels: pd.DataFrame, layer: str, value: str = "auc", classes: Sequence[str] | None = None,
                  title: str | None = None) -> go.Figure:
    """Label x channel heatmap of ``value`` (``auc`` or ``iou``) for ``layer``:
    ``labels[labels.layer == layer].pivot_table(index="label", columns="channel", values=value)``,
    rows in class order. Clicking a cell gives the channel as ``x``."""
    if value not in ("auc", "iou"):
        raise ValueError(f"value must be 'auc' or 'iou', not {value!r}")
    frame = labels[labels.layer == layer] if labels is not None and not labels.empty else None
    if frame is None or frame.empty:
        return message_figure(f"No label statistics for layer {layer}.")
    pivot = frame.pivot_table(index="label", columns="channel", values=value)
    if classes is not None:
        pivot = pivot.reindex([c for c in classes if c in pivot.index])
    z = pivot.to_numpy(dtype=np.float64)
    auc = value == "auc"
    fig = go.Figure(go.Heatmap(z=z, x=pivot.columns.to_numpy(), y=[esc(v) for v in pivot.index],
                               colorscale="RdBu_r" if auc else "Viridis", zmin=0 if auc else 0,
                               zmax=1 if auc else max(float(np.nanmax(z)) if np.isfinite(z).any() else 1.0, 1e-3),
                               zmid=0.5 if auc else None, name=value,
                               colorbar=dict(thickness=10, title=dict(text=value.upper(), side="right")),
                               hovertemplate="channel %{x}<br>%{y}<br>" + value.upper() + " %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="channel (click to open)", type="category" if z.shape[1] <= 64 else "linear",
                     showgrid=False)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    return _base_layout(fig, title, height=max(260, 26 * z.shape[0] + 110), meta={"value": value})


def best_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, channel): the label with the highest AUC (``best_label``, ``best_auc``)."""
    if labels is None or labels.empty:
        return pd.DataFrame(columns=["layer", "channel", "best_label", "best_auc"])
    idx = labels.groupby(["layer", "channel"], sort=False).auc.idxmax()
    best = labels.loc[idx.dropna().astype(int), ["layer", "channel", "label", "auc"]]
    return best.rename(columns={"label": "best_label", "auc": "best_auc"}).reset_index(drop=True)


def channel_scatter(channels: pd.DataFrame, labels: pd.DataFrame, highlight_layer: str | None = None,
                    title: str | None = "Every gated channel: hole selectivity vs best label") -> go.Figure:
    """All channels: ``auc_hole`` (x) vs the AUC of their best label (y), one trace per role
    category; ``customdata`` rows are ``(layer, channel, ...)`` so a click opens that channel.
    With ``highlight_layer``, the other layers' channels are drawn faint."""
    if channels is None or channels.empty:
        return message_figure("No gated channels in this run.")
    frame = channels.merge(best_labels(labels), on=["layer", "channel"], how="left")
    frame["category"] = frame.role.map(role_category) if "role" in frame else "none"
    fig = go.Figure()
    for cat in ROLE_ORDER:
        part = frame[frame.category == cat]
        if part.empty:
            continue
        roles = part.role.astype(str) if "role" in part else pd.Series("none", part.index)
        custom = np.stack([part.layer.astype(str).to_numpy(), part.channel.to_numpy().astype(object),
                           np.asarray([esc(v) for v in part.layer], dtype=object),
                           np.asarray([esc(v) for v in roles], dtype=object),
                           np.asarray([esc(v) for v in part.best_label.fillna("-")], dtype=object)], axis=1)
        opacity = (np.where(part.layer == highlight_layer, 0.95, 0.18) if highlight_layer is not None
                   else np.full(len(part), 0.75))
        size = np.where(part.layer == highlight_layer, 9, 6) if highlight_layer is not None else 7
        fig.add_trace(go.Scattergl(x=part.auc_hole.to_numpy(), y=part.best_auc.to_numpy(), mode="markers",
                                   name=cat, customdata=custom,
                                   marker=dict(color=ROLE_COLORS[cat], opacity=opacity, size=size,
                                               line=dict(width=0)),
                                   hovertemplate="%{customdata[2]} · channel %{customdata[1]}<br>role %{customdata[3]}"
                                                 "<br>AUC hole %{x:.3f}<br>best label %{customdata[4]}: "
                                                 "%{y:.3f}<extra></extra>"))
    for v in (0.3, 0.7):
        fig.add_vline(x=v, line_dash="dot", line_color="#bbb")
    fig.add_hline(y=0.7, line_dash="dot", line_color="#bbb")
    fig.update_xaxes(title_text="AUC hole vs valid (1: gate higher in hole; 0: higher on valid)", range=[0, 1])
    fig.update_yaxes(title_text="AUC of best label", range=[0.3, 1])
    return _base_layout(fig, title, height=420, legend=dict(title=dict(text="role")), hovermode="closest",
                        clickmode="event")


def mask_evolution(valid_maps: Sequence[np.ndarray], layer_names: Sequence[str], size: tuple[int, int],
                   highlight: str | None = None, columns: int | None = None,
                   title: str | None = None) -> go.Figure:
    """The valid mask of one sample at every partial layer (each ``[h, w]`` or ``[1, h, w]``,
    upsampled to ``size`` for display), in execution order; the highlighted layer is outlined.
    ``customdata`` of each cell is the layer's position, so a click selects it."""
    if not len(valid_maps):
        return message_figure("No partial-convolution layers in this run.")
    tiles = np.stack([upsample(_plane(m), size) for m in valid_maps])
    H, W = size
    n = len(tiles)
    columns = columns or min(n, 5)
    gap = max(2, W // 12)
    z, index, (rows, cols, gap) = mosaic(tiles, columns, gap)
    fig = go.Figure(go.Heatmap(z=z, customdata=index, zmin=0, zmax=1, colorscale=MASK_SCALE, hoverongaps=False,
                               showscale=False, name="valid",
                               hovertemplate="layer #%{customdata}<br>valid %{z:.0f}<extra></extra>"))
    origins = [_tile_origin(i, H, W, cols, gap) for i in range(n)]
    fractions = [float(np.mean(_plane(m))) for m in valid_maps]
    shapes = [f"{_plane(m).shape[0]}×{_plane(m).shape[1]}" for m in valid_maps]
    fig.add_trace(go.Scatter(x=[x + W / 2 for _, x in origins], y=[y - 1 for y, _ in origins], mode="text",
                             text=[f"{esc(name)} · {s} · {f:.0%} valid" for name, s, f in
                                   zip(layer_names, shapes, fractions)],
                             textposition="top center", textfont=dict(size=10), hoverinfo="skip", showlegend=False))
    if highlight in list(layer_names):
        y, x = origins[list(layer_names).index(highlight)]
        xs, ys = _box_path([(x - 1, y - 1, x + W, y + H)])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#ffb300", width=3), hoverinfo="skip",
                                 showlegend=False, name="selected"))
    fig.update_xaxes(visible=False, range=[-1.5, z.shape[1] + 0.5])
    fig.update_yaxes(visible=False, range=[z.shape[0] + 0.5, -0.5 - H * 0.22], scaleanchor="x")
    height = int(max(200, rows * 190 + 30))
    return _base_layout(fig, title, height=height, margin=dict(l=4, r=4, t=36 if title else 4, b=4),
                        meta={"columns": cols, "gap": gap, "fractions": fractions})


def drawing_canvas(image: np.ndarray, hole: np.ndarray | None = None, sketch: np.ndarray | None = None,
                   shapes: Sequence[dict] | None = None, height: int = 420) -> go.Figure:
    """The live page's canvas: the image (with the current hole and sketch drawn in) in pixel
    coordinates, ready for plotly's drawing tools (rectangle and closed path: hole; open path:
    sketch stroke)."""
    shown = image if hole is None else masked_input(image, hole, sketch)
    H, W = np.asarray(image).shape[-2:]
    fig = go.Figure(go.Image(source=png_uri(to_rgb8(shown)), name="canvas", hoverinfo="skip"))
    fig.update_xaxes(visible=False, range=[-0.5, W - 0.5], fixedrange=True)
    fig.update_yaxes(visible=False, range=[H - 0.5, -0.5], scaleanchor="x", fixedrange=True)
    _base_layout(fig, None, height=height, dragmode="drawrect",
                 newshape=dict(line=dict(color="#ff1744", width=2), fillcolor="rgba(255,23,68,0.25)", opacity=1),
                 shapes=list(shapes or []), margin=dict(l=4, r=4, t=4, b=4), uirevision="canvas")
    return fig
