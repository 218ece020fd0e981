"""Pure plotly figure builders, shared by the dashboard and the HTML report.

Every builder takes tables (the tidy frames of :mod:`probe.tables`) or arrays (the sample maps of
:class:`probe.run.Run`) and returns a :class:`plotly.graph_objects.Figure`; none reads files, holds
state or imports Dash, so tests and reports call them directly.

Names that come from data (run, layer and class names, roles) are escaped with :func:`esc` before
they reach any plotly text (titles, tick labels, hover text, legend names): plotly renders a subset
of HTML there, and a class called ``<b>sky</b>`` must show as typed, not as markup. Every text
argument of a builder (``title``, ``titles``, ``tile_labels``...) is plain text and is escaped here,
so callers pass names as they are. Values read back by click callbacks (``customdata``) keep the
raw names next to their escaped copies.

Conventions: gate maps are in (0, 1) and drawn on a fixed 0-1 colour scale unless a builder is
asked to normalise; masks are drawn valid = light, hole = dark; images are ``[3, H, W]`` floats in
[0, 1], embedded as PNG data URIs (compact and pixel-exact). Figures are assembled from plain
layout dicts with a small built-in template (no ``make_subplots``, no global plotly settings),
which keeps a dashboard callback well under the time a user notices.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import re
from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

ROLE_COLORS = {"hole": "#d62728", "valid": "#1f77b4", "sketch": "#2ca02c", "semantic": "#9467bd",
               "none": "#9e9e9e"}
ROLE_ORDER = ("hole", "valid", "sketch", "semantic", "none")
GATE_SCALE = "Viridis"
MASK_SCALE = [[0.0, "#2b2b2b"], [1.0, "#f2f2f2"]]  # hole (0) dark, valid (1) light
LABEL_PALETTE = ("#8ecae6", "#57a773", "#b5523b", "#9c8f7a", "#2a6f97", "#f4a261", "#e9c46a", "#c77dff",
                 "#ff70a6", "#70d6ff", "#ffd670", "#c0c0c0")
HOLE_TINT = np.array([0.55, 0.55, 0.55], dtype=np.float32)
SKETCH_TINT = np.array([1.0, 1.0, 1.0], dtype=np.float32)
HIGHLIGHT = "#ffb300"
_GRID = "#e8ecf2"
_TEMPLATE = {"layout": {
    "font": {"family": "Inter, Segoe UI, Helvetica, Arial, sans-serif", "size": 12, "color": "#2a3f5f"},
    "paper_bgcolor": "white", "plot_bgcolor": "white", "hovermode": "closest",
    "xaxis": {"gridcolor": _GRID, "zerolinecolor": _GRID, "linecolor": "#c8d0dc", "automargin": True},
    "yaxis": {"gridcolor": _GRID, "zerolinecolor": _GRID, "linecolor": "#c8d0dc", "automargin": True},
    "colorway": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"],
    "hoverlabel": {"font": {"size": 12}},
}}


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


def _trace(kind: str, **properties) -> dict:
    """A trace as a plain dict: the figure validates it once (a ``go.Scatter`` object would be
    validated twice, once alone and again inside the figure)."""
    return dict(type=kind, **properties)


def _figure(data: list, title: str | None = None, height: int | None = None, margin: dict | None = None,
            **layout) -> go.Figure:
    """A figure from traces and a layout dict, with the module's template."""
    base = {"template": _TEMPLATE, "height": height,
            "margin": margin or {"l": 50, "r": 20, "t": 40 if title else 16, "b": 40}}
    if title:
        base["title"] = {"text": esc(title), "x": 0.01, "xanchor": "left", "font": {"size": 14}}
    base.update(layout)
    return go.Figure(data=data, layout=base)


