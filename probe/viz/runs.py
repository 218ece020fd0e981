"""Run-level figures: one point or bar per layer, in depth order (gate means and roles of the
gated layers, valid fraction and window coverage of the partial layers, map diversity across runs)."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..rundir.roles import has_role
from .style import ROLE_COLORS, esc, figure, highlight_band, hline, legend_top, message_figure, note, trace, vline


def _layer_order(layers: pd.DataFrame, kind: str | None = None) -> list[str]:
    if layers is None or layers.empty:
        return []
    frame = layers if kind is None else layers[layers.kind == kind]
    return list(frame.sort_values("depth").layer)


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
    share = pd.DataFrame({"layer": channels.layer, "hole": has_role(channels, "hole"),
                          "sketch": has_role(channels, "sketch")})
    share = share.groupby("layer", sort=False)[["hole", "sketch"]].mean().reindex(order)
    x = [esc(name) for name in order]
    data = []
    for col, name, color in (("hole", "share of channels with role hole", ROLE_COLORS["hole"]),
                             ("sketch", "share of channels with role sketch", ROLE_COLORS["sketch"])):
        data.append(trace("bar", x=x, y=share[col].to_numpy(dtype=np.float64), name=name, marker_color=color,
                           opacity=0.22, yaxis="y2",
                           hovertemplate="%{x}: %{y:.0%}<extra>" + esc(name) + "</extra>"))
    for col, name, color in (("mean_hole", "mean gate in hole", ROLE_COLORS["hole"]),
                             ("mean_valid", "mean gate on valid pixels", ROLE_COLORS["valid"])):
        data.append(trace("scatter", x=x, y=mean[col].to_numpy(dtype=np.float64), name=name, mode="lines+markers",
                               line={"color": color, "width": 2},
                               error_y={"type": "data", "array": spread[col].fillna(0).to_numpy(dtype=np.float64),
                                        "thickness": 1, "width": 3, "color": color},
                               hovertemplate="%{x}: %{y:.3f}<extra>" + esc(name) + "</extra>"))
    shapes = highlight_band(order, highlight)
    return figure(data, title, height=330, barmode="group", legend=legend_top(), shapes=shapes,
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
    data = [trace("scatter", x=x, y=ev.valid_fraction.to_numpy(dtype=np.float64), name="valid fraction (measured)",
                       mode="lines+markers", line={"color": "#1f77b4", "width": 2},
                       error_y={"type": "data", "array": std, "thickness": 1, "width": 3} if std is not None else None,
                       hovertemplate="%{x}: %{y:.4f}<extra>measured</extra>"),
            trace("scatter", x=x, y=ev.valid_fraction_predicted.to_numpy(dtype=np.float64),
                       name="valid fraction (predicted)", mode="lines+markers",
                       line={"color": "#ff7f0e", "dash": "dash"}, marker={"symbol": "x"},
                       hovertemplate="%{x}: %{y:.4f}<extra>predicted</extra>")]
    notes = []
    if "all_valid_images" in ev:
        data.append(trace("scatter", x=x, y=ev.all_valid_images.to_numpy(dtype=np.float64),
                           name="images entirely valid",
                               mode="lines", line={"color": "#2ca02c", "dash": "dot"},
                               hovertemplate="%{x}: %{y:.0%}<extra>images all valid</extra>"))
        full = ev[ev.all_valid_images >= 1.0]
        if len(full):
            first = full.iloc[0].layer
            notes.append({"x": esc(first), "y": 1.0, "text": "first all-valid layer: " + esc(first),
                          "showarrow": True, "arrowhead": 2, "ax": 0, "ay": -28, "font": {"size": 11}})
    shapes = highlight_band(order, highlight)
    return figure(data, title, height=330, legend=legend_top(), shapes=shapes, annotations=notes,
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
    data = [trace("bar", x=centres, y=counts, width=np.diff(edges) * 0.92, marker_color="#5c6bc0",
                   name="flipped locations",
                   customdata=np.stack([edges[:-1], edges[1:], share], axis=1),
                   hovertemplate="coverage %{customdata[0]:.3f}-%{customdata[1]:.3f}: %{y:,.0f} "
                                 "(%{customdata[2]:.1%})<extra></extra>")]
    mean = float((centres * share).sum())
    shapes = [vline(mean, "#333", "dash")]
    notes = [note(f"mean {mean:.2f}", mean, 1.0, xanchor="left", yanchor="bottom")]
    window = float(row.get("window", 0) or 0)
    if window > 0:
        shapes.append(vline(1.0 / window, ROLE_COLORS["hole"], "dot"))
        notes.append(note("1 valid input", 1.0 / window, 0.92, xanchor="left", font={"size": 10, "color": "#d62728"}))
    if title is None:
        title = f"{layer}: window coverage of the {int(counts.sum()):,} locations that flipped hole → valid"
    return figure(data, title, height=300, showlegend=False, bargap=0.02, shapes=shapes, annotations=notes,
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
        data.append(trace("bar", x=frame.depth.to_numpy(), y=frame.effective_channels.to_numpy(dtype=np.float64),
                           name=esc(run), customdata=custom,
                           hovertemplate="%{customdata[0]} (%{customdata[1]}): %{y:.2f}<extra>" + esc(run)
                                         + "</extra>"))
    if not data:
        return message_figure("No layers to compare.")
    return figure(data, title, height=320, barmode="group", legend=legend_top(),
                   shapes=[hline(1.0)], annotations=[note("1 = one shared mask", 1, 1.0, xref="x domain", yref="y",
                                                            xanchor="right", yanchor="bottom")],
                   xaxis={"title": {"text": "layer depth (execution order)"}, "dtick": 1},
                   yaxis={"title": {"text": "effective channels"}, "rangemode": "tozero"})
