"""Channel and label figures: one channel's gate distributions and per-label scores, a layer's
label x channel heatmap, and every channel as a point (selectivity scatter, embedding), coloured
by role; a click on a point gives its ``(layer, channel)``."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .style import (ROLE_COLORS, ROLE_ORDER, columns, esc, figure, hline, legend_top, message_figure, note,
                    role_category, trace, vline)


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
        data.append(trace("bar", x=centres, y=share, width=1.0 / bins, name=f"{name} ({values.size:,} cells)",
                           marker_color=color, opacity=0.55,
                           hovertemplate="gate %{x:.3f}: %{y:.1%}<extra>" + name + "</extra>"))
    shapes, notes = [], []
    for value, name, color, y in ((mean_hole, "run mean, hole", ROLE_COLORS["hole"], 0.98),
                                  (mean_valid, "run mean, valid", ROLE_COLORS["valid"], 0.86)):
        if value is not None and np.isfinite(value):
            shapes.append(vline(float(value), color, "dash"))
            notes.append(note(name, float(value), y, xanchor="left" if value < 0.75 else "right",
                               bgcolor="rgba(255,255,255,0.8)", font={"size": 10, "color": color}))
    return figure(data, title, height=280, barmode="overlay", legend=legend_top(), shapes=shapes,
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
    layout, notes = columns(2, 0.1, ["AUC (label vs rest)", "IoU above the channel threshold"])
    data = [trace("bar", x=x, y=rows.auc.to_numpy(dtype=np.float64), name="AUC", customdata=q,
                   marker={"color": "#5c6bc0", "opacity": opacity},
                   hovertemplate="%{x}: AUC %{y:.3f} (q %{customdata:.2g})<extra></extra>"),
            trace("bar", x=x, y=rows.iou.to_numpy(dtype=np.float64), name="IoU", customdata=q, xaxis="x2", yaxis="y2",
                   marker={"color": "#26a69a", "opacity": opacity},
                   hovertemplate="%{x}: IoU %{y:.3f} (q %{customdata:.2g})<extra></extra>")]
    layout["xaxis"].update(type="category", tickangle=-35)
    layout["xaxis2"].update(type="category", tickangle=-35)
    layout["yaxis"].update(range=[0, 1])
    layout["yaxis2"].update(rangemode="tozero")
    return figure(data, title, height=280, showlegend=False, annotations=notes,
                   shapes=[hline(0.5, xref="x domain", yref="y")],
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
    data = [trace("heatmap", z=z, x=pivot.columns.to_numpy(), y=[esc(v) for v in pivot.index],
                       colorscale="RdBu_r" if auc else "Viridis", zmin=0, zmax=1 if auc else max(top, 1e-3),
                       zmid=0.5 if auc else None, name=value, xgap=1, ygap=1,
                       colorbar={"thickness": 10, "title": {"text": value.upper(), "side": "right"}},
                       hovertemplate="channel %{x}<br>%{y}<br>" + value.upper() + " %{z:.3f}<extra></extra>")]
    return figure(data, title, height=max(240, 24 * z.shape[0] + 110), meta={"value": value, "layer": str(layer)},
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
        data.append(trace("scatter", x=part.auc_hole.to_numpy(dtype=np.float64),
                           y=part.best_auc.to_numpy(dtype=np.float64),
                               mode="markers", name=cat, customdata=custom, text=text,
                               marker={"color": ROLE_COLORS[cat], "opacity": opacity, "size": size,
                                       "line": {"width": 0}},
                               hovertemplate="%{text}<br>AUC hole %{x:.3f} · best label AUC %{y:.3f}"
                                             "<extra></extra>"))
    shapes = [vline(0.3, "#bbb"), vline(0.7, "#bbb"), hline(0.7, "#bbb")]
    return figure(data, title, height=420, legend={"title": {"text": "role"}}, clickmode="event", shapes=shapes,
                   xaxis={"title": {"text": "AUC hole vs valid (1: gate higher in the hole, 0: on valid pixels)"},
                          "range": [0, 1]},
                   yaxis={"title": {"text": "AUC of the best label"}, "range": [0.3, 1.0]})


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
        data.append(trace("scatter", x=part.pc1.to_numpy(dtype=np.float64), y=part.pc2.to_numpy(dtype=np.float64),
                               mode="markers", name=cat, customdata=custom, text=text,
                               marker={"color": ROLE_COLORS[cat], "size": np.where(mine, 9, 6) if highlight_layer
                                       else 7, "opacity": np.where(mine, 0.95, 0.25) if highlight_layer else 0.75,
                                       "line": {"width": 0}},
                               hovertemplate="%{text}<extra></extra>"))
    return figure(data, title, height=420, legend={"title": {"text": "role"}}, clickmode="event",
                   xaxis={"title": {"text": "PC 1"}, "zeroline": False}, yaxis={"title": {"text": "PC 2"},
                                                                              "zeroline": False})