def _legend_top() -> dict:
    return {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"}


def _vline(x: float, color: str = "#999", dash: str = "dot", xref: str = "x", yref: str = "y domain") -> dict:
    return {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": xref, "yref": yref,
            "line": {"color": color, "dash": dash, "width": 1.5}}


def _hline(y: float, color: str = "#999", dash: str = "dot", xref: str = "x domain", yref: str = "y") -> dict:
    return {"type": "line", "x0": 0, "x1": 1, "y0": y, "y1": y, "xref": xref, "yref": yref,
            "line": {"color": color, "dash": dash, "width": 1.5}}


def _band(i: int) -> dict:
    """A highlight band behind category ``i`` of the x axis."""
    return {"type": "rect", "x0": i - 0.45, "x1": i + 0.45, "y0": 0, "y1": 1, "xref": "x", "yref": "y domain",
            "fillcolor": "#ffe082", "opacity": 0.3, "line": {"width": 0}, "layer": "below"}


def highlight_band(order: Sequence[str], highlight: str | None) -> list[dict]:
    """The ``layout.shapes`` that highlight layer ``highlight`` in a per-layer figure whose x axis
    lists ``order`` (:func:`layer_summary`, :func:`valid_fraction_curve`); empty if absent."""
    order = list(order)
    return [_band(order.index(highlight))] if highlight in order else []


def _note(text: str, x: float, y: float, xref: str = "x", yref: str = "y domain", **kw) -> dict:
    return {"text": text, "x": x, "y": y, "xref": xref, "yref": yref, "showarrow": False,
            "font": {"size": 11, "color": "#555"}, **kw}


def _columns(n: int, spacing: float = 0.02, titles: Sequence[str] | None = None, widths: Sequence[float] | None = None,
             ) -> tuple[dict, list]:
    """Layout axes for ``n`` side-by-side panels (``x``/``y``, ``x2``/``y2``...) and title annotations."""
    widths = np.asarray(widths if widths is not None else [1.0] * n, dtype=np.float64)
    widths = widths / widths.sum() * (1 - spacing * (n - 1))
    layout, notes, x0 = {}, [], 0.0
    for i in range(n):
        k = "" if i == 0 else str(i + 1)
        layout[f"xaxis{k}"] = {"domain": [x0, x0 + widths[i]], "anchor": f"y{k}"}
        layout[f"yaxis{k}"] = {"domain": [0, 1], "anchor": f"x{k}"}
        if titles:
            notes.append({"text": titles[i], "x": x0 + widths[i] / 2, "y": 1, "xref": "paper", "yref": "paper",
                          "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 11}})
        x0 += widths[i] + spacing
    return layout, notes


def _axis_ref(i: int) -> tuple[str, str]:
    k = "" if i == 0 else str(i + 1)
    return "x" + k, "y" + k


def message_figure(text: str, height: int = 220) -> go.Figure:
    """An empty figure that says ``text`` (escaped): what a view shows when it has nothing to draw."""
    return _figure([], height=height, meta={"message": str(text)},
                   xaxis={"visible": False}, yaxis={"visible": False},
                   annotations=[{"text": esc(text), "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper",
                                 "showarrow": False, "font": {"size": 13, "color": "#666"}}])


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


_PNG_CACHE: OrderedDict = OrderedDict()


def png_uri(rgb8: np.ndarray) -> str:
    """A ``data:image/png;base64`` URI of an ``[H, W, 3]`` uint8 array (the last encodings are
    memoised by content, so redrawing the same images costs a hash, not a PNG encoding)."""
    from PIL import Image

    rgb8 = np.ascontiguousarray(rgb8)
    key = (rgb8.shape, hashlib.blake2b(rgb8.tobytes(), digest_size=16).digest())
    cached = _PNG_CACHE.get(key)
    if cached is not None:
        return cached
    buffer = io.BytesIO()
    Image.fromarray(rgb8).save(buffer, format="PNG", compress_level=1)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    _PNG_CACHE[key] = uri
    while len(_PNG_CACHE) > 256:
        _PNG_CACHE.popitem(last=False)
    return uri


def _plane(a) -> np.ndarray:
    """``[1, H, W]`` or ``[H, W]`` -> ``[H, W]`` float32."""
    a = np.asarray(a, dtype=np.float32)
    return a[0] if a.ndim == 3 else a


def masked_input(image: np.ndarray, hole: np.ndarray, sketch: np.ndarray | None = None) -> np.ndarray:
    """What the model sees, for display: ``image`` ``[3,H,W]`` with the hole grey and the sketch
    strokes (inside the hole) white; returns ``[3, H, W]`` float32."""
    img = np.array(image, dtype=np.float32)
    h = _plane(hole) > 0.5
    img[:, h] = HOLE_TINT[:, None]
    if sketch is not None:
        s = (_plane(sketch) > 0.5) & h
        img[:, s] = SKETCH_TINT[:, None]
    return img


def upsample(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[h, w]`` to ``size`` (each output pixel takes the cell it lies in)."""
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
        columns = max(1, math.ceil(math.sqrt(n * 1.8 * tile_h / max(tile_w, 1))))
    columns = max(1, min(columns, n))
    return math.ceil(n / columns), columns


def mosaic(tiles: np.ndarray, columns: int | None = None, gap: int = 1) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Lay ``tiles`` ``[N, h, w]`` out on a grid: returns ``z`` (NaN between tiles), ``index`` (the
    tile position of every cell, -1 between tiles, int32) and ``(rows, columns, gap)``."""
    n, h, w = tiles.shape
    rows, cols = _grid_shape(n, h, w, columns)
    z = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    index = np.full(z.shape, -1, dtype=np.int32)
    for i in range(n):
        y, x = _tile_origin(i, h, w, cols, gap)
        z[y:y + h, x:x + w] = tiles[i]
        index[y:y + h, x:x + w] = i
    return z, index, (rows, cols, gap)


def _tile_origin(i: int, h: int, w: int, cols: int, gap: int) -> tuple[int, int]:
    r, c = divmod(i, cols)
    return r * (h + gap), c * (w + gap)


def _box_path(boxes: list[tuple[float, float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates of rectangle outlines (x0, y0, x1, y1) for one line trace, each box
    closed and followed by a NaN (a gap), as float arrays (sent compactly, drawn as separate boxes)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    nan = np.full(len(b), np.nan)
    xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0], b[:, 0], nan], axis=1).ravel()
    ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3], b[:, 1], nan], axis=1).ravel()
    return xs, ys


def _outline(mask: np.ndarray, dx: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Segments along the boundary of a boolean ``[H, W]`` mask (pixel-centre coordinates), as
    NaN-separated float arrays."""
    ry, rx = np.nonzero(mask[:, 1:] != mask[:, :-1])
    cy, cx = np.nonzero(mask[1:, :] != mask[:-1, :])
    vx = dx + rx + 0.5
    x = np.concatenate([np.stack([vx, vx, np.full(len(vx), np.nan)], 1).ravel(),
                        np.stack([dx + cx - 0.5, dx + cx + 0.5, np.full(len(cx), np.nan)], 1).ravel()])
    y = np.concatenate([np.stack([ry - 0.5, ry + 0.5, np.full(len(ry), np.nan)], 1).ravel(),
                        np.stack([cy + 0.5, cy + 0.5, np.full(len(cy), np.nan)], 1).ravel()])
    return x, y


# ---------------------------------------------------------------- run-level figures

def _layer_order(layers: pd.DataFrame, kind: str | None = None) -> list[str]:
    if layers is None or layers.empty:
        return []
    frame = layers if kind is None else layers[layers.kind == kind]
    return list(frame.sort_values("depth").layer)


def _has_role(roles: pd.Series, name: str) -> pd.Series:
    """Whether each ``+``-joined role string contains the role ``name`` exactly."""
    return roles.fillna("none").astype(str).str.contains(r"(?:^|\+)" + re.escape(name) + r"(?:\+|$)", regex=True)


def layer_summary(channels: pd.DataFrame, layers: pd.DataFrame, highlight: str | None = None,
                  title: str | None = "Mean gate in the hole vs on valid pixels, per gated layer") -> go.Figure:
    """Per gated layer (depth order): the mean over channels of ``mean_hole`` and ``mean_valid``
    (lines, +- their standard deviation across channels), and the share of channels whose role
    includes ``hole`` / ``sketch`` (faint bars, right axis; claims G4, G5)."""
    order = _layer_order(layers, "gated")
    if channels is None or channels.empty or not order:
        return message_figure("No gated layers in this run: the layer summary applies to gated convolutions.")
    by = channels.groupby("layer", sort=False)
    mean = by[["mean_hole", "mean_valid"]].mean().reindex(order)
    spread = by[["mean_hole", "mean_valid"]].std().reindex(order)
    roles = channels.role if "role" in channels else pd.Series("none", index=channels.index)
    share = pd.DataFrame({"layer": channels.layer, "hole": _has_role(roles, "hole"),
                          "sketch": _has_role(roles, "sketch")})
    share = share.groupby("layer", sort=False)[["hole", "sketch"]].mean().reindex(order)
    x = [esc(name) for name in order]
    data = []
    for col, name, color in (("hole", "share of channels with role hole", ROLE_COLORS["hole"]),
                             ("sketch", "share of channels with role sketch", ROLE_COLORS["sketch"])):
        data.append(_trace("bar", x=x, y=share[col].to_numpy(dtype=np.float64), name=name, marker_color=color,
                           opacity=0.22, yaxis="y2",
                           hovertemplate="%{x}: %{y:.0%}<extra>" + esc(name) + "</extra>"))
    for col, name, color in (("mean_hole", "mean gate in hole", ROLE_COLORS["hole"]),
                             ("mean_valid", "mean gate on valid pixels", ROLE_COLORS["valid"])):
        data.append(_trace("scatter", x=x, y=mean[col].to_numpy(dtype=np.float64), name=name, mode="lines+markers",
                               line={"color": color, "width": 2},
                               error_y={"type": "data", "array": spread[col].fillna(0).to_numpy(dtype=np.float64),
                                        "thickness": 1, "width": 3, "color": color},
                               hovertemplate="%{x}: %{y:.3f}<extra>" + esc(name) + "</extra>"))
    shapes = highlight_band(order, highlight)
    return _figure(data, title, height=330, barmode="group", legend=_legend_top(), shapes=shapes,
                   xaxis={"type": "category", "tickangle": -40},
                   yaxis={"title": {"text": "mean gate"}, "range": [0, 1]},
                   yaxis2={"title": {"text": "share of channels"}, "range": [0, 1], "overlaying": "y",
                           "side": "right", "showgrid": False, "tickformat": ".0%"},
                   meta={"layers": order})


def valid_fraction_curve(evolution: pd.DataFrame, highlight: str | None = None,
                         title: str | None = "Valid fraction per partial layer: measured vs predicted") -> go.Figure:
    """Per partial layer (depth order): measured ``valid_fraction`` (+- its spread across images),
    ``valid_fraction_predicted`` from kernel/stride/dilation, and the share of images whose mask
    is all valid; the first layer where every image is all valid is marked (claim P3)."""
    if evolution is None or evolution.empty:
        return message_figure("No partial-convolution layers in this run: mask evolution applies to "
                              "partial convolutions.")
    ev = evolution.sort_values("depth")
    order = list(ev.layer)
    x = [esc(name) for name in order]
    std = ev.valid_fraction_std.to_numpy(dtype=np.float64) if "valid_fraction_std" in ev else None
    data = [_trace("scatter", x=x, y=ev.valid_fraction.to_numpy(dtype=np.float64), name="valid fraction (measured)",
                       mode="lines+markers", line={"color": "#1f77b4", "width": 2},
                       error_y={"type": "data", "array": std, "thickness": 1, "width": 3} if std is not None else None,
                       hovertemplate="%{x}: %{y:.4f}<extra>measured</extra>"),
            _trace("scatter", x=x, y=ev.valid_fraction_predicted.to_numpy(dtype=np.float64),
                       name="valid fraction (predicted)", mode="lines+markers",
                       line={"color": "#ff7f0e", "dash": "dash"}, marker={"symbol": "x"},
                       hovertemplate="%{x}: %{y:.4f}<extra>predicted</extra>")]
    notes = []
    if "all_valid_images" in ev:
        data.append(_trace("scatter", x=x, y=ev.all_valid_images.to_numpy(dtype=np.float64),
                           name="images entirely valid",
                               mode="lines", line={"color": "#2ca02c", "dash": "dot"},
                               hovertemplate="%{x}: %{y:.0%}<extra>images all valid</extra>"))
        full = ev[ev.all_valid_images >= 1.0]
        if len(full):
            first = full.iloc[0].layer
            notes.append({"x": esc(first), "y": 1.0, "text": "first all-valid layer: " + esc(first),
                          "showarrow": True, "arrowhead": 2, "ax": 0, "ay": -28, "font": {"size": 11}})
    shapes = highlight_band(order, highlight)
    return _figure(data, title, height=330, legend=_legend_top(), shapes=shapes, annotations=notes,
                   xaxis={"type": "category", "tickangle": -40},
                   yaxis={"title": {"text": "fraction of valid locations"}, "range": [0, 1.1]},
                   meta={"layers": order})


def coverage_histogram(evolution: pd.DataFrame, layer: str, title: str | None = None) -> go.Figure:
    """Window coverage (share of valid inputs under the window) at the locations of ``layer`` that
    flipped from hole to valid: what the binary mask update throws away (claim P2). Bars are the
    ``coverage_hist`` counts over ``coverage_edges``."""
    if evolution is None or evolution.empty or layer not in set(evolution.layer):
        return message_figure(f"No coverage histogram for layer {layer!s}.")
    row = evolution[evolution.layer == layer].iloc[0]
    counts = np.asarray(row.coverage_hist, dtype=np.float64)
    edges = np.asarray(row.coverage_edges, dtype=np.float64)
    if counts.size == 0 or counts.sum() == 0:
        return message_figure(f"Layer {layer}: no location flipped from hole to valid.")
    centres = (edges[:-1] + edges[1:]) / 2
    share = counts / counts.sum()
    data = [_trace("bar", x=centres, y=counts, width=np.diff(edges) * 0.92, marker_color="#5c6bc0",
                   name="flipped locations",
                   customdata=np.stack([edges[:-1], edges[1:], share], axis=1),
                   hovertemplate="coverage %{customdata[0]:.3f}-%{customdata[1]:.3f}: %{y:,.0f} "
                                 "(%{customdata[2]:.1%})<extra></extra>")]
    mean = float((centres * share).sum())
    shapes = [_vline(mean, "#333", "dash")]
    notes = [_note(f"mean {mean:.2f}", mean, 1.0, xanchor="left", yanchor="bottom")]
    window = float(row.get("window", 0) or 0)
    if window > 0:
        shapes.append(_vline(1.0 / window, ROLE_COLORS["hole"], "dot"))
        notes.append(_note("1 valid input", 1.0 / window, 0.92, xanchor="left", font={"size": 10, "color": "#d62728"}))
    if title is None:
        title = f"{layer}: window coverage of the {int(counts.sum()):,} locations that flipped hole → valid"
    return _figure(data, title, height=300, showlegend=False, bargap=0.02, shapes=shapes, annotations=notes,
                   xaxis={"title": {"text": "window coverage (valid inputs / window size)"}, "range": [0, 1.0]},
                   yaxis={"title": {"text": "flipped locations"}})


def diversity_bars(layers_by_run: Mapping[str, pd.DataFrame],
                   title: str | None = "Effective number of distinct channel maps per layer") -> go.Figure:
    """``effective_channels`` (participation ratio of the channel covariance: 1 = one shared mask,
    claim P4; many = diverse soft gates, claim G3) per layer by depth, one bar series per run."""
    data = []
    for run, layers in layers_by_run.items():
        if layers is None or layers.empty:
            continue
        frame = layers.sort_values("depth")
        custom = np.stack([np.asarray([esc(v) for v in frame.layer], dtype=object),
                           np.asarray([esc(v) for v in frame.kind], dtype=object)], axis=1)
        data.append(_trace("bar", x=frame.depth.to_numpy(), y=frame.effective_channels.to_numpy(dtype=np.float64),
                           name=esc(run), customdata=custom,
                           hovertemplate="%{customdata[0]} (%{customdata[1]}): %{y:.2f}<extra>" + esc(run)
                                         + "</extra>"))
    if not data:
        return message_figure("No layers to compare.")
    return _figure(data, title, height=320, barmode="group", legend=_legend_top(),
                   shapes=[_hline(1.0)], annotations=[_note("1 = one shared mask", 1, 1.0, xref="x domain", yref="y",
                                                            xanchor="right", yanchor="bottom")],
                   xaxis={"title": {"text": "layer depth (execution order)"}, "dtick": 1},
                   yaxis={"title": {"text": "effective channels"}, "rangemode": "tozero"})


# ---------------------------------------------------------------- maps

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
    data = [_trace("heatmap", z=z, customdata=channel_of_cell, zmin=zrange[0], zmax=zrange[1], colorscale=colorscale,
                       hoverongaps=False, name="maps",
                       colorbar={"thickness": 10, "len": 0.7, "title": {
                           "text": esc(value_name) + (" (min-max)" if normalize else ""), "side": "right"}},
                       hovertemplate=esc(unit) + " %{customdata}<br>" + esc(value_name)
                                     + " %{z:.3f}<extra></extra>")]
    labels = [str(c) for c in order] if tile_labels is None else [str(tile_labels[c]) for c in order]
    origins = [_tile_origin(i, h, w, cols, gap) for i in range(len(order))]
    label_room = max(2.0, h * 0.28)
    data.append(_trace("scatter", x=[x + w / 2 - 0.5 for _, x in origins], y=[y - 0.5 for y, _ in origins],
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
            xs, ys = _box_path(by_cat.get(cat, []))
            data.append(_trace("scatter", x=xs, y=ys, mode="lines", name=f"role {cat}",
                                   line={"color": ROLE_COLORS[cat], "width": 2.5}, hoverinfo="skip", showlegend=False))
    if highlight is not None and highlight in order:
        y, x = origins[order.index(highlight)]
        xs, ys = _box_path([(x - 1, y - 1, x + w, y + h)])
        data.append(_trace("scatter", x=xs, y=ys, mode="lines", line={"color": HIGHLIGHT, "width": 3}, hoverinfo="skip",
                               showlegend=False, name="selected"))
    rows_px = rows * tile_px * (h + gap + label_room) / max(h, 1)
    height = int(min(1500, max(200, rows_px + 24 + (30 if title else 0))))
    return _figure(data, title, height=height, margin={"l": 6, "r": 6, "t": 36 if title else 6, "b": 6},
                   meta={"order": order, "columns": cols, "rows": rows, "gap": gap, "tile": [h, w]},
                   legend={"orientation": "h", "y": 0, "yanchor": "top", "x": 0, "font": {"size": 11}},
                   xaxis={"visible": False, "range": [-0.5, z.shape[1] - 0.5], "constrain": "domain"},
                   yaxis={"visible": False, "range": [z.shape[0] - 0.5, -0.5 - label_room], "scaleanchor": "x",
                          "constrain": "domain"})


def grid_tile(fig: go.Figure, position: int) -> np.ndarray:
    """The ``z`` block of display position ``position`` in a :func:`channel_grid` figure."""
    meta = fig.layout.meta
    h, w = meta["tile"]
    y, x = _tile_origin(position, h, w, meta["columns"], meta["gap"])
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
    layout, notes = _columns(len(panels), 0.015, panels)
    H, W = np.asarray(image).shape[-2:]
    data = []
    sources = {"image": image, "input: hole + sketch": masked_input(image, hole, sketch), "output": output}
    for i, panel in enumerate(panels):
        xa, ya = _axis_ref(i)
        if panel == "labels":
            lab = np.asarray(labels).astype(np.int32)
            n = max(len(classes), 1)
            names = np.asarray([esc(c) for c in classes] + ["?"], dtype=object)
            data.append(_trace("heatmap", z=lab, zmin=-0.5, zmax=n - 0.5, colorscale=_label_scale(n), showscale=False,
                                   name="labels", customdata=names[np.clip(lab, 0, len(classes))],
                                   hovertemplate="%{customdata}<extra></extra>", xaxis=xa, yaxis=ya))
        else:
            data.append(_trace("image", source=png_uri(to_rgb8(sources[panel])), name=panel, hoverinfo="skip",
                                 xaxis=xa, yaxis=ya))
        k = "" if i == 0 else str(i + 1)
        layout[f"xaxis{k}"].update(visible=False, range=[-0.5, W - 0.5])
        layout[f"yaxis{k}"].update(visible=False, range=[H - 0.5, -0.5], scaleanchor=xa)
    return _figure(data, title, height=height, margin={"l": 2, "r": 2, "t": 46 if title else 22, "b": 2},
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
        xs, ys = _outline(_plane(holes[k]) > 0.5, dx=x0)
        outline_x.append(xs)
        outline_y.append(ys)
    outline_x, outline_y = np.concatenate(outline_x), np.concatenate(outline_y)
    room = H * 0.2
    data = [_trace("image", source=png_uri(to_rgb8(strip)), name="inputs", hoverinfo="skip", xaxis="x", yaxis="y"),
            _trace("scatter", x=[k * (W + gap) + W / 2 - 0.5 for k in range(K)], y=[-0.5] * K, mode="text",
                       text=[f"sample {s}" for s in ids], textposition="top center", hoverinfo="skip",
                       showlegend=False, textfont={"size": 10}, xaxis="x", yaxis="y"),
            _trace("heatmap", z=big, customdata=which, zmin=0, zmax=1, colorscale=GATE_SCALE, hoverongaps=False,
                   name="gate",
                       colorbar={"thickness": 10, "len": 0.45, "y": 0.22,
                                 "title": {"text": "gate" + (" (min-max)" if normalize else ""), "side": "right"}},
                       hovertemplate="sample %{customdata}<br>gate %{z:.3f}<extra></extra>", xaxis="x2", yaxis="y2"),
            _trace("scatter", x=outline_x, y=outline_y, mode="lines", name="hole outline",
                       line={"color": "#ff4d4d", "width": 1}, hoverinfo="skip", showlegend=False,
                       xaxis="x2", yaxis="y2")]
    split = (H + room) / (2 * H + room + 4)
    ratio = width / (2 * H + room)
    height = int(max(200, min(600, 1300 / ratio + 40)))
    return _figure(data, title, height=height, margin={"l": 2, "r": 2, "t": 30 if title else 4, "b": 2},
                   meta={"gap": gap, "size": [H, W], "samples": ids},
                   xaxis={"visible": False, "range": [-0.5, width - 0.5], "domain": [0, 0.94]},
                   yaxis={"visible": False, "range": [H - 0.5, -0.5 - room], "domain": [1 - split, 1],
                          "scaleanchor": "x"},
                   xaxis2={"visible": False, "range": [-0.5, width - 0.5], "domain": [0, 0.94], "matches": "x",
                           "anchor": "y2"},
                   yaxis2={"visible": False, "range": [H - 0.5, -0.5], "domain": [0, 1 - split - 0.02],
                           "anchor": "x2", "scaleanchor": "x2"})


def gate_histograms(hole_values: np.ndarray, valid_values: np.ndarray, mean_hole: float | None = None,
                    mean_valid: float | None = None, bins: int = 40, title: str | None = None) -> go.Figure:
    """Distribution of a channel's gate over hole cells vs valid cells (share per bin), with the
    run-wide ``mean_hole`` / ``mean_valid`` of the channels table as dashed lines."""
    hole_values = np.asarray(hole_values, dtype=np.float32).ravel()
    valid_values = np.asarray(valid_values, dtype=np.float32).ravel()
    if hole_values.size == 0 and valid_values.size == 0:
        return message_figure("No gate values to histogram.")
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    data = []
    for values, name, color in ((valid_values, "valid", ROLE_COLORS["valid"]),
                                (hole_values, "hole", ROLE_COLORS["hole"])):
        counts, _ = np.histogram(np.clip(values, 0, 1), edges)
        share = counts / max(counts.sum(), 1)
        data.append(_trace("bar", x=centres, y=share, width=1.0 / bins, name=f"{name} ({values.size:,} cells)",
                           marker_color=color, opacity=0.55,
                           hovertemplate="gate %{x:.3f}: %{y:.1%}<extra>" + name + "</extra>"))
    shapes, notes = [], []
    for value, name, color, y in ((mean_hole, "run mean, hole", ROLE_COLORS["hole"], 0.98),
                                  (mean_valid, "run mean, valid", ROLE_COLORS["valid"], 0.86)):
        if value is not None and np.isfinite(value):
            shapes.append(_vline(float(value), color, "dash"))
            notes.append(_note(name, float(value), y, xanchor="left" if value < 0.75 else "right",
                               bgcolor="rgba(255,255,255,0.8)", font={"size": 10, "color": color}))
    return _figure(data, title, height=280, barmode="overlay", legend=_legend_top(), shapes=shapes,
                   annotations=notes, meta={"bins": bins},
                   xaxis={"title": {"text": "gate value (cells at the layer's resolution)"}, "range": [0, 1]},
                   yaxis={"title": {"text": "share of cells"}, "tickformat": ".0%", "rangemode": "tozero"})


def label_bars(rows: pd.DataFrame, classes: Sequence[str] | None = None, alpha: float = 0.05,
               title: str | None = None) -> go.Figure:
    """Per-label AUC (label vs the rest; 0.5 = no separation) and IoU (Network Dissection) of one
    channel, in class order; faint bars are not significant (``q_value >= alpha``)."""
    if rows is None or rows.empty:
        return message_figure("No label statistics for this channel.")
    if classes is not None:
        rank = {c: i for i, c in enumerate(classes)}
        rows = rows.assign(_rank=rows.label.map(rank).fillna(len(rank))).sort_values("_rank", kind="stable")
    elif "label_id" in rows:
        rows = rows.sort_values("label_id")
    x = [esc(v) for v in rows.label]
    q = rows.q_value.to_numpy(dtype=np.float64) if "q_value" in rows else np.full(len(rows), np.nan)
    opacity = np.where(q < alpha, 1.0, 0.35)
    layout, notes = _columns(2, 0.1, ["AUC (label vs rest)", "IoU above the channel threshold"])
    data = [_trace("bar", x=x, y=rows.auc.to_numpy(dtype=np.float64), name="AUC", customdata=q,
                   marker={"color": "#5c6bc0", "opacity": opacity},
                   hovertemplate="%{x}: AUC %{y:.3f} (q %{customdata:.2g})<extra></extra>"),
            _trace("bar", x=x, y=rows.iou.to_numpy(dtype=np.float64), name="IoU", customdata=q, xaxis="x2", yaxis="y2",
                   marker={"color": "#26a69a", "opacity": opacity},
                   hovertemplate="%{x}: IoU %{y:.3f} (q %{customdata:.2g})<extra></extra>")]
    layout["xaxis"].update(type="category", tickangle=-35)
    layout["xaxis2"].update(type="category", tickangle=-35)
    layout["yaxis"].update(range=[0, 1])
    layout["yaxis2"].update(rangemode="tozero")
    return _figure(data, title, height=280, showlegend=False, annotations=notes,
                   shapes=[_hline(0.5, xref="x domain", yref="y")],
                   margin={"l": 40, "r": 10, "t": 46 if title else 24, "b": 10}, **layout)


def label_heatmap(labels: pd.DataFrame, layer: str, value: str = "auc", classes: Sequence[str] | None = None,
                  title: str | None = None) -> go.Figure:
    """Label x channel heatmap of ``value`` (``auc`` or ``iou``) for ``layer``:
    ``z = labels[labels.layer == layer].pivot_table(index="label", columns="channel", values=value)``,
    rows in class order. A click gives the channel as ``x``."""
    if value not in ("auc", "iou"):
        raise ValueError(f"value must be 'auc' or 'iou', not {value!r}")
    frame = labels[labels.layer == layer] if labels is not None and not labels.empty else None
    if frame is None or frame.empty:
        return message_figure(f"No label statistics for layer {layer}.")
    try:
        pivot = frame.pivot(index="label", columns="channel", values=value)  # one row per (label, channel)
    except ValueError:  # repeated (label, channel) rows: average them, as pivot_table does
        pivot = frame.pivot_table(index="label", columns="channel", values=value)
    if classes is not None:
        pivot = pivot.reindex([c for c in classes if c in pivot.index])
    z = pivot.to_numpy(dtype=np.float64)
    auc = value == "auc"
    top = float(np.nanmax(z)) if np.isfinite(z).any() else 1.0
    data = [_trace("heatmap", z=z, x=pivot.columns.to_numpy(), y=[esc(v) for v in pivot.index],
                       colorscale="RdBu_r" if auc else "Viridis", zmin=0, zmax=1 if auc else max(top, 1e-3),
                       zmid=0.5 if auc else None, name=value, xgap=1, ygap=1,
                       colorbar={"thickness": 10, "title": {"text": value.upper(), "side": "right"}},
                       hovertemplate="channel %{x}<br>%{y}<br>" + value.upper() + " %{z:.3f}<extra></extra>")]
    return _figure(data, title, height=max(240, 24 * z.shape[0] + 110), meta={"value": value, "layer": str(layer)},
                   xaxis={"title": {"text": "channel (click a cell to open it)"}, "showgrid": False,
                          "dtick": 4 if z.shape[1] > 32 else 1},
                   yaxis={"autorange": "reversed", "showgrid": False},
                   margin={"l": 90, "r": 10, "t": 40 if title else 10, "b": 40})


def best_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, channel): the label with the highest AUC (``best_label``, ``best_auc``)."""
    if labels is None or labels.empty:
        return pd.DataFrame(columns=["layer", "channel", "best_label", "best_auc"])
    idx = labels.auc.fillna(-1).groupby([labels.layer, labels.channel], sort=False).idxmax()
    best = labels.loc[idx.to_numpy(), ["layer", "channel", "label", "auc"]]
    return best.rename(columns={"label": "best_label", "auc": "best_auc"}).reset_index(drop=True)


def _by_role_category(frame: pd.DataFrame):
    """Yield ``(category, rows, customdata)`` per non-empty role category of ``frame`` (which has a
    ``category`` column), in :data:`ROLE_ORDER`; ``customdata`` rows are ``(layer, channel)``."""
    for cat in ROLE_ORDER:
        part = frame[frame.category == cat]
        if part.empty:
            continue
        custom = np.empty((len(part), 2), dtype=object)
        custom[:, 0] = part.layer.astype(str).to_numpy()
        custom[:, 1] = part.channel.astype(int).to_numpy()
        yield cat, part, custom


def channel_scatter(channels: pd.DataFrame, labels: pd.DataFrame, highlight_layer: str | None = None,
                    title: str | None = "Every gated channel: hole selectivity vs its best label") -> go.Figure:
    """All channels: ``auc_hole`` (x) vs the AUC of their best label (y), one trace per role
    category; ``customdata`` rows are ``(layer, channel)`` so a click opens that channel, and the
    hover ``text`` (escaped) names layer, role and best label. With ``highlight_layer`` the other
    layers are faint."""
    if channels is None or channels.empty:
        return message_figure("No gated channels in this run.")
    frame = channels.merge(best_labels(labels), on=["layer", "channel"], how="left")
    roles = frame.role.fillna("none").astype(str) if "role" in frame else pd.Series("none", index=frame.index)
    frame = frame.assign(category=roles.map(role_category), role_text=roles)
    data = []
    for cat, part, custom in _by_role_category(frame):
        text = [f"{esc(layer)} · channel {channel}<br>role {esc(role)}<br>best label {esc(label)}"
                for layer, channel, role, label in zip(part.layer, part.channel, part.role_text,
                                                       part.best_label.fillna("-"))]
        mine = (part.layer == highlight_layer).to_numpy()
        opacity = np.where(mine, 0.95, 0.2) if highlight_layer is not None else np.full(len(part), 0.75)
        size = np.where(mine, 9, 6) if highlight_layer is not None else np.full(len(part), 7)
        data.append(_trace("scatter", x=part.auc_hole.to_numpy(dtype=np.float64),
                           y=part.best_auc.to_numpy(dtype=np.float64),
                               mode="markers", name=cat, customdata=custom, text=text,
                               marker={"color": ROLE_COLORS[cat], "opacity": opacity, "size": size,
                                       "line": {"width": 0}},
                               hovertemplate="%{text}<br>AUC hole %{x:.3f} · best label AUC %{y:.3f}"
                                             "<extra></extra>"))
    shapes = [_vline(0.3, "#bbb"), _vline(0.7, "#bbb"), _hline(0.7, "#bbb")]
    return _figure(data, title, height=420, legend={"title": {"text": "role"}}, clickmode="event", shapes=shapes,
                   xaxis={"title": {"text": "AUC hole vs valid (1: gate higher in the hole, 0: on valid pixels)"},
                          "range": [0, 1]},
                   yaxis={"title": {"text": "AUC of the best label"}, "range": [0.3, 1.0]})


def mask_evolution(valid_maps: Sequence[np.ndarray], layer_names: Sequence[str], size: tuple[int, int],
                   highlight: str | None = None, columns: int | None = None,
                   title: str | None = None) -> go.Figure:
    """The valid mask of one sample at every partial layer (each ``[h, w]`` or ``[1, h, w]``,
    upsampled to ``size`` for display), in execution order, the highlighted layer outlined.
    Each cell's ``customdata`` is its layer's position, so a click selects that layer."""
    if not len(valid_maps):
        return message_figure("No partial-convolution layers in this run.")
    H, W = size
    tiles = np.stack([upsample(_plane(m), size) for m in valid_maps])
    n = len(tiles)
    gap = max(2, W // 10)
    z, index, (rows, cols, gap) = mosaic(tiles, columns or min(n, 6), gap)
    origins = [_tile_origin(i, H, W, cols, gap) for i in range(n)]
    fractions = [float(np.mean(_plane(m))) for m in valid_maps]
    dims = [f"{_plane(m).shape[0]}×{_plane(m).shape[1]}" for m in valid_maps]
    room = H * 0.22
    data = [_trace("heatmap", z=z, customdata=index, zmin=0, zmax=1, colorscale=MASK_SCALE, hoverongaps=False,
                       showscale=False, name="valid",
                       hovertemplate="layer #%{customdata}<br>valid %{z:.0f}<extra></extra>"),
            _trace("scatter", x=[x + W / 2 - 0.5 for _, x in origins], y=[y - 0.5 for y, _ in origins], mode="text",
                       text=[f"{esc(name)} · {d} · {f:.0%} valid"
                             for name, d, f in zip(layer_names, dims, fractions)],
                       textposition="top center", textfont={"size": 10}, hoverinfo="skip", showlegend=False,
                       name="layer names")]
    if highlight in list(layer_names):
        y, x = origins[list(layer_names).index(highlight)]
        xs, ys = _box_path([(x - 1.5, y - 1.5, x + W + 0.5, y + H + 0.5)])
        data.append(_trace("scatter", x=xs, y=ys, mode="lines", line={"color": HIGHLIGHT, "width": 3}, hoverinfo="skip",
                               showlegend=False, name="selected"))
    height = int(max(180, rows * 175 + 20))
    return _figure(data, title, height=height, margin={"l": 4, "r": 4, "t": 36 if title else 4, "b": 4},
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
    return _figure([_trace("image", source=png_uri(to_rgb8(shown)), name="canvas", hoverinfo="skip")], None,
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
    valid, coverage = _plane(valid), _plane(coverage)
    dims = f"{valid.shape[0]}×{valid.shape[1]}"
    layout, notes = _columns(3, 0.03, ["input (grey = hole)", f"valid mask ({dims})", f"window coverage ({dims})"])
    xs, ys = _outline(_plane(hole) > 0.5)
    data = [_trace("image", source=png_uri(to_rgb8(masked_input(image, hole))), name="input", hoverinfo="skip"),
            _trace("heatmap", z=upsample(valid, (H, W)), zmin=0, zmax=1, colorscale=MASK_SCALE, showscale=False,
                   name="valid",
                       hovertemplate="valid %{z:.0f}<extra></extra>", xaxis="x2", yaxis="y2"),
            _trace("heatmap", z=upsample(coverage, (H, W)), zmin=0, zmax=1, colorscale=GATE_SCALE, name="coverage",
                       colorbar={"thickness": 10, "len": 0.9, "title": {"text": "coverage", "side": "right"}},
                       hovertemplate="coverage %{z:.3f}<extra></extra>", xaxis="x3", yaxis="y3")]
    for i in (1, 2):
        xa, ya = _axis_ref(i)
        data.append(_trace("scatter", x=xs, y=ys, mode="lines", line={"color": "#ff4d4d", "width": 1},
                               hoverinfo="skip", showlegend=False, name="hole outline", xaxis=xa, yaxis=ya))
    for i in range(3):
        k = "" if i == 0 else str(i + 1)
        layout[f"xaxis{k}"].update(visible=False, range=[-0.5, W - 0.5])
        layout[f"yaxis{k}"].update(visible=False, range=[H - 0.5, -0.5], scaleanchor=_axis_ref(i)[0])
    return _figure(data, title, height=height, margin={"l": 2, "r": 2, "t": 46 if title else 22, "b": 2},
                   annotations=notes, **layout)


def image_row(images: Sequence[np.ndarray], titles: Sequence[str], title: str | None = None,
              height: int = 240) -> go.Figure:
    """Images ``[3, H, W]`` (floats in [0, 1]) side by side under their (escaped) ``titles``."""
    layout, notes = _columns(len(images), 0.015, [esc(t) for t in titles])
    data = []
    for i, image in enumerate(images):
        xa, ya = _axis_ref(i)
        H, W = np.asarray(image).shape[-2:]
        data.append(_trace("image", source=png_uri(to_rgb8(image)), name=str(titles[i]), hoverinfo="skip", xaxis=xa,
                             yaxis=ya))
        k = "" if i == 0 else str(i + 1)
        layout[f"xaxis{k}"].update(visible=False, range=[-0.5, W - 0.5])
        layout[f"yaxis{k}"].update(visible=False, range=[H - 0.5, -0.5], scaleanchor=xa)
    return _figure(data, title, height=height, margin={"l": 2, "r": 2, "t": 46 if title else 22, "b": 2},
                   annotations=notes, meta={"titles": [str(t) for t in titles]}, **layout)


def embedding_scatter(embedding: pd.DataFrame, channels: pd.DataFrame, highlight_layer: str | None = None,
                      title: str | None = "Channel embedding (PCA of each channel's statistics), coloured by role"
                      ) -> go.Figure:
    """The ``embedding`` table (``layer, channel, pc1, pc2, cluster``) as a scatter, one trace per
    role category, ``customdata`` rows ``(layer, channel)`` so a click opens the channel, like
    :func:`channel_scatter`."""
    if embedding is None or embedding.empty:
        return message_figure("No channel embedding in this run (run `gateprobe analyze`).")
    roles = channels[["layer", "channel", "role"]] if channels is not None and "role" in channels else None
    frame = embedding.merge(roles, on=["layer", "channel"], how="left") if roles is not None else \
        embedding.assign(role="none")
    frame = frame.assign(role=frame.role.fillna("none").astype(str))
    frame = frame.assign(category=frame.role.map(role_category))
    data = []
    for cat, part, custom in _by_role_category(frame):
        clusters = part.cluster.astype(int).to_numpy() if "cluster" in part else np.full(len(part), -1)
        text = [f"{esc(layer)} · channel {channel}<br>role {esc(role)}<br>cluster {cluster}"
                for layer, channel, role, cluster in zip(part.layer, part.channel, part.role, clusters)]
        mine = (part.layer == highlight_layer).to_numpy()
        data.append(_trace("scatter", x=part.pc1.to_numpy(dtype=np.float64), y=part.pc2.to_numpy(dtype=np.float64),
                               mode="markers", name=cat, customdata=custom, text=text,
                               marker={"color": ROLE_COLORS[cat], "size": np.where(mine, 9, 6) if highlight_layer
                                       else 7, "opacity": np.where(mine, 0.95, 0.25) if highlight_layer else 0.75,
                                       "line": {"width": 0}},
                               hovertemplate="%{text}<extra></extra>"))
    return _figure(data, title, height=420, legend={"title": {"text": "role"}}, clickmode="event",
                   xaxis={"title": {"text": "PC 1"}, "zeroline": False}, yaxis={"title": {"text": "PC 2"},
                                                                              "zeroline": False})
